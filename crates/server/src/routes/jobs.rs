//! Fleet jobs over HTTP: operators create, list, show and cancel jobs under `/api/v1/jobs`;
//! devices long-poll for their next execution and report on it under `/api/device/v1/jobs`.
//!
//! A device only ever sees its own executions: another device's execution is a 404, exactly like
//! one that does not exist. A report on a canceled job is a 409 `job_canceled`, which tells the
//! device to stop.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_core::DeviceId;
use drover_proto::auth::Role;
use drover_proto::jobs::{
    ExecutionId, JobCancelRequest, JobExecutionView, JobId, JobOffer, JobStatusAccepted,
    JobStatusReport, JobView, NewJob,
};
use drover_proto::Page;
use drover_store::JobReportOutcome;
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, DeviceAuth, Operator};
use crate::wake::WakeKey;
use crate::{now, AppState};

/// Longest a long-poll may wait, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;

/// How often a waiting long-poll re-reads the store, for changes made through other replicas.
pub(crate) const RECHECK: Duration = Duration::from_secs(2);

/// Creates a job over a target; the jobs tick starts the first executions at once.
#[utoipa::path(post, operation_id = "jobs_create", path = "/api/v1/jobs", tag = "jobs",
    request_body = NewJob,
    responses((status = 201, body = JobView), (status = 400, body = drover_proto::error::ErrorBody),
        (status = 404, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Operator,
    ApiJson(new): ApiJson<NewJob>,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let view = state.store.create_job(&actor, new, now()).await?;
    state.jobs_changed.notify_one();
    Ok((StatusCode::CREATED, Json(view)))
}

/// Filters for the job list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `running`, `completed` or `canceled`.
    pub state: Option<String>,
    /// 1–1000 (default 100).
    pub limit: Option<usize>,
}

const JOB_STATES: [&str; 3] = ["running", "completed", "canceled"];
const EXECUTION_STATES: [&str; 7] = [
    "queued",
    "in_progress",
    "succeeded",
    "failed",
    "timed_out",
    "canceled",
    "rejected",
];

/// Jobs, newest first.
#[utoipa::path(get, operation_id = "jobs_list", path = "/api/v1/jobs", tag = "jobs", params(ListParams),
    responses((status = 200, body = Vec<JobView>), (status = 400, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Operator,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    auth.require(Role::Viewer)?;
    check_state(params.state.as_deref(), &JOB_STATES)?;
    let limit = limit(params.limit)?;
    Ok(Json(state.store.list_jobs(params.state, limit).await?))
}

/// One job with its progress.
#[utoipa::path(get, operation_id = "jobs_get", path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = i64, Path)),
    responses((status = 200, body = JobView), (status = 400, body = drover_proto::error::ErrorBody),
        (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<JobView>, ApiError> {
    auth.require(Role::Viewer)?;
    Ok(Json(state.store.get_job(job_id(&id)?).await?))
}

/// Filters for a job's executions.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExecutionParams {
    /// Only executions in this state (`queued`, `in_progress`, `succeeded`, `failed`,
    /// `timed_out`, `canceled`, `rejected`).
    pub state: Option<String>,
    /// 1–1000 (default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A job's executions, one per target device, with each one's state, attempt and answer.
#[utoipa::path(get, operation_id = "jobs_executions", path = "/api/v1/jobs/{id}/executions", tag = "jobs",
    params(("id" = i64, Path), ExecutionParams),
    responses((status = 200, body = Page<JobExecutionView>), (status = 400, body = drover_proto::error::ErrorBody),
        (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn executions(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<ExecutionParams>,
) -> Result<Json<Page<JobExecutionView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let id = job_id(&id)?;
    check_state(params.state.as_deref(), &EXECUTION_STATES)?;
    let limit = limit(params.limit)?;
    Ok(Json(
        state
            .store
            .job_executions(id, params.state, params.cursor, limit)
            .await?,
    ))
}

/// Cancels a running job: queued executions never start, and devices running one are told to
/// stop (their next report is answered 409 `job_canceled`).
#[utoipa::path(post, operation_id = "jobs_cancel", path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = i64, Path)), request_body = Option<JobCancelRequest>,
    responses((status = 200, body = JobView), (status = 404, body = drover_proto::error::ErrorBody),
        (status = 409, body = drover_proto::error::ErrorBody, description = "the job is not running")),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<JobView>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let id = job_id(&id)?;
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        JobCancelRequest::default()
    } else {
        serde_json::from_slice::<JobCancelRequest>(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    if request.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::bad_request(
            "reason is longer than 1000 characters",
        ));
    }
    let reason = request
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| format!("job {id} was canceled by {}", actor.name));
    let (view, devices) = state.store.cancel_job(&actor, id, &reason, now()).await?;
    for device in devices {
        crate::jobs::announce(&state, &device);
    }
    Ok(Json(view))
}

// ---- device API ---------------------------------------------------------------------------------

/// The next-execution long-poll's parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    /// Seconds to wait for something to do, 0–60 (default 0: answer at once).
    pub wait: Option<u64>,
}

/// The job execution this device should run now; waits up to `wait` seconds for one, then `204`.
#[utoipa::path(get, operation_id = "device_next_job", path = "/api/device/v1/jobs/next", tag = "device",
    params(WaitParams),
    responses((status = 200, body = JobOffer), (status = 204, description = "nothing to do within the wait"),
              (status = 400, body = drover_proto::error::ErrorBody), (status = 401, body = drover_proto::error::ErrorBody)),
    security(("device" = [])))]
pub async fn device_next(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    ApiQuery(params): ApiQuery<WaitParams>,
) -> Result<Response, ApiError> {
    long_poll(&state, WakeKey::Job(device.id.clone()), params.wait, || {
        state.store.next_job(&device.id)
    })
    .await
}

/// Reports on one of this device's executions: `in_progress`, `succeeded`, `failed` (tried
/// again if the job allows) or `rejected` (never tried again).
#[utoipa::path(post, operation_id = "device_report_job", path = "/api/device/v1/jobs/{execution}/status", tag = "device",
    params(("execution" = i64, Path)), request_body = JobStatusReport,
    responses((status = 200, body = JobStatusAccepted), (status = 400, body = drover_proto::error::ErrorBody),
              (status = 404, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody, description = "`job_canceled` (stop), `execution_not_in_progress` or `stale_attempt`"),
              (status = 422, body = drover_proto::error::ErrorBody)),
    security(("device" = [])))]
pub async fn device_report(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    Path(execution): Path<String>,
    ApiJson(report): ApiJson<JobStatusReport>,
) -> Result<Json<JobStatusAccepted>, ApiError> {
    let execution = execution_id(&execution)?;
    if report.execution_id.is_some_and(|id| id != execution) {
        return Err(ApiError::bad_request(format!(
            "the body's execution_id {} is not the execution in the path ({execution})",
            report.execution_id.map_or(0, |id| id.0)
        )));
    }
    Ok(Json(
        record_report(&state, &device.id, execution, report).await?,
    ))
}

/// Records a device's report (HTTP and MQTT alike) and maps what became of it.
pub(crate) async fn record_report(
    state: &AppState,
    device: &DeviceId,
    execution: ExecutionId,
    report: JobStatusReport,
) -> Result<JobStatusAccepted, ApiError> {
    match state
        .store
        .report_job(device, execution, report, now())
        .await?
    {
        JobReportOutcome::Accepted { state: new_state } => {
            // A finished execution makes room for the next device.
            state.jobs_changed.notify_one();
            Ok(JobStatusAccepted {
                execution_id: execution,
                state: new_state,
            })
        }
        JobReportOutcome::Canceled => Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_canceled",
            format!("the job of execution {execution} was canceled: stop working on it"),
        )),
        JobReportOutcome::NotInProgress { state } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "execution_not_in_progress",
            format!("execution {execution} is {state}, not in progress; it takes no more reports"),
        )),
        JobReportOutcome::StaleAttempt { current } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "stale_attempt",
            format!(
                "execution {execution} is at attempt {current}; the report is about an earlier one"
            ),
        )),
    }
}

// ---- helpers ------------------------------------------------------------------------------------

/// When a long-poll with `?wait=` gives up.
/// A device's long-poll: answers `next()`'s work at once if there is some, otherwise waits up to
/// `wait` seconds for a wake-up on `key` (or re-reads every `RECHECK`, for other replicas), and
/// answers 204 when the time is up or the server is stopping.
pub(crate) async fn long_poll<T, F, Fut>(
    state: &AppState,
    key: WakeKey,
    wait: Option<u64>,
    mut next: F,
) -> Result<Response, ApiError>
where
    T: serde::Serialize,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, drover_store::StoreError>>,
{
    let deadline = wait_deadline(wait)?;
    let mut waiter = state.wakes.subscribe(key);
    loop {
        if let Some(work) = next().await? {
            return Ok(Json(work).into_response());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        tokio::select! {
            woken = waiter.woken() => if !woken {
                return Ok(StatusCode::NO_CONTENT.into_response());
            },
            () = tokio::time::sleep(left.min(RECHECK)) => {}
        }
    }
}

fn wait_deadline(wait: Option<u64>) -> Result<Instant, ApiError> {
    let wait = wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::bad_request(format!(
            "wait must be between 0 and {MAX_WAIT_SECS} seconds, not {wait}"
        )));
    }
    Ok(Instant::now() + Duration::from_secs(wait))
}

fn check_state(state: Option<&str>, known: &[&str]) -> Result<(), ApiError> {
    match state {
        Some(state) if !known.contains(&state) => Err(ApiError::bad_request(format!(
            "state {state:?} is not one of {}",
            known.join(", ")
        ))),
        _ => Ok(()),
    }
}

fn limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    Ok(limit)
}

fn job_id(text: &str) -> Result<JobId, ApiError> {
    positive(text)
        .map(JobId)
        .ok_or_else(|| ApiError::bad_request(format!("job id {text:?} is not a positive number")))
}

fn execution_id(text: &str) -> Result<ExecutionId, ApiError> {
    positive(text).map(ExecutionId).ok_or_else(|| {
        ApiError::bad_request(format!("execution id {text:?} is not a positive number"))
    })
}

fn positive(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().filter(|id| *id > 0)
}
