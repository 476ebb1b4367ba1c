//! The TUF repository's stored state: signed metadata files exactly as served, and the private
//! keys of the roles the server signs online. What goes into the files is `drover-tuf`'s business.

use drover_core::Timestamp;

use crate::db::{Db, Value};
use crate::ops::ts;
use crate::StoreError;

/// A stored metadata file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMetadata {
    pub role: String,
    pub version: i64,
    pub body: Vec<u8>,
    pub expires: Timestamp,
}

/// An online signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub keyid: String,
    pub role: String,
    /// The key file's text (see `drover_tuf`).
    pub private: String,
}

/// Stores a new version of a role's metadata. A version that exists already is a conflict: two
/// replicas publishing at once must not both win.
pub async fn put<D: Db>(
    db: &mut D,
    metadata: &StoredMetadata,
    now: Timestamp,
) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO tuf_metadata (role, version, body, expires, created_at) VALUES ($1, $2, $3, $4, $5)",
        &[
            Value::from(metadata.role.as_str()),
            Value::Int(metadata.version),
            Value::Bytes(metadata.body.clone()),
            ts(metadata.expires),
            ts(now),
        ],
    )
    .await?;
    Ok(())
}

/// The newest version of a role's metadata.
pub async fn latest<D: Db>(db: &mut D, role: &str) -> Result<Option<StoredMetadata>, StoreError> {
    let row = db
        .query_opt(
            "SELECT version, body, expires FROM tuf_metadata WHERE role = $1 ORDER BY version DESC LIMIT 1",
            &[Value::from(role)],
        )
        .await?;
    row.map(|row| {
        Ok(StoredMetadata {
            role: role.to_owned(),
            version: row.int(0)?,
            body: row.bytes(1)?,
            expires: Timestamp::from_millis(row.int(2)?),
        })
    })
    .transpose()
}

/// One version of a role's metadata.
pub async fn get<D: Db>(
    db: &mut D,
    role: &str,
    version: i64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = db
        .query_opt(
            "SELECT body FROM tuf_metadata WHERE role = $1 AND version = $2",
            &[Value::from(role), Value::Int(version)],
        )
        .await?;
    row.map(|row| row.bytes(0)).transpose()
}

/// Drops all but the newest `keep` versions of a role (never used for root: clients walk every
/// root version).
pub async fn prune<D: Db>(db: &mut D, role: &str, keep: i64) -> Result<(), StoreError> {
    db.execute(
        "DELETE FROM tuf_metadata WHERE role = $1 AND version <= (SELECT MAX(version) FROM tuf_metadata WHERE role = $1) - $2",
        &[Value::from(role), Value::Int(keep)],
    )
    .await?;
    Ok(())
}

/// Stores an online key.
pub async fn put_key<D: Db>(db: &mut D, key: &StoredKey, now: Timestamp) -> Result<(), StoreError> {
    db.execute(
        "INSERT INTO tuf_keys (keyid, role, private, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (keyid) DO UPDATE SET role = excluded.role, private = excluded.private",
        &[
            Value::from(key.keyid.as_str()),
            Value::from(key.role.as_str()),
            Value::from(key.private.as_str()),
            ts(now),
        ],
    )
    .await?;
    Ok(())
}

/// The online keys of a role.
pub async fn keys<D: Db>(db: &mut D, role: &str) -> Result<Vec<StoredKey>, StoreError> {
    let rows = db
        .query(
            "SELECT keyid, private FROM tuf_keys WHERE role = $1 ORDER BY created_at, keyid",
            &[Value::from(role)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(StoredKey {
                keyid: row.text(0)?,
                role: role.to_owned(),
                private: row.text(1)?,
            })
        })
        .collect()
}

/// Removes an online key (after a rotation replaced it).
pub async fn delete_key<D: Db>(db: &mut D, keyid: &str) -> Result<(), StoreError> {
    db.execute(
        "DELETE FROM tuf_keys WHERE keyid = $1",
        &[Value::from(keyid)],
    )
    .await?;
    Ok(())
}
