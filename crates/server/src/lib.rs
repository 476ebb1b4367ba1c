//! Drover's server: the admin REST API (`/api/v1`), the device API (`/api/device/v1`), health and
//! metrics endpoints, on top of [`drover_store::Store`].
//!
//! Only this crate knows axum. Handlers validate input at the edge (core newtypes, the query parser),
//! call one store operation, and map its result to JSON; business rules live in the store's
//! transactional operations and in `drover-core`.
//!
//! # Layout
//! - [`config`]: the validated server configuration.
//! - `error`: `ApiError`, the one error body every endpoint returns.
//! - `extract`: extractors for JSON bodies, query strings, operator tokens and device credentials.
//! - `routes`: handlers, one module per resource (devices, groups, auth, audit, device API,
//!   shadows, fleet views, ops).
//! - `import`: streaming CSV / JSON-lines parsing for bulk device import.
//! - [`ingest`]: group commit of heartbeats with a bounded queue (backpressure).
//! - [`shadow_hub`]: in-process notification of shadow changes, for long-polls and MQTT deltas.
//! - `wake`: in-process wake-ups for the job and diagnostics long-polls.
//! - `fleet_rollups`: the fleet rollup tick (fold device-count deltas, snapshot version history).
//! - `jobs`: the fleet jobs tick (time-outs, starting executions up to `max_parallel`).
//! - [`mqtt`]: the MQTT device API: embedded broker or external-broker client, one message handler.
//! - `metrics`: Prometheus metrics and the request-metrics middleware.
//! - `openapi`: the OpenAPI 3 document generated from the handlers' annotations.
//! - [`ui`]: the web dashboard: its files (compiled in from `ui/`), login for a session cookie, logout.

pub mod config;
mod error;
mod extract;
mod fleet_rollups;
mod import;
pub mod ingest;
mod jobs;
mod metrics;
pub mod mqtt;
mod openapi;
mod orchestrator;
mod ota;
mod routes;
pub mod shadow_hub;
pub mod storage;
pub mod tuf_repo;
pub mod ui;
mod wake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use drover_core::Timestamp;
use drover_store::{Store, StoreOptions, TokenAuth};

pub use config::ServerConfig;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<ServerConfig>,
    metrics: Arc<metrics::Metrics>,
    ingest: ingest::Ingest,
    /// Wakes shadow long-polls when a shadow changes through this server.
    shadows: shadow_hub::ShadowHub,
    /// When each token's `last_used_at` was last written, so that busy tokens cost one write a minute.
    token_touches: Arc<Mutex<HashMap<String, Instant>>>,
    /// Devices whose credentials were just revoked, for the embedded MQTT broker to disconnect.
    revocations: tokio::sync::broadcast::Sender<drover_core::DeviceId>,
    /// Artifact files.
    storage: storage::Storage,
    /// One delta is built at a time: generation holds both images and a suffix array in memory.
    delta_builds: Arc<tokio::sync::Semaphore>,
    /// Devices an operator just deployed to, for the MQTT transport to publish their offer.
    offers: tokio::sync::broadcast::Sender<drover_core::DeviceId>,
    /// Wakes the rollout orchestrator when a rollout was created or commanded.
    rollouts_changed: Arc<tokio::sync::Notify>,
    /// Wakes the jobs tick when a job was created or a device finished an execution.
    jobs_changed: Arc<tokio::sync::Notify>,
    /// Wakes the fleet rollup tick after a change of many devices at once (an import, a bulk
    /// update), so readers do not add up a large backlog of count deltas until the next tick.
    fleet_changed: Arc<tokio::sync::Notify>,
    /// Wakes job and diagnostics long-polls.
    wakes: wake::WakeHub,
    /// Devices just offered a job execution, for the MQTT transport to publish their offer.
    job_offers: tokio::sync::broadcast::Sender<drover_core::DeviceId>,
    /// Diagnostics requests just stored, for the MQTT transport to publish.
    diag_requests:
        tokio::sync::broadcast::Sender<(drover_core::DeviceId, drover_proto::jobs::DiagCommand)>,
}

impl AppState {
    /// Announces that `device`'s credentials no longer hold, so open connections authenticated with
    /// them are closed (the embedded MQTT broker's sessions; HTTP requests authenticate each time).
    pub(crate) fn credentials_revoked(&self, device: &drover_core::DeviceId) {
        // Nobody listening (MQTT off or external) is fine.
        let _ = self.revocations.send(device.clone());
    }

    fn note_token_use(&self, auth: &TokenAuth, now: Timestamp) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(60);
        let mut touches = self.token_touches.lock().unwrap_or_else(|p| p.into_inner());
        let due = touches.get(&auth.id).is_none_or(|at| at.elapsed() >= EVERY);
        if due {
            touches.insert(auth.id.clone(), Instant::now());
            let (store, id) = (self.store.clone(), auth.id.clone());
            tokio::spawn(async move {
                if let Err(e) = store.touch_token(&id, now).await {
                    tracing::warn!(error = %e, token = %id, "could not record token use");
                }
            });
        }
    }
}

/// The current time as a [`Timestamp`]; the only clock the HTTP layer reads.
pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp::from_millis(ms)
}

/// A running server: its address and a handle to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    /// Where the embedded MQTT broker listens, when it runs.
    pub mqtt_addr: Option<SocketAddr>,
    pub store: Store,
    /// The admin token created on first start, if one was created (shown once).
    pub bootstrap_token: Option<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops accepting connections, finishes in-flight requests and waits for the server to exit.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.context("server task panicked")?
    }

    /// Waits until the server exits on its own (it does so on SIGINT / SIGTERM when started by
    /// [`serve`]).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let _keep = self.shutdown.take();
        self.task.await.context("server task panicked")?
    }
}

/// Opens the store, prepares the first admin token if needed, binds the listener and starts serving.
/// `shutdown_signal` stops the server gracefully when it completes.
pub async fn start(
    config: ServerConfig,
    shutdown_signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningServer> {
    // Bind first: a taken port must fail before anything is written, above all before the first
    // admin token is created, which is shown only once.
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {}: {e} (choose another address with --listen, DROVER_LISTEN or `listen` in the config file)",
            config.listen
        )
    })?;
    let mqtt_listener = match &config.mqtt {
        mqtt::MqttConfig::Embedded { listen } => Some(mqtt::embedded::bind(*listen).await?),
        _ => None,
    };
    let store = Store::open(
        &config.store_url,
        &StoreOptions {
            pg_max_connections: config.pg_max_connections,
        },
    )
    .await
    .with_context(|| format!("cannot open the store at {}", config.redacted_store_url()))?;
    let storage = storage::Storage::open(&config.artifacts)
        .with_context(|| format!("cannot open artifact storage {}", config.artifacts.url))?;
    storage
        .check()
        .await
        .with_context(|| format!("cannot reach artifact storage {}", storage.description))?;
    tuf_repo::init(&store, &config.tuf, now())
        .await
        .context("cannot create the TUF repository")?;
    let admin_token = config.admin_token.clone();
    let addr = listener.local_addr()?;
    let sample_retention = config.sample_retention;
    let offline_check = config.offline_check;
    let tuf_config = config.tuf.clone();
    let metrics = Arc::new(metrics::Metrics::new());
    let shadows = shadow_hub::ShadowHub::new();
    let wakes = wake::WakeHub::default();
    let state = AppState {
        store: store.clone(),
        ingest: ingest::Ingest::start(store.clone(), config.ingest),
        config: Arc::new(config),
        metrics: metrics.clone(),
        shadows: shadows.clone(),
        token_touches: Arc::default(),
        revocations: tokio::sync::broadcast::channel(256).0,
        storage,
        delta_builds: Arc::new(tokio::sync::Semaphore::new(1)),
        // Room for a whole dispatch batch: a lagging MQTT publisher would skip offers (devices
        // still find them when they ask, but later).
        offers: tokio::sync::broadcast::channel(65_536).0,
        rollouts_changed: Arc::new(tokio::sync::Notify::new()),
        jobs_changed: Arc::new(tokio::sync::Notify::new()),
        fleet_changed: Arc::new(tokio::sync::Notify::new()),
        wakes: wakes.clone(),
        job_offers: tokio::sync::broadcast::channel(65_536).0,
        diag_requests: tokio::sync::broadcast::channel(1024).0,
    };
    let messages = mqtt::handler::DeviceMessages::new(state.clone());
    let mqtt_addr = mqtt_listener.as_ref().map(|l| l.local_addr());
    let mqtt_transport = match (&state.config.mqtt, mqtt_listener) {
        (mqtt::MqttConfig::Embedded { .. }, Some(listener)) => {
            Some(mqtt::Transport::Embedded(listener.start(messages).await?))
        }
        (mqtt::MqttConfig::External(broker), _) => Some(mqtt::Transport::External(
            mqtt::external::start(broker.clone(), messages)
                .await
                .with_context(|| {
                    format!(
                        "cannot use the MQTT broker at {}",
                        config::redact_url(&broker.url)
                    )
                })?,
        )),
        _ => None,
    };
    // Last of the fallible steps: the first admin token is shown only once, so it must not be
    // created by a start that then fails.
    let bootstrap_token = match store.bootstrap_admin(admin_token.clone(), now()).await {
        Ok(token) => token.filter(|_| admin_token.is_none()),
        Err(e) => {
            if let Some(transport) = mqtt_transport {
                transport.shutdown().await;
            }
            return Err(anyhow::Error::new(e).context("cannot create the first admin token"));
        }
    };
    let orchestrator = tokio::spawn(orchestrator::run(state.clone(), state.config.rollout_tick));
    // Jobs tick as often as rollouts: one setting for "how fast background operations move".
    let jobs_loop = tokio::spawn(jobs::run(state.clone(), state.config.rollout_tick));
    let rollups = tokio::spawn(fleet_rollups::run(
        store.clone(),
        state.config.rollup_interval,
        state.fleet_changed.clone(),
    ));
    let fleet_changed = state.fleet_changed.clone();
    let router = routes::router(state);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let housekeeping = tokio::spawn(maintenance(store.clone(), sample_retention));
    let detector = tokio::spawn(offline_detector(
        store.clone(),
        metrics,
        offline_check,
        fleet_changed,
    ));
    let timeouts = tokio::spawn(ota::deployment_timeouts(
        store.clone(),
        std::time::Duration::from_secs(10),
    ));
    let resign = tokio::spawn(ota::tuf_refresh(
        store.clone(),
        tuf_config,
        std::time::Duration::from_secs(60),
    ));
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = rx => {}
                    _ = shutdown_signal => {}
                }
                // Long-polls would otherwise hold graceful shutdown up for up to a minute.
                shadows.close();
                wakes.close();
            })
            .await
            .context("HTTP server failed");
        // Background loops live exactly as long as the server.
        housekeeping.abort();
        detector.abort();
        timeouts.abort();
        resign.abort();
        orchestrator.abort();
        jobs_loop.abort();
        rollups.abort();
        if let Some(transport) = mqtt_transport {
            transport.shutdown().await;
        }
        served
    });
    tracing::info!(%addr, store = store.backend_name(), "drover is listening");
    if let Some(mqtt_addr) = mqtt_addr {
        tracing::info!(%mqtt_addr, "embedded MQTT broker is listening");
    }
    Ok(RunningServer {
        addr,
        mqtt_addr,
        store,
        bootstrap_token,
        shutdown: Some(tx),
        task,
    })
}

/// How often housekeeping runs.
const MAINTENANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Housekeeping: prunes raw heartbeat samples past their retention. Runs for the life of the
/// process; with several replicas each prunes, which is harmless (the delete is idempotent).
async fn maintenance(store: Store, retention: drover_core::Duration) {
    let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
    loop {
        tick.tick().await;
        let before = now().saturating_add(retention.neg());
        match store.prune_heartbeat_samples(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "pruned heartbeat samples past retention"),
            Err(e) => tracing::warn!(error = %e, "could not prune heartbeat samples"),
        }
        // Ended dashboard sessions stay listed for a week (who was logged in), then go.
        let before = now().saturating_add(drover_core::Duration::from_secs(-7 * 86_400));
        match store.prune_sessions(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "deleted ended dashboard sessions"),
            Err(e) => tracing::warn!(error = %e, "could not delete ended dashboard sessions"),
        }
    }
}

/// Devices marked offline per statement batch of the detector.
const OFFLINE_BATCH: usize = 1000;

/// Marks devices offline once their heartbeat deadline (interval × grace, set by each heartbeat)
/// has passed. Each pass reads only the devices past their deadline through a partial index, so its
/// cost grows with the devices that just went silent, not with the fleet. Replicas may all run it:
/// the conditional update marks each device once.
async fn offline_detector(
    store: Store,
    metrics: Arc<metrics::Metrics>,
    every: std::time::Duration,
    fleet_changed: Arc<tokio::sync::Notify>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut n_marked = 0;
        loop {
            match store.mark_offline(now(), OFFLINE_BATCH).await {
                Ok(ids) => {
                    n_marked += ids.len();
                    if n_marked >= fleet_rollups::WAKE_AFTER
                        && n_marked - ids.len() < fleet_rollups::WAKE_AFTER
                    {
                        fleet_changed.notify_one();
                    }
                    metrics.went_offline.inc_by(ids.len() as u64);
                    for id in ids.iter().take(20) {
                        tracing::info!(device = %id, "device went offline");
                    }
                    if ids.len() > 20 {
                        tracing::info!(more = ids.len() - 20, "more devices went offline");
                    }
                    if ids.len() < OFFLINE_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "offline detector could not mark devices");
                    break;
                }
            }
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
