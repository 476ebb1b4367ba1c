//! Provisioning and device identity over HTTP.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::api_tests;
use crate::helpers::*;

async fn provision(app: &TestApp, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    app.send(Method::POST, "/api/device/v1/provision", None, Some(body))
        .await
}

api_tests! {
    async fn claim_tokens_enforce_scope_expiry_and_use_limits(app) {
        let (status, group) = app.post("/api/v1/groups", json!({ "name": "line-1" })).await;
        assert_eq!(status, StatusCode::CREATED, "{group}");
        let (_, claim) = app
            .post("/api/v1/claims", json!({ "name": "line 1", "device_type": "meter", "tags": { "batch": "b7" }, "group": "line-1", "max_uses": 1 }))
            .await;
        let token = claim["token"].as_str().unwrap().to_owned();
        let (status, body) = provision(app, json!({ "claim_token": token, "hardware_id": "M-1", "device_type": "valve" })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (status, body) = provision(app, json!({ "claim_token": token, "hardware_id": "M-1" })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = body["device_id"].as_str().unwrap().to_owned();
        let (_, device) = app.get(&format!("/api/v1/devices/{id}")).await;
        assert_eq!(device["device_type"], "meter");
        assert_eq!(device["tags"], json!({ "batch": "b7" }));
        let (_, groups) = app.get(&format!("/api/v1/devices/{id}/groups")).await;
        assert_eq!(groups["groups"], json!(["line-1"]));
        let (status, body) = provision(app, json!({ "claim_token": token, "hardware_id": "M-2" })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"]["message"].as_str().unwrap().contains("its limit"), "{body}");

        let (_, claim) = app.post("/api/v1/claims", json!({ "name": "open", "device_type": "meter" })).await;
        let token = claim["token"].as_str().unwrap().to_owned();
        let (status, body) = provision(app, json!({ "claim_token": token, "hardware_id": "M-1" })).await;
        assert_eq!(status, StatusCode::CONFLICT, "the same unit cannot enrol twice: {body}");
        let claim_id = claim["claim"]["id"].as_str().unwrap();
        let (status, _) = app.delete(&format!("/api/v1/claims/{claim_id}")).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = provision(app, json!({ "claim_token": token, "hardware_id": "M-3" })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body["error"]["message"].as_str().unwrap().contains("revoked"), "{body}");
        let (status, body) = app.post("/api/v1/claims", json!({ "name": "x", "expires_in": "400d" })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (status, body) = app.post("/api/v1/claims", json!({ "name": "x", "group": "nope" })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }

    async fn preauthorised_devices_fetch_their_credential_once(app) {
        let (status, _) = app
            .post("/api/v1/devices", json!({ "id": "pre-1", "device_type": "gw", "hw_id": "GW-1", "preauth_secret": "factory-secret-0001" }))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = provision(app, json!({ "hardware_id": "GW-1", "preauth_secret": "wrong-secret-000000" })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = provision(app, json!({ "hardware_id": "GW-1", "preauth_secret": "factory-secret-0001", "firmware": "1.0.0" })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["device_id"], "pre-1");
        let credential = body["credential"].as_str().unwrap().to_owned();
        let (status, body) = provision(app, json!({ "hardware_id": "GW-1", "preauth_secret": "factory-secret-0001" })).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");

        let (status, rotated) = app.post("/api/v1/devices/pre-1/credentials", json!({})).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = app.send(Method::GET, "/api/device/v1/whoami", Some(&credential), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "the old credential stops working");
        let new_credential = rotated["credential"].as_str().unwrap();
        let (status, me) = app.send(Method::GET, "/api/device/v1/whoami", Some(new_credential), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(me["firmware"], "1.0.0");
        let (status, revoked) = app.delete("/api/v1/devices/pre-1/credentials").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(revoked["count"], 1);
        let (status, _) = app.send(Method::GET, "/api/device/v1/whoami", Some(new_credential), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

/// Pending approval needs the server option, so it gets its own tests.
mod pending {
    use super::*;

    async fn scenario(app: &TestApp) {
        let nonce = "n0nce-from-the-device-123";
        let (status, body) = provision(
            app,
            json!({ "hardware_id": "U-1", "device_type": "cam", "nonce": nonce }),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "pending");
        assert!(body.get("credential").is_none());
        let id = body["device_id"].as_str().unwrap().to_owned();
        let (status, _) = provision(app, json!({ "hardware_id": "U-1", "device_type": "cam", "nonce": "someone-else-nonce-456" })).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, _) =
            provision(app, json!({ "hardware_id": "U-2", "device_type": "cam" })).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "a nonce is required"
        );
        let (status, _) = app
            .post(&format!("/api/v1/devices/{id}/accept"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = provision(app, json!({ "hardware_id": "U-1", "nonce": nonce })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["credential"].as_str().unwrap().starts_with("drv_dev_"));
        assert_eq!(body["status"], "active");
        let (_, audit) = app.get_with("/api/v1/audit", &[("target_id", &id)]).await;
        let actions: Vec<&str> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            ["device.provision", "device.accept", "device.enroll"]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_devices_wait_for_approval_on_sqlite() {
        let app = spawn_app_with(
            Backend::Sqlite,
            AppOptions {
                allow_pending: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        scenario(&app).await;
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_devices_wait_for_approval_on_postgres() {
        let Some(app) = spawn_app_with(
            Backend::Postgres,
            AppOptions {
                allow_pending: true,
                ..Default::default()
            },
        )
        .await
        else {
            return;
        };
        scenario(&app).await;
        app.stop().await;
    }
}
