//! The agent's side of one MQTT connection, without IO: the link's state, which acknowledgement
//! or rejection belongs to the heartbeat in flight, and the shadow messages waiting to be read.
//! The link thread feeds it rumqttc's events and carries out the [`Notice`]s it returns; the
//! heartbeat and shadow transports read it under the same lock.
//!
//! Heartbeats are the only QoS 1 messages the agent publishes, and at most one is in flight, so
//! every outgoing packet id belongs to it. A rejection on `heartbeat/rejected` belongs to the
//! heartbeat in flight if there is one (the embedded broker publishes it before the PUBACK), and
//! otherwise to the last one acknowledged (an external broker acknowledges before Drover has even
//! seen the message).

use std::collections::VecDeque;

use drover_core::DeviceId;
use drover_proto::mqtt::{self as topic, Rejection};
use drover_proto::shadow::{ShadowAccepted, ShadowDelta, ShadowView};
use rumqttc::{
    ConnectReturnCode, ConnectionError, Event, Outgoing, Packet, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use serde::de::DeserializeOwned;

/// Shadow messages kept for the shadow thread; older ones are dropped beyond this.
pub const MAX_INBOX: usize = 32;

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkState {
    /// Before the first connection attempt ended.
    Connecting,
    /// Connected; the subscriptions are not confirmed yet, so answers could be missed.
    Subscribing,
    /// Connected and subscribed.
    Ready,
    /// The last attempt failed or the connection broke; the link retries after a backoff.
    Down {
        reason: String,
        /// The broker refused the credential (CONNACK "bad user name or password" or "not
        /// authorized"): revoked, or a broker set up wrongly.
        auth_refused: bool,
    },
    /// The agent is stopping.
    Closed,
}

impl LinkState {
    /// Why nothing can be sent now.
    pub fn describe(&self) -> String {
        match self {
            LinkState::Connecting | LinkState::Subscribing => {
                "not connected to the MQTT broker yet".into()
            }
            LinkState::Ready => "connected".into(),
            LinkState::Down { reason, .. } => {
                format!("not connected to the MQTT broker ({reason})")
            }
            LinkState::Closed => "the MQTT connection is closed".into(),
        }
    }
}

/// Something the link thread has to do or log.
#[derive(Debug, Clone)]
pub enum Notice {
    /// Connected: subscribe to these answer topics.
    Subscribe(Vec<SubscribeFilter>),
    /// Subscribed: the connection is usable (the `epoch`-th time).
    Ready { epoch: u64 },
    /// The broker refused these subscriptions: their answers will not arrive.
    SubscriptionsRefused(Vec<String>),
    /// The connection attempt failed or the connection broke.
    Down { reason: String },
    /// Heartbeats the broker had acknowledged were refused by the server afterwards.
    LateRejection {
        heartbeats: usize,
        rejection: Rejection,
    },
    /// `drover/{id}/rejected`: the server did not understand a message.
    Rejected(Rejection),
    /// A message that could not be read.
    Unreadable { topic: String, error: String },
    /// A message on a topic the agent did not subscribe to.
    Unexpected { topic: String },
    /// `drover/{id}/deployments/next`: an update to install (for the update thread).
    Offer(Box<drover_proto::update::UpdateOffer>),
    /// `drover/{id}/jobs/notify`: a job execution to run (for the jobs thread).
    Job(Box<drover_proto::jobs::JobOffer>),
    /// `drover/{id}/diag/request`: a diagnostics request to answer (for the diagnostics thread).
    Diagnostics(Box<drover_proto::jobs::DiagCommand>),
}

/// How a heartbeat publish ended, if not with its PUBACK.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The server refused it (`heartbeat/rejected`).
    Rejected(Rejection),
    /// The connection broke before the acknowledgement.
    Lost(String),
}

/// An answer or push on a shadow topic.
#[derive(Debug, Clone)]
pub enum ShadowMessage {
    GetAccepted(Box<ShadowView>),
    GetRejected(Rejection),
    UpdateAccepted(ShadowAccepted),
    UpdateRejected(Rejection),
    Delta(ShadowDelta),
}

/// The session's state.
#[derive(Debug)]
pub struct Session {
    topics: Topics,
    state: LinkState,
    /// How many times the link became ready; a change tells the shadow thread to fetch again.
    epoch: u64,
    flight: Option<Flight>,
    /// The end of the last flight, until its sender collects it.
    outcome: Option<(u64, Result<(), Refusal>)>,
    /// How many heartbeats the last acknowledged publish carried, for a rejection after its PUBACK.
    last_acked: Option<usize>,
    next_flight: u64,
    inbox: VecDeque<ShadowMessage>,
}

/// The heartbeat publish waiting for its PUBACK.
#[derive(Debug, Clone, PartialEq)]
struct Flight {
    id: u64,
    heartbeats: usize,
    /// Known once rumqttc has written the packet.
    pkid: Option<u16>,
}

impl Session {
    pub fn new(device: &DeviceId) -> Session {
        Session {
            topics: Topics::new(device),
            state: LinkState::Connecting,
            epoch: 0,
            flight: None,
            outcome: None,
            last_acked: None,
            next_flight: 0,
            inbox: VecDeque::new(),
        }
    }

    pub fn state(&self) -> &LinkState {
        &self.state
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Where heartbeats are published.
    pub fn heartbeat_topic(&self) -> &str {
        &self.topics.heartbeat
    }

    /// Where shadow requests are published: `(get, update)`.
    pub fn shadow_topics(&self) -> (&str, &str) {
        (&self.topics.shadow_get, &self.topics.shadow_update)
    }

    /// Takes one event of rumqttc's event loop.
    pub fn on_event(&mut self, event: &Event) -> Vec<Notice> {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => {
                self.state = LinkState::Subscribing;
                vec![Notice::Subscribe(self.topics.filters())]
            }
            Event::Incoming(Packet::SubAck(ack)) if self.state == LinkState::Subscribing => {
                self.state = LinkState::Ready;
                self.epoch += 1;
                let mut notices = vec![Notice::Ready { epoch: self.epoch }];
                let refused: Vec<String> = self
                    .topics
                    .answers()
                    .into_iter()
                    .zip(&ack.return_codes)
                    .filter(|(_, code)| **code == SubscribeReasonCode::Failure)
                    .map(|(topic, _)| topic.to_owned())
                    .collect();
                if !refused.is_empty() {
                    notices.push(Notice::SubscriptionsRefused(refused));
                }
                notices
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if *pkid != 0 => {
                if let Some(flight) = self.flight.as_mut().filter(|f| f.pkid.is_none()) {
                    flight.pkid = Some(*pkid);
                }
                vec![]
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if self
                    .flight
                    .as_ref()
                    .is_some_and(|f| f.pkid == Some(ack.pkid))
                {
                    let flight = self.flight.take().expect("checked above");
                    self.last_acked = Some(flight.heartbeats);
                    self.outcome = Some((flight.id, Ok(())));
                }
                vec![]
            }
            Event::Incoming(Packet::Publish(publish)) => {
                self.on_message(&publish.topic, &publish.payload)
            }
            _ => vec![],
        }
    }

    /// The connection attempt failed or the connection broke.
    pub fn on_error(&mut self, error: &ConnectionError) -> Vec<Notice> {
        let auth_refused = matches!(
            error,
            ConnectionError::ConnectionRefused(
                ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
            )
        );
        let reason = match error {
            ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
                "the broker refused the device's credential (bad user name or password)".to_owned()
            }
            ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => {
                "the broker refused the connection (not authorized)".to_owned()
            }
            other => other.to_string(),
        };
        self.fail_flight(&reason);
        self.state = LinkState::Down {
            reason: reason.clone(),
            auth_refused,
        };
        vec![Notice::Down { reason }]
    }

    /// The link thread has ended.
    pub fn on_closed(&mut self) {
        self.fail_flight("the MQTT connection was closed");
        self.state = LinkState::Closed;
    }

    /// Starts a heartbeat publish of `heartbeats` heartbeats; the state when not ready.
    pub fn begin_heartbeat(&mut self, heartbeats: usize) -> Result<u64, LinkState> {
        if self.state != LinkState::Ready {
            return Err(self.state.clone());
        }
        self.next_flight += 1;
        self.flight = Some(Flight {
            id: self.next_flight,
            heartbeats,
            pkid: None,
        });
        self.outcome = None;
        Ok(self.next_flight)
    }

    /// Whether the publish `flight` has ended.
    pub fn has_outcome(&self, flight: u64) -> bool {
        self.outcome.as_ref().is_some_and(|(id, _)| *id == flight)
    }

    /// How the publish `flight` ended, once it has.
    pub fn take_outcome(&mut self, flight: u64) -> Option<Result<(), Refusal>> {
        if !self.has_outcome(flight) {
            return None;
        }
        self.outcome.take().map(|(_, outcome)| outcome)
    }

    /// Gives up waiting for `flight` (timed out): a late PUBACK for it is ignored.
    pub fn abandon(&mut self, flight: u64) {
        if self.flight.as_ref().is_some_and(|f| f.id == flight) {
            self.flight = None;
        }
    }

    /// The oldest shadow message not yet read.
    pub fn next_shadow_message(&mut self) -> Option<ShadowMessage> {
        self.inbox.pop_front()
    }

    fn fail_flight(&mut self, reason: &str) {
        if let Some(flight) = self.flight.take() {
            self.outcome = Some((flight.id, Err(Refusal::Lost(reason.to_owned()))));
        }
        self.last_acked = None;
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Vec<Notice> {
        let topics = &self.topics;
        let message = if topic == topics.heartbeat_rejected {
            return match parse::<Rejection>(topic, payload) {
                Ok(rejection) => self.on_heartbeat_rejected(rejection),
                Err(notice) => vec![notice],
            };
        } else if topic == topics.offers {
            // An empty payload answers `deployments/get` when there is nothing to install.
            if payload.is_empty() {
                return vec![];
            }
            return match parse(topic, payload) {
                Ok(offer) => vec![Notice::Offer(Box::new(offer))],
                Err(notice) => vec![notice],
            };
        } else if topic == topics.jobs {
            // An empty payload answers `jobs/get` when there is nothing to run.
            if payload.is_empty() {
                return vec![];
            }
            return match parse(topic, payload) {
                Ok(offer) => vec![Notice::Job(Box::new(offer))],
                Err(notice) => vec![notice],
            };
        } else if topic == topics.diagnostics {
            return match parse(topic, payload) {
                Ok(command) => vec![Notice::Diagnostics(Box::new(command))],
                Err(notice) => vec![notice],
            };
        } else if topic == topics.rejected {
            return match parse(topic, payload) {
                Ok(rejection) => vec![Notice::Rejected(rejection)],
                Err(notice) => vec![notice],
            };
        } else if topic == topics.get_accepted {
            parse(topic, payload).map(|view| ShadowMessage::GetAccepted(Box::new(view)))
        } else if topic == topics.get_rejected {
            parse(topic, payload).map(ShadowMessage::GetRejected)
        } else if topic == topics.update_accepted {
            parse(topic, payload).map(ShadowMessage::UpdateAccepted)
        } else if topic == topics.update_rejected {
            parse(topic, payload).map(ShadowMessage::UpdateRejected)
        } else if topic == topics.delta {
            parse(topic, payload).map(ShadowMessage::Delta)
        } else {
            return vec![Notice::Unexpected {
                topic: topic.to_owned(),
            }];
        };
        match message {
            Ok(message) => {
                if self.inbox.len() >= MAX_INBOX {
                    self.inbox.pop_front();
                }
                self.inbox.push_back(message);
                vec![]
            }
            Err(notice) => vec![notice],
        }
    }

    fn on_heartbeat_rejected(&mut self, rejection: Rejection) -> Vec<Notice> {
        if let Some(flight) = self.flight.take() {
            self.outcome = Some((flight.id, Err(Refusal::Rejected(rejection))));
            return vec![];
        }
        let heartbeats = self.last_acked.take().unwrap_or(0);
        vec![Notice::LateRejection {
            heartbeats,
            rejection,
        }]
    }
}

/// The device's topics, from `drover_proto::mqtt`.
#[derive(Debug, Clone)]
struct Topics {
    heartbeat: String,
    shadow_get: String,
    shadow_update: String,
    heartbeat_rejected: String,
    rejected: String,
    get_accepted: String,
    get_rejected: String,
    update_accepted: String,
    update_rejected: String,
    delta: String,
    offers: String,
    jobs: String,
    diagnostics: String,
}

impl Topics {
    fn new(device: &DeviceId) -> Topics {
        Topics {
            heartbeat: topic::heartbeat(device),
            shadow_get: topic::shadow_get(device, None),
            shadow_update: topic::shadow_update(device, None),
            heartbeat_rejected: topic::heartbeat_rejected(device),
            rejected: topic::rejected(device),
            get_accepted: topic::shadow_get_result(device, None, true),
            get_rejected: topic::shadow_get_result(device, None, false),
            update_accepted: topic::shadow_update_result(device, None, true),
            update_rejected: topic::shadow_update_result(device, None, false),
            delta: topic::shadow_delta(device, None),
            offers: topic::deployments_next(device),
            jobs: topic::jobs_notify(device),
            diagnostics: topic::diag_request(device),
        }
    }

    /// The topics the server answers on, subscribed one by one: never the topics the agent
    /// publishes to (it would hear its own messages), and no wildcards, so every topic comes from
    /// `drover_proto::mqtt`.
    fn answers(&self) -> [&str; 10] {
        [
            &self.heartbeat_rejected,
            &self.rejected,
            &self.get_accepted,
            &self.get_rejected,
            &self.update_accepted,
            &self.update_rejected,
            &self.delta,
            &self.offers,
            &self.jobs,
            &self.diagnostics,
        ]
    }

    fn filters(&self) -> Vec<SubscribeFilter> {
        self.answers()
            .into_iter()
            .map(|topic| SubscribeFilter::new(topic.to_owned(), QoS::AtLeastOnce))
            .collect()
    }
}

fn parse<T: DeserializeOwned>(topic: &str, payload: &[u8]) -> Result<T, Notice> {
    serde_json::from_slice(payload).map_err(|e| Notice::Unreadable {
        topic: topic.to_owned(),
        error: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use rumqttc::{ConnAck, PubAck, Publish, SubAck};
    use serde_json::json;

    use super::*;

    fn session() -> Session {
        Session::new(&DeviceId::parse("dev-1").unwrap())
    }

    fn ready(session: &mut Session) {
        let connack = ConnAck::new(ConnectReturnCode::Success, false);
        let notices = session.on_event(&Event::Incoming(Packet::ConnAck(connack)));
        assert!(matches!(&notices[..], [Notice::Subscribe(filters)] if filters.len() == 10));
        let codes = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); 10];
        let suback = SubAck::new(1, codes);
        session.on_event(&Event::Incoming(Packet::SubAck(suback)));
    }

    fn incoming(topic: &str, payload: serde_json::Value) -> Event {
        let publish = Publish::new(topic, QoS::AtLeastOnce, payload.to_string());
        Event::Incoming(Packet::Publish(publish))
    }

    fn rejection(code: &str) -> serde_json::Value {
        json!({"error": {"code": code, "message": "bad", "details": {"index": 1}}})
    }

    fn puback(pkid: u16) -> Event {
        Event::Incoming(Packet::PubAck(PubAck::new(pkid)))
    }

    #[test]
    fn the_link_is_ready_only_once_subscribed_and_subscribes_to_answers_only() {
        let mut s = session();
        assert_eq!(s.begin_heartbeat(1), Err(LinkState::Connecting));
        let connack = ConnAck::new(ConnectReturnCode::Success, false);
        let notices = s.on_event(&Event::Incoming(Packet::ConnAck(connack)));
        let [Notice::Subscribe(filters)] = &notices[..] else {
            panic!("{notices:?}")
        };
        let paths: Vec<&str> = filters.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "drover/dev-1/heartbeat/rejected",
                "drover/dev-1/rejected",
                "drover/dev-1/shadow/get/accepted",
                "drover/dev-1/shadow/get/rejected",
                "drover/dev-1/shadow/update/accepted",
                "drover/dev-1/shadow/update/rejected",
                "drover/dev-1/shadow/update/delta",
                "drover/dev-1/deployments/next",
                "drover/dev-1/jobs/notify",
                "drover/dev-1/diag/request",
            ]
        );
        assert!(s.begin_heartbeat(1).is_err(), "not before the SUBACK");
        let mut codes = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce); 10];
        codes[6] = SubscribeReasonCode::Failure;
        let notices = s.on_event(&Event::Incoming(Packet::SubAck(SubAck::new(1, codes))));
        let [Notice::Ready { epoch: 1 }, Notice::SubscriptionsRefused(refused)] = &notices[..]
        else {
            panic!("{notices:?}")
        };
        assert_eq!(refused, &["drover/dev-1/shadow/update/delta"]);
        assert!(s.begin_heartbeat(1).is_ok());
    }

    #[test]
    fn a_heartbeat_counts_only_with_its_own_puback() {
        let mut s = session();
        ready(&mut s);
        let flight = s.begin_heartbeat(3).unwrap();
        s.on_event(&Event::Outgoing(Outgoing::Publish(0)));
        s.on_event(&Event::Outgoing(Outgoing::Publish(7)));
        s.on_event(&puback(6));
        assert!(!s.has_outcome(flight), "another packet's PUBACK");
        s.on_event(&puback(7));
        assert!(matches!(s.take_outcome(flight), Some(Ok(()))));
        assert!(s.take_outcome(flight).is_none());
    }

    #[test]
    fn a_rejection_belongs_to_the_heartbeat_in_flight_or_else_to_the_last_acknowledged() {
        let mut s = session();
        ready(&mut s);
        // Embedded broker: the rejection comes before the PUBACK.
        let flight = s.begin_heartbeat(2).unwrap();
        s.on_event(&Event::Outgoing(Outgoing::Publish(1)));
        let notices = s.on_event(&incoming(
            "drover/dev-1/heartbeat/rejected",
            rejection("invalid_metric"),
        ));
        assert!(notices.is_empty());
        let Some(Err(Refusal::Rejected(r))) = s.take_outcome(flight) else {
            panic!("expected a rejection")
        };
        assert_eq!(r.error.code, "invalid_metric");
        assert!(
            s.on_event(&puback(1)).is_empty(),
            "the late PUBACK is ignored"
        );
        // External broker: the PUBACK first, the rejection after.
        let flight = s.begin_heartbeat(4).unwrap();
        s.on_event(&Event::Outgoing(Outgoing::Publish(2)));
        s.on_event(&puback(2));
        assert!(matches!(s.take_outcome(flight), Some(Ok(()))));
        let notices = s.on_event(&incoming(
            "drover/dev-1/heartbeat/rejected",
            rejection("invalid_metric"),
        ));
        assert!(
            matches!(&notices[..], [Notice::LateRejection { heartbeats: 4, .. }]),
            "{notices:?}"
        );
        let notices = s.on_event(&incoming(
            "drover/dev-1/heartbeat/rejected",
            rejection("invalid_metric"),
        ));
        assert!(
            matches!(&notices[..], [Notice::LateRejection { heartbeats: 0, .. }]),
            "counted once"
        );
    }

    #[test]
    fn a_broken_connection_fails_the_flight_and_bumps_the_epoch_on_return() {
        let mut s = session();
        ready(&mut s);
        let flight = s.begin_heartbeat(1).unwrap();
        let error = ConnectionError::Io(std::io::Error::other("reset"));
        let notices = s.on_error(&error);
        assert!(matches!(&notices[..], [Notice::Down { .. }]));
        assert!(matches!(
            s.take_outcome(flight),
            Some(Err(Refusal::Lost(_)))
        ));
        assert!(matches!(
            s.begin_heartbeat(1),
            Err(LinkState::Down {
                auth_refused: false,
                ..
            })
        ));
        ready(&mut s);
        assert_eq!(s.epoch(), 2);
        let refused = ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword);
        s.on_error(&refused);
        assert!(matches!(
            s.state(),
            LinkState::Down {
                auth_refused: true,
                ..
            }
        ));
        s.on_closed();
        assert_eq!(s.begin_heartbeat(1), Err(LinkState::Closed));
    }

    #[test]
    fn shadow_answers_wait_in_the_inbox_and_junk_is_reported() {
        let mut s = session();
        ready(&mut s);
        let delta = json!({"state": {"led": "on"}, "metadata": {}, "version": 4, "timestamp": "2024-01-01T00:00:00Z"});
        assert!(s
            .on_event(&incoming("drover/dev-1/shadow/update/delta", delta))
            .is_empty());
        let notices = s.on_event(&incoming(
            "drover/dev-1/shadow/get/accepted",
            json!({"nonsense": 1}),
        ));
        assert!(matches!(&notices[..], [Notice::Unreadable { .. }]));
        let notices = s.on_event(&incoming(
            "drover/dev-1/rejected",
            rejection("invalid_request"),
        ));
        assert!(matches!(&notices[..], [Notice::Rejected(_)]));
        let notices = s.on_event(&incoming("drover/dev-2/shadow/update/delta", json!({})));
        assert!(matches!(&notices[..], [Notice::Unexpected { .. }]));
        let Some(ShadowMessage::Delta(delta)) = s.next_shadow_message() else {
            panic!("expected the delta")
        };
        assert_eq!(delta.version, 4);
        assert!(s.next_shadow_message().is_none());
        for _ in 0..MAX_INBOX + 5 {
            s.on_event(&incoming(
                "drover/dev-1/shadow/get/rejected",
                rejection("not_found"),
            ));
        }
        let mut n_kept = 0;
        while s.next_shadow_message().is_some() {
            n_kept += 1;
        }
        assert_eq!(n_kept, MAX_INBOX);
    }

    #[test]
    fn job_executions_and_diagnostics_requests_are_handed_on() {
        use drover_proto::jobs::{DiagAction, DiagCommand, ExecutionId, JobId, JobKind, JobOffer};
        let mut s = session();
        ready(&mut s);
        let deadline = drover_core::Timestamp::from_millis(1_800_000_000_000);
        let offer = JobOffer {
            job_id: JobId(3),
            execution_id: ExecutionId(9),
            attempt: 1,
            kind: JobKind::Reboot,
            payload: None,
            deadline,
        };
        let notices = s.on_event(&incoming(
            "drover/dev-1/jobs/notify",
            serde_json::to_value(&offer).unwrap(),
        ));
        assert!(
            matches!(&notices[..], [Notice::Job(got)] if **got == offer),
            "{notices:?}"
        );
        // The answer to `jobs/get` when nothing is pending.
        let empty = Publish::new("drover/dev-1/jobs/notify", QoS::AtLeastOnce, Vec::new());
        assert!(s
            .on_event(&Event::Incoming(Packet::Publish(empty)))
            .is_empty());
        let command = DiagCommand {
            request_id: "diag-1".into(),
            action: DiagAction::Ping,
            lines: None,
            deadline,
        };
        let notices = s.on_event(&incoming(
            "drover/dev-1/diag/request",
            serde_json::to_value(&command).unwrap(),
        ));
        assert!(
            matches!(&notices[..], [Notice::Diagnostics(got)] if **got == command),
            "{notices:?}"
        );
        let notices = s.on_event(&incoming(
            "drover/dev-1/diag/request",
            json!({"nonsense": 1}),
        ));
        assert!(
            matches!(&notices[..], [Notice::Unreadable { .. }]),
            "{notices:?}"
        );
    }
}
