//! The shadow thread: keeps the device's classic shadow in sync over any [`ShadowTransport`],
//! apart from the heartbeat loop so that a long-poll or a slow config hook never delays a
//! heartbeat.
//!
//! On start and after every reconnect it fetches the whole document and acts on its delta; then it
//! waits for deltas (the HTTP long-poll, or MQTT's `shadow/update/delta`). Acting means running
//! the config hook ([`ConfigHook`]) and reporting what it applied. [`ShadowSync`] makes the
//! decisions; [`ShadowWorker::run_once`] is one step, so tests drive it without threads or sleeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use drover_core::shadow::JsonObject;
use drover_core::DeviceId;

use crate::agent::{wait, Stats};
use crate::backoff::Backoff;
use crate::hook::ConfigHook;
use crate::random::Rng;
use crate::shadow::{Apply, ShadowSync};
use crate::transport::{Credential, DeltaWait, ShadowTransport, TransportError};

/// What one step achieved.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Go on at once.
    Continue,
    /// The server could not be reached: try again after this delay.
    Retry(Duration),
    /// The credential was refused: stop (the heartbeat loop reports the revocation).
    Stop,
}

/// Where the worker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Fetch the whole document (start, reconnect).
    Fetch,
    /// Wait for deltas.
    Poll,
}

/// The shadow thread's state.
pub struct ShadowWorker {
    device: DeviceId,
    credential: Credential,
    hook: ConfigHook,
    stats: Arc<Stats>,
    sync: ShadowSync,
    phase: Phase,
    /// A report the server has not accepted yet; sent before anything else.
    pending_report: Option<JsonObject>,
    backoff: Backoff,
    rng: Rng,
    /// Closed or signalled when the agent stops: no hook is started after that.
    stop: Receiver<()>,
    /// Set while the hook runs, so a stopping agent knows whether waiting is worth it.
    in_hook: Arc<AtomicBool>,
}

impl ShadowWorker {
    pub fn new(
        device: DeviceId,
        credential: Credential,
        hook: ConfigHook,
        stats: Arc<Stats>,
        rng: Rng,
        stop: Receiver<()>,
    ) -> ShadowWorker {
        ShadowWorker {
            device,
            credential,
            hook,
            stats,
            sync: ShadowSync::default(),
            phase: Phase::Fetch,
            pending_report: None,
            backoff: Backoff::standard(),
            rng,
            stop,
            in_hook: Arc::default(),
        }
    }

    /// Runs until the agent stops or the credential is refused.
    pub fn run(mut self, mut transport: impl ShadowTransport) {
        while !self.stopping() {
            match self.run_once(&mut transport) {
                Progress::Continue => {}
                Progress::Retry(delay) => {
                    if wait(&self.stop, delay) {
                        break;
                    }
                }
                Progress::Stop => break,
            }
        }
        debug!("shadow sync stopped");
    }

    /// One step: send a pending report, fetch the document, or wait for one delta, and act on
    /// what came back.
    pub fn run_once(&mut self, transport: &mut impl ShadowTransport) -> Progress {
        if let Some(report) = self.pending_report.take() {
            return match transport.report(&self.credential, &report) {
                Ok(version) => {
                    self.backoff.reset();
                    self.sync.on_reported(version);
                    debug!("shadow: reported state, now at version {version}");
                    Progress::Continue
                }
                Err(TransportError::Rejected { code, message, .. }) => {
                    warn!("shadow: the server refused the reported state ({code}): {message}");
                    Progress::Continue
                }
                Err(e) => {
                    self.pending_report = Some(report);
                    self.failed(e)
                }
            };
        }
        match self.phase {
            Phase::Fetch => match transport.get_shadow(&self.credential) {
                Ok(document) => {
                    self.backoff.reset();
                    self.phase = Phase::Poll;
                    let apply = self.sync.on_document(document.as_ref());
                    self.apply(apply);
                    Progress::Continue
                }
                Err(e) => self.failed(e),
            },
            Phase::Poll => match transport.next_delta(&self.credential, self.sync.since()) {
                Ok(DeltaWait::Delta(delta)) => {
                    let apply = self.sync.on_delta(&delta);
                    self.apply(apply);
                    Progress::Continue
                }
                Ok(DeltaWait::Nothing) => Progress::Continue,
                Ok(DeltaWait::Reconnected) => {
                    self.phase = Phase::Fetch;
                    Progress::Continue
                }
                Err(e) => self.failed(e),
            },
        }
    }

    /// Runs the hook on a delta and queues the report.
    fn apply(&mut self, apply: Option<Apply>) {
        let Some(Apply { version, delta }) = apply else {
            return;
        };
        if self.stopping() {
            return;
        }
        let fields: Vec<&str> = delta.keys().map(String::as_str).collect();
        info!("shadow version {version}: applying {}", fields.join(", "));
        self.in_hook.store(true, Ordering::SeqCst);
        let applied = self.hook.apply(&self.device, version, &delta);
        self.in_hook.store(false, Ordering::SeqCst);
        let outcome = match applied {
            Ok(report) => {
                self.stats.config_applied.fetch_add(1, Ordering::SeqCst);
                Ok(report)
            }
            Err(e) => {
                self.stats.config_failed.fetch_add(1, Ordering::SeqCst);
                warn!("shadow version {version} not applied: {e}");
                Err(e.to_string())
            }
        };
        self.pending_report = self.sync.on_applied(outcome);
    }

    /// After a failed request: fetch the whole document again once the server answers.
    fn failed(&mut self, error: TransportError) -> Progress {
        self.phase = Phase::Fetch;
        // A stopping agent closes the connection under the thread's feet: not an outage.
        if matches!(error, TransportError::Unauthorized(_)) || self.stopping() {
            return Progress::Stop;
        }
        let retry_after = match &error {
            TransportError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        };
        let delay = self.backoff.on_failure(&mut self.rng, retry_after);
        // The first failure of a series is news; the retries that follow are not.
        if self.backoff.failures() == 1 {
            warn!("shadow sync: {error}; retrying");
        } else {
            debug!(
                "shadow sync: {error}; retrying in {:.1} s",
                delay.as_secs_f64()
            );
        }
        Progress::Retry(delay)
    }

    fn stopping(&self) -> bool {
        !matches!(self.stop.try_recv(), Err(mpsc::TryRecvError::Empty))
    }
}

/// The worker on its own thread.
pub struct ShadowThread {
    /// Dropped to ask the worker to stop.
    stop: Option<Sender<()>>,
    done: Receiver<()>,
    handle: JoinHandle<()>,
    in_hook: Arc<AtomicBool>,
}

impl ShadowThread {
    /// Starts `worker` over `transport`; `stop` is the sender of the worker's stop channel.
    pub fn spawn(
        worker: ShadowWorker,
        transport: impl ShadowTransport + Send + 'static,
        stop: Sender<()>,
    ) -> ShadowThread {
        let (finished, done) = mpsc::channel();
        let in_hook = worker.in_hook.clone();
        let handle = std::thread::Builder::new()
            .name("shadow".into())
            .spawn(move || {
                worker.run(transport);
                let _ = finished.send(());
            })
            .expect("the shadow thread starts");
        ShadowThread {
            stop: Some(stop),
            done,
            handle,
            in_hook,
        }
    }

    /// Asks the thread to stop; it starts no hook after this.
    pub fn request_stop(&mut self) {
        self.stop = None;
    }

    /// Asks the thread to stop and waits for it: up to `grace` while it runs the hook, a moment
    /// otherwise. A thread still inside an HTTP long-poll (which cannot be interrupted) or a
    /// hook is left to finish on its own; it starts nothing new, and what it did not report is
    /// applied again on the next start.
    pub fn join(mut self, grace: Duration) {
        self.request_stop();
        let patience = if self.in_hook.load(Ordering::SeqCst) {
            grace
        } else {
            Duration::from_millis(100)
        };
        if self.done.recv_timeout(patience).is_ok() {
            let _ = self.handle.join();
        } else {
            debug!("not waiting for the shadow thread any longer");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use drover_core::Timestamp;
    use drover_proto::shadow::{ShadowDelta, ShadowMetadataView, ShadowStateView, ShadowView};
    use serde_json::{json, Value};

    use super::*;

    /// Answers from a script; records reports.
    #[derive(Default)]
    struct Scripted {
        documents: VecDeque<Result<Option<ShadowView>, TransportError>>,
        waits: VecDeque<Result<DeltaWait, TransportError>>,
        report_results: VecDeque<Result<u64, TransportError>>,
        reports: Vec<Value>,
        polled_since: Vec<u64>,
    }

    impl ShadowTransport for Scripted {
        fn get_shadow(&mut self, _: &Credential) -> Result<Option<ShadowView>, TransportError> {
            self.documents.pop_front().expect("a scripted document")
        }

        fn report(&mut self, _: &Credential, reported: &JsonObject) -> Result<u64, TransportError> {
            self.reports.push(Value::Object(reported.clone()));
            self.report_results
                .pop_front()
                .expect("a scripted report answer")
        }

        fn next_delta(&mut self, _: &Credential, since: u64) -> Result<DeltaWait, TransportError> {
            self.polled_since.push(since);
            self.waits.pop_front().expect("a scripted wait")
        }
    }

    fn object(value: Value) -> JsonObject {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn document(version: u64, delta: Option<Value>) -> ShadowView {
        ShadowView {
            state: ShadowStateView {
                desired: JsonObject::new(),
                reported: JsonObject::new(),
                delta: delta.map(object),
            },
            metadata: ShadowMetadataView {
                desired: JsonObject::new(),
                reported: JsonObject::new(),
            },
            version,
            timestamp: Timestamp::from_millis(0),
        }
    }

    fn delta(version: u64, state: Value) -> DeltaWait {
        DeltaWait::Delta(ShadowDelta {
            state: object(state),
            metadata: JsonObject::new(),
            version,
            timestamp: Timestamp::from_millis(0),
        })
    }

    fn new_worker(stats: &Arc<Stats>) -> (ShadowWorker, Sender<()>) {
        let (stop_tx, stop) = mpsc::channel();
        let worker = ShadowWorker::new(
            DeviceId::parse("dev-1").unwrap(),
            Credential::new("secret".into()),
            ConfigHook::new(None, Duration::from_secs(1)),
            stats.clone(),
            Rng::seeded(1),
            stop,
        );
        (worker, stop_tx)
    }

    fn unreachable() -> TransportError {
        TransportError::Unreachable("connection refused".into())
    }

    #[test]
    fn the_document_then_each_delta_is_applied_and_reported() {
        let stats = Arc::new(Stats::default());
        let (mut worker, _stop) = new_worker(&stats);
        let mut transport = Scripted {
            documents: [Ok(Some(document(2, Some(json!({"led": "on"})))))].into(),
            waits: [Ok(DeltaWait::Nothing), Ok(delta(4, json!({"rate": 5})))].into(),
            report_results: [Ok(3), Ok(5)].into(),
            ..Scripted::default()
        };
        for _ in 0..5 {
            assert_eq!(worker.run_once(&mut transport), Progress::Continue);
        }
        assert_eq!(
            transport.reports,
            [json!({"led": "on"}), json!({"rate": 5})]
        );
        assert_eq!(
            transport.polled_since,
            [2, 2],
            "the long-poll asks from the applied version"
        );
        assert_eq!(Stats::get(&stats.config_applied), 2);
    }

    #[test]
    fn an_outage_keeps_the_report_and_refetches_the_document_afterwards() {
        let stats = Arc::new(Stats::default());
        let (mut worker, _stop) = new_worker(&stats);
        let mut transport = Scripted {
            documents: [
                Ok(Some(document(2, Some(json!({"led": "on"}))))),
                Ok(Some(document(3, None))),
            ]
            .into(),
            waits: [Ok(DeltaWait::Reconnected)].into(),
            report_results: [Err(unreachable()), Ok(3)].into(),
            ..Scripted::default()
        };
        assert_eq!(worker.run_once(&mut transport), Progress::Continue);
        assert!(matches!(
            worker.run_once(&mut transport),
            Progress::Retry(_)
        ));
        assert_eq!(
            worker.run_once(&mut transport),
            Progress::Continue,
            "report resent"
        );
        assert_eq!(
            worker.run_once(&mut transport),
            Progress::Continue,
            "document refetched"
        );
        assert_eq!(
            transport.reports,
            [json!({"led": "on"}), json!({"led": "on"})]
        );
        assert_eq!(
            worker.run_once(&mut transport),
            Progress::Continue,
            "reconnected"
        );
        assert_eq!(Stats::get(&stats.config_applied), 1, "applied once");
        assert!(transport.documents.is_empty());
    }

    #[test]
    fn a_refused_credential_stops_the_worker_and_a_stopping_agent_starts_no_hook() {
        let stats = Arc::new(Stats::default());
        let (mut worker, _stop) = new_worker(&stats);
        let mut transport = Scripted {
            documents: [Err(TransportError::Unauthorized("revoked".into()))].into(),
            ..Scripted::default()
        };
        assert_eq!(worker.run_once(&mut transport), Progress::Stop);

        let (mut worker, stop) = new_worker(&stats);
        drop(stop);
        let mut transport = Scripted {
            documents: [Ok(Some(document(2, Some(json!({"led": "on"})))))].into(),
            ..Scripted::default()
        };
        assert_eq!(worker.run_once(&mut transport), Progress::Continue);
        assert!(transport.reports.is_empty());
        assert_eq!(Stats::get(&stats.config_applied), 0);
    }
}
