//! The client side: [`TrustedSet`], the state machine of the spec's detailed client workflow (§5).
//!
//! The caller fetches; the set decides. Each `update_*` step takes the bytes of one file and the
//! current time, checks them against what is already trusted and either adds them or refuses
//! them with an [`Error`] naming the problem. One update cycle:
//!
//! 1. [`TrustedSet::new`] with the device's trusted root (its own signatures must verify);
//! 2. [`TrustedSet::update_root`] with `N+1.root.json`, `N+2.root.json`, … until the repository
//!    has no next version (HTTP 404);
//! 3. optionally [`TrustedSet::load_cached_timestamp`] with the timestamp trusted last time, then
//!    [`TrustedSet::update_timestamp`] with the fresh `timestamp.json`;
//! 4. optionally [`TrustedSet::load_cached_snapshot`], then [`TrustedSet::update_snapshot`] with
//!    the file named by [`TrustedSet::snapshot_file_name`];
//! 5. [`TrustedSet::update_targets`] with the file named by [`TrustedSet::targets_file_name`];
//! 6. [`TrustedSet::verify_target`] on each downloaded target file, fetched from
//!    [`TrustedSet::target_download_path`].
//!
//! The cached files are what stops rollback across cycles: a device that persists the bytes of
//! every accepted file and loads them next time refuses a repository that goes backwards.
//! Delegated targets roles are not followed.

use time::OffsetDateTime;

use crate::metadata::{
    format_expires, MetaFile, Metadata, Role, Root, Signed, Snapshot, TargetFile, Targets,
    Timestamp,
};
use crate::{naming, verify, Error};

/// How many root versions one [`TrustedSet`] walks by default: python-tuf's `ngclient` default,
/// so a device never stops short of a chain the reference client follows.
pub const DEFAULT_MAX_ROOT_ROTATIONS: u32 = 256;

/// Download caps in bytes for metadata whose length no trusted file lists, as `(role, bytes)`:
/// python-tuf's `UpdaterConfig` defaults. Without a cap, a malicious mirror could stream an
/// endless file at a device (endless-data attack).
pub const DEFAULT_MAX_LENGTHS: [(Role, u64); 4] = [
    (Role::Root, 512_000),
    (Role::Timestamp, 16_384),
    (Role::Snapshot, 2_000_000),
    (Role::Targets, 5_000_000),
];

/// The metadata trusted so far in one update cycle.
#[derive(Clone, Debug)]
pub struct TrustedSet {
    root: Signed<Root>,
    timestamp: Option<Signed<Timestamp>>,
    snapshot: Option<Signed<Snapshot>>,
    targets: Option<Signed<Targets>>,
    /// Root versions accepted by this set, against `max_root_rotations`.
    n_root_rotations: u32,
    /// Bounds the root walk, so a repository serving endless roots cannot keep a device busy.
    max_root_rotations: u32,
}

impl TrustedSet {
    /// Starts from the device's trusted root (shipped with the firmware or persisted from the
    /// last cycle). It must be signed by a threshold of its own root keys; it may have expired,
    /// since newer roots can still be fetched — expiry is checked once the root walk is over.
    pub fn new(trusted_root: &[u8]) -> Result<Self, Error> {
        let root = Signed::<Root>::from_slice(trusted_root)?;
        root.verify(root.signed())?;
        Ok(TrustedSet {
            root,
            timestamp: None,
            snapshot: None,
            targets: None,
            n_root_rotations: 0,
            max_root_rotations: DEFAULT_MAX_ROOT_ROTATIONS,
        })
    }

    /// Sets how many root rotations [`TrustedSet::update_root`] accepts in this cycle.
    pub fn with_max_root_rotations(mut self, max_root_rotations: u32) -> Self {
        self.max_root_rotations = max_root_rotations;
        self
    }

    /// Accepts the next root version (§5.3): signed by a threshold of the trusted root's root
    /// keys and of its own, with version exactly one more. Call with `N+1.root.json` while the
    /// repository has one ([`TrustedSet::next_root_file_name`]).
    pub fn update_root(&mut self, bytes: &[u8]) -> Result<&Root, Error> {
        if self.timestamp.is_some() {
            return Err(Error::OutOfOrder("cannot update root after timestamp"));
        }
        if self.n_root_rotations >= self.max_root_rotations {
            return Err(Error::TooManyRootRotations {
                max: self.max_root_rotations,
            });
        }
        let new_root = Signed::<Root>::from_slice(bytes)?;
        verify::check_root_successor(self.root.signed(), &new_root)?;
        self.root = new_root;
        self.n_root_rotations += 1;
        Ok(self.root.signed())
    }

    /// Loads the timestamp trusted in the previous cycle, as the floor for rollback checks.
    ///
    /// Its signatures must verify with the current root (if the timestamp keys were rotated they
    /// will not, and the caller should simply carry on without it); its expiry does not matter.
    pub fn load_cached_timestamp(&mut self, bytes: &[u8]) -> Result<&Timestamp, Error> {
        if self.timestamp.is_some() {
            return Err(Error::OutOfOrder(
                "the cached timestamp must be loaded before any other",
            ));
        }
        let timestamp = Signed::<Timestamp>::from_slice(bytes)?;
        timestamp.verify(self.root.signed())?;
        timestamp.signed().snapshot_meta()?;
        Ok(self.timestamp.insert(timestamp).signed())
    }

    /// Accepts a new `timestamp.json` (§5.4): the final root must be current, the timestamp
    /// signed by the timestamp role, not older than the trusted one, not pointing to an older
    /// snapshot, and not expired.
    ///
    /// An equal version is accepted (the spec allows it; it is what a repository serves between
    /// releases).
    pub fn update_timestamp(
        &mut self,
        bytes: &[u8],
        now: OffsetDateTime,
    ) -> Result<&Timestamp, Error> {
        if self.snapshot.is_some() {
            return Err(Error::OutOfOrder("cannot update timestamp after snapshot"));
        }
        check_not_expired(self.root.signed(), now)?;
        let new_timestamp = Signed::<Timestamp>::from_slice(bytes)?;
        new_timestamp.verify(self.root.signed())?;
        let new_snapshot_meta = new_timestamp.signed().snapshot_meta()?;
        if let Some(trusted) = &self.timestamp {
            let trusted = trusted.signed();
            if new_timestamp.signed().version < trusted.version {
                return Err(Error::Rollback {
                    role: Role::Timestamp,
                    found: new_timestamp.signed().version,
                    trusted: trusted.version,
                });
            }
            let trusted_snapshot_version = trusted.snapshot_meta()?.version;
            if new_snapshot_meta.version < trusted_snapshot_version {
                return Err(Error::MetaRollback {
                    listed_in: "timestamp.json".into(),
                    file: "snapshot.json".into(),
                    found: new_snapshot_meta.version,
                    trusted: trusted_snapshot_version,
                });
            }
        }
        check_not_expired(new_timestamp.signed(), now)?;
        Ok(self.timestamp.insert(new_timestamp).signed())
    }

    /// Loads the snapshot trusted in the previous cycle, as the floor for the targets rollback
    /// check. Only its signatures are checked; it may be older than the new timestamp says.
    pub fn load_cached_snapshot(&mut self, bytes: &[u8]) -> Result<&Snapshot, Error> {
        if self.timestamp.is_none() {
            return Err(Error::OutOfOrder("cannot load snapshot before timestamp"));
        }
        if self.snapshot.is_some() {
            return Err(Error::OutOfOrder(
                "the cached snapshot must be loaded before any other",
            ));
        }
        let snapshot = Signed::<Snapshot>::from_slice(bytes)?;
        snapshot.verify(self.root.signed())?;
        Ok(self.snapshot.insert(snapshot).signed())
    }

    /// Accepts a new snapshot (§5.5): length and hash as the timestamp lists them (when it
    /// does), signed by the snapshot role, version as the timestamp lists it, no targets
    /// metadata older than in the trusted snapshot, and not expired.
    pub fn update_snapshot(
        &mut self,
        bytes: &[u8],
        now: OffsetDateTime,
    ) -> Result<&Snapshot, Error> {
        if self.targets.is_some() {
            return Err(Error::OutOfOrder("cannot update snapshot after targets"));
        }
        let timestamp = self
            .timestamp
            .as_ref()
            .ok_or(Error::OutOfOrder("cannot update snapshot before timestamp"))?
            .signed();
        // Again here: a cached timestamp alone (the fresh one having failed) must not be used.
        check_not_expired(timestamp, now)?;
        let snapshot_meta = timestamp.snapshot_meta()?;
        snapshot_meta.verify_bytes("snapshot.json", "timestamp.json", bytes)?;
        let new_snapshot = Signed::<Snapshot>::from_slice(bytes)?;
        new_snapshot.verify(self.root.signed())?;
        if let Some(trusted) = &self.snapshot {
            for (file, trusted_meta) in &trusted.signed().meta {
                let new_meta =
                    new_snapshot
                        .signed()
                        .meta
                        .get(file)
                        .ok_or_else(|| Error::MissingMeta {
                            file: file.clone(),
                            listed_in: "snapshot.json".into(),
                        })?;
                if new_meta.version < trusted_meta.version {
                    return Err(Error::MetaRollback {
                        listed_in: "snapshot.json".into(),
                        file: file.clone(),
                        found: new_meta.version,
                        trusted: trusted_meta.version,
                    });
                }
            }
        }
        check_version_listed(new_snapshot.signed(), snapshot_meta, "timestamp.json")?;
        new_snapshot.signed().targets_meta()?;
        check_not_expired(new_snapshot.signed(), now)?;
        Ok(self.snapshot.insert(new_snapshot).signed())
    }

    /// Accepts new targets metadata (§5.6): the snapshot must be the current one (version as the
    /// timestamp lists it, not expired); the targets' length and hash as the snapshot lists them
    /// (when it does), signed by the targets role, version as the snapshot lists it, not expired.
    pub fn update_targets(&mut self, bytes: &[u8], now: OffsetDateTime) -> Result<&Targets, Error> {
        if self.targets.is_some() {
            return Err(Error::OutOfOrder(
                "targets are already loaded in this update cycle",
            ));
        }
        let snapshot = self.current_snapshot(now)?;
        let targets_meta = snapshot.targets_meta()?;
        targets_meta.verify_bytes("targets.json", "snapshot.json", bytes)?;
        let new_targets = Signed::<Targets>::from_slice(bytes)?;
        new_targets.verify(self.root.signed())?;
        check_version_listed(new_targets.signed(), targets_meta, "snapshot.json")?;
        check_not_expired(new_targets.signed(), now)?;
        Ok(self.targets.insert(new_targets).signed())
    }

    /// The trusted entry for target `path`.
    pub fn target(&self, path: &str) -> Result<&TargetFile, Error> {
        let targets = self.targets.as_ref().ok_or(Error::OutOfOrder(
            "no trusted targets metadata: call update_targets first",
        ))?;
        targets
            .signed()
            .targets
            .get(path)
            .ok_or_else(|| Error::UnknownTarget(path.to_owned()))
    }

    /// Checks downloaded target `bytes` against the trusted entry for `path` (length, then sha256).
    pub fn verify_target(&self, path: &str, bytes: &[u8]) -> Result<&TargetFile, Error> {
        let target_file = self.target(path)?;
        target_file.verify(path, bytes)?;
        Ok(target_file)
    }

    /// How many bytes the caller should accept at most when downloading `role`'s metadata: the
    /// length the trusted timestamp (for snapshot) or snapshot (for targets) lists, when it
    /// does, else the [`DEFAULT_MAX_LENGTHS`] cap.
    pub fn max_download_length(&self, role: Role) -> u64 {
        let listed = match role {
            Role::Snapshot => self
                .timestamp
                .as_ref()
                .and_then(|t| t.signed().snapshot_meta().ok()?.length),
            Role::Targets => self
                .snapshot
                .as_ref()
                .and_then(|s| s.signed().targets_meta().ok()?.length),
            Role::Root | Role::Timestamp => None,
        };
        listed.unwrap_or_else(|| {
            DEFAULT_MAX_LENGTHS
                .iter()
                .find(|(r, _)| *r == role)
                .map_or(0, |(_, length)| *length)
        })
    }

    /// The name to fetch the next root version under: `N+1.root.json`.
    pub fn next_root_file_name(&self) -> String {
        naming::root_file_name(self.root.signed().version + 1)
    }

    /// The name to fetch the snapshot under, as the trusted timestamp and root say.
    pub fn snapshot_file_name(&self) -> Result<String, Error> {
        let timestamp = self.timestamp.as_ref().ok_or(Error::OutOfOrder(
            "no trusted timestamp: call update_timestamp first",
        ))?;
        let version = timestamp.signed().snapshot_meta()?.version;
        Ok(naming::metadata_file_name(
            Role::Snapshot,
            version,
            self.root.signed().consistent_snapshot,
        ))
    }

    /// The name to fetch targets metadata under, as the trusted snapshot and root say.
    pub fn targets_file_name(&self) -> Result<String, Error> {
        let snapshot = self.snapshot.as_ref().ok_or(Error::OutOfOrder(
            "no trusted snapshot: call update_snapshot first",
        ))?;
        let version = snapshot.signed().targets_meta()?.version;
        Ok(naming::metadata_file_name(
            Role::Targets,
            version,
            self.root.signed().consistent_snapshot,
        ))
    }

    /// The path to fetch target `path` from, relative to the targets base URL.
    pub fn target_download_path(&self, path: &str) -> Result<String, Error> {
        naming::target_file_path(
            path,
            self.target(path)?,
            self.root.signed().consistent_snapshot,
        )
    }

    /// The trusted root (the latest after the root walk).
    pub fn root(&self) -> &Signed<Root> {
        &self.root
    }

    /// The trusted timestamp, once loaded.
    pub fn timestamp(&self) -> Option<&Signed<Timestamp>> {
        self.timestamp.as_ref()
    }

    /// The trusted snapshot, once loaded.
    pub fn snapshot(&self) -> Option<&Signed<Snapshot>> {
        self.snapshot.as_ref()
    }

    /// The trusted targets, once loaded.
    pub fn targets(&self) -> Option<&Signed<Targets>> {
        self.targets.as_ref()
    }

    /// The snapshot, if it is the one the timestamp lists and still current: a cached snapshot
    /// whose fresh successor failed to load must not be used for targets.
    fn current_snapshot(&self, now: OffsetDateTime) -> Result<&Snapshot, Error> {
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or(Error::OutOfOrder("cannot update targets before snapshot"))?
            .signed();
        let timestamp = self
            .timestamp
            .as_ref()
            .expect("a snapshot implies a timestamp")
            .signed();
        check_version_listed(snapshot, timestamp.snapshot_meta()?, "timestamp.json")?;
        check_not_expired(snapshot, now)?;
        Ok(snapshot)
    }
}

/// Refuses metadata whose expiry is at or before `now` (python-tuf uses the same `>=`).
fn check_not_expired<T: Metadata>(metadata: &T, now: OffsetDateTime) -> Result<(), Error> {
    if now >= metadata.expires() {
        return Err(Error::Expired {
            file: T::ROLE.file_name(),
            expires: format_expires(metadata.expires()),
        });
    }
    Ok(())
}

/// Refuses metadata whose version is not the one its parent lists.
fn check_version_listed<T: Metadata>(
    metadata: &T,
    meta: &MetaFile,
    listed_in: &str,
) -> Result<(), Error> {
    if metadata.version() != meta.version {
        return Err(Error::VersionMismatch {
            file: T::ROLE.file_name(),
            found: metadata.version(),
            expected: meta.version,
            listed_in: listed_in.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
