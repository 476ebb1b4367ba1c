//! The MQTT topic layout of the device API, defined once for the server, the agent and tests.
//!
//! Every topic of a device lives under `drover/{device id}/`; a device may publish and subscribe
//! only there. Payloads are the JSON bodies of the HTTP device API:
//!
//! | Topic (after `drover/{id}/`) | Direction | Payload |
//! |---|---|---|
//! | `heartbeat` | device → server | a [`Heartbeat`](crate::device_api::Heartbeat) or a [`HeartbeatBatch`](crate::device_api::HeartbeatBatch) |
//! | `heartbeat/rejected` | server → device | [`Rejection`] |
//! | `shadow/get` | device → server | empty, or `{"clientToken"}` |
//! | `shadow/get/accepted` | server → device | the whole [`ShadowView`](crate::shadow::ShadowView) |
//! | `shadow/get/rejected` | server → device | [`Rejection`] (`not_found` when there is no shadow) |
//! | `shadow/update` | device → server | a [`ShadowUpdateRequest`](crate::shadow::ShadowUpdateRequest) with `reported` only |
//! | `shadow/update/accepted` | server → device | [`ShadowAccepted`](crate::shadow::ShadowAccepted) |
//! | `shadow/update/rejected` | server → device | [`Rejection`] |
//! | `shadow/update/delta` | server → device | [`ShadowDelta`](crate::shadow::ShadowDelta), after each desired change that leaves a delta |
//! | `deployments/next` | server → device | the [`UpdateOffer`](crate::update::UpdateOffer) to install, when an operator deploys to the device and in answer to `deployments/get`; an empty payload when there is none |
//! | `deployments/get` | device → server | empty: ask for the current offer (e.g. after connecting) |
//! | `deployments/status` | device → server | a [`DeploymentReportMessage`](crate::update::DeploymentReportMessage) |
//! | `deployments/status/accepted` | server → device | `{"deployment": id, "state": …}` |
//! | `deployments/status/rejected` | server → device | [`Rejection`] (`conflict` when the deployment is over) |
//! | `jobs/notify` | server → device | the [`JobOffer`](crate::jobs::JobOffer) to run, when a job's execution starts on the device and in answer to `jobs/get`; an empty payload when there is none |
//! | `jobs/get` | device → server | empty: ask for the next job execution |
//! | `jobs/status` | device → server | a [`JobStatusReport`](crate::jobs::JobStatusReport) with `execution_id` |
//! | `jobs/status/accepted` | server → device | [`JobStatusAccepted`](crate::jobs::JobStatusAccepted) |
//! | `jobs/status/rejected` | server → device | [`Rejection`] (`job_canceled` when the job was canceled: stop) |
//! | `diag/request` | server → device | a [`DiagCommand`](crate::jobs::DiagCommand) |
//! | `diag/response` | device → server | a [`DiagResponse`](crate::jobs::DiagResponse) with `request_id` |
//! | `diag/response/rejected` | server → device | [`Rejection`] (`request_expired` when nobody waits any more) |
//! | `rejected` | server → device | [`Rejection`] for a message on a topic the server does not know |
//!
//! Named shadows put `name/{name}/` after `shadow/`: `drover/{id}/shadow/name/config/update`.
//! Rejections ([`Rejection`]) carry the same codes as the HTTP API, and `clientToken` from the
//! request when it had one.

use drover_core::shadow::ShadowName;
use drover_core::DeviceId;
use serde::{Deserialize, Serialize};

use crate::error::ErrorDetail;

/// A rejection published on a `…/rejected` topic: the HTTP API's error body, plus the request's
/// `clientToken` when it had one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejection {
    pub error: ErrorDetail,
    #[serde(
        rename = "clientToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_token: Option<String>,
}

/// The first level of every Drover topic.
pub const ROOT: &str = "drover";

/// The topic filter a device subscribes to for everything the server sends it.
pub fn device_filter(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/#")
}

/// What a device publishes, parsed from the part of the topic after `drover/{id}/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Heartbeat,
    DeploymentsGet,
    DeploymentStatus,
    ShadowGet(Option<ShadowName>),
    ShadowUpdate(Option<ShadowName>),
    JobsGet,
    JobStatus,
    DiagResponse,
}

/// Why a topic is not one a device may publish to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is not under drover/<device id>/")]
    NotDrover(String),
    #[error("invalid device id in topic {topic:?}: {reason}")]
    BadDevice { topic: String, reason: String },
    #[error("unknown topic {0:?}: devices publish to heartbeat, shadow/get or shadow/update (optionally shadow/name/<name>/...), deployments/get, deployments/status, jobs/get, jobs/status or diag/response")]
    Unknown(String),
    #[error("invalid shadow name in topic {topic:?}: {reason}")]
    BadShadowName { topic: String, reason: String },
}

/// Splits `drover/{id}/{rest}` into the device id and `rest`.
pub fn split(topic: &str) -> Result<(DeviceId, &str), TopicError> {
    let rest = topic
        .strip_prefix(ROOT)
        .and_then(|t| t.strip_prefix('/'))
        .ok_or_else(|| TopicError::NotDrover(topic.to_owned()))?;
    let (id, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let device = DeviceId::parse(id).map_err(|e| TopicError::BadDevice {
        topic: topic.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((device, rest))
}

impl Inbound {
    /// Parses the part of a topic after `drover/{id}/`.
    pub fn parse(rest: &str) -> Result<Inbound, TopicError> {
        match rest {
            "heartbeat" => return Ok(Inbound::Heartbeat),
            "deployments/get" => return Ok(Inbound::DeploymentsGet),
            "deployments/status" => return Ok(Inbound::DeploymentStatus),
            "jobs/get" => return Ok(Inbound::JobsGet),
            "jobs/status" => return Ok(Inbound::JobStatus),
            "diag/response" => return Ok(Inbound::DiagResponse),
            _ => {}
        }
        let Some(shadow) = rest.strip_prefix("shadow/") else {
            return Err(TopicError::Unknown(rest.to_owned()));
        };
        let (name, action) = match shadow.strip_prefix("name/") {
            Some(named) => {
                let (name, action) = named
                    .split_once('/')
                    .ok_or_else(|| TopicError::Unknown(rest.to_owned()))?;
                let name = ShadowName::parse(name).map_err(|e| TopicError::BadShadowName {
                    topic: rest.to_owned(),
                    reason: e.to_string(),
                })?;
                (Some(name), action)
            }
            None => (None, shadow),
        };
        match action {
            "get" => Ok(Inbound::ShadowGet(name)),
            "update" => Ok(Inbound::ShadowUpdate(name)),
            _ => Err(TopicError::Unknown(rest.to_owned())),
        }
    }
}

/// `drover/{id}/shadow/` or `drover/{id}/shadow/name/{name}/`.
fn shadow_prefix(device: &DeviceId, name: Option<&ShadowName>) -> String {
    match name {
        None => format!("{ROOT}/{device}/shadow/"),
        Some(name) => format!("{ROOT}/{device}/shadow/name/{name}/"),
    }
}

/// `drover/{id}/heartbeat`.
pub fn heartbeat(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/heartbeat")
}

/// `drover/{id}/heartbeat/rejected`.
pub fn heartbeat_rejected(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/heartbeat/rejected")
}

/// `drover/{id}/deployments/next`: the update offer.
pub fn deployments_next(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/deployments/next")
}

/// `drover/{id}/deployments/get`.
pub fn deployments_get(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/deployments/get")
}

/// `drover/{id}/deployments/status`.
pub fn deployments_status(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/deployments/status")
}

/// `drover/{id}/deployments/status/accepted` or `…/rejected`.
pub fn deployments_status_result(device: &DeviceId, accepted: bool) -> String {
    format!("{ROOT}/{device}/deployments/status/{}", outcome(accepted))
}

/// `drover/{id}/jobs/notify`: the job execution to run.
pub fn jobs_notify(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/jobs/notify")
}

/// `drover/{id}/jobs/get`.
pub fn jobs_get(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/jobs/get")
}

/// `drover/{id}/jobs/status`.
pub fn jobs_status(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/jobs/status")
}

/// `drover/{id}/jobs/status/accepted` or `…/rejected`.
pub fn jobs_status_result(device: &DeviceId, accepted: bool) -> String {
    format!("{ROOT}/{device}/jobs/status/{}", outcome(accepted))
}

/// `drover/{id}/diag/request`: a diagnostics request.
pub fn diag_request(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/diag/request")
}

/// `drover/{id}/diag/response`.
pub fn diag_response(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/diag/response")
}

/// `drover/{id}/diag/response/accepted` or `…/rejected`.
pub fn diag_response_result(device: &DeviceId, accepted: bool) -> String {
    format!("{ROOT}/{device}/diag/response/{}", outcome(accepted))
}

/// `drover/{id}/rejected`: a message on a topic the server does not handle.
pub fn rejected(device: &DeviceId) -> String {
    format!("{ROOT}/{device}/rejected")
}

/// `…/shadow[/name/{name}]/get`.
pub fn shadow_get(device: &DeviceId, name: Option<&ShadowName>) -> String {
    format!("{}get", shadow_prefix(device, name))
}

/// `…/shadow[/name/{name}]/update`.
pub fn shadow_update(device: &DeviceId, name: Option<&ShadowName>) -> String {
    format!("{}update", shadow_prefix(device, name))
}

/// `…/get/accepted` or `…/get/rejected`.
pub fn shadow_get_result(device: &DeviceId, name: Option<&ShadowName>, accepted: bool) -> String {
    format!("{}get/{}", shadow_prefix(device, name), outcome(accepted))
}

/// `…/update/accepted` or `…/update/rejected`.
pub fn shadow_update_result(
    device: &DeviceId,
    name: Option<&ShadowName>,
    accepted: bool,
) -> String {
    format!(
        "{}update/{}",
        shadow_prefix(device, name),
        outcome(accepted)
    )
}

/// `…/update/delta`.
pub fn shadow_delta(device: &DeviceId, name: Option<&ShadowName>) -> String {
    format!("{}update/delta", shadow_prefix(device, name))
}

fn outcome(accepted: bool) -> &'static str {
    if accepted {
        "accepted"
    } else {
        "rejected"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> DeviceId {
        DeviceId::parse(text).unwrap()
    }

    #[test]
    fn topics_round_trip_through_the_parser() {
        let device = id("thermo-1");
        let config = ShadowName::parse("config").unwrap();
        for (topic, expected) in [
            (heartbeat(&device), Inbound::Heartbeat),
            (jobs_get(&device), Inbound::JobsGet),
            (jobs_status(&device), Inbound::JobStatus),
            (diag_response(&device), Inbound::DiagResponse),
            (shadow_get(&device, None), Inbound::ShadowGet(None)),
            (shadow_update(&device, None), Inbound::ShadowUpdate(None)),
            (
                shadow_update(&device, Some(&config)),
                Inbound::ShadowUpdate(Some(config.clone())),
            ),
            (
                shadow_get(&device, Some(&config)),
                Inbound::ShadowGet(Some(config.clone())),
            ),
        ] {
            let (parsed, rest) = split(&topic).unwrap();
            assert_eq!(parsed, device);
            assert_eq!(Inbound::parse(rest).unwrap(), expected, "{topic}");
        }
        assert_eq!(
            shadow_delta(&device, Some(&config)),
            "drover/thermo-1/shadow/name/config/update/delta"
        );
        assert_eq!(device_filter(&device), "drover/thermo-1/#");
    }

    #[test]
    fn foreign_and_malformed_topics_are_refused_with_the_reason() {
        assert!(matches!(
            split("other/thermo-1/heartbeat"),
            Err(TopicError::NotDrover(_))
        ));
        assert!(matches!(split("drover"), Err(TopicError::NotDrover(_))));
        assert!(matches!(
            split("drover/Bad Id/heartbeat"),
            Err(TopicError::BadDevice { .. })
        ));
        for rest in [
            "",
            "heartbeats",
            "shadow/delete",
            "shadow/name/config",
            "shadow/update/delta",
        ] {
            assert!(
                matches!(Inbound::parse(rest), Err(TopicError::Unknown(_))),
                "{rest}"
            );
        }
        assert!(matches!(
            Inbound::parse("shadow/name/bad name/get"),
            Err(TopicError::BadShadowName { .. })
        ));
    }
}
