//! Drover as a client of an external MQTT broker (Mosquitto, EMQX, HiveMQ, …).
//!
//! Each server replica subscribes to the device topics through one shared subscription
//! (`$share/{group}/…`), so the broker hands every device message to exactly one replica and
//! replicas split the load. Only the topics devices publish to are subscribed, never the answers,
//! so a replica does not hear its own messages.
//!
//! The broker authenticates devices and enforces per-device ACLs in this mode: configure it so
//! that a device may use only `drover/{its id}/#` (Mosquitto: `pattern readwrite drover/%u/#` with
//! the device id as user name). Drover trusts the device id in the topic.
//!
//! Incoming QoS 1 messages are acknowledged only after they were handled (stored, for
//! heartbeats), and at most [`MAX_IN_FLIGHT`] are handled at once: beyond that the client stops
//! reading from the socket and the broker queues, so a burst cannot exhaust the server's memory.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::mqtt::handler::{DeviceMessages, Outgoing};
use crate::mqtt::{publish_deltas, publish_offers, ExternalBroker};

/// Device messages handled concurrently per replica.
pub const MAX_IN_FLIGHT: usize = 512;

/// How long the first connection may take before `drover serve` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The topics devices publish to, for the shared subscription.
const INBOUND: [&str; 5] = [
    "drover/+/heartbeat",
    "drover/+/shadow/get",
    "drover/+/shadow/update",
    "drover/+/shadow/name/+/get",
    "drover/+/shadow/name/+/update",
];

/// A connected client and its tasks.
pub struct Client {
    client: AsyncClient,
    tasks: Vec<JoinHandle<()>>,
}

/// Where a `mqtt://` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddress {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Parses `mqtt://[user[:password]@]host[:port]` (`tcp://` also accepted; port 1883 by default).
pub fn parse_url(url: &str) -> anyhow::Result<BrokerAddress> {
    let rest = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
        .with_context(|| {
            "an MQTT broker URL starts with mqtt:// (TLS brokers are not supported yet)"
        })?;
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, rest),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((user, password)) => (Some(user.to_owned()), Some(password.to_owned())),
            None => (Some(info.to_owned()), None),
        },
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((host, port)) => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .with_context(|| format!("invalid port {port:?} in the MQTT broker URL"))?;
            (host, port)
        }
        None => (hostport, 1883),
    };
    if host.is_empty() || host.contains('/') {
        bail!("the MQTT broker URL has no valid host");
    }
    Ok(BrokerAddress {
        host: host.to_owned(),
        port,
        username,
        password,
    })
}

/// Connects to the broker (failing if it cannot within ten seconds), subscribes, and serves
/// device messages until [`Client::shutdown`].
pub async fn start(broker: ExternalBroker, messages: DeviceMessages) -> anyhow::Result<Client> {
    let address = parse_url(&broker.url)?;
    let mut options = MqttOptions::new(&broker.client_id, &address.host, address.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    options.set_manual_acks(true);
    let max = messages.state().config.max_body_bytes.max(64 * 1024);
    options.set_max_packet_size(max + 1024, max + 1024);
    if let Some(user) = &address.username {
        options.set_credentials(user, address.password.as_deref().unwrap_or(""));
    }
    let (client, mut events) = AsyncClient::new(options, MAX_IN_FLIGHT);
    tokio::time::timeout(CONNECT_TIMEOUT, connected(&mut events))
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "no answer from {}:{} within {CONNECT_TIMEOUT:?}",
                address.host,
                address.port
            )
        })??;
    subscribe(&client, &broker.group).await?;
    tracing::info!(host = %address.host, port = address.port, group = %broker.group, "connected to the MQTT broker");

    let serve = tokio::spawn(serve(
        client.clone(),
        events,
        messages.clone(),
        broker.group.clone(),
    ));
    let offers = {
        let client = client.clone();
        let metrics = messages.state().metrics.clone();
        tokio::spawn(publish_offers(messages.clone(), move |out| {
            let (client, metrics) = (client.clone(), metrics.clone());
            async move { send(&client, &metrics, out).await }
        }))
    };
    let deltas = {
        let client = client.clone();
        let metrics = messages.state().metrics.clone();
        tokio::spawn(publish_deltas(messages, move |out| {
            let (client, metrics) = (client.clone(), metrics.clone());
            async move { send(&client, &metrics, out).await }
        }))
    };
    Ok(Client {
        client,
        tasks: vec![serve, deltas, offers],
    })
}

impl Client {
    /// Disconnects from the broker and stops the tasks.
    pub async fn shutdown(self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.disconnect()).await;
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Polls until the broker accepted the connection.
async fn connected(events: &mut EventLoop) -> anyhow::Result<()> {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(e) => bail!("{e}"),
        }
    }
}

async fn subscribe(client: &AsyncClient, group: &str) -> anyhow::Result<()> {
    let filters = INBOUND
        .iter()
        .map(|topic| SubscribeFilter::new(format!("$share/{group}/{topic}"), QoS::AtLeastOnce));
    client
        .subscribe_many(filters)
        .await
        .context("cannot subscribe to the device topics")
}

/// The event loop: hands each device message to the handler (bounded), resubscribes after a
/// reconnect, and backs off while the broker is unreachable.
async fn serve(
    client: AsyncClient,
    mut events: EventLoop,
    messages: DeviceMessages,
    group: String,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let metrics = messages.state().metrics.clone();
    let mut backoff = Duration::from_millis(200);
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                backoff = Duration::from_millis(200);
                metrics.mqtt_received.inc();
                // Waiting for a permit stops polling: the broker holds further messages.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (client, messages, metrics) =
                    (client.clone(), messages.clone(), metrics.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let answers = match drover_proto::mqtt::split(&publish.topic) {
                        Ok((device, rest)) => {
                            messages.handle(&device, rest, &publish.payload).await
                        }
                        // Only subscribed topics arrive, and they all name a device; a malformed
                        // id has nobody to answer to.
                        Err(e) => {
                            tracing::debug!(error = %e, "ignoring MQTT message");
                            metrics.rejected("mqtt", "invalid_topic");
                            vec![]
                        }
                    };
                    for answer in answers {
                        send(&client, &metrics, answer).await;
                    }
                    if let Err(e) = client.ack(&publish).await {
                        tracing::debug!(error = %e, "cannot acknowledge MQTT message");
                    }
                });
            }
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("reconnected to the MQTT broker");
                if let Err(e) = subscribe(&client, &group).await {
                    tracing::warn!(error = %e, "cannot resubscribe");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT broker connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn send(client: &AsyncClient, metrics: &crate::metrics::Metrics, out: Outgoing) {
    match client
        .publish(out.topic, QoS::AtLeastOnce, false, out.payload)
        .await
    {
        Ok(()) => {
            metrics.mqtt_sent.inc();
        }
        Err(e) => tracing::warn!(error = %e, "cannot publish to the MQTT broker"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_defaults_and_credentials() {
        let plain = parse_url("mqtt://127.0.0.1").unwrap();
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.username),
            ("127.0.0.1", 1883, None)
        );
        let full = parse_url("mqtt://drover:s3cret@broker.example:8883/").unwrap();
        assert_eq!(
            full,
            BrokerAddress {
                host: "broker.example".into(),
                port: 8883,
                username: Some("drover".into()),
                password: Some("s3cret".into()),
            }
        );
        assert_eq!(parse_url("tcp://b:1").unwrap().port, 1);
        for bad in [
            "http://x",
            "mqtt://",
            "mqtt://x:0",
            "mqtt://x:port",
            "mqtts://x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
