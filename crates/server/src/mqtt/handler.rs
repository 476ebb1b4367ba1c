//! What the server does with a message a device published, whichever MQTT transport carried it
//! (the embedded broker or an external one): the same validation, store calls and error codes as
//! the HTTP device API, answered with messages on the device's own topics.

use drover_core::shadow::{ShadowName, ShadowUpdate};
use drover_core::DeviceId;
use drover_proto::device_api::{Heartbeat, HeartbeatBatch};
use drover_proto::error::ErrorDetail;
use drover_proto::jobs::{DiagCommand, DiagResponse, JobOffer, JobStatusAccepted, JobStatusReport};
use drover_proto::mqtt::{self, Inbound, Rejection};
use drover_proto::update::{DeploymentReportMessage, UpdateOffer};
use drover_store::Actor;
use serde_json::Value;

use crate::error::ApiError;
use crate::routes::{device_api, shadow};
use crate::AppState;

/// A message for a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Handles device messages; cheap to clone.
#[derive(Clone)]
pub struct DeviceMessages {
    state: AppState,
}

impl DeviceMessages {
    pub fn new(state: AppState) -> DeviceMessages {
        DeviceMessages { state }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Handles `payload` published by `device` on `drover/{device}/{rest}`; returns the answers to
    /// publish (none for an accepted heartbeat). Every rejection is counted.
    pub async fn handle(&self, device: &DeviceId, rest: &str, payload: &[u8]) -> Vec<Outgoing> {
        let inbound = match Inbound::parse(rest) {
            Ok(inbound) => inbound,
            Err(e) => {
                let error = ApiError::bad_request(e.to_string());
                return vec![self.reject(mqtt::rejected(device), error, None)];
            }
        };
        match inbound {
            Inbound::Heartbeat => match self.heartbeat(device, payload).await {
                Ok(_) => vec![],
                Err(error) => vec![self.reject(mqtt::heartbeat_rejected(device), error, None)],
            },
            Inbound::ShadowGet(name) => match self.shadow_get(device, name.as_ref()).await {
                Ok(document) => vec![json(
                    mqtt::shadow_get_result(device, name.as_ref(), true),
                    &document,
                )],
                Err(error) => {
                    let topic = mqtt::shadow_get_result(device, name.as_ref(), false);
                    vec![self.reject(topic, error, client_token(payload))]
                }
            },
            Inbound::DeploymentsGet => match crate::ota::offer_for(&self.state, device).await {
                Ok(offer) => vec![offer_message(device, offer.as_ref())],
                Err(error) => vec![self.reject(mqtt::rejected(device), error, None)],
            },
            Inbound::DeploymentStatus => match self.deployment_status(device, payload).await {
                Ok(view) => vec![json(
                    mqtt::deployments_status_result(device, true),
                    &serde_json::json!({ "deployment": view.id, "state": view.state }),
                )],
                Err(error) => {
                    let topic = mqtt::deployments_status_result(device, false);
                    vec![self.reject(topic, error, None)]
                }
            },
            Inbound::JobsGet => match self.state.store.next_job(device).await {
                Ok(offer) => vec![job_message(device, offer.as_ref())],
                Err(error) => vec![self.reject(mqtt::rejected(device), error.into(), None)],
            },
            Inbound::JobStatus => match self.job_status(device, payload).await {
                Ok(accepted) => vec![json(mqtt::jobs_status_result(device, true), &accepted)],
                Err(error) => {
                    let topic = mqtt::jobs_status_result(device, false);
                    vec![self.reject(topic, error, None)]
                }
            },
            Inbound::DiagResponse => match self.diag_response(device, payload).await {
                Ok(request_id) => vec![json(
                    mqtt::diag_response_result(device, true),
                    &serde_json::json!({ "request_id": request_id, "state": "answered" }),
                )],
                Err(error) => {
                    let topic = mqtt::diag_response_result(device, false);
                    vec![self.reject(topic, error, None)]
                }
            },
            Inbound::ShadowUpdate(name) => {
                match self.shadow_update(device, name.as_ref(), payload).await {
                    Ok(accepted) => {
                        vec![json(
                            mqtt::shadow_update_result(device, name.as_ref(), true),
                            &accepted,
                        )]
                    }
                    Err(error) => {
                        let topic = mqtt::shadow_update_result(device, name.as_ref(), false);
                        vec![self.reject(topic, error, client_token(payload))]
                    }
                }
            }
        }
    }

    /// A rejection on `topic`, counted by code.
    pub fn reject(&self, topic: String, error: ApiError, client_token: Option<String>) -> Outgoing {
        self.state.metrics.rejected("mqtt", error.code);
        // MQTT has no Retry-After header: the delay goes into the details.
        let details = match (error.details, error.retry_after_secs) {
            (None, Some(secs)) => Some(serde_json::json!({ "retry_after_secs": secs })),
            (Some(Value::Object(mut map)), Some(secs)) => {
                map.insert("retry_after_secs".into(), secs.into());
                Some(Value::Object(map))
            }
            (details, _) => details,
        };
        let body = Rejection {
            error: ErrorDetail {
                code: error.code.to_owned(),
                message: error.message,
                details,
            },
            client_token,
        };
        json(topic, &body)
    }

    async fn heartbeat(&self, device: &DeviceId, payload: &[u8]) -> Result<u64, ApiError> {
        if payload.len() > self.state.config.max_body_bytes {
            return Err(too_large(payload.len(), self.state.config.max_body_bytes));
        }
        let value: Value = parse_json(payload)?;
        let heartbeats = if value.get("heartbeats").is_some() {
            serde_json::from_value::<HeartbeatBatch>(value)
                .map_err(invalid)?
                .heartbeats
        } else {
            vec![serde_json::from_value::<Heartbeat>(value).map_err(invalid)?]
        };
        device_api::ingest(&self.state, device.clone(), heartbeats).await
    }

    async fn deployment_status(
        &self,
        device: &DeviceId,
        payload: &[u8],
    ) -> Result<drover_proto::artifacts::DeploymentView, ApiError> {
        if payload.len() > self.state.config.max_body_bytes {
            return Err(too_large(payload.len(), self.state.config.max_body_bytes));
        }
        let message: DeploymentReportMessage =
            serde_json::from_value(parse_json(payload)?).map_err(invalid)?;
        crate::ota::report(&self.state, device, message.deployment, message.report).await
    }

    async fn job_status(
        &self,
        device: &DeviceId,
        payload: &[u8],
    ) -> Result<JobStatusAccepted, ApiError> {
        if payload.len() > self.state.config.max_body_bytes {
            return Err(too_large(payload.len(), self.state.config.max_body_bytes));
        }
        let report: JobStatusReport =
            serde_json::from_value(parse_json(payload)?).map_err(invalid)?;
        let execution = report.execution_id.ok_or_else(|| {
            ApiError::unprocessable("invalid payload: execution_id is required over MQTT")
        })?;
        crate::routes::jobs::record_report(&self.state, device, execution, report).await
    }

    async fn diag_response(&self, device: &DeviceId, payload: &[u8]) -> Result<String, ApiError> {
        if payload.len() > self.state.config.max_body_bytes {
            return Err(too_large(payload.len(), self.state.config.max_body_bytes));
        }
        let response: DiagResponse =
            serde_json::from_value(parse_json(payload)?).map_err(invalid)?;
        let request_id = response.request_id.clone().ok_or_else(|| {
            ApiError::unprocessable("invalid payload: request_id is required over MQTT")
        })?;
        crate::routes::diagnostics::record_answer(&self.state, device, &request_id, response)
            .await?;
        Ok(request_id)
    }

    async fn shadow_get(
        &self,
        device: &DeviceId,
        name: Option<&ShadowName>,
    ) -> Result<Value, ApiError> {
        let document = self
            .state
            .store
            .get_shadow(device, name)
            .await?
            .ok_or_else(|| shadow::no_shadow(device, name))?;
        Ok(document.to_json())
    }

    async fn shadow_update(
        &self,
        device: &DeviceId,
        name: Option<&ShadowName>,
        payload: &[u8],
    ) -> Result<Value, ApiError> {
        let max = shadow::max_update_bytes();
        if payload.len() > max {
            return Err(too_large(payload.len(), max));
        }
        let update = ShadowUpdate::from_json(parse_json(payload)?)?;
        if update.desired.is_some() {
            return Err(ApiError::unprocessable(
                "a device may update only state.reported; desired state is set by operators",
            ));
        }
        let actor = Actor::device(device.as_str());
        let (outcome, _) = shadow::write(&self.state, &actor, device, name, update).await?;
        Ok(outcome.accepted_json())
    }
}

/// The offer on `drover/{id}/deployments/next`; an empty payload when there is none.
pub fn offer_message(device: &DeviceId, offer: Option<&UpdateOffer>) -> Outgoing {
    match offer {
        Some(offer) => json(mqtt::deployments_next(device), offer),
        None => Outgoing {
            topic: mqtt::deployments_next(device),
            payload: Vec::new(),
        },
    }
}

/// The job offer on `drover/{id}/jobs/notify`; an empty payload when there is none.
pub fn job_message(device: &DeviceId, offer: Option<&JobOffer>) -> Outgoing {
    match offer {
        Some(offer) => json(mqtt::jobs_notify(device), offer),
        None => Outgoing {
            topic: mqtt::jobs_notify(device),
            payload: Vec::new(),
        },
    }
}

/// A diagnostics request on `drover/{id}/diag/request`.
pub fn diag_message(device: &DeviceId, command: &DiagCommand) -> Outgoing {
    json(mqtt::diag_request(device), command)
}

fn json(topic: String, body: &impl serde::Serialize) -> Outgoing {
    Outgoing {
        topic,
        // Serialising our own types to a Vec cannot fail.
        payload: serde_json::to_vec(body).unwrap_or_default(),
    }
}

fn parse_json(payload: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(payload).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("payload is not valid JSON: {e}"),
        )
    })
}

fn invalid(e: serde_json::Error) -> ApiError {
    ApiError::unprocessable(format!("invalid payload: {e}"))
}

fn too_large(len: usize, max: usize) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("payload of {len} bytes exceeds the limit of {max} bytes"),
    )
}

/// The `clientToken` of a refused request, to echo in its rejection (best effort: the payload may
/// be bad). Parsed only on this path, so accepted requests are parsed once.
fn client_token(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let token = value.get("clientToken")?.as_str()?;
    (token.len() <= 64).then(|| token.to_owned())
}
