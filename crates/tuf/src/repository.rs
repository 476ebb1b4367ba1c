//! The repository side: building and signing root, targets, snapshot and timestamp metadata.
//!
//! Everything here returns values; the caller decides where the bytes go. A typical release:
//!
//! ```
//! # use drover_tuf::*;
//! # use time::macros::datetime;
//! # fn main() -> Result<(), Error> {
//! let key = PrivateKey::generate()?;
//! let expires = datetime!(2030-01-01 0:00 UTC);
//! let root = RootBuilder::new(expires)
//!     .role(Role::Root, &[key.public_key()], 1)
//!     .role(Role::Targets, &[key.public_key()], 1)
//!     .role(Role::Snapshot, &[key.public_key()], 1)
//!     .role(Role::Timestamp, &[key.public_key()], 1)
//!     .build()?;
//! let root = sign(root, &[&key])?;
//!
//! let firmware = b"firmware image";
//! let mut targets = Targets::new(1, expires);
//! targets.targets.insert("fw/app.bin".into(), TargetFile::from_bytes(firmware));
//! let targets = sign(targets, &[&key])?.to_bytes();
//! let snapshot = sign(Snapshot::new(1, expires, MetaFile::new(1)), &[&key])?.to_bytes();
//! let timestamp = Timestamp::new(1, expires, MetaFile::from_bytes(1, &snapshot));
//! let timestamp = sign(timestamp, &[&key])?.to_bytes();
//! // Publish as 1.root.json, 1.targets.json, 1.snapshot.json, timestamp.json and
//! // fw/<sha256>.app.bin (see the `naming` module).
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use time::{OffsetDateTime, UtcOffset};

use crate::keys::{KeyId, PrivateKey, PublicKey};
use crate::metadata::{
    MetaFile, Metadata, Role, RoleKeys, Roles, Root, Signed, Snapshot, Targets, Timestamp,
    SPEC_VERSION,
};
use crate::{verify, Error};

/// Wraps `metadata` in an envelope signed by each of `keys`.
///
/// Does not check that the keys meet a threshold: with offline keys, each holder adds a
/// signature in turn with [`Signed::sign`], and [`Signed::verify`] (or
/// [`verify::check_root_successor`] for a rotated root) says when enough have.
pub fn sign<T: Metadata>(metadata: T, keys: &[&PrivateKey]) -> Result<Signed<T>, Error> {
    let mut signed = Signed::new(metadata)?;
    for key in keys {
        signed.sign(key)?;
    }
    Ok(signed)
}

/// Signs `next`, the successor of `trusted`, with `keys` — which must include a threshold of the
/// trusted root's root keys *and* of `next`'s own — and checks that clients will accept it.
///
/// Fails with [`Error::RootNotCrossSigned`], [`Error::ThresholdNotMet`] or
/// [`Error::RootVersionNotNext`] exactly as a client would, before anything is published.
pub fn rotate_root(
    trusted: &Root,
    next: Root,
    keys: &[&PrivateKey],
) -> Result<Signed<Root>, Error> {
    let signed = sign(next, keys)?;
    verify::check_root_successor(trusted, &signed)?;
    Ok(signed)
}

/// Builds root metadata from the keys and threshold of each role.
///
/// `keys` is derived from the roles, so a key removed from every role leaves the root too.
#[derive(Clone, Debug)]
pub struct RootBuilder {
    version: u64,
    expires: OffsetDateTime,
    consistent_snapshot: bool,
    roles: BTreeMap<Role, (Vec<PublicKey>, u32)>,
}

impl RootBuilder {
    /// A version 1 root with consistent snapshots on and no roles yet.
    pub fn new(expires: OffsetDateTime) -> Self {
        RootBuilder {
            version: 1,
            expires: whole_seconds(expires),
            consistent_snapshot: true,
            roles: BTreeMap::new(),
        }
    }

    /// The next version of `root`, with its roles and settings: change what rotates, then build
    /// and sign with [`rotate_root`].
    pub fn successor_of(root: &Root, expires: OffsetDateTime) -> Self {
        let mut builder = RootBuilder::new(expires)
            .version(root.version + 1)
            .consistent_snapshot(root.consistent_snapshot);
        for role in [Role::Root, Role::Targets, Role::Snapshot, Role::Timestamp] {
            let role_keys = root.roles.get(role);
            // Key ids missing from `keys` cannot sign anyway; dropping them keeps the new root
            // self-consistent.
            let public_keys = role_keys
                .keyids
                .iter()
                .filter_map(|keyid| root.keys.get(keyid).cloned())
                .collect();
            builder
                .roles
                .insert(role, (public_keys, role_keys.threshold));
        }
        builder
    }

    /// Sets the version (1 for a new repository).
    pub fn version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// Sets `consistent_snapshot` (on by default: it lets a repository update without clients
    /// ever seeing a half-published state).
    pub fn consistent_snapshot(mut self, consistent_snapshot: bool) -> Self {
        self.consistent_snapshot = consistent_snapshot;
        self
    }

    /// Sets the keys and threshold of `role`, replacing any earlier setting.
    pub fn role(mut self, role: Role, keys: &[PublicKey], threshold: u32) -> Self {
        self.roles.insert(role, (keys.to_vec(), threshold));
        self
    }

    /// Checks and builds the root: every role set, thresholds between 1 and the role's number of
    /// distinct keys, version at least 1.
    pub fn build(self) -> Result<Root, Error> {
        if self.version == 0 {
            return Err(Error::Invalid("root version must be at least 1".into()));
        }
        let mut keys = BTreeMap::new();
        let mut role_keys_of = |role: Role| -> Result<RoleKeys, Error> {
            let (public_keys, threshold) = self
                .roles
                .get(&role)
                .ok_or_else(|| Error::Invalid(format!("the {role} role has no keys")))?;
            let mut keyids: Vec<KeyId> = Vec::new();
            for public_key in public_keys {
                let keyid = public_key.key_id();
                if !keyids.contains(&keyid) {
                    keyids.push(keyid.clone());
                }
                keys.insert(keyid, public_key.clone());
            }
            if *threshold == 0 || *threshold as usize > keyids.len() {
                return Err(Error::Invalid(format!(
                    "the {role} role's threshold {threshold} is not between 1 and its {} distinct keys",
                    keyids.len()
                )));
            }
            Ok(RoleKeys {
                keyids,
                threshold: *threshold,
            })
        };
        let roles = Roles {
            root: role_keys_of(Role::Root)?,
            targets: role_keys_of(Role::Targets)?,
            snapshot: role_keys_of(Role::Snapshot)?,
            timestamp: role_keys_of(Role::Timestamp)?,
        };
        Ok(Root {
            spec_version: SPEC_VERSION.to_owned(),
            version: self.version,
            expires: self.expires,
            consistent_snapshot: self.consistent_snapshot,
            keys,
            roles,
        })
    }
}

impl Targets {
    /// Empty targets metadata; add files to `targets`.
    pub fn new(version: u64, expires: OffsetDateTime) -> Self {
        Targets {
            spec_version: SPEC_VERSION.to_owned(),
            version,
            expires: whole_seconds(expires),
            targets: BTreeMap::new(),
            delegations: None,
        }
    }
}

impl Snapshot {
    /// Snapshot metadata listing `targets.json` as `targets_meta` (usually [`MetaFile::new`]
    /// with the targets version; [`MetaFile::from_bytes`] also pins its length and hash).
    pub fn new(version: u64, expires: OffsetDateTime, targets_meta: MetaFile) -> Self {
        Snapshot {
            spec_version: SPEC_VERSION.to_owned(),
            version,
            expires: whole_seconds(expires),
            meta: BTreeMap::from([("targets.json".to_owned(), targets_meta)]),
        }
    }
}

impl Timestamp {
    /// Timestamp metadata listing `snapshot.json` as `snapshot_meta` (usually
    /// [`MetaFile::from_bytes`] of the published snapshot, so clients check its exact bytes).
    pub fn new(version: u64, expires: OffsetDateTime, snapshot_meta: MetaFile) -> Self {
        Timestamp {
            spec_version: SPEC_VERSION.to_owned(),
            version,
            expires: whole_seconds(expires),
            meta: BTreeMap::from([("snapshot.json".to_owned(), snapshot_meta)]),
        }
    }
}

/// Metadata carries whole seconds in UTC; dropping the rest here means the value a repository
/// compares with is the value it publishes.
fn whole_seconds(expires: OffsetDateTime) -> OffsetDateTime {
    expires
        .to_offset(UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn key(seed: u8) -> PrivateKey {
        PrivateKey::from_seed([seed; 32])
    }

    fn root_with(root_keys: &[PublicKey], threshold: u32) -> RootBuilder {
        let other = key(100).public_key();
        RootBuilder::new(datetime!(2030-01-01 0:00 UTC))
            .role(Role::Root, root_keys, threshold)
            .role(Role::Targets, std::slice::from_ref(&other), 1)
            .role(Role::Snapshot, std::slice::from_ref(&other), 1)
            .role(Role::Timestamp, std::slice::from_ref(&other), 1)
    }

    #[test]
    fn root_builder_refuses_a_threshold_above_the_number_of_distinct_keys() {
        let public_key = key(1).public_key();
        let error = root_with(&[public_key.clone(), public_key], 2)
            .build()
            .unwrap_err();
        assert!(error
            .to_string()
            .contains("threshold 2 is not between 1 and its 1 distinct keys"));
        assert!(root_with(&[key(1).public_key()], 0).build().is_err());
    }

    #[test]
    fn root_builder_lists_every_key_once_and_truncates_expiry_to_seconds() {
        let root = RootBuilder::new(datetime!(2030-01-01 0:00:00.75 +02:00))
            .role(Role::Root, &[key(1).public_key(), key(2).public_key()], 2)
            .role(Role::Targets, &[key(1).public_key()], 1)
            .role(Role::Snapshot, &[key(3).public_key()], 1)
            .role(Role::Timestamp, &[key(3).public_key()], 1)
            .build()
            .unwrap();
        assert_eq!(root.keys.len(), 3);
        assert_eq!(root.expires, datetime!(2029-12-31 22:00 UTC));
        assert!(root.consistent_snapshot);
    }

    #[test]
    fn root_builder_without_every_role_is_refused() {
        let error = RootBuilder::new(datetime!(2030-01-01 0:00 UTC))
            .role(Role::Root, &[key(1).public_key()], 1)
            .build()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid metadata: the targets role has no keys"
        );
    }

    #[test]
    fn offline_holders_can_each_add_a_signature_until_the_threshold_is_met() {
        let root = root_with(&[key(1).public_key(), key(2).public_key()], 2)
            .build()
            .unwrap();
        let first_holder = sign(root, &[&key(1)]).unwrap().to_bytes();
        let mut signed = Signed::<Root>::from_slice(&first_holder).unwrap();
        let error = signed.verify(signed.signed()).unwrap_err();
        assert_eq!(error.to_string(), "root signed by 1 of 2 required keys");
        signed.sign(&key(2)).unwrap();
        let second_holder = Signed::<Root>::from_slice(&signed.to_bytes()).unwrap();
        second_holder.verify(second_holder.signed()).unwrap();
    }

    #[test]
    fn rotate_root_refuses_a_root_not_signed_by_the_old_root_keys() {
        let old_root = root_with(&[key(1).public_key()], 1).build().unwrap();
        let next = RootBuilder::successor_of(&old_root, datetime!(2031-01-01 0:00 UTC))
            .role(Role::Root, &[key(2).public_key()], 1)
            .build()
            .unwrap();
        assert_eq!(next.version, 2);
        let error = rotate_root(&old_root, next.clone(), &[&key(2)]).unwrap_err();
        assert!(matches!(
            error,
            Error::RootNotCrossSigned {
                n_valid: 0,
                threshold: 1,
                ..
            }
        ));
        let signed = rotate_root(&old_root, next, &[&key(1), &key(2)]).unwrap();
        assert_eq!(signed.signatures().len(), 2);
    }
}
