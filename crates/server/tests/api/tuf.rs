//! The server's TUF repository: served under the device API, re-signed when artifacts change,
//! root rotation signed offline, and — with `DROVER_TEST_TUF` (required under `CI=true`) — verified
//! end to end by the reference client, python-tuf's `ngclient.Updater`.

use std::path::PathBuf;
use std::process::Command;

use drover_tuf::{PrivateKey, Role, Root, RootBuilder, Signed, TrustedSet};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::artifacts::{device, image, upload};
use crate::helpers::*;

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

async fn raw(app: &TestApp, path: &str, token: &str) -> (StatusCode, Vec<u8>) {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status(), response.bytes().await.unwrap().to_vec())
}

/// Walks the repository as a device does, with the Rust client, and returns the verified set.
async fn walk(app: &TestApp, credential: &str, trusted_root: &[u8]) -> TrustedSet {
    let mut set = TrustedSet::new(trusted_root).unwrap();
    loop {
        let name = set.next_root_file_name();
        let (status, bytes) = raw(app, &format!("/api/device/v1/tuf/{name}"), credential).await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        set.update_root(&bytes).unwrap();
    }
    let (_, bytes) = raw(app, "/api/device/v1/tuf/timestamp.json", credential).await;
    set.update_timestamp(&bytes, now()).unwrap();
    let name = set.snapshot_file_name().unwrap();
    let (_, bytes) = raw(app, &format!("/api/device/v1/tuf/{name}"), credential).await;
    set.update_snapshot(&bytes, now()).unwrap();
    let name = set.targets_file_name().unwrap();
    let (_, bytes) = raw(app, &format!("/api/device/v1/tuf/{name}"), credential).await;
    set.update_targets(&bytes, now()).unwrap();
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repository_lists_every_artifact_with_its_signed_facts() {
    let app = spawn_app_with(Backend::Sqlite, AppOptions::default())
        .await
        .unwrap();
    let credential = device(&app, "dev-1", "0.9.0").await;
    let (status, root) = raw(&app, "/api/v1/tuf/root", ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::OK);
    // Devices need their credential for the repository too.
    let (status, _) = raw(&app, "/api/device/v1/tuf/timestamp.json", "nope").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let empty = walk(&app, &credential, &root).await;
    assert!(empty.targets().unwrap().signed().targets.is_empty());

    let bytes = image(10_000, 3);
    let view = upload(&app, "sensor-fw", "1.2.0", bytes.clone()).await;
    let set = walk(&app, &credential, &root).await;
    let target = view["target"].as_str().unwrap();
    let entry = set.verify_target(target, &bytes).unwrap();
    let custom = entry.custom.clone().unwrap();
    assert_eq!(custom["version"], "1.2.0");
    assert_eq!(custom["device_types"], json!(["sensor"]));
    assert_eq!(custom["kind"], "full");
    assert!(
        set.verify_target(target, &image(10_000, 4)).is_err(),
        "tampered bytes are refused"
    );

    // Deleting the artifact republishes targets without it.
    let (status, _) = app.delete("/api/v1/artifacts/sensor-fw/1.2.0").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let set = walk(&app, &credential, &root).await;
    assert!(set.target(target).is_err());
    for bad in [
        "nope.json",
        "0.root.json",
        "1.timestamp.json",
        "targets.json",
    ] {
        let (status, _) = raw(&app, &format!("/api/device/v1/tuf/{bad}"), &credential).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_must_be_cross_signed_and_devices_walk_to_it() {
    let app = spawn_app_with(Backend::Sqlite, AppOptions::default())
        .await
        .unwrap();
    let credential = device(&app, "dev-1", "0.9.0").await;
    let (_, root_bytes) = raw(&app, "/api/v1/tuf/root", ADMIN_TOKEN).await;
    let current = Signed::<Root>::from_slice(&root_bytes)
        .unwrap()
        .into_signed();
    let old_key = root_key(&app);
    let new_key = PrivateKey::generate().unwrap();
    let next = RootBuilder::successor_of(&current, now() + time::Duration::days(365))
        .role(Role::Root, &[new_key.public_key()], 1)
        .build()
        .unwrap();

    // Signed only by the new key: refused.
    let only_new = drover_tuf::sign(next.clone(), &[&new_key])
        .unwrap()
        .to_bytes();
    let (status, body) = post_root(&app, only_new, ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cross-signed"),
        "{body}"
    );
    // Not JSON at all; and an operator (not admin) may not rotate.
    let (status, _) = post_root(&app, b"{".to_vec(), ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let both = drover_tuf::sign(next, &[&old_key, &new_key])
        .unwrap()
        .to_bytes();
    let operator = app.token("operator").await;
    let (status, _) = post_root(&app, both.clone(), &operator).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, body) = post_root(&app, both, ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["root_version"], 2);
    // A device that trusts root 1 walks to root 2.
    let set = walk(&app, &credential, &root_bytes).await;
    assert_eq!(set.root().signed().version, 2);
    app.stop().await;
}

async fn post_root(app: &TestApp, body: Vec<u8>, token: &str) -> (StatusCode, Value) {
    let response = app
        .http
        .post(app.url("/api/v1/tuf/root"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The root key the test server generated on first start.
fn root_key(app: &TestApp) -> PrivateKey {
    let text = std::fs::read_to_string(app.data_dir().join("tuf").join("root.key")).unwrap();
    PrivateKey::from_key_file(&text).unwrap()
}

/// `python3` with python-tuf, or `None` (skip) when `DROVER_TEST_TUF` is not set; with it set, a
/// missing interpreter or module fails the test.
fn python_with_tuf() -> Option<String> {
    if std::env::var_os("DROVER_TEST_TUF").is_none() {
        eprintln!("skipped: DROVER_TEST_TUF is not set");
        return None;
    }
    let python = std::env::var("DROVER_TUF_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import tuf.ngclient"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "DROVER_TEST_TUF is set but {python} cannot import tuf.ngclient: install it with `{python} -m pip install --user tuf`");
    Some(python)
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tuf/tests/interop/tuf_client.py")
}

/// Runs python-tuf against the server; returns its JSON verdict or its error text.
fn python_tuf(
    python: &str,
    app: &TestApp,
    credential: &str,
    root: &std::path::Path,
    target: &str,
    sha256: &str,
) -> Result<Value, String> {
    let output = Command::new(python)
        .arg(script())
        .args(["--metadata-url", &app.url("/api/device/v1/tuf/")])
        .args(["--targets-url", &app.url("/api/device/v1/tuf/targets/")])
        .arg("--trusted-root")
        .arg(root)
        .args(["--target", target, "--expect-sha256", sha256])
        .args(["--header", &format!("Authorization: Bearer {credential}")])
        .output()
        .unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_tuf_verifies_the_servers_repository() {
    let Some(python) = python_with_tuf() else {
        return;
    };
    let app = spawn_app_with(Backend::Sqlite, AppOptions::default())
        .await
        .unwrap();
    let bytes = image(200_000, 7);
    let view = upload(&app, "sensor-fw", "1.0.0", bytes).await;
    let (target, sha256) = (
        view["target"].as_str().unwrap(),
        view["sha256"].as_str().unwrap(),
    );
    let credential = device(&app, "dev-1", "0.9.0").await;
    let (status, body) = app
        .post(
            "/api/v1/devices/dev-1/deployments",
            json!({"artifact": "sensor-fw", "version": "1.0.0"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, root1) = raw(&app, "/api/v1/tuf/root", ADMIN_TOKEN).await;
    let root_file = app.data_dir().join("trusted-1.root.json");
    std::fs::write(&root_file, &root1).unwrap();

    let verdict = python_tuf(&python, &app, &credential, &root_file, target, sha256).unwrap();
    assert_eq!(verdict["custom"]["version"], "1.0.0");
    assert_eq!(verdict["root_version"], 1);

    // After a root rotation python-tuf, trusting root 1, walks the chain to root 2.
    let current = Signed::<Root>::from_slice(&root1).unwrap().into_signed();
    let new_key = PrivateKey::generate().unwrap();
    let next = RootBuilder::successor_of(&current, now() + time::Duration::days(365))
        .role(Role::Root, &[new_key.public_key()], 1)
        .build()
        .unwrap();
    let signed = drover_tuf::sign(next, &[&root_key(&app), &new_key])
        .unwrap()
        .to_bytes();
    let (status, body) = post_root(&app, signed, ADMIN_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let verdict = python_tuf(&python, &app, &credential, &root_file, target, sha256).unwrap();
    assert_eq!(verdict["root_version"], 2);

    // Bytes changed in storage behind the repository's back are refused by python-tuf.
    let stored = app.data_dir().join("artifacts").join("images").join(sha256);
    let mut tampered = std::fs::read(&stored).unwrap();
    tampered[1000] ^= 0xff;
    std::fs::write(&stored, tampered).unwrap();
    let error = python_tuf(&python, &app, &credential, &root_file, target, sha256).unwrap_err();
    assert!(
        error.contains("LengthOrHashMismatch") || error.contains("hash"),
        "{error}"
    );
    // Another device's credential sees no such target.
    let other = device(&app, "dev-2", "0.9.0").await;
    let error = python_tuf(&python, &app, &other, &root_file, target, sha256).unwrap_err();
    assert!(error.contains("404"), "{error}");
    app.stop().await;
}
