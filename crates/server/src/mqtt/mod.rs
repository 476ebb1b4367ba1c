//! The MQTT device API: either an embedded broker (the default) that authenticates devices by
//! credential and confines each to `drover/{its id}/#`, or a client of an external broker that
//! shares the load between server replicas through a shared subscription. Both hand what devices
//! publish to [`handler::DeviceMessages`] and push shadow deltas with [`publish_deltas`].
//!
//! The topic layout is `drover_proto::mqtt`.

pub mod embedded;
pub mod external;
pub mod handler;

use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::broadcast::error::RecvError;

use crate::mqtt::handler::{DeviceMessages, Outgoing};

/// Where devices reach Drover over MQTT.
#[derive(Debug, Clone, PartialEq)]
pub enum MqttConfig {
    /// No MQTT device API.
    Off,
    /// Run the embedded broker on this address.
    Embedded { listen: SocketAddr },
    /// Connect to an existing broker.
    External(ExternalBroker),
}

/// How to reach an external broker.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalBroker {
    /// `mqtt://[user[:password]@]host[:port]`.
    pub url: String,
    /// Shared-subscription group: replicas in the same group split device messages between them.
    pub group: String,
    /// This replica's client id (unique per replica).
    pub client_id: String,
}

/// A running MQTT transport.
pub enum Transport {
    Embedded(embedded::Broker),
    External(external::Client),
}

impl Transport {
    /// Disconnects devices (embedded) or the broker connection (external) and stops its tasks.
    pub async fn shutdown(self) {
        match self {
            Transport::Embedded(broker) => broker.shutdown().await,
            Transport::External(client) => client.shutdown().await,
        }
    }
}

/// The default embedded-broker address. Not 1883: a development machine often runs Mosquitto
/// there already, and `drover serve` must start beside it without configuration.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:1884";

/// Publishes the offer to the device whenever an operator deploys to it, a job execution is
/// offered to it or its job was canceled (`jobs/notify`, empty when nothing is left), and each
/// diagnostics request (`diag/request`), for the life of the server. Devices that miss one
/// (offline, or connected to another replica's broker) find it with `deployments/get`,
/// `jobs/get` or the HTTP long-polls.
pub async fn publish_offers<F, Fut>(messages: DeviceMessages, publish: F)
where
    F: Fn(Outgoing) -> Fut,
    Fut: Future<Output = ()>,
{
    // `None` once a channel closes, i.e. the server is gone.
    let _ = offers_until_closed(messages, publish).await;
}

async fn offers_until_closed<F, Fut>(messages: DeviceMessages, publish: F) -> Option<()>
where
    F: Fn(Outgoing) -> Fut,
    Fut: Future<Output = ()>,
{
    let state = messages.state().clone();
    let mut created = state.offers.subscribe();
    let mut jobs = state.job_offers.subscribe();
    let mut diagnostics = state.diag_requests.subscribe();
    loop {
        tokio::select! {
            received = created.recv() => {
                let Some(device) = received_or_skip(received, "offer")? else { continue };
                match crate::ota::offer_for(&state, &device).await {
                    Ok(Some(offer)) => publish(handler::offer_message(&device, Some(&offer))).await,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e.message, %device, "cannot read the offer to publish")
                    }
                }
            }
            received = jobs.recv() => {
                let Some(device) = received_or_skip(received, "job offer")? else { continue };
                match state.store.next_job(&device).await {
                    Ok(offer) => publish(handler::job_message(&device, offer.as_ref())).await,
                    Err(e) => tracing::warn!(error = %e, %device, "cannot read the job offer to publish"),
                }
            }
            received = diagnostics.recv() => {
                let Some((device, command)) = received_or_skip(received, "diagnostics request")? else { continue };
                publish(handler::diag_message(&device, &command)).await;
            }
        }
    }
}

/// The value received, `Some(None)` after a lag (logged), `None` once the sender is gone.
fn received_or_skip<T>(received: Result<T, RecvError>, what: &str) -> Option<Option<T>> {
    match received {
        Ok(value) => Some(Some(value)),
        Err(RecvError::Lagged(skipped)) => {
            tracing::warn!(
                skipped,
                "MQTT {what} publisher fell behind; those devices find theirs at their next check"
            );
            Some(None)
        }
        Err(RecvError::Closed) => None,
    }
}

/// Publishes the delta to the device whenever operators change a shadow's desired state and a
/// delta remains, for the life of the server. `publish` sends one message through the transport.
pub async fn publish_deltas<F, Fut>(messages: DeviceMessages, publish: F)
where
    F: Fn(Outgoing) -> Fut,
    Fut: Future<Output = ()>,
{
    let state = messages.state().clone();
    let mut changes = state.shadows.desired_changes();
    loop {
        let change = match changes.recv().await {
            Ok(change) => change,
            Err(RecvError::Lagged(skipped)) => {
                tracing::warn!(skipped, "MQTT delta publisher fell behind; those devices converge on their next shadow/get");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let document = match state
            .store
            .get_shadow(&change.device, change.name.as_ref())
            .await
        {
            Ok(Some(document)) => document,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, device = %change.device, "cannot read shadow for its delta");
                continue;
            }
        };
        if let Some(delta) = document.delta_json() {
            publish(Outgoing {
                topic: drover_proto::mqtt::shadow_delta(&change.device, change.name.as_ref()),
                payload: serde_json::to_vec(&delta).unwrap_or_default(),
            })
            .await;
        }
    }
}
