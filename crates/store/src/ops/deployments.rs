//! One device's deployment of an artifact: created by an operator, offered to the device, moved
//! through its states by the device's reports, timed out by the server when the device goes quiet.
//!
//! The server never counts success on its own: a deployment becomes `succeeded` only when the
//! device reports it while running the deployed version. A device has at most one unfinished
//! deployment (a partial unique index), so "what should this device install next" is one row.

use drover_core::{DeviceId, DeviceStatus, Duration, Timestamp, Version};
use drover_proto::artifacts::{DeploymentEvent, DeploymentView, NewDeployment};
use drover_proto::update::{
    DeploymentId, DeploymentReport, DeploymentState, FailureKind, UpdateType,
};

use crate::db::{Db, Row, Value};
use crate::ops::artifacts::{self, ArtifactRef, StoredObject};
use crate::ops::{audit, auth::Actor, ts};
use crate::StoreError;

/// What a device should install: its unfinished deployment, the artifact, and a delta from the
/// version it runs, when one was built.
#[derive(Debug, Clone)]
pub struct Offer {
    pub deployment: DeploymentView,
    pub artifact: ArtifactRef,
    /// The delta and its TUF target path.
    pub delta: Option<(StoredObject, String)>,
}

const COLUMNS: &str = "p.id, d.id, p.artifact, p.version, p.state, p.update_type, p.attempt, p.from_version,
     p.reason, p.failure, p.bytes_done, p.used_delta, p.created_at, p.created_by, p.updated_at, p.finished_at,
     p.artifact_seq";

/// Creates a deployment of an artifact to one device after checking that it can apply.
pub async fn create<D: Db>(
    db: &mut D,
    actor: &Actor,
    device: &DeviceId,
    new: &NewDeployment,
    now: Timestamp,
) -> Result<DeploymentView, StoreError> {
    let row = db
        .query_opt(
            "SELECT seq, status, device_type, hw_rev, firmware FROM devices WHERE id = $1",
            &[Value::from(device.as_str())],
        )
        .await?
        .ok_or_else(|| StoreError::not_found("device", device))?;
    let (device_seq, status) = (row.int(0)?, row.text(1)?);
    let (device_type, hw_rev, firmware) = (row.text(2)?, row.text(3)?, row.text(4)?);
    let status = DeviceStatus::parse(&status).map_err(StoreError::Corrupt)?;
    if status == DeviceStatus::Decommissioned {
        return Err(StoreError::Invalid(format!(
            "device {device} is decommissioned and cannot be updated"
        )));
    }
    let artifact = artifacts::find(db, &new.artifact, &new.version).await?;
    if !artifact
        .device_types
        .iter()
        .any(|t| t.as_str() == device_type)
    {
        return Err(StoreError::Invalid(format!(
            "artifact {} {} is for device types [{}], but device {device} is a {device_type}",
            artifact.name,
            artifact.version,
            join(&artifact.device_types)
        )));
    }
    if !artifact.hw_revs.is_empty() && !artifact.hw_revs.iter().any(|r| r.as_str() == hw_rev) {
        return Err(StoreError::Invalid(format!(
            "artifact {} {} is for hardware revisions [{}], but device {device} is revision {:?}",
            artifact.name,
            artifact.version,
            join(&artifact.hw_revs),
            hw_rev
        )));
    }
    if let Ok(running) = Version::parse(&firmware) {
        if running == artifact.version {
            return Err(StoreError::Invalid(format!(
                "device {device} already runs {} {}",
                artifact.name, artifact.version
            )));
        }
        if running > artifact.version && !new.allow_downgrade {
            return Err(StoreError::Invalid(format!(
                "device {device} runs {running}, newer than {} {}; set allow_downgrade to install an older version",
                artifact.name, artifact.version
            )));
        }
    }
    if let Some(active) = db
        .query_opt(
            "SELECT id, state FROM deployments WHERE device_seq = $1 AND finished_at IS NULL",
            &[Value::Int(device_seq)],
        )
        .await?
    {
        return Err(StoreError::Conflict(format!(
            "device {device} already has deployment {} in state {}; cancel it first",
            active.int(0)?,
            active.text(1)?
        )));
    }
    let rows = db
        .query(
            "INSERT INTO deployments (device_seq, artifact_seq, artifact, version, state, update_type, attempt,
                 from_version, created_at, created_by, updated_at)
             VALUES ($1, $2, $3, $4, 'pending', $5, 1, $6, $7, $8, $7) RETURNING id",
            &[
                Value::Int(device_seq),
                Value::Int(artifact.seq),
                Value::from(artifact.name.as_str()),
                Value::from(artifact.version.to_string()),
                Value::from(wire(&new.update_type)),
                Value::from(firmware.as_str()),
                ts(now),
                Value::from(actor.name.as_str()),
            ],
        )
        .await?;
    let id = DeploymentId(
        rows.first()
            .ok_or_else(|| StoreError::Backend("no id returned".into()))?
            .int(0)?,
    );
    add_event(db, id, now, DeploymentState::Pending, None).await?;
    let view = get(db, id).await?;
    audit::record(
        db,
        actor,
        "deployment.create",
        "device",
        device.as_str(),
        None::<&()>,
        Some(&view),
        now,
    )
    .await?;
    Ok(view)
}

/// One deployment with its history.
pub async fn get<D: Db>(db: &mut D, id: DeploymentId) -> Result<DeploymentView, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM deployments p JOIN devices d ON d.seq = p.device_seq WHERE p.id = $1"
    );
    let row = db
        .query_opt(&sql, &[Value::Int(id.0)])
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "deployment",
            id: id.to_string(),
        })?;
    let mut view = view(&row)?;
    view.history = history(db, id).await?;
    Ok(view)
}

/// A device's deployments, newest first, with their histories.
pub async fn list_for_device<D: Db>(
    db: &mut D,
    device: &DeviceId,
    limit: usize,
) -> Result<Vec<DeploymentView>, StoreError> {
    let seq = device_seq(db, device).await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM deployments p JOIN devices d ON d.seq = p.device_seq
         WHERE p.device_seq = $1 ORDER BY p.id DESC LIMIT $2"
    );
    let rows = db
        .query(&sql, &[Value::Int(seq), Value::Int(limit as i64)])
        .await?;
    let mut views = Vec::with_capacity(rows.len());
    for row in &rows {
        let mut view = view(row)?;
        view.history = history(db, view.id).await?;
        views.push(view);
    }
    Ok(views)
}

/// The update a device should work on now, if any.
pub async fn offer<D: Db>(db: &mut D, device: &DeviceId) -> Result<Option<Offer>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS}, d.firmware FROM deployments p JOIN devices d ON d.seq = p.device_seq
         WHERE d.id = $1 AND p.finished_at IS NULL"
    );
    let Some(row) = db.query_opt(&sql, &[Value::from(device.as_str())]).await? else {
        return Ok(None);
    };
    let deployment = view(&row)?;
    let Some(artifact_seq) = row.opt_int(16)? else {
        return Ok(None);
    };
    let Some(artifact) = artifacts::find_by_seq(db, artifact_seq).await? else {
        return Ok(None);
    };
    // A delta only for a device that runs exactly the delta's base version.
    let mut delta = None;
    if let Ok(running) = Version::parse(&row.text(17)?) {
        if let Ok(base) = artifacts::find(db, &artifact.name, &running).await {
            delta = artifacts::delta_between(db, base.seq, artifact.seq).await?;
        }
    }
    Ok(Some(Offer {
        deployment,
        artifact,
        delta,
    }))
}

/// Whether `device`'s unfinished deployment installs artifact `artifact_seq` (directly or through
/// one of its deltas): the only files a device may download.
pub async fn may_download<D: Db>(
    db: &mut D,
    device: &DeviceId,
    artifact_seq: i64,
) -> Result<bool, StoreError> {
    let row = db
        .query_opt(
            "SELECT 1 FROM deployments p JOIN devices d ON d.seq = p.device_seq
             WHERE d.id = $1 AND p.finished_at IS NULL AND p.artifact_seq = $2",
            &[Value::from(device.as_str()), Value::Int(artifact_seq)],
        )
        .await?;
    Ok(row.is_some())
}

/// Applies a device's report to its deployment. `step_timeout` is how long the device may then stay
/// silent before the deployment times out.
pub async fn report<D: Db>(
    db: &mut D,
    device: &DeviceId,
    id: DeploymentId,
    report: &DeploymentReport,
    now: Timestamp,
    step_timeout: Duration,
) -> Result<DeploymentView, StoreError> {
    let seq = device_seq(db, device).await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM deployments p JOIN devices d ON d.seq = p.device_seq
         WHERE p.id = $1 AND p.device_seq = $2{}",
        db.for_update()
    );
    // Another device's deployment is indistinguishable from a missing one.
    let row = db
        .query_opt(&sql, &[Value::Int(id.0), Value::Int(seq)])
        .await?
        .ok_or_else(|| StoreError::NotFound {
            kind: "deployment",
            id: id.to_string(),
        })?;
    let current = view(&row)?;
    if current.state.is_final() {
        return Err(StoreError::Conflict(format!(
            "deployment {id} is already {}; stay on the running image",
            current.state.as_str()
        )));
    }
    if !report.state.is_reportable() {
        return Err(StoreError::Invalid(format!(
            "a device cannot report state {}; it reports downloading, downloaded, installing, rebooting, verifying, succeeded, failed or rolled_back",
            report.state.as_str()
        )));
    }
    if report.state == DeploymentState::Succeeded {
        match &report.firmware {
            Some(running) if running.to_string() == current.version => {}
            Some(running) => {
                return Err(StoreError::Invalid(format!(
                    "deployment {id} installs {} but the device reports running {running}; success counts only from the new image",
                    current.version
                )))
            }
            None => {
                return Err(StoreError::Invalid(format!(
                    "a succeeded report must say which firmware the device runs (field firmware = {})",
                    current.version
                )))
            }
        }
    }
    if matches!(
        report.state,
        DeploymentState::Failed | DeploymentState::RolledBack
    ) && report.reason.as_deref().is_none_or(|r| r.trim().is_empty())
    {
        return Err(StoreError::Invalid(format!(
            "a {} report needs a reason",
            report.state.as_str()
        )));
    }
    // A download-only deployment is done once the verified image waits in the inactive slot; a
    // later (forced or soft) deployment of the same version installs it without downloading.
    if let (Some(was), Some(now_step)) = (step_rank(current.state), step_rank(report.state)) {
        if now_step < was && was >= STEP_INSTALLING {
            return Err(StoreError::Conflict(format!(
                "deployment {id} is already {}; a {} report is out of order and was ignored",
                current.state.as_str(),
                report.state.as_str()
            )));
        }
    }
    let finished = report.state.is_final()
        || (current.update_type == UpdateType::DownloadOnly
            && report.state == DeploymentState::Downloaded);
    // A rollout's deployment carries its own step timeout and an overall deadline.
    let limits = db
        .query_one(
            "SELECT step_timeout, expires_at FROM deployments WHERE id = $1",
            &[Value::Int(id.0)],
        )
        .await?;
    let step_timeout = limits
        .opt_int(0)?
        .map_or(step_timeout, Duration::from_millis);
    let deadline = (!finished).then(|| {
        let step = now.saturating_add(step_timeout);
        match limits.opt_int(1).ok().flatten() {
            Some(expires) if expires < step.as_millis() => Timestamp::from_millis(expires),
            _ => step,
        }
    });
    db.execute(
        "UPDATE deployments SET state = $1, reason = $2, failure = $3,
             bytes_done = COALESCE($4, bytes_done), used_delta = COALESCE($5, used_delta),
             updated_at = $6, finished_at = $7, deadline = $8
         WHERE id = $9",
        &[
            Value::from(report.state.as_str()),
            report.reason.as_deref().map_or(Value::Null, Value::from),
            report
                .failure
                .as_ref()
                .map_or(Value::Null, |f| Value::from(wire(f))),
            report
                .bytes_done
                .map_or(Value::Null, |b| Value::Int(b as i64)),
            report
                .used_delta
                .map_or(Value::Null, |u| Value::Int(i64::from(u))),
            ts(now),
            if finished { ts(now) } else { Value::Null },
            deadline.map_or(Value::Null, ts),
            Value::Int(id.0),
        ],
    )
    .await?;
    if report.state != current.state {
        add_event(db, id, now, report.state, report.reason.as_deref()).await?;
    }
    if finished {
        mark_rollout_device(db, id).await?;
    }
    if report.state == DeploymentState::Succeeded {
        if let Some(version) = &report.firmware {
            db.execute(
                "UPDATE devices SET firmware = $1, fw_key = $2, updated_at = $3 WHERE seq = $4",
                &[
                    Value::from(version.to_string()),
                    Value::Bytes(version.sort_key()),
                    ts(now),
                    Value::Int(seq),
                ],
            )
            .await?;
        }
    }
    get(db, id).await
}

/// Cancels an unfinished deployment (the device abandons it at its next report, unless it is
/// already past the point where its own safety rules finish the update).
pub async fn cancel<D: Db>(
    db: &mut D,
    actor: &Actor,
    device: &DeviceId,
    id: DeploymentId,
    now: Timestamp,
) -> Result<DeploymentView, StoreError> {
    let seq = device_seq(db, device).await?;
    let before = get(db, id).await?;
    if before.device != *device {
        return Err(StoreError::NotFound {
            kind: "deployment",
            id: id.to_string(),
        });
    }
    if before.state.is_final() {
        return Err(StoreError::Conflict(format!(
            "deployment {id} is already {}",
            before.state.as_str()
        )));
    }
    db.execute(
        "UPDATE deployments SET state = 'canceled', reason = $1, updated_at = $2, finished_at = $2, deadline = NULL
         WHERE id = $3 AND device_seq = $4",
        &[
            Value::from(format!("canceled by {}", actor.name)),
            ts(now),
            Value::Int(id.0),
            Value::Int(seq),
        ],
    )
    .await?;
    add_event(
        db,
        id,
        now,
        DeploymentState::Canceled,
        Some(&format!("canceled by {}", actor.name)),
    )
    .await?;
    mark_rollout_device(db, id).await?;
    let after = get(db, id).await?;
    audit::record(
        db,
        actor,
        "deployment.cancel",
        "device",
        device.as_str(),
        Some(&before),
        Some(&after),
        now,
    )
    .await?;
    Ok(after)
}

/// Times out up to `limit` unfinished deployments whose device stayed silent past the deadline.
/// Cost follows the deployments that expired (a partial index on the deadline).
pub async fn time_out<D: Db>(
    db: &mut D,
    now: Timestamp,
    limit: usize,
) -> Result<Vec<DeploymentId>, StoreError> {
    let rows = db
        .query(
            "SELECT id, state FROM deployments WHERE finished_at IS NULL AND deadline IS NOT NULL AND deadline < $1
             ORDER BY deadline LIMIT $2",
            &[ts(now), Value::Int(limit as i64)],
        )
        .await?;
    let mut expired = Vec::with_capacity(rows.len());
    for row in &rows {
        let id = DeploymentId(row.int(0)?);
        let reason = format!("no report from the device while {}", row.text(1)?);
        db.execute(
            "UPDATE deployments SET state = 'timed_out', reason = $1, updated_at = $2, finished_at = $2, deadline = NULL
             WHERE id = $3",
            &[Value::from(reason.as_str()), ts(now), Value::Int(id.0)],
        )
        .await?;
        add_event(db, id, now, DeploymentState::TimedOut, Some(&reason)).await?;
        mark_rollout_device(db, id).await?;
        expired.push(id);
    }
    Ok(expired)
}

/// Creates the deployment of a rollout's device: no per-device audit entry (the rollout's
/// creation is audited), a deadline for a device that never starts (`expires_at`), and the
/// rollout's step timeout for later reports.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_for_rollout<D: Db>(
    db: &mut D,
    device_seq: i64,
    artifact: &ArtifactRef,
    update_type: UpdateType,
    from_version: &str,
    attempt: u32,
    rollout_id: i64,
    step_timeout: Duration,
    expires_at: Timestamp,
    now: Timestamp,
) -> Result<DeploymentId, StoreError> {
    let row = db
        .query_one(
            "INSERT INTO deployments (device_seq, artifact_seq, artifact, version, state, update_type, attempt,
                 from_version, created_at, created_by, updated_at, rollout_id, step_timeout, expires_at, deadline)
             VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, $8, $10, $11, $12, $12) RETURNING id",
            &[
                Value::Int(device_seq),
                Value::Int(artifact.seq),
                Value::from(artifact.name.as_str()),
                Value::from(artifact.version.to_string()),
                Value::from(wire(&update_type)),
                Value::Int(i64::from(attempt)),
                Value::from(from_version),
                ts(now),
                Value::from(format!("rollout {rollout_id}")),
                Value::Int(rollout_id),
                Value::Int(step_timeout.as_millis()),
                ts(expires_at),
            ],
        )
        .await?;
    let id = DeploymentId(row.int(0)?);
    add_event(db, id, now, DeploymentState::Pending, None).await?;
    Ok(id)
}

/// Cancels an unfinished deployment on the server's own account (an aborted or rolled-back
/// rollout); the device is told to stop at its next report.
pub(crate) async fn cancel_by_system<D: Db>(
    db: &mut D,
    id: DeploymentId,
    why: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let changed = db
        .execute(
            "UPDATE deployments SET state = 'canceled', reason = $1, updated_at = $2, finished_at = $2, deadline = NULL
             WHERE id = $3 AND finished_at IS NULL",
            &[Value::from(why), ts(now), Value::Int(id.0)],
        )
        .await?;
    if changed > 0 {
        add_event(db, id, now, DeploymentState::Canceled, Some(why)).await?;
    }
    Ok(())
}

/// Flags the rollout device whose deployment just finished, so the orchestrator's next tick
/// counts its outcome (a primary-key update; nothing when the deployment is not a rollout's).
async fn mark_rollout_device<D: Db>(db: &mut D, id: DeploymentId) -> Result<(), StoreError> {
    db.execute(
        "UPDATE rollout_devices SET changed = 1
         WHERE rollout_id = (SELECT rollout_id FROM deployments WHERE id = $1)
           AND device_seq = (SELECT device_seq FROM deployments WHERE id = $1)
           AND deployment_id = $1",
        &[Value::Int(id.0)],
    )
    .await?;
    Ok(())
}

/// Order of the steps a device reports, for refusing reports that go backwards.
const STEP_INSTALLING: u8 = 3;

fn step_rank(state: DeploymentState) -> Option<u8> {
    Some(match state {
        DeploymentState::Pending => 0,
        DeploymentState::Downloading => 1,
        DeploymentState::Downloaded => 2,
        DeploymentState::Installing => STEP_INSTALLING,
        DeploymentState::Rebooting => 4,
        DeploymentState::Verifying => 5,
        _ => return None,
    })
}

async fn add_event<D: Db>(
    db: &mut D,
    id: DeploymentId,
    at: Timestamp,
    state: DeploymentState,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO deployment_events (deployment_id, at, state, reason) VALUES ($1, $2, $3, $4)",
        &[
            Value::Int(id.0),
            ts(at),
            Value::from(state.as_str()),
            reason.map_or(Value::Null, Value::from),
        ],
    )
    .await?;
    Ok(())
}

async fn history<D: Db>(db: &mut D, id: DeploymentId) -> Result<Vec<DeploymentEvent>, StoreError> {
    let rows = db
        .query(
            "SELECT at, state, reason FROM deployment_events WHERE deployment_id = $1 ORDER BY seq",
            &[Value::Int(id.0)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(DeploymentEvent {
                at: Timestamp::from_millis(row.int(0)?),
                state: state(&row.text(1)?)?,
                reason: row.opt_text(2)?,
            })
        })
        .collect()
}

async fn device_seq<D: Db>(db: &mut D, id: &DeviceId) -> Result<i64, StoreError> {
    db.query_opt(
        "SELECT seq FROM devices WHERE id = $1",
        &[Value::from(id.as_str())],
    )
    .await?
    .ok_or_else(|| StoreError::not_found("device", id))?
    .int(0)
}

fn view(row: &Row) -> Result<DeploymentView, StoreError> {
    Ok(DeploymentView {
        id: DeploymentId(row.int(0)?),
        device: DeviceId::parse(&row.text(1)?).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        artifact: row.text(2)?,
        version: row.text(3)?,
        state: state(&row.text(4)?)?,
        update_type: from_wire::<UpdateType>(&row.text(5)?)?,
        attempt: row.int(6)? as u32,
        from_version: row.text(7)?,
        reason: row.opt_text(8)?,
        failure: row
            .opt_text(9)?
            .map(|f| from_wire::<FailureKind>(&f))
            .transpose()?,
        bytes_done: row.opt_int(10)?.map(|b| b as u64),
        used_delta: row.opt_int(11)?.map(|u| u != 0),
        created_at: Timestamp::from_millis(row.int(12)?),
        created_by: row.text(13)?,
        updated_at: Timestamp::from_millis(row.int(14)?),
        finished_at: row.opt_int(15)?.map(Timestamp::from_millis),
        history: Vec::new(),
    })
}

fn state(text: &str) -> Result<DeploymentState, StoreError> {
    DeploymentState::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown deployment state {text:?}")))
}

/// The wire name of a unit enum (`download_only`).
pub(crate) fn wire<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

pub(crate) fn from_wire<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(text.to_owned()))
        .map_err(|e| StoreError::Corrupt(format!("stored value {text:?}: {e}")))
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
