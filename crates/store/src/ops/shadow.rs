//! Device shadows: read, update (read → apply → conditional write), delete (a tombstone that keeps
//! the version) and list.
//!
//! The merge rules, limits and versioning are `drover_core::shadow`'s; this module loads a
//! document, lets core apply the update, and stores the result only if it changed something. The
//! classic (unnamed) shadow is stored under the name `''`.
//!
//! Operators changing `desired` are audited (`shadow.update`, `shadow.delete`); a device's
//! `reported` updates are telemetry, as frequent as heartbeats, and are not.

use drover_core::shadow::{
    JsonObject, Metadata, ShadowDocument, ShadowLimits, ShadowName, ShadowUpdate, StoredShadow,
    UpdateOutcome,
};
use drover_core::{DeviceId, DeviceStatus, Timestamp};
use drover_proto::shadow::ShadowSummary;
use serde::Serialize;

use crate::db::{Db, Row, Value};
use crate::ops::{audit, auth::Actor, ts};
use crate::StoreError;

/// How often an update re-reads the shadow after losing a race to create it (see [`update`]).
const MAX_ATTEMPTS: usize = 3;

/// A device's shadow named `name` (`None`: the classic shadow), or `None` if it was never written
/// or has been deleted.
pub async fn get<D: Db>(
    db: &mut D,
    id: &DeviceId,
    name: Option<&ShadowName>,
) -> Result<Option<ShadowDocument>, StoreError> {
    let (seq, _) = device_seq(db, id).await?;
    let stored = load(db, seq, name, false).await?;
    Ok(stored.filter(|row| !row.deleted).map(|row| row.document))
}

/// Applies `update` to a device's shadow and stores the result if it changed anything. Returns
/// what the update did and the document after it.
///
/// The row is read with a row lock (PostgreSQL; SQLite has a single writer), so concurrent updates
/// of an existing shadow take turns instead of failing. The write is still conditional on the
/// version read: two transactions creating the same shadow at once cannot lock a row that does not
/// exist yet, and the loser's insert does nothing. It then reads the winner's row and applies its
/// update again, so an update without a `version` still succeeds and one with a `version` gets an
/// honest version conflict naming the current version.
pub async fn update<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &DeviceId,
    name: Option<&ShadowName>,
    update: ShadowUpdate,
    now: Timestamp,
    limits: &ShadowLimits,
) -> Result<(UpdateOutcome, ShadowDocument), StoreError> {
    let (seq, status) = device_seq(db, id).await?;
    if status == DeviceStatus::Decommissioned {
        return Err(StoreError::Invalid(format!(
            "device {id} is decommissioned; its shadows can only be read or deleted"
        )));
    }
    for _ in 0..MAX_ATTEMPTS {
        let stored = load(db, seq, name, true).await?;
        let old_version = stored.as_ref().map(|row| row.document.version());
        let mut document = stored.map_or_else(|| ShadowDocument::new(now), |row| row.document);
        let before = document.clone();
        let outcome = document.apply(update.clone(), now, limits)?;
        if !outcome.changed() {
            return Ok((outcome, document));
        }
        let written = match old_version {
            Some(version) => write(db, seq, name, &document, version).await?,
            None => insert(db, seq, name, &document).await?,
        };
        if written == 0 {
            continue;
        }
        if outcome.accepted.desired.is_some() && !is_device(actor) {
            audit::record(
                db,
                actor,
                "shadow.update",
                "device",
                id.as_str(),
                Some(&DesiredAudit::of(name, &before)),
                Some(&DesiredAudit::of(name, &document)),
                now,
            )
            .await?;
        }
        return Ok((outcome, document));
    }
    Err(StoreError::Conflict(format!(
        "the shadow of device {id} kept changing while it was being updated; retry"
    )))
}

/// Deletes a device's shadow, keeping a tombstone with its version so that a shadow written again
/// continues from there. Returns the version kept, or `None` if there was no shadow to delete.
pub async fn delete<D: Db>(
    db: &mut D,
    actor: &Actor,
    id: &DeviceId,
    name: Option<&ShadowName>,
    now: Timestamp,
) -> Result<Option<u64>, StoreError> {
    let (seq, _) = device_seq(db, id).await?;
    let Some(stored) = load(db, seq, name, true).await?.filter(|row| !row.deleted) else {
        return Ok(None);
    };
    let empty = ShadowDocument::new(now).to_stored();
    db.execute(
        "UPDATE shadows SET desired = $3, reported = $4, metadata = $5, updated_at = $6, deleted = TRUE
         WHERE device_seq = $1 AND name = $2",
        &[
            Value::Int(seq),
            Value::from(stored_name(name)),
            json_text(&empty.desired)?,
            json_text(&empty.reported)?,
            json_text(&empty.metadata)?,
            ts(now),
        ],
    )
    .await?;
    audit::record(
        db,
        actor,
        "shadow.delete",
        "device",
        id.as_str(),
        Some(&DeletedAudit {
            shadow: name.map(ShadowName::as_str),
            version: stored.document.version(),
            desired: stored.document.desired(),
            reported: stored.document.reported(),
        }),
        None::<&()>,
        now,
    )
    .await?;
    Ok(Some(stored.document.version()))
}

/// The shadows of a device (tombstones excluded), the classic one first, then by name.
pub async fn list<D: Db>(db: &mut D, id: &DeviceId) -> Result<Vec<ShadowSummary>, StoreError> {
    let (seq, _) = device_seq(db, id).await?;
    let rows = db
        .query(
            "SELECT name, version, updated_at FROM shadows WHERE device_seq = $1 AND NOT deleted ORDER BY name",
            &[Value::Int(seq)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            let name = row.text(0)?;
            Ok(ShadowSummary {
                name: if name.is_empty() {
                    None
                } else {
                    Some(ShadowName::parse(&name).map_err(corrupt)?)
                },
                version: version_from(row.int(1)?)?,
                timestamp: Timestamp::from_millis(row.int(2)?),
            })
        })
        .collect()
}

/// A stored shadow row.
struct StoredRow {
    document: ShadowDocument,
    /// A tombstone: the shadow was deleted and only its version is kept.
    deleted: bool,
}

/// What the audit log keeps of a desired-state change: the section operators own, and the version.
#[derive(Serialize)]
struct DesiredAudit<'a> {
    /// The shadow's name; absent for the classic shadow.
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<&'a str>,
    version: u64,
    desired: &'a JsonObject,
}

impl<'a> DesiredAudit<'a> {
    fn of(name: Option<&'a ShadowName>, document: &'a ShadowDocument) -> DesiredAudit<'a> {
        DesiredAudit {
            shadow: name.map(ShadowName::as_str),
            version: document.version(),
            desired: document.desired(),
        }
    }
}

/// What the audit log keeps of a deleted shadow: everything that was lost.
#[derive(Serialize)]
struct DeletedAudit<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<&'a str>,
    version: u64,
    desired: &'a JsonObject,
    reported: &'a JsonObject,
}

/// The stored name of a shadow: `''` for the classic shadow, so the key has no NULL in it.
fn stored_name(name: Option<&ShadowName>) -> &str {
    name.map_or("", ShadowName::as_str)
}

/// Whether `actor` is a device (see [`Actor::device`]), whose updates are telemetry.
fn is_device(actor: &Actor) -> bool {
    actor.id.starts_with("device:")
}

/// A device's sequence number and status; `NotFound` for an unknown id.
async fn device_seq<D: Db>(db: &mut D, id: &DeviceId) -> Result<(i64, DeviceStatus), StoreError> {
    let row = db
        .query_opt(
            "SELECT seq, status FROM devices WHERE id = $1",
            &[Value::from(id.as_str())],
        )
        .await?
        .ok_or_else(|| StoreError::not_found("device", id))?;
    let status = DeviceStatus::parse(&row.text(1)?).map_err(StoreError::Corrupt)?;
    Ok((row.int(0)?, status))
}

/// The stored row of a shadow, tombstone or not; `lock` takes a row lock on PostgreSQL.
async fn load<D: Db>(
    db: &mut D,
    seq: i64,
    name: Option<&ShadowName>,
    lock: bool,
) -> Result<Option<StoredRow>, StoreError> {
    let sql = format!(
        "SELECT desired, reported, metadata, version, updated_at, deleted FROM shadows
         WHERE device_seq = $1 AND name = $2{}",
        if lock { db.for_update() } else { "" }
    );
    let row = db
        .query_opt(&sql, &[Value::Int(seq), Value::from(stored_name(name))])
        .await?;
    row.map(|row| row_to_stored(&row)).transpose()
}

fn row_to_stored(row: &Row) -> Result<StoredRow, StoreError> {
    let parse = |idx: usize, what: &str| -> Result<JsonObject, StoreError> {
        serde_json::from_str(&row.text(idx)?)
            .map_err(|e| StoreError::Corrupt(format!("shadow {what}: {e}")))
    };
    let metadata: Metadata = serde_json::from_str(&row.text(2)?)
        .map_err(|e| StoreError::Corrupt(format!("shadow metadata: {e}")))?;
    let stored = StoredShadow {
        desired: parse(0, "desired")?,
        reported: parse(1, "reported")?,
        metadata,
        version: version_from(row.int(3)?)?,
        timestamp: Timestamp::from_millis(row.int(4)?),
    };
    Ok(StoredRow {
        document: ShadowDocument::from_stored(stored),
        deleted: row.int(5)? != 0,
    })
}

/// Overwrites a shadow row if it is still at `old_version`; returns the number of rows written.
async fn write<D: Db>(
    db: &mut D,
    seq: i64,
    name: Option<&ShadowName>,
    document: &ShadowDocument,
    old_version: u64,
) -> Result<u64, StoreError> {
    let stored = document.to_stored();
    db.execute(
        "UPDATE shadows SET desired = $3, reported = $4, metadata = $5, version = $6, updated_at = $7, deleted = FALSE
         WHERE device_seq = $1 AND name = $2 AND version = $8",
        &[
            Value::Int(seq),
            Value::from(stored_name(name)),
            json_text(&stored.desired)?,
            json_text(&stored.reported)?,
            json_text(&stored.metadata)?,
            version_value(stored.version)?,
            ts(stored.timestamp),
            version_value(old_version)?,
        ],
    )
    .await
}

/// Creates a shadow row unless one appeared meanwhile; returns the number of rows written.
async fn insert<D: Db>(
    db: &mut D,
    seq: i64,
    name: Option<&ShadowName>,
    document: &ShadowDocument,
) -> Result<u64, StoreError> {
    let stored = document.to_stored();
    db.execute(
        "INSERT INTO shadows (device_seq, name, desired, reported, metadata, version, updated_at, deleted)
         VALUES ($1, $2, $3, $4, $5, $6, $7, FALSE) ON CONFLICT (device_seq, name) DO NOTHING",
        &[
            Value::Int(seq),
            Value::from(stored_name(name)),
            json_text(&stored.desired)?,
            json_text(&stored.reported)?,
            json_text(&stored.metadata)?,
            version_value(stored.version)?,
            ts(stored.timestamp),
        ],
    )
    .await
}

fn json_text<T: Serialize>(value: &T) -> Result<Value, StoreError> {
    serde_json::to_string(value)
        .map(Value::Text)
        .map_err(|e| StoreError::Backend(format!("cannot serialise a shadow: {e}")))
}

fn version_value(version: u64) -> Result<Value, StoreError> {
    i64::try_from(version)
        .map(Value::Int)
        .map_err(|_| StoreError::Invalid(format!("shadow version {version} is out of range")))
}

fn version_from(stored: i64) -> Result<u64, StoreError> {
    u64::try_from(stored).map_err(|_| StoreError::Corrupt(format!("shadow version {stored}")))
}

fn corrupt<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Corrupt(e.to_string())
}
