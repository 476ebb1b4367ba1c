//! `/api/device/v1`: what devices call. Provisioning is authenticated by a claim token, a
//! pre-authorised hardware id or operator approval; everything else by the device credential.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_core::health::{validate_heartbeat, HeartbeatLimits};
use drover_proto::device_api::{
    Heartbeat, HeartbeatAck, HeartbeatBatch, ProvisionRequest, ProvisionResponse, WhoAmI,
};
use drover_store::HeartbeatRecord;

use crate::ingest::IngestError;
use drover_store::ProvisionOptions;

use crate::error::ApiError;
use crate::extract::{ApiJson, DeviceAuth};
use crate::{now, AppState};

/// How long a pending device should wait before asking again.
const PENDING_RETRY_SECS: u64 = 60;

/// Exchanges a claim token, a pre-authorisation or an approval for a device credential.
#[utoipa::path(post, operation_id = "device_provision", path = "/api/device/v1/provision", tag = "device", request_body = ProvisionRequest,
    responses((status = 200, body = ProvisionResponse, description = "provisioned; the credential is shown once"),
              (status = 202, body = ProvisionResponse, description = "waiting for an operator to accept the device"),
              (status = 401, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody),
              (status = 422, body = drover_proto::error::ErrorBody)))]
pub async fn provision(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ProvisionRequest>,
) -> Result<(StatusCode, Json<ProvisionResponse>), ApiError> {
    let options = ProvisionOptions {
        allow_pending: state.config.allow_pending,
    };
    let outcome = state.store.provision(request, options, now()).await?;
    let pending = outcome.credential.is_none();
    let body = ProvisionResponse {
        device_id: outcome.device.id,
        status: outcome.device.status,
        credential: outcome.credential,
        retry_after_secs: pending.then_some(PENDING_RETRY_SECS),
    };
    Ok((
        if pending {
            StatusCode::ACCEPTED
        } else {
            StatusCode::OK
        },
        Json(body),
    ))
}

/// The calling device's own identity.
#[utoipa::path(get, operation_id = "device_whoami", path = "/api/device/v1/whoami", tag = "device",
    responses((status = 200, body = WhoAmI), (status = 401, body = drover_proto::error::ErrorBody)), security(("device" = [])))]
pub async fn whoami(DeviceAuth(device): DeviceAuth) -> Json<WhoAmI> {
    Json(WhoAmI {
        device_id: device.id,
        device_type: device.device_type,
        status: device.status,
        firmware: device.firmware,
    })
}

/// Most heartbeats in one batch request.
pub const MAX_HEARTBEAT_BATCH: usize = 1000;

/// Stores one heartbeat; answers once it is durable.
#[utoipa::path(post, operation_id = "device_heartbeat", path = "/api/device/v1/heartbeat", tag = "device", request_body = Heartbeat,
    responses((status = 200, body = HeartbeatAck), (status = 401, body = drover_proto::error::ErrorBody),
              (status = 422, body = drover_proto::error::ErrorBody), (status = 503, body = drover_proto::error::ErrorBody)),
    security(("device" = [])))]
pub async fn heartbeat(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    ApiJson(heartbeat): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let accepted = ingest(&state, device.id, vec![heartbeat]).await?;
    Ok(Json(HeartbeatAck { accepted }))
}

/// Stores several heartbeats (for example flushed after an outage), all or none.
#[utoipa::path(post, operation_id = "device_heartbeats", path = "/api/device/v1/heartbeats", tag = "device", request_body = HeartbeatBatch,
    responses((status = 200, body = HeartbeatAck), (status = 401, body = drover_proto::error::ErrorBody),
              (status = 422, body = drover_proto::error::ErrorBody), (status = 503, body = drover_proto::error::ErrorBody)),
    security(("device" = [])))]
pub async fn heartbeats(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    ApiJson(batch): ApiJson<HeartbeatBatch>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    let accepted = ingest(&state, device.id, batch.heartbeats).await?;
    Ok(Json(HeartbeatAck { accepted }))
}

/// Validates every heartbeat (all or none) and the batch size, then waits for the group commit;
/// returns how many were stored. Shared by the HTTP and MQTT device APIs.
pub(crate) async fn ingest(
    state: &AppState,
    device: drover_core::DeviceId,
    heartbeats: Vec<Heartbeat>,
) -> Result<u64, ApiError> {
    if heartbeats.is_empty() || heartbeats.len() > MAX_HEARTBEAT_BATCH {
        return Err(ApiError::unprocessable(format!(
            "a batch holds 1 to {MAX_HEARTBEAT_BATCH} heartbeats, not {}",
            heartbeats.len()
        )));
    }
    let received_at = now();
    let limits = HeartbeatLimits::default();
    for (idx, heartbeat) in heartbeats.iter().enumerate() {
        validate_heartbeat(&heartbeat.metrics, heartbeat.sent_at, received_at, &limits).map_err(
            |e| {
                let mut error =
                    ApiError::unprocessable(format!("heartbeat {idx}: {e}; nothing was stored"));
                error.code = e.code();
                error.with_details(serde_json::json!({ "index": idx }))
            },
        )?;
    }
    let records = heartbeats
        .into_iter()
        .map(|heartbeat| HeartbeatRecord {
            device: device.clone(),
            received_at,
            heartbeat,
        })
        .collect();
    match state.ingest.submit(records).await {
        Ok(accepted) => Ok(accepted),
        Err(IngestError::Overloaded) => Err(ApiError::busy(IngestError::Overloaded.to_string(), 2)),
        Err(IngestError::Stopped) => Err(ApiError::busy(IngestError::Stopped.to_string(), 5)),
        Err(IngestError::Store(e)) => Err(e.into()),
    }
}
