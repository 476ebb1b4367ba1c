//! The agent's loop: the one place with clocks, sleeps, signals and network calls. It obtains a
//! credential (from the state directory, or by provisioning over HTTP), starts the shadow thread
//! and, for MQTT, the link, then carries out the [`Scheduler`]'s actions until SIGINT / SIGTERM
//! or until the server revokes the credential.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use drover_core::health::MetricName;
use drover_core::{DeviceId, Timestamp};
use drover_proto::device_api::{Heartbeat, ProvisionRequest};

use crate::backoff::Backoff;
use crate::config::{Cli, Config, TransportKind};
use crate::hook::ConfigHook;
use crate::http::HttpTransport;
use crate::metrics::{Collector, RSS_METRIC};
use crate::mqtt::{Link, Pushes};
use crate::random::{self, Rng};
use crate::scheduler::{Action, Event, Failure, ScheduleOptions, Scheduler};
use crate::shadow_thread::{ShadowThread, ShadowWorker};
use crate::state::{State, StateStore};
use crate::transport::{Credential, Provisioned, Provisioning, ShadowTransport, Transport};

/// Exit status when the configuration is unusable.
pub const EXIT_CONFIG: u8 = 2;
/// Exit status when the server refused the device's credential: restarting will not help.
pub const EXIT_REVOKED: u8 = 3;

/// How often the agent logs its counters and resident memory.
pub const STATS_EVERY: Duration = Duration::from_secs(3600);

/// How long a stopping agent waits for a config hook that is still running.
const SHADOW_GRACE: Duration = Duration::from_secs(5);

/// The server refused the stored credential: the device was revoked or deleted.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server refused the credential of device {device_id} ({message}): it was revoked or the \
     device was deleted. The agent stops; to enrol again, remove {state_file} and configure a \
     claim token"
)]
pub struct Revoked {
    pub device_id: DeviceId,
    pub message: String,
    pub state_file: PathBuf,
}

/// Counters a supervisor (or a test) can watch while the agent runs.
#[derive(Debug, Default)]
pub struct Stats {
    /// Provisioning requests answered with a credential.
    pub provisioned: AtomicU64,
    /// Heartbeats the server acknowledged.
    pub heartbeats_sent: AtomicU64,
    /// Heartbeats waiting in memory.
    pub buffered: AtomicU64,
    /// Heartbeats lost (buffer overflow or refused by the server).
    pub dropped: AtomicU64,
    /// Failed sends (unreachable or busy server).
    pub send_failures: AtomicU64,
    /// Shadow deltas the config hook applied (without a hook: accepted as applied).
    pub config_applied: AtomicU64,
    /// Shadow deltas the config hook failed to apply.
    pub config_failed: AtomicU64,
    /// MQTT connections established: the first and every reconnect.
    pub mqtt_connects: AtomicU64,
    /// `mqtt_connects` as of the last heartbeat, to report reconnections since then.
    pub connects_reported: AtomicU64,
    /// The running firmware and booted slot as the update machine knows them (heartbeats report
    /// these rather than the configured values once updates are enabled).
    pub running: std::sync::Mutex<(Option<drover_core::Version>, Option<String>)>,
    /// Messages the server rejected on `drover/{id}/rejected` (a topic it does not handle).
    pub rejected_messages: AtomicU64,
    /// The agent's own resident memory at the last reading, in bytes.
    pub rss_bytes: AtomicU64,
}

/// What wakes the heartbeat loop besides its timer.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// SIGINT / SIGTERM, or the caller's shutdown channel.
    Shutdown,
    /// The MQTT link (re)connected: buffered heartbeats may go at once.
    Connected,
    /// This many heartbeats were refused by the server after the broker had acknowledged them.
    Refused(u64),
}

impl Stats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

/// The binary's `main`: loads the configuration, installs signal handlers and runs the agent.
pub fn main(cli: Cli) -> ExitCode {
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("drover-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (tx, signals_rx) = mpsc::channel();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("drover-agent: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signal = tx.clone();
    std::thread::spawn(move || {
        for number in signals.forever() {
            info!("received signal {number}, shutting down");
            let _ = signal.send(Signal::Shutdown);
        }
    });
    match Agent::new(config).run_with_signals(tx, signals_rx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drover-agent: error: {e:#}");
            if e.downcast_ref::<Revoked>().is_some() {
                ExitCode::from(EXIT_REVOKED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A configured agent, ready to run.
pub struct Agent {
    config: Config,
    stats: Arc<Stats>,
}

impl Agent {
    pub fn new(config: Config) -> Agent {
        Agent {
            config,
            stats: Arc::default(),
        }
    }

    /// Counters updated while [`Agent::run`] runs.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` receives a message or its sender is dropped (`Ok`), or until the
    /// credential is refused ([`Revoked`]) or provisioning fails for good (`Err`). Provisioning
    /// uses HTTP; heartbeats and the shadow use the configured transport.
    pub fn run(self, shutdown: Receiver<()>) -> anyhow::Result<()> {
        let (signal, signals) = mpsc::channel();
        forward_shutdown(shutdown, signal.clone());
        self.run_with_signals(signal, signals)
    }

    /// [`Agent::run`], stopped by [`Signal::Shutdown`] on `signals`; `signal` is a sender of that
    /// same channel, for the MQTT link's signals.
    pub fn run_with_signals(
        self,
        signal: Sender<Signal>,
        signals: Receiver<Signal>,
    ) -> anyhow::Result<()> {
        let config = &self.config;
        let mut http = HttpTransport::new(&config.server_url, config.request_timeout);
        let store = StateStore::new(&config.state_dir);
        let mut rng = Rng::from_entropy();
        let Some((device_id, credential)) = self.identity(&mut http, &store, &signals, &mut rng)?
        else {
            return Ok(());
        };
        // Over MQTT the server pushes offers; the update thread also checks over HTTP.
        let (offers, offered) = match (&config.update, &config.transport) {
            (Some(_), TransportKind::Mqtt(_)) => {
                let (tx, rx) = mpsc::channel();
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        let updates = self.start_updates(&credential, offered);
        // Over MQTT the server pushes job executions and diagnostics requests too.
        let mut pushes = Pushes {
            offers,
            ..Pushes::default()
        };
        let pushed = match (&config.jobs, &config.transport) {
            (Some(_), TransportKind::Mqtt(_)) => {
                let (jobs_tx, jobs) = mpsc::channel();
                let (diagnostics_tx, diagnostics) = mpsc::channel();
                pushes.jobs = Some(jobs_tx);
                pushes.diagnostics = Some(diagnostics_tx);
                Some(crate::jobs::Pushed { jobs, diagnostics })
            }
            _ => None,
        };
        // Dropped when this returns, which stops the job threads after their current wait.
        let _jobs = crate::jobs::start(config, &credential, &mut rng, pushed);
        let result = self.run_transport(
            &device_id,
            &credential,
            http,
            &store,
            signal,
            &signals,
            rng,
            pushes,
        );
        if let Some((stop, thread)) = updates {
            drop(stop);
            let _ = thread.join();
        }
        result
    }

    /// Starts the update thread when `[update]` is enabled.
    fn start_updates(
        &self,
        credential: &Credential,
        offers: Option<Receiver<drover_proto::update::UpdateOffer>>,
    ) -> Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
        let update = self.config.update.clone()?;
        let (config, credential, stats) =
            (self.config.clone(), credential.clone(), self.stats.clone());
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("updates".into())
            .spawn(move || {
                let tuf_dir = config.state_dir.join("tuf");
                crate::update::run(
                    &config,
                    &update,
                    credential,
                    || {
                        Box::new(crate::update::tuf::TufVerifier::new(
                            tuf_dir.clone(),
                            update.tuf_root.clone(),
                        ))
                    },
                    crate::update::delta_applier,
                    |version, slot| {
                        if let Ok(mut running) = stats.running.lock() {
                            *running = (version, slot.map(|s| s.as_str().to_owned()));
                        }
                    },
                    offers,
                    stopped,
                );
            })
            .ok()?;
        Some((stop, thread))
    }

    #[allow(clippy::too_many_arguments)]
    fn run_transport(
        &self,
        device_id: &DeviceId,
        credential: &Credential,
        mut http: HttpTransport,
        store: &StateStore,
        signal: Sender<Signal>,
        signals: &Receiver<Signal>,
        mut rng: Rng,
        pushes: Pushes,
    ) -> anyhow::Result<()> {
        let config = &self.config;
        let (device_id, credential) = (device_id.clone(), credential.clone());
        match &config.transport {
            TransportKind::Http => {
                let shadow_http = HttpTransport::new(&config.server_url, config.request_timeout);
                let shadow = self.start_shadow(&device_id, &credential, shadow_http, &mut rng);
                let result =
                    self.heartbeat_loop(&mut http, store, device_id, credential, signals, rng);
                if let Some(mut shadow) = shadow {
                    shadow.request_stop();
                    shadow.join(SHADOW_GRACE);
                }
                result
            }
            TransportKind::Mqtt(address) => {
                info!("device {device_id}: heartbeats and the shadow go over MQTT to {address}");
                let link_rng = Rng::seeded(rng.next_u64());
                let link = Link::start(
                    address,
                    &device_id,
                    &credential,
                    self.stats.clone(),
                    signal,
                    link_rng,
                    pushes,
                );
                let shadow_mqtt = link.shadow(config.request_timeout);
                let shadow = self.start_shadow(&device_id, &credential, shadow_mqtt, &mut rng);
                let mut heartbeats = link.heartbeats(http, config.request_timeout);
                let result = self.heartbeat_loop(
                    &mut heartbeats,
                    store,
                    device_id,
                    credential,
                    signals,
                    rng,
                );
                // The shadow thread is told first, so the closing link does not look like an
                // outage to it.
                let shadow = shadow.map(|mut shadow| {
                    shadow.request_stop();
                    shadow
                });
                link.stop();
                if let Some(shadow) = shadow {
                    shadow.join(SHADOW_GRACE);
                }
                result
            }
        }
    }

    /// The stored credential, or a new one from provisioning; `None` when asked to shut down
    /// while waiting for it.
    fn identity(
        &self,
        http: &mut impl Provisioning,
        store: &StateStore,
        signals: &Receiver<Signal>,
        rng: &mut Rng,
    ) -> anyhow::Result<Option<(DeviceId, Credential)>> {
        let state = store.load()?;
        match (state.device_id.clone(), state.credential()) {
            (Some(device_id), Some(credential)) => {
                info!(
                    "device {device_id}: using the credential in {}",
                    store.path().display()
                );
                if state.server_url.as_deref() != Some(self.config.server_url.as_str()) {
                    warn!(
                        "the credential was issued by {}, now talking to {}",
                        state.server_url.as_deref().unwrap_or("an unknown server"),
                        self.config.server_url
                    );
                }
                Ok(Some((device_id, credential)))
            }
            _ => self.provision(http, store, state, signals, rng),
        }
    }

    /// Starts the shadow thread over `transport`, unless shadow sync is off.
    fn start_shadow(
        &self,
        device_id: &DeviceId,
        credential: &Credential,
        transport: impl ShadowTransport + Send + 'static,
        rng: &mut Rng,
    ) -> Option<ShadowThread> {
        if !self.config.shadow_sync {
            return None;
        }
        let hook = ConfigHook::new(
            self.config.config_hook.clone(),
            self.config.config_hook_timeout,
        );
        if self.config.config_hook.is_none() {
            info!("no config_hook: desired shadow state is reported as applied");
        }
        let (stop, stopped) = mpsc::channel();
        let worker = ShadowWorker::new(
            device_id.clone(),
            credential.clone(),
            hook,
            self.stats.clone(),
            Rng::seeded(rng.next_u64()),
            stopped,
        );
        Some(ShadowThread::spawn(worker, transport, stop))
    }

    /// Obtains a credential; `None` when asked to shut down while waiting.
    fn provision(
        &self,
        transport: &mut impl Provisioning,
        store: &StateStore,
        mut state: State,
        signals: &Receiver<Signal>,
        rng: &mut Rng,
    ) -> anyhow::Result<Option<(DeviceId, Credential)>> {
        let config = &self.config;
        let hardware_id = config.resolve_hardware_id()?;
        // Without a claim token or pre-authorisation the device can only wait for an operator's
        // approval, identified by a nonce that must survive restarts.
        if config.claim_token.is_none() && config.preauth_secret.is_none() && state.nonce.is_none()
        {
            state.nonce = Some(random::nonce().context("cannot generate an enrolment nonce")?);
            store.save(&state)?;
        }
        let request = ProvisionRequest {
            hardware_id: hardware_id.clone(),
            claim_token: config.claim_token.clone(),
            preauth_secret: config.preauth_secret.clone(),
            nonce: state.nonce.clone().filter(|_| config.claim_token.is_none()),
            device_id: config.device_id.clone(),
            device_type: config.device_type.clone(),
            hw_rev: config.hw_rev.clone(),
            firmware: config.firmware.clone(),
        };
        let mode = if config.claim_token.is_some() {
            "with a claim token"
        } else if config.preauth_secret.is_some() {
            "as a pre-authorised device"
        } else {
            "without a claim token (waiting for an operator to accept it)"
        };
        info!("no credential yet: provisioning hardware {hardware_id} {mode}");
        let mut backoff = Backoff::standard();
        loop {
            let delay = match transport.provision(&request) {
                Ok(Provisioned::Accepted {
                    response,
                    credential,
                }) => {
                    let device_id = response.device_id;
                    let state = State {
                        device_id: Some(device_id.clone()),
                        credential: Some(credential.expose().to_owned()),
                        nonce: None,
                        server_url: Some(config.server_url.clone()),
                    };
                    store.save(&state)?;
                    self.stats.provisioned.fetch_add(1, Ordering::SeqCst);
                    info!(
                        "provisioned as device {device_id} ({}); credential stored in {}",
                        response.status,
                        store.path().display()
                    );
                    return Ok(Some((device_id, credential)));
                }
                Ok(Provisioned::Pending {
                    response,
                    retry_after,
                }) => {
                    backoff.reset();
                    info!(
                        "device {} is pending until an operator accepts it; asking again in {} s",
                        response.device_id,
                        retry_after.as_secs()
                    );
                    retry_after
                }
                Err(e) if e.is_transient() => {
                    let delay = backoff.on_failure(rng, e.retry_after());
                    warn!(
                        "provisioning: {e}; retrying in {:.1} s",
                        delay.as_secs_f64()
                    );
                    delay
                }
                Err(e) => {
                    let hint = if config.claim_token.is_some() {
                        "check the claim token (expired, revoked or used up?) and the device settings"
                    } else {
                        "configure a claim token (claim_token, --claim-token, DROVER_AGENT_CLAIM_TOKEN)"
                    };
                    return Err(
                        anyhow::Error::new(e).context(format!("provisioning failed; {hint}"))
                    );
                }
            };
            if wait_signal(signals, delay) == Some(Signal::Shutdown) {
                return Ok(None);
            }
        }
    }

    fn heartbeat_loop(
        &self,
        transport: &mut impl Transport,
        store: &StateStore,
        device_id: DeviceId,
        credential: Credential,
        signals: &Receiver<Signal>,
        rng: Rng,
    ) -> anyhow::Result<()> {
        let config = &self.config;
        let options = ScheduleOptions {
            interval: config.heartbeat_interval,
            jitter: config.heartbeat_jitter,
            max_buffered: config.max_buffered_heartbeats,
        };
        let mut scheduler = Scheduler::new(options, Backoff::standard(), rng);
        let mut collector = Collector::new(
            config.static_metrics.clone(),
            config.metrics_command.clone(),
        );
        let mut failing_since: Option<Instant> = None;
        let mut last_refusal = String::new();
        let mut last_stats = Instant::now();
        // Signals that arrived while the loop was busy, for its next sleep.
        let mut pending: VecDeque<Signal> = VecDeque::new();
        let mut action = scheduler.on_event(Instant::now(), Event::Started);
        loop {
            self.publish(&scheduler);
            pending.extend(signals.try_iter());
            if pending.contains(&Signal::Shutdown) {
                self.stopped(&scheduler);
                return Ok(());
            }
            if last_stats.elapsed() >= STATS_EVERY {
                last_stats = Instant::now();
                info!("{}", self.stats_line(&scheduler));
            }
            let event = match action {
                Action::Sample => Event::Sampled(self.sample(&mut collector)),
                Action::Send(batch) => match transport.send_heartbeats(&credential, &batch) {
                    Ok(accepted) => {
                        if let Some(since) = failing_since.take() {
                            info!(
                                "server reachable again after {} s; sent {accepted} buffered heartbeat(s)",
                                since.elapsed().as_secs()
                            );
                        } else {
                            debug!("sent {accepted} heartbeat(s)");
                        }
                        Event::Sent
                    }
                    Err(e) => {
                        let failure = Failure::of(&e);
                        match &failure {
                            Failure::Transient { .. } => {
                                self.stats.send_failures.fetch_add(1, Ordering::SeqCst);
                                failing_since.get_or_insert_with(Instant::now);
                                warn!("heartbeat not sent: {e}; {} buffered", scheduler.buffered());
                            }
                            Failure::Rejected { .. } => warn!("heartbeat refused and dropped: {e}"),
                            Failure::Unauthorized => last_refusal = e.to_string(),
                        }
                        Event::SendFailed(failure)
                    }
                },
                Action::SleepUntil(at) => {
                    let signal = pending.pop_front().or_else(|| {
                        wait_signal(signals, at.saturating_duration_since(Instant::now()))
                    });
                    match signal {
                        None => Event::Woke,
                        Some(Signal::Shutdown) => {
                            self.stopped(&scheduler);
                            return Ok(());
                        }
                        Some(Signal::Connected) => Event::Connected,
                        Some(Signal::Refused(n)) => Event::Refused(n),
                    }
                }
                Action::Exit => {
                    self.publish(&scheduler);
                    return Err(Revoked {
                        device_id,
                        message: last_refusal,
                        state_file: store.path(),
                    }
                    .into());
                }
            };
            action = scheduler.on_event(Instant::now(), event);
        }
    }

    fn sample(&self, collector: &mut Collector) -> Heartbeat {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut metrics = collector.collect();
        // Over MQTT: reconnections since the previous heartbeat, which the server weighs into the
        // device's link quality (three or more make it `degraded`).
        let connects = self.stats.mqtt_connects.load(Ordering::SeqCst);
        if connects > 0 {
            let before = self
                .stats
                .connects_reported
                .swap(connects, Ordering::SeqCst);
            // The first connection is not a reconnection.
            let reconnects = connects.saturating_sub(before.max(1));
            if let Ok(name) = MetricName::parse("reconnects") {
                metrics.insert(name, reconnects as f64);
            }
        }
        let rss = MetricName::parse(RSS_METRIC)
            .ok()
            .and_then(|name| metrics.get(&name).copied());
        if let Some(rss) = rss {
            self.stats.rss_bytes.store(rss as u64, Ordering::SeqCst);
        }
        let (firmware, slot) = self
            .stats
            .running
            .lock()
            .map(|running| running.clone())
            .unwrap_or_default();
        Heartbeat {
            sent_at: Some(Timestamp::from_millis(ms)),
            firmware: firmware.or_else(|| self.config.firmware.clone()),
            interval_s: Some(self.config.heartbeat_interval.as_secs_f64().ceil().max(1.0) as u32),
            boot_slot: slot
                .and_then(|s| drover_core::Label::parse(&s).ok())
                .or_else(|| self.config.boot_slot.clone()),
            metrics,
        }
    }

    /// The counters and the agent's resident memory, for the log.
    fn stats_line(&self, scheduler: &Scheduler) -> String {
        let get = Stats::get;
        let stats = &self.stats;
        format!(
            "stats: {} heartbeat(s) sent, {} buffered, {} dropped; {} config change(s) applied, \
             {} failed; resident memory {:.1} MiB",
            scheduler.sent(),
            scheduler.buffered(),
            scheduler.dropped(),
            get(&stats.config_applied),
            get(&stats.config_failed),
            get(&stats.rss_bytes) as f64 / (1024.0 * 1024.0),
        )
    }

    fn publish(&self, scheduler: &Scheduler) {
        self.stats
            .heartbeats_sent
            .store(scheduler.sent(), Ordering::SeqCst);
        self.stats
            .buffered
            .store(scheduler.buffered() as u64, Ordering::SeqCst);
        self.stats
            .dropped
            .store(scheduler.dropped(), Ordering::SeqCst);
    }

    fn stopped(&self, scheduler: &Scheduler) {
        self.publish(scheduler);
        info!("{}", self.stats_line(scheduler));
        match scheduler.buffered() {
            0 => info!("stopped"),
            n => warn!("stopped with {n} heartbeat(s) not yet sent (they are lost)"),
        }
    }
}

/// Sleeps up to `duration`; true when a stop was requested (a message, or the sender dropped).
pub(crate) fn wait(stop: &Receiver<()>, duration: Duration) -> bool {
    match stop.recv_timeout(duration) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
        Err(RecvTimeoutError::Timeout) => false,
    }
}

/// Sleeps up to `duration` or until a signal arrives.
fn wait_signal(signals: &Receiver<Signal>, duration: Duration) -> Option<Signal> {
    match signals.recv_timeout(duration) {
        Ok(signal) => Some(signal),
        Err(RecvTimeoutError::Disconnected) => Some(Signal::Shutdown),
        Err(RecvTimeoutError::Timeout) => None,
    }
}

/// Turns the caller's shutdown channel into a [`Signal`]: a message or a dropped sender.
fn forward_shutdown(shutdown: Receiver<()>, signal: Sender<Signal>) {
    let forward = move || {
        let _ = shutdown.recv();
        let _ = signal.send(Signal::Shutdown);
    };
    std::thread::Builder::new()
        .name("shutdown".into())
        .spawn(forward)
        .expect("the shutdown thread starts");
}
