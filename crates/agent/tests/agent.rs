//! The agent against a real Drover server started in-process: provisioning, the credential file,
//! heartbeats in the server's health view, restarts, outages and revocation, over HTTP and over
//! the server's embedded MQTT broker; shadow sync through a config hook over both.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use drover_agent::{Agent, Config, Stats};
use drover_server::{RunningServer, ServerConfig};
use drover_store::testing::TempDir;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "drv_test_admin_token_0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_provisions_reports_health_and_restarts_without_provisioning_again() {
    let dir = TempDir::new();
    let server = TestServer::start(&dir.path, "127.0.0.1:0".parse().unwrap()).await;
    let claim = server.claim().await;
    let state_dir = dir.path.join("agent");
    let config = agent_config(&server.base, &state_dir, Some(&claim));

    let agent = RunningAgent::spawn(config.clone());
    eventually("two heartbeats are acknowledged", || {
        count(&agent.stats.heartbeats_sent) >= 2
    })
    .await;
    assert_eq!(count(&agent.stats.provisioned), 1);
    agent.stop().expect("clean shutdown");

    let state_file = state_dir.join("state.json");
    let mode = std::fs::metadata(&state_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the credential file is private");
    let state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let device_id = state["device_id"].as_str().unwrap().to_owned();
    assert!(state["credential"].as_str().unwrap().len() > 16);

    let (status, health) = server
        .admin(
            Method::GET,
            &format!("/api/v1/devices/{device_id}/health"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let metrics = &health["metrics"];
    assert_eq!(
        metrics["battery_v"], 3.7,
        "static metrics are reported: {health}"
    );
    assert_eq!(metrics["agent_dropped_heartbeats"], 0.0);
    assert!(
        metrics["agent_rss_bytes"].as_f64().unwrap() > 0.0,
        "{health}"
    );
    assert!(metrics["uptime_s"].as_f64().unwrap() > 0.0, "{health}");
    assert!(
        metrics["mem_total_bytes"].as_f64().unwrap() > 0.0,
        "{health}"
    );
    assert_eq!(health["boot_slot"], "a");
    let (_, device) = server
        .admin(Method::GET, &format!("/api/v1/devices/{device_id}"), None)
        .await;
    assert_eq!(device["firmware"], "1.0.0");
    assert_eq!(device["device_type"], "gateway");

    // The claim allowed one use: a second provisioning would be refused, so heartbeats after the
    // restart prove the stored credential was used.
    let agent = RunningAgent::spawn(config);
    eventually("a heartbeat after the restart", || {
        count(&agent.stats.heartbeats_sent) >= 1
    })
    .await;
    assert_eq!(count(&agent.stats.provisioned), 0);
    agent.stop().expect("clean shutdown");
    let state_again: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert_eq!(state_again, state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_buffers_while_the_server_is_down_and_flushes_when_it_returns() {
    let dir = TempDir::new();
    let server = TestServer::start(&dir.path, "127.0.0.1:0".parse().unwrap()).await;
    let addr = server.addr;
    let claim = server.claim().await;
    let config = agent_config(&server.base, &dir.path.join("agent"), Some(&claim));
    let agent = RunningAgent::spawn(config.clone());
    eventually("the device is provisioned", || {
        count(&agent.stats.heartbeats_sent) >= 1
    })
    .await;
    agent.stop().unwrap();

    // The port is now closed: heartbeats pile up in memory.
    server.stop().await;
    let agent = RunningAgent::spawn(config);
    eventually("three heartbeats are buffered", || {
        count(&agent.stats.buffered) >= 3
    })
    .await;
    assert!(count(&agent.stats.send_failures) >= 1);
    assert_eq!(count(&agent.stats.heartbeats_sent), 0);

    // The server is back on the same address: the buffer drains through the batch endpoint.
    let server = TestServer::start(&dir.path, addr).await;
    eventually("the buffer is flushed", || {
        count(&agent.stats.buffered) == 0 && count(&agent.stats.heartbeats_sent) >= 3
    })
    .await;
    assert_eq!(count(&agent.stats.dropped), 0);
    agent.stop().unwrap();
    let metrics = server
        .http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("route=\"/api/device/v1/heartbeats\"")
                && l.contains("status=\"200\"")),
        "buffered heartbeats arrive as a batch:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stops_on_sigterm_and_exits_non_zero_when_its_credential_is_revoked() {
    let dir = TempDir::new();
    let server = TestServer::start(&dir.path, "127.0.0.1:0".parse().unwrap()).await;
    let claim = server.claim().await;
    let state_dir = dir.path.join("agent");
    let config_file = dir.path.join("agent.toml");
    std::fs::write(
        &config_file,
        agent_toml(&server.base, &state_dir, Some(&claim)),
    )
    .unwrap();

    let child = spawn_binary(&config_file);
    let state_file = state_dir.join("state.json");
    eventually("the agent provisioned", || state_file.exists()).await;
    let state: Value = serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    let device_id = state["device_id"].as_str().unwrap().to_owned();
    let credential = state["credential"].as_str().unwrap().to_owned();
    let health = format!("/api/v1/devices/{device_id}/health");
    for _ in 0..100 {
        if server.admin(Method::GET, &health, None).await.0 == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "SIGTERM is a clean shutdown: {stderr}");
    assert!(stderr.contains("provisioned as device"), "{stderr}");
    assert!(
        !stderr.contains(&credential),
        "the credential is never logged"
    );

    let child = spawn_binary(&config_file);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = server
        .admin(
            Method::DELETE,
            &format!("/api/v1/devices/{device_id}/credentials"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(3), "revocation is exit status 3: {stderr}");
    assert!(stderr.contains("refused the credential"), "{stderr}");
    assert!(
        stderr.contains("state.json"),
        "the message says how to recover: {stderr}"
    );
    assert!(
        !stderr.contains(&credential),
        "the credential is never logged"
    );

    let bad_config = dir.path.join("bad.toml");
    std::fs::write(&bad_config, "server_url = [").unwrap();
    let child = spawn_binary(&bad_config);
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("invalid TOML in"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_claim_token_the_agent_waits_with_a_persisted_nonce_until_accepted() {
    let dir = TempDir::new();
    let any_port = "127.0.0.1:0".parse().unwrap();
    let server = TestServer::start_with(&dir.path, any_port, any_port, true).await;
    let state_dir = dir.path.join("agent");
    let text = agent_toml(&server.base, &state_dir, None) + "device_id = \"pend-1\"\n";
    let text = text.replace("[static_metrics]\nbattery_v = 3.7\n", "");
    let config = Config::from_toml(&text, Path::new("test.toml")).unwrap();
    let agent = RunningAgent::spawn(config.clone());
    let mut device = Value::Null;
    for _ in 0..300 {
        device = server
            .admin(Method::GET, "/api/v1/devices/pend-1", None)
            .await
            .1;
        if device["status"] == "pending" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(device["status"], "pending", "{device}");
    agent.stop().unwrap();
    let nonce = std::fs::read_to_string(state_dir.join("state.json")).unwrap();

    let (status, body) = server
        .admin(
            Method::POST,
            "/api/v1/devices/pend-1/accept",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // After a restart the same nonce is sent, so this unit (and only it) gets the credential.
    let agent = RunningAgent::spawn(config);
    eventually("a heartbeat", || count(&agent.stats.heartbeats_sent) >= 1).await;
    assert_eq!(count(&agent.stats.provisioned), 1);
    agent.stop().unwrap();
    let state: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["device_id"], "pend-1");
    assert!(
        state.get("nonce").is_none(),
        "the nonce is forgotten once used"
    );
    assert!(nonce.contains("nonce"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt_heartbeats_arrive_a_stopped_device_goes_offline_and_revocation_ends_it() {
    let dir = TempDir::new();
    let server = TestServer::start(&dir.path, "127.0.0.1:0".parse().unwrap()).await;
    let claim = server.claim().await;
    let state_dir = dir.path.join("agent");
    let config = agent_config_with(&server.base, &state_dir, Some(&claim), &server.mqtt_keys());

    let agent = RunningAgent::spawn(config.clone());
    eventually("three heartbeats are acknowledged over MQTT", || {
        count(&agent.stats.heartbeats_sent) >= 3
    })
    .await;
    assert_eq!(count(&agent.stats.provisioned), 1);
    assert_eq!(count(&agent.stats.mqtt_connects), 1);
    assert!(
        count(&agent.stats.rss_bytes) > 0,
        "the agent knows its own memory"
    );
    let device_id = device_id(&state_dir);
    let health = format!("/api/v1/devices/{device_id}/health");
    let (status, health) = server.admin(Method::GET, &health, None).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["metrics"]["battery_v"], 3.7, "{health}");
    assert!(
        health["metrics"]["agent_rss_bytes"].as_f64().unwrap() > 0.0,
        "{health}"
    );
    let device_path = format!("/api/v1/devices/{device_id}");
    let (_, device) = server.admin(Method::GET, &device_path, None).await;
    assert_eq!(device["connectivity"], "online", "{device}");

    agent.stop().expect("clean shutdown");
    server
        .until("the device is offline", &device_path, |device| {
            device["connectivity"] == "offline"
        })
        .await;
    let metrics = server.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("route=\"/api/device/v1/provision\"")),
        "provisioning is HTTP:\n{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("route=\"/api/device/v1/heartbeat")),
        "heartbeats are not:\n{metrics}"
    );

    // Revoked: the broker refuses the credential, the server confirms it, the agent gives up.
    let revoke = format!("/api/v1/devices/{device_id}/credentials");
    let (status, body) = server.admin(Method::DELETE, &revoke, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let agent = RunningAgent::spawn(config);
    eventually("the agent gives up", || agent.thread.is_finished()).await;
    let error = agent.stop().expect_err("revoked");
    assert!(
        error.downcast_ref::<drover_agent::Revoked>().is_some(),
        "{error:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt_the_agent_reconnects_after_an_outage_and_flushes_its_buffer_in_batches() {
    let dir = TempDir::new();
    let server = TestServer::start(&dir.path, "127.0.0.1:0".parse().unwrap()).await;
    let (addr, mqtt_addr) = (server.addr, server.mqtt_addr);
    let claim = server.claim().await;
    let config = agent_config_with(
        &server.base,
        &dir.path.join("agent"),
        Some(&claim),
        &server.mqtt_keys(),
    );
    let agent = RunningAgent::spawn(config);
    eventually("a heartbeat", || count(&agent.stats.heartbeats_sent) >= 1).await;

    // Broker and server go away: heartbeats pile up in memory.
    server.stop().await;
    let sent_before = count(&agent.stats.heartbeats_sent);
    eventually("three heartbeats are buffered", || {
        count(&agent.stats.buffered) >= 3
    })
    .await;
    assert!(count(&agent.stats.send_failures) >= 1);

    // Back on the same addresses: the link reconnects and the buffer drains at once.
    let server = TestServer::start_with(&dir.path, addr, mqtt_addr, false).await;
    eventually("the buffer is flushed over the new connection", || {
        count(&agent.stats.mqtt_connects) >= 2
            && count(&agent.stats.buffered) == 0
            && count(&agent.stats.heartbeats_sent) >= sent_before + 3
    })
    .await;
    assert_eq!(count(&agent.stats.dropped), 0);
    agent.stop().expect("clean shutdown");
    let metrics = server.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("route=\"/api/device/v1/heartbeat")),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http_the_hook_applies_desired_state_also_when_it_changed_while_the_agent_was_stopped()
{
    let dir = TempDir::new();
    let server = TestServer::start(&dir.path, "127.0.0.1:0".parse().unwrap()).await;
    let claim = server.claim().await;
    let state_dir = dir.path.join("agent");
    let hook = Hook::new(&dir.path);
    let config = agent_config_with(&server.base, &state_dir, Some(&claim), &hook.keys());

    let agent = RunningAgent::spawn(config.clone());
    eventually("a heartbeat", || count(&agent.stats.heartbeats_sent) >= 1).await;
    let device_id = device_id(&state_dir);
    server.set_desired(&device_id, json!({"led": "on"})).await;
    let shadow = server.until_converged(&device_id, "led", "on").await;
    assert_eq!(hook.calls(), [json!({"led": "on"})]);
    assert_eq!(count(&agent.stats.config_applied), 1);
    agent.stop().expect("clean shutdown");

    server.set_desired(&device_id, json!({"led": "off"})).await;
    let agent = RunningAgent::spawn(config);
    let shadow_after = server.until_converged(&device_id, "led", "off").await;
    assert!(shadow_after["version"].as_u64() > shadow["version"].as_u64());
    assert_eq!(
        hook.calls(),
        [json!({"led": "on"}), json!({"led": "off"})],
        "the change made while stopped is applied once, the old one not again"
    );
    agent.stop().expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mqtt_deltas_reach_the_hook_failures_are_reported_and_a_restart_catches_up() {
    let dir = TempDir::new();
    let server = TestServer::start(&dir.path, "127.0.0.1:0".parse().unwrap()).await;
    let claim = server.claim().await;
    let state_dir = dir.path.join("agent");
    let hook = Hook::new(&dir.path);
    let keys = server.mqtt_keys() + &hook.keys();
    let config = agent_config_with(&server.base, &state_dir, Some(&claim), &keys);

    let agent = RunningAgent::spawn(config.clone());
    eventually("a heartbeat", || count(&agent.stats.heartbeats_sent) >= 1).await;
    let device_id = device_id(&state_dir);
    server.set_desired(&device_id, json!({"led": "on"})).await;
    server.until_converged(&device_id, "led", "on").await;

    // The hook refuses this one: nothing is reported for it but the reason.
    server
        .set_desired(&device_id, json!({"mode": "broken"}))
        .await;
    let shadow = server
        .until(
            "the failure is reported",
            &shadow_path(&device_id),
            |shadow| shadow["state"]["reported"]["drover_agent"]["config_error"].is_string(),
        )
        .await;
    let error = shadow["state"]["reported"]["drover_agent"]["config_error"]
        .as_str()
        .unwrap();
    assert!(
        error.contains("cannot apply"),
        "the hook's stderr says why: {error}"
    );
    assert_eq!(
        shadow["state"]["delta"],
        json!({"mode": "broken"}),
        "{shadow}"
    );
    assert_eq!(count(&agent.stats.config_failed), 1);

    server.set_desired(&device_id, json!({"mode": "eco"})).await;
    let shadow = server.until_converged(&device_id, "mode", "eco").await;
    assert!(
        shadow["state"]["reported"]["drover_agent"]
            .get("config_error")
            .is_none(),
        "a success clears the error: {shadow}"
    );
    agent.stop().expect("clean shutdown");

    server.set_desired(&device_id, json!({"led": "off"})).await;
    let agent = RunningAgent::spawn(config);
    server.until_converged(&device_id, "led", "off").await;
    let calls = [
        json!({"led": "on"}),
        json!({"mode": "broken"}),
        json!({"mode": "eco"}),
        json!({"led": "off"}),
    ];
    assert_eq!(hook.calls(), calls);
    agent.stop().expect("clean shutdown");
    let metrics = server.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("route=\"/api/device/v1/shadow")),
        "the shadow went over MQTT:\n{metrics}"
    );
}

/// A server on a fresh (or the given, reused) SQLite data directory, with the embedded MQTT
/// broker on a port of its own.
struct TestServer {
    addr: SocketAddr,
    base: String,
    mqtt_addr: SocketAddr,
    http: reqwest::Client,
    server: RunningServer,
}

impl TestServer {
    async fn start(data_dir: &Path, listen: SocketAddr) -> TestServer {
        TestServer::start_with(data_dir, listen, "127.0.0.1:0".parse().unwrap(), false).await
    }

    async fn start_with(
        data_dir: &Path,
        listen: SocketAddr,
        mqtt_listen: SocketAddr,
        allow_pending: bool,
    ) -> TestServer {
        let mut config = ServerConfig::with_data_dir(data_dir);
        config.listen = listen;
        config.mqtt = drover_server::mqtt::MqttConfig::Embedded {
            listen: mqtt_listen,
        };
        config.allow_pending = allow_pending;
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        // Devices of the tests announce 1 s intervals: they go offline about 3 s after stopping.
        config.offline_check = Duration::from_millis(100);
        let server = drover_server::start(config, std::future::pending())
            .await
            .expect("server starts");
        TestServer {
            addr: server.addr,
            base: format!("http://{}", server.addr),
            mqtt_addr: server.mqtt_addr.expect("the embedded broker runs"),
            http: reqwest::Client::new(),
            server,
        }
    }

    /// Agent configuration keys for MQTT through the embedded broker.
    fn mqtt_keys(&self) -> String {
        format!(
            "transport = \"mqtt\"\nmqtt_url = \"mqtt://{}\"\n",
            self.mqtt_addr
        )
    }

    /// The Prometheus metrics.
    async fn metrics(&self) -> String {
        let response = self.http.get(format!("{}/metrics", self.base)).send().await;
        response.unwrap().text().await.unwrap()
    }

    /// Sets desired state the way an operator does.
    async fn set_desired(&self, device_id: &str, desired: Value) {
        let body = json!({ "state": { "desired": desired } });
        let (status, answer) = self
            .admin(Method::PATCH, &shadow_path(device_id), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    /// Polls `GET path` (up to 30 s) until `condition` holds for the answer; returns it.
    async fn until(&self, what: &str, path: &str, condition: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = self.admin(Method::GET, path, None).await;
            if condition(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the device reported `field = value` and no delta is left; returns the shadow.
    async fn until_converged(&self, device_id: &str, field: &str, value: &str) -> Value {
        let what = format!("the device reports {field} = {value} and the delta is gone");
        self.until(&what, &shadow_path(device_id), |shadow| {
            shadow["state"]["reported"][field] == value && shadow["state"].get("delta").is_none()
        })
        .await
    }

    async fn stop(self) {
        self.server.shutdown().await.expect("server stops");
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

    /// A claim token for one gateway.
    async fn claim(&self) -> String {
        let (status, body) = self
            .admin(
                Method::POST,
                "/api/v1/claims",
                Some(json!({ "name": "agents", "device_type": "gateway", "max_uses": 1 })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

/// The agent's library API on a thread, stopped through its shutdown channel.
struct RunningAgent {
    stats: Arc<Stats>,
    stop: Sender<()>,
    thread: JoinHandle<anyhow::Result<()>>,
}

impl RunningAgent {
    fn spawn(config: Config) -> RunningAgent {
        let agent = Agent::new(config);
        let stats = agent.stats();
        let (stop, shutdown) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || agent.run(shutdown));
        RunningAgent {
            stats,
            stop,
            thread,
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.thread.join().expect("agent thread")
    }
}

fn agent_toml(server: &str, state_dir: &Path, claim: Option<&str>) -> String {
    agent_toml_with(server, state_dir, claim, "")
}

/// The test configuration with `extra` top-level keys.
fn agent_toml_with(server: &str, state_dir: &Path, claim: Option<&str>, extra: &str) -> String {
    let claim = claim
        .map(|c| format!("claim_token = \"{c}\"\n"))
        .unwrap_or_default();
    format!(
        "server_url = \"{server}\"\nstate_dir = \"{}\"\nhardware_id = \"HW-1\"\n{claim}\
         device_type = \"gateway\"\nfirmware = \"1.0.0\"\nboot_slot = \"a\"\n\
         heartbeat_interval = \"200ms\"\nheartbeat_jitter = \"20ms\"\nrequest_timeout = \"5s\"\n\
         {extra}[static_metrics]\nbattery_v = 3.7\n",
        state_dir.display(),
    )
}

fn agent_config(server: &str, state_dir: &Path, claim: Option<&str>) -> Config {
    agent_config_with(server, state_dir, claim, "")
}

fn agent_config_with(server: &str, state_dir: &Path, claim: Option<&str>, extra: &str) -> Config {
    let text = agent_toml_with(server, state_dir, claim, extra);
    Config::from_toml(&text, Path::new("test.toml")).expect("valid config")
}

/// A config hook that records each delta it gets and refuses any containing "broken".
struct Hook {
    script: PathBuf,
    log: PathBuf,
}

impl Hook {
    fn new(dir: &Path) -> Hook {
        let script = dir.join("apply-config.sh");
        let log = dir.join("hook.log");
        let text = format!(
            "#!/bin/sh\ninput=$(cat)\necho \"$input\" >> '{}'\n\
             case \"$input\" in *broken*) echo \"cannot apply $input\" >&2; exit 1;; esac\n",
            log.display()
        );
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Hook { script, log }
    }

    fn keys(&self) -> String {
        format!("config_hook = \"{}\"\n", self.script.display())
    }

    /// The deltas the hook got, in order.
    fn calls(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

fn shadow_path(device_id: &str) -> String {
    format!("/api/v1/devices/{device_id}/shadow")
}

/// The device id the agent stored after provisioning.
fn device_id(state_dir: &Path) -> String {
    let state: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("state.json")).unwrap()).unwrap();
    state["device_id"].as_str().unwrap().to_owned()
}

fn spawn_binary(config_file: &PathBuf) -> Child {
    Command::new(env!("CARGO_BIN_EXE_drover-agent"))
        .arg("--config")
        .arg(config_file)
        .env_remove("DROVER_AGENT_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent binary starts")
}

/// Waits (up to 30 s) for the process to exit; returns its code and stderr.
async fn finish(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return (status.code(), stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not exit within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(counter: &AtomicU64) -> u64 {
    Stats::get(counter)
}

/// Polls `condition` every 50 ms for up to 30 s (the agent's first backoff delays reach a few
/// seconds).
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_job_commands_refuses_unknown_ones_and_answers_diagnostics() {
    jobs_and_diagnostics(false).await;
}

/// Over MQTT the executions and requests arrive on `jobs/notify` and `diag/request`: the agent
/// holds no HTTP long-poll for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_agent_gets_jobs_and_diagnostics_pushed_over_mqtt() {
    jobs_and_diagnostics(true).await;
}

async fn jobs_and_diagnostics(mqtt: bool) {
    let dir = TempDir::new();
    let server = TestServer::start(&dir.path, "127.0.0.1:0".parse().unwrap()).await;
    let claim = server.claim().await;
    let state_dir = dir.path.join("agent");
    let script = dir.path.join("echo-payload.sh");
    std::fs::write(&script, "#!/bin/sh\ncat\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log_file = dir.path.join("agent.log");
    std::fs::write(&log_file, "booted\nconnected\nall good\n").unwrap();
    let jobs = format!(
        "[jobs]\nreboot_command = \"/bin/true\"\nlog_file = \"{}\"\n[jobs.commands]\necho = \"{}\"\n",
        log_file.display(),
        script.display()
    );
    let keys = if mqtt {
        server.mqtt_keys() + &jobs
    } else {
        jobs
    };
    let config = agent_config_with(&server.base, &state_dir, Some(&claim), &keys);
    let agent = RunningAgent::spawn(config);
    eventually("a heartbeat", || count(&agent.stats.heartbeats_sent) >= 1).await;
    let device_id = device_id(&state_dir);

    let (status, job) = server
        .admin(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"kind": "command", "target": {"devices": [device_id]}, "payload": {"name": "echo", "n": 7}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    let executions = format!("/api/v1/jobs/{}/executions", job["id"]);
    let done = server
        .until("the command ran", &executions, |page| {
            page["items"][0]["state"] == "succeeded"
        })
        .await;
    assert_eq!(
        done["items"][0]["result"]["output"],
        json!({"name": "echo", "n": 7})
    );

    let (_, job) = server
        .admin(
            Method::POST,
            "/api/v1/jobs",
            Some(json!({"kind": "command", "target": {"devices": [device_id]}, "payload": {"name": "format-disk"}, "retries": 3})),
        )
        .await;
    let executions = format!("/api/v1/jobs/{}/executions", job["id"]);
    let refused = server
        .until("the command was refused", &executions, |page| {
            page["items"][0]["state"] == "rejected"
        })
        .await;
    assert_eq!(
        refused["items"][0]["attempt"], 1,
        "a rejection is not retried"
    );
    assert!(refused["items"][0]["error"]
        .as_str()
        .unwrap()
        .contains("format-disk"));

    let path = format!("/api/v1/devices/{device_id}/diagnostics");
    let (status, info) = server
        .admin(Method::POST, &path, Some(json!({"action": "system_info"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["result"]["firmware"], "1.0.0");
    assert!(info["result"]["agent_version"].is_string());
    let (status, tail) = server
        .admin(
            Method::POST,
            &path,
            Some(json!({"action": "log_tail", "lines": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tail}");
    assert_eq!(tail["result"]["lines"], json!(["connected", "all good"]));
    let (status, dump) = server
        .admin(Method::POST, &path, Some(json!({"action": "config_dump"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{dump}");
    assert_eq!(dump["result"]["claim_token"], "<redacted>");
    agent.stop().expect("clean shutdown");
    server.stop().await;
}
