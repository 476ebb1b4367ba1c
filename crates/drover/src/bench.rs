//! `drover bench`: reproducible benchmarks of a real server on a fresh store, each beside an anchor
//! measured in the same run. `registry` imports a synthetic fleet over HTTP and times fleet queries,
//! counts and dynamic-group counts (anchor: a plain full-table count); `heartbeats` drives durable
//! heartbeat ingest over HTTP (anchor: the same server answering `/healthz`); `mqtt` and
//! `mqtt-idle` (in `bench_mqtt`) the MQTT device API; `checkins` and `shadow` (in `bench_device`)
//! update check-ins and device shadows over HTTP (anchor: `/healthz` again); `dashboard` (in
//! `bench_dashboard`) the fleet overview and versions views (anchor: `/healthz`).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use drover_server::ServerConfig;
use drover_store::testing::TempDir;
use serde_json::Value;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Devices asking for their next update over HTTP, with or without one pending (anchor: `/healthz`).
    Checkins(crate::bench_device::CheckinArgs),
    /// The dashboard's fleet overview and versions views on a large fleet, and what maintaining
    /// their rollups costs writers (anchor: `/healthz`).
    Dashboard(crate::bench_dashboard::DashboardArgs),
    /// Binary delta size, generation and apply time and apply memory (anchors: bsdiff, zstd --patch-from).
    Delta(crate::bench_delta::DeltaArgs),
    /// Artifact download throughput over loopback, whole and resumed (anchor: nginx serving the same file).
    Download(crate::bench_download::DownloadArgs),
    /// Import a synthetic fleet and time queries, counts and dynamic groups.
    Registry(RegistryArgs),
    /// Drive heartbeats over HTTP (single or batched) and measure durable throughput and latency.
    Heartbeats(HeartbeatArgs),
    /// Drive QoS 1 heartbeats over MQTT into the embedded broker (anchor: Mosquitto relaying).
    Mqtt(crate::bench_mqtt::MqttArgs),
    /// Memory per idle MQTT connection of a `drover serve` process (anchor: Mosquitto).
    MqttIdle(crate::bench_mqtt::IdleArgs),
    /// Shadow state reports, and desired state reaching long-polling devices (anchor: `/healthz`).
    Shadow(crate::bench_device::ShadowArgs),
    /// Rollout creation and planning, dispatch rate and orchestrator cost per tick by fleet size.
    RolloutScale(crate::bench_rollout_scale::ScaleArgs),
    /// Monte Carlo of many rollouts of good and bad releases through the real orchestrator:
    /// blast radius, detection time and false-pause rate.
    RolloutSafety(crate::bench_rollout_safety::SafetyArgs),
}

#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    /// Devices sending heartbeats (each with its own credential).
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Heartbeats per request: 1 uses `/heartbeat`, more uses `/heartbeats`.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Store URL (default: SQLite in a temporary directory).
    #[arg(long)]
    pub store: Option<String>,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Fleet size.
    #[arg(long, default_value_t = 1_000_000)]
    pub devices: u64,
    /// Store URL (default: SQLite in a temporary directory). For PostgreSQL use an empty database
    /// or schema, e.g. postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3Dbench.
    #[arg(long)]
    pub store: Option<String>,
    /// Timed repetitions of each query (the median and 95th percentile are reported).
    #[arg(long, default_value_t = 21)]
    pub runs: usize,
    /// Seed of the synthetic fleet.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// The query from the registry issue: selective on tags, semantic version, hardware revision,
/// recency and a negated glob.
pub const EXAMPLE_QUERY: &str = r#"tags.env = prod AND firmware < 2.3.0 AND hw_rev IN (rev2, "rev2.1") AND last_seen < now-10m AND NOT site ~ "berlin-*""#;

pub(crate) const BENCH_TOKEN: &str = "drv_bench_admin_token_0000000000";

/// Uploads `image` as the artifact `metadata` describes (`POST /api/v1/artifacts`, multipart) with
/// the operator `token`; returns the artifact view, or an error with the server's answer.
pub(crate) async fn upload_artifact(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    metadata: &Value,
    image: reqwest::multipart::Part,
) -> anyhow::Result<Value> {
    let form = reqwest::multipart::Form::new()
        .part(
            "metadata",
            reqwest::multipart::Part::text(metadata.to_string()).mime_str("application/json")?,
        )
        .part("image", image);
    let response = http
        .post(format!("{base}/api/v1/artifacts"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .context("POST /api/v1/artifacts")?;
    let status = response.status();
    let text = response
        .text()
        .await
        .context("reading the upload's answer")?;
    if !status.is_success() {
        bail!("upload failed: {status} {text}");
    }
    serde_json::from_str(&text).context("the upload's answer is not JSON")
}

pub async fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Registry(args) => registry(args).await,
        BenchCommand::Heartbeats(args) => heartbeats(args).await,
        BenchCommand::Mqtt(args) => crate::bench_mqtt::mqtt(args).await,
        BenchCommand::MqttIdle(args) => crate::bench_mqtt::idle(args).await,
        BenchCommand::Delta(args) => crate::bench_delta::run(args).await,
        BenchCommand::Download(args) => crate::bench_download::run(args).await,
        BenchCommand::Checkins(args) => crate::bench_device::checkins(args).await,
        BenchCommand::Shadow(args) => crate::bench_device::shadow(args).await,
        BenchCommand::Dashboard(args) => crate::bench_dashboard::run(args).await,
        BenchCommand::RolloutScale(args) => crate::bench_rollout_scale::run(args).await,
        BenchCommand::RolloutSafety(args) => crate::bench_rollout_safety::run(args).await,
    }
}

async fn registry(args: RegistryArgs) -> anyhow::Result<()> {
    let dir = TempDir::new();
    let mut config = ServerConfig::with_data_dir(&dir.path);
    config.listen = "127.0.0.1:0".parse()?;
    config.mqtt = drover_server::mqtt::MqttConfig::Off;
    config.admin_token = Some(BENCH_TOKEN.into());
    if let Some(store) = &args.store {
        config.store_url = store.clone();
    }
    let server = drover_server::start(config, std::future::pending()).await?;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;
    let n_existing = count(&http, &base, "").await?;
    if n_existing != 0 {
        bail!("the store already holds {n_existing} devices; benchmark on an empty store");
    }
    println!(
        "# drover bench registry: {} devices on {}",
        args.devices,
        server.store.backend_name()
    );

    let started = Instant::now();
    let fleet = Fleet {
        seed: args.seed,
        n: args.devices,
        now_ms: drover_server::now().as_millis(),
        types: TYPES,
    };
    let result = import_fleet(&http, &base, fleet).await?;
    let import_time = started.elapsed();
    println!(
        "import: {} devices in {:.1} s ({:.0} devices/s)",
        result["created"],
        import_time.as_secs_f64(),
        args.devices as f64 / import_time.as_secs_f64()
    );

    let mut rows = Vec::new();
    let anchor = time(args.runs, || count(&http, &base, "")).await?;
    rows.push((
        "anchor: count all devices (full scan)".to_owned(),
        anchor.0,
        anchor.1,
        anchor.2,
    ));
    let first_page = time(args.runs, || page(&http, &base, EXAMPLE_QUERY)).await?;
    rows.push((
        "example query, first page of 100".to_owned(),
        first_page.0,
        first_page.1,
        first_page.2,
    ));
    let counted = time(args.runs, || count(&http, &base, EXAMPLE_QUERY)).await?;
    rows.push((
        "example query, count".to_owned(),
        counted.0,
        counted.1,
        counted.2,
    ));
    for (name, query) in [
        ("canary-candidates", EXAMPLE_QUERY),
        ("eu-active", "region = eu-central AND status = active"),
        ("old-rev1", "hw_rev = rev1 AND firmware < 2.2.0"),
    ] {
        let response = http
            .post(format!("{base}/api/v1/groups"))
            .bearer_auth(BENCH_TOKEN)
            .json(&serde_json::json!({ "name": name, "query": query }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("cannot create group {name}: {}", response.text().await?);
        }
        let timed = time(args.runs, || group_count(&http, &base, name)).await?;
        rows.push((
            format!("dynamic group `{query}` member count"),
            timed.0,
            timed.1,
            timed.2,
        ));
    }
    println!();
    println!("| measurement | median ms | p95 ms | result | ratio to anchor |");
    println!("|---|---:|---:|---:|---:|");
    for (name, median, p95, result) in &rows {
        println!(
            "| {name} | {:.1} | {:.1} | {result} | {:.2} |",
            ms(*median),
            ms(*p95),
            median.as_secs_f64() / anchor.0.as_secs_f64()
        );
    }
    server.shutdown().await?;
    Ok(())
}

/// What one load run achieved.
pub(crate) struct LoadResult {
    pub(crate) requests: u64,
    pub(crate) items: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    /// Sorted.
    pub(crate) latencies: Vec<Duration>,
}

impl LoadResult {
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let idx = ((self.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        self.latencies[idx.min(self.latencies.len() - 1)]
    }
}

/// Runs `connections` workers for `seconds`, each calling `request(worker, n)` in a loop; the
/// request returns how many items it carried.
pub(crate) async fn load<F, Fut>(connections: usize, seconds: u64, request: F) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let request = std::sync::Arc::new(request);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = Vec::with_capacity(connections);
    for worker in 0..connections {
        let request = request.clone();
        workers.push(tokio::spawn(async move {
            let (mut requests, mut items, mut errors, mut latencies) =
                (0u64, 0u64, 0u64, Vec::new());
            let mut n = 0u64;
            while Instant::now() < deadline {
                let sent = Instant::now();
                match request(worker, n).await {
                    Ok(carried) => {
                        latencies.push(sent.elapsed());
                        requests += 1;
                        items += carried;
                    }
                    Err(_) => errors += 1,
                }
                n += 1;
            }
            (requests, items, errors, latencies)
        }));
    }
    let mut result = LoadResult {
        requests: 0,
        items: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for worker in workers {
        if let Ok((requests, items, errors, latencies)) = worker.await {
            result.requests += requests;
            result.items += items;
            result.errors += errors;
            result.latencies.extend(latencies);
        }
    }
    result.elapsed = started.elapsed();
    result.latencies.sort();
    result
}

async fn heartbeats(args: HeartbeatArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.batch > 1000 || args.devices == 0 || args.connections == 0 {
        bail!("--devices and --connections must be positive and --batch between 1 and 1000");
    }
    let dir = TempDir::new();
    let mut config = ServerConfig::with_data_dir(&dir.path);
    config.listen = "127.0.0.1:0".parse()?;
    config.mqtt = drover_server::mqtt::MqttConfig::Off;
    config.admin_token = Some(BENCH_TOKEN.into());
    if let Some(store) = &args.store {
        config.store_url = store.clone();
    }
    let server = drover_server::start(config, std::future::pending()).await?;
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    println!(
        "# drover bench heartbeats: {} devices, {} connections, {} heartbeat(s) per request, {} s, on {}",
        args.devices,
        args.connections,
        args.batch,
        args.seconds,
        server.store.backend_name()
    );

    let credentials: Vec<String> = enrol(&base, "hb", args.devices)
        .await?
        .into_iter()
        .map(|(_, credential)| credential)
        .collect();
    let credentials = std::sync::Arc::new(credentials);

    // Anchor: the same server, clients and connections answering /healthz (no auth, no database).
    let anchor = {
        let (http, url) = (http.clone(), format!("{base}/healthz"));
        load(args.connections, args.seconds, move |_, _| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let response = http.get(url).send().await?;
                anyhow::ensure!(response.status().is_success(), "{}", response.status());
                response.bytes().await?;
                Ok(1)
            }
        })
        .await
    };

    let batch = args.batch;
    let measured = {
        let (http, base, credentials) = (http.clone(), base.clone(), credentials.clone());
        load(args.connections, args.seconds, move |worker, n| {
            let (http, base, credentials) = (http.clone(), base.clone(), credentials.clone());
            async move {
                let device = (worker + n as usize * 7919) % credentials.len();
                let heartbeat = |i: u64| {
                    serde_json::json!({ "metrics": {
                        "battery_v": 3.6 + (i % 10) as f64 / 100.0, "temp_c": 20.0 + (i % 7) as f64,
                        "rssi_dbm": -60.0 - (i % 20) as f64, "uptime_s": 3600 + i, "cpu_pct": 12.5
                    } })
                };
                let request = if batch == 1 {
                    http.post(format!("{base}/api/device/v1/heartbeat"))
                        .json(&heartbeat(n))
                } else {
                    let heartbeats: Vec<Value> =
                        (0..batch as u64).map(|i| heartbeat(n * 1000 + i)).collect();
                    http.post(format!("{base}/api/device/v1/heartbeats"))
                        .json(&serde_json::json!({ "heartbeats": heartbeats }))
                };
                let response = request.bearer_auth(&credentials[device]).send().await?;
                anyhow::ensure!(response.status().is_success(), "{}", response.status());
                let ack: Value = response.json().await?;
                Ok(ack["accepted"].as_u64().unwrap_or(0))
            }
        })
        .await
    };

    println!();
    println!("| measurement | requests/s | heartbeats/s | p50 ms | p99 ms | errors | ratio to anchor (requests/s) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let rate = |r: &LoadResult, n: u64| n as f64 / r.elapsed.as_secs_f64();
    let anchor_rps = rate(&anchor, anchor.requests);
    for (name, result) in [
        ("anchor: GET /healthz", &anchor),
        ("heartbeats (durable)", &measured),
    ] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.2} | {} | {:.2} |",
            rate(result, result.requests),
            if std::ptr::eq(result, &anchor) {
                0.0
            } else {
                rate(result, result.items)
            },
            ms(result.percentile(0.50)),
            ms(result.percentile(0.99)),
            result.errors,
            rate(result, result.requests) / anchor_rps
        );
    }
    server.shutdown().await?;
    Ok(())
}

/// Registers `n` active devices with credentials through the admin API.
pub(crate) async fn enrol(
    base: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<(String, String)>> {
    let http = reqwest::Client::new();
    let mut devices = Vec::with_capacity(n);
    for chunk_start in (0..n).step_by(64) {
        let requests = (chunk_start..(chunk_start + 64).min(n)).map(|idx| {
            let (http, base) = (http.clone(), base.to_owned());
            let id = format!("{prefix}-{idx:06}");
            async move {
                let response = http
                    .post(format!("{base}/api/v1/devices"))
                    .bearer_auth(BENCH_TOKEN)
                    .json(&serde_json::json!({ "id": id, "device_type": "sensor", "firmware": "2.3.0", "issue_credential": true }))
                    .send()
                    .await?;
                let body: Value = response.json().await?;
                let credential = body["credential"].as_str().context("no credential in response")?;
                Ok::<_, anyhow::Error>((id, credential.to_owned()))
            }
        });
        for device in futures::future::join_all(requests).await {
            devices.push(device?);
        }
    }
    Ok(devices)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `op` `runs` times (after one warm-up); returns median, 95th percentile and the last result.
async fn time<F, Fut>(runs: usize, mut op: F) -> anyhow::Result<(Duration, Duration, u64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let mut result = op().await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        result = op().await?;
        times.push(started.elapsed());
    }
    times.sort();
    let median = times[times.len() / 2];
    let p95 = times[((times.len() as f64 * 0.95).ceil() as usize)
        .saturating_sub(1)
        .min(times.len() - 1)];
    Ok((median, p95, result))
}

async fn get(http: &reqwest::Client, url: String, query: &[(&str, &str)]) -> anyhow::Result<Value> {
    let response = http
        .get(url)
        .bearer_auth(BENCH_TOKEN)
        .query(query)
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await.context("response is not JSON")?;
    if !status.is_success() {
        bail!("{status}: {body}");
    }
    Ok(body)
}

async fn count(http: &reqwest::Client, base: &str, q: &str) -> anyhow::Result<u64> {
    let body = get(http, format!("{base}/api/v1/devices/count"), &[("q", q)]).await?;
    Ok(body["count"].as_u64().unwrap_or_default())
}

async fn page(http: &reqwest::Client, base: &str, q: &str) -> anyhow::Result<u64> {
    let body = get(
        http,
        format!("{base}/api/v1/devices"),
        &[("q", q), ("limit", "100")],
    )
    .await?;
    Ok(body["items"].as_array().map_or(0, |a| a.len() as u64))
}

async fn group_count(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<u64> {
    let body = get(http, format!("{base}/api/v1/groups/{name}"), &[]).await?;
    Ok(body["member_count"].as_u64().unwrap_or_default())
}

/// Imports `fleet` through `POST /api/v1/devices/import` as JSON lines streamed in chunks of
/// 10,000 devices; returns the import result (`created`, `updated`, `skipped`).
pub(crate) async fn import_fleet(
    http: &reqwest::Client,
    base: &str,
    fleet: Fleet,
) -> anyhow::Result<Value> {
    let body = reqwest::Body::wrap_stream(futures::stream::iter((0..fleet.n).step_by(10_000).map(
        move |from| Ok::<_, std::io::Error>(fleet.chunk(from, (from + 10_000).min(fleet.n))),
    )));
    let response = http
        .post(format!("{base}/api/v1/devices/import"))
        .bearer_auth(BENCH_TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("import failed: {status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// A deterministic synthetic fleet with realistic skew: most devices in production, a long tail of
/// firmware versions, a few percent offline, sites spread over regions.
#[derive(Clone, Copy)]
pub(crate) struct Fleet {
    pub(crate) seed: u64,
    pub(crate) n: u64,
    pub(crate) now_ms: i64,
    /// Device types and their weights (the registry mix by default).
    pub(crate) types: &'static [(&'static str, u64)],
}

const TYPES: &[(&str, u64)] = &[
    ("thermostat", 50),
    ("gateway", 10),
    ("meter", 30),
    ("camera", 10),
];
const HW_REVS: &[(&str, u64)] = &[("rev1", 20), ("rev2", 30), ("rev2.1", 15), ("rev3", 35)];
const FIRMWARE: &[(&str, u64)] = &[
    ("2.0.0", 3),
    ("2.1.0", 5),
    ("2.1.1", 7),
    ("2.2.0", 15),
    ("2.2.3", 20),
    ("2.3.0", 20),
    ("2.3.1", 15),
    ("2.10.0", 10),
    ("3.0.0-rc.1", 5),
];
const ENVS: &[(&str, u64)] = &[("prod", 70), ("staging", 20), ("dev", 10)];
const STATUSES: &[(&str, u64)] = &[
    ("active", 92),
    ("inactive", 5),
    ("error", 2),
    ("provisioning", 1),
];
const CITIES: &[(&str, &str)] = &[
    ("berlin", "eu-central"),
    ("munich", "eu-central"),
    ("paris", "eu-west"),
    ("lyon", "eu-west"),
    ("madrid", "eu-west"),
    ("austin", "us-central"),
    ("denver", "us-central"),
    ("tokyo", "ap-northeast"),
    ("osaka", "ap-northeast"),
    ("sydney", "ap-southeast"),
];

impl Fleet {
    /// JSON lines for devices `from..to`.
    pub(crate) fn chunk(&self, from: u64, to: u64) -> String {
        let mut out = String::with_capacity(((to - from) * 330) as usize);
        for idx in from..to {
            let mut rng = SplitMix(self.seed ^ idx.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (city, region) = CITIES[rng.below(CITIES.len() as u64) as usize];
            let site = format!("{city}-{}", rng.below(20));
            // 8 % of devices have been offline for 10 minutes to 30 days; the rest reported within
            // the last 5 minutes.
            let ago_ms = if rng.below(100) < 8 {
                600_000 + rng.below(30 * 86_400_000) as i64
            } else {
                rng.below(300_000) as i64
            };
            let last_seen = drover_core::Timestamp::from_millis(self.now_ms - ago_ms);
            let line = serde_json::json!({
                "id": format!("dev-{idx:07}"),
                "device_type": rng.pick(self.types),
                "hw_id": format!("SN-{idx:08}"),
                "hw_rev": rng.pick(HW_REVS),
                "site": site,
                "region": region,
                "status": rng.pick(STATUSES),
                "firmware": rng.pick(FIRMWARE),
                "last_seen": last_seen,
                "tags": { "env": rng.pick(ENVS), "customer": format!("c{:02}", rng.below(50)) },
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
        out
    }
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick(&mut self, weighted: &[(&'static str, u64)]) -> &'static str {
        let total: u64 = weighted.iter().map(|(_, w)| w).sum();
        let mut roll = self.below(total);
        for (value, weight) in weighted {
            if roll < *weight {
                return value;
            }
            roll -= weight;
        }
        weighted[0].0
    }
}
