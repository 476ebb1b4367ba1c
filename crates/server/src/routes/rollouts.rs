//! `/api/v1/rollouts`: staged rollouts — create, list, show, the decision log, the devices, and
//! the operator commands (pause, resume, abort, approve, rollback).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use drover_core::rollout::machine::Command;
use drover_proto::auth::Role;
use drover_proto::rollouts::{
    NewRollout, RolloutCommandRequest, RolloutDecisionView, RolloutDeviceView, RolloutId,
    RolloutView,
};
use drover_proto::Page;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, Operator};
use crate::{now, AppState};

/// Creates a rollout: validates the definition and the target, plans the device order and
/// starts it (the orchestrator dispatches the first phase on its next tick).
#[utoipa::path(post, operation_id = "rollouts_create", path = "/api/v1/rollouts", tag = "rollouts",
    request_body = NewRollout,
    responses((status = 201, body = RolloutView), (status = 404, body = drover_proto::error::ErrorBody),
        (status = 409, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Operator,
    ApiJson(new): ApiJson<NewRollout>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let view = state.store.create_rollout(&actor, new, now()).await?;
    state.rollouts_changed.notify_one();
    Ok((StatusCode::CREATED, Json(view)))
}

/// Filters for the rollout list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `running`, `paused`, `completed`, `aborted` or `rolled_back`.
    pub status: Option<String>,
    /// 1–1000 (default 100).
    pub limit: Option<usize>,
}

const STATUSES: [&str; 5] = ["running", "paused", "completed", "aborted", "rolled_back"];

/// Rollouts, newest first.
#[utoipa::path(get, operation_id = "rollouts_list", path = "/api/v1/rollouts", tag = "rollouts", params(ListParams),
    responses((status = 200, body = Vec<RolloutView>), (status = 400, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Operator,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<RolloutView>>, ApiError> {
    auth.require(Role::Viewer)?;
    if let Some(status) = &params.status {
        if !STATUSES.contains(&status.as_str()) {
            return Err(ApiError::bad_request(format!(
                "status {status:?} is not one of {}",
                STATUSES.join(", ")
            )));
        }
    }
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    Ok(Json(state.store.list_rollouts(params.status, limit).await?))
}

/// One rollout: phase progress, device counts and every gate's evidence.
#[utoipa::path(get, operation_id = "rollouts_get", path = "/api/v1/rollouts/{id}", tag = "rollouts",
    params(("id" = i64, Path)),
    responses((status = 200, body = RolloutView), (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    auth.require(Role::Viewer)?;
    Ok(Json(state.store.get_rollout(rollout_id(&id)?).await?))
}

/// The decision log: every start, gate verdict, pause, command and completion, with evidence.
#[utoipa::path(get, operation_id = "rollouts_decisions", path = "/api/v1/rollouts/{id}/decisions", tag = "rollouts",
    params(("id" = i64, Path)),
    responses((status = 200, body = Vec<RolloutDecisionView>), (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn decisions(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<Vec<RolloutDecisionView>>, ApiError> {
    auth.require(Role::Viewer)?;
    Ok(Json(state.store.rollout_decisions(rollout_id(&id)?).await?))
}

/// Filters for a rollout's devices.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeviceParams {
    /// Only devices in this state (`queued`, `updating`, `retry`, `succeeded`, `failed`, …).
    pub state: Option<String>,
    /// 1–1000 (default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A rollout's devices in dispatch order.
#[utoipa::path(get, operation_id = "rollouts_devices", path = "/api/v1/rollouts/{id}/devices", tag = "rollouts",
    params(("id" = i64, Path), DeviceParams),
    responses((status = 200, body = Page<RolloutDeviceView>), (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn devices(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<DeviceParams>,
) -> Result<Json<Page<RolloutDeviceView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    Ok(Json(
        state
            .store
            .rollout_devices(rollout_id(&id)?, params.state, params.cursor, limit)
            .await?,
    ))
}

/// Pauses a running rollout: no new device starts; devices already updating finish.
#[utoipa::path(post, operation_id = "rollouts_pause", path = "/api/v1/rollouts/{id}/pause", tag = "rollouts",
    params(("id" = i64, Path)), request_body = Option<RolloutCommandRequest>,
    responses((status = 200, body = RolloutView), (status = 404, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn pause(
    state: State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<RolloutView>, ApiError> {
    let reason = reason(&body, "paused by an operator")?;
    apply(state, auth, &id, Command::Pause { reason }).await
}

/// Resumes a paused rollout (after a failed gate, the operator overrides it: the sequential
/// tests start afresh).
#[utoipa::path(post, operation_id = "rollouts_resume", path = "/api/v1/rollouts/{id}/resume", tag = "rollouts",
    params(("id" = i64, Path)),
    responses((status = 200, body = RolloutView), (status = 404, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume(
    state: State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    apply(state, auth, &id, Command::Resume).await
}

/// Approves the phase that waits for approval.
#[utoipa::path(post, operation_id = "rollouts_approve", path = "/api/v1/rollouts/{id}/approve", tag = "rollouts",
    params(("id" = i64, Path)),
    responses((status = 200, body = RolloutView), (status = 404, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn approve(
    state: State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    apply(state, auth, &id, Command::Approve).await
}

/// Aborts a rollout for good: unfinished device updates are canceled (devices are told to stop).
#[utoipa::path(post, operation_id = "rollouts_abort", path = "/api/v1/rollouts/{id}/abort", tag = "rollouts",
    params(("id" = i64, Path)), request_body = Option<RolloutCommandRequest>,
    responses((status = 200, body = RolloutView), (status = 404, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn abort(
    state: State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<RolloutView>, ApiError> {
    let reason = reason(&body, "aborted by an operator")?;
    apply(state, auth, &id, Command::Abort { reason }).await
}

/// Rolls back: cancels unfinished updates and deploys the previous release to every device that
/// took this one.
#[utoipa::path(post, operation_id = "rollouts_rollback", path = "/api/v1/rollouts/{id}/rollback", tag = "rollouts",
    params(("id" = i64, Path)), request_body = Option<RolloutCommandRequest>,
    responses((status = 200, body = RolloutView), (status = 404, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn rollback(
    state: State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<RolloutView>, ApiError> {
    let reason = reason(&body, "rolled back by an operator")?;
    apply(state, auth, &id, Command::Rollback { reason }).await
}

async fn apply(
    State(state): State<AppState>,
    auth: Operator,
    id: &str,
    command: Command,
) -> Result<Json<RolloutView>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let (view, outcome) = state
        .store
        .rollout_command(&actor, rollout_id(id)?, command, now())
        .await?;
    crate::orchestrator::announce(&state, outcome.offered);
    state.rollouts_changed.notify_one();
    Ok(Json(view))
}

/// The optional `{"reason": …}` body of a command; an empty body is fine.
fn reason(body: &[u8], default: &str) -> Result<String, ApiError> {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        RolloutCommandRequest::default()
    } else {
        serde_json::from_slice::<RolloutCommandRequest>(body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    if request.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::bad_request(
            "reason is longer than 1000 characters",
        ));
    }
    Ok(request
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| default.to_owned()))
}

fn rollout_id(text: &str) -> Result<RolloutId, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(RolloutId)
        .ok_or_else(|| {
            ApiError::bad_request(format!("rollout id {text:?} is not a positive number"))
        })
}
