//! Heartbeats over HTTP: single and batched ingest, latest health, and every rejection.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

/// Registers an active device and returns its credential.
async fn device_with_credential(app: &TestApp, id: &str) -> String {
    let (status, created) = app
        .post("/api/v1/devices", json!({ "id": id, "device_type": "sensor", "issue_credential": true, "firmware": "1.0.0" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["credential"].as_str().unwrap().to_owned()
}

api_tests! {
    async fn heartbeats_update_last_seen_firmware_and_health(app) {
        let credential = device_with_credential(app, "hb-1").await;
        let (status, ack) = app
            .send(Method::POST, "/api/device/v1/heartbeat", Some(&credential), Some(json!({
                "firmware": "1.1.0", "boot_slot": "b",
                "metrics": { "battery_v": 3.71, "rssi_dbm": -67, "uptime_s": 3600, "my_custom_gauge": 42.5 }
            })))
            .await;
        assert_eq!(status, StatusCode::OK, "{ack}");
        assert_eq!(ack["accepted"], 1);
        let (_, device) = app.get("/api/v1/devices/hb-1").await;
        assert_eq!(device["firmware"], "1.1.0");
        assert!(device["last_seen"].is_string());
        let (status, health) = app.get("/api/v1/devices/hb-1/health").await;
        assert_eq!(status, StatusCode::OK, "{health}");
        assert_eq!(health["boot_slot"], "b");
        assert_eq!(health["metrics"]["battery_v"], 3.71);
        assert_eq!(health["metrics"]["my_custom_gauge"], 42.5);
        assert_eq!(app.count("last_seen > now-1m AND firmware = 1.1.0").await, 1);

        let batch: Vec<_> = (0..20).map(|i| json!({ "metrics": { "battery_v": 3.0 + i as f64 / 100.0 } })).collect();
        let (status, ack) = app
            .send(Method::POST, "/api/device/v1/heartbeats", Some(&credential), Some(json!({ "heartbeats": batch })))
            .await;
        assert_eq!(status, StatusCode::OK, "{ack}");
        assert_eq!(ack["accepted"], 20);
    }

    async fn bad_heartbeats_are_rejected_with_reasons_and_store_nothing(app) {
        let credential = device_with_credential(app, "hb-2").await;
        let (status, _) = app.get("/api/v1/devices/hb-2/health").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no heartbeat yet");
        let future = "2999-01-01T00:00:00Z";
        let cases = vec![
            (json!({ "metrics": { "cpu_pct": 250 } }), "invalid_metric_value"),
            (json!({ "metrics": { "Battery": 3.7 } }), "invalid_request"),
            (json!({ "metrics": { "battery_v": "high" } }), "invalid_request"),
            (json!({ "metrics": {}, "colour": "red" }), "invalid_request"),
            (json!({ "sent_at": future, "metrics": { "battery_v": 3.7 } }), "timestamp_in_future"),
            (json!({ "firmware": "one", "metrics": {} }), "invalid_request"),
        ];
        for (body, code) in cases {
            let (status, error) = app.send(Method::POST, "/api/device/v1/heartbeat", Some(&credential), Some(body.clone())).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
            assert_eq!(error["error"]["code"], code, "{body}: {error}");
        }
        let batch = json!({ "heartbeats": [ { "metrics": { "battery_v": 3.7 } }, { "metrics": { "temp_c": -500 } } ] });
        let (status, error) = app.send(Method::POST, "/api/device/v1/heartbeats", Some(&credential), Some(batch)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error["error"]["details"]["index"], 1);
        let (status, _) = app.send(Method::POST, "/api/device/v1/heartbeats", Some(&credential), Some(json!({ "heartbeats": [] }))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let too_many: Vec<_> = (0..1001).map(|_| json!({ "metrics": {} })).collect();
        let (status, _) = app.send(Method::POST, "/api/device/v1/heartbeats", Some(&credential), Some(json!({ "heartbeats": too_many }))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, _) = app.send(Method::POST, "/api/device/v1/heartbeat", None, Some(json!({ "metrics": {} }))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = app.send(Method::POST, "/api/device/v1/heartbeat", Some(ADMIN_TOKEN), Some(json!({ "metrics": {} }))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "an operator token is not a device credential");
        // Every refusal is counted by transport and code.
        let (_, metrics) = app.send(Method::GET, "/metrics", None, None).await;
        let metrics = metrics.as_str().unwrap_or_default().to_owned();
        for (code, n) in [("invalid_metric_value", 2), ("timestamp_in_future", 1), ("unauthorized", 2)] {
            let line = format!("drover_device_rejections_total{{transport=\"http\",code=\"{code}\"}} {n}\n");
            assert!(metrics.contains(&line), "{line} in {metrics}");
        }

        let (status, _) = app.get("/api/v1/devices/hb-2/health").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "nothing was stored");
        let (_, device) = app.get("/api/v1/devices/hb-2").await;
        assert_eq!(device["last_seen"], serde_json::Value::Null);
    }

    async fn connectivity_is_a_state_a_score_and_a_history(app)
        with AppOptions { offline_check: Some(std::time::Duration::from_millis(100)), ..AppOptions::default() };
    {
        let credential = device_with_credential(app, "link-1").await;
        device_with_credential(app, "link-2").await;
        let (_, device) = app.get("/api/v1/devices/link-1").await;
        assert_eq!(device["connectivity"], "unknown");
        // A weak signal: degraded, and offline three announced intervals (1 s) after it.
        let (status, ack) = app
            .send(Method::POST, "/api/device/v1/heartbeat", Some(&credential), Some(json!({
                "interval_s": 1, "metrics": { "rssi_dbm": -110, "packet_loss_pct": 2 }
            })))
            .await;
        assert_eq!(status, StatusCode::OK, "{ack}");
        let (status, view) = app.get("/api/v1/devices/link-1/connectivity").await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!((view["state"].as_str(), view["link_score"].as_u64()), (Some("degraded"), Some(42)));
        assert_eq!(app.count("connectivity = degraded").await, 1);
        assert_eq!(app.count("connectivity = unknown").await, 1);

        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let (_, device) = app.get("/api/v1/devices/link-1").await;
            if device["connectivity"] == "offline" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "still {} after 20 s", device["connectivity"]);
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        let (_, view) = app.get_with("/api/v1/devices/link-1/connectivity", &[("limit", "10")]).await;
        let changes: Vec<_> = view["history"].as_array().unwrap().iter().map(|c| format!("{}->{}", c["from"], c["to"])).collect();
        assert_eq!(changes, vec![r#""degraded"->"offline""#, r#""unknown"->"degraded""#]);
        assert_eq!(app.count("connectivity = offline").await, 1);
        let (_, metrics) = app.send(Method::GET, "/metrics", None, None).await;
        assert!(metrics.as_str().unwrap().contains("drover_devices_went_offline_total 1"), "{metrics}");

        for (path, query, status, code) in [
            ("/api/v1/devices/link-1/connectivity", ("limit", "0"), StatusCode::BAD_REQUEST, "invalid_request"),
            ("/api/v1/devices/link-1/connectivity", ("limit", "many"), StatusCode::BAD_REQUEST, "invalid_request"),
            ("/api/v1/devices/link-1/connectivity", ("colour", "red"), StatusCode::BAD_REQUEST, "invalid_request"),
            ("/api/v1/devices/ghost/connectivity", ("limit", "1"), StatusCode::NOT_FOUND, "not_found"),
        ] {
            let (got, body) = app.get_with(path, &[query]).await;
            assert_eq!((got, body["error"]["code"].as_str()), (status, Some(code)), "{path}?{query:?}: {body}");
        }
    }
}
