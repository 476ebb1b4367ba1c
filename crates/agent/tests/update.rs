//! Over-the-air updates end to end: the `drover-agent` binary with simulated A/B slots against a
//! real Drover server started in-process. Firmware is uploaded and deployed through the admin API;
//! the agent verifies it with TUF, installs it, reboots (in-process) and reports. Also: a broken
//! image falls back and reports `rolled_back`, tampered bytes are refused, and a power-loss test
//! SIGKILLs the agent at random instants across the whole update and restarts it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_server::{RunningServer, ServerConfig};
use drover_store::testing::TempDir;
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "drv_test_admin_token_0123456789";

struct Server {
    base: String,
    mqtt_addr: Option<std::net::SocketAddr>,
    http: reqwest::Client,
    data_dir: PathBuf,
    server: RunningServer,
}

impl Server {
    async fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, drover_server::mqtt::MqttConfig::Off).await
    }

    async fn start_with(data_dir: &Path, mqtt: drover_server::mqtt::MqttConfig) -> Server {
        let mut config = ServerConfig::with_data_dir(data_dir);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.mqtt = mqtt;
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        let server = drover_server::start(config, std::future::pending())
            .await
            .expect("server starts");
        Server {
            base: format!("http://{}", server.addr),
            mqtt_addr: server.mqtt_addr,
            http: reqwest::Client::new(),
            data_dir: data_dir.to_owned(),
            server,
        }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn upload(&self, version: &str, bytes: Vec<u8>) -> Value {
        let metadata = json!({"name": "sensor-fw", "version": version, "device_types": ["sensor"]});
        let form = Form::new()
            .part("metadata", Part::text(metadata.to_string()))
            .part("image", Part::bytes(bytes).file_name("fw.img"));
        let response = self
            .http
            .post(format!("{}/api/v1/artifacts", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    async fn claim(&self) -> String {
        let (status, body) = self
            .admin(
                Method::POST,
                "/api/v1/claims",
                Some(json!({"name": "fleet", "device_type": "sensor"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    async fn deploy(&self, device: &str, version: &str) -> i64 {
        let (status, body) = self
            .admin(
                Method::POST,
                &format!("/api/v1/devices/{device}/deployments"),
                Some(json!({"artifact": "sensor-fw", "version": version})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    /// Waits (up to `secs`) until the deployment is over; returns it.
    async fn finished(&self, device: &str, id: i64, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, list) = self
                .admin(
                    Method::GET,
                    &format!("/api/v1/devices/{device}/deployments"),
                    None,
                )
                .await;
            let deployment = list
                .as_array()
                .and_then(|l| l.iter().find(|d| d["id"] == id).cloned())
                .unwrap_or(Value::Null);
            if deployment["finished_at"].is_string() {
                return deployment;
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} did not finish: {deployment}\nagent log:\n{}",
                log_tail(&self.data_dir.join(".."))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.server.shutdown().await.expect("server stops");
    }
}

/// A simulated image: recognisable bytes, with a marker the simulated device reacts to.
fn firmware(version: &str, len: usize, marker: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = format!("SIMULATED FIRMWARE {version}\n{marker}\n").into_bytes();
    bytes.extend((0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(version.len() as u8)));
    bytes
}

fn write_config(dir: &Path, server: &str, claim: &str) -> PathBuf {
    write_config_with(dir, server, claim, "", "1s")
}

/// The test agent's configuration with `extra` top-level keys and an update check interval.
fn write_config_with(dir: &Path, server: &str, claim: &str, extra: &str, check: &str) -> PathBuf {
    let state_dir = dir.join("agent");
    let slots = dir.join("slots");
    let config = format!(
        "server_url = \"{server}\"\nstate_dir = \"{}\"\nhardware_id = \"HW-UPD-1\"\nclaim_token = \"{claim}\"\n\
         device_type = \"sensor\"\nfirmware = \"1.0.0\"\nheartbeat_interval = \"500ms\"\nrequest_timeout = \"5s\"\n{extra}\
         [update]\nenabled = true\nslots = \"simulated\"\nslot_dir = \"{}\"\ncheck_interval = \"{check}\"\n\
         watchdog_timeout = \"10s\"\nhealth_check_timeout = \"5s\"\n",
        state_dir.display(),
        slots.display(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts the agent binary; its log is appended to `agent.log` beside the config.
fn spawn(config: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(config))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent starts")
}

fn log_path(config: &Path) -> PathBuf {
    config.with_file_name("agent.log")
}

/// The end of the agent's log, for failure messages.
fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("heartbeat(s)"))
        .collect();
    let record = std::fs::read_to_string(dir.join("agent").join("update.json")).unwrap_or_default();
    format!(
        "{}\nupdate.json: {record}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

async fn provisioned(state_dir: &Path) -> String {
    let state = state_dir.join("state.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.exists() {
        assert!(Instant::now() < deadline, "the agent did not provision");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state: Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    state["device_id"].as_str().unwrap().to_owned()
}

/// The simulated device's booted slot and the version recorded for it.
fn running(slots: &Path) -> (String, Option<String>) {
    let env: Value =
        serde_json::from_slice(&std::fs::read(slots.join("bootenv.json")).unwrap()).unwrap();
    let booted = env["booted"].as_str().unwrap().to_owned();
    let record = std::fs::read(slots.join(format!("slot-{booted}.json")))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let version = record.and_then(|r| r["version"].as_str().map(str::to_owned));
    (booted, version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_installs_a_good_image_and_falls_back_from_a_broken_one() {
    let dir = TempDir::new();
    let server = Server::start(&dir.path.join("server")).await;
    server.upload("1.1.0", firmware("1.1.0", 300_000, "")).await;
    // A patch release: the server builds a delta from 1.1.0 to it.
    server.upload("1.1.1", firmware("1.1.1", 300_000, "")).await;
    server
        .upload(
            "1.2.0",
            firmware("1.2.0", 300_000, "DROVER-SIM-HEALTH-FAIL"),
        )
        .await;
    let tampered = server.upload("1.3.0", firmware("1.3.0", 300_000, "")).await;
    let config = write_config(&dir.path, &server.base, &server.claim().await);
    let agent = spawn(&config);
    let device = provisioned(&dir.path.join("agent")).await;

    // A good image: installed in the other slot, booted, checked, committed.
    let id = server.deploy(&device, "1.1.0").await;
    let deployment = server.finished(&device, id, 60).await;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");
    let states: Vec<&str> = deployment["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    for step in [
        "downloading",
        "installing",
        "rebooting",
        "verifying",
        "succeeded",
    ] {
        assert!(states.contains(&step), "{step} missing from {states:?}");
    }
    assert_eq!(
        running(&dir.path.join("slots")),
        ("b".to_owned(), Some("1.1.0".to_owned()))
    );
    // Heartbeats now report the new version (one sent just before the reboot may still say 1.0.0).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, shown) = server
            .admin(Method::GET, &format!("/api/v1/devices/{device}"), None)
            .await;
        if shown["firmware"] == "1.1.0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the device never reported 1.1.0: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The patch release arrives as a delta, applied from slot b's image into slot a.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, shown) = server
            .admin(Method::GET, "/api/v1/artifacts/sensor-fw/1.1.1", None)
            .await;
        if shown["deltas"].as_array().is_some_and(|d| !d.is_empty()) {
            assert_eq!(shown["deltas"][0]["from_version"], "1.1.0");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server built no delta: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = server.deploy(&device, "1.1.1").await;
    let deployment = server.finished(&device, id, 60).await;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");
    assert_eq!(deployment["used_delta"], true, "{deployment}");
    assert_eq!(
        running(&dir.path.join("slots")),
        ("a".to_owned(), Some("1.1.1".to_owned()))
    );

    // An image that fails its health check: the device goes back to slot a and says why.
    let id = server.deploy(&device, "1.2.0").await;
    let deployment = server.finished(&device, id, 60).await;
    assert_eq!(deployment["state"], "rolled_back", "{deployment}");
    assert_eq!(deployment["failure"], "health_check_failed", "{deployment}");
    assert!(
        deployment["reason"].as_str().unwrap().len() > 5,
        "{deployment}"
    );
    assert_eq!(
        running(&dir.path.join("slots")),
        ("a".to_owned(), Some("1.1.1".to_owned()))
    );

    // Bytes changed in storage are refused before anything is installed.
    let stored = server
        .data_dir
        .join("artifacts")
        .join("images")
        .join(tampered["sha256"].as_str().unwrap());
    let mut bytes = std::fs::read(&stored).unwrap();
    bytes[100] ^= 0x55;
    std::fs::write(&stored, bytes).unwrap();
    let id = server.deploy(&device, "1.3.0").await;
    let deployment = server.finished(&device, id, 60).await;
    assert_eq!(deployment["state"], "failed", "{deployment}");
    assert_eq!(deployment["failure"], "verification_failed", "{deployment}");
    assert_eq!(
        running(&dir.path.join("slots")),
        ("a".to_owned(), Some("1.1.1".to_owned()))
    );

    kill(agent);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt_the_offer_is_pushed_and_installed_without_waiting_for_the_next_check() {
    let dir = TempDir::new();
    let mqtt = drover_server::mqtt::MqttConfig::Embedded {
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    let server = Server::start_with(&dir.path.join("server"), mqtt).await;
    server.upload("1.1.0", firmware("1.1.0", 100_000, "")).await;
    let extra = format!(
        "transport = \"mqtt\"\nmqtt_url = \"mqtt://{}\"\n",
        server.mqtt_addr.unwrap()
    );
    // Checks over HTTP only once an hour: the update can only come from the push.
    let config = write_config_with(&dir.path, &server.base, &server.claim().await, &extra, "1h");
    let agent = spawn(&config);
    let device = provisioned(&dir.path.join("agent")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let id = server.deploy(&device, "1.1.0").await;
    let deployment = server.finished(&device, id, 30).await;
    assert_eq!(deployment["state"], "succeeded", "{deployment}");
    assert_eq!(running(&dir.path.join("slots")).1.as_deref(), Some("1.1.0"));
    kill(agent);
    server.stop().await;
}

/// Kills the agent (SIGKILL) at random instants across an update, restarting it each time: the
/// device always comes back on a bootable, verified image, the deployment ends on the new image
/// or the old one, and success is never reported for an image the device is not running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_at_random_instants_never_leaves_the_device_on_a_bad_image() {
    let rounds: u64 = std::env::var("DROVER_POWER_LOSS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut seed: u64 = std::env::var("DROVER_POWER_LOSS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("power-loss seed {seed} (DROVER_POWER_LOSS_SEED reproduces it)");
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below.max(1)
    };
    let mut phases = std::collections::BTreeMap::new();
    for round in 0..rounds {
        let dir = TempDir::new();
        let server = Server::start(&dir.path.join("server")).await;
        let good = round % 2 == 0;
        let marker = if good { "" } else { "DROVER-SIM-HEALTH-FAIL" };
        server
            .upload("2.0.0", firmware("2.0.0", 8_000_000, marker))
            .await;
        let config = write_config(&dir.path, &server.base, &server.claim().await);
        let slots = dir.path.join("slots");
        let mut agent = spawn(&config);
        let device = provisioned(&dir.path.join("agent")).await;
        let id = server.deploy(&device, "2.0.0").await;

        // Kill at random instants until the deployment has ended.
        let mut kills = 0;
        let deployment = loop {
            tokio::time::sleep(Duration::from_millis(5 + random(250))).await;
            let (_, list) = server
                .admin(
                    Method::GET,
                    &format!("/api/v1/devices/{device}/deployments"),
                    None,
                )
                .await;
            let current = list[0].clone();
            assert_eq!(current["id"], id);
            if current["finished_at"].is_string() {
                break current;
            }
            kill(agent);
            kills += 1;
            // Which step the kill interrupted, as the agent had persisted it.
            let record = std::fs::read(dir.path.join("agent").join("update.json")).ok();
            let phase = record
                .and_then(|r| serde_json::from_slice::<Value>(&r).ok())
                .and_then(|r| r["job"]["phase"]["phase"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "idle".to_owned());
            *phases.entry(phase).or_insert(0u32) += 1;
            // The device is always on a slot the bootloader can boot, with a verified record or the
            // factory image.
            let (booted, version) = running(&slots);
            assert!(matches!(booted.as_str(), "a" | "b"));
            if let Some(version) = version {
                assert!(version == "1.0.0" || version == "2.0.0", "{version}");
            }
            assert!(
                kills < 200,
                "the update never finished; kills by phase: {phases:?}"
            );
            agent = spawn(&config);
        };
        // Let it finish its last word and settle.
        let (booted, version) = running(&slots);
        match deployment["state"].as_str().unwrap() {
            "succeeded" => {
                assert!(good, "a broken image must never succeed: {deployment}");
                assert_eq!(
                    version.as_deref(),
                    Some("2.0.0"),
                    "success only when running the new image"
                );
                assert_eq!(booted, "b");
            }
            "rolled_back" | "failed" => {
                assert_ne!(
                    version.as_deref(),
                    Some("2.0.0"),
                    "after a fallback the device runs the old image: {deployment}"
                );
                assert_eq!(booted, "a");
            }
            other => panic!("unexpected end state {other}: {deployment}"),
        }
        if !good {
            assert_ne!(deployment["state"], "succeeded");
        }
        eprintln!(
            "round {round}: {} after {kills} kill(s)",
            deployment["state"]
        );
        kill(agent);
        server.stop().await;
    }
    eprintln!("kills by interrupted step: {phases:?}");
}
