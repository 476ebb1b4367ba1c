//! Heartbeats and the shadow over MQTT 3.1.1 (rumqttc's blocking client), one connection for
//! both. The topic layout is `drover_proto::mqtt`; payloads are the HTTP API's JSON.
//!
//! The device logs in with client id = user name = its device id and its credential as password,
//! with a clean session: the agent's own buffer, not the broker, keeps what was not acknowledged.
//! A link thread owns the connection: it reconnects with the agent's backoff (full jitter),
//! subscribes to the answer topics after every connect, and feeds rumqttc's events to the pure
//! [`Session`]. [`MqttHeartbeats`] (for the heartbeat loop) and [`MqttShadow`] (for the shadow
//! thread) publish through the client and wait on the session for their answers.
//!
//! Heartbeats go out with QoS 1 and count as sent only at their PUBACK, which the embedded broker
//! sends once the heartbeat is stored. Shadow requests go out with QoS 0: their answers on the
//! `…/accepted` and `…/rejected` topics are the acknowledgement, and a lost request is retried
//! after a timeout like a lost answer.

pub mod session;

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use drover_core::shadow::JsonObject;
use drover_core::DeviceId;
use drover_proto::device_api::Heartbeat;
use drover_proto::mqtt::Rejection;
use drover_proto::shadow::{ShadowDelta, ShadowView};
use rumqttc::{Client, Connection, Event, MqttOptions, Outgoing, QoS};
use serde_json::json;

use crate::agent::{wait, Signal, Stats};
use crate::backoff::Backoff;
use crate::config::MqttAddress;
use crate::http::DELTA_WAIT;
use crate::random::Rng;
use crate::transport::{
    Credential, DeltaWait, Provisioning, ShadowTransport, Transport, TransportError,
};

pub use session::{LinkState, Notice, Refusal, Session, ShadowMessage};

/// How often the client pings an idle broker; the broker drops it after 1.5 times this without
/// a packet.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Largest heartbeat payload: a flushed buffer is split into batches of at most this size (and at
/// most [`crate::scheduler::MAX_BATCH`] heartbeats), well below the brokers' packet limits.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// Largest packet in either direction: the server's body limit plus MQTT framing, as the
/// embedded broker allows.
const MAX_PACKET: usize = (1 << 20) + 1024;

/// Requests queued for the connection; publishes are few and small, so this never fills.
const REQUEST_QUEUE: usize = 16;

/// Where the link hands what the server pushes: update offers to the update thread, job
/// executions and diagnostics requests to the jobs threads. `None` drops them (the feature is off).
#[derive(Debug, Default)]
pub struct Pushes {
    pub offers: Option<Sender<drover_proto::update::UpdateOffer>>,
    pub jobs: Option<Sender<drover_proto::jobs::JobOffer>>,
    pub diagnostics: Option<Sender<drover_proto::jobs::DiagCommand>>,
}

/// The connection and its thread.
pub struct Link {
    client: Client,
    shared: Arc<Shared>,
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

/// What the link thread and the transports share.
struct Shared {
    session: Mutex<Session>,
    /// Signalled after every change of the session.
    changed: Condvar,
}

impl Link {
    /// Connects (in the background) to the broker at `address` as `device`. `signals` hears about
    /// every successful (re)connect and about heartbeats refused after their acknowledgement.
    pub fn start(
        address: &MqttAddress,
        device: &DeviceId,
        credential: &Credential,
        stats: Arc<Stats>,
        signals: Sender<Signal>,
        rng: Rng,
        pushes: Pushes,
    ) -> Link {
        let mut options = MqttOptions::new(device.as_str(), &address.host, address.port);
        options
            .set_credentials(device.as_str(), credential.expose())
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, connection) = Client::new(options, REQUEST_QUEUE);
        let shared = Arc::new(Shared {
            session: Mutex::new(Session::new(device)),
            changed: Condvar::new(),
        });
        let (stop, stopped) = mpsc::channel();
        let thread = LinkThread {
            client: client.clone(),
            shared: shared.clone(),
            broker: address.to_string(),
            stats,
            signals,
            stop: stopped,
            backoff: Backoff::standard(),
            rng,
            pushes,
            offers_get: drover_proto::mqtt::deployments_get(device),
            jobs_get: drover_proto::mqtt::jobs_get(device),
        };
        let handle = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || thread.run(connection))
            .expect("the MQTT thread starts");
        Link {
            client,
            shared,
            stop,
            handle,
        }
    }

    /// The heartbeat side; `http` confirms with the server when the broker refuses the credential.
    pub fn heartbeats<P: Provisioning>(&self, http: P, timeout: Duration) -> MqttHeartbeats<P> {
        MqttHeartbeats {
            client: self.client.clone(),
            shared: self.shared.clone(),
            http,
            timeout,
        }
    }

    /// The shadow side.
    pub fn shadow(&self, timeout: Duration) -> MqttShadow {
        MqttShadow {
            client: self.client.clone(),
            shared: self.shared.clone(),
            timeout,
            epoch: 0,
            stash: None,
            next_token: 0,
        }
    }

    /// Disconnects and waits for the link thread (at most one connection attempt, 5 s, when the
    /// broker is unreachable).
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.client.try_disconnect();
        let _ = self.handle.join();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `done` holds or `deadline` passes; returns the session either way.
    fn wait_until(
        &self,
        deadline: Instant,
        mut done: impl FnMut(&mut Session) -> bool,
    ) -> MutexGuard<'_, Session> {
        let mut session = self.lock();
        loop {
            if done(&mut session) {
                return session;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return session;
            }
            session = self
                .changed
                .wait_timeout(session, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The session once the link is ready, waiting for it up to `deadline`.
    fn ready(&self, deadline: Instant) -> Result<MutexGuard<'_, Session>, TransportError> {
        let session = self.wait_until(deadline, |s| {
            matches!(s.state(), LinkState::Ready | LinkState::Closed)
        });
        match session.state() {
            LinkState::Ready => Ok(session),
            other => Err(TransportError::Unreachable(other.describe())),
        }
    }

    /// Waits for the next change while expecting an answer about `what`; an error when the
    /// connection of `epoch` broke or the deadline passed.
    fn answer_wait<'a>(
        &'a self,
        session: MutexGuard<'a, Session>,
        deadline: Instant,
        epoch: u64,
        what: &str,
    ) -> Result<MutexGuard<'a, Session>, TransportError> {
        if session.epoch() != epoch || *session.state() != LinkState::Ready {
            return Err(TransportError::Unreachable(format!(
                "the MQTT connection broke while waiting for the answer about {what}"
            )));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(TransportError::Unreachable(format!(
                "no answer about {what} in time"
            )));
        }
        Ok(self
            .changed
            .wait_timeout(session, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0)
    }

    fn update<T>(&self, change: impl FnOnce(&mut Session) -> T) -> T {
        let result = change(&mut self.lock());
        self.changed.notify_all();
        result
    }
}

/// The link thread's state.
struct LinkThread {
    client: Client,
    shared: Arc<Shared>,
    /// For the log: `mqtt://host:port`.
    broker: String,
    stats: Arc<Stats>,
    signals: Sender<Signal>,
    stop: Receiver<()>,
    backoff: Backoff,
    rng: Rng,
    /// Where what the server pushes goes.
    pushes: Pushes,
    /// `drover/{id}/deployments/get` and `…/jobs/get`, published after each connect to catch an
    /// offer or a job execution started while the device was away.
    offers_get: String,
    jobs_get: String,
}

impl LinkThread {
    fn run(mut self, mut connection: Connection) {
        // `recv` drives the connection: it connects, pings, writes what the client queued and
        // returns each event. After an error the next call connects again.
        while let Ok(event) = connection.recv() {
            match event {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(event) => {
                    let notices = self.shared.update(|session| session.on_event(&event));
                    notices
                        .into_iter()
                        .for_each(|notice| self.carry_out(notice));
                }
                Err(error) => {
                    let notices = self.shared.update(|session| session.on_error(&error));
                    notices
                        .into_iter()
                        .for_each(|notice| self.carry_out(notice));
                    let delay = self.backoff.on_failure(&mut self.rng, None);
                    if wait(&self.stop, delay) {
                        break;
                    }
                }
            }
        }
        self.shared.update(Session::on_closed);
    }

    fn carry_out(&mut self, notice: Notice) {
        match notice {
            Notice::Subscribe(filters) => {
                if let Err(e) = self.client.try_subscribe_many(filters) {
                    warn!("cannot subscribe to the answer topics: {e}");
                }
            }
            Notice::Ready { epoch } => {
                self.backoff.reset();
                self.stats.mqtt_connects.store(epoch, Ordering::SeqCst);
                info!("connected to the MQTT broker {}", self.broker);
                let _ = self.signals.send(Signal::Connected);
                for (wanted, topic) in [
                    (self.pushes.offers.is_some(), &self.offers_get),
                    (self.pushes.jobs.is_some(), &self.jobs_get),
                ] {
                    if !wanted {
                        continue;
                    }
                    if let Err(e) =
                        self.client
                            .try_publish(topic.clone(), QoS::AtLeastOnce, false, Vec::new())
                    {
                        debug!("cannot ask {topic} for what is pending: {e}");
                    }
                }
            }
            Notice::SubscriptionsRefused(topics) => warn!(
                "the MQTT broker refused the subscriptions to {}: answers on them will be missed",
                topics.join(", ")
            ),
            Notice::Down { reason } => {
                // The first failure of a series is news; the retries that follow are not.
                let level = if self.backoff.failures() == 0 {
                    "warn"
                } else {
                    "debug"
                };
                let ceiling = self.backoff.ceiling().as_secs();
                crate::log::write(
                    level,
                    format_args!(
                        "MQTT broker {}: {reason}; reconnecting within {ceiling} s",
                        self.broker
                    ),
                );
            }
            Notice::LateRejection {
                heartbeats,
                rejection,
            } => {
                warn!(
                    "the server refused {heartbeats} heartbeat(s) the broker had acknowledged ({}): {}",
                    rejection.error.code, rejection.error.message
                );
                let _ = self.signals.send(Signal::Refused(heartbeats as u64));
            }
            Notice::Rejected(rejection) => {
                self.stats.rejected_messages.fetch_add(1, Ordering::SeqCst);
                warn!(
                    "the server rejected a message ({}): {}",
                    rejection.error.code, rejection.error.message
                );
            }
            Notice::Unreadable { topic, error } => warn!("unreadable message on {topic}: {error}"),
            Notice::Unexpected { topic } => debug!("ignoring a message on {topic}"),
            Notice::Offer(offer) => match &self.pushes.offers {
                Some(offers) => {
                    let _ = offers.send(*offer);
                }
                None => debug!("ignoring an update offer: updates are not enabled"),
            },
            Notice::Job(offer) => match &self.pushes.jobs {
                Some(jobs) => {
                    let _ = jobs.send(*offer);
                }
                None => debug!("ignoring a job offer: jobs are not enabled"),
            },
            Notice::Diagnostics(command) => match &self.pushes.diagnostics {
                Some(diagnostics) => {
                    let _ = diagnostics.send(*command);
                }
                None => debug!("ignoring a diagnostics request: jobs are not enabled"),
            },
        }
    }
}

/// Heartbeats over the link.
pub struct MqttHeartbeats<P> {
    client: Client,
    shared: Arc<Shared>,
    http: P,
    /// How long to wait for a PUBACK.
    timeout: Duration,
}

impl<P: Provisioning> Transport for MqttHeartbeats<P> {
    fn send_heartbeats(
        &mut self,
        credential: &Credential,
        heartbeats: &[Heartbeat],
    ) -> Result<u64, TransportError> {
        let mut offset = 0;
        for (payload, count) in encode_heartbeats(heartbeats, MAX_PAYLOAD) {
            self.publish(credential, payload, count)
                .map_err(|e| e.offset_index(offset))?;
            offset += count;
        }
        Ok(heartbeats.len() as u64)
    }
}

impl<P: Provisioning> MqttHeartbeats<P> {
    /// Publishes one payload and waits for its PUBACK.
    fn publish(
        &mut self,
        credential: &Credential,
        payload: Vec<u8>,
        count: usize,
    ) -> Result<(), TransportError> {
        let deadline = Instant::now() + self.timeout;
        // Right after the start, give the first connection attempt its chance.
        let mut session = self.shared.wait_until(deadline, |s| {
            !matches!(s.state(), LinkState::Connecting | LinkState::Subscribing)
        });
        let flight = match session.begin_heartbeat(count) {
            Ok(flight) => flight,
            Err(LinkState::Down {
                reason,
                auth_refused: true,
            }) => {
                drop(session);
                return Err(self.confirm_refusal(credential, reason));
            }
            Err(state) => return Err(TransportError::Unreachable(state.describe())),
        };
        let topic = session.heartbeat_topic().to_owned();
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            session.abandon(flight);
            return Err(TransportError::Unreachable(format!(
                "cannot queue the heartbeat: {e}"
            )));
        }
        drop(session);
        let mut session = self.shared.wait_until(deadline, |s| s.has_outcome(flight));
        match session.take_outcome(flight) {
            Some(Ok(())) => Ok(()),
            Some(Err(Refusal::Rejected(rejection))) => Err(rejection_error(rejection)),
            Some(Err(Refusal::Lost(reason))) => Err(TransportError::Unreachable(reason)),
            None => {
                session.abandon(flight);
                Err(TransportError::Unreachable(format!(
                    "the MQTT broker did not acknowledge the heartbeat within {} s",
                    self.timeout.as_secs()
                )))
            }
        }
    }

    /// The broker refused the credential: revoked (the server refuses it too), or a broker that
    /// does not know it, which waiting may fix.
    fn confirm_refusal(&mut self, credential: &Credential, reason: String) -> TransportError {
        match self.http.whoami(credential) {
            Err(TransportError::Unauthorized(message)) => TransportError::Unauthorized(message),
            Ok(_) => TransportError::Unreachable(format!(
                "{reason}, but the server accepts the credential: check the broker's authentication"
            )),
            Err(other) => TransportError::Unreachable(format!(
                "{reason}; the server cannot confirm the credential: {other}"
            )),
        }
    }
}

/// The classic shadow over the link.
pub struct MqttShadow {
    client: Client,
    shared: Arc<Shared>,
    /// How long to wait for an answer.
    timeout: Duration,
    /// The link's epoch when the document was last fetched; a newer one means reconnected.
    epoch: u64,
    /// A delta that arrived while waiting for another answer.
    stash: Option<ShadowDelta>,
    next_token: u64,
}

impl ShadowTransport for MqttShadow {
    fn get_shadow(&mut self, _: &Credential) -> Result<Option<ShadowView>, TransportError> {
        let deadline = Instant::now() + self.timeout;
        let shared = self.shared.clone();
        let mut session = shared.ready(deadline)?;
        self.epoch = session.epoch();
        // Answers to an earlier request that timed out are stale now; deltas are kept.
        while let Some(message) = session.next_shadow_message() {
            self.keep_delta(message);
        }
        let token = self.token();
        let topic = session.shadow_topics().0.to_owned();
        self.publish(topic, json!({ "clientToken": token }))?;
        loop {
            while let Some(message) = session.next_shadow_message() {
                match message {
                    ShadowMessage::GetAccepted(view) => return Ok(Some(*view)),
                    ShadowMessage::GetRejected(rejection) if answers(&rejection, &token) => {
                        return match rejection.error.code.as_str() {
                            "not_found" => Ok(None),
                            _ => Err(rejection_error(rejection)),
                        };
                    }
                    other => self.keep_delta(other),
                }
            }
            session = shared.answer_wait(session, deadline, self.epoch, "the shadow")?;
        }
    }

    fn report(&mut self, _: &Credential, reported: &JsonObject) -> Result<u64, TransportError> {
        let deadline = Instant::now() + self.timeout;
        let shared = self.shared.clone();
        let mut session = shared.ready(deadline)?;
        let epoch = session.epoch();
        let token = self.token();
        let topic = session.shadow_topics().1.to_owned();
        self.publish(
            topic,
            json!({ "state": { "reported": reported }, "clientToken": token }),
        )?;
        loop {
            while let Some(message) = session.next_shadow_message() {
                match message {
                    ShadowMessage::UpdateAccepted(accepted)
                        if accepted.client_token.as_deref() == Some(token.as_str()) =>
                    {
                        return Ok(accepted.version);
                    }
                    ShadowMessage::UpdateRejected(rejection) if answers(&rejection, &token) => {
                        return Err(rejection_error(rejection));
                    }
                    other => self.keep_delta(other),
                }
            }
            session = shared.answer_wait(session, deadline, epoch, "the reported state")?;
        }
    }

    fn next_delta(&mut self, _: &Credential, since: u64) -> Result<DeltaWait, TransportError> {
        let deadline = Instant::now() + DELTA_WAIT;
        if let Some(delta) = self.stash.take().filter(|d| d.version > since) {
            return Ok(DeltaWait::Delta(delta));
        }
        let mut session = self.shared.lock();
        loop {
            while let Some(message) = session.next_shadow_message() {
                if let ShadowMessage::Delta(delta) = message {
                    if delta.version > since {
                        return Ok(DeltaWait::Delta(delta));
                    }
                }
            }
            if session.epoch() != self.epoch {
                return Ok(DeltaWait::Reconnected);
            }
            if *session.state() == LinkState::Closed {
                return Err(TransportError::Unreachable(LinkState::Closed.describe()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(DeltaWait::Nothing);
            }
            session = self
                .shared
                .changed
                .wait_timeout(session, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl MqttShadow {
    fn publish(&self, topic: String, body: serde_json::Value) -> Result<(), TransportError> {
        self.client
            .try_publish(topic, QoS::AtMostOnce, false, body.to_string())
            .map_err(|e| TransportError::Unreachable(format!("cannot queue the request: {e}")))
    }

    /// Keeps the newest delta from messages read while waiting for something else.
    fn keep_delta(&mut self, message: ShadowMessage) {
        if let ShadowMessage::Delta(delta) = message {
            if self
                .stash
                .as_ref()
                .is_none_or(|kept| delta.version > kept.version)
            {
                self.stash = Some(delta);
            }
        }
    }

    fn token(&mut self) -> String {
        self.next_token += 1;
        format!("agent-{}", self.next_token)
    }
}

/// Splits heartbeats into payloads of at most `max_bytes` (unless one heartbeat alone is larger):
/// one heartbeat is sent as it is, several as `{"heartbeats": [...]}`. Returns each payload with
/// the number of heartbeats in it.
pub fn encode_heartbeats(heartbeats: &[Heartbeat], max_bytes: usize) -> Vec<(Vec<u8>, usize)> {
    if let [one] = heartbeats {
        return vec![(serde_json::to_vec(one).expect("a heartbeat serialises"), 1)];
    }
    const OPEN: &[u8] = b"{\"heartbeats\":[";
    const CLOSE: &[u8] = b"]}";
    let mut payloads = Vec::new();
    let mut payload = OPEN.to_vec();
    let mut count = 0;
    for heartbeat in heartbeats {
        let item = serde_json::to_vec(heartbeat).expect("a heartbeat serialises");
        if count > 0 && payload.len() + 1 + item.len() + CLOSE.len() > max_bytes {
            payload.extend_from_slice(CLOSE);
            payloads.push((std::mem::replace(&mut payload, OPEN.to_vec()), count));
            count = 0;
        }
        if count > 0 {
            payload.push(b',');
        }
        payload.extend_from_slice(&item);
        count += 1;
    }
    if count > 0 {
        payload.extend_from_slice(CLOSE);
        payloads.push((payload, count));
    }
    payloads
}

/// A rejection as a transport error: the server's own trouble is worth retrying, anything else
/// is final.
pub fn rejection_error(rejection: Rejection) -> TransportError {
    let error = rejection.error;
    let details = error.details.unwrap_or_default();
    match error.code.as_str() {
        "unavailable" | "internal" | "rate_limited" => TransportError::Unavailable {
            status: None,
            retry_after: details["retry_after_secs"]
                .as_u64()
                .map(Duration::from_secs),
            message: error.message,
        },
        _ => TransportError::Rejected {
            status: None,
            code: error.code,
            message: error.message,
            index: details["index"].as_u64().map(|idx| idx as usize),
        },
    }
}

/// Whether a rejection answers the request with `token` (a rejection without a token may be
/// anybody's; the agent has one request out at a time, so it takes it).
fn answers(rejection: &Rejection, token: &str) -> bool {
    rejection.client_token.as_deref().is_none_or(|t| t == token)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use drover_core::health::MetricName;
    use drover_proto::device_api::HeartbeatBatch;
    use drover_proto::error::ErrorDetail;

    use super::*;

    fn heartbeat(n: u32) -> Heartbeat {
        let mut metrics = BTreeMap::new();
        metrics.insert(MetricName::parse("uptime_s").unwrap(), f64::from(n));
        Heartbeat {
            sent_at: None,
            firmware: None,
            interval_s: None,
            boot_slot: None,
            metrics,
        }
    }

    #[test]
    fn one_heartbeat_goes_alone_and_a_backlog_in_batches_within_the_size_limit() {
        let one = encode_heartbeats(&[heartbeat(1)], MAX_PAYLOAD);
        let parsed: Heartbeat = serde_json::from_slice(&one[0].0).unwrap();
        assert_eq!((one.len(), one[0].1, parsed.metrics.len()), (1, 1, 1));

        let backlog: Vec<Heartbeat> = (0..100).map(heartbeat).collect();
        let single_size = serde_json::to_vec(&backlog[0]).unwrap().len();
        let payloads = encode_heartbeats(&backlog, 10 * single_size + 40);
        assert!(payloads.len() > 1);
        let mut uptimes = Vec::new();
        for (payload, count) in &payloads {
            assert!(payload.len() <= 10 * single_size + 40);
            let batch: HeartbeatBatch = serde_json::from_slice(payload).unwrap();
            assert_eq!(batch.heartbeats.len(), *count);
            uptimes.extend(
                batch
                    .heartbeats
                    .iter()
                    .map(|hb| hb.metrics.values().next().copied().unwrap()),
            );
        }
        let expected: Vec<f64> = (0..100).map(f64::from).collect();
        assert_eq!(uptimes, expected, "all of them, in order");
        assert!(encode_heartbeats(&[], MAX_PAYLOAD).is_empty());
    }

    #[test]
    fn rejections_are_final_unless_the_server_itself_is_in_trouble() {
        let rejection = |code: &str, details| Rejection {
            error: ErrorDetail {
                code: code.into(),
                message: "why".into(),
                details: Some(details),
            },
            client_token: None,
        };
        let error = rejection_error(rejection("invalid_metric", json!({"index": 3})));
        assert!(matches!(
            error,
            TransportError::Rejected {
                index: Some(3),
                status: None,
                ..
            }
        ));
        assert!(!error.is_transient());
        assert!(error.to_string().contains("(invalid_metric)"), "{error}");
        let busy = rejection_error(rejection("unavailable", json!({"retry_after_secs": 5})));
        assert!(busy.is_transient());
        assert!(
            matches!(busy, TransportError::Unavailable { retry_after: Some(d), .. } if d == Duration::from_secs(5))
        );
    }
}
