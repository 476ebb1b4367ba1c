//! Fleet jobs in the store: creating one (validation, the target resolved to one queued execution
//! per device), the tick that starts and times out executions, devices' reports, cancel, views.
//!
//! Every state change of an execution moves one count between the job's counters in the same
//! transaction, so progress is one row read and never drifts from the executions. A tick's work
//! follows what changed: the executions whose deadline passed (a partial index on the deadline of
//! executions in progress) and as many due queued executions as `max_parallel` leaves room for (a
//! partial index on the queue); nothing scans the target. On PostgreSQL a background tick locks
//! its job row with `SKIP LOCKED`, and device reports and cancels lock the same row, so several
//! replicas share the work and `max_parallel` holds across them.

use drover_core::query::Dialect;
use drover_core::shadow::{JsonObject, ShadowDocument, ShadowLimits, ShadowUpdate};
use drover_core::{DeviceId, Duration, Timestamp};
use drover_proto::jobs::{
    DiagRequest, ExecutionId, JobExecutionView, JobId, JobKind, JobOffer, JobProgress,
    JobStatusReport, JobView, NewJob, ReportedJobState,
};
use drover_proto::target::Target;
use drover_proto::Page;

use crate::db::{value_rows, Db, Row, Value};
use crate::ops::{audit, auth::Actor, opt_ts, rollouts, shadow, targets, ts};
use crate::StoreError;

/// Largest `max_parallel`.
pub const MAX_PARALLEL: u32 = 10_000;
/// Largest `retries`.
pub const MAX_RETRIES: u32 = 10;
/// Longest per-device timeout and backoff.
const MAX_TIMEOUT_MS: i64 = 86_400_000;
/// Timed-out executions handled per tick (the rest wait for the next one).
const TIMEOUTS_PER_TICK: i64 = 5000;
/// Executions inserted per statement while creating a job.
const CREATE_BATCH: usize = 500;
/// Largest serialised payload.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// What a tick did that the server must act on outside the transaction.
#[derive(Debug, Default)]
pub struct JobTickOutcome {
    /// Devices offered an execution (wake their long-polls, tell MQTT-connected ones).
    pub offered: Vec<DeviceId>,
    /// Shadows whose desired state a `config` job changed: device and new version.
    pub desired_changed: Vec<(DeviceId, u64)>,
}

/// What became of a device's status report.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportOutcome {
    /// Recorded; the execution's state now.
    Accepted { state: String },
    /// The job was canceled: the device should stop.
    Canceled,
    /// The execution is not in progress (finished, or queued for another attempt).
    NotInProgress { state: String },
    /// The report is about an earlier attempt than the current one.
    StaleAttempt { current: u32 },
}

/// Creates a job after validating it, with one queued execution per target device.
pub async fn create<D: Db>(
    db: &mut D,
    actor: &Actor,
    new: &NewJob,
    now: Timestamp,
) -> Result<JobView, StoreError> {
    validate(new, now)?;
    let query = targets::query_of(db, &new.target).await?;
    if let Target::Devices(devices) = &new.target {
        rollouts::check_listed_devices(db, devices).await?;
    }
    let fragment = query.to_sql(db.dialect(), now, 1);
    let params: Vec<Value> = fragment.params.iter().cloned().map(Value::from).collect();
    let rows = db
        .query_adhoc(
            &format!(
                "SELECT d.seq FROM devices d{} WHERE ({}) AND d.status <> 'decommissioned' ORDER BY d.seq",
                fragment.joins, fragment.sql
            ),
            &params,
        )
        .await?;
    let seqs = rows
        .iter()
        .map(|row| row.int(0))
        .collect::<Result<Vec<_>, _>>()?;
    if seqs.is_empty() {
        return Err(StoreError::Invalid(format!(
            "the target ({}) selects no devices in service",
            new.target.describe()
        )));
    }
    let name = new
        .name
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map_or_else(
            || format!("{} {}", new.kind.as_str(), new.target.describe()),
            str::to_owned,
        );
    if name.len() > 200 {
        return Err(StoreError::Invalid(
            "the job name is longer than 200 characters".into(),
        ));
    }
    let n = seqs.len() as i64;
    let row = db
        .query_one(
            "INSERT INTO jobs (name, kind, target, payload, max_parallel, timeout_ms, retries, backoff_ms,
                 state, n_total, n_queued, created_at, created_by, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'running', $9, $9, $10, $11, $10) RETURNING id",
            &[
                Value::from(name.as_str()),
                Value::from(new.kind.as_str()),
                Value::from(json(&new.target)?),
                Value::from(new.payload.as_ref().map(json).transpose()?),
                Value::Int(i64::from(new.max_parallel)),
                Value::Int(new.timeout.as_millis()),
                Value::Int(i64::from(new.retries)),
                Value::Int(new.backoff.as_millis()),
                Value::Int(n),
                ts(now),
                Value::from(actor.name.as_str()),
            ],
        )
        .await?;
    let id = JobId(row.int(0)?);
    for chunk in seqs.chunks(CREATE_BATCH) {
        let mut values = Vec::with_capacity(chunk.len() * 4);
        for seq in chunk {
            values.push(Value::Int(id.0));
            values.push(Value::Int(*seq));
            values.push(ts(now));
            values.push(ts(now));
        }
        db.execute(
            &format!(
                "INSERT INTO job_executions (job_id, device_seq, next_attempt_at, updated_at, state) VALUES {}",
                value_rows(chunk.len(), 4).replace(')', ", 'queued')")
            ),
            &values,
        )
        .await?;
    }
    let view = get(db, id).await?;
    audit::record(
        db,
        actor,
        "job.create",
        "job",
        &id.to_string(),
        None::<&()>,
        Some(&view),
        now,
    )
    .await?;
    Ok(view)
}

/// One job.
pub async fn get<D: Db>(db: &mut D, id: JobId) -> Result<JobView, StoreError> {
    let row = db
        .query_opt(
            &format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"),
            &[Value::Int(id.0)],
        )
        .await?
        .ok_or_else(|| StoreError::not_found("job", id))?;
    view(&row)
}

/// Jobs, newest first, optionally in one state.
pub async fn list<D: Db>(
    db: &mut D,
    state: Option<&str>,
    limit: usize,
) -> Result<Vec<JobView>, StoreError> {
    let rows = match state {
        Some(state) => {
            db.query(
                &format!("SELECT {COLUMNS} FROM jobs WHERE state = $1 ORDER BY id DESC LIMIT $2"),
                &[Value::from(state), Value::Int(limit as i64)],
            )
            .await?
        }
        None => {
            db.query(
                &format!("SELECT {COLUMNS} FROM jobs ORDER BY id DESC LIMIT $1"),
                &[Value::Int(limit as i64)],
            )
            .await?
        }
    };
    rows.iter().map(view).collect()
}

/// Jobs the tick has work for.
pub async fn active<D: Db>(db: &mut D) -> Result<Vec<JobId>, StoreError> {
    let rows = db
        .query(
            "SELECT id FROM jobs WHERE state = 'running' ORDER BY id",
            &[],
        )
        .await?;
    rows.iter().map(|row| Ok(JobId(row.int(0)?))).collect()
}

/// A page of a job's executions in creation order, optionally in one state.
pub async fn executions<D: Db>(
    db: &mut D,
    id: JobId,
    state: Option<&str>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page<JobExecutionView>, StoreError> {
    get(db, id).await?;
    let after = match cursor {
        None => 0,
        Some(text) => text.parse::<i64>().map_err(|_| {
            StoreError::Invalid(format!("cursor {text:?} is not one this API returned"))
        })?,
    };
    let mut sql = format!(
        "SELECT {EXECUTION_COLUMNS} FROM job_executions e JOIN devices d ON d.seq = e.device_seq
         WHERE e.job_id = $1 AND e.id > $2"
    );
    let mut params = vec![Value::Int(id.0), Value::Int(after)];
    if let Some(state) = state {
        params.push(Value::from(state));
        sql.push_str(&format!(" AND e.state = ${}", params.len()));
    }
    params.push(Value::Int(limit as i64 + 1));
    sql.push_str(&format!(" ORDER BY e.id LIMIT ${}", params.len()));
    let rows = db.query(&sql, &params).await?;
    let mut items = rows
        .iter()
        .map(execution_view)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|e| e.id.0.to_string())
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// One job tick: times out silent attempts, starts due queued executions up to `max_parallel`,
/// checks whether `config` executions converged, and completes the job when nothing is left. With
/// `skip_locked`, a job another replica is ticking right now is skipped (returns `None`).
pub async fn tick<D: Db>(
    db: &mut D,
    id: JobId,
    now: Timestamp,
    skip_locked: bool,
) -> Result<Option<JobTickOutcome>, StoreError> {
    let Some(job) = lock(db, id, skip_locked).await? else {
        return if skip_locked {
            Ok(None)
        } else {
            Err(StoreError::not_found("job", id))
        };
    };
    let mut outcome = JobTickOutcome::default();
    if job.state != "running" {
        return Ok(Some(outcome));
    }
    let mut delta = Counts::default();

    // Attempts whose deadline passed: try again after the backoff, or give up.
    let expired = db
        .query(
            "SELECT id, attempt FROM job_executions
             WHERE job_id = $1 AND state = 'in_progress' AND deadline <= $2 ORDER BY deadline LIMIT $3",
            &[Value::Int(id.0), ts(now), Value::Int(TIMEOUTS_PER_TICK)],
        )
        .await?;
    for row in &expired {
        let (execution, attempt) = (row.int(0)?, row.int(1)?);
        let error = format!(
            "the device did not finish attempt {attempt} within {}",
            Duration::from_millis(job.timeout_ms)
        );
        finish_attempt(
            db,
            &job,
            execution,
            attempt,
            "timed_out",
            None,
            &error,
            now,
            &mut delta,
        )
        .await?;
    }

    // `config` executions succeed once the device reports the pushed configuration.
    if job.kind == JobKind::Config {
        converge_configs(db, &job, now, &mut delta).await?;
    }

    // Start due queued executions while there is room.
    let running = job.counts.in_progress + delta.in_progress;
    let room = i64::from(job.max_parallel) - running;
    if room > 0 {
        let due = db
            .query(
                "SELECT e.id, d.id, d.status FROM job_executions e
                 JOIN devices d ON d.seq = e.device_seq
                 WHERE e.job_id = $1 AND e.state = 'queued' AND e.next_attempt_at <= $2
                 ORDER BY e.next_attempt_at, e.id LIMIT $3",
                &[Value::Int(id.0), ts(now), Value::Int(room)],
            )
            .await?;
        for row in &due {
            let execution = row.int(0)?;
            let device =
                DeviceId::parse(&row.text(1)?).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if row.text(2)? == "decommissioned" {
                set_final(
                    db,
                    execution,
                    "canceled",
                    None,
                    Some("the device was decommissioned"),
                    now,
                )
                .await?;
                delta.queued -= 1;
                delta.canceled += 1;
                continue;
            }
            let deadline = now.saturating_add(Duration::from_millis(job.timeout_ms));
            db.execute(
                "UPDATE job_executions SET state = 'in_progress', attempt = attempt + 1, offered_at = $1,
                     deadline = $2, updated_at = $1 WHERE id = $3",
                &[ts(now), ts(deadline), Value::Int(execution)],
            )
            .await?;
            delta.queued -= 1;
            delta.in_progress += 1;
            if job.kind == JobKind::Config {
                match push_config(db, &job, &device, now).await {
                    Ok(Some(version)) => outcome.desired_changed.push((device.clone(), version)),
                    Ok(None) => {}
                    Err(StoreError::Shadow(e)) => {
                        // The payload was checked on creation, so this is the device's shadow
                        // (e.g. over its size limit with the patch): retrying will not help.
                        set_final(
                            db,
                            execution,
                            "failed",
                            None,
                            Some(&format!("cannot set the desired state: {e}")),
                            now,
                        )
                        .await?;
                        delta.in_progress -= 1;
                        delta.failed += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            outcome.offered.push(device);
        }
    }
    write_counts(db, &job, &delta, now).await?;
    if outcome.offered.is_empty() && expired.is_empty() {
        settle_if_done(db, &job, now).await?;
    }
    Ok(Some(outcome))
}

/// The execution a device should run now: the oldest one in progress.
pub async fn next_for_device<D: Db>(
    db: &mut D,
    device: &DeviceId,
) -> Result<Option<JobOffer>, StoreError> {
    let row = db
        .query_opt(
            "SELECT e.id, e.attempt, e.deadline, j.id, j.kind, j.payload FROM job_executions e
             JOIN devices d ON d.seq = e.device_seq JOIN jobs j ON j.id = e.job_id
             WHERE d.id = $1 AND e.state = 'in_progress' ORDER BY e.offered_at, e.id LIMIT 1",
            &[Value::from(device.as_str())],
        )
        .await?;
    row.map(|row| {
        Ok(JobOffer {
            execution_id: ExecutionId(row.int(0)?),
            attempt: row.int(1)? as u32,
            deadline: Timestamp::from_millis(row.opt_int(2)?.unwrap_or(0)),
            job_id: JobId(row.int(3)?),
            kind: kind(&row.text(4)?)?,
            payload: row.opt_text(5)?.map(|p| parse_json(&p)).transpose()?,
        })
    })
    .transpose()
}

/// Records a device's report on one of its executions. An execution of another device is
/// `NotFound`, exactly like one that does not exist.
pub async fn report<D: Db>(
    db: &mut D,
    device: &DeviceId,
    execution: ExecutionId,
    report: &JobStatusReport,
    now: Timestamp,
) -> Result<ReportOutcome, StoreError> {
    if let Some(message) = &report.message {
        if message.len() > 4096 {
            return Err(StoreError::Invalid(
                "message is longer than 4096 bytes".into(),
            ));
        }
    }
    if let Some(result) = &report.result {
        if json(result)?.len() > MAX_PAYLOAD_BYTES {
            return Err(StoreError::Invalid(format!(
                "result is larger than {MAX_PAYLOAD_BYTES} bytes of JSON"
            )));
        }
    }
    let row = db
        .query_opt(
            "SELECT e.job_id, e.state, e.attempt FROM job_executions e JOIN devices d ON d.seq = e.device_seq
             WHERE e.id = $1 AND d.id = $2",
            &[Value::Int(execution.0), Value::from(device.as_str())],
        )
        .await?
        .ok_or_else(|| StoreError::not_found("job execution", execution))?;
    let job_id = JobId(row.int(0)?);
    // Lock the job first (as the tick and cancel do), then re-read the execution under it.
    let job = lock(db, job_id, false)
        .await?
        .ok_or_else(|| StoreError::not_found("job", job_id))?;
    let row = db
        .query_one(
            "SELECT state, attempt FROM job_executions WHERE id = $1",
            &[Value::Int(execution.0)],
        )
        .await?;
    let (state, attempt) = (row.text(0)?, row.int(1)?);
    if state == "canceled" {
        return Ok(ReportOutcome::Canceled);
    }
    if state != "in_progress" {
        return Ok(ReportOutcome::NotInProgress { state });
    }
    if let Some(reported) = report.attempt {
        if i64::from(reported) != attempt {
            return Ok(ReportOutcome::StaleAttempt {
                current: attempt as u32,
            });
        }
    }
    let mut delta = Counts::default();
    let result = report.result.as_ref().map(json).transpose()?;
    let state = match report.state {
        ReportedJobState::InProgress => {
            db.execute(
                "UPDATE job_executions SET updated_at = $1 WHERE id = $2",
                &[ts(now), Value::Int(execution.0)],
            )
            .await?;
            "in_progress".to_owned()
        }
        ReportedJobState::Succeeded => {
            set_final(db, execution.0, "succeeded", result.as_deref(), None, now).await?;
            delta.in_progress -= 1;
            delta.succeeded += 1;
            "succeeded".to_owned()
        }
        ReportedJobState::Rejected => {
            let message = report
                .message
                .as_deref()
                .unwrap_or("the device refused the job");
            set_final(
                db,
                execution.0,
                "rejected",
                result.as_deref(),
                Some(message),
                now,
            )
            .await?;
            delta.in_progress -= 1;
            delta.rejected += 1;
            "rejected".to_owned()
        }
        ReportedJobState::Failed => {
            let message = report
                .message
                .as_deref()
                .unwrap_or("the device reported a failure");
            finish_attempt(
                db,
                &job,
                execution.0,
                attempt,
                "failed",
                result.as_deref(),
                message,
                now,
                &mut delta,
            )
            .await?
        }
    };
    write_counts(db, &job, &delta, now).await?;
    Ok(ReportOutcome::Accepted { state })
}

/// Cancels a running job: its queued and in-progress executions are canceled (devices reporting
/// on them are told to stop). Returns the job and the devices that were running it.
pub async fn cancel<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: JobId,
    reason: &str,
    now: Timestamp,
) -> Result<(JobView, Vec<DeviceId>), StoreError> {
    let job = lock(db, id, false)
        .await?
        .ok_or_else(|| StoreError::not_found("job", id))?;
    if job.state != "running" {
        return Err(StoreError::Conflict(format!(
            "job {id} is already {}; only a running job can be canceled",
            job.state
        )));
    }
    let before = get(db, id).await?;
    let running = db
        .query(
            "SELECT d.id FROM job_executions e JOIN devices d ON d.seq = e.device_seq
             WHERE e.job_id = $1 AND e.state = 'in_progress'",
            &[Value::Int(id.0)],
        )
        .await?
        .iter()
        .map(|row| DeviceId::parse(&row.text(0)?).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    db.execute(
        "UPDATE job_executions SET state = 'canceled', error = $1, finished_at = $2, updated_at = $2, deadline = NULL
         WHERE job_id = $3 AND state IN ('queued', 'in_progress')",
        &[Value::from(reason), ts(now), Value::Int(id.0)],
    )
    .await?;
    db.execute(
        "UPDATE jobs SET state = 'canceled', n_canceled = n_canceled + n_queued + n_in_progress,
             n_queued = 0, n_in_progress = 0, updated_at = $1, finished_at = $1 WHERE id = $2",
        &[ts(now), Value::Int(id.0)],
    )
    .await?;
    let after = get(db, id).await?;
    audit::record(
        db,
        actor,
        "job.cancel",
        "job",
        &id.to_string(),
        Some(&before),
        Some(&serde_json::json!({ "job": &after, "reason": reason })),
        now,
    )
    .await?;
    Ok((after, running))
}

/// Checks a new job's settings and payload; the message says what is wrong.
pub fn validate(new: &NewJob, now: Timestamp) -> Result<(), StoreError> {
    let invalid = |m: String| Err(StoreError::Invalid(m));
    if !(1..=MAX_PARALLEL).contains(&new.max_parallel) {
        return invalid(format!(
            "max_parallel must be between 1 and {MAX_PARALLEL}, not {}",
            new.max_parallel
        ));
    }
    if !(1000..=MAX_TIMEOUT_MS).contains(&new.timeout.as_millis()) {
        return invalid(format!(
            "timeout must be between 1s and 1d, not {}",
            new.timeout
        ));
    }
    if new.retries > MAX_RETRIES {
        return invalid(format!(
            "retries must be between 0 and {MAX_RETRIES}, not {}",
            new.retries
        ));
    }
    if !(0..=MAX_TIMEOUT_MS).contains(&new.backoff.as_millis()) {
        return invalid(format!(
            "backoff must be between 0s and 1d, not {}",
            new.backoff
        ));
    }
    if let Some(payload) = &new.payload {
        if json(payload)?.len() > MAX_PAYLOAD_BYTES {
            return invalid(format!(
                "payload is larger than {MAX_PAYLOAD_BYTES} bytes of JSON"
            ));
        }
    }
    let payload = new.payload.as_ref().filter(|p| !p.is_null());
    match new.kind {
        JobKind::Reboot => {
            if payload.is_some_and(|p| p.as_object().is_none_or(|o| !o.is_empty())) {
                return invalid("a reboot job takes no payload".into());
            }
        }
        JobKind::Config => {
            let Some(patch) = payload
                .and_then(|p| p.as_object())
                .filter(|o| !o.is_empty())
            else {
                return invalid(
                    "a config job needs a payload: a non-empty JSON object to merge into each device shadow's desired state".into(),
                );
            };
            let update = ShadowUpdate::from_json(serde_json::json!({"state": {"desired": patch}}))
                .map_err(|e| StoreError::Invalid(format!("payload: {e}")))?;
            ShadowDocument::new(now)
                .apply(update, now, &ShadowLimits::default())
                .map_err(|e| StoreError::Invalid(format!("payload: {e}")))?;
        }
        JobKind::Diagnostics => {
            let Some(payload) = payload else {
                return invalid(
                    "a diagnostics job needs a payload: {\"action\": \"system_info\" | \"log_tail\" | \"config_dump\" | \"ping\", \"lines\"?: N}".into(),
                );
            };
            let request: DiagRequest = serde_json::from_value(payload.clone())
                .map_err(|e| StoreError::Invalid(format!("payload: {e}")))?;
            request
                .validate()
                .map_err(|e| StoreError::Invalid(format!("payload: {e}")))?;
            if request.action == drover_proto::jobs::DiagAction::Reboot {
                return invalid("use a reboot job to reboot devices, not a diagnostics job".into());
            }
            if request.timeout.is_some() {
                return invalid(
                    "payload: timeout does not apply to a diagnostics job; set the job's timeout"
                        .into(),
                );
            }
        }
        JobKind::Command => {
            let Some(object) = payload.and_then(|p| p.as_object()) else {
                return invalid(
                    "a command job needs a payload: a JSON object with the command's \"name\""
                        .into(),
                );
            };
            match object.get("name").and_then(|n| n.as_str()) {
                Some(name) if command_name_ok(name) => {}
                Some(name) => {
                    return invalid(format!(
                        "payload: command name {name:?} must be 1-64 characters of A-Z, a-z, 0-9, '_', '.' or '-'"
                    ))
                }
                None => return invalid("payload: \"name\" (a string) is required".into()),
            }
        }
    }
    Ok(())
}

/// Whether `name` is a valid custom command name.
pub fn command_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

// ---- helpers ------------------------------------------------------------------------------------

const COLUMNS: &str =
    "id, name, kind, target, payload, max_parallel, timeout_ms, retries, backoff_ms, state,
    n_total, n_queued, n_in_progress, n_succeeded, n_failed, n_timed_out, n_canceled, n_rejected,
    created_at, created_by, updated_at, finished_at";

const EXECUTION_COLUMNS: &str = "e.id, e.job_id, d.id, e.state, e.attempt, e.result, e.error,
    e.next_attempt_at, e.offered_at, e.deadline, e.updated_at, e.finished_at";

/// The parts of a job row a tick or report needs.
struct LockedJob {
    id: JobId,
    kind: JobKind,
    state: String,
    payload: Option<serde_json::Value>,
    max_parallel: u32,
    timeout_ms: i64,
    retries: i64,
    backoff_ms: i64,
    counts: Counts,
}

/// Changes to a job's counters, written once per transaction.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    queued: i64,
    in_progress: i64,
    succeeded: i64,
    failed: i64,
    timed_out: i64,
    canceled: i64,
    rejected: i64,
}

impl Counts {
    fn add(&mut self, state: &str, n: i64) {
        match state {
            "queued" => self.queued += n,
            "in_progress" => self.in_progress += n,
            "succeeded" => self.succeeded += n,
            "failed" => self.failed += n,
            "timed_out" => self.timed_out += n,
            "canceled" => self.canceled += n,
            "rejected" => self.rejected += n,
            _ => {}
        }
    }

    fn is_zero(&self) -> bool {
        self.queued == 0
            && self.in_progress == 0
            && self.succeeded == 0
            && self.failed == 0
            && self.timed_out == 0
            && self.canceled == 0
            && self.rejected == 0
    }
}

/// Reads (and on PostgreSQL locks) a job row; `None` if it does not exist or, with `skip_locked`,
/// another transaction holds it.
async fn lock<D: Db>(
    db: &mut D,
    id: JobId,
    skip_locked: bool,
) -> Result<Option<LockedJob>, StoreError> {
    let lock = match (db.dialect(), skip_locked) {
        (Dialect::Postgres, true) => " FOR UPDATE SKIP LOCKED",
        (Dialect::Postgres, false) => " FOR UPDATE",
        (Dialect::Sqlite, _) => "",
    };
    let Some(row) = db
        .query_opt(
            &format!(
                "SELECT kind, state, payload, max_parallel, timeout_ms, retries, backoff_ms, n_queued, n_in_progress
                 FROM jobs WHERE id = $1{lock}"
            ),
            &[Value::Int(id.0)],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(LockedJob {
        id,
        kind: kind(&row.text(0)?)?,
        state: row.text(1)?,
        payload: row.opt_text(2)?.map(|p| parse_json(&p)).transpose()?,
        max_parallel: row.int(3)? as u32,
        timeout_ms: row.int(4)?,
        retries: row.int(5)?,
        backoff_ms: row.int(6)?,
        counts: Counts {
            queued: row.int(7)?,
            in_progress: row.int(8)?,
            ..Counts::default()
        },
    }))
}

/// Ends an attempt that failed or timed out: queued again after the backoff (doubled per further
/// attempt) while attempts remain, else final in `final_state`. Returns the execution's new state.
#[allow(clippy::too_many_arguments)]
async fn finish_attempt<D: Db>(
    db: &mut D,
    job: &LockedJob,
    execution: i64,
    attempt: i64,
    final_state: &str,
    result: Option<&str>,
    error: &str,
    now: Timestamp,
    delta: &mut Counts,
) -> Result<String, StoreError> {
    delta.in_progress -= 1;
    if attempt <= job.retries {
        let factor = 1i64 << (attempt - 1).clamp(0, 20);
        let wait = job.backoff_ms.saturating_mul(factor).min(MAX_TIMEOUT_MS);
        db.execute(
            "UPDATE job_executions SET state = 'queued', next_attempt_at = $1, deadline = NULL, error = $2,
                 result = $3, updated_at = $4 WHERE id = $5",
            &[
                ts(now.saturating_add(Duration::from_millis(wait))),
                Value::from(format!("{error} (attempt {attempt} of {}; will try again)", job.retries + 1)),
                Value::from(result),
                ts(now),
                Value::Int(execution),
            ],
        )
        .await?;
        delta.queued += 1;
        return Ok("queued".into());
    }
    set_final(db, execution, final_state, result, Some(error), now).await?;
    delta.add(final_state, 1);
    Ok(final_state.to_owned())
}

/// Puts an execution in a final state.
async fn set_final<D: Db>(
    db: &mut D,
    execution: i64,
    state: &str,
    result: Option<&str>,
    error: Option<&str>,
    now: Timestamp,
) -> Result<(), StoreError> {
    db.execute(
        "UPDATE job_executions SET state = $1, result = $2, error = $3, deadline = NULL, finished_at = $4,
             updated_at = $4 WHERE id = $5",
        &[
            Value::from(state),
            Value::from(result),
            Value::from(error),
            ts(now),
            Value::Int(execution),
        ],
    )
    .await?;
    Ok(())
}

/// Adds `delta` to the job's counters and completes the job when nothing is queued or running.
async fn write_counts<D: Db>(
    db: &mut D,
    job: &LockedJob,
    delta: &Counts,
    now: Timestamp,
) -> Result<(), StoreError> {
    let left = job.counts.queued + delta.queued + job.counts.in_progress + delta.in_progress;
    if delta.is_zero() && left > 0 {
        return Ok(());
    }
    db.execute(
        "UPDATE jobs SET n_queued = n_queued + $1, n_in_progress = n_in_progress + $2,
             n_succeeded = n_succeeded + $3, n_failed = n_failed + $4, n_timed_out = n_timed_out + $5,
             n_canceled = n_canceled + $6, n_rejected = n_rejected + $7, updated_at = $8,
             state = CASE WHEN $9 = 1 THEN 'completed' ELSE state END,
             finished_at = CASE WHEN $9 = 1 THEN $8 ELSE finished_at END
         WHERE id = $10",
        &[
            Value::Int(delta.queued),
            Value::Int(delta.in_progress),
            Value::Int(delta.succeeded),
            Value::Int(delta.failed),
            Value::Int(delta.timed_out),
            Value::Int(delta.canceled),
            Value::Int(delta.rejected),
            ts(now),
            Value::Int(i64::from(left == 0)),
            Value::Int(job.id.0),
        ],
    )
    .await?;
    Ok(())
}

/// Completes a job whose counters say work is left when no execution is queued or running: a
/// device deleted during the job takes its execution with it (`ON DELETE CASCADE`) but cannot
/// move the counters. Two indexed existence checks on a quiet tick; the recount (one pass over
/// the job's executions) happens once, when the job ends.
async fn settle_if_done<D: Db>(
    db: &mut D,
    job: &LockedJob,
    now: Timestamp,
) -> Result<(), StoreError> {
    let open = db
        .query_opt(
            "SELECT 1 FROM job_executions WHERE job_id = $1 AND state = 'queued'
             UNION ALL SELECT 1 FROM job_executions WHERE job_id = $1 AND state = 'in_progress' LIMIT 1",
            &[Value::Int(job.id.0)],
        )
        .await?;
    if open.is_some() {
        return Ok(());
    }
    let rows = db
        .query(
            "SELECT state, COUNT(*) FROM job_executions WHERE job_id = $1 GROUP BY state",
            &[Value::Int(job.id.0)],
        )
        .await?;
    let mut counts = Counts::default();
    let mut total = 0;
    for row in &rows {
        let n = row.int(1)?;
        counts.add(&row.text(0)?, n);
        total += n;
    }
    db.execute(
        "UPDATE jobs SET n_total = $1, n_queued = 0, n_in_progress = 0, n_succeeded = $2, n_failed = $3,
             n_timed_out = $4, n_canceled = $5, n_rejected = $6, state = 'completed', updated_at = $7,
             finished_at = COALESCE(finished_at, $7)
         WHERE id = $8 AND state IN ('running', 'completed')",
        &[
            Value::Int(total),
            Value::Int(counts.succeeded),
            Value::Int(counts.failed),
            Value::Int(counts.timed_out),
            Value::Int(counts.canceled),
            Value::Int(counts.rejected),
            ts(now),
            Value::Int(job.id.0),
        ],
    )
    .await?;
    Ok(())
}

/// Applies a `config` job's patch to a device's desired state; the new shadow version if it
/// changed anything.
async fn push_config<D: Db>(
    db: &mut D,
    job: &LockedJob,
    device: &DeviceId,
    now: Timestamp,
) -> Result<Option<u64>, StoreError> {
    let Some(patch) = &job.payload else {
        return Ok(None);
    };
    let update = ShadowUpdate::from_json(serde_json::json!({"state": {"desired": patch}}))?;
    let actor = Actor {
        id: format!("job:{}", job.id),
        name: format!("job {}", job.id),
    };
    let (outcome, _) = shadow::update(
        db,
        &actor,
        device,
        None,
        update,
        now,
        &ShadowLimits::default(),
    )
    .await?;
    Ok(outcome.changed().then_some(outcome.version))
}

/// Marks succeeded the `config` executions in progress whose device reported the patch (at most
/// `max_parallel` of them, so this costs what is running, not the target).
async fn converge_configs<D: Db>(
    db: &mut D,
    job: &LockedJob,
    now: Timestamp,
    delta: &mut Counts,
) -> Result<(), StoreError> {
    let Some(patch) = job.payload.as_ref().and_then(|p| p.as_object()) else {
        return Ok(());
    };
    let rows = db
        .query(
            "SELECT e.id, s.reported FROM job_executions e
             JOIN shadows s ON s.device_seq = e.device_seq AND s.name = ''
             WHERE e.job_id = $1 AND e.state = 'in_progress' AND NOT s.deleted",
            &[Value::Int(job.id.0)],
        )
        .await?;
    for row in &rows {
        let reported: JsonObject = parse_json(&row.text(1)?)?;
        if covers(&reported, patch) {
            set_final(
                db,
                row.int(0)?,
                "succeeded",
                Some(&json(&serde_json::json!({"reported": patch}))?),
                None,
                now,
            )
            .await?;
            delta.in_progress -= 1;
            delta.succeeded += 1;
        }
    }
    Ok(())
}

/// Whether `reported` holds everything `patch` sets: equal leaves, nested objects recursively,
/// and no field the patch deletes (`null`).
pub fn covers(reported: &JsonObject, patch: &JsonObject) -> bool {
    patch
        .iter()
        .all(|(key, want)| match (want, reported.get(key)) {
            (serde_json::Value::Null, got) => got.is_none_or(serde_json::Value::is_null),
            (serde_json::Value::Object(want), Some(serde_json::Value::Object(got))) => {
                covers(got, want)
            }
            (want, Some(got)) => want == got,
            (_, None) => false,
        })
}

fn view(row: &Row) -> Result<JobView, StoreError> {
    let count = |idx: usize| -> Result<u64, StoreError> { Ok(row.int(idx)?.max(0) as u64) };
    Ok(JobView {
        id: JobId(row.int(0)?),
        name: row.text(1)?,
        kind: kind(&row.text(2)?)?,
        target: parse_json(&row.text(3)?)?,
        payload: row.opt_text(4)?.map(|p| parse_json(&p)).transpose()?,
        max_parallel: row.int(5)? as u32,
        timeout: Duration::from_millis(row.int(6)?),
        retries: row.int(7)? as u32,
        backoff: Duration::from_millis(row.int(8)?),
        state: row.text(9)?,
        progress: JobProgress {
            total: count(10)?,
            queued: count(11)?,
            in_progress: count(12)?,
            succeeded: count(13)?,
            failed: count(14)?,
            timed_out: count(15)?,
            canceled: count(16)?,
            rejected: count(17)?,
        },
        created_at: Timestamp::from_millis(row.int(18)?),
        created_by: row.text(19)?,
        updated_at: Timestamp::from_millis(row.int(20)?),
        finished_at: opt_ts(row.opt_int(21)?),
    })
}

fn execution_view(row: &Row) -> Result<JobExecutionView, StoreError> {
    let state = row.text(3)?;
    Ok(JobExecutionView {
        id: ExecutionId(row.int(0)?),
        job_id: JobId(row.int(1)?),
        device: row.text(2)?,
        attempt: row.int(4)? as u32,
        result: row.opt_text(5)?.map(|p| parse_json(&p)).transpose()?,
        error: row.opt_text(6)?,
        next_attempt_at: (state == "queued")
            .then(|| Timestamp::from_millis(row.int(7).unwrap_or(0))),
        offered_at: opt_ts(row.opt_int(8)?),
        deadline: opt_ts(row.opt_int(9)?),
        updated_at: Timestamp::from_millis(row.int(10)?),
        finished_at: opt_ts(row.opt_int(11)?),
        state,
    })
}

fn kind(text: &str) -> Result<JobKind, StoreError> {
    JobKind::parse(text).ok_or_else(|| StoreError::Corrupt(format!("job kind {text:?}")))
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("stored job: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_state_covers_a_patch_only_when_every_leaf_matches() {
        let obj = |v: serde_json::Value| v.as_object().unwrap().clone();
        let reported = obj(serde_json::json!({"a": 1, "b": {"c": true, "d": "x"}}));
        assert!(covers(&reported, &obj(serde_json::json!({"a": 1}))));
        assert!(covers(
            &reported,
            &obj(serde_json::json!({"b": {"c": true}, "gone": null}))
        ));
        assert!(!covers(&reported, &obj(serde_json::json!({"a": 2}))));
        assert!(!covers(&reported, &obj(serde_json::json!({"b": {"e": 1}}))));
        assert!(!covers(&reported, &obj(serde_json::json!({"a": null}))));
    }
}
