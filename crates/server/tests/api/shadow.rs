//! Device shadows over HTTP: devices report and long-poll for the delta, operators set desired
//! state, and every refusal has the status and code the API documents.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

/// Registers an active device and returns its credential.
async fn device_with_credential(app: &TestApp, id: &str) -> String {
    let (status, created) = app
        .post(
            "/api/v1/devices",
            json!({ "id": id, "device_type": "sensor", "issue_credential": true }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["credential"].as_str().unwrap().to_owned()
}

/// A device-API request with `credential`.
async fn as_device(
    app: &TestApp,
    credential: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    app.send(method, path, Some(credential), body).await
}

/// Sends `body` as is, with a JSON content type.
async fn raw(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: String,
) -> (StatusCode, Value) {
    let response = app
        .http
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

api_tests! {
    async fn devices_report_and_read_only_their_own_shadow(app) {
        let credential = device_with_credential(app, "thermo-1").await;
        let other = device_with_credential(app, "thermo-2").await;
        let (status, body) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["message"], "device thermo-1 has no classic shadow");

        let report = json!({ "state": { "reported": { "temp": 21.5, "fw": "1.0.0" } }, "clientToken": "req-1" });
        let (status, accepted) = as_device(app, &credential, Method::POST, "/api/device/v1/shadow", Some(report.clone())).await;
        assert_eq!(status, StatusCode::OK, "{accepted}");
        assert_eq!(accepted["version"], 1);
        assert_eq!(accepted["state"], json!({ "reported": { "temp": 21.5, "fw": "1.0.0" } }));
        assert_eq!(accepted["clientToken"], "req-1");
        assert!(accepted["metadata"]["reported"]["temp"]["timestamp"].is_i64(), "{accepted}");
        // Reporting the same state again changes nothing and keeps the version.
        let (_, again) = as_device(app, &credential, Method::POST, "/api/device/v1/shadow", Some(report)).await;
        assert_eq!((again["version"].clone(), again["state"].clone()), (json!(1), json!({})));

        let (status, document) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow", None).await;
        assert_eq!(status, StatusCode::OK, "{document}");
        assert_eq!(document["state"], json!({ "desired": {}, "reported": { "temp": 21.5, "fw": "1.0.0" } }));
        assert_eq!(document["version"], 1);
        let (status, _) = as_device(app, &other, Method::GET, "/api/device/v1/shadow", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "another device sees its own (absent) shadow");

        // Named shadows are separate documents; `name=` (empty) is the classic one.
        let (status, _) = as_device(app, &credential, Method::POST, "/api/device/v1/shadow?name=ota", Some(json!({ "state": { "reported": { "slot": "a" } } }))).await;
        assert_eq!(status, StatusCode::OK);
        let (_, named) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow?name=ota", None).await;
        assert_eq!(named["state"]["reported"], json!({ "slot": "a" }));
        let (_, classic) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow?name=", None).await;
        assert_eq!(classic, document);
        let (status, body) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow?name=a.b", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        let (status, body) = as_device(app, &credential, Method::POST, "/api/device/v1/shadow", Some(json!({ "state": { "desired": { "temp": 25 } } }))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("only state.reported"), "{body}");

        for token in [None, Some("drv_dev_not_a_credential"), Some(ADMIN_TOKEN)] {
            let (status, _) = app.send(Method::GET, "/api/device/v1/shadow", token, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
            let (status, _) = app.send(Method::POST, "/api/device/v1/shadow", token, Some(json!({ "state": { "reported": { "x": 1 } } }))).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        }
    }

    async fn operators_set_desired_and_a_waiting_device_wakes_with_the_delta(app) {
        let credential = device_with_credential(app, "lamp-1").await;
        let delta_url = app.url("/api/device/v1/shadow/delta?version=0&wait=30");
        let waiting = tokio::spawn(app.http.get(delta_url).bearer_auth(&credential).send());

        let (status, document) = app
            .patch("/api/v1/devices/lamp-1/shadow", json!({ "state": { "desired": { "led": "on", "cfg": { "rate": 5 } } } }))
            .await;
        assert_eq!(status, StatusCode::OK, "{document}");
        assert_eq!(document["version"], 1);
        assert_eq!(document["state"]["delta"], json!({ "led": "on", "cfg": { "rate": 5 } }));

        let response = waiting.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let delta: Value = response.json().await.unwrap();
        assert_eq!(delta["state"], json!({ "led": "on", "cfg": { "rate": 5 } }));
        assert_eq!(delta["version"], 1);
        assert!(delta["metadata"]["led"]["timestamp"].is_i64(), "{delta}");

        // The device converges; the delta is gone, and a poll from the new version waits.
        let report = json!({ "state": { "reported": { "led": "on", "cfg": { "rate": 5 } } } });
        let (_, accepted) = as_device(app, &credential, Method::POST, "/api/device/v1/shadow", Some(report)).await;
        assert_eq!(accepted["version"], 2);
        let (_, document) = app.get("/api/v1/devices/lamp-1/shadow").await;
        assert!(document["state"].get("delta").is_none(), "{document}");
        let (status, _) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow/delta?version=2&wait=1", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);

        // A device that was offline asks from an old version and gets the whole current delta.
        app.patch("/api/v1/devices/lamp-1/shadow", json!({ "state": { "desired": { "led": "off" } } })).await;
        app.patch("/api/v1/devices/lamp-1/shadow", json!({ "state": { "desired": { "cfg": { "rate": 9 } } } })).await;
        let (status, delta) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow/delta?version=1", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(delta["state"], json!({ "led": "off", "cfg": { "rate": 9 } }));
        assert_eq!(delta["version"], 4);
        let (status, _) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow/delta?version=4", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "without wait it answers at once");
    }

    async fn long_polls_time_out_with_no_content_and_bound_their_wait(app) {
        let credential = device_with_credential(app, "idle-1").await;
        let (status, body) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow/delta?wait=1", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert_eq!(body, Value::Null);
        let (status, body) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow/delta?wait=61", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("between 0 and 60"), "{body}");
        let (status, _) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow/delta?version=-1", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow/delta?since=1", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "unknown parameters are refused");
    }

    async fn a_stale_version_conflicts_and_names_the_current_one(app) {
        app.post("/api/v1/devices", json!({ "id": "cfg-1", "device_type": "sensor" })).await;
        let path = "/api/v1/devices/cfg-1/shadow";
        let (status, _) = app.patch(path, json!({ "state": { "desired": { "a": 1 } }, "version": 0 })).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = app.patch(path, json!({ "state": { "desired": { "a": 2 } }, "version": 0 })).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(code(&body), "version_conflict");
        assert_eq!(body["error"]["details"], json!({ "expected_version": 0, "current_version": 1 }));
        let (status, document) = app.patch(path, json!({ "state": { "desired": { "a": 2 } }, "version": 1 })).await;
        assert_eq!(status, StatusCode::OK, "{document}");
        assert_eq!(document["version"], 2);
    }

    async fn oversized_deep_and_malformed_updates_are_refused_and_store_nothing(app) {
        let credential = device_with_credential(app, "big-1").await;
        let path = "/api/v1/devices/big-1/shadow";
        let audit_before = app.audit_len().await;

        let (status, body) = app.patch(path, json!({ "state": { "desired": { "blob": "x".repeat(9000) } } })).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(code(&body), "too_large");
        assert_eq!(body["error"]["details"]["section"], "desired");
        let (status, body) = app.patch(path, json!({ "state": { "desired": { "blob": "x".repeat(40_000) } } })).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(code(&body), "payload_too_large", "refused before parsing");
        let (status, body) = as_device(app, &credential, Method::POST, "/api/device/v1/shadow", Some(json!({ "state": { "reported": { "blob": "x".repeat(40_000) } } }))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

        let deep = json!({ "state": { "desired": { "a": { "b": { "c": { "d": { "e": { "f": { "g": 1 } } } } } } } } });
        let (status, body) = app.patch(path, deep).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(code(&body), "too_deep");
        assert_eq!(body["error"]["details"]["path"], "/a/b/c/d/e/f");
        let very_deep = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
        let (status, body) = raw(app, Method::PATCH, path, ADMIN_TOKEN, format!("{{\"state\":{{\"desired\":{very_deep}}}}}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        let cases = [
            (r#"{"state": {"desired": "#, StatusCode::BAD_REQUEST, "invalid_json"),
            (r#"{"state": {"desired": {"a": 1}}, "verison": 1}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            (r#"{"state": {"desired": [1]}}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            (r#"{"state": {"desired": {"": 1}}}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_key"),
            (r#"{"state": {"reported": {"a": 1}}}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        ];
        for (body, status, expected) in cases {
            let (got, error) = raw(app, Method::PATCH, path, ADMIN_TOKEN, body.to_owned()).await;
            assert_eq!(got, status, "{body}: {error}");
            assert_eq!(code(&error), expected, "{body}: {error}");
        }
        let (status, _) = app.get(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored");
        assert_eq!(app.audit_len().await, audit_before);
    }

    async fn operators_need_a_known_device_and_the_right_role(app) {
        for (method, path) in [
            (Method::GET, "/api/v1/devices/ghost/shadow"),
            (Method::PATCH, "/api/v1/devices/ghost/shadow"),
            (Method::DELETE, "/api/v1/devices/ghost/shadow"),
            (Method::GET, "/api/v1/devices/ghost/shadows"),
        ] {
            let body = (method == Method::PATCH).then(|| json!({ "state": { "desired": { "a": 1 } } }));
            let (status, error) = app.send(method.clone(), path, Some(ADMIN_TOKEN), body).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {error}");
            assert_eq!(error["error"]["message"], "device \"ghost\" not found");
        }
        app.post("/api/v1/devices", json!({ "id": "r-1", "device_type": "sensor" })).await;
        let viewer = app.token("viewer").await;
        let (status, _) = app.send(Method::GET, "/api/v1/devices/r-1/shadows", Some(&viewer), None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = app.send(Method::PATCH, "/api/v1/devices/r-1/shadow", Some(&viewer), Some(json!({ "state": { "desired": { "a": 1 } } }))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = app.send(Method::GET, "/api/v1/devices/r-1/shadow", None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = app.delete("/api/v1/devices/r-1/shadow?name=config").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["message"], "device r-1 has no shadow named \"config\"");
    }

    async fn operators_desired_changes_are_audited_and_device_reports_are_not(app) {
        let credential = device_with_credential(app, "aud-1").await;
        let (status, _) = app.patch("/api/v1/devices/aud-1/shadow?name=config", json!({ "state": { "desired": { "rate": 5 } } })).await;
        assert_eq!(status, StatusCode::OK);
        as_device(app, &credential, Method::POST, "/api/device/v1/shadow?name=config", Some(json!({ "state": { "reported": { "rate": 5 } } }))).await;
        as_device(app, &credential, Method::POST, "/api/device/v1/shadow", Some(json!({ "state": { "reported": { "temp": 20 } } }))).await;

        let (_, listed) = app.get("/api/v1/devices/aud-1/shadows").await;
        let listed: Vec<_> = listed["shadows"].as_array().unwrap().iter().map(|s| (s["name"].clone(), s["version"].clone())).collect();
        assert_eq!(listed, vec![(Value::Null, json!(1)), (json!("config"), json!(2))]);

        let (status, _) = app.delete("/api/v1/devices/aud-1/shadow?name=config").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.get("/api/v1/devices/aud-1/shadow?name=config").await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (_, audit) = app.get_with("/api/v1/audit", &[("action", "shadow.")]).await;
        let entries = audit["items"].as_array().unwrap();
        let actions: Vec<_> = entries.iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["shadow.delete", "shadow.update"]);
        let update = &entries[1];
        assert!(update["actor"].as_str().unwrap().starts_with("token:"), "{update}");
        assert_eq!((update["target_kind"].as_str(), update["target_id"].as_str()), (Some("device"), Some("aud-1")));
        assert_eq!(update["after"], json!({ "shadow": "config", "version": 1, "desired": { "rate": 5 } }));
    }
}
