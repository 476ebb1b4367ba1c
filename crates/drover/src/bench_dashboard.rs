//! `drover bench dashboard`: what the dashboard's fleet views cost at fleet scale, and what keeping
//! their rollups costs writers.
//!
//! It imports the registry benchmark's synthetic fleet (nine firmware versions, five regions, mixed
//! statuses) over HTTP, gives it mixed connectivity through the store's heartbeat ingest (online,
//! degraded, and silent devices the offline sweep marks offline), runs rollup ticks, then times
//! `GET /api/v1/fleet/overview` and `GET /api/v1/fleet/versions` against the same server answering
//! `GET /healthz` (the anchor, measured in the same run). Writers' side: the import rate, heartbeats
//! that change connectivity (the update trigger fires) against the same heartbeats repeated (it
//! does not), and the offline sweep.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use drover_core::health::MetricName;
use drover_core::{DeviceId, Timestamp};
use drover_proto::device_api::Heartbeat;
use drover_server::ServerConfig;
use drover_store::testing::TempDir;
use drover_store::{HeartbeatRecord, IngestOptions, Store};
use serde_json::Value;

use crate::bench::{ms, Fleet, BENCH_TOKEN};

#[derive(Debug, Args)]
pub struct DashboardArgs {
    /// Fleet size.
    #[arg(long, default_value_t = 1_000_000)]
    pub devices: u64,
    /// Store URL (default: SQLite in a temporary directory). For PostgreSQL use an empty database
    /// or schema, e.g. postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3Dbench.
    #[arg(long, alias = "postgres")]
    pub store: Option<String>,
    /// Timed requests per endpoint (the median and 95th percentile are reported).
    #[arg(long, default_value_t = 50)]
    pub requests: usize,
    /// Seed of the synthetic fleet.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

const TYPES: &[(&str, u64)] = &[("meter", 1)];

/// Heartbeats per ingest transaction (the server's group commit writes batches of this order).
const BATCH: usize = 1000;

pub async fn run(args: DashboardArgs) -> anyhow::Result<()> {
    let dir = TempDir::new();
    let mut config = ServerConfig::with_data_dir(&dir.path);
    config.listen = "127.0.0.1:0".parse()?;
    config.mqtt = drover_server::mqtt::MqttConfig::Off;
    config.admin_token = Some(BENCH_TOKEN.into());
    // Background loops stay out of the way: this benchmark ticks and sweeps by hand.
    config.rollout_tick = Duration::from_secs(24 * 3600);
    config.rollup_interval = Duration::from_secs(24 * 3600);
    config.offline_check = Duration::from_secs(24 * 3600);
    if let Some(store) = &args.store {
        config.store_url = store.clone();
    }
    let server = drover_server::start(config, std::future::pending()).await?;
    let base = format!("http://{}", server.addr);
    let store = server.store.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;
    println!(
        "# drover bench dashboard: {} devices on {}; {}",
        args.devices,
        store.backend_name(),
        crate::bench_download::machine_line()
    );

    // ---- the fleet ----
    let started = Instant::now();
    let fleet = Fleet {
        seed: args.seed,
        n: args.devices,
        now_ms: drover_server::now().as_millis(),
        types: TYPES,
    };
    let n = args.devices;
    crate::bench::import_fleet(&http, &base, fleet).await?;
    let import = started.elapsed();
    store.analyze().await?;
    let (first_tick, folded) = tick(&store).await?;
    println!(
        "import: {:.1} s ({:.0} devices/s); first rollup tick {:.0} ms ({folded} deltas folded; the server's own tick, woken by the import, may have folded some first)",
        import.as_secs_f64(),
        n as f64 / import.as_secs_f64(),
        ms(first_tick)
    );

    // ---- mixed connectivity: 5 % silent (offline after the sweep), 5 % degraded, 30 % online ----
    let now = drover_server::now();
    let long_ago = Timestamp::from_millis(now.as_millis() - 3_600_000);
    let mut silent = Vec::new();
    let mut degraded = Vec::new();
    let mut online = Vec::new();
    for idx in 0..n {
        match idx % 20 {
            0 => silent.push(idx),
            1 => degraded.push(idx),
            2..=7 => online.push(idx),
            _ => {}
        }
    }
    let changed_started = Instant::now();
    ingest(&store, &silent, long_ago, None).await?;
    ingest(&store, &degraded, now, Some(-120.0)).await?;
    ingest(&store, &online, now, None).await?;
    let changed = changed_started.elapsed();
    let n_changed = silent.len() + degraded.len() + online.len();
    let repeat_started = Instant::now();
    ingest(&store, &online, now, None).await?;
    let repeated = repeat_started.elapsed();
    let sweep_started = Instant::now();
    let mut n_offline = 0;
    loop {
        let ids = store.mark_offline(now, 1000).await?;
        n_offline += ids.len();
        if ids.len() < 1000 {
            break;
        }
    }
    let sweep = sweep_started.elapsed();
    println!(
        "heartbeats changing connectivity (update trigger fires): {n_changed} in {:.1} s ({:.0}/s)",
        changed.as_secs_f64(),
        n_changed as f64 / changed.as_secs_f64()
    );
    println!(
        "the same online heartbeats again (no counted column changes): {} in {:.1} s ({:.0}/s)",
        online.len(),
        repeated.as_secs_f64(),
        online.len() as f64 / repeated.as_secs_f64()
    );
    println!(
        "offline sweep: {n_offline} devices in {:.1} s ({:.0}/s)",
        sweep.as_secs_f64(),
        n_offline as f64 / sweep.as_secs_f64()
    );
    let mut tick_times = Vec::new();
    for _ in 0..3 {
        let (took, folded) = tick(&store).await?;
        tick_times.push(format!("{:.1} ms ({folded} deltas)", ms(took)));
    }
    println!("rollup ticks: {}", tick_times.join(", "));

    // ---- the reads ----
    let overview = get(&http, &base, "/api/v1/fleet/overview").await?;
    let versions = get(&http, &base, "/api/v1/fleet/versions").await?;
    let by_connectivity = &overview["devices"]["by_connectivity"];
    println!(
        "overview: total {}, accepted by connectivity {by_connectivity}; versions: {} accepted, {} versions, {} regions, {} warnings",
        overview["devices"]["total"],
        versions["total"],
        versions["versions"].as_array().map_or(0, Vec::len),
        versions["regions"].as_array().map_or(0, Vec::len),
        versions["warnings"].as_array().map_or(0, Vec::len),
    );
    let paths = [
        ("anchor: `GET /healthz`", "/healthz"),
        ("`GET /api/v1/fleet/overview`", "/api/v1/fleet/overview"),
        (
            "`GET /api/v1/fleet/versions` (7d)",
            "/api/v1/fleet/versions",
        ),
        (
            "`GET /api/v1/fleet/versions?window=90d`",
            "/api/v1/fleet/versions?window=90d",
        ),
    ];
    let mut rows = Vec::new();
    for (name, path) in paths {
        rows.push((name, timed(&http, &base, path, args.requests).await?));
    }
    let anchor = rows[0].1 .0;
    println!();
    println!(
        "| measurement ({} devices, {}) | median ms | p95 ms | ratio to anchor |",
        n,
        store.backend_name()
    );
    println!("|---|---:|---:|---:|");
    for (name, (median, p95)) in &rows {
        println!(
            "| {name} | {:.2} | {:.2} | {:.1} |",
            ms(*median),
            ms(*p95),
            median.as_secs_f64() / anchor.as_secs_f64()
        );
    }
    server.shutdown().await?;
    Ok(())
}

/// One rollup tick; its wall time and how many deltas it folded. The server's own tick, which an
/// import wakes, may be running at the same moment: on SQLite this tick then waits for it (and
/// finds less to fold), on PostgreSQL it is skipped and retried, the wait included in the time.
async fn tick(store: &Store) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    loop {
        let now = drover_server::now();
        match store
            .fleet_rollup_tick(now, Timestamp::from_millis(0))
            .await?
        {
            Some(outcome) => return Ok((started.elapsed(), outcome.folded)),
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Heartbeats from devices `indexes` received at `at`, with a poor link when `rssi` is given.
async fn ingest(
    store: &Store,
    indexes: &[u64],
    at: Timestamp,
    rssi: Option<f64>,
) -> anyhow::Result<()> {
    let rssi_name = MetricName::parse("rssi_dbm").map_err(|e| anyhow::anyhow!("{e}"))?;
    for chunk in indexes.chunks(BATCH) {
        let records = chunk
            .iter()
            .map(|idx| {
                Ok(HeartbeatRecord {
                    device: DeviceId::parse(&format!("dev-{idx:07}"))
                        .map_err(|e| anyhow::anyhow!("{e}"))?,
                    received_at: at,
                    heartbeat: Heartbeat {
                        sent_at: None,
                        firmware: None,
                        interval_s: None,
                        boot_slot: None,
                        metrics: rssi.map(|r| (rssi_name.clone(), r)).into_iter().collect(),
                    },
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        store
            .record_heartbeats(records, IngestOptions::default())
            .await?;
    }
    Ok(())
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> anyhow::Result<Value> {
    let response = http
        .get(format!("{base}{path}"))
        .bearer_auth(BENCH_TOKEN)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    if !status.is_success() {
        bail!("GET {path}: {status} {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Median and 95th percentile of `runs` sequential GETs (after one warm-up), body read.
async fn timed(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    runs: usize,
) -> anyhow::Result<(Duration, Duration)> {
    get(http, base, path).await?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        get(http, base, path).await?;
        times.push(started.elapsed());
    }
    times.sort();
    let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    Ok((at(0.5), at(0.95)))
}
