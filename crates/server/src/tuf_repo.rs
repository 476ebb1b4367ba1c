//! Drover's TUF repository: creates it on first start, republishes `targets`, `snapshot` and
//! `timestamp` whenever artifacts change, re-signs them online before they expire, and accepts a
//! new root signed offline (`drover keys`).
//!
//! Metadata lives in the store (`tuf_metadata`) exactly as served, so every replica serves the same
//! bytes; a new version is inserted under its (role, version) key, so two replicas publishing at
//! once cannot both win: the loser rebuilds on top of the winner. Online keys (targets, snapshot,
//! timestamp) are in the store too; the root key is only read from its file when the repository is
//! created, and after that only `drover keys` needs it.

use std::collections::BTreeMap;

use drover_core::Timestamp;
use drover_store::{Store, StoreError, StoredKey, StoredMetadata};
use drover_tuf::{
    MetaFile, PrivateKey, Role, Root, RootBuilder, Signed, Snapshot, TargetFile, Targets,
    Timestamp as TufTimestamp,
};
use time::OffsetDateTime;

use crate::ota::TufConfig;

/// Versions of targets, snapshot and timestamp kept besides the newest (clients may be mid-update).
const KEEP_VERSIONS: i64 = 10;

/// Why the repository could not be published or changed.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("TUF: {0}")]
    Tuf(#[from] drover_tuf::Error),
    /// The repository's own state is unusable (no root, a role without an online key).
    #[error("TUF repository: {0}")]
    State(String),
    /// A root or key an operator sent was refused.
    #[error("{0}")]
    Refused(String),
}

/// Creates the repository when the store has none: the root key from `config.root_key_file`
/// (generated there, `0600`, when the file does not exist), fresh online keys for the other roles,
/// root version 1 and empty targets.
pub async fn init(store: &Store, config: &TufConfig, now: Timestamp) -> Result<(), RepoError> {
    if store.latest_tuf_metadata("root").await?.is_some() {
        return Ok(());
    }
    let root_key = root_key(config)?;
    let mut online = BTreeMap::new();
    for role in [Role::Targets, Role::Snapshot, Role::Timestamp] {
        let key = PrivateKey::generate()?;
        store
            .put_tuf_key(
                StoredKey {
                    keyid: key.key_id().to_string(),
                    role: role.as_str().to_owned(),
                    private: key.to_key_file(),
                },
                now,
            )
            .await?;
        online.insert(role.as_str(), key);
    }
    let root = RootBuilder::new(datetime(now.saturating_add(config.root_expiry)))
        .role(Role::Root, &[root_key.public_key()], 1)
        .role(Role::Targets, &[online["targets"].public_key()], 1)
        .role(Role::Snapshot, &[online["snapshot"].public_key()], 1)
        .role(Role::Timestamp, &[online["timestamp"].public_key()], 1)
        .build()?;
    let signed = drover_tuf::sign(root, &[&root_key])?;
    let stored = StoredMetadata {
        role: "root".into(),
        version: 1,
        body: signed.to_bytes(),
        expires: from_datetime(signed.signed().expires),
    };
    match store
        .publish_tuf_metadata(vec![stored], KEEP_VERSIONS, now)
        .await
    {
        // Another replica created the repository at the same moment: use theirs.
        Ok(()) | Err(StoreError::Conflict(_)) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(
        root_key = %config.root_key_file.display(),
        "created the TUF repository; keep the root key offline (see docs/artifacts.md)"
    );
    publish(store, config, now).await
}

/// Publishes a new targets version listing every artifact and delta, with the snapshot and
/// timestamp that name it, in one transaction.
pub async fn publish(store: &Store, config: &TufConfig, now: Timestamp) -> Result<(), RepoError> {
    for attempt in 0.. {
        match try_publish(store, config, now).await {
            Err(RepoError::Store(StoreError::Conflict(_))) if attempt < 5 => continue,
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

async fn try_publish(store: &Store, config: &TufConfig, now: Timestamp) -> Result<(), RepoError> {
    let root = current_root(store).await?;
    let targets_key = online_keys(store, &root, Role::Targets).await?;
    let version = next_version(store, "targets").await?;
    let mut targets = Targets::new(version, datetime(now.saturating_add(config.targets_expiry)));
    for target in store.published_targets().await? {
        let custom = match serde_json::to_value(&target.custom) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        targets.targets.insert(
            target.path,
            TargetFile {
                length: target.size,
                hashes: BTreeMap::from([("sha256".to_owned(), target.sha256)]),
                custom: Some(custom),
            },
        );
    }
    let keys: Vec<&PrivateKey> = targets_key.iter().collect();
    let targets = drover_tuf::sign(targets, &keys)?.to_bytes();
    let mut files = vec![StoredMetadata {
        role: "targets".into(),
        version: version as i64,
        body: targets.clone(),
        expires: now.saturating_add(config.targets_expiry),
    }];
    files.extend(snapshot_and_timestamp(store, config, &root, version, &targets, now).await?);
    store
        .publish_tuf_metadata(files, KEEP_VERSIONS, now)
        .await?;
    Ok(())
}

/// A new snapshot naming targets `targets_version`, and a new timestamp naming that snapshot.
async fn snapshot_and_timestamp(
    store: &Store,
    config: &TufConfig,
    root: &Root,
    targets_version: u64,
    targets: &[u8],
    now: Timestamp,
) -> Result<Vec<StoredMetadata>, RepoError> {
    let snapshot_keys = online_keys(store, root, Role::Snapshot).await?;
    let version = next_version(store, "snapshot").await?;
    let snapshot = Snapshot::new(
        version,
        datetime(now.saturating_add(config.snapshot_expiry)),
        MetaFile::from_bytes(targets_version, targets),
    );
    let keys: Vec<&PrivateKey> = snapshot_keys.iter().collect();
    let snapshot = drover_tuf::sign(snapshot, &keys)?.to_bytes();
    let mut files = vec![StoredMetadata {
        role: "snapshot".into(),
        version: version as i64,
        body: snapshot.clone(),
        expires: now.saturating_add(config.snapshot_expiry),
    }];
    files.push(timestamp(store, config, root, version, &snapshot, now).await?);
    Ok(files)
}

async fn timestamp(
    store: &Store,
    config: &TufConfig,
    root: &Root,
    snapshot_version: u64,
    snapshot: &[u8],
    now: Timestamp,
) -> Result<StoredMetadata, RepoError> {
    let timestamp_keys = online_keys(store, root, Role::Timestamp).await?;
    let version = next_version(store, "timestamp").await?;
    let timestamp = TufTimestamp::new(
        version,
        datetime(now.saturating_add(config.timestamp_expiry)),
        MetaFile::from_bytes(snapshot_version, snapshot),
    );
    let keys: Vec<&PrivateKey> = timestamp_keys.iter().collect();
    Ok(StoredMetadata {
        role: "timestamp".into(),
        version: version as i64,
        body: drover_tuf::sign(timestamp, &keys)?.to_bytes(),
        expires: now.saturating_add(config.timestamp_expiry),
    })
}

/// Re-signs what expires within half of its lifetime: the timestamp alone, the snapshot with a new
/// timestamp, or everything when targets is due. Returns whether anything was published.
pub async fn refresh(store: &Store, config: &TufConfig, now: Timestamp) -> Result<bool, RepoError> {
    let due = |expires: Timestamp, lifetime: drover_core::Duration| {
        expires.as_millis() - now.as_millis() < lifetime.as_millis() / 2
    };
    let latest = |role: &'static str| async move {
        store
            .latest_tuf_metadata(role)
            .await?
            .ok_or_else(|| RepoError::State(format!("no {role} metadata")))
    };
    let root_meta = latest("root").await?;
    if due(root_meta.expires, config.root_expiry) {
        tracing::warn!(
            expires = %root_meta.expires,
            "the TUF root expires soon: sign a new root offline with `drover keys rotate-root`"
        );
    }
    let targets = latest("targets").await?;
    if due(targets.expires, config.targets_expiry) {
        publish(store, config, now).await?;
        return Ok(true);
    }
    let root = current_root(store).await?;
    let snapshot = latest("snapshot").await?;
    let files = if due(snapshot.expires, config.snapshot_expiry) {
        snapshot_and_timestamp(
            store,
            config,
            &root,
            targets.version as u64,
            &targets.body,
            now,
        )
        .await?
    } else if due(latest("timestamp").await?.expires, config.timestamp_expiry) {
        vec![
            timestamp(
                store,
                config,
                &root,
                snapshot.version as u64,
                &snapshot.body,
                now,
            )
            .await?,
        ]
    } else {
        return Ok(false);
    };
    match store.publish_tuf_metadata(files, KEEP_VERSIONS, now).await {
        Ok(()) => Ok(true),
        // Another replica refreshed first.
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Accepts a new root version signed offline: it must be the next version, signed by a threshold
/// of the current root's keys and of its own, and not expired. Online keys for roles whose keys
/// changed must have been added first ([`add_online_key`]); the repository is then re-signed with
/// them.
pub async fn publish_root(
    store: &Store,
    config: &TufConfig,
    body: &[u8],
    now: Timestamp,
) -> Result<u64, RepoError> {
    let current = current_root(store).await?;
    let next = Signed::<Root>::from_slice(body)
        .map_err(|e| RepoError::Refused(format!("not a valid root metadata file: {e}")))?;
    drover_tuf::check_root_successor(&current, &next)
        .map_err(|e| RepoError::Refused(format!("refused new root: {e}")))?;
    if next.signed().expires <= datetime(now) {
        return Err(RepoError::Refused(format!(
            "refused new root: it expired at {}",
            drover_tuf::metadata::format_expires(next.signed().expires)
        )));
    }
    for role in [Role::Targets, Role::Snapshot, Role::Timestamp] {
        online_keys(store, next.signed(), role).await.map_err(|_| {
            RepoError::Refused(format!(
                "refused new root: the server has no private key for its {} role; add one first with `drover keys add-online`",
                role.as_str()
            ))
        })?;
    }
    let version = next.signed().version;
    store
        .publish_tuf_metadata(
            vec![StoredMetadata {
                role: "root".into(),
                version: version as i64,
                body: body.to_vec(),
                expires: from_datetime(next.signed().expires),
            }],
            KEEP_VERSIONS,
            now,
        )
        .await?;
    // Everything below root is re-signed with the keys the new root names.
    publish(store, config, now).await?;
    Ok(version)
}

/// Stores the private key of an online role (targets, snapshot or timestamp) ahead of a root
/// that names it.
pub async fn add_online_key(
    store: &Store,
    role: &str,
    key_file: &str,
    now: Timestamp,
) -> Result<String, RepoError> {
    if !matches!(role, "targets" | "snapshot" | "timestamp") {
        return Err(RepoError::Refused(format!(
            "online keys are for the targets, snapshot and timestamp roles, not {role:?}; the root key stays offline"
        )));
    }
    let key = PrivateKey::from_key_file(key_file)
        .map_err(|e| RepoError::Refused(format!("not a valid key file: {e}")))?;
    let keyid = key.key_id().to_string();
    store
        .put_tuf_key(
            StoredKey {
                keyid: keyid.clone(),
                role: role.to_owned(),
                private: key.to_key_file(),
            },
            now,
        )
        .await?;
    Ok(keyid)
}

/// The newest root.
pub async fn current_root(store: &Store) -> Result<Root, RepoError> {
    let stored = store
        .latest_tuf_metadata("root")
        .await?
        .ok_or_else(|| RepoError::State("the repository has no root".into()))?;
    Ok(Signed::<Root>::from_slice(&stored.body)?.into_signed())
}

/// The online keys the root authorises for `role`, up to its threshold.
async fn online_keys(store: &Store, root: &Root, role: Role) -> Result<Vec<PrivateKey>, RepoError> {
    let role_keys = match role {
        Role::Root => &root.roles.root,
        Role::Targets => &root.roles.targets,
        Role::Snapshot => &root.roles.snapshot,
        Role::Timestamp => &root.roles.timestamp,
    };
    let mut keys = Vec::new();
    for stored in store.tuf_keys(role.as_str()).await? {
        if role_keys
            .keyids
            .iter()
            .any(|id| id.as_str() == stored.keyid)
        {
            keys.push(PrivateKey::from_key_file(&stored.private)?);
        }
    }
    if keys.len() < role_keys.threshold as usize {
        return Err(RepoError::State(format!(
            "the {} role needs {} signature(s) but the server holds {} of its keys",
            role.as_str(),
            role_keys.threshold,
            keys.len()
        )));
    }
    Ok(keys)
}

async fn next_version(store: &Store, role: &str) -> Result<u64, RepoError> {
    Ok(store
        .latest_tuf_metadata(role)
        .await?
        .map_or(1, |m| m.version as u64 + 1))
}

/// Loads the root key, or generates it (owner-only permissions) when its file does not exist.
fn root_key(config: &TufConfig) -> Result<PrivateKey, RepoError> {
    let path = &config.root_key_file;
    match std::fs::read_to_string(path) {
        Ok(text) => PrivateKey::from_key_file(&text).map_err(|e| {
            RepoError::State(format!(
                "the root key file {} is not valid: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = PrivateKey::generate()?;
            write_private(path, &key.to_key_file()).map_err(|e| {
                RepoError::State(format!(
                    "cannot write the root key file {}: {e}",
                    path.display()
                ))
            })?;
            tracing::warn!(
                path = %path.display(),
                "generated the TUF root key; move it offline (e.g. to a hardware-backed store) and keep a backup"
            );
            Ok(key)
        }
        Err(e) => Err(RepoError::State(format!(
            "cannot read the root key file {}: {e}",
            path.display()
        ))),
    }
}

/// Writes a secret file readable only by its owner, atomically.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn datetime(at: Timestamp) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(at.as_millis().div_euclid(1000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn from_datetime(at: OffsetDateTime) -> Timestamp {
    Timestamp::from_millis(at.unix_timestamp() * 1000)
}
