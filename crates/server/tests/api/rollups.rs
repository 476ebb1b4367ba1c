//! Cohort rollups over HTTP: heartbeats from two firmware versions, read back per version, for
//! every version, in wider buckets, and every refusal of a bad window or name.

use drover_core::{Duration, Timestamp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

const HOUR_MS: i64 = 3_600_000;

/// Registers an active device running `firmware` and returns its credential.
async fn device_on(app: &TestApp, id: &str, firmware: &str) -> String {
    let (status, created) = app
        .post(
            "/api/v1/devices",
            json!({ "id": id, "device_type": "sensor", "issue_credential": true, "firmware": firmware }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["credential"].as_str().unwrap().to_owned()
}

/// Sends one batch of heartbeats, each `(sent_at, mem_free_bytes)`, reporting `firmware`.
async fn send_memory(
    app: &TestApp,
    credential: &str,
    firmware: &str,
    readings: &[(Timestamp, f64)],
) {
    let heartbeats: Vec<Value> = readings
        .iter()
        .map(|(at, bytes)| json!({ "sent_at": at.to_rfc3339(), "firmware": firmware, "metrics": { "mem_free_bytes": bytes, "cpu_pct": 5 } }))
        .collect();
    let (status, ack) = app
        .send(
            Method::POST,
            "/api/device/v1/heartbeats",
            Some(credential),
            Some(json!({ "heartbeats": heartbeats })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(ack["accepted"], readings.len());
}

/// The start of the hour two hours ago: far enough back that the default 24-hour window holds
/// it, and a whole hour of one-minute buckets after it is already in the past.
fn two_hours_ago() -> Timestamp {
    let now = drover_server::now().as_millis();
    Timestamp::from_millis(now - now.rem_euclid(HOUR_MS) - 2 * HOUR_MS)
}

fn at(base: Timestamp, secs: i64) -> Timestamp {
    base.saturating_add(Duration::from_secs(secs))
}

api_tests! {
    async fn rollups_give_each_firmware_cohort_its_own_statistics(app) {
        let base = two_hours_ago();
        let old_a = device_on(app, "mem-old-a", "1.0.0").await;
        let old_b = device_on(app, "mem-old-b", "1.0.0").await;
        let new_a = device_on(app, "mem-new-a", "1.0.0").await;
        // Version 1.0.0 has little free memory: four readings in the first minute, one in the next.
        send_memory(app, &old_a, "1.0.0", &[(at(base, 5), 1000.0), (at(base, 20), 2000.0), (at(base, 70), 10_000.0)]).await;
        send_memory(app, &old_b, "1.0.0", &[(at(base, 10), 3000.0), (at(base, 30), 4000.0)]).await;
        // The third device reports 2.0.0 (the cohort is the reported version) with plenty.
        send_memory(app, &new_a, "2.0.0", &[(at(base, 15), 4_000_000.0), (at(base, 25), 6_000_000.0)]).await;

        let (status, old) = app.get_with("/api/v1/health/rollups", &[("firmware", "1.0.0"), ("metric", "mem_free_bytes")]).await;
        assert_eq!(status, StatusCode::OK, "{old}");
        assert_eq!((old["firmware"].as_str(), old["metric"].as_str(), old["bucket_seconds"].as_u64()), (Some("1.0.0"), Some("mem_free_bytes"), Some(60)));
        let buckets = old["buckets"].as_array().unwrap();
        assert_eq!(buckets.len(), 2, "{old}");
        let first = &buckets[0];
        assert_eq!(first["bucket"].as_str().unwrap(), base.to_rfc3339());
        assert_eq!((first["count"].as_u64(), first["mean"].as_f64(), first["min"].as_f64(), first["max"].as_f64()), (Some(4), Some(2500.0), Some(1000.0), Some(4000.0)));
        // Sample standard deviation of 1000, 2000, 3000, 4000.
        assert!((first["stddev"].as_f64().unwrap() - 1290.994).abs() < 0.01, "{first}");
        // The median of four readings is one of the middle two, within the sketch's 1 %.
        let p50 = first["p50"].as_f64().unwrap();
        assert!((p50 - 2000.0).abs() <= 20.0 || (p50 - 3000.0).abs() <= 30.0, "p50 {p50}");
        let (p95, p99) = (first["p95"].as_f64().unwrap(), first["p99"].as_f64().unwrap());
        assert!(p50 <= p95 && p95 <= p99 && p99 <= 4000.0, "{first}");
        let second = &buckets[1];
        assert_eq!(second["bucket"].as_str().unwrap(), at(base, 60).to_rfc3339());
        assert_eq!((second["count"].as_u64(), second["p50"].as_f64()), (Some(1), Some(10_000.0)));
        assert!(second.get("stddev").is_none(), "one reading has no spread: {second}");

        // A version is matched in its normalised form.
        let (status, same) = app.get_with("/api/v1/health/rollups", &[("firmware", "v1.0"), ("metric", "mem_free_bytes")]).await;
        assert_eq!((status, &same), (StatusCode::OK, &old));

        // Wider buckets merge the stored ones exactly.
        let (status, hourly) = app.get_with("/api/v1/health/rollups", &[("firmware", "1.0.0"), ("metric", "mem_free_bytes"), ("bucket", "1h")]).await;
        assert_eq!(status, StatusCode::OK, "{hourly}");
        assert_eq!(hourly["bucket_seconds"], 3600);
        assert_eq!(hourly["buckets"].as_array().unwrap().len(), 1, "{hourly}");
        assert_eq!((hourly["buckets"][0]["count"].as_u64(), hourly["buckets"][0]["mean"].as_f64()), (Some(5), Some(4000.0)));

        // Without a firmware: every cohort with readings, in version order.
        let (status, all) = app.get_with("/api/v1/health/rollups", &[("metric", "mem_free_bytes")]).await;
        assert_eq!(status, StatusCode::OK, "{all}");
        let cohorts = all.as_array().unwrap();
        let versions: Vec<_> = cohorts.iter().map(|c| c["firmware"].as_str().unwrap()).collect();
        assert_eq!(versions, ["1.0.0", "2.0.0"]);
        assert_eq!(cohorts[0], old);
        let new = &cohorts[1]["buckets"][0];
        assert_eq!((new["count"].as_u64(), new["mean"].as_f64(), new["min"].as_f64(), new["max"].as_f64()), (Some(2), Some(5_000_000.0), Some(4_000_000.0), Some(6_000_000.0)));

        // A window that ends before the readings, a version nobody runs and a metric nobody sends
        // are empty answers, not errors.
        let before = at(base, -60).to_rfc3339();
        let (status, empty) = app.get_with("/api/v1/health/rollups", &[("firmware", "1.0.0"), ("metric", "mem_free_bytes"), ("to", &before)]).await;
        assert_eq!((status, empty["buckets"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{empty}");
        let (status, empty) = app.get_with("/api/v1/health/rollups", &[("firmware", "9.9.9"), ("metric", "mem_free_bytes")]).await;
        assert_eq!((status, empty["buckets"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{empty}");
        let (status, empty) = app.get_with("/api/v1/health/rollups", &[("metric", "my_custom_gauge")]).await;
        assert_eq!((status, empty), (StatusCode::OK, json!([])));
        // An explicit window just around the first minute.
        let (from, to) = (base.to_rfc3339(), at(base, 60).to_rfc3339());
        let (status, window) = app.get_with("/api/v1/health/rollups", &[("firmware", "1.0.0"), ("metric", "mem_free_bytes"), ("from", &from), ("to", &to)]).await;
        assert_eq!((status, window["buckets"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{window}");

        let (_, doc) = app.get("/api/v1/openapi.json").await;
        assert!(doc["paths"]["/api/v1/health/rollups"]["get"].is_object(), "documented");
    }

    async fn rollups_refuse_bad_windows_and_names_and_need_a_token(app) {
        let path = "/api/v1/health/rollups";
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("metric", "Mem-Free")], "invalid metric name"),
            (&[("metric", "")], "invalid metric name"),
            (&[("firmware", "1.0.0")], "metric"),
            (&[("metric", "mem_free_bytes"), ("firmware", "latest")], "invalid version"),
            (&[("metric", "mem_free_bytes"), ("from", "yesterday")], "invalid timestamp"),
            (&[("metric", "mem_free_bytes"), ("from", "2026-01-02T00:00:00Z"), ("to", "2026-01-02T00:00:00Z")], "must be before"),
            (&[("metric", "mem_free_bytes"), ("from", "2026-01-03T00:00:00Z"), ("to", "2026-01-02T00:00:00Z")], "must be before"),
            (&[("metric", "mem_free_bytes"), ("from", "2026-01-01T00:00:00Z"), ("to", "2026-03-01T00:00:00Z")], "longer than 31d"),
            (&[("metric", "mem_free_bytes"), ("bucket", "90s")], "multiple"),
            (&[("metric", "mem_free_bytes"), ("colour", "red")], "unknown field"),
        ];
        for (query, expected) in cases {
            let (status, body) = app.get_with(path, query).await;
            assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{query:?}: {body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(expected), "{query:?}: {message}");
        }

        let query = format!("{path}?metric=mem_free_bytes");
        let viewer = app.token("viewer").await;
        let (status, body) = app.send(Method::GET, &query, Some(&viewer), None).await;
        assert_eq!((status, body), (StatusCode::OK, json!([])));
        let (status, body) = app.send(Method::GET, &query, None, None).await;
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{body}");
        let (status, _) = app.send(Method::GET, &format!("{path}?metric=Bad"), None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "the token is checked before the parameters");
    }
}
