//! The simulator against a real Drover server started in-process (embedded store, embedded MQTT
//! broker on a free port): a mixed HTTP / MQTT fleet provisions itself with a claim token created
//! from an admin token, reports heartbeats, applies desired shadow state, installs a good release
//! and falls back from one whose firmware model never boots; a second run comes back with the
//! saved credentials and images and no token at all.

use std::time::{Duration, Instant};

use drover_server::{RunningServer, ServerConfig};
use drover_sim::mqtt::BrokerAddress;
use drover_sim::stats::Snapshot;
use drover_sim::{RunOptions, Scenario, Summary};
use drover_store::testing::TempDir;
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

const ADMIN_TOKEN: &str = "drv_test_admin_token_0123456789";

const SCENARIO: &str = r#"
[run]
speedup = 60
seed = 7
transport_mix = 0.5

[[fleet]]
device_type = "sensor"
count = 24
firmware = "1.0.0"
hw_revs = { "rev-a" = 0.5, "rev-b" = 0.5 }
regions = "eu-west"
tags = { env = "test" }
heartbeat_interval = "60s"
heartbeat_jitter = "10s"
network = "wifi"
crash_rate_per_hour = 0.1

[fleet.metrics]
mem_free_bytes = 8_000_000
temp_c = { normal = { mean = 30.0, sd = 1.0 } }

[firmware."1.5.0"]
install_duration = "30s"

[firmware."2.0.0"]
boot_failure = 1.0

[network.wifi]
latency = "5ms"
jitter = "5ms"
loss = 0.01
"#;

struct Server {
    base: String,
    mqtt: BrokerAddress,
    http: reqwest::Client,
    server: RunningServer,
}

impl Server {
    async fn start(dir: &std::path::Path) -> Server {
        let mut config = ServerConfig::with_data_dir(dir);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.mqtt = drover_server::mqtt::MqttConfig::Embedded {
            listen: "127.0.0.1:0".parse().unwrap(),
        };
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        let server = drover_server::start(config, std::future::pending())
            .await
            .expect("server starts");
        let mqtt = server.mqtt_addr.expect("the embedded broker listens");
        Server {
            base: format!("http://{}", server.addr),
            mqtt: BrokerAddress {
                host: mqtt.ip().to_string(),
                port: mqtt.port(),
            },
            http: reqwest::Client::new(),
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

    async fn upload(&self, version: &str) {
        let metadata = json!({"name": "sensor-fw", "version": version, "device_types": ["sensor"]});
        let image = format!("sensor firmware {version}\n")
            .repeat(4096)
            .into_bytes();
        let form = Form::new()
            .part("metadata", Part::text(metadata.to_string()))
            .part("image", Part::bytes(image).file_name("fw.img"));
        let response = self
            .http
            .post(format!("{}/api/v1/artifacts", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .multipart(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
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

    async fn finished(&self, device: &str, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
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
                "deployment {id} did not finish: {deployment}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Runs the scenario in the background; the returned channel carries its progress.
fn start_sim(
    server: &Server,
    state: &std::path::Path,
    admin: bool,
) -> (
    watch::Sender<bool>,
    watch::Receiver<Snapshot>,
    tokio::task::JoinHandle<Result<Summary, String>>,
) {
    let scenario = Scenario::parse(SCENARIO).expect("the scenario is valid");
    let options = RunOptions {
        server: server.base.clone(),
        broker: server.mqtt.clone(),
        claim_token: None,
        admin_token: admin.then(|| ADMIN_TOKEN.to_owned()),
        state_dir: state.to_owned(),
        duration: None,
        seed: None,
        progress_every: Duration::from_millis(200),
    };
    let (stop, stopped) = watch::channel(false);
    let (progress, snapshots) = watch::channel(Snapshot::default());
    let run = tokio::spawn(drover_sim::run(
        scenario,
        options,
        stopped,
        move |now, _, _, _| {
            let _ = progress.send(now.clone());
        },
    ));
    (stop, snapshots, run)
}

async fn wait_for(
    snapshots: &mut watch::Receiver<Snapshot>,
    what: &str,
    condition: impl Fn(&Snapshot) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if condition(&snapshots.borrow()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {:?}",
            snapshots.borrow()
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), snapshots.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_provisions_reports_syncs_updates_and_falls_back() {
    let dir = TempDir::new();
    let server = Server::start(&dir.path.join("server")).await;
    server.upload("1.5.0").await;
    server.upload("2.0.0").await;
    let state = dir.path.join("sim");

    let (stop, mut snapshots, run) = start_sim(&server, &state, true);
    wait_for(&mut snapshots, "every device online", |s| s.online == 24).await;

    // The registry has them, labelled with what provisioning cannot carry.
    let (status, body) = server
        .admin(
            Method::GET,
            "/api/v1/devices?q=tags.env%20%3D%20test&limit=100",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, device) = server
            .admin(Method::GET, "/api/v1/devices/sim-sensor-000023", None)
            .await;
        if device["region"] == "eu-west" {
            break;
        }
        assert!(Instant::now() < deadline, "not labelled: {device}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Heartbeats carry the scenario's readings and the crash rate.
    let (status, health) = server
        .admin(
            Method::GET,
            "/api/v1/devices/sim-sensor-000000/health",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let text = health.to_string();
    assert!(
        text.contains("mem_free_bytes") && text.contains("crashes_per_hour"),
        "{text}"
    );

    // Desired state reaches devices on both transports, and they report it back.
    let (http_device, mqtt_device) = ("sim-sensor-000002", "sim-sensor-000003");
    for device in [http_device, mqtt_device] {
        let (status, body) = server
            .admin(
                Method::PATCH,
                &format!("/api/v1/devices/{device}/shadow"),
                Some(json!({"state": {"desired": {"sample_rate_hz": 5}}})),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    for device in [http_device, mqtt_device] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, shadow) = server
                .admin(
                    Method::GET,
                    &format!("/api/v1/devices/{device}/shadow"),
                    None,
                )
                .await;
            if shadow["state"]["reported"]["sample_rate_hz"] == 5 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{device} did not report: {shadow}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A good release installs; one whose firmware model never boots falls back.
    let good = server.deploy("sim-sensor-000004", "1.5.0").await;
    let bad = server.deploy("sim-sensor-000005", "2.0.0").await;
    let good = server.finished("sim-sensor-000004", good).await;
    let bad = server.finished("sim-sensor-000005", bad).await;
    assert_eq!(good["state"], "succeeded", "{good}");
    assert_eq!(bad["state"], "rolled_back", "{bad}");
    wait_for(&mut snapshots, "the versions move", |s| {
        s.versions.get("1.5.0") == Some(&1) && s.updates_rolled_back == 1
    })
    .await;

    stop.send(true).unwrap();
    let summary = run.await.unwrap().expect("the run ends cleanly");
    assert_eq!(summary.devices, 24);
    assert_eq!(summary.http_devices, 12);
    assert!(summary.all_online_after_s.is_some());
    let fleet = &summary.fleet;
    assert_eq!(fleet.provisioned, 24);
    assert_eq!((fleet.updates_succeeded, fleet.updates_rolled_back), (1, 1));
    assert_eq!(fleet.boot_failures, 1);
    assert_eq!(fleet.bricked, 0);
    assert!(fleet.shadow_reports >= 2);

    // The saved state brings the same fleet back without any token, each device on the image it
    // had committed.
    let (stop, mut snapshots, run) = start_sim(&server, &state, false);
    wait_for(&mut snapshots, "back online", |s| s.online == 24).await;
    assert_eq!(snapshots.borrow().versions.get("1.5.0"), Some(&1));
    assert_eq!(snapshots.borrow().versions.get("1.0.0"), Some(&23));
    stop.send(true).unwrap();
    let summary = run.await.unwrap().expect("the second run ends cleanly");
    assert_eq!(
        summary.fleet.stopped, 0,
        "{:?}",
        summary.fleet.recent_errors
    );
    let (_, count) = server
        .admin(Method::GET, "/api/v1/devices/count", None)
        .await;
    assert_eq!(count["count"], 24, "no device registered twice: {count}");

    server.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_credentials_or_a_token_the_run_says_what_is_missing() {
    let dir = TempDir::new();
    let scenario = Scenario::parse(SCENARIO).unwrap();
    let options = RunOptions {
        server: "http://127.0.0.1:9".into(),
        broker: BrokerAddress {
            host: "127.0.0.1".into(),
            port: 9,
        },
        claim_token: None,
        admin_token: None,
        state_dir: dir.path.to_owned(),
        duration: None,
        seed: None,
        progress_every: Duration::from_secs(1),
    };
    let (_stop, stopped) = watch::channel(false);
    let error = drover_sim::run(scenario, options, stopped, |_, _, _, _| {})
        .await
        .unwrap_err();
    assert!(
        error.contains("24 of the scenario's 24 devices have no saved credential")
            && error.contains("--claim-token"),
        "{error}"
    );
}

#[test]
fn the_example_fleet_is_valid_and_has_ten_thousand_devices() {
    let text = include_str!("../../../examples/fleet-10k.toml");
    let scenario = Scenario::parse(text).expect("examples/fleet-10k.toml is valid");
    let fleet = drover_sim::expand_fleet(&scenario, 1);
    assert_eq!(fleet.len(), 10_000);
    let revs: std::collections::BTreeSet<String> = fleet
        .iter()
        .filter_map(|d| d.hw_rev.as_ref().map(ToString::to_string))
        .collect();
    assert_eq!(revs.len(), 3);
}

#[test]
fn the_rollout_demo_scenario_is_valid() {
    let text = include_str!("../../../examples/rollout-demo.toml");
    let scenario = Scenario::parse(text).expect("examples/rollout-demo.toml is valid");
    let fleet = drover_sim::expand_fleet(&scenario, 1);
    assert_eq!(fleet.len(), 1_000);
    assert!(fleet.iter().all(|d| d.firmware.to_string() == "2.2.0"));
}
