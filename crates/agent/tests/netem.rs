//! An over-the-air update over a bad network: the real `drover-agent` binary runs in its own Linux
//! network namespace, joined to the host by a veth pair, and updates from a Drover server started
//! in-process on the host end of the pair. The link is slow (4 Mbit/s towards the device) and,
//! where the kernel has netem, loses 5% of packets and delays each by 250 ms each way; in the
//! middle of the download the device's side of the link goes down for 30 s. The update must still
//! succeed, and the download must resume where it stopped rather than start over.
//!
//! Runs only with `DROVER_TEST_NETEM=1` (it needs root, `ip` and `tc`):
//! `DROVER_TEST_NETEM=1 cargo test -p drover-agent --test netem -- --nocapture`. On a kernel
//! without netem the loss and delay are left out (and the output says so); the rate limit comes
//! from tbf then, and without either the test fails, since nothing would keep the download going
//! long enough to cut it in the middle.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_server::{RunningServer, ServerConfig};
use drover_store::testing::TempDir;
use reqwest::multipart::{Form, Part};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "drv_test_admin_token_0123456789";

/// How long the link is down in the middle of the download.
const OUTAGE: Duration = Duration::from_secs(30);

/// The link's rate towards the device, so that the download lasts long enough to be cut.
const RATE: &str = "4mbit";

/// The matched route of target downloads, as the server's request metrics label it.
const TARGET_ROUTE: &str = "/api/device/v1/tuf/targets/{*path}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_over_a_lossy_link_resumes_its_download_after_a_30_second_outage() {
    if std::env::var("DROVER_TEST_NETEM").as_deref() != Ok("1") {
        eprintln!("skipped: DROVER_TEST_NETEM is not 1 (the test needs root, `ip netns` and `tc`)");
        return;
    }
    let started = Instant::now();
    let link = Link::create();
    // With 5% loss and a 500 ms round trip TCP manages a few tens of KiB/s, so a smaller image
    // keeps the test within a couple of minutes; without loss the rate limit alone sets the pace.
    let image_len = match link.netem {
        Netem::Applied => 1 << 20,
        Netem::Missing(_) => 8 << 20,
    };
    eprintln!("{}", link.describe());

    let dir = TempDir::new();
    let server = Server::start(&dir.path.join("server"), link.host_ip).await;
    let image = firmware("2.0.0", image_len);
    let image_len = image.len() as u64;
    server.upload("2.0.0", image).await;
    let config = write_config(&dir.path, &server.base, &server.claim().await);
    let _agent = Agent::spawn(&link, &config);
    let device = provisioned(&dir.path.join("agent")).await;

    let sent_at_deploy = link.host_tx_bytes();
    let id = server.deploy(&device, "2.0.0").await;

    // Cut the link once about 40% of the image has crossed it.
    let deadline = Instant::now() + Duration::from_secs(180);
    while link.host_tx_bytes() - sent_at_deploy < image_len * 2 / 5 {
        assert!(
            Instant::now() < deadline,
            "the download never got going\n{}",
            log_tail(&dir.path)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent_before_outage = link.host_tx_bytes() - sent_at_deploy;
    link.set_device_side_up(false);
    eprintln!(
        "outage: link down after {} KiB had crossed it, for {}s",
        sent_before_outage >> 10,
        OUTAGE.as_secs()
    );
    tokio::time::sleep(OUTAGE).await;
    // By now the agent has given up on the stalled response and recorded how far it got.
    let kept = persisted_download(&dir.path.join("agent"));
    link.set_device_side_up(true);
    let sent_at_recovery = link.host_tx_bytes();
    eprintln!("outage over: the agent had kept {kept:?} bytes");

    let deployment = server.finished(&device, id, 240, &dir.path).await;
    let sent_after_outage = link.host_tx_bytes() - sent_at_recovery;
    assert_eq!(
        deployment["state"],
        "succeeded",
        "{deployment}\n{}",
        log_tail(&dir.path)
    );
    assert_eq!(
        running(&dir.path.join("slots")),
        ("b".to_owned(), Some("2.0.0".to_owned()))
    );

    // The evidence that the download resumed, gathered before any assertion so that a failure
    // shows all of it: what the agent persisted while cut off, how the server answered the
    // target requests (its request metrics), what the agent logged, and what crossed the link.
    let (full, partial) = server.target_responses().await;
    let log = std::fs::read_to_string(dir.path.join("agent.log")).unwrap_or_default();
    let evidence = format!(
        "image {image_len} bytes; persisted during the outage: bytes_done {kept:?}; the server \
         answered {full} full (200) and {partial} range (206) target requests; {sent_after_outage} \
         bytes crossed the link after the outage\n{}",
        log_tail(&dir.path)
    );
    // The agent kept the part it had: its persisted progress lies strictly inside the image.
    let kept = kept.unwrap_or(0);
    assert!(
        0 < kept && kept < image_len,
        "the agent did not keep its download progress through the outage: {evidence}"
    );
    // The server sent the whole file once and after that only ranges.
    assert_eq!(
        full, 1,
        "the image was sent in full more than once: {evidence}"
    );
    assert!(partial >= 1, "no range was requested: {evidence}");
    assert!(!log.contains("did not resume the download"), "{evidence}");
    // And the link agrees: starting over would have sent the whole image (plus headers) again.
    assert!(
        sent_after_outage < image_len,
        "more than the image crossed the link after the outage: {evidence}"
    );

    eprintln!(
        "passed in {}s: {} KiB image, resumed at byte {kept}, {} KiB sent after the outage; {}",
        started.elapsed().as_secs(),
        image_len >> 10,
        sent_after_outage >> 10,
        link.describe()
    );
    server.stop().await;
}

/// Whether the link loses and delays packets.
enum Netem {
    Applied,
    /// This kernel has no netem; the reason `tc` gave.
    Missing(String),
}

/// A network namespace for the device, joined to the host by a veth pair; removed on drop.
struct Link {
    ns: String,
    host_if: String,
    device_if: String,
    host_ip: Ipv4Addr,
    device_ip: Ipv4Addr,
    netem: Netem,
}

impl Link {
    /// Creates the namespace and the veth pair (a /30 derived from the pid, so parallel runs do
    /// not collide) and shapes the link. Panics, after cleaning up, if a step fails.
    fn create() -> Link {
        let pid = std::process::id();
        let net = [10, 213, (pid >> 6) as u8, ((pid & 0x3f) << 2) as u8];
        let mut link = Link {
            ns: format!("drover-netem-{pid}"),
            host_if: format!("dnh{pid}"),
            device_if: format!("dnd{pid}"),
            host_ip: Ipv4Addr::new(net[0], net[1], net[2], net[3] + 1),
            device_ip: Ipv4Addr::new(net[0], net[1], net[2], net[3] + 2),
            netem: Netem::Missing(String::new()),
        };
        let (ns, host_if, device_if) = (&link.ns, &link.host_if, &link.device_if);
        let host_cidr = format!("{}/30", link.host_ip);
        let device_cidr = format!("{}/30", link.device_ip);
        must("ip", &["netns", "add", ns]);
        must(
            "ip",
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", device_if, "netns", ns,
            ],
        );
        must("ip", &["addr", "add", &host_cidr, "dev", host_if]);
        must("ip", &["link", "set", host_if, "up"]);
        must(
            "ip",
            &["-n", ns, "addr", "add", &device_cidr, "dev", device_if],
        );
        must("ip", &["-n", ns, "link", "set", device_if, "up"]);
        must("ip", &["-n", ns, "link", "set", "lo", "up"]);

        // Probe netem on the device's side: adding it there is also its first use.
        let netem = ["delay", "250ms", "loss", "5%"];
        let device_tc = [
            &[
                "netns", "exec", ns, "tc", "qdisc", "add", "dev", device_if, "root", "netem",
            ][..],
            &netem[..],
        ]
        .concat();
        link.netem = match run("ip", &device_tc) {
            Ok(()) => {
                let host_tc = [
                    &["qdisc", "add", "dev", host_if, "root", "netem"][..],
                    &netem[..],
                    &["rate", RATE][..],
                ]
                .concat();
                must("tc", &host_tc);
                Netem::Applied
            }
            Err(why) => {
                let tbf = [
                    "qdisc", "add", "dev", host_if, "root", "tbf", "rate", RATE, "burst", "32kbit",
                    "latency", "400ms",
                ];
                if let Err(e) = run("tc", &tbf) {
                    panic!(
                        "this kernel has neither netem ({why}) nor tbf ({e}): nothing can slow \
                         the link enough for an outage to cut the download in the middle"
                    );
                }
                Netem::Missing(why)
            }
        };
        link
    }

    /// What the link does to packets, in one line.
    fn describe(&self) -> String {
        match &self.netem {
            Netem::Applied => format!(
                "netem applied: 5% loss and 250 ms delay each way (500 ms RTT), {RATE}/s towards \
                 the device, {}s outage",
                OUTAGE.as_secs()
            ),
            Netem::Missing(why) => format!(
                "netem NOT available (`tc qdisc add ... netem`: {why}): loss and delay were NOT \
                 applied; only a {RATE}/s tbf rate limit towards the device and the {}s outage \
                 (`ip link set down`)",
                OUTAGE.as_secs()
            ),
        }
    }

    /// Takes the device's end of the link down or up: down, the device has no route to the
    /// server and the server's packets to it are dropped.
    fn set_device_side_up(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        must(
            "ip",
            &["-n", &self.ns, "link", "set", &self.device_if, state],
        );
    }

    /// Bytes the host has sent into the link (towards the device) so far.
    fn host_tx_bytes(&self) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/tx_bytes", self.host_if);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting the namespace deletes the device's veth end, and with it the host's end.
        let _ = run("ip", &["netns", "del", &self.ns]);
        let _ = run("ip", &["link", "del", &self.host_if]);
    }
}

/// The agent binary running in the link's namespace; killed on drop.
struct Agent(Child);

impl Agent {
    /// Starts the agent; its log (debug level) goes to `agent.log` beside the config.
    fn spawn(link: &Link, config: &Path) -> Agent {
        let log = std::fs::File::create(config.with_file_name("agent.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &link.ns,
                env!("CARGO_BIN_EXE_drover-agent"),
            ])
            .arg("--config")
            .arg(config)
            .env("DROVER_AGENT_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // `ip netns exec` execs the agent, so this is the agent's own process.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a command; on failure returns what it printed.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(stderr.trim().to_owned())
}

fn must(program: &str, args: &[&str]) {
    if let Err(e) = run(program, args) {
        panic!("`{program} {}` failed: {e}", args.join(" "));
    }
}

/// The in-process server, listening on the host's end of the link.
struct Server {
    base: String,
    http: reqwest::Client,
    server: RunningServer,
}

impl Server {
    async fn start(data_dir: &Path, ip: Ipv4Addr) -> Server {
        let mut config = ServerConfig::with_data_dir(data_dir);
        config.listen = (ip, 0).into();
        config.admin_token = Some(ADMIN_TOKEN.to_owned());
        let server = drover_server::start(config, std::future::pending())
            .await
            .expect("server starts");
        Server {
            base: format!("http://{}", server.addr),
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

    async fn upload(&self, version: &str, bytes: Vec<u8>) {
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
    }

    async fn claim(&self) -> String {
        let body = json!({"name": "fleet", "device_type": "sensor"});
        let (status, body) = self.admin(Method::POST, "/api/v1/claims", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    async fn deploy(&self, device: &str, version: &str) -> i64 {
        let path = format!("/api/v1/devices/{device}/deployments");
        let body = json!({"artifact": "sensor-fw", "version": version});
        let (status, body) = self.admin(Method::POST, &path, Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_i64().unwrap()
    }

    /// Waits (up to `secs`) until the deployment is over; returns it.
    async fn finished(&self, device: &str, id: i64, secs: u64, dir: &Path) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let path = format!("/api/v1/devices/{device}/deployments");
        loop {
            let (_, list) = self.admin(Method::GET, &path, None).await;
            let deployment = list
                .as_array()
                .and_then(|l| l.iter().find(|d| d["id"] == id).cloned())
                .unwrap_or(Value::Null);
            if deployment["finished_at"].is_string() {
                return deployment;
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} did not finish: {deployment}\n{}",
                log_tail(dir)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many target downloads the server answered in full (`200`) and as a range (`206`),
    /// from its request metrics.
    async fn target_responses(&self) -> (u64, u64) {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let count = |status: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with("drover_http_requests_total{"))
                .filter(|l| l.contains(&format!("route=\"{TARGET_ROUTE}\"")))
                .filter(|l| l.contains(&format!("status=\"{status}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        (count("200"), count("206"))
    }

    async fn stop(self) {
        self.server.shutdown().await.expect("server stops");
    }
}

/// A simulated image of `len` recognisable bytes.
fn firmware(version: &str, len: usize) -> Vec<u8> {
    let mut bytes: Vec<u8> = format!("SIMULATED FIRMWARE {version}\n").into_bytes();
    bytes.extend((0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(version.len() as u8)));
    bytes
}

/// The agent's configuration: HTTP only, simulated slots, frequent checks. `request_timeout` also
/// bounds each read of the download, so it is how soon a stalled download is given up and retried
/// (retries come 5 s apart, since the check interval is shorter than that).
fn write_config(dir: &Path, server: &str, claim: &str) -> PathBuf {
    let config = format!(
        "server_url = \"{server}\"\nstate_dir = \"{}\"\nhardware_id = \"HW-NETEM-1\"\n\
         claim_token = \"{claim}\"\ndevice_type = \"sensor\"\nfirmware = \"1.0.0\"\n\
         heartbeat_interval = \"2s\"\nrequest_timeout = \"10s\"\n\
         [update]\nenabled = true\nslots = \"simulated\"\nslot_dir = \"{}\"\ncheck_interval = \"1s\"\n\
         watchdog_timeout = \"60s\"\nhealth_check_timeout = \"30s\"\n",
        dir.join("agent").display(),
        dir.join("slots").display(),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, config).unwrap();
    path
}

async fn provisioned(state_dir: &Path) -> String {
    let state = state_dir.join("state.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !state.exists() {
        assert!(Instant::now() < deadline, "the agent did not provision");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let state: Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    state["device_id"].as_str().unwrap().to_owned()
}

/// The download progress the agent has persisted (`update.json`), if it is downloading.
fn persisted_download(state_dir: &Path) -> Option<u64> {
    let record = std::fs::read(state_dir.join("update.json")).ok()?;
    let record: Value = serde_json::from_slice(&record).ok()?;
    let phase = &record["job"]["phase"];
    if phase["phase"] != "download" {
        return None;
    }
    phase["bytes_done"].as_u64()
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

/// The agent's log without heartbeats, for failure messages.
fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("heartbeat")).collect();
    let record = std::fs::read_to_string(dir.join("agent").join("update.json")).unwrap_or_default();
    format!(
        "agent log:\n{}\nupdate.json: {record}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}
