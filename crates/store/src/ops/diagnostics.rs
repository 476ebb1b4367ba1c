//! Remote diagnostics in the store: requests awaiting a device's answer, and the single-use
//! confirmation tokens that guard a remote reboot.
//!
//! A request is `pending` until the device fetches it (`delivered`), then `answered`; one nobody
//! waits for any more is `expired` (its deadline passed). Tokens are stored only as their hash,
//! bound to one device and one action, valid until `expires_at`, and consumed by the first use.

use drover_core::{DeviceId, Timestamp};
use drover_proto::jobs::{DiagAction, DiagAnswer, DiagCommand, DiagResponse};

use crate::db::{Db, Row, Value};
use crate::ops::{audit, auth::Actor, ts};
use crate::{secret, StoreError};

/// Largest answer kept, in bytes of JSON.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// What became of a confirmation token presented with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// Valid: consumed now.
    Accepted,
    /// No such token for this device and action.
    Unknown,
    /// Already used once.
    Used,
    /// Past its validity.
    Expired,
}

/// A request's state as the waiting operator call sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum DiagState {
    /// Not answered yet.
    Waiting,
    Answered(DiagAnswer),
    /// Given up on (the wait ended).
    Expired,
}

/// What became of a device's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerOutcome {
    Accepted,
    /// Nobody waits for it any more.
    Expired,
    /// Answered before.
    AlreadyAnswered,
}

/// Issues a confirmation token for `action` on `device`, valid until `expires_at`.
pub async fn create_confirmation<D: Db>(
    db: &mut D,
    device: &DeviceId,
    action: DiagAction,
    expires_at: Timestamp,
    now: Timestamp,
) -> Result<String, StoreError> {
    let seq = device_seq(db, device).await?;
    // Old tokens are useless; dropping them here keeps the table as small as recent activity.
    db.execute(
        "DELETE FROM diag_confirmations WHERE expires_at < $1",
        &[ts(Timestamp::from_millis(now.as_millis() - 86_400_000))],
    )
    .await?;
    let token = secret::generate("drc_");
    db.execute(
        "INSERT INTO diag_confirmations (token_hash, device_seq, action, expires_at) VALUES ($1, $2, $3, $4)",
        &[
            Value::from(secret::hash(&token)),
            Value::Int(seq),
            Value::from(action.as_str()),
            ts(expires_at),
        ],
    )
    .await?;
    Ok(token)
}

/// Consumes a confirmation token if it is valid for `device` and `action`.
pub async fn consume_confirmation<D: Db>(
    db: &mut D,
    device: &DeviceId,
    action: DiagAction,
    token: &str,
    now: Timestamp,
) -> Result<Confirmation, StoreError> {
    let seq = device_seq(db, device).await?;
    let hash = secret::hash(token);
    let row = db
        .query_opt(
            &format!(
                "SELECT expires_at, used_at FROM diag_confirmations
                 WHERE token_hash = $1 AND device_seq = $2 AND action = $3{}",
                db.for_update()
            ),
            &[
                Value::from(hash.as_str()),
                Value::Int(seq),
                Value::from(action.as_str()),
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Confirmation::Unknown);
    };
    if row.opt_int(1)?.is_some() {
        return Ok(Confirmation::Used);
    }
    if row.int(0)? <= now.as_millis() {
        return Ok(Confirmation::Expired);
    }
    let n = db
        .execute(
            "UPDATE diag_confirmations SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
            &[ts(now), Value::from(hash.as_str())],
        )
        .await?;
    Ok(if n == 1 {
        Confirmation::Accepted
    } else {
        Confirmation::Used
    })
}

/// Records a request for `device`, answerable until `deadline`; returns its id.
#[allow(clippy::too_many_arguments)]
pub async fn create_request<D: Db>(
    db: &mut D,
    actor: &Actor,
    device: &DeviceId,
    action: DiagAction,
    lines: Option<u32>,
    deadline: Timestamp,
    now: Timestamp,
) -> Result<String, StoreError> {
    let seq = device_seq(db, device).await?;
    let status = db
        .query_one(
            "SELECT status FROM devices WHERE seq = $1",
            &[Value::Int(seq)],
        )
        .await?
        .text(0)?;
    if status == "decommissioned" {
        return Err(StoreError::Invalid(format!(
            "device {device} is decommissioned and cannot answer"
        )));
    }
    // Requests are kept a week for the record, then dropped here (indexed by creation time).
    db.execute(
        "DELETE FROM diag_requests WHERE created_at < $1",
        &[ts(Timestamp::from_millis(now.as_millis() - 7 * 86_400_000))],
    )
    .await?;
    let id = secret::short_id("diag-");
    let args = serde_json::json!({ "lines": lines });
    db.execute(
        "INSERT INTO diag_requests (id, device_seq, action, args, state, created_by, created_at, deadline)
         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7)",
        &[
            Value::from(id.as_str()),
            Value::Int(seq),
            Value::from(action.as_str()),
            Value::from(args.to_string()),
            Value::from(actor.name.as_str()),
            ts(now),
            ts(deadline),
        ],
    )
    .await?;
    audit::record(
        db,
        actor,
        "device.diagnostics",
        "device",
        device.as_str(),
        None::<&()>,
        Some(&serde_json::json!({ "request_id": id, "action": action, "lines": lines })),
        now,
    )
    .await?;
    Ok(id)
}

/// The oldest request the device has not answered and someone still waits for; marks it delivered.
pub async fn next_for_device<D: Db>(
    db: &mut D,
    device: &DeviceId,
    now: Timestamp,
) -> Result<Option<DiagCommand>, StoreError> {
    let seq = device_seq(db, device).await?;
    let row = db
        .query_opt(
            "SELECT id, action, args, deadline, state FROM diag_requests
             WHERE device_seq = $1 AND state IN ('pending', 'delivered') AND deadline > $2
             ORDER BY created_at, id LIMIT 1",
            &[Value::Int(seq), ts(now)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let id = row.text(0)?;
    if row.text(4)? == "pending" {
        db.execute(
            "UPDATE diag_requests SET state = 'delivered' WHERE id = $1 AND state = 'pending'",
            &[Value::from(id.as_str())],
        )
        .await?;
    }
    let args: serde_json::Value = parse_json(&row.text(2)?)?;
    Ok(Some(DiagCommand {
        request_id: id,
        action: action(&row.text(1)?)?,
        lines: args["lines"].as_u64().map(|n| n as u32),
        deadline: Timestamp::from_millis(row.int(3)?),
    }))
}

/// Records a device's answer. A request of another device is `NotFound`.
pub async fn answer<D: Db>(
    db: &mut D,
    device: &DeviceId,
    request_id: &str,
    response: &DiagResponse,
    now: Timestamp,
) -> Result<AnswerOutcome, StoreError> {
    let result = response.result.as_ref().map(serde_json::Value::to_string);
    if result
        .as_ref()
        .is_some_and(|r| r.len() > MAX_RESPONSE_BYTES)
    {
        return Err(StoreError::Invalid(format!(
            "result is larger than {MAX_RESPONSE_BYTES} bytes of JSON"
        )));
    }
    if response.error.as_ref().is_some_and(|e| e.len() > 4096) {
        return Err(StoreError::Invalid(
            "error is longer than 4096 bytes".into(),
        ));
    }
    let seq = device_seq(db, device).await?;
    let row = db
        .query_opt(
            &format!(
                "SELECT state, deadline FROM diag_requests WHERE id = $1 AND device_seq = $2{}",
                db.for_update()
            ),
            &[Value::from(request_id), Value::Int(seq)],
        )
        .await?
        .ok_or_else(|| StoreError::not_found("diagnostics request", request_id))?;
    match row.text(0)?.as_str() {
        "answered" => return Ok(AnswerOutcome::AlreadyAnswered),
        "expired" => return Ok(AnswerOutcome::Expired),
        _ if row.int(1)? <= now.as_millis() => return Ok(AnswerOutcome::Expired),
        _ => {}
    }
    db.execute(
        "UPDATE diag_requests SET state = 'answered', response = $1, error = $2, answered_at = $3 WHERE id = $4",
        &[
            Value::from(result),
            Value::from(response.error.as_deref()),
            ts(now),
            Value::from(request_id),
        ],
    )
    .await?;
    Ok(AnswerOutcome::Accepted)
}

/// Where a request stands.
pub async fn state<D: Db>(db: &mut D, request_id: &str) -> Result<DiagState, StoreError> {
    let row = db
        .query_opt(
            "SELECT r.id, d.id, r.action, r.response, r.error, r.created_at, r.answered_at, r.state
             FROM diag_requests r JOIN devices d ON d.seq = r.device_seq WHERE r.id = $1",
            &[Value::from(request_id)],
        )
        .await?
        .ok_or_else(|| StoreError::not_found("diagnostics request", request_id))?;
    match row.text(7)?.as_str() {
        "answered" => Ok(DiagState::Answered(answer_view(&row)?)),
        "expired" => Ok(DiagState::Expired),
        _ => Ok(DiagState::Waiting),
    }
}

/// Gives up on a request nobody answered; returns the answer if it arrived meanwhile.
pub async fn expire<D: Db>(db: &mut D, request_id: &str) -> Result<DiagState, StoreError> {
    db.execute(
        "UPDATE diag_requests SET state = 'expired' WHERE id = $1 AND state IN ('pending', 'delivered')",
        &[Value::from(request_id)],
    )
    .await?;
    state(db, request_id).await
}

fn answer_view(row: &Row) -> Result<DiagAnswer, StoreError> {
    Ok(DiagAnswer {
        request_id: row.text(0)?,
        device: row.text(1)?,
        action: action(&row.text(2)?)?,
        result: row.opt_text(3)?.map(|r| parse_json(&r)).transpose()?,
        error: row.opt_text(4)?,
        requested_at: Timestamp::from_millis(row.int(5)?),
        answered_at: Timestamp::from_millis(row.opt_int(6)?.unwrap_or(0)),
    })
}

async fn device_seq<D: Db>(db: &mut D, device: &DeviceId) -> Result<i64, StoreError> {
    db.query_opt(
        "SELECT seq FROM devices WHERE id = $1",
        &[Value::from(device.as_str())],
    )
    .await?
    .ok_or_else(|| StoreError::not_found("device", device))?
    .int(0)
}

fn action(text: &str) -> Result<DiagAction, StoreError> {
    DiagAction::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("diagnostics action {text:?}")))
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("stored diagnostics request: {e}")))
}
