//! Remote diagnostics over HTTP. An operator's `POST /api/v1/devices/{id}/diagnostics` stores a
//! request, tells the device (its long-poll, or MQTT `drover/{id}/diag/request`) and waits up to
//! the request's timeout for the answer: 200 with it, or 504 `device_timeout` naming the request.
//! Devices long-poll `GET /api/device/v1/diagnostics/next` and answer with
//! `POST /api/device/v1/diagnostics/{request_id}`.
//!
//! A reboot needs two calls: the first answers 409 `confirmation_required` with a single-use token
//! bound to the device and the action, valid for [`CONFIRMATION_VALIDITY`]; repeating the call with
//! `"confirm": TOKEN` reboots. A wrong token is a 400, a used or expired one a 409.

use std::time::Duration as StdDuration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Json;
use drover_core::{DeviceId, Duration};
use drover_proto::auth::Role;
use drover_proto::jobs::{DiagAction, DiagAnswer, DiagCommand, DiagRequest, DiagResponse};
use drover_store::{AnswerOutcome, Confirmation, DiagState};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, DeviceAuth, Operator};
use crate::routes::devices::device_id;
use crate::routes::jobs::{long_poll, WaitParams, RECHECK};
use crate::wake::WakeKey;
use crate::{now, AppState};

/// How long a reboot confirmation token stays valid.
pub const CONFIRMATION_VALIDITY: Duration = Duration::from_secs(120);
/// How long the operator's call waits for the answer when the request does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks a device a diagnostic question and waits for its answer.
#[utoipa::path(post, operation_id = "devices_diagnostics", path = "/api/v1/devices/{id}/diagnostics", tag = "devices",
    params(("id" = String, Path)), request_body = DiagRequest,
    responses((status = 200, body = DiagAnswer, description = "the device's answer (with `error` when it could not answer)"),
              (status = 400, body = drover_proto::error::ErrorBody, description = "bad request, or `invalid_confirmation`"),
              (status = 404, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody, description = "`confirmation_required` (details.token), `confirmation_used`, `confirmation_expired`"),
              (status = 504, body = drover_proto::error::ErrorBody, description = "`device_timeout`: no answer in time (details.request_id)")),
    security(("bearer" = [])))]
pub async fn request(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<DiagRequest>,
) -> Result<Json<DiagAnswer>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let device = device_id(&id)?;
    request.validate().map_err(ApiError::bad_request)?;
    let timeout = request.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if timeout < Duration::from_secs(1) || timeout > MAX_TIMEOUT {
        return Err(ApiError::bad_request(format!(
            "timeout must be between 1s and {MAX_TIMEOUT}, not {timeout}"
        )));
    }
    let started = now();
    if request.action == DiagAction::Reboot {
        confirm(&state, &device, request.confirm.as_deref()).await?;
    }
    let deadline = started.saturating_add(timeout);
    let request_id = state
        .store
        .create_diag_request(
            &actor,
            &device,
            request.action,
            request.lines,
            deadline,
            started,
        )
        .await?;
    let mut waiter = state.wakes.subscribe(WakeKey::Answer(request_id.clone()));
    state.wakes.wake(&WakeKey::Diag(device.clone()));
    let _ = state.diag_requests.send((
        device.clone(),
        DiagCommand {
            request_id: request_id.clone(),
            action: request.action,
            lines: request.lines,
            deadline,
        },
    ));
    let wait_until = Instant::now() + StdDuration::from_millis(timeout.as_millis() as u64);
    loop {
        if let DiagState::Answered(answer) = state.store.diag_request_state(&request_id).await? {
            return Ok(Json(answer));
        }
        let left = wait_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::select! {
            woken = waiter.woken() => if !woken { break },
            () = tokio::time::sleep(left.min(RECHECK)) => {}
        }
    }
    match state.store.expire_diag_request(&request_id).await? {
        DiagState::Answered(answer) => Ok(Json(answer)),
        _ => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "device_timeout",
            format!("device {device} did not answer within {timeout} (request {request_id})"),
        )
        .with_details(serde_json::json!({
            "request_id": request_id,
            "device": device.as_str(),
            "timeout": timeout.to_string(),
        }))),
    }
}

/// The reboot confirmation: issues a token (409) without one, consumes it with one.
async fn confirm(state: &AppState, device: &DeviceId, token: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else {
        // An unknown device is a 404 here already, not a token for nothing.
        state.store.get_device(device).await?;
        let expires_at = now().saturating_add(CONFIRMATION_VALIDITY);
        let token = state
            .store
            .create_diag_confirmation(device, DiagAction::Reboot, expires_at, now())
            .await?;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "confirmation_required",
            format!(
                "rebooting device {device} needs confirmation: repeat the request with \"confirm\": \"{token}\" within {CONFIRMATION_VALIDITY}"
            ),
        )
        .with_details(serde_json::json!({
            "token": token,
            "device": device.as_str(),
            "action": "reboot",
            "expires_at": expires_at,
        })));
    };
    match state
        .store
        .consume_diag_confirmation(device, DiagAction::Reboot, token, now())
        .await?
    {
        Confirmation::Accepted => Ok(()),
        Confirmation::Unknown => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_confirmation",
            format!("the confirmation token is not one issued for rebooting device {device}; request a new one by calling without \"confirm\""),
        )),
        Confirmation::Used => Err(ApiError::new(
            StatusCode::CONFLICT,
            "confirmation_used",
            "the confirmation token was already used; request a new one by calling without \"confirm\"",
        )),
        Confirmation::Expired => Err(ApiError::new(
            StatusCode::CONFLICT,
            "confirmation_expired",
            format!("the confirmation token expired (tokens are valid for {CONFIRMATION_VALIDITY}); request a new one by calling without \"confirm\""),
        )),
    }
}

// ---- device API ---------------------------------------------------------------------------------

/// The oldest diagnostics request this device has to answer; waits up to `wait` seconds, then `204`.
#[utoipa::path(get, operation_id = "device_next_diagnostics", path = "/api/device/v1/diagnostics/next", tag = "device",
    params(WaitParams),
    responses((status = 200, body = DiagCommand), (status = 204, description = "nothing to answer within the wait"),
              (status = 400, body = drover_proto::error::ErrorBody), (status = 401, body = drover_proto::error::ErrorBody)),
    security(("device" = [])))]
pub async fn device_next(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    ApiQuery(params): ApiQuery<WaitParams>,
) -> Result<Response, ApiError> {
    long_poll(
        &state,
        WakeKey::Diag(device.id.clone()),
        params.wait,
        || state.store.next_diag_request(&device.id, now()),
    )
    .await
}

/// Answers a diagnostics request: `{"result": …}` or `{"error": "…"}`.
#[utoipa::path(post, operation_id = "device_answer_diagnostics", path = "/api/device/v1/diagnostics/{request_id}", tag = "device",
    params(("request_id" = String, Path)), request_body = DiagResponse,
    responses((status = 200, description = "recorded"), (status = 400, body = drover_proto::error::ErrorBody),
              (status = 404, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody, description = "`request_expired` or `already_answered`")),
    security(("device" = [])))]
pub async fn device_answer(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    Path(request_id): Path<String>,
    ApiJson(response): ApiJson<DiagResponse>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if response
        .request_id
        .as_ref()
        .is_some_and(|id| *id != request_id)
    {
        return Err(ApiError::bad_request(
            "the body's request_id is not the request in the path",
        ));
    }
    record_answer(&state, &device.id, &request_id, response).await?;
    Ok(Json(
        serde_json::json!({ "request_id": request_id, "state": "answered" }),
    ))
}

/// Records a device's answer (HTTP and MQTT alike) and wakes the operator's call waiting for it.
pub(crate) async fn record_answer(
    state: &AppState,
    device: &DeviceId,
    request_id: &str,
    response: DiagResponse,
) -> Result<(), ApiError> {
    let well_formed = !request_id.is_empty()
        && request_id.len() <= 64
        && request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !well_formed {
        return Err(ApiError::bad_request(format!(
            "{request_id:?} is not a diagnostics request id"
        )));
    }
    if response.result.is_none() && response.error.is_none() {
        return Err(ApiError::bad_request(
            "an answer needs a \"result\" or an \"error\"",
        ));
    }
    match state
        .store
        .answer_diag_request(device, request_id, response, now())
        .await?
    {
        AnswerOutcome::Accepted => {
            state.wakes.wake(&WakeKey::Answer(request_id.to_owned()));
            Ok(())
        }
        AnswerOutcome::Expired => Err(ApiError::new(
            StatusCode::CONFLICT,
            "request_expired",
            format!(
                "diagnostics request {request_id} expired: nobody waits for the answer any more"
            ),
        )),
        AnswerOutcome::AlreadyAnswered => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_answered",
            format!("diagnostics request {request_id} was already answered"),
        )),
    }
}
