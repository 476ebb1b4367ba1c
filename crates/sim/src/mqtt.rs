//! One virtual device's MQTT connection: rumqttc's async client on the simulator's shared runtime,
//! driven by the agent's own session state machine ([`drover_agent::mqtt::session::Session`]),
//! which decides what every packet means (acknowledgements, rejections, shadow answers, pushed
//! offers). The pump reconnects with the agent's backoff and full jitter, and drops the
//! connection for the length of each simulated disconnect period.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_agent::backoff::Backoff;
use drover_agent::mqtt::session::{LinkState, Notice, Refusal, Session, ShadowMessage};
use drover_agent::mqtt::{encode_heartbeats, rejection_error, KEEP_ALIVE, MAX_PAYLOAD};
use drover_agent::random::Rng;
use drover_agent::transport::{Credential, TransportError};
use drover_core::DeviceId;
use drover_proto::device_api::Heartbeat;
use drover_proto::update::UpdateOffer;
use rumqttc::{AsyncClient, ConnectionError, EventLoop, MqttOptions, QoS};
use tokio::sync::{watch, Notify};

use crate::net::Link;
use crate::sample::SimRng;

/// How long a heartbeat waits for its PUBACK.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
}

/// A device's MQTT link, shared by its heartbeat, shadow and update loops.
pub struct MqttLink {
    device: DeviceId,
    broker: BrokerAddress,
    credential: Credential,
    inner: Mutex<Inner>,
    /// Woken on every change of the session (state, outcomes, inbox, offers).
    changed: Notify,
}

struct Inner {
    session: Session,
    client: Option<AsyncClient>,
    offer: Option<UpdateOffer>,
}

impl MqttLink {
    pub fn new(device: DeviceId, broker: BrokerAddress, credential: Credential) -> MqttLink {
        MqttLink {
            inner: Mutex::new(Inner {
                session: Session::new(&device),
                client: None,
                offer: None,
            }),
            device,
            broker,
            credential,
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many times the connection became usable (a change means: fetch the shadow again).
    pub fn epoch(&self) -> u64 {
        self.lock().session.epoch()
    }

    /// Whether the connection is up and subscribed.
    pub fn is_ready(&self) -> bool {
        self.lock().session.state() == &LinkState::Ready
    }

    /// The offer the server pushed last, if not yet taken.
    pub fn take_offer(&self) -> Option<UpdateOffer> {
        self.lock().offer.take()
    }

    /// The shadow messages received since the last call.
    pub fn shadow_messages(&self) -> Vec<ShadowMessage> {
        let mut inner = self.lock();
        std::iter::from_fn(|| inner.session.next_shadow_message()).collect()
    }

    /// A future that completes at the next change of the session; `enable` it before checking
    /// the state it waits for, so a change in between is not missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Keeps the connection up until `stop`: connects, feeds every event to the session, carries
    /// out its notices, and after a failure waits a backoff with full jitter before trying again.
    pub async fn pump(&self, link: &Link, seed: u64, mut stop: watch::Receiver<bool>) {
        let mut rng = Rng::seeded(seed);
        let mut backoff = Backoff::standard();
        while !*stop.borrow() {
            if let Some(until) = link.down_until(Instant::now()) {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = stop.changed() => break,
                }
                continue;
            }
            let mut options =
                MqttOptions::new(self.device.as_str(), &self.broker.host, self.broker.port);
            options
                .set_credentials(self.device.as_str(), self.credential.expose())
                .set_keep_alive(KEEP_ALIVE)
                .set_clean_session(true)
                .set_max_packet_size(MAX_PAYLOAD + 1024, MAX_PAYLOAD + 1024);
            let (client, mut events) = AsyncClient::new(options, 8);
            self.lock().client = Some(client.clone());
            let outage = link.next_down_after(Instant::now());
            let ended = tokio::select! {
                ended = self.drive(&mut events, &client, &mut backoff) => ended,
                _ = crate::net::sleep_until(outage) => {
                    ConnectionError::Io(std::io::Error::other("the link dropped (simulated disconnect)"))
                }
                _ = stop.changed() => {
                    let _ = client.try_disconnect();
                    break;
                }
            };
            {
                let mut inner = self.lock();
                inner.client = None;
                inner.session.on_error(&ended);
            }
            self.changed.notify_waiters();
            let delay = backoff.on_failure(&mut rng, None);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.changed() => break,
            }
        }
        self.lock().session.on_closed();
        self.changed.notify_waiters();
    }

    /// Polls one connection until it fails; returns why.
    async fn drive(
        &self,
        events: &mut EventLoop,
        client: &AsyncClient,
        backoff: &mut Backoff,
    ) -> ConnectionError {
        loop {
            let event = match events.poll().await {
                Ok(event) => event,
                Err(e) => return e,
            };
            let notices = self.lock().session.on_event(&event);
            for notice in notices {
                match notice {
                    Notice::Subscribe(filters) => {
                        if let Err(e) = client.subscribe_many(filters).await {
                            return ConnectionError::Io(std::io::Error::other(e.to_string()));
                        }
                    }
                    Notice::Ready { .. } => backoff.reset(),
                    Notice::Offer(offer) => self.lock().offer = Some(*offer),
                    _ => {}
                }
            }
            self.changed.notify_waiters();
        }
    }

    /// Publishes heartbeats (in payloads within the size limit) and waits for each PUBACK, after
    /// the link's delay.
    pub async fn send_heartbeats(
        &self,
        link: &Link,
        rng: &mut SimRng,
        heartbeats: &[Heartbeat],
    ) -> Result<u64, TransportError> {
        crate::api::through(link, rng).await?;
        let mut offset = 0;
        for (payload, count) in encode_heartbeats(heartbeats, MAX_PAYLOAD) {
            self.publish(payload, count)
                .await
                .map_err(|e| e.offset_index(offset))?;
            offset += count;
        }
        Ok(heartbeats.len() as u64)
    }

    async fn publish(&self, payload: Vec<u8>, count: usize) -> Result<(), TransportError> {
        let deadline = tokio::time::Instant::now() + PUBACK_TIMEOUT;
        // Like the agent: right after a (re)connect, give the attempt its chance to finish.
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let state = self.lock().session.state().clone();
            if !matches!(state, LinkState::Connecting | LinkState::Subscribing) {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        let (flight, topic, client) = {
            let mut inner = self.lock();
            let flight = inner
                .session
                .begin_heartbeat(count)
                .map_err(|state| TransportError::Unreachable(state.describe()))?;
            let topic = inner.session.heartbeat_topic().to_owned();
            let Some(client) = inner.client.clone() else {
                inner.session.abandon(flight);
                return Err(TransportError::Unreachable("not connected".into()));
            };
            (flight, topic, client)
        };
        if let Err(e) = client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            self.lock().session.abandon(flight);
            return Err(TransportError::Unreachable(format!(
                "cannot queue the heartbeat: {e}"
            )));
        }
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = self.lock().session.take_outcome(flight) {
                return match outcome {
                    Ok(()) => Ok(()),
                    Err(Refusal::Rejected(rejection)) => Err(rejection_error(rejection)),
                    Err(Refusal::Lost(reason)) => Err(TransportError::Unreachable(reason)),
                };
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.lock().session.abandon(flight);
                return Err(TransportError::Unreachable(
                    "the MQTT broker did not acknowledge the heartbeat".into(),
                ));
            }
        }
    }

    /// Publishes a shadow request (`get`, or else an update of the reported state), QoS 0 like the
    /// agent; the answer arrives among the shadow messages. False when it could not be queued.
    pub fn publish_shadow(&self, body: serde_json::Value, get: bool) -> bool {
        let inner = self.lock();
        let (get_topic, update_topic) = inner.session.shadow_topics();
        let topic = if get { get_topic } else { update_topic }.to_owned();
        inner.client.as_ref().is_some_and(|client| {
            client
                .try_publish(topic, QoS::AtMostOnce, false, body.to_string())
                .is_ok()
        })
    }
}
