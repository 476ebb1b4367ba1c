//! Artifacts and single-device deployments over HTTP: streamed multipart uploads with every refusal,
//! downloads with range requests, per-device download authorisation, and the deployment states a
//! device reports.

use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, RANGE};
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

/// An image of `len` bytes that differs per `seed`.
pub fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Uploads an artifact; `parts` overrides the usual metadata + image parts.
pub async fn upload_parts(app: &TestApp, parts: Vec<(&str, Part)>) -> (StatusCode, Value) {
    let mut form = Form::new();
    for (name, part) in parts {
        form = form.part(name.to_owned(), part);
    }
    let response = app
        .http
        .post(app.url("/api/v1/artifacts"))
        .bearer_auth(ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

pub fn metadata(name: &str, version: &str) -> Value {
    json!({
        "name": name,
        "version": version,
        "device_types": ["sensor"],
        "provenance": { "git_commit": "0123abc", "build_id": "42", "ci_url": "https://ci.example.com/runs/42" },
        "release_notes": "Fixes the thing."
    })
}

pub fn json_part(value: &Value) -> Part {
    Part::text(value.to_string())
        .mime_str("application/json")
        .unwrap()
}

pub fn bytes_part(bytes: Vec<u8>) -> Part {
    Part::bytes(bytes).file_name("firmware.img")
}

/// Uploads `bytes` as `name` `version` for device type `sensor`.
pub async fn upload(app: &TestApp, name: &str, version: &str, bytes: Vec<u8>) -> Value {
    let (status, body) = upload_parts(
        app,
        vec![
            ("metadata", json_part(&metadata(name, version))),
            ("image", bytes_part(bytes)),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Registers an active `sensor` device running `firmware`; returns its credential.
pub async fn device(app: &TestApp, id: &str, firmware: &str) -> String {
    let (status, created) = app
        .post(
            "/api/v1/devices",
            json!({ "id": id, "device_type": "sensor", "firmware": firmware, "issue_credential": true }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["credential"].as_str().unwrap().to_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// GET with a credential and extra headers; returns status, headers and raw body.
async fn fetch(
    app: &TestApp,
    path: &str,
    token: &str,
    headers: &[(reqwest::header::HeaderName, String)],
) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = app.http.get(app.url(path)).bearer_auth(token);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

/// The device-API download path of a TUF target with its hash prefix.
fn hashed(target: &str, sha256: &str) -> String {
    let (dir, file) = target.rsplit_once('/').unwrap();
    format!("/api/device/v1/tuf/targets/{dir}/{sha256}.{file}")
}

api_tests! {
    async fn an_uploaded_artifact_is_listed_shown_and_downloaded_with_ranges(app) {
        let bytes = image(300_000, 1);
        let view = upload(app, "sensor-fw", "1.0.0", bytes.clone()).await;
        assert_eq!(view["size"], 300_000);
        assert_eq!(view["sha256"], sha256_hex(&bytes));
        assert_eq!(view["provenance"]["git_commit"], "0123abc");
        assert_eq!(view["target"], "sensor-fw/1.0.0/sensor-fw-1.0.0.img");

        let (status, list) = app.get("/api/v1/artifacts?name=sensor-fw").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        let (status, shown) = app.get("/api/v1/artifacts/sensor-fw/1.0.0").await;
        assert_eq!(status, StatusCode::OK, "{shown}");
        assert_eq!(shown["release_notes"], "Fixes the thing.");

        let path = "/api/v1/artifacts/sensor-fw/1.0.0/image";
        let (status, headers, body) = fetch(app, path, ADMIN_TOKEN, &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, bytes);
        let etag = headers[ETAG].to_str().unwrap().to_owned();
        assert_eq!(etag, format!("\"{}\"", sha256_hex(&bytes)));
        assert_eq!(headers["accept-ranges"], "bytes");

        // Resume from the middle.
        let (status, headers, body) =
            fetch(app, path, ADMIN_TOKEN, &[(RANGE, "bytes=100000-".into()), (IF_RANGE, etag.clone())]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(headers[CONTENT_RANGE], "bytes 100000-299999/300000");
        assert_eq!(body, bytes[100_000..]);
        // A closed range and a suffix range.
        let (status, _, body) = fetch(app, path, ADMIN_TOKEN, &[(RANGE, "bytes=10-19".into())]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(body, bytes[10..20]);
        let (_, _, body) = fetch(app, path, ADMIN_TOKEN, &[(RANGE, "bytes=-5".into())]).await;
        assert_eq!(body, bytes[299_995..]);
        // Beyond the end: 416 with the size.
        let (status, headers, _) = fetch(app, path, ADMIN_TOKEN, &[(RANGE, "bytes=300000-".into())]).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(headers[CONTENT_RANGE], "bytes */300000");
        // A stale If-Range gets the whole file.
        let (status, _, body) =
            fetch(app, path, ADMIN_TOKEN, &[(RANGE, "bytes=5-".into()), (IF_RANGE, "\"other\"".into())]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 300_000);
    }

    async fn bad_uploads_are_refused_and_leave_nothing_behind(app) with AppOptions { max_artifact_bytes: Some(4096), ..AppOptions::default() }; {
        let img = || bytes_part(image(1000, 2));
        let meta = |v: &Value| json_part(v);
        type Case = (Vec<(&'static str, Part)>, StatusCode, &'static str);
        let cases: Vec<Case> = vec![
            (vec![("image", img())], StatusCode::BAD_REQUEST, "expected the part \"metadata\""),
            (vec![("metadata", Part::text("{not json"))], StatusCode::UNPROCESSABLE_ENTITY, "invalid artifact metadata"),
            (vec![("metadata", meta(&json!({"name": "fw", "version": "1.0.0", "device_types": []})))], StatusCode::UNPROCESSABLE_ENTITY, "device_types"),
            (vec![("metadata", meta(&json!({"name": "fw/x", "version": "1.0.0", "device_types": ["s"]})))], StatusCode::UNPROCESSABLE_ENTITY, "artifact name"),
            (vec![("metadata", meta(&json!({"name": "fw", "version": "one", "device_types": ["s"]})))], StatusCode::UNPROCESSABLE_ENTITY, "invalid artifact metadata"),
            (vec![("metadata", meta(&json!({"name": "fw", "version": "1.0.0", "device_types": ["s"], "colour": "red"})))], StatusCode::UNPROCESSABLE_ENTITY, "unknown field"),
            (vec![("metadata", meta(&json!({"name": "fw", "version": "1.0.0", "device_types": ["s"], "provenance": {"ci_url": "ftp://x"}})))], StatusCode::UNPROCESSABLE_ENTITY, "ci_url"),
            (vec![("metadata", meta(&json!({"name": "fw", "version": "1.0.0", "device_types": ["s"], "security_floor": "2.0.0"})))], StatusCode::UNPROCESSABLE_ENTITY, "security_floor"),
            (vec![("metadata", meta(&metadata("fw", "1.0.0")))], StatusCode::BAD_REQUEST, "no image part"),
            (vec![("metadata", meta(&metadata("fw", "1.0.0"))), ("image", Part::bytes(Vec::new()))], StatusCode::UNPROCESSABLE_ENTITY, "empty"),
            (vec![("metadata", meta(&metadata("fw", "1.0.0"))), ("image", img()), ("symbols", Part::bytes(b"not an elf".to_vec()))], StatusCode::UNPROCESSABLE_ENTITY, "ELF"),
            (vec![("metadata", meta(&metadata("fw", "1.0.0"))), ("image", img()), ("extra", img())], StatusCode::BAD_REQUEST, "unexpected part"),
            (vec![("metadata", meta(&metadata("fw", "1.0.0"))), ("image", bytes_part(image(5000, 1)))], StatusCode::PAYLOAD_TOO_LARGE, "limit"),
        ];
        for (parts, status, needle) in cases {
            let (got, body) = upload_parts(app, parts).await;
            assert_eq!(got, status, "{needle}: {body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(needle), "expected {needle:?} in {message:?}");
        }
        // Not multipart at all.
        let (status, body) = app.post("/api/v1/artifacts", json!({"name": "fw"})).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
        // Nothing was recorded, and no file was left in storage.
        let (_, list) = app.get("/api/v1/artifacts").await;
        assert_eq!(list["items"].as_array().unwrap().len(), 0, "{list}");
        assert_eq!(stored_files(app), Vec::<String>::new());

        // A version is immutable.
        upload(app, "fw", "1.0.0", image(1000, 3)).await;
        let (status, body) = upload_parts(
            app,
            vec![("metadata", json_part(&metadata("fw", "1.0.0"))), ("image", bytes_part(image(1000, 4)))],
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(stored_files(app).len(), 1, "only the first upload's image is stored");
        // Viewers cannot upload.
        let viewer = app.token("viewer").await;
        let response = app
            .http
            .post(app.url("/api/v1/artifacts"))
            .bearer_auth(&viewer)
            .multipart(Form::new().part("metadata", json_part(&metadata("fw", "2.0.0"))))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }

    async fn symbols_are_kept_beside_the_image(app) {
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.extend(image(5000, 9));
        let (status, body) = upload_parts(
            app,
            vec![
                ("metadata", json_part(&metadata("fw", "1.0.0"))),
                ("image", bytes_part(image(2000, 1))),
                ("symbols", Part::bytes(elf.clone()).file_name("fw.elf")),
            ],
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["symbols"]["size"], elf.len());
        let (status, _, bytes) = fetch(app, "/api/v1/artifacts/fw/1.0.0/symbols", ADMIN_TOKEN, &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bytes, elf);
        upload(app, "fw", "1.1.0", image(2000, 2)).await;
        let (status, body) = app.get("/api/v1/artifacts/fw/1.1.0/symbols").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }

    async fn a_device_walks_a_deployment_to_success_and_only_sees_its_own_files(app) {
        let bytes = image(50_000, 5);
        let view = upload(app, "sensor-fw", "1.1.0", bytes.clone()).await;
        let credential = device(app, "dev-1", "1.0.0").await;
        let other = device(app, "dev-2", "1.0.0").await;

        // Nothing to do yet.
        let (status, _) = app.send(Method::GET, "/api/device/v1/deployments/next", Some(&credential), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);

        let (status, deployment) = app
            .post("/api/v1/devices/dev-1/deployments", json!({"artifact": "sensor-fw", "version": "1.1.0"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{deployment}");
        assert_eq!(deployment["state"], "pending");
        assert_eq!(deployment["from_version"], "1.0.0");
        let id = deployment["id"].as_i64().unwrap();

        let (status, offer) = app.send(Method::GET, "/api/device/v1/deployments/next", Some(&credential), None).await;
        assert_eq!(status, StatusCode::OK, "{offer}");
        assert_eq!(offer["deployment"], id);
        assert_eq!(offer["image"]["sha256"], view["sha256"]);
        let path = hashed(offer["image"]["target"].as_str().unwrap(), view["sha256"].as_str().unwrap());

        // The device downloads its image, resuming half-way.
        let (status, _, first) = fetch(app, &path, &credential, &[(RANGE, "bytes=0-24999".into())]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        let (status, _, rest) = fetch(app, &path, &credential, &[(RANGE, "bytes=25000-".into())]).await;
        assert_eq!(status, StatusCode::PARTIAL_CONTENT);
        assert_eq!([first, rest].concat(), bytes);
        // Another device, and a wrong hash, get a 404 that tells nothing.
        let (status, _, _) = fetch(app, &path, &other, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let wrong = hashed(offer["image"]["target"].as_str().unwrap(), &"0".repeat(64));
        let (status, _, _) = fetch(app, &wrong, &credential, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = fetch(app, &path, "not-a-credential", &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let report = |body: Value| {
            let credential = credential.clone();
            async move {
                app.send(Method::POST, &format!("/api/device/v1/deployments/{id}/status"), Some(&credential), Some(body)).await
            }
        };
        for state in ["downloading", "downloaded", "installing", "rebooting", "verifying"] {
            let (status, body) = report(json!({"state": state})).await;
            assert_eq!(status, StatusCode::OK, "{state}: {body}");
        }
        // Success counts only from the new image.
        let (status, body) = report(json!({"state": "succeeded", "firmware": "1.0.0"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (status, body) = report(json!({"state": "succeeded"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (status, body) = report(json!({"state": "pending"})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (status, body) = report(json!({"state": "succeeded", "firmware": "1.1.0"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"], "succeeded");
        let states: Vec<&str> = body["history"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["pending", "downloading", "downloaded", "installing", "rebooting", "verifying", "succeeded"]);
        // Over: further reports conflict, there is nothing next, the file is no longer served.
        let (status, _) = report(json!({"state": "verifying"})).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, _) = app.send(Method::GET, "/api/device/v1/deployments/next", Some(&credential), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _, _) = fetch(app, &path, &credential, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, shown) = app.get("/api/v1/devices/dev-1").await;
        assert_eq!(shown["firmware"], "1.1.0");
        // Another device cannot report on dev-1's deployment.
        let (status, _) = app.send(Method::POST, &format!("/api/device/v1/deployments/{id}/status"), Some(&other), Some(json!({"state": "failed", "reason": "x"}))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    async fn deployments_are_checked_before_they_are_created(app) {
        upload(app, "sensor-fw", "1.1.0", image(1000, 1)).await;
        upload(app, "sensor-fw", "0.9.0", image(1000, 2)).await;
        device(app, "dev-1", "1.0.0").await;
        let (status, _) = app.post("/api/v1/devices", json!({"id": "cam-1", "device_type": "camera"})).await;
        assert_eq!(status, StatusCode::CREATED);
        let cases = [
            ("dev-1", json!({"artifact": "sensor-fw", "version": "2.0.0"}), StatusCode::NOT_FOUND, "not found"),
            ("nobody", json!({"artifact": "sensor-fw", "version": "1.1.0"}), StatusCode::NOT_FOUND, "not found"),
            ("cam-1", json!({"artifact": "sensor-fw", "version": "1.1.0"}), StatusCode::UNPROCESSABLE_ENTITY, "device types"),
            ("dev-1", json!({"artifact": "sensor-fw", "version": "0.9.0"}), StatusCode::UNPROCESSABLE_ENTITY, "allow_downgrade"),
            ("dev-1", json!({"artifact": "sensor-fw", "version": "1.1.0", "speed": 3}), StatusCode::UNPROCESSABLE_ENTITY, "unknown field"),
        ];
        for (device, body, status, needle) in cases {
            let (got, answer) = app.post(&format!("/api/v1/devices/{device}/deployments"), body).await;
            assert_eq!(got, status, "{answer}");
            assert!(answer["error"]["message"].as_str().unwrap().contains(needle), "{answer}");
        }
        let (status, body) = app
            .post("/api/v1/devices/dev-1/deployments", json!({"artifact": "sensor-fw", "version": "0.9.0", "allow_downgrade": true}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["id"].as_i64().unwrap();
        // One unfinished deployment per device.
        let (status, body) = app.post("/api/v1/devices/dev-1/deployments", json!({"artifact": "sensor-fw", "version": "1.1.0"})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        // An artifact being deployed cannot be deleted; after a cancel it can.
        let (status, body) = app.delete("/api/v1/artifacts/sensor-fw/0.9.0").await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(code(&body), "conflict");
        let (status, body) = app.post(&format!("/api/v1/devices/dev-1/deployments/{id}/cancel"), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["state"], "canceled");
        let (status, _) = app.delete("/api/v1/artifacts/sensor-fw/0.9.0").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.get("/api/v1/artifacts/sensor-fw/0.9.0").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // The history survives the artifact.
        let (status, list) = app.get("/api/v1/devices/dev-1/deployments").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list[0]["version"], "0.9.0");
        assert_eq!(list[0]["state"], "canceled");
        assert_eq!(stored_files(app).len(), 1);
    }

    async fn a_download_only_deployment_ends_once_the_image_is_downloaded(app) {
        upload(app, "sensor-fw", "1.1.0", image(1000, 1)).await;
        let credential = device(app, "dev-1", "1.0.0").await;
        let (_, deployment) = app
            .post("/api/v1/devices/dev-1/deployments", json!({"artifact": "sensor-fw", "version": "1.1.0", "update_type": "download_only"}))
            .await;
        assert_eq!(deployment["update_type"], "download_only");
        let path = format!("/api/device/v1/deployments/{}/status", deployment["id"]);
        let (status, body) = app.send(Method::POST, &path, Some(&credential), Some(json!({"state": "downloaded"}))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["finished_at"].is_string(), "{body}");
        let (status, _) = app.send(Method::GET, "/api/device/v1/deployments/next", Some(&credential), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        // Installing it is a new deployment.
        let (status, body) = app.post("/api/v1/devices/dev-1/deployments", json!({"artifact": "sensor-fw", "version": "1.1.0"})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    async fn a_failed_report_needs_a_reason_and_keeps_it(app) {
        upload(app, "sensor-fw", "1.1.0", image(1000, 1)).await;
        let credential = device(app, "dev-1", "1.0.0").await;
        let (_, deployment) = app.post("/api/v1/devices/dev-1/deployments", json!({"artifact": "sensor-fw", "version": "1.1.0"})).await;
        let path = format!("/api/device/v1/deployments/{}/status", deployment["id"]);
        let (status, body) = app.send(Method::POST, &path, Some(&credential), Some(json!({"state": "rolled_back"}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (status, body) = app
            .send(Method::POST, &path, Some(&credential), Some(json!({"state": "rolled_back", "reason": "health check failed: app not running", "failure": "health_check_failed", "firmware": "1.0.0"})))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["failure"], "health_check_failed");
        let (status, body) = app.send(Method::POST, "/api/device/v1/deployments/abc/status", Some(&credential), Some(json!({"state": "failed", "reason": "x"}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
}

/// Files in the test server's local artifact store (staging included).
fn stored_files(app: &TestApp) -> Vec<String> {
    let root = app.data_dir().join("artifacts");
    let mut files = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    files
}
