//! `/api/device/v1`: what devices call. Provisioning is authenticated by a claim token, a
//! pre-authorised hardware id or operator approval; everything else by the device credential.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use drover_proto::device_api::{ProvisionRequest, ProvisionResponse, WhoAmI};
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
