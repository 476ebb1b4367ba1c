//! Fleet jobs and remote diagnostics over HTTP: progress within `max_parallel`, timeouts and
//! retries, rejections, cancel telling the device to stop, `config` jobs through the shadow, every
//! bad input answered with a precise 4xx, and diagnostics answered, timed out (504) and the
//! reboot confirmation flow.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

/// Jobs tick this often in these tests.
fn fast() -> AppOptions {
    AppOptions {
        rollout_tick: Some(Duration::from_millis(100)),
        ..AppOptions::default()
    }
}

/// Registers an active device and returns its credential.
async fn device(app: &TestApp, id: &str) -> String {
    let (status, created) = app
        .post(
            "/api/v1/devices",
            json!({ "id": id, "device_type": "sensor", "issue_credential": true }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["credential"].as_str().unwrap().to_owned()
}

async fn as_device(
    app: &TestApp,
    credential: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    app.send(method, path, Some(credential), body).await
}

/// The device's next job, waiting up to `wait` seconds; `None` on 204.
async fn next(app: &TestApp, credential: &str, wait: u64) -> Option<Value> {
    let (status, body) = as_device(
        app,
        credential,
        Method::GET,
        &format!("/api/device/v1/jobs/next?wait={wait}"),
        None,
    )
    .await;
    match status {
        StatusCode::OK => Some(body),
        StatusCode::NO_CONTENT => None,
        other => panic!("jobs/next answered {other}: {body}"),
    }
}

async fn report(
    app: &TestApp,
    credential: &str,
    offer: &Value,
    body: Value,
) -> (StatusCode, Value) {
    let path = format!("/api/device/v1/jobs/{}/status", offer["execution_id"]);
    as_device(app, credential, Method::POST, &path, Some(body)).await
}

async fn create(app: &TestApp, body: Value) -> Value {
    let (status, job) = app.post("/api/v1/jobs", body).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    job
}

/// Polls the job until `done` holds (10 s at most).
async fn until(app: &TestApp, id: &Value, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, job) = app.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if done(&job) {
            return job;
        }
        assert!(Instant::now() < deadline, "job never got there: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// Answers the next diagnostics request of a device in the background with `result`.
fn answer_next(app: &TestApp, credential: &str, result: Value) -> tokio::task::JoinHandle<Value> {
    let (http, base, credential) = (app.http.clone(), app.base.clone(), credential.to_owned());
    tokio::spawn(async move {
        let response = http
            .get(format!("{base}/api/device/v1/diagnostics/next?wait=10"))
            .bearer_auth(&credential)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let command: Value = response.json().await.unwrap();
        let response = http
            .post(format!(
                "{base}/api/device/v1/diagnostics/{}",
                command["request_id"].as_str().unwrap()
            ))
            .bearer_auth(&credential)
            .json(&json!({ "result": result }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        command
    })
}

api_tests! {
    async fn jobs_progress_within_max_parallel_to_completion(app) with fast(); {
        let mut credentials = Vec::new();
        for id in ["jp-1", "jp-2", "jp-3"] {
            credentials.push(device(app, id).await);
        }
        let job = create(app, json!({
            "kind": "command", "target": {"query": "id ~ \"jp-*\""},
            "payload": {"name": "flush-cache", "level": 2}, "max_parallel": 2, "timeout": "30s"
        })).await;
        assert_eq!(job["progress"]["total"], 3);
        assert_eq!(job["state"], "running");
        let job = until(app, &job["id"], |j| j["progress"]["in_progress"] == 2).await;
        assert_eq!(job["progress"]["queued"], 1);

        let mut offers = Vec::new();
        let mut idle = None;
        for credential in &credentials {
            match next(app, credential, 0).await {
                Some(offer) => offers.push((credential.clone(), offer)),
                None => idle = Some(credential.clone()),
            }
        }
        assert_eq!(offers.len(), 2, "max_parallel devices at once");
        let (credential, offer) = &offers[0];
        assert_eq!(offer["kind"], "command");
        assert_eq!(offer["payload"]["name"], "flush-cache");
        assert_eq!(offer["attempt"], 1);
        let (status, body) = report(app, credential, offer, json!({"state": "in_progress"})).await;
        assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("in_progress")));
        let (status, body) = report(app, credential, offer, json!({"state": "succeeded", "result": {"freed": 12}})).await;
        assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("succeeded")), "{body}");

        // The freed slot goes to the third device, whose long-poll wakes.
        let third = next(app, idle.as_ref().unwrap(), 10).await.expect("an offer within the wait");
        for (credential, offer) in [(&offers[1].0, &offers[1].1), (idle.as_ref().unwrap(), &third)] {
            let (status, _) = report(app, credential, offer, json!({"state": "succeeded"})).await;
            assert_eq!(status, StatusCode::OK);
        }
        let job = until(app, &job["id"], |j| j["state"] == "completed").await;
        assert_eq!(job["progress"]["succeeded"], 3);
        let (_, page) = app.get(&format!("/api/v1/jobs/{}/executions?state=succeeded", job["id"])).await;
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert!(items.iter().any(|e| e["result"] == json!({"freed": 12})));
        let (_, list) = app.get("/api/v1/jobs?state=completed").await;
        assert_eq!(list.as_array().unwrap().len(), 1);
    }

    async fn silent_devices_time_out_and_are_retried_but_rejections_are_final(app) with fast(); {
        let silent = device(app, "jt-silent").await;
        let picky = device(app, "jt-picky").await;
        let job = create(app, json!({
            "kind": "reboot", "target": {"devices": ["jt-silent", "jt-picky"]},
            "timeout": "1s", "retries": 1, "backoff": "0s"
        })).await;
        let offer = next(app, &picky, 10).await.unwrap();
        let (status, body) = report(app, &picky, &offer, json!({"state": "rejected", "message": "reboots are disabled here"})).await;
        assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("rejected")));
        let first = next(app, &silent, 10).await.unwrap();
        assert_eq!(first["attempt"], 1);
        // After the timeout it is offered again, as attempt 2 …
        let deadline = Instant::now() + Duration::from_secs(10);
        let second = loop {
            let offer = next(app, &silent, 1).await.unwrap();
            if offer["attempt"] == 2 {
                break offer;
            }
            assert!(Instant::now() < deadline, "never retried");
        };
        // … and a late report of attempt 1 is refused.
        let (status, body) = report(app, &silent, &first, json!({"state": "succeeded", "attempt": 1})).await;
        assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "stale_attempt"), "{body}");
        let _ = second;
        let job = until(app, &job["id"], |j| j["state"] == "completed").await;
        assert_eq!(job["progress"]["timed_out"], 1);
        assert_eq!(job["progress"]["rejected"], 1);
        let (_, page) = app.get(&format!("/api/v1/jobs/{}/executions", job["id"])).await;
        let picked = page["items"].as_array().unwrap().iter().find(|e| e["device"] == "jt-picky").unwrap().clone();
        assert_eq!((picked["state"].as_str(), picked["attempt"].as_u64()), (Some("rejected"), Some(1)), "never retried");
        assert_eq!(picked["error"], "reboots are disabled here");
    }

    async fn canceling_a_job_tells_its_devices_to_stop(app) with fast(); {
        let credential = device(app, "jc-1").await;
        device(app, "jc-2").await;
        let job = create(app, json!({
            "kind": "diagnostics", "target": {"devices": ["jc-1", "jc-2"]},
            "payload": {"action": "log_tail", "lines": 20}, "max_parallel": 1
        })).await;
        // Executions start in the order devices were registered: jc-1 runs, jc-2 waits.
        let offer = next(app, &credential, 10).await.expect("an offer");
        let (status, canceled) = app.post(&format!("/api/v1/jobs/{}/cancel", job["id"]), json!({"reason": "wrong lines"})).await;
        assert_eq!(status, StatusCode::OK, "{canceled}");
        assert_eq!(canceled["state"], "canceled");
        assert_eq!(canceled["progress"]["canceled"], 2);
        let (status, body) = report(app, &credential, &offer, json!({"state": "in_progress"})).await;
        assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "job_canceled"), "{body}");
        assert!(next(app, &credential, 0).await.is_none());
        let (status, body) = app.post(&format!("/api/v1/jobs/{}/cancel", job["id"]), json!({})).await;
        assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "conflict"), "{body}");
        let (_, page) = app.get(&format!("/api/v1/jobs/{}/executions", job["id"])).await;
        assert!(page["items"].as_array().unwrap().iter().all(|e| e["state"] == "canceled" && e["error"] == "wrong lines"));
    }

    async fn config_jobs_push_desired_state_and_succeed_when_reported(app) with fast(); {
        let credential = device(app, "jf-1").await;
        let job = create(app, json!({
            "kind": "config", "target": {"devices": ["jf-1"]}, "payload": {"sample_rate": 10}
        })).await;
        let (status, delta) = as_device(app, &credential, Method::GET, "/api/device/v1/shadow/delta?wait=10", None).await;
        assert_eq!(status, StatusCode::OK, "{delta}");
        assert_eq!(delta["state"]["sample_rate"], 10);
        let (status, _) = as_device(app, &credential, Method::POST, "/api/device/v1/shadow",
            Some(json!({"state": {"reported": {"sample_rate": 10}}}))).await;
        assert_eq!(status, StatusCode::OK);
        let job = until(app, &job["id"], |j| j["state"] == "completed").await;
        assert_eq!(job["progress"]["succeeded"], 1);
    }

    async fn bad_job_input_is_refused_precisely_and_writes_nothing(app) {
        let credential = device(app, "jb-1").await;
        let other = device(app, "jb-2").await;
        for (body, status, needle) in [
            (json!({"kind": "explode", "target": {"devices": ["jb-1"]}}), StatusCode::UNPROCESSABLE_ENTITY, "unknown variant"),
            (json!({"kind": "reboot", "target": {"devices": []}}), StatusCode::UNPROCESSABLE_ENTITY, "empty"),
            (json!({"kind": "reboot", "target": {}}), StatusCode::BAD_REQUEST, "target"),
            (json!({"kind": "command", "target": {"devices": ["jb-1"]}, "payload": {"nom": "x"}}), StatusCode::UNPROCESSABLE_ENTITY, "\"name\""),
            (json!({"kind": "config", "target": {"devices": ["jb-1"]}, "payload": [1, 2]}), StatusCode::UNPROCESSABLE_ENTITY, "payload"),
            (json!({"kind": "reboot", "target": {"devices": ["jb-1"]}, "max_parallel": 0}), StatusCode::UNPROCESSABLE_ENTITY, "max_parallel"),
            (json!({"kind": "reboot", "target": {"devices": ["jb-1"]}, "timeout": "5 minutes"}), StatusCode::UNPROCESSABLE_ENTITY, "timeout"),
            (json!({"kind": "reboot", "target": {"devices": ["jb-1"]}, "timeout": "2d"}), StatusCode::UNPROCESSABLE_ENTITY, "timeout"),
            (json!({"kind": "reboot", "target": {"devices": ["ghost"]}}), StatusCode::UNPROCESSABLE_ENTITY, "unknown devices"),
            (json!({"kind": "reboot", "target": {"group": "ghosts"}}), StatusCode::NOT_FOUND, "ghosts"),
        ] {
            let (got, error) = app.post("/api/v1/jobs", body.clone()).await;
            assert_eq!(got, status, "{body} → {error}");
            let message = error["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(needle), "{body} → {message}");
        }
        let (_, list) = app.get("/api/v1/jobs").await;
        assert_eq!(list, json!([]), "nothing was written");
        let (status, body) = app.get("/api/v1/jobs/999").await;
        assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
        let (status, _) = app.get("/api/v1/jobs/abc").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = app.get("/api/v1/jobs?state=paused").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = app.post("/api/v1/jobs/999/cancel", json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Device side: another device's execution is not found, bad bodies are refused.
        let job = create(app, json!({"kind": "reboot", "target": {"devices": ["jb-1"]}})).await;
        let offer = next(app, &credential, 10).await.expect("an offer");
        assert_eq!(offer["job_id"], job["id"]);
        let (status, body) = report(app, &other, &offer, json!({"state": "succeeded"})).await;
        assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"), "{body}");
        let (status, _) = report(app, &credential, &offer, json!({"state": "exploded"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, _) = report(app, &credential, &offer, json!({"state": "succeeded", "execution_id": 424242})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = as_device(app, &credential, Method::POST, "/api/device/v1/jobs/zero/status", Some(json!({"state": "succeeded"}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = as_device(app, &credential, Method::GET, "/api/device/v1/jobs/next?wait=61", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = app.send(Method::GET, "/api/device/v1/jobs/next", Some("not-a-credential"), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = report(app, &credential, &offer, json!({"state": "succeeded"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = report(app, &credential, &offer, json!({"state": "failed"})).await;
        assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "execution_not_in_progress"));
    }

    async fn diagnostics_are_answered_or_time_out_with_the_request_id(app) {
        let credential = device(app, "dg-1").await;
        let device_side = answer_next(app, &credential, json!({"hostname": "dg-1", "uptime_secs": 42}));
        let (status, answer) = app.post("/api/v1/devices/dg-1/diagnostics", json!({"action": "system_info"})).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["result"]["hostname"], "dg-1");
        assert_eq!(answer["action"], "system_info");
        let command = device_side.await.unwrap();
        assert_eq!(command["request_id"], answer["request_id"]);

        let (status, error) = app.post("/api/v1/devices/dg-1/diagnostics", json!({"action": "ping", "timeout": "1s"})).await;
        assert_eq!((status, code(&error)), (StatusCode::GATEWAY_TIMEOUT, "device_timeout"), "{error}");
        let request_id = error["error"]["details"]["request_id"].as_str().unwrap().to_owned();
        assert!(error["error"]["message"].as_str().unwrap().contains("did not answer within 1s"));
        let (status, body) = as_device(app, &credential, Method::POST, &format!("/api/device/v1/diagnostics/{request_id}"),
            Some(json!({"result": "pong"}))).await;
        assert_eq!((status, code(&body)), (StatusCode::CONFLICT, "request_expired"), "{body}");

        for (body, status) in [
            (json!({"action": "format_disk"}), StatusCode::UNPROCESSABLE_ENTITY),
            (json!({"action": "log_tail", "lines": 0}), StatusCode::BAD_REQUEST),
            (json!({"action": "ping", "lines": 5}), StatusCode::BAD_REQUEST),
            (json!({"action": "ping", "timeout": "5m"}), StatusCode::BAD_REQUEST),
        ] {
            let (got, error) = app.post("/api/v1/devices/dg-1/diagnostics", body.clone()).await;
            assert_eq!(got, status, "{body} → {error}");
        }
        let (status, _) = app.post("/api/v1/devices/nobody/diagnostics", json!({"action": "ping"})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = as_device(app, &credential, Method::POST, "/api/device/v1/diagnostics/diag-0000000000000000",
            Some(json!({"result": 1}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = as_device(app, &credential, Method::POST, "/api/device/v1/diagnostics/diag-0000000000000000",
            Some(json!({}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    async fn a_remote_reboot_needs_a_single_use_confirmation(app) {
        let credential = device(app, "rb-1").await;
        device(app, "rb-2").await;
        let (status, error) = app.post("/api/v1/devices/rb-1/diagnostics", json!({"action": "reboot"})).await;
        assert_eq!((status, code(&error)), (StatusCode::CONFLICT, "confirmation_required"), "{error}");
        let token = error["error"]["details"]["token"].as_str().unwrap().to_owned();
        let (status, error) = app.post("/api/v1/devices/rb-1/diagnostics", json!({"action": "reboot", "confirm": "drc_wrong"})).await;
        assert_eq!((status, code(&error)), (StatusCode::BAD_REQUEST, "invalid_confirmation"));
        let (status, error) = app.post("/api/v1/devices/rb-2/diagnostics", json!({"action": "reboot", "confirm": token})).await;
        assert_eq!((status, code(&error)), (StatusCode::BAD_REQUEST, "invalid_confirmation"), "bound to its device");

        let device_side = answer_next(app, &credential, json!({"rebooting": true}));
        let (status, answer) = app.post("/api/v1/devices/rb-1/diagnostics", json!({"action": "reboot", "confirm": token})).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(device_side.await.unwrap()["action"], "reboot");
        let (status, error) = app.post("/api/v1/devices/rb-1/diagnostics", json!({"action": "reboot", "confirm": token})).await;
        assert_eq!((status, code(&error)), (StatusCode::CONFLICT, "confirmation_used"));
    }
}
