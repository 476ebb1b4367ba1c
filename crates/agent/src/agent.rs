//! The agent's loop: the one place with clocks, sleeps, signals and network calls. It obtains a
//! credential (from the state directory, or by provisioning), then carries out the
//! [`Scheduler`]'s actions until SIGINT / SIGTERM or until the server revokes the credential.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use drover_core::{DeviceId, Timestamp};
use drover_proto::device_api::{Heartbeat, ProvisionRequest};

use crate::backoff::Backoff;
use crate::config::{Cli, Config};
use crate::http::HttpTransport;
use crate::metrics::Collector;
use crate::random::{self, Rng};
use crate::scheduler::{Action, Event, Failure, ScheduleOptions, Scheduler};
use crate::state::{State, StateStore};
use crate::transport::{Credential, Provisioned, Transport, TransportError};

/// Exit status when the configuration is unusable.
pub const EXIT_CONFIG: u8 = 2;
/// Exit status when the server refused the device's credential: restarting will not help.
pub const EXIT_REVOKED: u8 = 3;

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
    let (tx, shutdown) = std::sync::mpsc::channel();
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
    std::thread::spawn(move || {
        for signal in signals.forever() {
            info!("received signal {signal}, shutting down");
            let _ = tx.send(());
        }
    });
    match Agent::new(config).run(shutdown) {
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

    /// Runs over HTTP until `shutdown` receives a message or its sender is dropped (`Ok`), or
    /// until the credential is refused ([`Revoked`]) or provisioning fails for good (`Err`).
    pub fn run(self, shutdown: Receiver<()>) -> anyhow::Result<()> {
        let transport = HttpTransport::new(&self.config.server_url, self.config.request_timeout);
        self.run_with(transport, shutdown)
    }

    /// [`Agent::run`] over any transport.
    pub fn run_with(
        self,
        mut transport: impl Transport,
        shutdown: Receiver<()>,
    ) -> anyhow::Result<()> {
        let store = StateStore::new(&self.config.state_dir);
        let state = store.load()?;
        let mut rng = Rng::from_entropy();
        let (device_id, credential) = match (state.device_id.clone(), state.credential()) {
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
                (device_id, credential)
            }
            _ => match self.provision(&mut transport, &store, state, &shutdown, &mut rng)? {
                Some(identity) => identity,
                None => return Ok(()),
            },
        };
        self.heartbeat_loop(
            &mut transport,
            &store,
            device_id,
            credential,
            &shutdown,
            rng,
        )
    }

    /// Obtains a credential; `None` when asked to shut down while waiting.
    fn provision(
        &self,
        transport: &mut impl Transport,
        store: &StateStore,
        mut state: State,
        shutdown: &Receiver<()>,
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
                    let delay = backoff.on_failure(rng, retry_after(&e));
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
            if wait(shutdown, delay) {
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
        shutdown: &Receiver<()>,
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
        let mut action = scheduler.on_event(Instant::now(), Event::Started);
        loop {
            self.publish(&scheduler);
            if shutdown_requested(shutdown.try_recv()) {
                self.stopped(&scheduler);
                return Ok(());
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
                        let failure = classify(&e);
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
                    if wait(shutdown, at.saturating_duration_since(Instant::now())) {
                        self.stopped(&scheduler);
                        return Ok(());
                    }
                    Event::Woke
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
        Heartbeat {
            sent_at: Some(Timestamp::from_millis(ms)),
            firmware: self.config.firmware.clone(),
            interval_s: Some(self.config.heartbeat_interval.as_secs_f64().ceil().max(1.0) as u32),
            boot_slot: self.config.boot_slot.clone(),
            metrics: collector.collect(),
        }
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
        match scheduler.buffered() {
            0 => info!("stopped"),
            n => warn!("stopped with {n} heartbeat(s) not yet sent (they are lost)"),
        }
    }
}

fn classify(error: &TransportError) -> Failure {
    match error {
        TransportError::Unauthorized(_) => Failure::Unauthorized,
        TransportError::Rejected { index, .. } => Failure::Rejected { index: *index },
        other => Failure::Transient {
            retry_after: retry_after(other),
        },
    }
}

fn retry_after(error: &TransportError) -> Option<Duration> {
    match error {
        TransportError::Unavailable { retry_after, .. } => *retry_after,
        _ => None,
    }
}

/// Sleeps up to `duration`; true when shutdown was requested meanwhile.
fn wait(shutdown: &Receiver<()>, duration: Duration) -> bool {
    match shutdown.recv_timeout(duration) {
        Ok(()) | Err(RecvTimeoutError::Disconnected) => true,
        Err(RecvTimeoutError::Timeout) => false,
    }
}

fn shutdown_requested(result: Result<(), TryRecvError>) -> bool {
    !matches!(result, Err(TryRecvError::Empty))
}
