//! Staged rollouts end to end: fake devices poll for offers and report each step over the HTTP
//! device API, send heartbeats, and the real orchestrator (ticking every 100 ms) moves the
//! rollout through its phases, judges its gates, pauses or rolls back, and survives a restart.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api_tests;
use crate::artifacts::{device, image, upload};
use crate::helpers::{spawn_app_with, AppOptions, Backend, TestApp};

fn fast() -> AppOptions {
    AppOptions {
        rollout_tick: Some(Duration::from_millis(100)),
        ..AppOptions::default()
    }
}

/// Devices that do what they are offered; `battery` gives each device's battery current by the
/// version it runs.
struct Fleet {
    devices: Vec<(String, String, String)>,
}

impl Fleet {
    async fn new(app: &TestApp, n: usize, firmware: &str) -> Fleet {
        let mut devices = Vec::new();
        for idx in 0..n {
            let id = format!("dev-{idx:03}");
            let credential = device(app, &id, firmware).await;
            devices.push((id, credential, firmware.to_owned()));
        }
        Fleet { devices }
    }

    /// One round: every device heartbeats, and installs whatever it is offered, reporting each step.
    async fn round(&mut self, app: &TestApp, battery: impl Fn(&str, usize) -> f64) {
        for (idx, (_, credential, firmware)) in self.devices.iter_mut().enumerate() {
            let (status, ack) = app
                .send(
                    Method::POST,
                    "/api/device/v1/heartbeat",
                    Some(credential),
                    Some(json!({
                        "firmware": firmware.clone(),
                        "metrics": {"battery_ma": battery(firmware, idx), "crashes": 0}
                    })),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{ack}");
            let (status, offer) = app
                .send(
                    Method::GET,
                    "/api/device/v1/deployments/next",
                    Some(credential),
                    None,
                )
                .await;
            if status != StatusCode::OK {
                continue;
            }
            let id = offer["deployment"].as_i64().unwrap();
            let version = offer["image"]["target"]
                .as_str()
                .unwrap()
                .split('/')
                .nth(1)
                .unwrap()
                .to_owned();
            let path = format!("/api/device/v1/deployments/{id}/status");
            for state in [
                "downloading",
                "downloaded",
                "installing",
                "rebooting",
                "verifying",
            ] {
                let (status, body) = app
                    .send(
                        Method::POST,
                        &path,
                        Some(credential),
                        Some(json!({"state": state})),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{state}: {body}");
            }
            let (status, body) = app
                .send(
                    Method::POST,
                    &path,
                    Some(credential),
                    Some(json!({"state": "succeeded", "firmware": version})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            *firmware = version;
        }
    }

    fn on(&self, version: &str) -> usize {
        self.devices.iter().filter(|d| d.2 == version).count()
    }
}

async fn create(app: &TestApp, body: Value) -> Value {
    let (status, rollout) = app.post("/api/v1/rollouts", body).await;
    assert_eq!(status, StatusCode::CREATED, "{rollout}");
    rollout
}

async fn rollout(app: &TestApp, id: i64) -> Value {
    let (status, body) = app.get(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn decisions(app: &TestApp, id: i64) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/rollouts/{id}/decisions")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap().clone()
}

fn kinds(decisions: &[Value]) -> Vec<String> {
    decisions
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_owned())
        .collect()
}

fn normal(_: &str, idx: usize) -> f64 {
    100.0 + (idx * 7919 % 13) as f64
}

/// Runs rounds until `done` holds for the rollout or `rounds` run out.
async fn drive(
    app: &TestApp,
    fleet: &mut Fleet,
    id: i64,
    rounds: usize,
    battery: impl Fn(&str, usize) -> f64 + Copy,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..rounds {
        fleet.round(app, battery).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let view = rollout(app, id).await;
        if done(&view) {
            return view;
        }
    }
    panic!("rollout {id} did not get there: {}", rollout(app, id).await);
}

api_tests! {
    async fn a_good_release_rolls_through_every_phase_and_completes(app) with fast(); {
        upload(app, "sensor-fw", "1.0.0", image(4000, 1)).await;
        upload(app, "sensor-fw", "1.1.0", image(4000, 2)).await;
        let mut fleet = Fleet::new(app, 40, "1.0.0").await;
        let created = create(app, json!({
            "artifact": "sensor-fw", "version": "1.1.0", "target": {"query": "device_type = sensor"},
            "strategy": {"phases": [{"percent": 10, "soak": "1s"}, {"percent": 50, "soak": "1s"}, {"percent": 100}]},
            "gates": {"canary": {"baseline_devices": 10}}
        })).await;
        let id = created["id"].as_i64().unwrap();
        assert_eq!(created["status"], "running");
        assert_eq!(created["counts"]["target"], 40);
        assert_eq!((created["phase"].as_u64(), created["n_phases"].as_u64()), (Some(1), Some(3)));

        // The canary is 10% of the target: four devices, and no more until its gate passes.
        let view = drive(app, &mut fleet, id, 50, normal, |v| v["counts"]["succeeded"] == 4).await;
        assert_eq!(view["counts"]["assigned"], 4, "{view}");
        let view = drive(app, &mut fleet, id, 200, normal, |v| v["status"] == "completed").await;
        assert_eq!(view["counts"]["succeeded"], 40, "{view}");
        assert_eq!(fleet.on("1.1.0"), 40);
        let gates = view["gates"].as_array().unwrap();
        assert_eq!(gates.len(), 2, "{view}");
        assert!(gates.iter().all(|g| g["verdict"] == "pass"), "{view}");
        let battery = gates[0]["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "battery_ma").unwrap();
        assert_eq!(battery["test"], "mann_whitney");
        let log = decisions(app, id).await;
        let kinds = kinds(&log);
        assert_eq!(kinds.first().map(String::as_str), Some("created"));
        assert_eq!(kinds.last().map(String::as_str), Some("completed"));
        assert_eq!(kinds.iter().filter(|k| *k == "gate").count(), 2, "{kinds:?}");
        let (_, listed) = app.get("/api/v1/rollouts?status=completed").await;
        assert_eq!(listed.as_array().unwrap().len(), 1);
        let (status, page) = app.get(&format!("/api/v1/rollouts/{id}/devices?state=succeeded&limit=30")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["items"].as_array().unwrap().len(), 30);
        assert!(page["next_cursor"].is_string());
    }

    async fn a_release_that_drains_batteries_pauses_at_the_canary_and_rolls_back(app) with fast(); {
        upload(app, "sensor-fw", "1.0.0", image(4000, 1)).await;
        upload(app, "sensor-fw", "1.1.0", image(4000, 2)).await;
        let mut fleet = Fleet::new(app, 60, "1.0.0").await;
        let created = create(app, json!({
            "name": "battery drain", "artifact": "sensor-fw", "version": "1.1.0", "target": {"query": "device_type = sensor"},
            "strategy": {"phases": [{"percent": 10, "soak": "2s"}, {"percent": 100}]},
            "gates": {"canary": {"baseline_devices": 20}},
            "on_failure": "rollback"
        })).await;
        let id = created["id"].as_i64().unwrap();
        let drain = |version: &str, idx: usize| if version == "1.1.0" { 20.0 * normal(version, idx) } else { normal(version, idx) };
        let view = drive(app, &mut fleet, id, 200, drain, |v| v["status"] == "rolled_back").await;
        assert!(view["reason"].as_str().unwrap().contains("battery_ma"), "{view}");
        assert_eq!(view["counts"]["assigned"], 6, "only the canary took it: {view}");
        let gate = &view["gates"][0];
        assert_eq!(gate["verdict"], "fail");
        let battery = gate["metrics"].as_array().unwrap().iter().find(|m| m["metric"] == "battery_ma").unwrap().clone();
        assert_eq!(battery["verdict"], "fail", "{battery}");
        assert!(battery["effect"].as_f64().unwrap() > 10.0, "{battery}");
        assert_eq!(battery["n_canary"], 6);
        assert_eq!(battery["n_baseline"], 20);
        let log = decisions(app, id).await;
        let last = log.last().unwrap();
        assert_eq!(last["kind"], "rolled_back");
        assert!(last["alert"].as_bool().unwrap());
        assert!(last["evidence"]["metrics"].is_array(), "{last}");

        // The canary devices get the previous release back.
        let view = drive(app, &mut fleet, id, 100, drain, |v| v["counts"]["reverted"] == 6).await;
        assert_eq!(view["counts"]["revert_failed"], 0);
        assert_eq!(fleet.on("1.0.0"), 60);
    }

    async fn rollouts_with_bad_definitions_are_refused_with_reasons(app) with fast(); {
        upload(app, "sensor-fw", "1.1.0", image(4000, 2)).await;
        device(app, "dev-a", "1.0.0").await;
        device(app, "dev-b", "1.0.0").await;
        let (status, _) = app.post("/api/v1/devices", json!({"id": "gw-1", "device_type": "gateway", "firmware": "1.0.0"})).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = app.post("/api/v1/devices", json!({"id": "old-1", "device_type": "sensor", "firmware": "1.0.0"})).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = app.post("/api/v1/devices/old-1/decommission", json!({})).await;
        assert!(status.is_success(), "{body}");
        let base = |extra: Value| {
            let mut body = json!({"artifact": "sensor-fw", "version": "1.1.0", "target": {"query": "device_type = sensor"}});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        let cases: Vec<(Value, StatusCode, &str)> = vec![
            (base(json!({"strategy": {"phases": [{"percent": 50}, {"percent": 10}, {"percent": 100}]}})), StatusCode::UNPROCESSABLE_ENTITY, "must increase"),
            (base(json!({"strategy": {"phases": [{"percent": 5, "soak": "0s"}, {"percent": 100}]}})), StatusCode::UNPROCESSABLE_ENTITY, "soak is zero"),
            (base(json!({"window": {"cron": "0 2 * * 9", "duration": "1h", "time_zone": "UTC"}})), StatusCode::UNPROCESSABLE_ENTITY, "day-of-week"),
            (base(json!({"window": {"cron": "0 2 * * *", "duration": "1h", "time_zone": "Mars/Olympus"}})), StatusCode::UNPROCESSABLE_ENTITY, "Mars/Olympus"),
            (base(json!({"strategy": {"rate": {"base_per_minute": 0, "max_per_minute": 10}}})), StatusCode::UNPROCESSABLE_ENTITY, "base_per_minute"),
            (base(json!({"stratgy": {}})), StatusCode::UNPROCESSABLE_ENTITY, "stratgy"),
            (base(json!({"version": "9.9.9"})), StatusCode::NOT_FOUND, "9.9.9"),
            (base(json!({"target": {"query": "tags.env = nowhere"}})), StatusCode::UNPROCESSABLE_ENTITY, "selects no devices"),
            (base(json!({"target": {"query": "firmware <"}})), StatusCode::UNPROCESSABLE_ENTITY, "target query"),
            (base(json!({"target": {"group": "no-such-group"}})), StatusCode::NOT_FOUND, "no-such-group"),
            (base(json!({"target": {"devices": []}})), StatusCode::UNPROCESSABLE_ENTITY, "empty"),
            (base(json!({"target": {"devices": ["dev-a", "ghost"]}})), StatusCode::UNPROCESSABLE_ENTITY, "ghost"),
            (base(json!({"target": {"devices": ["dev-a", "old-1"]}})), StatusCode::UNPROCESSABLE_ENTITY, "decommissioned"),
            (base(json!({"target": {"query": "id IN (dev-a, gw-1)"}})), StatusCode::UNPROCESSABLE_ENTITY, "1 gateway"),
        ];
        for (body, expected, words) in cases {
            let (status, error) = app.post("/api/v1/rollouts", body.clone()).await;
            assert_eq!(status, expected, "{body}: {error}");
            let message = error["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(words), "{body}: {message:?} lacks {words:?}");
        }
        let (_, listed) = app.get("/api/v1/rollouts").await;
        assert_eq!(listed.as_array().unwrap().len(), 0, "nothing half-written");

        // Overlapping rollouts on the same devices are refused.
        let first = create(app, base(json!({"target": {"devices": ["dev-a"]}}))).await;
        let (status, error) = app.post("/api/v1/rollouts", base(json!({}))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{error}");
        assert!(error["error"]["message"].as_str().unwrap().contains(&format!("rollout {}", first["id"])), "{error}");

        // Commands that do not apply say why.
        let id = first["id"].as_i64().unwrap();
        let (status, error) = app.post(&format!("/api/v1/rollouts/{id}/resume"), json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{error}");
        let (status, error) = app.post(&format!("/api/v1/rollouts/{id}/approve"), json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{error}");
        let (status, _) = app.post("/api/v1/rollouts/999/pause", json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = app.get("/api/v1/rollouts/abc").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = app.get("/api/v1/rollouts?status=sleeping").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let viewer = app.token("viewer").await;
        let (status, _) = app.send(Method::POST, &format!("/api/v1/rollouts/{id}/pause"), Some(&viewer), Some(json!({}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }

    async fn an_aborted_rollout_tells_its_devices_to_stop(app) with fast(); {
        upload(app, "sensor-fw", "1.1.0", image(4000, 2)).await;
        let credential = device(app, "dev-a", "1.0.0").await;
        let created = create(app, json!({"artifact": "sensor-fw", "version": "1.1.0", "target": {"devices": ["dev-a"]},
            "strategy": {"phases": [{"percent": 100}]}})).await;
        let id = created["id"].as_i64().unwrap();
        let mut offer = Value::Null;
        for _ in 0..50 {
            let (status, body) = app.send(Method::GET, "/api/device/v1/deployments/next", Some(&credential), None).await;
            if status == StatusCode::OK {
                offer = body;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let deployment = offer["deployment"].as_i64().expect("offered");
        let path = format!("/api/device/v1/deployments/{deployment}/status");
        let (status, _) = app.send(Method::POST, &path, Some(&credential), Some(json!({"state": "installing"}))).await;
        assert_eq!(status, StatusCode::OK);
        // Out of order and duplicate reports.
        let (status, body) = app.send(Method::POST, &path, Some(&credential), Some(json!({"state": "downloading"}))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("out of order"), "{body}");
        let (status, _) = app.send(Method::POST, &path, Some(&credential), Some(json!({"state": "installing"}))).await;
        assert_eq!(status, StatusCode::OK);

        let (status, view) = app.post(&format!("/api/v1/rollouts/{id}/abort"), json!({"reason": "wrong build"})).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["status"], "aborted");
        assert!(view["reason"].as_str().unwrap().contains("wrong build"));
        let (status, body) = app.send(Method::POST, &path, Some(&credential), Some(json!({"state": "rebooting"}))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("canceled"), "{body}");
        let (status, _) = app.send(Method::GET, "/api/device/v1/deployments/next", Some(&credential), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.post(&format!("/api/v1/rollouts/{id}/abort"), json!({})).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let audit = app.get("/api/v1/audit?action=rollout.").await.1;
        let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert!(actions.contains(&"rollout.create") && actions.contains(&"rollout.abort"), "{actions:?}");
    }

    async fn a_phase_waits_for_approval_and_operators_pause_and_resume(app) with fast(); {
        upload(app, "sensor-fw", "1.1.0", image(4000, 2)).await;
        let mut fleet = Fleet::new(app, 10, "1.0.0").await;
        let created = create(app, json!({"artifact": "sensor-fw", "version": "1.1.0", "target": {"query": "device_type = sensor"},
            "strategy": {"phases": [{"percent": 20, "soak": "1s"}, {"percent": 100, "approval": true}]},
            "gates": {"canary": {"enabled": false}}})).await;
        let id = created["id"].as_i64().unwrap();
        let view = drive(app, &mut fleet, id, 100, normal, |v| v["waiting_for"].as_str().is_some_and(|w| w.contains("approval"))).await;
        assert_eq!(view["counts"]["succeeded"], 2, "{view}");
        let (status, view) = app.post(&format!("/api/v1/rollouts/{id}/approve"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        let (status, view) = app.post(&format!("/api/v1/rollouts/{id}/pause"), json!({"reason": "lunch"})).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["status"], "paused");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (status, view) = app.post(&format!("/api/v1/rollouts/{id}/resume"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        drive(app, &mut fleet, id, 100, normal, |v| v["status"] == "completed").await;
        let kinds = kinds(&decisions(app, id).await);
        for kind in ["waiting_approval", "approved", "paused", "resumed", "completed"] {
            assert!(kinds.iter().any(|k| k == kind), "{kind} missing from {kinds:?}");
        }
    }
}

/// Restarts the server in the middle of a rollout: the rollout resumes where it stood, and no
/// device is skipped or offered the release twice.
async fn restart_mid_rollout(backend: Backend) {
    let Some(mut app) = spawn_app_with(backend, fast()).await else {
        eprintln!("skipped: DROVER_TEST_PG is not set");
        return;
    };
    upload(&app, "sensor-fw", "1.1.0", image(4000, 2)).await;
    let mut fleet = Fleet::new(&app, 30, "1.0.0").await;
    let created = create(&app, json!({"artifact": "sensor-fw", "version": "1.1.0", "target": {"query": "device_type = sensor"},
        "strategy": {"phases": [{"percent": 10, "soak": "1s"}, {"percent": 50, "soak": "1s"}, {"percent": 100}]},
        "max_parallel": 4, "gates": {"canary": {"baseline_devices": 5}}})).await;
    let id = created["id"].as_i64().unwrap();
    drive(&app, &mut fleet, id, 100, normal, |v| {
        v["counts"]["succeeded"].as_u64().unwrap() >= 8
    })
    .await;
    app.restart().await;
    let view = drive(&app, &mut fleet, id, 300, normal, |v| {
        v["status"] == "completed"
    })
    .await;
    assert_eq!(view["counts"]["succeeded"], 30, "{view}");
    assert_eq!(view["counts"]["assigned"], 30, "{view}");
    // Exactly one deployment per device.
    let mut per_device: HashMap<String, usize> = HashMap::new();
    for (device, _, _) in &fleet.devices {
        let (_, deployments) = app
            .get(&format!("/api/v1/devices/{device}/deployments"))
            .await;
        per_device.insert(device.clone(), deployments.as_array().unwrap().len());
    }
    assert!(per_device.values().all(|n| *n == 1), "{per_device:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_a_server_restart_on_sqlite() {
    restart_mid_rollout(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_survives_a_server_restart_on_postgres() {
    restart_mid_rollout(Backend::Postgres).await;
}
