//! The dashboard's fleet views over HTTP: counts and shares of a small fleet, the adoption history
//! the rollup tick records, window validation, and who may read them.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

async fn create(app: &TestApp, body: Value) {
    let (status, created) = app.post("/api/v1/devices", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}

/// Six accepted devices (three on 2.0.0 in eu, two on 1.0.0 in eu and us, one unknown firmware
/// without region), one still provisioning and one decommissioned.
async fn small_fleet(app: &TestApp) {
    for (id, firmware, region) in [
        ("a1", Some("2.0.0"), Some("eu")),
        ("a2", Some("2.0.0"), Some("eu")),
        ("a3", Some("2.0.0"), Some("eu")),
        ("b1", Some("1.0.0"), Some("eu")),
        ("b2", Some("1.0.0"), Some("us")),
        ("c1", None, None),
    ] {
        create(app, json!({ "id": id, "device_type": "meter", "status": "active", "firmware": firmware, "region": region })).await;
    }
    create(
        app,
        json!({ "id": "p1", "device_type": "meter", "firmware": "3.0.0" }),
    )
    .await;
    create(
        app,
        json!({ "id": "d1", "device_type": "meter", "status": "active", "firmware": "0.9.0" }),
    )
    .await;
    let (status, body) = app.post("/api/v1/devices/d1/decommission", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

api_tests! {
    async fn fleet_overview_counts_devices_by_status_and_connectivity(app) {
        small_fleet(app).await;
        let (status, body) = app.get("/api/v1/fleet/overview").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["devices"]["total"], 7, "{body}");
        assert_eq!(
            body["devices"]["by_status"],
            json!({ "pending": 0, "rejected": 0, "provisioning": 1, "active": 6, "inactive": 0, "error": 0, "decommissioned": 1 })
        );
        assert_eq!(body["devices"]["by_connectivity"], json!({ "unknown": 6, "online": 0, "degraded": 0, "offline": 0 }));
        assert_eq!(body["active_rollouts"], json!([]));
        assert_eq!(body["alerts"], json!([]));
        assert!(body["computed_at"].as_str().unwrap().ends_with('Z'), "{body}");
    }

    async fn fleet_versions_give_shares_regions_and_the_adoption_history(app) with AppOptions {
        rollup_interval: Some(Duration::from_millis(100)),
        ..AppOptions::default()
    }; {
        small_fleet(app).await;
        let (status, body) = app.get("/api/v1/fleet/versions?window=1h").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total"], 6);
        assert_eq!(
            body["versions"],
            json!([
                { "version": "2.0.0", "devices": 3, "share": 0.5 },
                { "version": "1.0.0", "devices": 2, "share": 2.0 / 6.0 },
                { "version": "", "devices": 1, "share": 1.0 / 6.0 },
            ])
        );
        assert_eq!(
            body["regions"],
            json!([
                { "region": "eu", "total": 4, "versions": { "1.0.0": 1, "2.0.0": 3 } },
                { "region": "", "total": 1, "versions": { "": 1 } },
                { "region": "us", "total": 1, "versions": { "1.0.0": 1 } },
            ])
        );
        assert_eq!(body["warnings"], json!([]));

        // The rollup tick records a snapshot of the whole fleet (a tick may also have run while it
        // was being created); the history ends with the current count.
        let mut history = Value::Null;
        for _ in 0..100 {
            let (_, body) = app.get("/api/v1/fleet/versions").await;
            history = body["history"].clone();
            let points = history[0]["points"].as_array().unwrap();
            if points.len() >= 2 && points[points.len() - 2]["devices"] == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let versions: Vec<&str> = history.as_array().unwrap().iter().map(|h| h["version"].as_str().unwrap()).collect();
        assert_eq!(versions, vec!["2.0.0", "1.0.0", ""]);
        let points = history[0]["points"].as_array().unwrap();
        assert!(points.len() >= 2, "{history}");
        assert_eq!(points[points.len() - 2]["devices"], 3, "the last snapshot: {history}");
        assert_eq!(points[points.len() - 1]["devices"], 3, "now: {history}");
        assert!(points.iter().all(|p| p["devices"].as_u64().unwrap() <= 3), "{history}");

        // A change shows up in the counts at once.
        let (status, _) = app.patch("/api/v1/devices/b1", json!({ "firmware": "2.0.0" })).await;
        assert_eq!(status, StatusCode::OK);
        let (_, body) = app.get("/api/v1/fleet/versions").await;
        assert_eq!(body["versions"][0], json!({ "version": "2.0.0", "devices": 4, "share": 4.0 / 6.0 }));
        assert_eq!(body["history"][0]["points"].as_array().unwrap().last().unwrap()["devices"], 4);
    }

    async fn a_large_import_wakes_the_rollup_tick(app) {
        // The default interval is a minute; the import of 1,000 devices must not wait for it.
        let lines: String = (0..1000)
            .map(|n| format!("{}\n", json!({ "id": format!("imp-{n:04}"), "device_type": "meter", "status": "active", "firmware": "4.0.0" })))
            .collect();
        let response = app
            .http
            .post(app.url("/api/v1/devices/import"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/x-ndjson")
            .body(lines)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut points = 0;
        for _ in 0..100 {
            let (_, body) = app.get("/api/v1/fleet/versions?window=1h").await;
            points = body["history"][0]["points"].as_array().map_or(0, Vec::len);
            if points >= 2 {
                assert_eq!(body["history"][0]["version"], "4.0.0");
                assert_eq!(body["history"][0]["points"][0]["devices"], 1000);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(points >= 2, "no snapshot was taken after the import");
    }

    async fn fleet_views_refuse_bad_windows_and_need_a_token(app) {
        for path in ["/api/v1/fleet/versions?window=2h", "/api/v1/fleet/versions?window=", "/api/v1/fleet/versions?since=1h"] {
            let (status, body) = app.get(path).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        }
        let (_, body) = app.get("/api/v1/fleet/versions?window=2h").await;
        assert_eq!(body["error"]["message"], "window \"2h\" is not one of 1h, 24h, 7d, 30d, 90d");
        for window in ["1h", "24h", "7d", "30d", "90d"] {
            let (status, body) = app.get(&format!("/api/v1/fleet/versions?window={window}")).await;
            assert_eq!(status, StatusCode::OK, "{window}: {body}");
        }

        let viewer = app.token("viewer").await;
        for path in ["/api/v1/fleet/overview", "/api/v1/fleet/versions"] {
            let (status, body) = app.send(Method::GET, path, Some(&viewer), None).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            let (status, _) = app.send(Method::GET, path, None, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        }
    }
}
