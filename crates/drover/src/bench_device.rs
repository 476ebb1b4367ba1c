//! `drover bench checkins` and `drover bench shadow`: the device API's polling paths under load, on
//! an in-process server with a fresh store, beside the same server answering `GET /healthz` over
//! the same number of connections in the same run (the anchor of `drover bench heartbeats`).
//!
//! `checkins` has enrolled devices ask `GET /api/device/v1/deployments/next` with their own
//! credentials; with `--pending` every device first gets a deployment of one uploaded artifact
//! through the admin API, so every answer is an update offer rather than `204 No Content`.
//! `shadow` has devices report state (`POST /api/device/v1/shadow`), then, separately, holds a
//! long-poll on `GET /api/device/v1/shadow/delta` open for every device while operators set desired
//! state (`PATCH /api/v1/devices/{id}/shadow`), and times each set until the device's long-poll
//! has answered with the delta.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::builder::RangedU64ValueParser;
use clap::Args;
use drover_proto::shadow::{ShadowAccepted, ShadowDelta, ShadowView};
use drover_proto::update::{DeploymentId, UpdateOffer};
use drover_server::{RunningServer, ServerConfig};
use drover_store::testing::TempDir;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::bench::{enrol, load, ms, LoadResult, BENCH_TOKEN};

#[derive(Debug, Args)]
pub struct CheckinArgs {
    /// Devices checking in (each with its own credential).
    #[arg(long, default_value_t = 1000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub devices: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub connections: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Deploy an artifact to every device first, so each check-in is answered with an update
    /// offer (200) instead of `204 No Content`.
    #[arg(long)]
    pub pending: bool,
    /// Store URL (default: SQLite in a temporary directory).
    #[arg(long)]
    pub store: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShadowArgs {
    /// Devices (each with its own credential); while desired state is set, every one of them holds
    /// a delta long-poll open on its own connection.
    #[arg(long, default_value_t = 1000, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub devices: usize,
    /// Concurrent HTTP connections reporting state.
    #[arg(long, default_value_t = 64, value_parser = RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub connections: usize,
    /// Operators setting desired state at once, each waiting for its device's delta before the
    /// next set; each owns its own devices, so no two sets on one device overlap.
    #[arg(long, default_value_t = 4, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub operators: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Store URL (default: SQLite in a temporary directory).
    #[arg(long)]
    pub store: Option<String>,
}

/// How long an operator waits for its device's long-poll to answer before counting the delta as
/// missed.
const DELTA_TIMEOUT: Duration = Duration::from_secs(10);

/// Seconds each delta long-poll asks the server to wait (the server allows up to 60).
const LONG_POLL_WAIT_SECS: u64 = 30;

pub async fn checkins(args: CheckinArgs) -> anyhow::Result<()> {
    let dir = TempDir::new();
    let server = start_server(&dir, args.store.as_deref()).await?;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    println!(
        "# drover bench checkins: {} devices, {} connections, {} s, {}, on {}",
        args.devices,
        args.connections,
        args.seconds,
        if args.pending {
            "a pending deployment for every device (answer: 200 with an update offer)"
        } else {
            "no deployments (answer: 204 No Content)"
        },
        server.store.backend_name()
    );

    let devices = enrol(&base, "ci", args.devices).await?;
    let expected: Option<Vec<DeploymentId>> = if args.pending {
        let started = Instant::now();
        upload_artifact(&http, &base).await?;
        let deployments = deploy_to_all(&http, &base, &devices).await?;
        println!(
            "setup: artifact uploaded and {} deployments created in {:.1} s",
            deployments.len(),
            started.elapsed().as_secs_f64()
        );
        Some(deployments)
    } else {
        None
    };
    let credentials: Arc<Vec<String>> = Arc::new(
        devices
            .into_iter()
            .map(|(_, credential)| credential)
            .collect(),
    );
    let expected = Arc::new(expected);
    let url = format!("{base}/api/device/v1/deployments/next");
    // One check-in before the clock starts, so a wrong answer fails with its reason instead of
    // ending up as an error count.
    check_in(
        &http,
        &url,
        &credentials[0],
        expected.as_ref().as_ref().map(|e| e[0]),
    )
    .await
    .context("the first check-in")?;

    let anchor = healthz_load(&http, &base, args.connections, args.seconds).await;
    let measured = {
        let (http, url) = (http.clone(), url.clone());
        load(args.connections, args.seconds, move |worker, n| {
            let (http, url, credentials, expected) = (
                http.clone(),
                url.clone(),
                credentials.clone(),
                expected.clone(),
            );
            async move {
                let device_idx = (worker + n as usize * 7919) % credentials.len();
                let deployment = expected.as_ref().as_ref().map(|e| e[device_idx]);
                check_in(&http, &url, &credentials[device_idx], deployment).await
            }
        })
        .await
    };

    let name = if args.pending {
        "check-ins (`deployments/next`), 200 with an offer"
    } else {
        "check-ins (`deployments/next`), 204 nothing to install"
    };
    print_table(&[
        Row {
            name: format!("anchor: GET /healthz, {} connections", args.connections),
            result: &anchor,
            anchor: &anchor,
        },
        Row {
            name: format!("{name}, {} connections", args.connections),
            result: &measured,
            anchor: &anchor,
        },
    ]);
    server.shutdown().await?;
    Ok(())
}

pub async fn shadow(args: ShadowArgs) -> anyhow::Result<()> {
    if args.operators > args.devices {
        bail!("--operators must not exceed --devices: each operator needs devices of its own");
    }
    // Client and server run in this process: each long-poll holds a socket at either end.
    let needed = 2 * (args.devices + args.connections + args.operators) + 256;
    if let Some(limit) = open_file_limit() {
        if needed as u64 > limit {
            bail!(
                "{} devices need about {needed} open files in this process, above its limit of {limit}; lower --devices or raise `ulimit -n`",
                args.devices
            );
        }
    }
    let dir = TempDir::new();
    let server = start_server(&dir, args.store.as_deref()).await?;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections.max(args.operators))
        .build()?;
    println!(
        "# drover bench shadow: {} devices, {} connections reporting, {} operators setting desired state while every device long-polls for its delta, {} s, on {}",
        args.devices,
        args.connections,
        args.operators,
        args.seconds,
        server.store.backend_name()
    );
    let devices = enrol(&base, "sh", args.devices).await?;
    let ids: Arc<Vec<String>> = Arc::new(devices.iter().map(|(id, _)| id.clone()).collect());
    let credentials: Arc<Vec<String>> = Arc::new(
        devices
            .into_iter()
            .map(|(_, credential)| credential)
            .collect(),
    );
    let report_url = format!("{base}/api/device/v1/shadow");
    report_state(&http, &report_url, &credentials[0], 0)
        .await
        .context("the first state report")?;

    let anchor = healthz_load(&http, &base, args.connections, args.seconds).await;

    // Devices report state. Every report carries a new uptime, so each one changes the document
    // (a version bump and a write), as a device's periodic report does.
    let reported = {
        let (http, url, credentials) = (http.clone(), report_url.clone(), credentials.clone());
        let connections = args.connections as u64;
        load(args.connections, args.seconds, move |worker, n| {
            let (http, url, credentials) = (http.clone(), url.clone(), credentials.clone());
            async move {
                let device_idx = (worker + n as usize * 7919) % credentials.len();
                // Above the first report's 0, and never the same twice.
                let uptime = 1 + n * connections + worker as u64;
                report_state(&http, &url, &credentials[device_idx], uptime).await
            }
        })
        .await
    };

    let (operators_anchor, acknowledged, delivered) =
        desired_to_delta(&http, &base, &ids, &credentials, &args).await?;
    print_table(&[
        Row {
            name: format!("anchor: GET /healthz, {} connections", args.connections),
            result: &anchor,
            anchor: &anchor,
        },
        Row {
            name: format!(
                "device reports state (`POST /api/device/v1/shadow`), {} connections",
                args.connections
            ),
            result: &reported,
            anchor: &anchor,
        },
        Row {
            name: format!(
                "anchor: GET /healthz, {} connections, {} devices long-polling",
                args.operators, args.devices
            ),
            result: &operators_anchor,
            anchor: &operators_anchor,
        },
        Row {
            name: format!(
                "operator sets desired state (`PATCH /api/v1/devices/{{id}}/shadow`), {} operators, until acknowledged",
                args.operators
            ),
            result: &acknowledged,
            anchor: &operators_anchor,
        },
        Row {
            name: format!(
                "operator sets desired state, until the device's long-poll has the delta ({} operators)",
                args.operators
            ),
            result: &delivered,
            anchor: &operators_anchor,
        },
    ]);
    server.shutdown().await?;
    Ok(())
}

/// Holds a delta long-poll open for every device, measures the anchor at the operators'
/// concurrency, then has the operators set desired state for `seconds`. Returns the anchor, the
/// sets timed until acknowledged, and the sets timed until the device's long-poll had the delta
/// (its errors: deltas missed and failed polls).
async fn desired_to_delta(
    http: &reqwest::Client,
    base: &str,
    ids: &Arc<Vec<String>>,
    credentials: &Arc<Vec<String>>,
    args: &ShadowArgs,
) -> anyhow::Result<(LoadResult, LoadResult, LoadResult)> {
    // What each device's long-poll last received, and when, for the operator waiting on it.
    let deliveries: Arc<Vec<watch::Sender<(u64, Instant)>>> = Arc::new(
        (0..args.devices)
            .map(|_| watch::channel((0, Instant::now())).0)
            .collect(),
    );
    let pollers = Pollers::start(base, credentials, &deliveries)?;
    // Let every long-poll reach the server and start waiting before the first set.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let anchor = healthz_load(http, base, args.operators, args.seconds).await;

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let missed = Arc::new(AtomicU64::new(0));
    let sets = {
        let (http, base, ids) = (http.clone(), base.to_owned(), ids.clone());
        let (acknowledged, delivered, missed) =
            (acknowledged.clone(), delivered.clone(), missed.clone());
        let (operators, n_devices) = (args.operators, args.devices);
        load(args.operators, args.seconds, move |worker, n| {
            let (http, base, ids, deliveries) =
                (http.clone(), base.clone(), ids.clone(), deliveries.clone());
            let (acknowledged, delivered, missed) =
                (acknowledged.clone(), delivered.clone(), missed.clone());
            async move {
                // Operator `worker` owns devices worker, worker + operators, …: one set at a time
                // per device, so each delta answers exactly one set.
                let owned = (n_devices - worker).div_ceil(operators);
                let device_idx = worker + (n as usize % owned) * operators;
                let mut received = deliveries[device_idx].subscribe();
                let sent = Instant::now();
                let response = http
                    .patch(format!("{base}/api/v1/devices/{}/shadow", ids[device_idx]))
                    .bearer_auth(BENCH_TOKEN)
                    // `n` only grows for this device, so every set changes the desired state.
                    .json(&json!({ "state": { "desired": { "setpoint_c": 18 + n, "led": n % 2 == 0 } } }))
                    .send()
                    .await?;
                let status = response.status();
                ensure!(status.is_success(), "{status}: {}", response.text().await?);
                let view: ShadowView = response.json().await?;
                lock(&acknowledged).push(sent.elapsed());
                let delta = received.wait_for(|(version, _)| *version >= view.version);
                match tokio::time::timeout(DELTA_TIMEOUT, delta).await {
                    Ok(Ok(delivery)) => {
                        let at = delivery.1;
                        lock(&delivered).push(at.saturating_duration_since(sent));
                    }
                    _ => {
                        missed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(1)
            }
        })
        .await
    };
    let poll_errors = pollers.stop();

    let result = |samples: &Mutex<Vec<Duration>>, errors: u64| {
        let mut latencies = std::mem::take(&mut *lock(samples));
        latencies.sort();
        LoadResult {
            requests: latencies.len() as u64,
            items: latencies.len() as u64,
            errors,
            elapsed: sets.elapsed,
            latencies,
        }
    };
    let acknowledged = result(&acknowledged, sets.errors);
    let delivered = result(&delivered, missed.load(Ordering::Relaxed) + poll_errors);
    Ok((anchor, acknowledged, delivered))
}

/// The long-polls of every device, until stopped.
struct Pollers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Failed polls (anything but 200 or 204), which retry after a pause.
    errors: Arc<AtomicU64>,
}

impl Pollers {
    /// Starts one long-poll loop per device, each on a connection of its own.
    fn start(
        base: &str,
        credentials: &Arc<Vec<String>>,
        deliveries: &Arc<Vec<watch::Sender<(u64, Instant)>>>,
    ) -> anyhow::Result<Pollers> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(credentials.len())
            .build()?;
        let errors = Arc::new(AtomicU64::new(0));
        let url = format!("{base}/api/device/v1/shadow/delta");
        let tasks = (0..credentials.len())
            .map(|device_idx| {
                let (http, url, errors) = (http.clone(), url.clone(), errors.clone());
                let (credentials, deliveries) = (credentials.clone(), deliveries.clone());
                tokio::spawn(async move {
                    let mut since = 0u64;
                    loop {
                        match poll_delta(&http, &url, &credentials[device_idx], since).await {
                            Ok(Some(delta)) => {
                                since = delta.version;
                                deliveries[device_idx]
                                    .send_replace((delta.version, Instant::now()));
                            }
                            Ok(None) => {}
                            Err(_) => {
                                errors.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(Pollers { tasks, errors })
    }

    /// Ends every long-poll; returns how many polls failed.
    fn stop(self) -> u64 {
        for task in &self.tasks {
            task.abort();
        }
        self.errors.load(Ordering::Relaxed)
    }
}

/// One delta long-poll: the delta newer than `since`, or `None` when the wait ran out.
async fn poll_delta(
    http: &reqwest::Client,
    url: &str,
    credential: &str,
    since: u64,
) -> anyhow::Result<Option<ShadowDelta>> {
    let response = http
        .get(url)
        .query(&[("version", since), ("wait", LONG_POLL_WAIT_SECS)])
        .bearer_auth(credential)
        .send()
        .await?;
    match response.status() {
        StatusCode::OK => Ok(Some(response.json().await?)),
        StatusCode::NO_CONTENT => Ok(None),
        status => bail!("{status}: {}", response.text().await?),
    }
}

/// One check-in; fails unless the answer is the offer of `deployment`, or `204` when `None`.
async fn check_in(
    http: &reqwest::Client,
    url: &str,
    credential: &str,
    deployment: Option<DeploymentId>,
) -> anyhow::Result<u64> {
    let response = http.get(url).bearer_auth(credential).send().await?;
    match (response.status(), deployment) {
        (StatusCode::OK, Some(deployment)) => {
            let offer: UpdateOffer = response.json().await?;
            ensure!(
                offer.deployment == deployment,
                "offered deployment {}, expected {deployment}",
                offer.deployment
            );
            Ok(1)
        }
        (StatusCode::NO_CONTENT, None) => {
            response.bytes().await?;
            Ok(0)
        }
        (status, _) => bail!("{status}: {}", response.text().await?),
    }
}

/// One state report from a device, with five values as a device's periodic report has.
async fn report_state(
    http: &reqwest::Client,
    url: &str,
    credential: &str,
    uptime: u64,
) -> anyhow::Result<u64> {
    let response = http
        .post(url)
        .bearer_auth(credential)
        .json(&json!({ "state": { "reported": {
            "firmware": "2.3.0", "uptime_s": 3600 + uptime, "temp_c": 20 + uptime % 7,
            "rssi_dbm": -60 - (uptime % 20) as i64, "config": { "interval_s": 60, "mode": "eco" }
        } } }))
        .send()
        .await?;
    let status = response.status();
    ensure!(status.is_success(), "{status}: {}", response.text().await?);
    let accepted: ShadowAccepted = response.json().await?;
    ensure!(
        accepted.state.reported.is_some(),
        "the report changed nothing"
    );
    Ok(1)
}

/// Starts the server in this process on a free port with MQTT off, as `heartbeats` does.
async fn start_server(dir: &TempDir, store: Option<&str>) -> anyhow::Result<RunningServer> {
    let mut config = ServerConfig::with_data_dir(&dir.path);
    config.listen = "127.0.0.1:0".parse()?;
    config.mqtt = drover_server::mqtt::MqttConfig::Off;
    config.admin_token = Some(BENCH_TOKEN.into());
    if let Some(store) = store {
        config.store_url = store.to_owned();
    }
    drover_server::start(config, std::future::pending()).await
}

/// The anchor: the same server, client and connections answering `/healthz` (no authentication,
/// no database).
async fn healthz_load(
    http: &reqwest::Client,
    base: &str,
    connections: usize,
    seconds: u64,
) -> LoadResult {
    let (http, url) = (http.clone(), format!("{base}/healthz"));
    load(connections, seconds, move |_, _| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http.get(url).send().await?;
            ensure!(response.status().is_success(), "{}", response.status());
            response.bytes().await?;
            Ok(1)
        }
    })
    .await
}

/// Uploads a 64 KiB image as artifact `bench-fw` 2.4.0 for the enrolled devices (type `sensor`,
/// firmware 2.3.0).
async fn upload_artifact(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let metadata = json!({ "name": "bench-fw", "version": "2.4.0", "device_types": ["sensor"] });
    let image: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let image = reqwest::multipart::Part::bytes(image).file_name("firmware.img");
    crate::bench::upload_artifact(http, base, BENCH_TOKEN, &metadata, image).await?;
    Ok(())
}

/// Deploys `bench-fw` 2.4.0 to every device through the admin API, 64 at a time; returns the
/// deployment of each device, in the order of `devices`.
async fn deploy_to_all(
    http: &reqwest::Client,
    base: &str,
    devices: &[(String, String)],
) -> anyhow::Result<Vec<DeploymentId>> {
    let mut deployments = Vec::with_capacity(devices.len());
    for chunk in devices.chunks(64) {
        let requests = chunk.iter().map(|(id, _)| async move {
            let response = http
                .post(format!("{base}/api/v1/devices/{id}/deployments"))
                .bearer_auth(BENCH_TOKEN)
                .json(&json!({ "artifact": "bench-fw", "version": "2.4.0" }))
                .send()
                .await?;
            let status = response.status();
            let body: Value = response.json().await?;
            ensure!(
                status.is_success(),
                "cannot deploy to {id}: {status} {body}"
            );
            let id = body["id"].as_i64().context("no id in the deployment")?;
            Ok::<_, anyhow::Error>(DeploymentId(id))
        });
        for deployment in futures::future::join_all(requests).await {
            deployments.push(deployment?);
        }
    }
    Ok(deployments)
}

/// A line of the results table.
struct Row<'a> {
    name: String,
    result: &'a LoadResult,
    /// What its requests/s is compared with: the anchor measured at the same concurrency (itself
    /// for an anchor row).
    anchor: &'a LoadResult,
}

/// Prints the machine and the table.
fn print_table(rows: &[Row]) {
    let rate = |r: &LoadResult| r.requests as f64 / r.elapsed.as_secs_f64();
    println!();
    println!("**Machine:** {}", crate::bench_download::machine_line());
    println!();
    println!(
        "| measurement | requests/s | p50 ms | p99 ms | errors | ratio to anchor (requests/s) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {:.2} |",
            row.name,
            rate(row.result),
            ms(row.result.percentile(0.50)),
            ms(row.result.percentile(0.99)),
            row.result.errors,
            rate(row.result) / rate(row.anchor)
        );
    }
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Locks a sample list; a worker that panicked while holding it left it intact.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
