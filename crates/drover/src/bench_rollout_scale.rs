//! `drover bench rollout-scale`: what a rollout costs as the fleet grows. For each fleet size it
//! imports a synthetic fleet of one device type, then times creating and planning a rollout over
//! all of it (validation, stratified ranks, one queue row per device), the first tick (dispatching
//! the 1% canary), an idle tick (nothing changed), a tick counting 1,000 device outcomes, and the
//! dispatch rate of a single 100% phase. Ticks are run directly on the store, exactly as the
//! server's orchestrator runs them, with process CPU time measured around each.
//!
//! The anchor is the store's own plain `SELECT COUNT(*)` over the fleet in the same run: a tick
//! whose cost grows with the fleet would track it; one that grows with what changed does not.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use drover_core::rollout::machine::Command;
use drover_core::{DeviceId, Version};
use drover_proto::rollouts::{NewRollout, RolloutId};
use drover_proto::update::{DeploymentId, DeploymentReport, DeploymentState};
use drover_server::ServerConfig;
use drover_store::testing::TempDir;
use drover_store::{Actor, Store};
use serde_json::{json, Value};

use crate::bench::{Fleet, BENCH_TOKEN};

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000, 1_000_000])]
    pub devices: Vec<u64>,
    /// Store URL (default: SQLite in a temporary directory per size). For PostgreSQL use an empty
    /// database or schema.
    #[arg(long)]
    pub store: Option<String>,
    /// Seed of the synthetic fleet.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

const ONE_TYPE: &[(&str, u64)] = &[("meter", 1)];

pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    println!(
        "# drover bench rollout-scale: {}",
        crate::bench_download::machine_line()
    );
    println!(
        "{:>9}  {:>10}  {:>13}  {:>10}  {:>14}  {:>13}  {:>16}  {:>10}",
        "devices",
        "import s",
        "create+plan s",
        "canary s",
        "idle tick ms",
        "outcome ms",
        "dispatch dev/min",
        "count ms"
    );
    for &n in &args.devices {
        let row = one_size(n, &args).await?;
        println!(
            "{:>9}  {:>10.1}  {:>13.2}  {:>10.2}  {:>14.1}  {:>13.1}  {:>16.0}  {:>10.1}",
            n,
            row.import.as_secs_f64(),
            row.create.as_secs_f64(),
            row.canary_tick.as_secs_f64(),
            ms(row.idle_tick),
            ms(row.outcome_tick),
            row.dispatch_per_min,
            ms(row.count),
        );
        println!(
            "           CPU: create {:.2} s, canary tick {:.2} s, idle tick {:.1} ms, outcome tick {:.1} ms ({} outcomes: the canary's, at most 1,000)",
            row.create_cpu.as_secs_f64(),
            row.canary_tick_cpu.as_secs_f64(),
            ms(row.idle_tick_cpu),
            ms(row.outcome_tick_cpu),
            row.outcomes
        );
    }
    Ok(())
}

struct Row {
    import: Duration,
    create: Duration,
    create_cpu: Duration,
    canary_tick: Duration,
    canary_tick_cpu: Duration,
    idle_tick: Duration,
    idle_tick_cpu: Duration,
    outcome_tick: Duration,
    outcome_tick_cpu: Duration,
    outcomes: usize,
    dispatch_per_min: f64,
    count: Duration,
}

async fn one_size(n: u64, args: &ScaleArgs) -> anyhow::Result<Row> {
    let dir = TempDir::new();
    let mut config = ServerConfig::with_data_dir(&dir.path);
    config.listen = "127.0.0.1:0".parse()?;
    config.mqtt = drover_server::mqtt::MqttConfig::Off;
    config.admin_token = Some(BENCH_TOKEN.into());
    // The background orchestrator stays out of the way; this benchmark ticks by hand.
    config.rollout_tick = Duration::from_secs(24 * 3600);
    if let Some(store) = &args.store {
        config.store_url = store.clone();
    }
    let server = drover_server::start(config, std::future::pending()).await?;
    let base = format!("http://{}", server.addr);
    let store = server.store.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;

    let started = Instant::now();
    let fleet = Fleet {
        seed: args.seed,
        n,
        now_ms: drover_server::now().as_millis(),
        types: ONE_TYPE,
    };
    crate::bench::import_fleet(&http, &base, fleet).await?;
    let import = started.elapsed();
    store.analyze().await?;
    upload(&http, &base).await?;

    let query = drover_core::query::Query::parse("device_type = meter")?;
    let count_started = Instant::now();
    let counted = store.count_devices(&query, drover_server::now()).await?;
    let count = count_started.elapsed();
    if counted != n {
        bail!("expected {n} devices, the store counts {counted}");
    }

    // The rollout's clock starts two minutes after the import, as if the fleet had been imported
    // earlier: a tick looks for devices changed in the last minute (dynamic targets), and a
    // whole fleet changed seconds ago would make every tick look at all of it.
    let t0 = drover_server::now().saturating_add(drover_core::Duration::from_secs(120));
    let clock_started = Instant::now();
    let clock = || {
        t0.saturating_add(drover_core::Duration::from_millis(
            clock_started.elapsed().as_millis() as i64,
        ))
    };
    let actor = Actor::system();
    let phased: NewRollout = serde_json::from_value(json!({
        "artifact": "meter-fw", "version": "9.0.0", "target": {"query": "device_type = meter"},
        "strategy": {"phases": [{"percent": 1, "soak": "1h"}, {"percent": 5, "soak": "1h"}, {"percent": 25, "soak": "1h"}, {"percent": 100}]}
    }))?;
    let (rollout, create, create_cpu) =
        timed(|| store.create_rollout(&actor, phased.clone(), clock())).await?;
    let (_, canary_tick, canary_tick_cpu) =
        timed(|| store.tick_rollout(rollout.id, clock())).await?;
    let (_, idle_tick, idle_tick_cpu) = timed(|| store.tick_rollout(rollout.id, clock())).await?;

    // 1,000 devices of the canary report success, as a real device would.
    let page = store
        .rollout_devices(rollout.id, Some("updating".into()), None, 1000)
        .await?;
    for device in &page.items {
        let id = DeviceId::parse(&device.device)?;
        let deployment = DeploymentId(device.deployment.context("no deployment")?);
        store
            .report_deployment(
                &id,
                deployment,
                DeploymentReport {
                    state: DeploymentState::Succeeded,
                    reason: None,
                    failure: None,
                    bytes_done: None,
                    firmware: Some(Version::parse("9.0.0")?),
                    used_delta: None,
                },
                clock(),
                drover_core::Duration::from_secs(3600),
            )
            .await?;
    }
    let (_, outcome_tick, outcome_tick_cpu) =
        timed(|| store.tick_rollout(rollout.id, clock())).await?;

    // The dispatch rate: abort, then one 100% phase over the same devices, ticked until all are
    // offered the release.
    store
        .rollout_command(
            &actor,
            rollout.id,
            Command::Abort {
                reason: "benchmark".into(),
            },
            clock(),
        )
        .await?;
    let everyone: NewRollout = serde_json::from_value(json!({
        "artifact": "meter-fw", "version": "9.0.0", "target": {"query": "device_type = meter"},
        "strategy": {"phases": [{"percent": 100}]}
    }))?;
    let second = store.create_rollout(&actor, everyone, clock()).await?;
    let started = Instant::now();
    loop {
        store.tick_rollout(second.id, clock()).await?;
        let view = store.get_rollout(second.id).await?;
        if view.counts.assigned >= view.counts.target {
            break;
        }
    }
    let dispatch = started.elapsed();
    let assigned = store.get_rollout(second.id).await?.counts.assigned;
    check(&store, second.id).await?;
    server.shutdown().await?;
    Ok(Row {
        import,
        create,
        create_cpu,
        canary_tick,
        canary_tick_cpu,
        idle_tick,
        idle_tick_cpu,
        outcome_tick,
        outcome_tick_cpu,
        outcomes: page.items.len(),
        dispatch_per_min: assigned as f64 / dispatch.as_secs_f64() * 60.0,
        count,
    })
}

/// Every device of the rollout got exactly one deployment, except those the canary already
/// updated, which are skipped as already on the version.
async fn check(store: &Store, id: RolloutId) -> anyhow::Result<()> {
    let view = store.get_rollout(id).await?;
    let c = &view.counts;
    if c.in_flight + c.skipped != c.assigned {
        bail!(
            "{} assigned but {} updating and {} skipped",
            c.assigned,
            c.in_flight,
            c.skipped
        );
    }
    Ok(())
}

async fn upload(http: &reqwest::Client, base: &str) -> anyhow::Result<Value> {
    let metadata = json!({ "name": "meter-fw", "version": "9.0.0", "device_types": ["meter"] });
    let image = reqwest::multipart::Part::bytes(vec![7u8; 64 << 10]).file_name("firmware.img");
    crate::bench::upload_artifact(http, base, BENCH_TOKEN, &metadata, image).await
}

/// Runs `op` once; returns its result, wall time and this process's CPU time.
async fn timed<T, E, F, Fut>(op: F) -> anyhow::Result<(T, Duration, Duration)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Into<anyhow::Error>,
{
    let cpu = cpu_time();
    let started = Instant::now();
    let value = op().await.map_err(Into::into)?;
    Ok((value, started.elapsed(), cpu_time().saturating_sub(cpu)))
}

/// User plus system CPU time of this process so far (all threads).
fn cpu_time() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `spec` is a valid, writable timespec; the call only writes to it.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut spec) } == 0;
    if ok {
        Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
    } else {
        Duration::ZERO
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
