//! Device shadows over HTTP. Devices read their own shadow, report state and long-poll for the
//! delta under `/api/device/v1/shadow`; operators read it, set desired state and delete it under
//! `/api/v1/devices/{id}/shadow`.
//!
//! A device can only ever name itself: its id comes from its credential, never from the request.
//! Each side writes its own half: a device sending `desired`, or an operator sending `reported`,
//! is refused, so neither can make the other's intent disappear. Bodies are capped before they are
//! parsed, then checked by `drover_core::shadow`, whose rules (merge, `null` deletes, versions,
//! limits) are the API's.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_core::shadow::{ShadowDocument, ShadowLimits, ShadowName, ShadowUpdate, UpdateOutcome};
use drover_core::DeviceId;
use drover_proto::auth::Role;
use drover_proto::shadow::{
    ShadowAccepted, ShadowDelta, ShadowList, ShadowUpdateRequest, ShadowView,
};
use drover_store::Actor;
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{parse_id, ApiJson, ApiQuery, DeviceAuth, Operator};
use crate::routes::devices::device_id;
use crate::{now, AppState};

/// Longest a delta long-poll may wait, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// How often a waiting long-poll re-reads the store. Local changes wake it at once; this catches
/// changes made through other server replicas, which the in-process hub cannot see.
const RECHECK: Duration = Duration::from_secs(2);

/// The limits every shadow is held to (AWS's classic ones; not configurable yet).
pub fn limits() -> ShadowLimits {
    ShadowLimits::default()
}

/// Largest shadow update body. The limits apply to the resulting document, but a body may
/// legitimately hold up to a full section of new values plus a full section of `null`s deleting
/// old ones; twice the section limit with room for the envelope covers that, while a client
/// cannot make the server parse megabytes of JSON only to refuse it.
pub fn max_update_bytes() -> usize {
    2 * limits().max_document_bytes + 1024
}

/// Which shadow a request is about.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ShadowParams {
    /// A named shadow (`[A-Za-z0-9_-]`, 1–64 characters); the classic shadow when absent or empty.
    pub name: Option<String>,
}

/// The delta long-poll's parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeltaParams {
    /// A named shadow; the classic shadow when absent or empty.
    pub name: Option<String>,
    /// The version the device last acted on (default 0): only a newer delta is answered.
    pub version: Option<u64>,
    /// Seconds to wait for a newer delta, 0–60 (default 0: answer at once).
    pub wait: Option<u64>,
}

// ---- device API ---------------------------------------------------------------------------------

/// The calling device's shadow (404 if it has none).
#[utoipa::path(get, operation_id = "device_shadow_get", path = "/api/device/v1/shadow", tag = "device", params(ShadowParams),
    responses((status = 200, body = ShadowView), (status = 400, body = drover_proto::error::ErrorBody),
              (status = 401, body = drover_proto::error::ErrorBody), (status = 404, body = drover_proto::error::ErrorBody)),
    security(("device" = [])))]
pub async fn device_get(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    ApiQuery(params): ApiQuery<ShadowParams>,
) -> Result<Json<Value>, ApiError> {
    let name = shadow_name(params.name.as_deref())?;
    read(&state, &device.id, name.as_ref()).await
}

/// Reports the calling device's state: `{"state": {"reported": {…}}, "version"?, "clientToken"?}`.
#[utoipa::path(post, operation_id = "device_shadow_update", path = "/api/device/v1/shadow", tag = "device", params(ShadowParams),
    request_body = ShadowUpdateRequest,
    responses((status = 200, body = ShadowAccepted, description = "what the update changed; an update that changed nothing has an empty state"),
              (status = 400, body = drover_proto::error::ErrorBody), (status = 401, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody, description = "version conflict; details.current_version"),
              (status = 413, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)),
    security(("device" = [])))]
pub async fn device_update(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    ApiQuery(params): ApiQuery<ShadowParams>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let name = shadow_name(params.name.as_deref())?;
    let update = parse_update(body)?;
    if update.desired.is_some() {
        return Err(ApiError::unprocessable(
            "a device may update only state.reported; desired state is set by operators",
        ));
    }
    let actor = Actor::device(device.id.as_str());
    let (outcome, _) = write(&state, &actor, &device.id, name.as_ref(), update).await?;
    Ok(Json(outcome.accepted_json()))
}

/// Long-polls for the calling device's delta: answers at once if the shadow is newer than
/// `version` and has a delta, else waits up to `wait` seconds for one, then answers `204`.
#[utoipa::path(get, operation_id = "device_shadow_delta", path = "/api/device/v1/shadow/delta", tag = "device", params(DeltaParams),
    responses((status = 200, body = ShadowDelta, description = "the whole current delta and the document version"),
              (status = 204, description = "no newer delta within the wait; ask again"),
              (status = 400, body = drover_proto::error::ErrorBody), (status = 401, body = drover_proto::error::ErrorBody)),
    security(("device" = [])))]
pub async fn device_delta(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    ApiQuery(params): ApiQuery<DeltaParams>,
) -> Result<Response, ApiError> {
    let name = shadow_name(params.name.as_deref())?;
    let since = params.version.unwrap_or(0);
    let wait = params.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::bad_request(format!(
            "wait must be between 0 and {MAX_WAIT_SECS} seconds, not {wait}"
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(wait);
    // Subscribed before the first read, so a change stored between a read and the wait is seen.
    let mut watch = state.shadows.subscribe(&device.id, name.as_ref());
    loop {
        let document = state.store.get_shadow(&device.id, name.as_ref()).await?;
        if let Some(delta) = document
            .filter(|document| document.is_newer(since))
            .and_then(|document| document.delta_json())
        {
            return Ok(Json(delta).into_response());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::select! {
            wake = watch.changed() => {
                if wake.is_none() {
                    // The server is shutting down: "nothing yet" is always a safe answer.
                    return Ok(StatusCode::NO_CONTENT.into_response());
                }
            }
            () = tokio::time::sleep(left.min(RECHECK)) => {}
        }
    }
}

// ---- admin API ----------------------------------------------------------------------------------

/// A device's shadow (404 if it has none).
#[utoipa::path(get, operation_id = "shadow_get", path = "/api/v1/devices/{id}/shadow", tag = "shadows",
    params(("id" = String, Path), ShadowParams),
    responses((status = 200, body = ShadowView), (status = 400, body = drover_proto::error::ErrorBody),
              (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ShadowParams>,
) -> Result<Json<Value>, ApiError> {
    auth.require(Role::Viewer)?;
    let id = device_id(&id)?;
    let name = shadow_name(params.name.as_deref())?;
    read(&state, &id, name.as_ref()).await
}

/// Sets desired state: `{"state": {"desired": {…}}, "version"?}`. Answers with the whole document.
#[utoipa::path(patch, operation_id = "shadow_update", path = "/api/v1/devices/{id}/shadow", tag = "shadows",
    params(("id" = String, Path), ShadowParams), request_body = ShadowUpdateRequest,
    responses((status = 200, body = ShadowView), (status = 400, body = drover_proto::error::ErrorBody),
              (status = 404, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody, description = "version conflict; details.current_version"),
              (status = 413, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ShadowParams>,
    body: Result<ApiJson<Value>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let id = device_id(&id)?;
    let name = shadow_name(params.name.as_deref())?;
    let update = parse_update(body)?;
    if update.reported.is_some() {
        return Err(ApiError::unprocessable(
            "operators may set only state.desired; reported state comes from the device",
        ));
    }
    let (_, document) = write(&state, &actor, &id, name.as_ref(), update).await?;
    Ok(Json(document.to_json()))
}

/// Deletes a device's shadow. Its version is kept: a shadow written again continues from it.
#[utoipa::path(delete, operation_id = "shadow_delete", path = "/api/v1/devices/{id}/shadow", tag = "shadows",
    params(("id" = String, Path), ShadowParams),
    responses((status = 204), (status = 400, body = drover_proto::error::ErrorBody),
              (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ShadowParams>,
) -> Result<StatusCode, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let id = device_id(&id)?;
    let name = shadow_name(params.name.as_deref())?;
    match state
        .store
        .delete_shadow(&actor, &id, name.as_ref(), now())
        .await?
    {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(no_shadow(&id, name.as_ref())),
    }
}

/// The shadows a device has, the classic one first.
#[utoipa::path(get, operation_id = "shadow_list", path = "/api/v1/devices/{id}/shadows", tag = "shadows",
    params(("id" = String, Path)),
    responses((status = 200, body = ShadowList), (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<ShadowList>, ApiError> {
    auth.require(Role::Viewer)?;
    let id = device_id(&id)?;
    Ok(Json(ShadowList {
        shadows: state.store.list_shadows(&id).await?,
    }))
}

// ---- helpers ------------------------------------------------------------------------------------

/// The whole document, or 404.
async fn read(
    state: &AppState,
    id: &DeviceId,
    name: Option<&ShadowName>,
) -> Result<Json<Value>, ApiError> {
    let document = state
        .store
        .get_shadow(id, name)
        .await?
        .ok_or_else(|| no_shadow(id, name))?;
    Ok(Json(document.to_json()))
}

/// Stores an update and wakes whoever waits on the shadow if it changed; a changed desired state
/// is also announced for MQTT delta publishing.
pub(crate) async fn write(
    state: &AppState,
    actor: &Actor,
    id: &DeviceId,
    name: Option<&ShadowName>,
    update: ShadowUpdate,
) -> Result<(UpdateOutcome, ShadowDocument), ApiError> {
    let desired = update.desired.is_some();
    let (outcome, document) = state
        .store
        .update_shadow(actor, id, name, update, now(), limits())
        .await?;
    if outcome.changed() {
        state.shadows.publish(id, name, outcome.version);
        if desired {
            state.shadows.desired_changed(id, name, outcome.version);
        }
    }
    Ok((outcome, document))
}

/// `?name=`: absent or empty is the classic shadow, so `?name=$NAME` works for both in scripts.
pub(crate) fn shadow_name(text: Option<&str>) -> Result<Option<ShadowName>, ApiError> {
    match text {
        None | Some("") => Ok(None),
        Some(text) => parse_id(text, ShadowName::parse).map(Some),
    }
}

/// Parses an update body: JSON within [`max_update_bytes`], then the shadow rules.
fn parse_update(body: Result<ApiJson<Value>, ApiError>) -> Result<ShadowUpdate, ApiError> {
    let ApiJson(body) = body.map_err(|error| {
        if error.status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "a shadow update body may be at most {} bytes",
                    max_update_bytes()
                ),
            )
        } else {
            error
        }
    })?;
    Ok(ShadowUpdate::from_json(body)?)
}

pub(crate) fn no_shadow(id: &DeviceId, name: Option<&ShadowName>) -> ApiError {
    match name {
        None => ApiError::not_found(format!("device {id} has no classic shadow")),
        Some(name) => ApiError::not_found(format!("device {id} has no shadow named \"{name}\"")),
    }
}
