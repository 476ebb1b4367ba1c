//! `drover demo`: one command that shows what Drover does. It starts a server in-process on a fresh
//! SQLite store, uploads three firmware releases, runs a simulated fleet against it and narrates
//! two staged rollouts: a bad release the canary gate catches and rolls back, then a good one that
//! reaches everyone. Afterwards the server and the fleet keep running for exploration.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use drover_core::rollout::stats::Verdict;
use drover_proto::rollouts::{RolloutDecisionView, RolloutView};
use drover_server::ServerConfig;
use drover_sim::mqtt::BrokerAddress;
use drover_sim::stats::Snapshot;
use drover_sim::{RunOptions, Scenario};
use drover_store::testing::TempDir;
use serde_json::{json, Value};
use tokio::sync::watch;

/// `drover demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated devices (half over MQTT, half over HTTP).
    #[arg(long, default_value_t = 5000)]
    pub devices: usize,
    /// Keep the store, artifacts and device credentials here (an empty or new directory) instead
    /// of a temporary directory removed on exit.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// How long each rollout phase's devices run the release before its gate judges it (wall
    /// time; at the demo's 60× speed-up, 30s covers six heartbeats per device).
    #[arg(long, default_value = "30s")]
    pub soak: String,
    /// Exit as soon as the scenario is over instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
}

/// Most devices one demo process simulates (each MQTT device holds a connection).
const MAX_DEVICES: usize = 20_000;
/// Fewest devices: the first phase needs at least 5 canary devices for the gate to judge, and the
/// baseline as many.
const MIN_DEVICES: usize = 50;
const DEVICE_TYPE: &str = "sensor-hub";
const ARTIFACT: &str = "sensor-hub-fw";
const VERSIONS: [&str; 3] = ["2.2.0", "2.3.0", "2.3.1"];
/// Most devices updating at once. Server and fleet share two cores on a laptop: with 3,750 devices
/// updating at once (the last phase of 5,000) the device API's answers slowed until attempts timed
/// out and were retried, and the phase took five minutes; a thousand at a time took seconds each.
const MAX_PARALLEL: u64 = 1000;

/// The fleet, modelled on `examples/rollout-demo.toml`; `{count}` is replaced by `--devices`.
const SCENARIO: &str = r#"
[run]
speedup = 60
seed = 20261201
transport_mix = 0.5
allow_downgrade = true

[[fleet]]
device_type = "sensor-hub"
count = {count}
firmware = "2.2.0"
hw_revs = { "rev-a" = 0.6, "rev-b" = 0.4 }
regions = { "eu-west" = 0.5, "us-east" = 0.3, "ap-south" = 0.2 }
sites = { "plant-1" = 2, "plant-2" = 1 }
tags = { env = "demo" }
heartbeat_interval = "5m"
heartbeat_jitter = "30s"
network = "wifi"
crash_rate_per_hour = 0.01

[fleet.metrics]
battery_ma = { normal = { mean = 14.0, sd = 1.5 } }
mem_free_bytes = { normal = { mean = 32_000_000, sd = 1_000_000 } }
cpu_pct = { uniform = { min = 3, max = 25 } }

[firmware."2.3.0"]
battery_current_multiplier = 20.0
install_duration = "30s"

[firmware."2.3.1"]
install_duration = "30s"

[network.wifi]
latency = "15ms"
jitter = "5ms"
"#;

/// Runs `drover demo`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if !(MIN_DEVICES..=MAX_DEVICES).contains(&args.devices) {
        bail!(
            "--devices must be between {MIN_DEVICES} and {MAX_DEVICES} (the canary gate needs at least 5 devices on each side), not {}",
            args.devices
        );
    }
    let needed = 3 * args.devices as u64 + 500;
    let limit = raise_open_file_limit(needed);
    if limit < needed {
        bail!(
            "{} devices need about {needed} open files in this process (both ends of each connection) but the limit is {limit}; raise it with `ulimit -n {needed}` or run fewer --devices",
            thousands(args.devices as u64)
        );
    }
    let soak = drover_core::Duration::parse(&args.soak)
        .map_err(|e| anyhow::anyhow!("--soak {:?}: {e}", args.soak))?;
    if soak.as_millis() < 5_000 {
        bail!("--soak must be at least 5s: the gate needs heartbeats from the canary devices");
    }
    let soak = Duration::from_millis(soak.as_millis() as u64);
    let (data_dir, _temp) = match &args.data_dir {
        Some(dir) => {
            prepare_data_dir(dir)?;
            (dir.clone(), None)
        }
        None => {
            let temp = TempDir::new();
            (temp.path.clone(), Some(temp))
        }
    };
    let scenario = Scenario::parse(&SCENARIO.replace("{count}", &args.devices.to_string()))
        .map_err(|e| anyhow::anyhow!("the demo scenario: {e}"))?;

    let started = Instant::now();
    let token = drover_store::secret::generate("drv_op_");
    let mut config = ServerConfig::with_data_dir(&data_dir);
    config.listen = "127.0.0.1:0".parse()?;
    config.mqtt = drover_server::mqtt::MqttConfig::Embedded {
        listen: "127.0.0.1:0".parse()?,
    };
    config.admin_token = Some(token.clone());
    config.rollout_tick = Duration::from_secs(1);
    // The adoption curve of /api/v1/fleet/versions gets a point every 2 s of a 3-minute demo.
    config.rollup_interval = Duration::from_secs(2);
    let server = drover_server::start(config, std::future::pending()).await?;
    let base = format!("http://{}", server.addr);
    let mqtt_addr = server
        .mqtt_addr
        .context("the embedded MQTT broker did not start")?;
    let n = args.devices;
    println!(
        "Drover demo: a server, three firmware releases and {} simulated {DEVICE_TYPE} devices on this machine.",
        thousands(n as u64)
    );
    println!();
    println!("  Dashboard  {base}/");
    println!("  Token      {token}   (paste it into the dashboard's login)");
    println!("  MQTT       mqtt://{mqtt_addr}");
    match &args.data_dir {
        Some(dir) => println!("  Data       {}", dir.display()),
        None => println!("  Data       {} (removed on exit)", data_dir.display()),
    }
    println!();
    println!("  Explore with the CLI in another terminal:");
    println!("    export DROVER_SERVER={base}");
    println!("    export DROVER_TOKEN={token}");
    println!("    drover rollouts list");
    println!();

    let api = Api {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?,
        base: base.clone(),
        token: token.clone(),
    };
    for version in VERSIONS {
        api.upload(version).await?;
    }
    println!(
        "Uploaded {ARTIFACT} {} for {DEVICE_TYPE}.",
        VERSIONS.map(|v| format!("v{v}")).join(", ")
    );
    println!();

    let (stop, stopped) = watch::channel(false);
    let (snapshots, snapshot) = watch::channel(Snapshot::default());
    let options = RunOptions {
        server: base.clone(),
        broker: BrokerAddress {
            host: mqtt_addr.ip().to_string(),
            port: mqtt_addr.port(),
        },
        claim_token: None,
        admin_token: Some(token.clone()),
        state_dir: data_dir.join("sim"),
        duration: None,
        seed: None,
        progress_every: Duration::from_millis(250),
    };
    let mut fleet = tokio::spawn(drover_sim::run(
        scenario,
        options,
        stopped,
        move |now, _, _, _| {
            let _ = snapshots.send(now.clone());
        },
    ));

    let demo = Demo {
        api,
        n_devices: n,
        soak,
        fleet: snapshot,
        out: Narrator::new(),
    };
    let outcome = tokio::select! {
        outcome = demo.narrate() => outcome,
        ended = &mut fleet => Err(fleet_ended(ended)),
        () = drover_server::termination_signal() => Err(anyhow::anyhow!("interrupted before the demo finished")),
    };
    let outcome = match outcome {
        Ok(()) => {
            println!();
            println!("The demo took {}.", describe_duration(started.elapsed()));
            if args.exit_when_done {
                Ok(())
            } else {
                println!(
                    "The server and the fleet keep running for exploration: open {base}/ (rollouts, versions, devices) or use the CLI exports above; Ctrl-C stops them."
                );
                let _ = std::io::stdout().flush();
                tokio::select! {
                    ended = &mut fleet => Err(fleet_ended(ended)),
                    () = drover_server::termination_signal() => Ok(()),
                }
            }
        }
        Err(e) => Err(e),
    };
    let _ = stop.send(true);
    if !fleet.is_finished() {
        // The devices save their credentials when they stop; a slow stop is not worth waiting for.
        let _ = tokio::time::timeout(Duration::from_secs(10), fleet).await;
    }
    let stopped = tokio::time::timeout(Duration::from_secs(10), server.shutdown()).await;
    outcome?;
    match stopped {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// What the narration needs: the API, the fleet's counters and the output.
struct Demo {
    api: Api,
    n_devices: usize,
    soak: Duration,
    fleet: watch::Receiver<Snapshot>,
    out: Narrator,
}

impl Demo {
    /// The four acts: fleet online, a bad release rolled back, a good one completed, the fleet's
    /// versions.
    async fn narrate(mut self) -> anyhow::Result<()> {
        let n = self.n_devices as u64;
        self.out.say(
            "1. Bringing the fleet online at 60× speed-up (a 5-minute heartbeat every 5 s; half MQTT, half HTTP)",
        );
        let timeout = Duration::from_secs(60) + Duration::from_millis(40 * n);
        let deadline = Instant::now() + timeout;
        loop {
            let snapshot = self.fleet.borrow().clone();
            let on_old = snapshot.versions.get(VERSIONS[0]).copied().unwrap_or(0);
            let online = snapshot.online.min(on_old);
            self.out
                .progress(&format!("   {} online", bar(online, n)), online == n);
            if online >= n {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "waited {} for all {} devices to come online; {} are{}",
                    describe_duration(timeout),
                    thousands(n),
                    thousands(snapshot.online),
                    errors_note(&snapshot)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.out.say(&format!(
            "   v{} runs on all {} devices.",
            VERSIONS[0],
            thousands(n)
        ));
        self.out.say("");

        let phases = phases(self.n_devices);
        let described = phases
            .iter()
            .map(|p| format!("{p}%"))
            .collect::<Vec<_>>()
            .join(" → ");
        self.out.say(&format!(
            "2. Rolling out v{} (it draws 20× the battery current) in phases {described}, soaking {} each, rollback on failure",
            VERSIONS[1],
            describe_duration(self.soak)
        ));
        let id = self
            .create_rollout(VERSIONS[1], &phases, "rollback")
            .await?;
        let view = self.follow(id, VERSIONS[1]).await?;
        if view.status != "rolled_back" {
            bail!(
                "expected the canary gate to roll v{} back, but the rollout is {}{}",
                VERSIONS[1],
                view.status,
                view.reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
        }
        let evidence = view
            .gates
            .iter()
            .rev()
            .find(|report| report.verdict == Verdict::Fail)
            .map(|report| report.summary())
            .or(view.reason.clone())
            .unwrap_or_else(|| "no evidence recorded".to_owned());
        self.out.say(&format!("   Gate evidence: {evidence}"));
        let reverted = self.wait_reverted(id).await?;
        self.out.say(&format!(
            "   Rolled back: {} devices reverted to v{}{}.",
            thousands(reverted.counts.reverted),
            VERSIONS[0],
            match reverted.counts.revert_failed {
                0 => String::new(),
                k => format!(", {} could not revert", thousands(k)),
            }
        ));
        self.out.say("");

        self.out.say(&format!(
            "3. Rolling out v{} (the fix) in phases {described}, soaking {} each, pause on failure",
            VERSIONS[2],
            describe_duration(self.soak)
        ));
        let id = self.create_rollout(VERSIONS[2], &phases, "pause").await?;
        let view = self.follow(id, VERSIONS[2]).await?;
        if view.status != "completed" {
            bail!(
                "expected v{} to reach every device, but the rollout is {}{}",
                VERSIONS[2],
                view.status,
                view.reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
        }
        self.out.say(&format!(
            "   Completed: {} devices updated to v{}.",
            thousands(view.counts.succeeded),
            VERSIONS[2]
        ));
        self.out.say("");

        self.out.say(
            "4. Firmware across the fleet (the server's registry: GET /api/v1/devices/count?q=firmware = …)",
        );
        let total = self
            .api
            .count(&format!("device_type = {DEVICE_TYPE}"))
            .await?;
        let mut counted = 0;
        for version in VERSIONS.iter().rev() {
            let count = self
                .api
                .count(&format!(
                    "device_type = {DEVICE_TYPE} AND firmware = {version}"
                ))
                .await?;
            counted += count;
            self.out
                .say(&format!("   v{version}  {}", bar(count, total)));
        }
        if counted != total {
            self.out.say(&format!(
                "   other versions: {}",
                thousands(total.saturating_sub(counted))
            ));
        }
        self.out
            .say(&format!("   total   {} devices", thousands(total)));
        Ok(())
    }

    async fn create_rollout(
        &self,
        version: &str,
        phases: &[u32],
        on_failure: &str,
    ) -> anyhow::Result<i64> {
        let soak = format!("{}s", self.soak.as_secs().max(1));
        let phases: Vec<Value> = phases
            .iter()
            .map(|&percent| {
                if percent == 100 {
                    json!({ "percent": percent })
                } else {
                    json!({ "percent": percent, "soak": soak })
                }
            })
            .collect();
        let body = json!({
            "name": format!("v{version} to every {DEVICE_TYPE}"),
            "artifact": ARTIFACT,
            "version": version,
            "target": { "query": format!("device_type = {DEVICE_TYPE}") },
            "strategy": { "phases": phases },
            "on_failure": on_failure,
            "max_parallel": MAX_PARALLEL,
        });
        let view = self.api.post("/api/v1/rollouts", &body).await?;
        view["id"]
            .as_i64()
            .with_context(|| format!("the created rollout has no id: {view}"))
    }

    /// Narrates a rollout's phases and decisions until it completes, pauses or ends.
    async fn follow(&mut self, id: i64, version: &str) -> anyhow::Result<RolloutView> {
        let soak = self.soak.as_secs();
        let timeout = Duration::from_secs(120 + 6 * (soak + 20))
            + Duration::from_millis(20 * self.n_devices as u64);
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            let view: RolloutView =
                serde_json::from_value(self.api.get(&format!("/api/v1/rollouts/{id}")).await?)
                    .context("cannot read the rollout")?;
            let decisions: Vec<RolloutDecisionView> = serde_json::from_value(
                self.api
                    .get(&format!("/api/v1/rollouts/{id}/decisions"))
                    .await?,
            )
            .context("cannot read the decision log")?;
            let after = seen;
            for decision in decisions.iter().filter(|d| d.seq > after) {
                seen = decision.seq;
                if matches!(
                    decision.kind.as_str(),
                    "gate" | "paused" | "rolled_back" | "aborted" | "completed"
                ) {
                    self.out.say(&format!("   {}", decision.message));
                }
            }
            let ended = !matches!(view.status.as_str(), "running");
            let line = format!(
                "   phase {}/{} ({}%)  {} on v{version}{}",
                view.phase,
                view.n_phases,
                view.phase_percent,
                bar(view.counts.succeeded, view.counts.target),
                view.waiting_for
                    .as_deref()
                    .map(|w| format!(" · {w}"))
                    .unwrap_or_default()
            );
            self.out.progress(&line, ended);
            if ended {
                return Ok(view);
            }
            if Instant::now() >= deadline {
                bail!(
                    "waited {} for rollout {id} (v{version}) to finish; it is at phase {}/{}{}",
                    describe_duration(timeout),
                    view.phase,
                    view.n_phases,
                    view.waiting_for
                        .map(|w| format!(", waiting for {w}"))
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Waits until no device runs the rolled-back release any more and the rollout has recorded
    /// every revert.
    async fn wait_reverted(&mut self, id: i64) -> anyhow::Result<RolloutView> {
        let timeout = Duration::from_secs(120);
        let deadline = Instant::now() + timeout;
        loop {
            let on_bad = self
                .fleet
                .borrow()
                .versions
                .get(VERSIONS[1])
                .copied()
                .unwrap_or(0);
            let mut pending = 0;
            for state in ["revert_queued", "reverting"] {
                let page = self
                    .api
                    .get(&format!(
                        "/api/v1/rollouts/{id}/devices?state={state}&limit=1"
                    ))
                    .await?;
                pending += page["items"].as_array().map_or(0, Vec::len);
            }
            if on_bad == 0 && pending == 0 {
                let view =
                    serde_json::from_value(self.api.get(&format!("/api/v1/rollouts/{id}")).await?)
                        .context("cannot read the rollout")?;
                return Ok(view);
            }
            if Instant::now() >= deadline {
                bail!(
                    "waited {} for the devices that took v{} to run v{} again; {} still run v{}",
                    describe_duration(timeout),
                    VERSIONS[1],
                    VERSIONS[0],
                    thousands(on_bad),
                    VERSIONS[1]
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The rollout phases: 1 → 5 → 25 → 100%, with a first phase of at least 10 devices so that a small
/// fleet's canary gate has data to judge.
fn phases(n_devices: usize) -> Vec<u32> {
    let first = (1000usize.div_ceil(n_devices) as u32).clamp(1, 50);
    std::iter::once(first)
        .chain([5, 25, 100].into_iter().filter(|&p| p > first))
        .collect()
}

/// Refuses a `--data-dir` that is a file or already holds something: the demo needs a fresh store.
fn prepare_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("--data-dir {} is not a directory", dir.display());
        }
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read --data-dir {}", dir.display()))?;
        if entries.next().is_some() {
            bail!(
                "--data-dir {} is not empty; the demo starts from a fresh store (give a new or empty directory)",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create --data-dir {}", dir.display()))
}

/// Raises this process's soft limit on open files towards `wanted` (at most the hard limit) and
/// returns the limit now in force. Server and devices share the process, so each connection holds
/// two descriptors; many systems start processes at 1,024.
// `rlim_t` is not `u64` on every platform.
#[allow(clippy::unnecessary_cast)]
fn raise_open_file_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return u64::MAX;
        }
        if (limit.rlim_cur as u64) < wanted {
            let raised = libc::rlimit {
                rlim_cur: (wanted as libc::rlim_t).min(limit.rlim_max),
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur as u64
}

fn fleet_ended(
    ended: Result<Result<drover_sim::Summary, String>, tokio::task::JoinError>,
) -> anyhow::Error {
    match ended {
        Ok(Ok(_)) => anyhow::anyhow!("the simulated fleet stopped unexpectedly"),
        Ok(Err(e)) => anyhow::anyhow!("the simulated fleet stopped: {e}"),
        Err(e) => anyhow::anyhow!("the simulated fleet panicked: {e}"),
    }
}

fn errors_note(snapshot: &Snapshot) -> String {
    match snapshot.recent_errors.last() {
        Some(error) => format!(" (last device error: {error})"),
        None => String::new(),
    }
}

/// The admin API with the demo's token.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        answer(response, path).await
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        answer(response, path).await
    }

    async fn count(&self, query: &str) -> anyhow::Result<u64> {
        let response = self
            .http
            .get(format!("{}/api/v1/devices/count", self.base))
            .query(&[("q", query)])
            .bearer_auth(&self.token)
            .send()
            .await
            .context("GET /api/v1/devices/count")?;
        let count = answer(response, "/api/v1/devices/count").await?;
        count["count"]
            .as_u64()
            .with_context(|| format!("the device count is not a number: {count}"))
    }

    /// Uploads a small random image as `version` of the demo's artifact.
    async fn upload(&self, version: &str) -> anyhow::Result<()> {
        let metadata =
            json!({ "name": ARTIFACT, "version": version, "device_types": [DEVICE_TYPE] });
        let image = reqwest::multipart::Part::bytes(random_image(64 << 10))
            .file_name(format!("{ARTIFACT}-{version}.img"));
        crate::bench::upload_artifact(&self.http, &self.base, &self.token, &metadata, image)
            .await
            .with_context(|| format!("cannot upload {ARTIFACT} {version}"))?;
        Ok(())
    }
}

async fn answer(response: reqwest::Response, path: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{path}: {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{path}: the answer is not JSON: {text}"))
}

/// `len` bytes that differ from run to run (each release a distinct image).
fn random_image(len: usize) -> Vec<u8> {
    let mut image = Vec::with_capacity(len + 64);
    while image.len() < len {
        image.extend_from_slice(drover_store::secret::generate("").as_bytes());
    }
    image.truncate(len);
    image
}

/// Prints narration and progress bars: on a terminal a bar is redrawn in place; otherwise each
/// change is a line of its own, at most one every few seconds.
struct Narrator {
    tty: bool,
    /// A bar is drawn on the current terminal line without a newline yet.
    open: bool,
    last: String,
    last_at: Option<Instant>,
}

impl Narrator {
    fn new() -> Narrator {
        Narrator {
            tty: std::io::stdout().is_terminal(),
            open: false,
            last: String::new(),
            last_at: None,
        }
    }

    /// A line of narration, below any bar.
    fn say(&mut self, text: &str) {
        self.close();
        println!("{text}");
        let _ = std::io::stdout().flush();
    }

    /// Redraws the progress bar; `last` marks its final state, always shown.
    fn progress(&mut self, line: &str, last: bool) {
        if line == self.last {
            return;
        }
        if self.tty {
            print!("\r\x1b[2K{line}");
            self.open = true;
        } else {
            let due = self
                .last_at
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(3));
            if !(due || last) {
                return;
            }
            println!("{line}");
        }
        self.last = line.to_owned();
        self.last_at = Some(Instant::now());
        let _ = std::io::stdout().flush();
    }

    fn close(&mut self) {
        if self.open {
            println!();
            self.open = false;
            // The bar scrolled up: the next one is drawn afresh.
            self.last.clear();
        }
    }
}

/// `[#####.....] 2,500/5,000`.
fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 20;
    let filled = (done.min(total) * WIDTH).checked_div(total).unwrap_or(0);
    format!(
        "[{}{}] {}/{}",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize),
        thousands(done),
        thousands(total)
    )
}

/// `5,000`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut text = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            text.push(',');
        }
        text.push(c);
    }
    text
}

/// `2m 05s` or `45s`.
fn describe_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 60 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_numbers_read_at_a_glance() {
        assert_eq!(bar(2500, 5000), "[##########..........] 2,500/5,000");
        assert_eq!(bar(0, 0), "[....................] 0/0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(describe_duration(Duration::from_secs(125)), "2m 05s");
    }

    #[test]
    fn small_fleets_get_a_first_phase_of_at_least_ten_devices() {
        assert_eq!(phases(5000), vec![1, 5, 25, 100]);
        assert_eq!(phases(100), vec![10, 25, 100]);
        assert_eq!(phases(50), vec![20, 25, 100]);
    }

    #[test]
    fn the_demo_scenario_is_valid_for_any_allowed_size() {
        for n in [MIN_DEVICES, 5000, MAX_DEVICES] {
            let scenario = Scenario::parse(&SCENARIO.replace("{count}", &n.to_string()))
                .expect("the demo scenario parses");
            assert_eq!(scenario.n_devices(), n);
        }
    }
}
