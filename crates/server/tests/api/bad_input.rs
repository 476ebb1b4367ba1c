//! Bad input everywhere gets a 4xx that says what is wrong, never a 500, and writes nothing.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::api_tests;
use crate::helpers::*;

fn message(body: &serde_json::Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

api_tests! {
    async fn malformed_bodies_are_rejected_with_reasons_and_nothing_is_written(app) {
        let audit_before = app.audit_len().await;
        let cases: Vec<(&str, StatusCode, &str, &str)> = vec![
            (r#"{"device_type": "#, StatusCode::BAD_REQUEST, "invalid_json", "not valid JSON"),
            (r#"{"device_type": "thermostat", "colour": "red"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "unknown field `colour`"),
            (r#"{"hw_id": "SN-1"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "missing field `device_type`"),
            (r#"{"device_type": "thermo stat"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "invalid device type"),
            (r#"{"device_type": "t", "id": "a/b"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "invalid device id"),
            (r#"{"device_type": "t", "firmware": "2.x"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "invalid version"),
            (r#"{"device_type": "t", "status": "decommissioned"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "cannot start as decommissioned"),
            (r#"{"device_type": "t", "tags": {"bad key": "v"}}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "invalid tag key"),
            (r#"[1, 2]"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", "invalid type"),
        ];
        for (body, status, code, needle) in cases {
            let response = app
                .http
                .post(app.url("/api/v1/devices"))
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{body}");
            let json: serde_json::Value = response.json().await.unwrap();
            assert_eq!(json["error"]["code"], code, "{body}: {json}");
            assert!(message(&json).contains(needle), "{body}: {json}");
        }
        let response = app.http.post(app.url("/api/v1/devices")).bearer_auth(ADMIN_TOKEN).body("{}").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(app.count("").await, 0);
        assert_eq!(app.audit_len().await, audit_before);
    }

    async fn invalid_ids_and_queries_say_what_is_wrong(app) {
        let (status, body) = app.get("/api/v1/devices/bad%20id").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&body).contains("invalid device id"), "{body}");
        let (status, body) = app.get("/api/v1/devices/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(message(&body), "device \"nope\" not found");

        let (status, body) = app.get_with("/api/v1/devices", &[("q", "tags.env = prod AND firmware <")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid_query");
        assert_eq!(body["error"]["details"]["column"], 31);
        assert!(message(&body).contains("expected a value"), "{body}");
        let (status, body) = app.get_with("/api/v1/devices/count", &[("q", "colour = red")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&body).contains("unknown field"), "{body}");
        let (status, body) = app.get_with("/api/v1/devices", &[("q", &"(".repeat(500))]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, body) = app.get_with("/api/v1/devices", &[("limit", "0")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&body).contains("limit"), "{body}");
        let (status, body) = app.get_with("/api/v1/devices", &[("limit", "ten")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&body).contains("invalid query string"), "{body}");
        let (status, body) = app.get_with("/api/v1/devices", &[("sort", "colour")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&body).contains("unknown sort field"), "{body}");
        let (status, body) = app.get_with("/api/v1/devices", &[("cursor", "!!!")]).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(message(&body).contains("invalid cursor"), "{body}");
        let (status, body) = app.get_with("/api/v1/devices", &[("colour", "red")]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&body).contains("unknown field"), "{body}");
        for path in ["/api/v1/claims/clm%00x", "/api/v1/audit?actor=a%00b", "/api/v1/devices?q=site%20%3D%20%22a%00b%22"] {
            let (status, body) = app.get(path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        }
        let (status, body) = app.post("/api/v1/groups", json!({ "name": "nul", "query": "site = \"a\u{0}b\"" })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(message(&body).contains("control character"), "{body}");
        let (status, _) = app.get("/api/v1/nothing-here").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = app.send(Method::PUT, "/api/v1/devices", Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    async fn duplicate_serials_conflict_and_leave_the_first_device_alone(app) {
        let (status, _) = app.post("/api/v1/devices", json!({ "id": "a", "device_type": "t", "hw_id": "SN-9" })).await;
        assert_eq!(status, StatusCode::CREATED);
        let audit_before = app.audit_len().await;
        let (status, body) = app.post("/api/v1/devices", json!({ "id": "b", "device_type": "t", "hw_id": "SN-9" })).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(message(&body), "hardware id \"SN-9\" is already used by device \"a\"");
        let (status, body) = app.post("/api/v1/devices", json!({ "id": "a", "device_type": "t" })).await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(message(&body), "device \"a\" already exists");
        assert_eq!(app.count("").await, 1);
        assert_eq!(app.audit_len().await, audit_before);
    }

    async fn tokens_that_are_missing_wrong_expired_revoked_or_underprivileged_are_refused(app) {
        let (status, body) = app.send(Method::GET, "/api/v1/devices", None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(message(&body).contains("missing API token"), "{body}");
        let (status, body) = app.send(Method::GET, "/api/v1/devices", Some("drv_op_guess"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(message(&body), "unknown API token");
        let response = app.http.get(app.url("/api/v1/devices")).header("authorization", "Basic abc").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

        let viewer = app.token("viewer").await;
        let (status, _) = app.send(Method::GET, "/api/v1/devices", Some(&viewer), None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = app.send(Method::POST, "/api/v1/devices", Some(&viewer), Some(json!({ "device_type": "t" }))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(message(&body).contains("needs the operator role"), "{body}");
        let operator = app.token("operator").await;
        let (status, _) = app.send(Method::POST, "/api/v1/tokens", Some(&operator), Some(json!({ "name": "x", "role": "admin" }))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(app.count("").await, 0);

        let (status, created) = app.post("/api/v1/tokens", json!({ "name": "short", "role": "operator", "expires_in": "1ms" })).await;
        assert_eq!(status, StatusCode::CREATED);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let (status, body) = app.send(Method::GET, "/api/v1/devices", Some(created["secret"].as_str().unwrap()), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(message(&body).contains("has expired"), "{body}");

        let (_, tokens) = app.get("/api/v1/tokens").await;
        let viewer_id = tokens.as_array().unwrap().iter().find(|t| t["role"] == "viewer").unwrap()["id"].as_str().unwrap().to_owned();
        let (status, _) = app.delete(&format!("/api/v1/tokens/{viewer_id}")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = app.send(Method::GET, "/api/v1/devices", Some(&viewer), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(message(&body).contains("revoked"), "{body}");
        let (status, body) = app.post("/api/v1/tokens", json!({ "name": "x", "role": "superuser" })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(message(&body).contains("unknown variant"), "{body}");
    }

    async fn oversized_bodies_are_refused_with_413(app) {
        // Just over the 1 MiB limit: small enough that the whole request sits in the socket
        // buffers, so the client always reads the early 413 instead of failing mid-upload.
        let big = json!({ "device_type": "t", "tags": { "blob": "x".repeat((1 << 20) + 1024) } });
        let (status, body) = app.post("/api/v1/devices", big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(app.count("").await, 0);
    }

    async fn device_api_refuses_bad_credentials_and_unknown_claims(app) {
        let (status, body) = app.send(Method::GET, "/api/device/v1/whoami", None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(message(&body).contains("missing device credential"), "{body}");
        let (status, _) = app.send(Method::GET, "/api/device/v1/whoami", Some(ADMIN_TOKEN), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "an operator token is not a device credential");
        let (status, body) = app
            .send(Method::POST, "/api/device/v1/provision", None, Some(json!({ "hardware_id": "SN-1", "claim_token": "drv_claim_nope" })))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(message(&body), "unknown claim token");
        let (status, body) = app.send(Method::POST, "/api/device/v1/provision", None, Some(json!({ "hardware_id": "SN 1" }))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(message(&body).contains("invalid hardware id"), "{body}");
        let (status, body) = app.send(Method::POST, "/api/device/v1/provision", None, Some(json!({ "hardware_id": "SN-1" }))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(message(&body).contains("not pre-authorised"), "{body}");
        assert_eq!(app.count("").await, 0);
    }
}
