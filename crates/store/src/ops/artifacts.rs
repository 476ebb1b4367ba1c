//! Firmware artifacts and their deltas: the rows that describe images kept in the object store.
//!
//! Image bytes are content-addressed in the object store (`images/<sha256>`), so two artifacts with
//! the same bytes share one object; deleting an artifact reports which objects no row references any
//! more, and the caller removes them after the transaction commits.

use drover_core::{ArtifactName, DeviceType, Label, Timestamp, Version};
use drover_proto::artifacts::{ArtifactMetadata, ArtifactView, DeltaView, FileInfo, Provenance};
use drover_proto::Page;

use crate::db::{Db, Row, Value};
use crate::ops::{audit, auth::Actor, ts};
use crate::StoreError;

/// A stored file: where it is in the object store and what it contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    pub info: FileInfo,
}

/// Everything known about an uploaded artifact once its bytes are in the object store.
#[derive(Debug, Clone)]
pub struct NewArtifact {
    pub metadata: ArtifactMetadata,
    pub image: StoredObject,
    /// TUF target path of the image.
    pub target_path: String,
    pub symbols: Option<StoredObject>,
}

/// A file devices may download: an image or a delta, by TUF target path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetFile {
    pub object: StoredObject,
    /// The artifact the file installs (for a delta, the artifact it produces).
    pub artifact_seq: i64,
}

/// A delta the server built.
#[derive(Debug, Clone)]
pub struct NewDelta {
    pub from_seq: i64,
    pub to_seq: i64,
    pub object: StoredObject,
    pub target_path: String,
}

/// An artifact's row id, name and version, and its image.
#[derive(Debug, Clone)]
pub struct ArtifactRef {
    pub seq: i64,
    pub name: ArtifactName,
    pub version: Version,
    pub image: StoredObject,
    pub target_path: String,
    pub device_types: Vec<DeviceType>,
    pub hw_revs: Vec<Label>,
    pub security_floor: Option<Version>,
}

const COLUMNS: &str = "a.seq, a.name, a.version, a.device_types, a.hw_revs, a.size, a.sha256, a.target_path,
     a.provenance, a.release_notes, a.security_floor, a.symbols_size, a.symbols_sha256, a.created_at,
     a.created_by, a.object_key";

/// Refuses a name and version that already exist, before any bytes are uploaded.
pub async fn check_new<D: Db>(
    db: &mut D,
    name: &ArtifactName,
    version: &Version,
) -> Result<(), StoreError> {
    let rows = db
        .query(
            "SELECT 1 FROM artifacts WHERE name = $1 AND version = $2",
            &[Value::from(name.as_str()), Value::from(version.to_string())],
        )
        .await?;
    if rows.is_empty() {
        Ok(())
    } else {
        Err(already_exists(name, version))
    }
}

fn already_exists(name: &ArtifactName, version: &Version) -> StoreError {
    StoreError::Conflict(format!(
        "artifact {name} version {version} already exists; versions are immutable, upload a new version"
    ))
}

/// Records an uploaded artifact.
pub async fn insert<D: Db>(
    db: &mut D,
    actor: &Actor,
    new: NewArtifact,
    now: Timestamp,
) -> Result<ArtifactView, StoreError> {
    let meta = &new.metadata;
    check_new(db, &meta.name, &meta.version).await?;
    db.execute(
        "INSERT INTO artifacts (name, version, version_key, device_types, hw_revs, size, sha256, object_key,
             target_path, provenance, release_notes, security_floor, symbols_key, symbols_size, symbols_sha256,
             created_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        &[
            Value::from(meta.name.as_str()),
            Value::from(meta.version.to_string()),
            Value::Bytes(meta.version.sort_key()),
            Value::from(to_json(&meta.device_types)),
            Value::from(to_json(&meta.hw_revs)),
            Value::Int(new.image.info.size as i64),
            Value::from(new.image.info.sha256.as_str()),
            Value::from(new.image.key.as_str()),
            Value::from(new.target_path.as_str()),
            Value::from(to_json(&meta.provenance)),
            Value::from(meta.release_notes.as_str()),
            meta.security_floor
                .as_ref()
                .map_or(Value::Null, |v| Value::from(v.to_string())),
            new.symbols
                .as_ref()
                .map_or(Value::Null, |s| Value::from(s.key.as_str())),
            new.symbols
                .as_ref()
                .map_or(Value::Null, |s| Value::Int(s.info.size as i64)),
            new.symbols
                .as_ref()
                .map_or(Value::Null, |s| Value::from(s.info.sha256.as_str())),
            ts(now),
            Value::from(actor.name.as_str()),
        ],
    )
    .await?;
    let view = get(db, &meta.name, &meta.version).await?;
    audit::record(
        db,
        actor,
        "artifact.upload",
        "artifact",
        &format!("{}@{}", meta.name, meta.version),
        None::<&()>,
        Some(&view),
        now,
    )
    .await?;
    Ok(view)
}

/// One artifact, with its deltas and the number of unfinished deployments using it.
pub async fn get<D: Db>(
    db: &mut D,
    name: &ArtifactName,
    version: &Version,
) -> Result<ArtifactView, StoreError> {
    let row = row_by_name(db, name, version).await?;
    full_view(db, &row).await
}

/// The artifact row named `name` and `version`.
async fn row_by_name<D: Db>(
    db: &mut D,
    name: &ArtifactName,
    version: &Version,
) -> Result<Row, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM artifacts a WHERE a.name = $1 AND a.version = $2");
    db.query_opt(
        &sql,
        &[Value::from(name.as_str()), Value::from(version.to_string())],
    )
    .await?
    .ok_or_else(|| not_found(name, version))
}

/// The view of an artifact row, with its deltas and unfinished deployments.
async fn full_view<D: Db>(db: &mut D, row: &Row) -> Result<ArtifactView, StoreError> {
    let seq = row.int(0)?;
    let mut view = view(row)?;
    view.deltas = deltas(db, seq).await?;
    view.active_deployments = active_deployments(db, seq).await?;
    Ok(view)
}

fn not_found(name: &ArtifactName, version: &Version) -> StoreError {
    StoreError::NotFound {
        kind: "artifact",
        id: format!("{name} {version}"),
    }
}

/// Artifacts, newest upload first, optionally only those named `name`. `before_seq` is the
/// previous page's cursor.
pub async fn list<D: Db>(
    db: &mut D,
    name: Option<&ArtifactName>,
    before_seq: Option<i64>,
    limit: usize,
) -> Result<Page<ArtifactView>, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM artifacts a WHERE 1 = 1");
    let mut params = Vec::new();
    if let Some(name) = name {
        params.push(Value::from(name.as_str()));
        sql.push_str(&format!(" AND a.name = ${}", params.len()));
    }
    if let Some(seq) = before_seq {
        params.push(Value::Int(seq));
        sql.push_str(&format!(" AND a.seq < ${}", params.len()));
    }
    params.push(Value::Int(limit as i64 + 1));
    sql.push_str(&format!(" ORDER BY a.seq DESC LIMIT ${}", params.len()));
    let rows = db.query(&sql, &params).await?;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut last_seq = None;
    for row in rows.iter().take(limit) {
        items.push(full_view(db, row).await?);
        last_seq = Some(row.int(0)?);
    }
    let next_cursor = (rows.len() > limit)
        .then_some(last_seq)
        .flatten()
        .map(|s| s.to_string());
    Ok(Page { items, next_cursor })
}

/// Looks an artifact up for deploying or building deltas.
pub async fn find<D: Db>(
    db: &mut D,
    name: &ArtifactName,
    version: &Version,
) -> Result<ArtifactRef, StoreError> {
    artifact_ref(&row_by_name(db, name, version).await?)
}

/// Looks an artifact up by row id.
pub async fn find_by_seq<D: Db>(db: &mut D, seq: i64) -> Result<Option<ArtifactRef>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM artifacts a WHERE a.seq = $1");
    match db.query(&sql, &[Value::Int(seq)]).await?.first() {
        Some(row) => Ok(Some(artifact_ref(row)?)),
        None => Ok(None),
    }
}

/// Every version of the artifact named `name`, newest version first.
pub async fn versions<D: Db>(
    db: &mut D,
    name: &ArtifactName,
) -> Result<Vec<ArtifactRef>, StoreError> {
    let sql =
        format!("SELECT {COLUMNS} FROM artifacts a WHERE a.name = $1 ORDER BY a.version_key DESC");
    db.query(&sql, &[Value::from(name.as_str())])
        .await?
        .iter()
        .map(artifact_ref)
        .collect()
}

/// The image or delta published under TUF target path `path`.
pub async fn target_file<D: Db>(db: &mut D, path: &str) -> Result<Option<TargetFile>, StoreError> {
    let rows = db
        .query(
            "SELECT object_key, size, sha256, seq FROM artifacts WHERE target_path = $1
             UNION ALL
             SELECT object_key, size, sha256, to_seq FROM artifact_deltas WHERE target_path = $1",
            &[Value::from(path)],
        )
        .await?;
    rows.first()
        .map(|row| {
            Ok(TargetFile {
                object: StoredObject {
                    key: row.text(0)?,
                    info: FileInfo {
                        size: row.int(1)? as u64,
                        sha256: row.text(2)?,
                    },
                },
                artifact_seq: row.int(3)?,
            })
        })
        .transpose()
}

/// The debug-symbols file of an artifact, if it has one.
pub async fn symbols<D: Db>(
    db: &mut D,
    name: &ArtifactName,
    version: &Version,
) -> Result<Option<StoredObject>, StoreError> {
    let rows = db
        .query(
            "SELECT symbols_key, symbols_size, symbols_sha256 FROM artifacts WHERE name = $1 AND version = $2",
            &[Value::from(name.as_str()), Value::from(version.to_string())],
        )
        .await?;
    let row = rows.first().ok_or_else(|| not_found(name, version))?;
    Ok(match row.opt_text(0)? {
        Some(key) => Some(StoredObject {
            key,
            info: FileInfo {
                size: row.int(1)? as u64,
                sha256: row.text(2)?,
            },
        }),
        None => None,
    })
}

/// Records a delta between two artifacts.
pub async fn insert_delta<D: Db>(
    db: &mut D,
    delta: NewDelta,
    now: Timestamp,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO artifact_deltas (from_seq, to_seq, size, sha256, object_key, target_path, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (from_seq, to_seq) DO NOTHING",
        &[
            Value::Int(delta.from_seq),
            Value::Int(delta.to_seq),
            Value::Int(delta.object.info.size as i64),
            Value::from(delta.object.info.sha256.as_str()),
            Value::from(delta.object.key.as_str()),
            Value::from(delta.target_path.as_str()),
            ts(now),
        ],
    )
    .await?;
    Ok(())
}

/// The delta from artifact `from_seq` to `to_seq`, if one was built.
pub async fn delta_between<D: Db>(
    db: &mut D,
    from_seq: i64,
    to_seq: i64,
) -> Result<Option<(StoredObject, String)>, StoreError> {
    let rows = db
        .query(
            "SELECT object_key, size, sha256, target_path FROM artifact_deltas WHERE from_seq = $1 AND to_seq = $2",
            &[Value::Int(from_seq), Value::Int(to_seq)],
        )
        .await?;
    rows.first()
        .map(|row| {
            Ok((
                StoredObject {
                    key: row.text(0)?,
                    info: FileInfo {
                        size: row.int(1)? as u64,
                        sha256: row.text(2)?,
                    },
                },
                row.text(3)?,
            ))
        })
        .transpose()
}

/// Deletes an artifact and its deltas unless an unfinished deployment uses it. Returns the object
/// keys no remaining row references, for the caller to remove from the object store after commit.
pub async fn delete<D: Db>(
    db: &mut D,
    actor: &Actor,
    name: &ArtifactName,
    version: &Version,
    now: Timestamp,
) -> Result<Vec<String>, StoreError> {
    let row = row_by_name(db, name, version).await?;
    let seq = row.int(0)?;
    let view = full_view(db, &row).await?;
    if view.active_deployments > 0 {
        return Err(StoreError::Conflict(format!(
            "artifact {name} {version} is being deployed to {} device(s); wait for those deployments to finish or cancel them first",
            view.active_deployments
        )));
    }
    let mut keys: Vec<String> = Vec::new();
    let rows = db
        .query(
            "SELECT object_key, symbols_key FROM artifacts WHERE seq = $1
             UNION ALL SELECT object_key, NULL FROM artifact_deltas WHERE from_seq = $1 OR to_seq = $1",
            &[Value::Int(seq)],
        )
        .await?;
    for row in &rows {
        keys.push(row.text(0)?);
        if let Some(symbols) = row.opt_text(1)? {
            keys.push(symbols);
        }
    }
    db.execute("DELETE FROM artifacts WHERE seq = $1", &[Value::Int(seq)])
        .await?;
    // Content-addressed objects may still be used by another artifact or delta.
    let mut unused = Vec::new();
    for key in keys {
        if !unused.contains(&key) && !object_in_use(db, &key).await? {
            unused.push(key);
        }
    }
    audit::record(
        db,
        actor,
        "artifact.delete",
        "artifact",
        &format!("{name}@{version}"),
        Some(&view),
        None::<&()>,
        now,
    )
    .await?;
    Ok(unused)
}

/// Whether any row references object `key` (an upload that failed half-way must not delete an
/// object another artifact uses).
pub async fn object_in_use<D: Db>(db: &mut D, key: &str) -> Result<bool, StoreError> {
    let rows = db
        .query(
            "SELECT 1 FROM artifacts WHERE object_key = $1 OR symbols_key = $1
             UNION ALL SELECT 1 FROM artifact_deltas WHERE object_key = $1",
            &[Value::from(key)],
        )
        .await?;
    Ok(!rows.is_empty())
}

async fn deltas<D: Db>(db: &mut D, seq: i64) -> Result<Vec<DeltaView>, StoreError> {
    let rows = db
        .query(
            "SELECT f.version, d.size, d.sha256, d.target_path FROM artifact_deltas d
             JOIN artifacts f ON f.seq = d.from_seq WHERE d.to_seq = $1 ORDER BY f.version_key DESC",
            &[Value::Int(seq)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(DeltaView {
                from_version: parse_version(&row.text(0)?)?,
                size: row.int(1)? as u64,
                sha256: row.text(2)?,
                target: row.text(3)?,
            })
        })
        .collect()
}

async fn active_deployments<D: Db>(db: &mut D, seq: i64) -> Result<u64, StoreError> {
    let rows = db
        .query(
            "SELECT COUNT(*) FROM deployments WHERE artifact_seq = $1 AND finished_at IS NULL",
            &[Value::Int(seq)],
        )
        .await?;
    Ok(rows.first().map_or(Ok(0), |r| r.int(0))? as u64)
}

fn view(row: &Row) -> Result<ArtifactView, StoreError> {
    let symbols = match row.opt_int(11)? {
        Some(size) => Some(FileInfo {
            size: size as u64,
            sha256: row.text(12)?,
        }),
        None => None,
    };
    Ok(ArtifactView {
        name: parse_name(&row.text(1)?)?,
        version: parse_version(&row.text(2)?)?,
        device_types: from_json(&row.text(3)?)?,
        hw_revs: from_json(&row.text(4)?)?,
        size: row.int(5)? as u64,
        sha256: row.text(6)?,
        target: row.text(7)?,
        provenance: from_json::<Provenance>(&row.text(8)?)?,
        release_notes: row.text(9)?,
        security_floor: row.opt_text(10)?.map(|v| parse_version(&v)).transpose()?,
        symbols,
        deltas: Vec::new(),
        created_at: Timestamp::from_millis(row.int(13)?),
        created_by: row.text(14)?,
        active_deployments: 0,
    })
}

fn artifact_ref(row: &Row) -> Result<ArtifactRef, StoreError> {
    Ok(ArtifactRef {
        seq: row.int(0)?,
        name: parse_name(&row.text(1)?)?,
        version: parse_version(&row.text(2)?)?,
        image: StoredObject {
            key: row.text(15)?,
            info: FileInfo {
                size: row.int(5)? as u64,
                sha256: row.text(6)?,
            },
        },
        target_path: row.text(7)?,
        device_types: from_json(&row.text(3)?)?,
        hw_revs: from_json(&row.text(4)?)?,
        security_floor: row.opt_text(10)?.map(|v| parse_version(&v)).transpose()?,
    })
}

fn parse_name(text: &str) -> Result<ArtifactName, StoreError> {
    ArtifactName::parse(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn parse_version(text: &str) -> Result<Version, StoreError> {
    Version::parse(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("artifact column: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

/// A file the TUF repository lists: path, length, sha256 and the signed facts devices check.
#[derive(Debug, Clone)]
pub struct PublishedTarget {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub custom: drover_proto::update::TargetCustom,
}

/// Every image and delta, as the TUF targets metadata lists them. Cost grows with the number of
/// artifacts, never with the fleet.
pub async fn published<D: Db>(db: &mut D) -> Result<Vec<PublishedTarget>, StoreError> {
    use drover_proto::update::{TargetCustom, TargetKind};
    let sql = format!("SELECT {COLUMNS} FROM artifacts a ORDER BY a.seq");
    let rows = db.query(&sql, &[]).await?;
    let mut targets = Vec::with_capacity(rows.len());
    let mut by_seq = std::collections::HashMap::new();
    for row in &rows {
        let artifact = artifact_ref(row)?;
        let custom = TargetCustom {
            name: artifact.name.to_string(),
            version: artifact.version.clone(),
            device_types: artifact
                .device_types
                .iter()
                .map(ToString::to_string)
                .collect(),
            hw_revs: artifact.hw_revs.iter().map(ToString::to_string).collect(),
            kind: TargetKind::Full,
            base_sha256: None,
            image_target: None,
            security_floor: artifact.security_floor.clone(),
        };
        targets.push(PublishedTarget {
            path: artifact.target_path.clone(),
            size: artifact.image.info.size,
            sha256: artifact.image.info.sha256.clone(),
            custom: custom.clone(),
        });
        by_seq.insert(
            artifact.seq,
            (
                custom,
                artifact.image.info.sha256.clone(),
                artifact.target_path,
            ),
        );
    }
    let rows = db
        .query(
            "SELECT from_seq, to_seq, size, sha256, target_path FROM artifact_deltas ORDER BY seq",
            &[],
        )
        .await?;
    for row in &rows {
        let (Some((_, base_sha256, _)), Some((custom, _, image_target))) =
            (by_seq.get(&row.int(0)?), by_seq.get(&row.int(1)?))
        else {
            continue;
        };
        let mut custom = custom.clone();
        custom.kind = TargetKind::Delta;
        custom.base_sha256 = Some(base_sha256.clone());
        custom.image_target = Some(image_target.clone());
        targets.push(PublishedTarget {
            path: row.text(4)?,
            size: row.int(2)? as u64,
            sha256: row.text(3)?,
            custom,
        });
    }
    Ok(targets)
}
