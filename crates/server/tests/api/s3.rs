//! Artifact storage on S3: the same uploads, range downloads and deletions against a real
//! S3-compatible server (moto's standalone server, started here on a free port). Runs when
//! `DROVER_TEST_S3` is set (required under `CI=true`): `moto_server` must be on the PATH
//! (`pip install 'moto[server]'`), or named by `DROVER_MOTO_SERVER`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use drover_server::storage::StorageConfig;
use reqwest::header::RANGE;
use reqwest::StatusCode;
use serde_json::json;

use crate::artifacts::{bytes_part, device, image, json_part, metadata, upload, upload_parts};
use crate::helpers::*;

/// A moto server on a free port, stopped when dropped.
struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto() -> Option<Moto> {
    if std::env::var_os("DROVER_TEST_S3").is_none() {
        eprintln!("skipped: DROVER_TEST_S3 is not set");
        return None;
    }
    let program = std::env::var("DROVER_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let mut child = Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("DROVER_TEST_S3 is set but {program} cannot start ({e}): install it with `pip install 'moto[server]'`")
        });
    // Werkzeug prints the address it bound: " * Running on http://127.0.0.1:PORT".
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("moto_server exited before listening")
            .expect("moto_server output");
        if let Some(at) = line.find("http://") {
            break line[at..].trim().to_owned();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Some(Moto { child, url })
}

fn s3_config(moto: &Moto, bucket: &str) -> StorageConfig {
    let options = BTreeMap::from([
        ("aws_endpoint".to_owned(), moto.url.clone()),
        ("aws_region".to_owned(), "us-east-1".to_owned()),
        ("aws_access_key_id".to_owned(), "drover-test".to_owned()),
        ("aws_secret_access_key".to_owned(), "drover-test".to_owned()),
        ("aws_allow_http".to_owned(), "true".to_owned()),
    ]);
    StorageConfig {
        url: format!("s3://{bucket}/fleet"),
        options,
    }
}

/// Object keys in a bucket, through S3's ListObjectsV2.
async fn keys(moto: &Moto, bucket: &str) -> Vec<String> {
    let xml = reqwest::get(format!("{}/{bucket}?list-type=2", moto.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    xml.split("<Key>")
        .skip(1)
        .filter_map(|part| part.split("</Key>").next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_live_in_an_s3_bucket() {
    let Some(moto) = moto() else { return };
    let bucket = "drover-artifacts";
    let created = reqwest::Client::new()
        .put(format!("{}/{bucket}", moto.url))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.status());

    let app = spawn_app_with(
        Backend::Sqlite,
        AppOptions {
            artifacts: Some(s3_config(&moto, bucket)),
            max_artifact_bytes: Some(32 << 20),
            ..AppOptions::default()
        },
    )
    .await
    .unwrap();

    // Large enough for a multipart upload of several parts.
    let bytes = image(20 << 20, 11);
    let view = upload(&app, "sensor-fw", "2.0.0", bytes.clone()).await;
    let sha256 = view["sha256"].as_str().unwrap().to_owned();
    assert_eq!(
        keys(&moto, bucket).await,
        [format!("fleet/images/{sha256}")]
    );

    let response = app
        .http
        .get(app.url("/api/v1/artifacts/sensor-fw/2.0.0/image"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // A device resumes its download from the bucket.
    let credential = device(&app, "dev-1", "1.0.0").await;
    let (status, _) = app
        .post(
            "/api/v1/devices/dev-1/deployments",
            json!({"artifact": "sensor-fw", "version": "2.0.0"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let target = view["target"].as_str().unwrap();
    let (dir, file) = target.rsplit_once('/').unwrap();
    let response = app
        .http
        .get(app.url(&format!("/api/device/v1/tuf/targets/{dir}/{sha256}.{file}")))
        .bearer_auth(&credential)
        .header(RANGE, "bytes=15000000-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        &bytes[15_000_000..]
    );

    // A refused upload leaves no object behind, not even its staging copy.
    let (status, body) = upload_parts(
        &app,
        vec![
            ("metadata", json_part(&metadata("sensor-fw", "2.1.0"))),
            ("image", bytes_part(image(33 << 20, 1))),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(keys(&moto, bucket).await.len(), 1);

    let (status, body) = app
        .post(
            &format!("/api/v1/devices/dev-1/deployments/{}/cancel", 1),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app.delete("/api/v1/artifacts/sensor-fw/2.0.0").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(keys(&moto, bucket).await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_stops_the_server_at_start_with_the_reason() {
    let Some(moto) = moto() else { return };
    let dir = drover_store::testing::TempDir::new();
    let mut config = drover_server::ServerConfig::with_data_dir(&dir.path);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt = drover_server::mqtt::MqttConfig::Off;
    config.artifacts = s3_config(&moto, "no-such-bucket");
    let error = drover_server::start(config, std::future::pending())
        .await
        .err()
        .expect("start fails");
    let message = format!("{error:#}");
    assert!(
        message.contains("cannot reach artifact storage s3://no-such-bucket/fleet"),
        "{message}"
    );
}
