//! Staged rollouts in the store: creating and planning one (validation, stratified ranks, the
//! baseline), and the orchestrator's tick, which gathers what changed, runs the pure state machine
//! (`drover_core::rollout::machine`) and carries out its actions, all in one transaction.
//!
//! A tick's work follows what changed: the devices whose deployments reached an outcome (a partial
//! index on `changed`), the next devices in rank order, retries that are due, devices updated since
//! the last look (for dynamic targets), and a bounded sample of canary and baseline devices for the
//! statistics. Nothing scans the fleet. Because the machine, the queue and the deployments change
//! in one transaction, a crash between ticks neither skips nor double-assigns a device; on
//! PostgreSQL a tick locks its rollout row (`SKIP LOCKED` for background ticks), so several
//! replicas share the work without stepping on each other.

use std::collections::HashMap;

use drover_core::query::Dialect;
use drover_core::rollout::canary::{CanaryData, MetricSamples};
use drover_core::rollout::machine::{Action, Command, Decision, Event, Machine, Outcome, Status};
use drover_core::rollout::plan::{self, Candidate};
use drover_core::rollout::spec::RolloutSpec;
use drover_core::{DeviceId, DeviceStatus, Duration, Timestamp, Version};
use drover_proto::rollouts::{
    NewRollout, RolloutDecisionView, RolloutDeviceView, RolloutId, RolloutView,
};
use drover_proto::target::Target;
use drover_proto::update::{DeploymentId, DeploymentState, FailureKind, UpdateType};
use drover_proto::Page;

use crate::db::{placeholders, value_rows, Db, Row, Value};
use crate::ops::artifacts::{self, ArtifactRef};
use crate::ops::deployments::{from_wire, wire};
use crate::ops::health::{sample_chain_cte, SAMPLE_OF_CHAIN};
use crate::ops::{audit, auth::Actor, deployments, targets, ts};
use crate::StoreError;

/// Most devices one tick offers the release to. It bounds how long a tick's transaction holds the
/// store (about 0.2 s on SQLite, where writers queue behind it) while still allowing 120,000
/// devices a minute at the default 5 s tick; the queue simply continues on the next tick.
const DISPATCH_PER_TICK: u64 = 10_000;

/// Canary devices whose heartbeats the analysis reads: the first to succeed, up to this many.
pub const ANALYSIS_DEVICES: u64 = 1000;
/// Devices given the previous release back per tick after a rollback.
const REVERTS_PER_TICK: i64 = 2000;
/// Outcomes counted per tick (the rest wait for the next one).
const OUTCOMES_PER_TICK: i64 = 20_000;
/// How often the sequential crash test is fed, in milliseconds.
const CRASH_CHECK_EVERY_MS: i64 = 60_000;
/// Devices inserted per statement while planning.
const PLAN_BATCH: usize = 500;

/// What a tick did that the server must act on outside the transaction.
#[derive(Debug, Default)]
pub struct TickOutcome {
    /// Devices offered an update (tell MQTT-connected ones at once).
    pub offered: Vec<DeviceId>,
    pub status: String,
}

/// Creates a rollout after validating it, and plans its device order.
pub async fn create<D: Db>(
    db: &mut D,
    actor: &Actor,
    new: &NewRollout,
    now: Timestamp,
) -> Result<RolloutView, StoreError> {
    new.spec
        .validate()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let artifact = artifacts::find(db, &new.artifact, &new.version).await?;
    let query = targets::query_of(db, &new.target).await?;
    let fragment = query.to_sql(db.dialect(), now, 1);
    let params: Vec<Value> = fragment.params.iter().cloned().map(Value::from).collect();
    let joins = &fragment.joins;
    let filter = &fragment.sql;

    if let Target::Devices(devices) = &new.target {
        check_listed_devices(db, devices).await?;
    }
    // Devices the image is not for: refuse up front rather than fail them one by one.
    let types: Vec<String> = artifact
        .device_types
        .iter()
        .map(|t| t.to_string())
        .collect();
    let rows = db
        .query_adhoc(
            &format!(
                "SELECT d.device_type, COUNT(*) FROM devices d{joins} WHERE ({filter}) AND d.status <> 'decommissioned'
                 GROUP BY d.device_type"
            ),
            &params,
        )
        .await?;
    let mut total = 0u64;
    let mut foreign = Vec::new();
    for row in &rows {
        let (device_type, n) = (row.text(0)?, row.int(1)? as u64);
        total += n;
        if !types.contains(&device_type) {
            foreign.push(format!("{n} {device_type}"));
        }
    }
    if total == 0 {
        return Err(StoreError::Invalid(format!(
            "the target ({}) selects no devices that can be updated",
            new.target.describe()
        )));
    }
    if !foreign.is_empty() {
        return Err(StoreError::Invalid(format!(
            "{} {} is for device types [{}], but the target also holds {}; narrow the target (e.g. add `device_type = {}`)",
            artifact.name,
            artifact.version,
            types.join(", "),
            foreign.join(", "),
            types.first().map_or("…", String::as_str)
        )));
    }
    // One device, one running rollout: refuse overlaps rather than race two releases.
    let overlap = db
        .query_adhoc(
            &format!(
                "SELECT r.rollout_id, COUNT(*) FROM devices d{joins}
                 JOIN rollout_devices r ON r.device_seq = d.seq
                 JOIN rollouts o ON o.id = r.rollout_id
                 WHERE ({filter}) AND o.status IN ('running', 'paused')
                   AND r.state IN ('queued', 'updating', 'retry')
                 GROUP BY r.rollout_id ORDER BY r.rollout_id LIMIT 3"
            ),
            &params,
        )
        .await?;
    if let Some(row) = overlap.first() {
        return Err(StoreError::Conflict(format!(
            "{} devices of the target are still to be updated by running rollout {}; finish, abort or narrow it first",
            row.int(1)?,
            row.int(0)?
        )));
    }

    let candidates_rows = db
        .query_adhoc(
            &format!(
                "SELECT d.seq, d.hw_rev, d.region, d.connectivity FROM devices d{joins}
                 WHERE ({filter}) AND d.status <> 'decommissioned'"
            ),
            &params,
        )
        .await?;
    let candidates = candidates_rows
        .iter()
        .map(|row| {
            Ok(Candidate {
                seq: row.int(0)?,
                stratum: format!("{}|{}|{}", row.text(1)?, row.text(2)?, row.text(3)?),
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    drop(candidates_rows);

    let n = candidates.len() as u64;
    let machine = Machine::new(&new.spec, n);
    let seed = seed_of(&artifact, now);
    let name = new
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("{} {}", artifact.name, artifact.version));
    if name.len() > 200 {
        return Err(StoreError::Invalid(
            "the rollout name is longer than 200 characters".into(),
        ));
    }
    let row = db
        .query_one(
            "INSERT INTO rollouts (name, artifact_seq, artifact, version, target, spec, update_type, status,
                 machine, seed, joined_check, created_at, created_by, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'running', $8, $9, $10, $10, $11, $10) RETURNING id",
            &[
                Value::from(name.as_str()),
                Value::Int(artifact.seq),
                Value::from(artifact.name.as_str()),
                Value::from(artifact.version.to_string()),
                Value::from(json(&new.target)?),
                Value::from(json(&new.spec)?),
                Value::from(wire(&new.update_type)),
                Value::from(json(&machine)?),
                Value::Int(seed as i64),
                ts(now),
                Value::from(actor.name.as_str()),
            ],
        )
        .await?;
    let id = RolloutId(row.int(0)?);

    // Stratified ranks; the last ranks (devices that only the final phase reaches) are the
    // baseline the canary is compared with.
    let ranks = plan::stratified_ranks(&candidates, seed);
    let baseline_from = baseline_threshold(&new.spec, &ranks);
    for chunk in candidates
        .iter()
        .zip(&ranks)
        .collect::<Vec<_>>()
        .chunks(PLAN_BATCH)
    {
        let mut values = Vec::with_capacity(chunk.len() * 4);
        for (candidate, &rank) in chunk {
            values.push(Value::Int(id.0));
            values.push(Value::Int(candidate.seq));
            values.push(Value::Float(rank));
            values.push(Value::Int(i64::from(rank >= baseline_from)));
        }
        db.execute(
            &format!(
                "INSERT INTO rollout_devices (rollout_id, device_seq, rank, baseline, state) VALUES {}",
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
        "rollout.create",
        "rollout",
        &id.to_string(),
        None::<&()>,
        Some(&view),
        now,
    )
    .await?;
    record(
        db,
        id,
        now,
        &Decision {
            kind: "created".into(),
            actor: actor.name.clone(),
            phase: 0,
            message: format!(
                "created for {} devices ({}), {} phase(s)",
                n,
                new.target.describe(),
                new.spec.n_phases()
            ),
            evidence: None,
            alert: false,
        },
    )
    .await?;
    Ok(view)
}

/// Runs one orchestrator step for rollout `id` with `events` (operator commands) added. With
/// `skip_locked`, a rollout another replica is ticking right now is skipped (returns `None`).
pub async fn tick<D: Db>(
    db: &mut D,
    id: RolloutId,
    now: Timestamp,
    mut events: Vec<Event>,
    skip_locked: bool,
) -> Result<Option<TickOutcome>, StoreError> {
    let lock = match (db.dialect(), skip_locked) {
        (Dialect::Postgres, true) => " FOR UPDATE SKIP LOCKED",
        (Dialect::Postgres, false) => " FOR UPDATE",
        (Dialect::Sqlite, _) => "",
    };
    let Some(row) = db
        .query_opt(
            &format!(
                "SELECT spec, machine, target, seed, joined_check, artifact_seq, update_type, crash_checked_at
                 FROM rollouts WHERE id = $1{lock}"
            ),
            &[Value::Int(id.0)],
        )
        .await?
    else {
        return if skip_locked {
            Ok(None)
        } else {
            Err(StoreError::not_found("rollout", id))
        };
    };
    let spec: RolloutSpec = parse_json(&row.text(0)?)?;
    let mut machine: Machine = parse_json(&row.text(1)?)?;
    let target: Target = parse_json(&row.text(2)?)?;
    let seed = row.int(3)? as u64;
    let joined_check = Timestamp::from_millis(row.int(4)?);
    let artifact_seq = row.opt_int(5)?;
    let update_type: UpdateType = from_wire(&row.text(6)?)?;
    let ctx = Ctx {
        id,
        now,
        spec: &spec,
        artifact: match artifact_seq {
            Some(seq) => artifacts::find_by_seq(db, seq).await?,
            None => None,
        },
        update_type,
    };
    let mut outcome = TickOutcome::default();

    if spec.dynamic && !machine.status.is_final() {
        if let Some(joined) = add_joiners(db, &ctx, &target, seed, joined_check).await? {
            events.push(Event::TargetSize(machine.counts.target + joined));
        }
    }
    events.extend(outcomes(db, &ctx, machine.counts.succeeded).await?);
    // Totalling crashes reads every canary heartbeat since the first update: at most once a minute.
    let crash_due = row
        .opt_int(7)?
        .is_none_or(|at| now.as_millis() - at >= CRASH_CHECK_EVERY_MS);
    if spec.gates.canary.enabled && machine.status == Status::Running && crash_due {
        if let Some(crashes) = crash_increment(db, &ctx, &machine).await? {
            events.push(crashes);
        }
        db.execute(
            "UPDATE rollouts SET crash_checked_at = $1 WHERE id = $2",
            &[ts(now), Value::Int(id.0)],
        )
        .await?;
    }
    // The machine asks for data (dispatch results, canary data) by action and gets it back as
    // events in a further step of the same tick.
    for _ in 0..4 {
        let actions = machine.step(&spec, now, std::mem::take(&mut events));
        for action in actions {
            match action {
                Action::Dispatch { new, retries } => {
                    events.extend(dispatch(db, &ctx, &target, new, retries, &mut outcome).await?)
                }
                Action::Retry {
                    device,
                    attempt,
                    at,
                } => {
                    db.execute(
                        "UPDATE rollout_devices SET state = 'retry', retry_at = $1, attempt = $2
                         WHERE rollout_id = $3 AND device_seq = $4",
                        &[
                            ts(at),
                            Value::Int(i64::from(attempt)),
                            Value::Int(id.0),
                            Value::Int(device),
                        ],
                    )
                    .await?;
                }
                Action::Analyze { since, .. } => {
                    events.push(Event::CanaryData(canary_data(db, &ctx, since).await?))
                }
                Action::CancelUnfinished => {
                    cancel_unfinished(db, &ctx, "the rollout was aborted").await?
                }
                Action::RollBack => {
                    cancel_unfinished(db, &ctx, "the rollout is rolling back").await?;
                    db.execute(
                        "UPDATE rollout_devices SET state = 'revert_queued' WHERE rollout_id = $1 AND state = 'succeeded'",
                        &[Value::Int(id.0)],
                    )
                    .await?;
                }
                Action::Record(decision) => record(db, id, now, &decision).await?,
            }
        }
        if events.is_empty() {
            break;
        }
    }
    if machine.status == Status::RolledBack {
        revert_some(db, &ctx, &mut outcome).await?;
    }
    outcome.status = machine.status.as_str().to_owned();
    db.execute(
        "UPDATE rollouts SET machine = $1, status = $2, updated_at = $3 WHERE id = $4",
        &[
            Value::from(json(&machine)?),
            Value::from(machine.status.as_str()),
            ts(now),
            Value::Int(id.0),
        ],
    )
    .await?;
    Ok(Some(outcome))
}

/// Applies an operator's command at once (it is refused with the reason when it does not apply).
pub async fn command<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: RolloutId,
    command: Command,
    now: Timestamp,
) -> Result<(RolloutView, TickOutcome), StoreError> {
    let before = get(db, id).await?;
    let machine: Machine = parse_json(
        &db.query_one(
            "SELECT machine FROM rollouts WHERE id = $1",
            &[Value::Int(id.0)],
        )
        .await?
        .text(0)?,
    )?;
    machine
        .check_command(&before.spec, &command)
        .map_err(StoreError::Conflict)?;
    let name = match &command {
        Command::Pause { .. } => "pause",
        Command::Resume => "resume",
        Command::Abort { .. } => "abort",
        Command::Approve => "approve",
        Command::Rollback { .. } => "rollback",
    };
    let outcome = tick(
        db,
        id,
        now,
        vec![Event::Command {
            actor: actor.name.clone(),
            command,
        }],
        false,
    )
    .await?
    .unwrap_or_default();
    let after = get(db, id).await?;
    audit::record(
        db,
        actor,
        &format!("rollout.{name}"),
        "rollout",
        &id.to_string(),
        Some(&before.status),
        Some(&after.status),
        now,
    )
    .await?;
    Ok((after, outcome))
}

/// Rollouts the orchestrator still has work for: running or paused ones (paused rollouts still
/// count outcomes of devices that were updating), dynamic completed ones, and rollbacks with
/// devices left to revert.
pub async fn active<D: Db>(db: &mut D) -> Result<Vec<RolloutId>, StoreError> {
    let rows = db
        .query(
            "SELECT id FROM rollouts WHERE status IN ('running', 'paused', 'completed', 'rolled_back', 'aborted')
               AND (status IN ('running', 'paused')
                    OR EXISTS (SELECT 1 FROM rollout_devices r WHERE r.rollout_id = rollouts.id
                               AND r.state IN ('updating', 'retry', 'revert_queued', 'reverting'))
                    OR (status = 'completed' AND spec LIKE '%\"dynamic\":true%'))
             ORDER BY id",
            &[],
        )
        .await?;
    rows.iter().map(|r| Ok(RolloutId(r.int(0)?))).collect()
}

/// One rollout.
pub async fn get<D: Db>(db: &mut D, id: RolloutId) -> Result<RolloutView, StoreError> {
    let row = db
        .query_opt(
            &format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"),
            &[Value::Int(id.0)],
        )
        .await?
        .ok_or_else(|| StoreError::not_found("rollout", id))?;
    view(&row)
}

/// Rollouts, newest first, optionally only those with `status`.
pub async fn list<D: Db>(
    db: &mut D,
    status: Option<&str>,
    limit: usize,
) -> Result<Vec<RolloutView>, StoreError> {
    let rows = match status {
        Some(status) => {
            db.query(
                &format!(
                    "SELECT {COLUMNS} FROM rollouts WHERE status = $1 ORDER BY id DESC LIMIT $2"
                ),
                &[Value::from(status), Value::Int(limit as i64)],
            )
            .await?
        }
        None => {
            db.query(
                &format!("SELECT {COLUMNS} FROM rollouts ORDER BY id DESC LIMIT $1"),
                &[Value::Int(limit as i64)],
            )
            .await?
        }
    };
    rows.iter().map(view).collect()
}

/// Rollouts not in a final state (`running` or `paused`), newest first.
pub async fn unfinished<D: Db>(db: &mut D) -> Result<Vec<RolloutView>, StoreError> {
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS} FROM rollouts WHERE status IN ('running', 'paused') ORDER BY id DESC"
            ),
            &[],
        )
        .await?;
    rows.iter().map(view).collect()
}

/// The decision log, oldest first.
pub async fn decisions<D: Db>(
    db: &mut D,
    id: RolloutId,
) -> Result<Vec<RolloutDecisionView>, StoreError> {
    get(db, id).await?;
    let rows = db
        .query(
            "SELECT seq, at, kind, actor, phase, message, evidence, alert FROM rollout_decisions
             WHERE rollout_id = $1 ORDER BY seq",
            &[Value::Int(id.0)],
        )
        .await?;
    rows.iter().map(decision_view).collect()
}

/// Alerts not yet delivered, oldest first, with their rollout's id and name.
pub async fn undelivered_alerts<D: Db>(
    db: &mut D,
    limit: usize,
) -> Result<Vec<(RolloutId, String, RolloutDecisionView)>, StoreError> {
    let rows = db
        .query(
            "SELECT d.seq, d.at, d.kind, d.actor, d.phase, d.message, d.evidence, d.alert, d.rollout_id, r.name
             FROM rollout_decisions d JOIN rollouts r ON r.id = d.rollout_id
             WHERE d.alert = 1 AND d.delivered = 0 ORDER BY d.seq LIMIT $1",
            &[Value::Int(limit as i64)],
        )
        .await?;
    rows.iter()
        .map(|row| Ok((RolloutId(row.int(8)?), row.text(9)?, decision_view(row)?)))
        .collect()
}

/// Marks alerts delivered.
pub async fn mark_delivered<D: Db>(db: &mut D, seqs: &[i64]) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    let params: Vec<Value> = seqs.iter().map(|&s| Value::Int(s)).collect();
    db.execute(
        &format!(
            "UPDATE rollout_decisions SET delivered = 1 WHERE seq IN ({})",
            placeholders(1, seqs.len())
        ),
        &params,
    )
    .await?;
    Ok(())
}

/// A page of a rollout's devices in rank order, optionally only those in `state`.
pub async fn devices<D: Db>(
    db: &mut D,
    id: RolloutId,
    state: Option<&str>,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page<RolloutDeviceView>, StoreError> {
    get(db, id).await?;
    let limit = limit.clamp(1, 1000);
    let after = match cursor {
        Some(c) => c
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite())
            .ok_or_else(|| StoreError::Invalid(format!("cursor {c:?} is not valid")))?,
        None => -1.0,
    };
    let mut params = vec![Value::Int(id.0), Value::Float(after)];
    let mut sql = "SELECT d.id, r.state, r.attempt, r.baseline, r.deployment_id, r.from_version, r.finished_at, r.reason, r.rank
         FROM rollout_devices r JOIN devices d ON d.seq = r.device_seq
         WHERE r.rollout_id = $1 AND r.rank > $2"
        .to_owned();
    if let Some(state) = state {
        params.push(Value::from(state));
        sql.push_str(" AND r.state = $3");
    }
    params.push(Value::Int(limit as i64 + 1));
    sql.push_str(&format!(" ORDER BY r.rank LIMIT ${}", params.len()));
    let rows = db.query(&sql, &params).await?;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut next_cursor = None;
    for (idx, row) in rows.iter().enumerate() {
        if idx == limit {
            next_cursor = Some(format!("{:?}", rows[idx - 1].float(8)?));
            break;
        }
        items.push(RolloutDeviceView {
            device: row.text(0)?,
            state: row.text(1)?,
            attempt: row.int(2)? as u32,
            baseline: row.int(3)? != 0,
            deployment: row.opt_int(4)?,
            from_version: row.opt_text(5)?,
            finished_at: row.opt_int(6)?.map(Timestamp::from_millis),
            reason: row.opt_text(7)?,
        });
    }
    Ok(Page { items, next_cursor })
}

// ---- the tick's parts --------------------------------------------------------------------------

struct Ctx<'a> {
    id: RolloutId,
    now: Timestamp,
    spec: &'a RolloutSpec,
    artifact: Option<ArtifactRef>,
    update_type: UpdateType,
}

/// Devices updated since the last look that match the target and are not in the rollout yet.
async fn add_joiners<D: Db>(
    db: &mut D,
    ctx: &Ctx<'_>,
    target: &Target,
    seed: u64,
    since: Timestamp,
) -> Result<Option<u64>, StoreError> {
    let query = match targets::query_of(db, target).await {
        Ok(query) => query,
        // A group deleted after the rollout started: nobody new joins.
        Err(StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let fragment = query.to_sql(db.dialect(), ctx.now, 3);
    let mut params = vec![Value::Int(ctx.id.0), ts(since)];
    params.extend(fragment.params.iter().cloned().map(Value::from));
    let rows = db
        .query_adhoc(
            &format!(
                "SELECT d.seq FROM devices d{} WHERE d.updated_at >= $2 AND ({}) AND d.status <> 'decommissioned'
                   AND NOT EXISTS (SELECT 1 FROM rollout_devices r WHERE r.rollout_id = $1 AND r.device_seq = d.seq)",
                fragment.joins, fragment.sql
            ),
            &params,
        )
        .await?;
    // Look again from slightly before now next time: a device updated in a transaction that
    // commits after this one must not be missed.
    db.execute(
        "UPDATE rollouts SET joined_check = $1 WHERE id = $2",
        &[
            ts(Timestamp::from_millis(ctx.now.as_millis() - 60_000)),
            Value::Int(ctx.id.0),
        ],
    )
    .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut values = Vec::with_capacity(rows.len() * 3);
    for row in &rows {
        let seq = row.int(0)?;
        values.push(Value::Int(ctx.id.0));
        values.push(Value::Int(seq));
        values.push(Value::Float(plan::late_rank(seed, seq)));
    }
    for chunk in values.chunks(PLAN_BATCH * 3) {
        db.execute(
            &format!(
                "INSERT INTO rollout_devices (rollout_id, device_seq, rank, state) VALUES {}",
                value_rows(chunk.len() / 3, 3).replace(')', ", 'queued')")
            ),
            chunk,
        )
        .await?;
    }
    Ok(Some(rows.len() as u64))
}

/// Outcomes of deployments that finished since the last tick.
async fn outcomes<D: Db>(
    db: &mut D,
    ctx: &Ctx<'_>,
    succeeded_before: u64,
) -> Result<Vec<Event>, StoreError> {
    let rows = db
        .query(
            "SELECT r.device_seq, r.state, r.attempt, p.state, p.failure, p.finished_at
             FROM rollout_devices r JOIN deployments p ON p.id = r.deployment_id
             WHERE r.rollout_id = $1 AND r.changed = 1 LIMIT $2",
            &[Value::Int(ctx.id.0), Value::Int(OUTCOMES_PER_TICK)],
        )
        .await?;
    let mut events = Vec::with_capacity(rows.len());
    let mut succeeded = succeeded_before;
    for row in &rows {
        let device = row.int(0)?;
        let was = row.text(1)?;
        let attempt = row.int(2)? as u32;
        let state = DeploymentState::parse(&row.text(3)?)
            .ok_or_else(|| StoreError::Corrupt("unknown deployment state".into()))?;
        let failure = row
            .opt_text(4)?
            .map(|f| from_wire::<FailureKind>(&f))
            .transpose()?;
        let finished_at = row.opt_int(5)?;
        let (new_state, event) = if was == "reverting" {
            let ok = state == DeploymentState::Succeeded;
            (
                if ok { "reverted" } else { "revert_failed" },
                Event::Reverted { ok },
            )
        } else {
            let outcome = match state {
                DeploymentState::Succeeded | DeploymentState::Downloaded => Outcome::Succeeded,
                DeploymentState::RolledBack => Outcome::RolledBack,
                DeploymentState::TimedOut => Outcome::TimedOut,
                DeploymentState::Canceled => Outcome::Canceled,
                DeploymentState::Failed if failure.is_some_and(FailureKind::is_refusal) => {
                    Outcome::Rejected
                }
                DeploymentState::Failed
                    if matches!(
                        failure,
                        Some(FailureKind::BootFailed | FailureKind::HealthCheckFailed)
                    ) =>
                {
                    Outcome::RolledBack
                }
                _ => Outcome::Failed,
            };
            let name = match outcome {
                Outcome::Succeeded => "succeeded",
                Outcome::RolledBack => "rolled_back",
                Outcome::TimedOut => "timed_out",
                Outcome::Canceled => "canceled",
                Outcome::Rejected => "rejected",
                Outcome::Failed => "failed",
            };
            (
                name,
                Event::Outcome {
                    device,
                    outcome,
                    attempt,
                },
            )
        };
        let analysis = matches!(
            event,
            Event::Outcome {
                outcome: Outcome::Succeeded,
                ..
            }
        ) && succeeded < ANALYSIS_DEVICES;
        if matches!(
            event,
            Event::Outcome {
                outcome: Outcome::Succeeded,
                ..
            }
        ) {
            succeeded += 1;
        }
        db.execute(
            "UPDATE rollout_devices SET state = $1, changed = 0, finished_at = $2,
                 analysis = CASE WHEN $3 = 1 THEN 1 ELSE analysis END
             WHERE rollout_id = $4 AND device_seq = $5",
            &[
                Value::from(new_state),
                finished_at.map_or(Value::Null, Value::Int),
                Value::Int(i64::from(analysis)),
                Value::Int(ctx.id.0),
                Value::Int(device),
            ],
        )
        .await?;
        events.push(event);
    }
    Ok(events)
}

/// Offers the release to up to `new` queued devices in rank order and to up to `retries` devices
/// whose retry is due, checking each device is still eligible.
async fn dispatch<D: Db>(
    db: &mut D,
    ctx: &Ctx<'_>,
    target: &Target,
    new: u64,
    retries: u64,
    outcome: &mut TickOutcome,
) -> Result<Vec<Event>, StoreError> {
    let mut picked: Vec<(i64, u32, bool)> = Vec::new();
    if retries > 0 {
        for row in db
            .query(
                "SELECT device_seq, attempt FROM rollout_devices
                 WHERE rollout_id = $1 AND state = 'retry' AND retry_at <= $2 ORDER BY retry_at LIMIT $3",
                &[Value::Int(ctx.id.0), ts(ctx.now), Value::Int(retries.min(i64::MAX as u64) as i64)],
            )
            .await?
        {
            picked.push((row.int(0)?, row.int(1)? as u32, true));
        }
    }
    let mut queue_empty = false;
    if new > 0 {
        let limit = new.min(DISPATCH_PER_TICK) as i64;
        let rows = db
            .query(
                "SELECT device_seq FROM rollout_devices WHERE rollout_id = $1 AND state = 'queued' ORDER BY rank LIMIT $2",
                &[Value::Int(ctx.id.0), Value::Int(limit)],
            )
            .await?;
        queue_empty = (rows.len() as i64) < limit && (rows.len() as u64) < new;
        for row in rows {
            picked.push((row.int(0)?, 1, false));
        }
    }
    let (mut n_new, mut n_retried, mut n_skipped) = (0, 0, 0);
    if picked.is_empty() {
        return Ok(vec![Event::Assigned {
            new: 0,
            retried: 0,
            skipped: 0,
            queue_empty,
        }]);
    }
    let in_target = still_in_target(db, ctx, target, &picked).await?;
    let seqs: Vec<Value> = picked.iter().map(|p| Value::Int(p.0)).collect();
    let mut facts: HashMap<i64, Row> = HashMap::new();
    for chunk in seqs.chunks(PLAN_BATCH) {
        for row in db
            .query(
                &format!(
                    "SELECT d.seq, d.id, d.status, d.firmware, d.device_type, d.hw_rev,
                        (SELECT p.id FROM deployments p WHERE p.device_seq = d.seq AND p.finished_at IS NULL)
                     FROM devices d WHERE d.seq IN ({})",
                    placeholders(1, chunk.len())
                ),
                chunk,
            )
            .await?
        {
            facts.insert(row.int(0)?, row);
        }
    }
    let mut refused = Vec::new();
    for (seq, attempt, is_retry) in picked {
        let verdict = match (facts.get(&seq), &ctx.artifact) {
            (None, _) => Err("the device was deleted".to_owned()),
            (_, None) => Err("the release's artifact was deleted".to_owned()),
            (Some(row), Some(artifact)) => {
                eligible(ctx.spec, artifact, row, in_target.contains(&seq))
            }
        };
        match verdict {
            Ok((device, from_version)) => {
                let deployment = deployments::insert_for_rollout(
                    db,
                    seq,
                    ctx.artifact.as_ref().expect("checked above"),
                    ctx.update_type,
                    &from_version,
                    attempt,
                    ctx.id.0,
                    ctx.spec.policy.step_timeout,
                    ctx.now.saturating_add(ctx.spec.policy.attempt_timeout),
                    ctx.now,
                )
                .await?;
                db.execute(
                    "UPDATE rollout_devices SET state = 'updating', attempt = $1, deployment_id = $2,
                         from_version = COALESCE(from_version, $3), retry_at = NULL
                     WHERE rollout_id = $4 AND device_seq = $5",
                    &[
                        Value::Int(i64::from(attempt)),
                        Value::Int(deployment.0),
                        Value::from(from_version.as_str()),
                        Value::Int(ctx.id.0),
                        Value::Int(seq),
                    ],
                )
                .await?;
                outcome.offered.push(device);
                if is_retry {
                    n_retried += 1;
                } else {
                    n_new += 1;
                }
            }
            Err(reason) => {
                db.execute(
                    "UPDATE rollout_devices SET state = 'skipped', reason = $1, retry_at = NULL, finished_at = $2
                     WHERE rollout_id = $3 AND device_seq = $4",
                    &[Value::from(reason.as_str()), ts(ctx.now), Value::Int(ctx.id.0), Value::Int(seq)],
                )
                .await?;
                if is_retry {
                    // It was waiting for a retry: count it as offered again and refused.
                    n_retried += 1;
                    refused.push(Event::Outcome {
                        device: seq,
                        outcome: Outcome::Rejected,
                        attempt,
                    });
                } else {
                    n_skipped += 1;
                }
            }
        }
    }
    let mut events = vec![Event::Assigned {
        new: n_new,
        retried: n_retried,
        skipped: n_skipped,
        queue_empty,
    }];
    events.extend(refused);
    Ok(events)
}

/// Which of `picked` still match the target (a dynamic target's membership changes).
async fn still_in_target<D: Db>(
    db: &mut D,
    ctx: &Ctx<'_>,
    target: &Target,
    picked: &[(i64, u32, bool)],
) -> Result<std::collections::HashSet<i64>, StoreError> {
    let query = match targets::query_of(db, target).await {
        Ok(query) => query,
        Err(StoreError::NotFound { .. }) => return Ok(Default::default()),
        Err(e) => return Err(e),
    };
    let mut found = std::collections::HashSet::new();
    for chunk in picked.chunks(PLAN_BATCH) {
        let fragment = query.to_sql(db.dialect(), ctx.now, chunk.len() + 1);
        let mut params: Vec<Value> = chunk.iter().map(|p| Value::Int(p.0)).collect();
        params.extend(fragment.params.iter().cloned().map(Value::from));
        for row in db
            .query_adhoc(
                &format!(
                    "SELECT d.seq FROM devices d{} WHERE d.seq IN ({}) AND ({})",
                    fragment.joins,
                    placeholders(1, chunk.len()),
                    fragment.sql
                ),
                &params,
            )
            .await?
        {
            found.insert(row.int(0)?);
        }
    }
    Ok(found)
}

/// Whether the device described by `row` (seq, id, status, firmware, device_type, hw_rev, active
/// deployment) may take `artifact` under the rollout's policy: its id and current version, or why not.
fn eligible(
    spec: &RolloutSpec,
    artifact: &ArtifactRef,
    row: &Row,
    in_target: bool,
) -> Result<(DeviceId, String), String> {
    let text = |idx| row.text(idx).map_err(|e| e.to_string());
    let device = DeviceId::parse(&text(1)?).map_err(|e| e.to_string())?;
    let status = DeviceStatus::parse(&text(2)?).map_err(|e| e.to_string())?;
    let firmware = text(3)?;
    if !in_target {
        return Err("the device left the target".into());
    }
    if status == DeviceStatus::Decommissioned {
        return Err("the device was decommissioned".into());
    }
    let device_type = text(4)?;
    if !artifact
        .device_types
        .iter()
        .any(|t| t.as_str() == device_type)
    {
        return Err(format!("the image is not for device type {device_type}"));
    }
    let hw_rev = text(5)?;
    if !artifact.hw_revs.is_empty() && !artifact.hw_revs.iter().any(|r| r.as_str() == hw_rev) {
        return Err(format!("the image is not for hardware revision {hw_rev:?}"));
    }
    if let Ok(Some(active)) = row.opt_int(6) {
        return Err(format!("the device is busy with deployment {active}"));
    }
    let policy = &spec.policy;
    match Version::parse(&firmware) {
        Ok(running) => {
            if running == artifact.version {
                return Err(format!("the device already runs {running}"));
            }
            if running > artifact.version && !policy.allow_downgrade {
                return Err(format!(
                    "the device runs {running}, newer than {}; the policy does not allow downgrades",
                    artifact.version
                ));
            }
            if let Some(min) = &policy.min_source_version {
                if running < *min {
                    return Err(format!(
                        "the device runs {running}, below the minimum source version {min}"
                    ));
                }
            }
            if let Some(step) = policy
                .required_versions
                .iter()
                .filter(|v| **v < artifact.version && running < **v)
                .min()
            {
                return Err(format!(
                    "the device runs {running} and must install {step} first"
                ));
            }
        }
        Err(_) if policy.min_source_version.is_some() || !policy.required_versions.is_empty() => {
            return Err(format!(
                "the device reports no valid version ({firmware:?}), so the upgrade path cannot be checked"
            ));
        }
        Err(_) => {}
    }
    Ok((device, firmware))
}

/// Canary and baseline data for a gate: per-device means of each metric since `since` (canary
/// devices only after they started running the release), and who is offline.
async fn canary_data<D: Db>(
    db: &mut D,
    ctx: &Ctx<'_>,
    since: Timestamp,
) -> Result<CanaryData, StoreError> {
    let metrics: Vec<&str> = ctx
        .spec
        .gates
        .canary
        .metrics
        .iter()
        .map(|m| m.metric.as_str())
        .collect();
    let canary = cohort_samples(db, ctx, Cohort::Canary, since, &metrics).await?;
    let baseline = cohort_samples(db, ctx, Cohort::Baseline, since, &metrics).await?;
    let mut data = CanaryData::default();
    for (idx, metric) in metrics.iter().enumerate() {
        let means = |cohort: &HashMap<i64, Vec<(f64, u64)>>| -> Vec<f64> {
            cohort
                .values()
                .filter_map(|sums| {
                    let (sum, n) = sums[idx];
                    (n > 0).then(|| sum / n as f64)
                })
                .collect()
        };
        data.metrics.push(MetricSamples {
            metric: (*metric).to_owned(),
            canary: means(&canary),
            baseline: means(&baseline),
        });
    }
    for (cohort, total, offline) in [
        (
            Cohort::Canary,
            &mut data.canary_devices,
            &mut data.canary_offline,
        ),
        (
            Cohort::Baseline,
            &mut data.baseline_devices,
            &mut data.baseline_offline,
        ),
    ] {
        let row = db
            .query_one(
                &format!(
                    "SELECT COUNT(*), COALESCE(SUM(CASE WHEN d.connectivity = 'offline' THEN 1 ELSE 0 END), 0)
                     FROM rollout_devices r JOIN devices d ON d.seq = r.device_seq
                     WHERE r.rollout_id = $1 AND {}",
                    cohort.filter()
                ),
                &[Value::Int(ctx.id.0)],
            )
            .await?;
        *total = row.int(0)? as u64;
        *offline = row.int(1)? as u64;
    }
    Ok(data)
}

#[derive(Clone, Copy)]
enum Cohort {
    Canary,
    Baseline,
}

impl Cohort {
    fn filter(self) -> &'static str {
        match self {
            Cohort::Canary => "r.analysis = 1 AND r.state = 'succeeded'",
            Cohort::Baseline => "r.baseline = 1 AND r.state = 'queued'",
        }
    }

    /// `chain (seq, device_seq, finished_at)`: the samples of this cohort of rollout `$1` received
    /// since `$2`, found by walking each device's sample chain back from its newest.
    fn sample_chains(self) -> String {
        sample_chain_cte(
            &format!(
                "SELECT h.last_sample, r.device_seq, r.finished_at FROM rollout_devices r
                 JOIN device_health h ON h.device_seq = r.device_seq
                 WHERE r.rollout_id = $1 AND {}",
                self.filter()
            ),
            &["finished_at"],
            "$2",
        )
    }

    /// A canary device's samples count only from when it finished updating.
    fn after_update(self) -> &'static str {
        match self {
            Cohort::Canary => " AND s.observed_at >= c.finished_at",
            Cohort::Baseline => "",
        }
    }
}

/// Per device, per metric: (sum, count) of the values in its heartbeats since `since`.
async fn cohort_samples<D: Db>(
    db: &mut D,
    ctx: &Ctx<'_>,
    cohort: Cohort,
    since: Timestamp,
    metrics: &[&str],
) -> Result<HashMap<i64, Vec<(f64, u64)>>, StoreError> {
    let rows = db
        .query(
            &format!(
                "{} SELECT c.device_seq, s.metrics FROM {SAMPLE_OF_CHAIN}
                 WHERE s.observed_at >= $2{}",
                cohort.sample_chains(),
                cohort.after_update()
            ),
            &[Value::Int(ctx.id.0), ts(since)],
        )
        .await?;
    let mut out: HashMap<i64, Vec<(f64, u64)>> = HashMap::new();
    for row in &rows {
        let values: HashMap<String, f64> = match serde_json::from_str(&row.text(1)?) {
            Ok(values) => values,
            Err(_) => continue,
        };
        let sums = out
            .entry(row.int(0)?)
            .or_insert_with(|| vec![(0.0, 0); metrics.len()]);
        for (idx, metric) in metrics.iter().enumerate() {
            if let Some(v) = values.get(*metric).filter(|v| v.is_finite()) {
                sums[idx].0 += v;
                sums[idx].1 += 1;
            }
        }
    }
    Ok(out)
}

/// Crashes and exposure of the canary and the baseline since the last tick, as totals since the
/// first canary device updated minus what the sequential test has already seen. Totals (rather than
/// "samples since a cursor") cannot miss a heartbeat committed late by another writer.
async fn crash_increment<D: Db>(
    db: &mut D,
    ctx: &Ctx<'_>,
    machine: &Machine,
) -> Result<Option<Event>, StoreError> {
    if machine.counts.succeeded == 0 {
        return Ok(None);
    }
    let Some(first) = db
        .query_one(
            "SELECT MIN(finished_at) FROM rollout_devices WHERE rollout_id = $1 AND analysis = 1 AND state = 'succeeded'",
            &[Value::Int(ctx.id.0)],
        )
        .await?
        .opt_int(0)?
    else {
        return Ok(None);
    };
    let since = Timestamp::from_millis(first);
    let mut totals = [(0u64, 0.0f64); 2];
    for (slot, cohort) in [Cohort::Canary, Cohort::Baseline].into_iter().enumerate() {
        let rows = db
            .query(
                &format!(
                    "{} SELECT c.device_seq, s.observed_at, s.metrics FROM {SAMPLE_OF_CHAIN}
                     WHERE s.observed_at >= $2{}",
                    cohort.sample_chains(),
                    cohort.after_update()
                ),
                &[Value::Int(ctx.id.0), ts(since)],
            )
            .await?;
        // Exposure per device: the span its heartbeats cover, stretched by one interval.
        let mut per_device: HashMap<i64, (i64, i64, u64, u64)> = HashMap::new();
        for row in &rows {
            let at = row.int(1)?;
            let crashes = serde_json::from_str::<HashMap<String, f64>>(&row.text(2)?)
                .ok()
                .and_then(|m| m.get("crashes").copied())
                .filter(|c| c.is_finite() && *c >= 0.0)
                .map_or(0, |c| c.round() as u64);
            let entry = per_device.entry(row.int(0)?).or_insert((at, at, 0, 0));
            entry.0 = entry.0.min(at);
            entry.1 = entry.1.max(at);
            entry.2 += 1;
            entry.3 += crashes;
        }
        for (first, last, n, crashes) in per_device.into_values() {
            totals[slot].0 += crashes;
            if n >= 2 {
                let span = (last - first) as f64;
                totals[slot].1 += span * n as f64 / (n - 1) as f64 / 3_600_000.0;
            }
        }
    }
    let sprt = &machine.crashes;
    let event = Event::Crashes {
        canary_events: totals[0].0.saturating_sub(sprt.canary_events()),
        canary_hours: (totals[0].1 - sprt.canary_exposure()).max(0.0),
        baseline_events: totals[1].0.saturating_sub(sprt.baseline_events()),
        baseline_hours: (totals[1].1 - sprt.baseline_exposure()).max(0.0),
    };
    Ok(match event {
        Event::Crashes {
            canary_hours,
            baseline_hours,
            ..
        } if canary_hours > 0.0 && baseline_hours > 0.0 => Some(event),
        _ => None,
    })
}

/// Cancels every unfinished deployment of the rollout; their devices stop at their next report.
async fn cancel_unfinished<D: Db>(db: &mut D, ctx: &Ctx<'_>, why: &str) -> Result<(), StoreError> {
    let rows = db
        .query(
            "SELECT p.id FROM rollout_devices r JOIN deployments p ON p.id = r.deployment_id
             WHERE r.rollout_id = $1 AND r.state IN ('updating', 'reverting') AND p.finished_at IS NULL",
            &[Value::Int(ctx.id.0)],
        )
        .await?;
    for row in &rows {
        deployments::cancel_by_system(db, DeploymentId(row.int(0)?), why, ctx.now).await?;
    }
    db.execute(
        "UPDATE rollout_devices SET state = 'canceled', retry_at = NULL, changed = 0
         WHERE rollout_id = $1 AND state IN ('updating', 'retry')",
        &[Value::Int(ctx.id.0)],
    )
    .await?;
    Ok(())
}

/// Gives the previous release back to a batch of devices that took this one.
async fn revert_some<D: Db>(
    db: &mut D,
    ctx: &Ctx<'_>,
    outcome: &mut TickOutcome,
) -> Result<(), StoreError> {
    let rows = db
        .query(
            "SELECT r.device_seq, r.from_version, a.name FROM rollout_devices r
             JOIN rollouts o ON o.id = r.rollout_id LEFT JOIN artifacts a ON a.seq = o.artifact_seq
             WHERE r.rollout_id = $1 AND r.state = 'revert_queued' ORDER BY r.rank LIMIT $2",
            &[Value::Int(ctx.id.0), Value::Int(REVERTS_PER_TICK)],
        )
        .await?;
    for row in &rows {
        let seq = row.int(0)?;
        let from = row.opt_text(1)?.unwrap_or_default();
        let previous = match (Version::parse(&from), row.opt_text(2)?) {
            (Ok(version), Some(name)) => {
                let name = drover_core::ArtifactName::parse(&name)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                artifacts::find(db, &name, &version).await.ok()
            }
            _ => None,
        };
        let busy = db
            .query_opt(
                "SELECT id FROM deployments WHERE device_seq = $1 AND finished_at IS NULL",
                &[Value::Int(seq)],
            )
            .await?;
        let (state, reason, deployment) = match (previous, busy) {
            (Some(previous), None) => {
                let id = deployments::insert_for_rollout(
                    db,
                    seq,
                    &previous,
                    UpdateType::Forced,
                    &ctx.artifact
                        .as_ref()
                        .map_or(String::new(), |a| a.version.to_string()),
                    1,
                    ctx.id.0,
                    ctx.spec.policy.step_timeout,
                    ctx.now.saturating_add(ctx.spec.policy.attempt_timeout),
                    ctx.now,
                )
                .await?;
                if let Some(row) = db
                    .query_opt("SELECT id FROM devices WHERE seq = $1", &[Value::Int(seq)])
                    .await?
                {
                    if let Ok(device) = DeviceId::parse(&row.text(0)?) {
                        outcome.offered.push(device);
                    }
                }
                ("reverting", None, Some(id.0))
            }
            (None, _) => (
                "revert_failed",
                Some(format!(
                    "the previous release {from:?} is not available to reinstall"
                )),
                None,
            ),
            (_, Some(busy)) => (
                "revert_failed",
                Some(format!(
                    "the device is busy with deployment {}",
                    busy.int(0)?
                )),
                None,
            ),
        };
        db.execute(
            "UPDATE rollout_devices SET state = $1, reason = COALESCE($2, reason), deployment_id = COALESCE($3, deployment_id)
             WHERE rollout_id = $4 AND device_seq = $5",
            &[
                Value::from(state),
                reason.map_or(Value::Null, Value::from),
                deployment.map_or(Value::Null, Value::Int),
                Value::Int(ctx.id.0),
                Value::Int(seq),
            ],
        )
        .await?;
    }
    Ok(())
}

// ---- helpers -----------------------------------------------------------------------------------

const COLUMNS: &str = "id, name, artifact, version, target, spec, update_type, status, machine,
     created_at, created_by, updated_at";

fn view(row: &Row) -> Result<RolloutView, StoreError> {
    let spec: RolloutSpec = parse_json(&row.text(5)?)?;
    let machine: Machine = parse_json(&row.text(8)?)?;
    let waiting_for = waiting_for(&spec, &machine);
    Ok(RolloutView {
        id: RolloutId(row.int(0)?),
        name: row.text(1)?,
        artifact: row.text(2)?,
        version: row.text(3)?,
        target: parse_json(&row.text(4)?)?,
        update_type: from_wire(&row.text(6)?)?,
        status: row.text(7)?,
        reason: machine.reason.clone(),
        phase: (machine.phase + 1).min(spec.n_phases()),
        n_phases: spec.n_phases(),
        phase_percent: machine.phase_percent(&spec),
        waiting_for,
        counts: machine.counts.clone(),
        gates: machine.reports.clone(),
        spec,
        created_at: Timestamp::from_millis(row.int(9)?),
        created_by: row.text(10)?,
        updated_at: Timestamp::from_millis(row.int(11)?),
    })
}

fn waiting_for(spec: &RolloutSpec, machine: &Machine) -> Option<String> {
    match machine.status {
        Status::Running => {}
        Status::Paused => return Some("an operator to resume or roll back".into()),
        _ => return None,
    }
    if machine.phase_started_at.is_none() && machine.announced_wait {
        return Some(format!("approval of phase {}", machine.phase + 1));
    }
    if machine.analyzing {
        return Some("the canary analysis".into());
    }
    if let Some(at) = machine.soak_started_at {
        let soak = match &spec.strategy {
            drover_core::rollout::spec::Strategy::Phases(p) => p
                .get(machine.phase)
                .map_or(Duration::from_millis(0), |p| p.soak),
            drover_core::rollout::spec::Strategy::Rate(r) => r.canary_soak,
        };
        return Some(format!("the soak to end at {}", at.saturating_add(soak)));
    }
    if machine.counts.in_flight > 0 || machine.counts.retry_waiting > 0 {
        return Some(format!(
            "{} devices updating and {} waiting to retry",
            machine.counts.in_flight, machine.counts.retry_waiting
        ));
    }
    spec.window
        .as_ref()
        .map(|w| format!("the maintenance window ({w})"))
}

fn decision_view(row: &Row) -> Result<RolloutDecisionView, StoreError> {
    Ok(RolloutDecisionView {
        seq: row.int(0)?,
        at: Timestamp::from_millis(row.int(1)?),
        kind: row.text(2)?,
        actor: row.text(3)?,
        phase: row.int(4)? as usize + 1,
        message: row.text(5)?,
        evidence: row.opt_text(6)?.map(|e| parse_json(&e)).transpose()?,
        alert: row.int(7)? != 0,
    })
}

async fn record<D: Db>(
    db: &mut D,
    id: RolloutId,
    now: Timestamp,
    decision: &Decision,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO rollout_decisions (rollout_id, at, kind, actor, phase, message, evidence, alert)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            Value::Int(id.0),
            ts(now),
            Value::from(decision.kind.as_str()),
            Value::from(decision.actor.as_str()),
            Value::Int(decision.phase as i64),
            Value::from(decision.message.as_str()),
            decision
                .evidence
                .as_ref()
                .map_or(Value::Null, |e| Value::from(e.to_string())),
            Value::Int(i64::from(decision.alert)),
        ],
    )
    .await?;
    Ok(())
}

/// Listed devices must exist and be in service.
pub(crate) async fn check_listed_devices<D: Db>(
    db: &mut D,
    devices: &[DeviceId],
) -> Result<(), StoreError> {
    let mut found = HashMap::new();
    for chunk in devices.chunks(PLAN_BATCH) {
        let params: Vec<Value> = chunk.iter().map(|d| Value::from(d.as_str())).collect();
        for row in db
            .query(
                &format!(
                    "SELECT id, status FROM devices WHERE id IN ({})",
                    placeholders(1, chunk.len())
                ),
                &params,
            )
            .await?
        {
            found.insert(row.text(0)?, row.text(1)?);
        }
    }
    let missing: Vec<&str> = devices
        .iter()
        .map(DeviceId::as_str)
        .filter(|d| !found.contains_key(*d))
        .take(10)
        .collect();
    if !missing.is_empty() {
        return Err(StoreError::Invalid(format!(
            "the target lists unknown devices: {}",
            missing.join(", ")
        )));
    }
    let retired: Vec<&str> = devices
        .iter()
        .map(DeviceId::as_str)
        .filter(|d| found.get(*d).is_some_and(|s| s == "decommissioned"))
        .take(10)
        .collect();
    if !retired.is_empty() {
        return Err(StoreError::Invalid(format!(
            "the target lists decommissioned devices, which cannot be updated: {}",
            retired.join(", ")
        )));
    }
    Ok(())
}

/// The rank at and above which devices form the baseline: the last `baseline_devices` ranks, but
/// only devices the final phase reaches (never one an earlier phase would update).
fn baseline_threshold(spec: &RolloutSpec, ranks: &[f64]) -> f64 {
    let n = ranks.len() as u64;
    let before_last = match &spec.strategy {
        drover_core::rollout::spec::Strategy::Phases(phases) if phases.len() >= 2 => {
            plan::phase_quota(n, phases[phases.len() - 2].percent)
        }
        drover_core::rollout::spec::Strategy::Rate(rate) => u64::from(rate.canary_devices).min(n),
        _ => n,
    };
    let size = u64::from(spec.gates.canary.baseline_devices).min(n - before_last);
    if size == 0 {
        return f64::INFINITY;
    }
    let mut sorted: Vec<f64> = ranks.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[(n - size) as usize]
}

fn seed_of(artifact: &ArtifactRef, now: Timestamp) -> u64 {
    // Different for every rollout, stable once stored.
    let mut seed = now.as_millis() as u64 ^ (artifact.seq as u64).rotate_left(32);
    for byte in artifact.version.to_string().bytes() {
        seed = seed.rotate_left(5) ^ u64::from(byte);
    }
    seed
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(e.to_string()))
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("stored rollout: {e}")))
}
