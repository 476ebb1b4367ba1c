//! The embedded MQTT broker that `drover serve` runs by default, built on rmqtt: devices connect
//! to Drover itself, with no broker to install or configure.
//!
//! # Authentication
//! A device connects with its id as user name *and* client id and its credential (from
//! provisioning) as password. The broker admits it only if the store accepts the credential, the
//! credential belongs to the device the user name names, and the client id is that same id: one
//! device is one session, and a second connection with the same client id takes the first one over,
//! as MQTT specifies. Everything else is refused with CONNACK "bad user name or password" (missing,
//! wrong or foreign credentials) or "not authorized" (a valid credential used with another client
//! id, a Will outside the device's topics, the store unavailable, the broker shutting down), counted
//! as `drover_device_rejections_total{transport="mqtt",code="unauthorized"}` and logged at debug.
//! Because of that check, a session's client id *is* its authenticated device id; the ACL below
//! reads it from there.
//!
//! # ACL
//! A device may subscribe only to filters under `drover/{its id}/`: a wildcard at or above the id
//! level (`#`, `drover/#`, `drover/+/…`), a shared subscription (`$share/…`) or another device's id
//! gets a SUBACK failure. It may publish only under `drover/{its id}/`. A publish elsewhere is not
//! routed and not handled; the device gets a `forbidden` rejection naming the topic on
//! `drover/{its id}/rejected`. The connection stays open: MQTT 3.1.1 cannot refuse a publish, so
//! the PUBACK is a plain one; MQTT 5 clients get PUBACK reason 0x87 "not authorized".
//!
//! # Acknowledged once durable
//! Device messages are handled inside rmqtt's publish-ACL hook, which the connection's task awaits
//! before it sends the PUBACK: a QoS 1 heartbeat is acknowledged only once the store has it. A
//! connection has one message in hand at a time (natural backpressure: the broker stops reading
//! from that socket), except that heartbeats it has already received are handled together, up to
//! `rmqtt::session::CONCURRENT_PUBLISH_MAX` (a patch in the vendored rmqtt; their PUBACKs still go
//! out in order, and heartbeats do not depend on their order: the store keeps the newest
//! observation). Shadow updates and every other message stay one at a time, in order. At most
//! [`MAX_IN_FLIGHT`] messages are handled across all connections. The
//! hook then tells rmqtt that the message reached no subscriber, so messages devices publish are
//! never routed (not even to the device's own `drover/{id}/#`); MQTT 5 clients see that as PUBACK
//! reason 0x10 "no matching subscribers", which is a success. Answers and shadow deltas are
//! published from the server to the answer topics with QoS 1 and reach the device through its
//! subscriptions.
//!
//! # Limits and memory
//! Packets larger than `max_body_bytes + 1024` are refused by the broker's decoder, which closes
//! the connection (MQTT 3.1.1 has no other way; MQTT 5 clients are told the limit in CONNACK's
//! Maximum Packet Size). The options favour many idle devices: no retained messages, no stored or
//! offline messages (a session ends with its connection, see [`SESSION_EXPIRY_CAP`]), a small
//! in-flight window and queue, QoS ≤ 1, few subscriptions per device, and no CPU-load sampling.
//! Each connection also keeps a read and a write buffer (256 bytes to start, growing to the
//! largest packet it carried) and one retry timer besides keepalive; the vendored rmqtt and
//! rmqtt-net (`vendor/`) keep those buffers small and a connection's handshake and teardown out of
//! its idle state. rmqtt also leaves closing the socket after a DISCONNECT to the client (as MQTT
//! requires of it): a client that does not close it holds its connection until its keepalive runs
//! out.

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use drover_core::DeviceId;
use drover_proto::mqtt;
use drover_store::StoreError;
use rmqtt::codec::types::Publish as CodecPublish;
use rmqtt::codec::v5::{PublishAckReason, SubscribeAckReason};
use rmqtt::context::ServerContext;
use rmqtt::hook::{Handler, HookResult, Parameter, ReturnType, Type};
use rmqtt::net::Builder;
use rmqtt::server::MqttServer;
use rmqtt::session::{Session, SessionState};
use rmqtt::types::{
    AuthResult, ClientId, ConnectInfo, From, Id, LastWill, Message, Publish, PublishAclResult,
    PublishResult, QoS, Reason, Subscribe, SubscribeAclResult, TopicName,
};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::mqtt::handler::{DeviceMessages, Outgoing};
use crate::mqtt::{publish_deltas, publish_offers};

/// Device messages handled at once across all connections; beyond that, connections wait (and
/// stop reading from their sockets) until a handler finishes.
pub const MAX_IN_FLIGHT: usize = 512;

/// The broker accepts this many connections at most.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// How long a device may keep its session after it disconnects when it asks for a persistent one
/// (MQTT 5 session expiry). MQTT 3.1.1 sessions end with their connection. Devices lose nothing
/// they cannot ask for again (`shadow/get`), and the broker keeps no state for absent devices.
/// rmqtt reads a cap of zero as "no cap", hence one second rather than zero.
pub const SESSION_EXPIRY_CAP: Duration = Duration::from_secs(1);

/// How long [`Broker::shutdown`] waits for device connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(900);

/// A bound broker listener, not yet serving.
pub struct Listener {
    listener: rmqtt::net::Listener,
    addr: SocketAddr,
}

/// Binds the broker's listener, failing at once if the address is taken.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<Listener> {
    let bound = Builder::new()
        .name("drover")
        .laddr(listen)
        .reuseaddr(Some(true))
        .bind()
        .and_then(|listener| listener.tcp())
        .and_then(|listener| Ok((listener.local_addr()?, listener)));
    match bound {
        Ok((addr, listener)) => Ok(Listener { listener, addr }),
        Err(e) => anyhow::bail!(
            "cannot listen for MQTT on {listen}: {e} (choose another address with --mqtt-listen, DROVER_MQTT_LISTEN or `mqtt_listen` in the config file)"
        ),
    }
}

impl Listener {
    /// The address the listener is bound to (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts serving devices, handing what they publish to `messages`, and publishes shadow
    /// deltas to them until [`Broker::shutdown`].
    pub async fn start(mut self, messages: DeviceMessages) -> anyhow::Result<Broker> {
        self.listener.cfg = Arc::new(listener_options(
            &self.listener.cfg,
            messages.state().config.max_body_bytes,
        ));
        // The busy check samples CPU load in a task that never ends and caches it in a
        // process-global static; Drover bounds its work with MAX_IN_FLIGHT instead.
        let scx = ServerContext::new()
            .busy_check_enable(false)
            .mqtt_max_sessions(0)
            .build()
            .await;
        let server_id = From::from_system(Id::new(
            scx.node.id(),
            0,
            None,
            None,
            ClientId::from_static("$drover"),
            None,
        ));
        let messages_revocations = messages.state().revocations.subscribe();
        let (connected, _) = watch::channel(0usize);
        let shared = Arc::new(Shared {
            messages: RwLock::new(Some(messages.clone())),
            metrics: messages.state().metrics.clone(),
            closing: AtomicBool::new(false),
            permits: Semaphore::new(MAX_IN_FLIGHT),
            connected,
            server_id: server_id.clone(),
        });
        rmqtt::session::set_concurrent_publish(is_heartbeat_topic);
        let register = scx.extends.hook_mgr().register();
        for typ in [
            Type::ClientAuthenticate,
            Type::ClientConnected,
            Type::ClientDisconnected,
            Type::ClientSubscribeCheckAcl,
            Type::MessagePublishCheckAcl,
        ] {
            register.add(typ, Box::new(Hooks(shared.clone()))).await;
        }
        register.start().await;

        let server = MqttServer::new(scx.clone())
            .listener_by_id(self.listener, 1)
            .build();
        let serve = tokio::spawn(async move {
            if let Err(e) = server.run().await {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        });
        let offers = {
            let (scx, metrics) = (scx.clone(), shared.metrics.clone());
            let server_id = server_id.clone();
            tokio::spawn(publish_offers(messages.clone(), move |out| {
                let (scx, from, metrics) = (scx.clone(), server_id.clone(), metrics.clone());
                async move { send(&scx, &from, &metrics, out).await }
            }))
        };
        let deltas = {
            let (scx, metrics) = (scx.clone(), shared.metrics.clone());
            tokio::spawn(publish_deltas(messages, move |out| {
                let (scx, from, metrics) = (scx.clone(), server_id.clone(), metrics.clone());
                async move { send(&scx, &from, &metrics, out).await }
            }))
        };
        let revocations = {
            let scx = scx.clone();
            let mut revoked = messages_revocations;
            tokio::spawn(async move {
                loop {
                    match revoked.recv().await {
                        Ok(device) => disconnect(&scx, &device).await,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            })
        };
        Ok(Broker {
            scx,
            shared,
            tasks: vec![serve, deltas, offers, revocations],
        })
    }
}

/// The running broker.
pub struct Broker {
    scx: ServerContext,
    shared: Arc<Shared>,
    /// The listener's accept loop and the delta publisher.
    tasks: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Devices connected now.
    pub fn connected(&self) -> usize {
        *self.shared.connected.borrow()
    }

    /// Stops listening, disconnects every device (MQTT 5 clients get DISCONNECT 0x8B "server
    /// shutting down") and waits for their connections to close, at most about a second.
    pub async fn shutdown(self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.abort();
            // Awaiting the aborted task drops its future, and with it the listening socket.
            let _ = task.await;
        }
        let entries: Vec<_> = self
            .scx
            .extends
            .shared()
            .await
            .iter()
            .filter_map(|entry| entry.tx())
            .collect();
        for tx in entries {
            // rmqtt maps this reason to DISCONNECT 0x8B "server shutting down".
            let _ = tx.unbounded_send(Message::Closed(Reason::ConnectRemoteClose));
        }
        let mut connected = self.shared.connected.subscribe();
        let closed = tokio::time::timeout(SHUTDOWN_GRACE, connected.wait_for(|n| *n == 0))
            .await
            .is_ok();
        if !closed {
            tracing::warn!(
                connected = *connected.borrow(),
                "MQTT connections still open at shutdown"
            );
        }
        // rmqtt's context refers to itself and so outlives the broker, hooks included: let go of
        // the store so that it closes.
        self.shared.release();
    }
}

/// The options of the listener: `base` (the bound address) with Drover's limits.
fn listener_options(base: &Builder, max_body_bytes: usize) -> Builder {
    let max_packet = u32::try_from(max_body_bytes.saturating_add(1024)).unwrap_or(u32::MAX);
    Builder {
        allow_anonymous: false,
        max_packet_size: max_packet,
        max_connections: MAX_CONNECTIONS,
        // Each handshake checks a credential in the store.
        max_handshaking_limit: 256,
        handshake_timeout: Duration::from_secs(10),
        // Answers are small and wanted now: no Nagle delay.
        nodelay: true,
        backlog: 1024,
        // QoS 1 answers not yet acknowledged, and messages queued behind them, per device.
        max_inflight: NonZeroU16::MIN.saturating_add(7),
        max_mqueue_len: 32,
        max_qos_allowed: QoS::AtLeastOnce,
        // Deepest Drover topic: drover/{id}/shadow/name/{name}/update/accepted.
        max_topic_levels: 16,
        max_subscriptions: 16,
        max_topic_aliases: 0,
        session_expiry_interval: Duration::ZERO,
        max_session_expiry_interval: SESSION_EXPIRY_CAP,
        message_expiry_interval: Duration::from_secs(60),
        ..base.clone()
    }
}

/// What the hooks share with the broker handle.
struct Shared {
    /// `None` once the broker has shut down.
    messages: RwLock<Option<DeviceMessages>>,
    metrics: Arc<Metrics>,
    closing: AtomicBool,
    permits: Semaphore,
    /// Connected devices, for the gauge and for shutdown.
    connected: watch::Sender<usize>,
    /// Who the server's own messages are from.
    server_id: From,
}

impl Shared {
    fn messages(&self) -> Option<DeviceMessages> {
        if self.closing.load(Ordering::SeqCst) {
            return None;
        }
        self.messages
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn release(&self) {
        *self.messages.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// rmqtt's hook handler for every hook Drover uses.
struct Hooks(Arc<Shared>);

impl Handler for Hooks {
    // `Handler` is an `async_trait` trait; this is the signature the macro would generate.
    fn hook<'life0, 'life1, 'async_trait>(
        &'life0 self,
        param: &'life1 Parameter<'_>,
        acc: Option<HookResult>,
    ) -> Pin<Box<dyn std::future::Future<Output = ReturnType> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let shared = &self.0;
            match param {
                Parameter::ClientAuthenticate(connect) => {
                    let result = authenticate(shared, connect).await;
                    (false, Some(HookResult::AuthResult(result)))
                }
                Parameter::ClientConnected(session) => {
                    shared.connected.send_modify(|n| *n += 1);
                    shared.metrics.mqtt_connections.inc();
                    tracing::debug!(device = %session.id.client_id, "device connected over MQTT");
                    if shared.closing.load(Ordering::SeqCst) {
                        // Connected while the broker shuts down, after it closed the others.
                        close(session).await;
                    }
                    (true, acc)
                }
                Parameter::ClientDisconnected(session, reason) => {
                    shared.connected.send_modify(|n| *n = n.saturating_sub(1));
                    shared.metrics.mqtt_connections.dec();
                    tracing::debug!(device = %session.id.client_id, %reason, "device disconnected from MQTT");
                    (true, acc)
                }
                Parameter::ClientSubscribeCheckAcl(session, subscribe) => {
                    let result = check_subscribe(shared, session, subscribe);
                    (false, Some(HookResult::SubscribeAclResult(result)))
                }
                Parameter::MessagePublishCheckAcl(session, publish) => {
                    let result = on_publish(shared, session, publish).await;
                    (false, Some(HookResult::PublishAclResult(result)))
                }
                _ => (true, acc),
            }
        })
    }
}

/// Why a connection is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// Missing, malformed, wrong or another device's credentials: "bad user name or password".
    BadCredentials(String),
    /// A valid credential used in a way the device may not: "not authorized".
    NotAuthorized(String),
}

/// The CONNECT hook: checks the credential in the store, then [`admit`]s the connection.
async fn authenticate(shared: &Shared, connect: &ConnectInfo) -> AuthResult {
    let refusal = match shared.messages() {
        None => Refusal::NotAuthorized("the broker is shutting down".into()),
        Some(messages) => match credential(connect) {
            Err(refusal) => refusal,
            Ok(credential) => match messages.state().store.authenticate_device(credential).await {
                Ok(device) => match admit(
                    &device.id,
                    connect.username().map(|u| &**u),
                    connect.client_id(),
                    will_topic(connect),
                ) {
                    Ok(()) => return AuthResult::Allow(false, None),
                    Err(refusal) => refusal,
                },
                Err(StoreError::Unauthorized(reason)) => Refusal::BadCredentials(reason),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check an MQTT device credential");
                    Refusal::NotAuthorized("the store is unavailable".into())
                }
            },
        },
    };
    tracing::debug!(
        client_id = %connect.client_id(),
        user = ?connect.username(),
        ?refusal,
        "refused an MQTT connection"
    );
    shared.metrics.rejected("mqtt", "unauthorized");
    match refusal {
        Refusal::BadCredentials(_) => AuthResult::BadUsernameOrPassword,
        Refusal::NotAuthorized(_) => AuthResult::NotAuthorized,
    }
}

/// The password of a CONNECT, as text.
fn credential(connect: &ConnectInfo) -> Result<&str, Refusal> {
    let (Some(_), Some(password)) = (connect.username(), connect.password()) else {
        return Err(Refusal::BadCredentials(
            "connect with the device id as user name and its credential as password".into(),
        ));
    };
    std::str::from_utf8(password)
        .map_err(|_| Refusal::BadCredentials("the password is not UTF-8".into()))
}

fn will_topic(connect: &ConnectInfo) -> Option<&str> {
    match connect.last_will()? {
        LastWill::V3(will) => Some(&*will.topic),
        LastWill::V5(will) => Some(&*will.topic),
    }
}

/// Whether `device`, authenticated by its credential, may connect with this user name, client id
/// and Will topic. The Will is checked here because rmqtt publishes it without the publish ACL.
fn admit(
    device: &DeviceId,
    username: Option<&str>,
    client_id: &str,
    will_topic: Option<&str>,
) -> Result<(), Refusal> {
    if username != Some(device.as_str()) {
        return Err(Refusal::BadCredentials(format!(
            "the credential belongs to device {device}, not to the user name"
        )));
    }
    if client_id != device.as_str() {
        return Err(Refusal::NotAuthorized(format!(
            "device {device} must connect with client id {device}, not {client_id:?}"
        )));
    }
    if let Some(topic) = will_topic.filter(|topic| !under_own_topics(device, topic)) {
        return Err(Refusal::NotAuthorized(format!(
            "device {device} may not leave a Will on {topic:?}"
        )));
    }
    Ok(())
}

/// Whether a topic or topic filter lies under `drover/{device}/`. Device ids contain no `/`, `+`
/// or `#`, so whatever follows the prefix is below the id level.
fn under_own_topics(device: &DeviceId, topic: &str) -> bool {
    topic
        .strip_prefix(mqtt::ROOT)
        .and_then(|rest| rest.strip_prefix('/'))
        .and_then(|rest| rest.strip_prefix(device.as_str()))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// The device a session belongs to: its client id, checked equal to the authenticated device id
/// when it connected.
fn session_device(session: &Session) -> Option<DeviceId> {
    DeviceId::parse(&session.id.client_id).ok()
}

/// The SUBSCRIBE hook: only filters under the device's own topics.
fn check_subscribe(
    shared: &Shared,
    session: &Session,
    subscribe: &Subscribe,
) -> SubscribeAclResult {
    let allowed = session_device(session).is_some_and(|device| {
        under_own_topics(&device, &subscribe.topic_filter)
            && subscribe.opts.shared_group().is_none()
    });
    if allowed {
        SubscribeAclResult::new_success(subscribe.opts.qos(), None)
    } else {
        tracing::debug!(device = %session.id.client_id, filter = %subscribe.topic_filter, "refused an MQTT subscription");
        shared.metrics.rejected("mqtt", "forbidden");
        SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized)
    }
}

/// Whether `topic` is a device's heartbeat topic, whose publishes the broker may handle
/// concurrently (see the module docs).
fn is_heartbeat_topic(topic: &str) -> bool {
    mqtt::split(topic).is_ok_and(|(_, rest)| rest == "heartbeat")
}

/// The PUBLISH hook, awaited before the PUBACK: handles a message on the device's own topics and
/// publishes the answers; refuses anything else. Either way the message is not routed.
async fn on_publish(shared: &Shared, session: &Session, publish: &Publish) -> PublishAclResult {
    let (Some(messages), Some(device)) = (shared.messages(), session_device(session)) else {
        return PublishAclResult::rejected(true, Some("the broker is shutting down".into()));
    };
    shared.metrics.mqtt_received.inc();
    let own = mqtt::split(&publish.topic)
        .ok()
        .filter(|(topic_device, _)| *topic_device == device);
    let (answers, result) = match own {
        Some((_, rest)) => {
            let answers = match shared.permits.acquire().await {
                Ok(_permit) => messages.handle(&device, rest, &publish.payload).await,
                Err(_) => vec![],
            };
            let not_routed =
                PublishResult::reason_code(PublishAckReason::NoMatchingSubscribers, None, false);
            (answers, PublishAclResult(not_routed))
        }
        None => {
            let error = ApiError::forbidden(format!(
                "device {device} may publish only under drover/{device}/, not on {:?}",
                &*publish.topic
            ));
            let rejection = messages.reject(mqtt::rejected(&device), error, None);
            (
                vec![rejection],
                PublishAclResult::rejected(false, Some("not the device's topic".into())),
            )
        }
    };
    for answer in answers {
        send(&session.scx, &shared.server_id, &shared.metrics, answer).await;
    }
    result
}

/// Publishes a message from the server to whoever subscribed to its topic (the device).
async fn send(scx: &ServerContext, from: &From, metrics: &Metrics, out: Outgoing) {
    let publish = CodecPublish {
        dup: false,
        retain: false,
        qos: QoS::AtLeastOnce,
        topic: TopicName::from(out.topic),
        packet_id: None,
        payload: out.payload.into(),
        properties: None,
    };
    let publish = Publish::new(
        Box::new(publish),
        None,
        None,
        Some(rmqtt::utils::timestamp_millis()),
    );
    match SessionState::forwards(scx, from.clone(), publish, false, None).await {
        Ok(()) => {
            metrics.mqtt_sent.inc();
        }
        Err(e) => tracing::warn!(error = %e, "cannot publish to a device"),
    }
}

/// Closes the connection of `device`, whose credentials were revoked (it cannot log in again).
async fn disconnect(scx: &ServerContext, device: &DeviceId) {
    let shared = scx.extends.shared().await;
    for entry in shared.iter() {
        if *entry.id().client_id == *device.as_str() {
            if let Some(tx) = entry.tx() {
                tracing::info!(%device, "closing the MQTT connection of a device whose credentials were revoked");
                let _ = tx.unbounded_send(Message::Closed(Reason::ConnectRemoteClose));
            }
        }
    }
}

/// Asks a session to close its connection.
async fn close(session: &Session) {
    let entry = session.scx.extends.shared().await.entry(session.id.clone());
    if let Some(tx) = entry.tx() {
        let _ = tx.unbounded_send(Message::Closed(Reason::ConnectRemoteClose));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> DeviceId {
        DeviceId::parse(text).unwrap()
    }

    #[test]
    fn devices_use_only_topics_under_their_own_id() {
        let device = id("thermo-1");
        for (topic, allowed) in [
            ("drover/thermo-1/heartbeat", true),
            ("drover/thermo-1/#", true),
            ("drover/thermo-1/shadow/+/accepted", true),
            ("drover/thermo-1/", true),
            ("drover/thermo-1", false),
            ("drover/thermo-10/#", false),
            ("drover/thermo-2/heartbeat", false),
            ("drover/+/heartbeat", false),
            ("drover/#", false),
            ("#", false),
            ("+/thermo-1/#", false),
            ("$share/g/drover/thermo-1/#", false),
            ("other/thermo-1/heartbeat", false),
            ("", false),
        ] {
            assert_eq!(under_own_topics(&device, topic), allowed, "{topic}");
        }
    }

    #[test]
    fn a_credential_admits_only_its_own_device_id_as_user_and_client() {
        let device = id("thermo-1");
        let bad = |r: Result<(), Refusal>| matches!(r, Err(Refusal::BadCredentials(_)));
        let denied = |r: Result<(), Refusal>| matches!(r, Err(Refusal::NotAuthorized(_)));
        assert_eq!(admit(&device, Some("thermo-1"), "thermo-1", None), Ok(()));
        assert_eq!(
            admit(
                &device,
                Some("thermo-1"),
                "thermo-1",
                Some("drover/thermo-1/status")
            ),
            Ok(())
        );
        assert!(bad(admit(&device, Some("thermo-2"), "thermo-1", None)));
        assert!(bad(admit(&device, None, "thermo-1", None)));
        assert!(denied(admit(&device, Some("thermo-1"), "thermo-2", None)));
        assert!(denied(admit(&device, Some("thermo-1"), "", None)));
        assert!(denied(admit(
            &device,
            Some("thermo-1"),
            "thermo-1",
            Some("drover/thermo-2/shadow/update/delta")
        )));
    }

    #[test]
    fn packets_may_carry_a_full_body_and_the_mqtt_framing() {
        let options = listener_options(&Builder::new(), 1 << 20);
        assert_eq!(options.max_packet_size, (1 << 20) + 1024);
        assert!(!options.allow_anonymous);
        assert_eq!(
            listener_options(&Builder::new(), usize::MAX).max_packet_size,
            u32::MAX
        );
    }
}
