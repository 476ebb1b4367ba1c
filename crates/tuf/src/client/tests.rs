//! Client workflow tests: every attack the spec's checks exist for, and the happy paths.

use serde_json::{json, Value};
use time::macros::datetime;
use time::OffsetDateTime;

use super::*;
use crate::keys::PrivateKey;
use crate::metadata::RoleKeys;
use crate::repository::{rotate_root, sign, RootBuilder};

const NOW: OffsetDateTime = datetime!(2025-06-01 12:00 UTC);
const FUTURE: OffsetDateTime = datetime!(2030-01-01 0:00 UTC);
const PAST: OffsetDateTime = datetime!(2025-06-01 11:59:59 UTC);

const FIRMWARE: &[u8] = b"firmware 2.0 image bytes";

fn key(seed: u8) -> PrivateKey {
    PrivateKey::from_seed([seed; 32])
}

/// A repository with one key per role (two for targets), signing whatever a test asks for.
struct Repo {
    root_key: PrivateKey,
    targets_keys: Vec<PrivateKey>,
    snapshot_key: PrivateKey,
    timestamp_key: PrivateKey,
    root: Signed<Root>,
}

impl Repo {
    fn new() -> Self {
        Repo::with_targets_threshold(1)
    }

    fn with_targets_threshold(threshold: u32) -> Self {
        let (root_key, snapshot_key, timestamp_key) = (key(1), key(2), key(3));
        let targets_keys = vec![key(4), key(5)];
        let targets_public: Vec<_> = targets_keys.iter().map(PrivateKey::public_key).collect();
        let root = RootBuilder::new(FUTURE)
            .role(Role::Root, &[root_key.public_key()], 1)
            .role(Role::Targets, &targets_public, threshold)
            .role(Role::Snapshot, &[snapshot_key.public_key()], 1)
            .role(Role::Timestamp, &[timestamp_key.public_key()], 1)
            .build()
            .unwrap();
        let root = sign(root, &[&root_key]).unwrap();
        Repo {
            root_key,
            targets_keys,
            snapshot_key,
            timestamp_key,
            root,
        }
    }

    fn trusted_set(&self) -> TrustedSet {
        TrustedSet::new(&self.root.to_bytes()).unwrap()
    }

    fn targets_with(&self, version: u64, expires: OffsetDateTime, keys: &[&PrivateKey]) -> Vec<u8> {
        let mut targets = Targets::new(version, expires);
        let custom = json!({"firmware_version": "2.0.0"})
            .as_object()
            .unwrap()
            .clone();
        targets.targets.insert(
            "fw/app.bin".into(),
            TargetFile::from_bytes(FIRMWARE).with_custom(custom),
        );
        sign(targets, keys).unwrap().to_bytes()
    }

    fn targets(&self, version: u64, expires: OffsetDateTime) -> Vec<u8> {
        self.targets_with(version, expires, &[&self.targets_keys[0]])
    }

    fn snapshot(&self, version: u64, expires: OffsetDateTime, targets_version: u64) -> Vec<u8> {
        sign(
            Snapshot::new(version, expires, MetaFile::new(targets_version)),
            &[&self.snapshot_key],
        )
        .unwrap()
        .to_bytes()
    }

    fn timestamp(&self, version: u64, expires: OffsetDateTime, snapshot: &[u8]) -> Vec<u8> {
        let snapshot_version = Signed::<Snapshot>::from_slice(snapshot)
            .unwrap()
            .signed()
            .version;
        let meta = MetaFile::from_bytes(snapshot_version, snapshot);
        sign(
            Timestamp::new(version, expires, meta),
            &[&self.timestamp_key],
        )
        .unwrap()
        .to_bytes()
    }

    /// Timestamp, snapshot and targets of release `version` (all three at that version).
    fn release(&self, version: u64) -> Release {
        let targets = self.targets(version, FUTURE);
        let snapshot = self.snapshot(version, FUTURE, version);
        let timestamp = self.timestamp(version, FUTURE, &snapshot);
        Release {
            timestamp,
            snapshot,
            targets,
        }
    }
}

struct Release {
    timestamp: Vec<u8>,
    snapshot: Vec<u8>,
    targets: Vec<u8>,
}

/// Runs timestamp → snapshot → targets for `release`, stopping at the first error.
fn refresh(trusted_set: &mut TrustedSet, release: &Release) -> Result<(), Error> {
    trusted_set.update_timestamp(&release.timestamp, NOW)?;
    trusted_set.update_snapshot(&release.snapshot, NOW)?;
    trusted_set.update_targets(&release.targets, NOW)?;
    Ok(())
}

/// Re-serialises envelope `bytes` after `edit` changes its JSON, without re-signing.
fn tamper(bytes: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(bytes).unwrap();
    edit(&mut value);
    serde_json::to_vec(&value).unwrap()
}

fn message(result: Result<impl std::fmt::Debug, Error>) -> String {
    result.unwrap_err().to_string()
}

// Happy paths.

#[test]
fn fresh_repository_is_accepted_and_its_target_verifies() {
    let repo = Repo::new();
    let mut trusted_set = repo.trusted_set();
    refresh(&mut trusted_set, &repo.release(1)).unwrap();
    let target_file = trusted_set.verify_target("fw/app.bin", FIRMWARE).unwrap();
    assert_eq!(
        target_file.custom.as_ref().unwrap()["firmware_version"],
        "2.0.0"
    );
    let sha256 = target_file.sha256().unwrap().to_owned();
    assert_eq!(
        trusted_set.target_download_path("fw/app.bin").unwrap(),
        format!("fw/{sha256}.app.bin")
    );
    assert_eq!(trusted_set.snapshot_file_name().unwrap(), "1.snapshot.json");
    assert_eq!(trusted_set.targets_file_name().unwrap(), "1.targets.json");
}

#[test]
fn download_caps_use_listed_lengths_and_fall_back_to_defaults() {
    let repo = Repo::new();
    let release = repo.release(1);
    let mut trusted_set = repo.trusted_set();
    assert_eq!(trusted_set.max_download_length(Role::Snapshot), 2_000_000);
    trusted_set
        .update_timestamp(&release.timestamp, NOW)
        .unwrap();
    assert_eq!(
        trusted_set.max_download_length(Role::Snapshot),
        release.snapshot.len() as u64
    );
    assert_eq!(trusted_set.max_download_length(Role::Timestamp), 16_384);
}

#[test]
fn two_step_root_rotation_is_walked_to_the_newest_root_and_its_keys_are_used() {
    let repo = Repo::new();
    // v2 replaces the root key and the timestamp key; v3 replaces the root key again with a
    // 2-of-2 root role.
    let (root_key_2, timestamp_key_2) = (key(20), key(21));
    let (root_key_3a, root_key_3b) = (key(30), key(31));
    let root_2 = RootBuilder::successor_of(repo.root.signed(), FUTURE)
        .role(Role::Root, &[root_key_2.public_key()], 1)
        .role(Role::Timestamp, &[timestamp_key_2.public_key()], 1)
        .build()
        .unwrap();
    let root_2 = rotate_root(repo.root.signed(), root_2, &[&repo.root_key, &root_key_2]).unwrap();
    let root_3 = RootBuilder::successor_of(root_2.signed(), FUTURE)
        .role(
            Role::Root,
            &[root_key_3a.public_key(), root_key_3b.public_key()],
            2,
        )
        .build()
        .unwrap();
    let root_3 = rotate_root(
        root_2.signed(),
        root_3,
        &[&root_key_2, &root_key_3a, &root_key_3b],
    )
    .unwrap();

    let mut trusted_set = repo.trusted_set();
    assert_eq!(trusted_set.next_root_file_name(), "2.root.json");
    trusted_set.update_root(&root_2.to_bytes()).unwrap();
    assert_eq!(trusted_set.next_root_file_name(), "3.root.json");
    trusted_set.update_root(&root_3.to_bytes()).unwrap();
    assert_eq!(trusted_set.root().signed().version, 3);

    // The old timestamp key no longer counts; the new one does.
    let release = repo.release(1);
    let error = message(trusted_set.update_timestamp(&release.timestamp, NOW));
    assert_eq!(
        error,
        "timestamp signed by 0 of 1 required keys (1 signature from a key the root does not list)"
    );
    let snapshot_meta = MetaFile::from_bytes(1, &release.snapshot);
    let timestamp = sign(
        Timestamp::new(1, FUTURE, snapshot_meta),
        &[&timestamp_key_2],
    )
    .unwrap();
    trusted_set
        .update_timestamp(&timestamp.to_bytes(), NOW)
        .unwrap();
    trusted_set.update_snapshot(&release.snapshot, NOW).unwrap();
    trusted_set.update_targets(&release.targets, NOW).unwrap();
    trusted_set.verify_target("fw/app.bin", FIRMWARE).unwrap();
}

#[test]
fn next_cycle_with_cached_metadata_accepts_a_newer_release() {
    let repo = Repo::new();
    let old = repo.release(1);
    let mut trusted_set = repo.trusted_set();
    trusted_set.load_cached_timestamp(&old.timestamp).unwrap();
    trusted_set
        .update_timestamp(&repo.release(2).timestamp, NOW)
        .unwrap();
    trusted_set.load_cached_snapshot(&old.snapshot).unwrap();
    trusted_set
        .update_snapshot(&repo.release(2).snapshot, NOW)
        .unwrap();
    trusted_set
        .update_targets(&repo.release(2).targets, NOW)
        .unwrap();
    assert_eq!(trusted_set.targets().unwrap().signed().version, 2);
}

#[test]
fn timestamp_of_the_same_version_as_the_cached_one_is_accepted() {
    let repo = Repo::new();
    let release = repo.release(1);
    let mut trusted_set = repo.trusted_set();
    trusted_set
        .load_cached_timestamp(&release.timestamp)
        .unwrap();
    refresh(&mut trusted_set, &release).unwrap();
}

#[test]
fn one_bad_signature_does_not_veto_a_met_threshold() {
    let repo = Repo::new();
    let mut release = repo.release(1);
    release.timestamp = tamper(&release.timestamp, |value| {
        let extra = json!({"keyid": repo.timestamp_key.key_id(), "sig": "00".repeat(64)});
        value["signatures"].as_array_mut().unwrap().insert(0, extra);
    });
    refresh(&mut repo.trusted_set(), &release).unwrap();
}

#[test]
fn unknown_fields_in_received_metadata_verify() {
    let repo = Repo::new();
    let mut snapshot: Signed<Snapshot> =
        Signed::from_slice(&tamper(&repo.snapshot(1, FUTURE, 1), |value| {
            value["signed"]["x-drover-note"] = json!({"nested": ["a", true, null, -1]});
            value["signatures"] = json!([]);
        }))
        .unwrap();
    snapshot.sign(&repo.snapshot_key).unwrap();
    let snapshot = snapshot.to_bytes();
    let release = Release {
        timestamp: repo.timestamp(1, FUTURE, &snapshot),
        snapshot,
        targets: repo.targets(1, FUTURE),
    };
    refresh(&mut repo.trusted_set(), &release).unwrap();
}

// Tampering.

#[test]
fn tampered_timestamp_is_refused() {
    let repo = Repo::new();
    let release = repo.release(1);
    let timestamp = tamper(&release.timestamp, |value| {
        value["signed"]["version"] = 7.into()
    });
    let error = message(repo.trusted_set().update_timestamp(&timestamp, NOW));
    assert_eq!(
        error,
        "timestamp signed by 0 of 1 required keys (1 signature did not verify)"
    );
}

#[test]
fn tampered_snapshot_is_refused_by_the_hash_in_timestamp() {
    let repo = Repo::new();
    let mut release = repo.release(1);
    release.snapshot = tamper(&release.snapshot, |value| {
        value["signed"]["meta"]["targets.json"]["version"] = 9.into()
    });
    // Same length, different bytes: the hash check must be what catches it.
    let snapshot_meta = MetaFile {
        length: None,
        ..MetaFile::from_bytes(1, &repo.snapshot(1, FUTURE, 1))
    };
    release.timestamp = sign(
        Timestamp::new(1, FUTURE, snapshot_meta),
        &[&repo.timestamp_key],
    )
    .unwrap()
    .to_bytes();
    let error = message(refresh(&mut repo.trusted_set(), &release));
    assert_eq!(
        error,
        "snapshot.json sha256 does not match the hash listed in timestamp.json"
    );
}

#[test]
fn tampered_snapshot_is_refused_by_its_signature_when_timestamp_lists_no_hash() {
    let repo = Repo::new();
    let mut release = repo.release(1);
    release.snapshot = tamper(&release.snapshot, |value| {
        value["signed"]["meta"]["targets.json"]["version"] = 9.into()
    });
    release.timestamp = sign(
        Timestamp::new(1, FUTURE, MetaFile::new(1)),
        &[&repo.timestamp_key],
    )
    .unwrap()
    .to_bytes();
    let error = message(refresh(&mut repo.trusted_set(), &release));
    assert_eq!(
        error,
        "snapshot signed by 0 of 1 required keys (1 signature did not verify)"
    );
}

#[test]
fn snapshot_of_the_wrong_length_is_refused() {
    let repo = Repo::new();
    let mut release = repo.release(1);
    release.snapshot.push(b' ');
    let error = message(refresh(&mut repo.trusted_set(), &release));
    let expected_length = release.snapshot.len() - 1;
    assert_eq!(
        error,
        format!(
            "snapshot.json is {} bytes but timestamp.json says {expected_length}",
            expected_length + 1
        )
    );
}

#[test]
fn tampered_targets_metadata_is_refused() {
    let repo = Repo::new();
    let mut release = repo.release(1);
    release.targets = tamper(&release.targets, |value| {
        value["signed"]["targets"]["fw/app.bin"]["hashes"]["sha256"] = "00".repeat(32).into()
    });
    let error = message(refresh(&mut repo.trusted_set(), &release));
    assert_eq!(
        error,
        "targets signed by 0 of 1 required keys (1 signature did not verify)"
    );
}

#[test]
fn tampered_target_bytes_are_refused() {
    let repo = Repo::new();
    let mut trusted_set = repo.trusted_set();
    refresh(&mut trusted_set, &repo.release(1)).unwrap();
    let mut tampered = FIRMWARE.to_vec();
    tampered[0] ^= 1;
    let error = message(trusted_set.verify_target("fw/app.bin", &tampered));
    assert!(
        error.starts_with("target hash mismatch for \"fw/app.bin\""),
        "{error}"
    );
    let error = message(trusted_set.verify_target("fw/app.bin", &FIRMWARE[1..]));
    assert_eq!(
        error,
        format!(
            "target length mismatch for \"fw/app.bin\": expected {} bytes, got {}",
            FIRMWARE.len(),
            FIRMWARE.len() - 1
        )
    );
    assert_eq!(
        message(trusted_set.verify_target("other.bin", FIRMWARE)),
        "unknown target \"other.bin\""
    );
}

#[test]
fn metadata_of_another_role_under_a_role_s_name_is_refused() {
    let repo = Repo::new();
    let release = repo.release(1);
    let error = message(repo.trusted_set().update_timestamp(&release.snapshot, NOW));
    assert_eq!(
        error,
        "expected timestamp metadata but _type is \"snapshot\""
    );
}

// Expiry (freeze attacks).

#[test]
fn expired_timestamp_is_refused_as_a_freeze_attack() {
    let repo = Repo::new();
    let release = repo.release(1);
    let timestamp = repo.timestamp(1, PAST, &release.snapshot);
    let error = message(repo.trusted_set().update_timestamp(&timestamp, NOW));
    assert_eq!(error, "timestamp.json expired at 2025-06-01T11:59:59Z");
}

#[test]
fn metadata_expiring_exactly_now_is_expired() {
    let repo = Repo::new();
    let release = repo.release(1);
    let timestamp = repo.timestamp(1, NOW, &release.snapshot);
    let error = message(repo.trusted_set().update_timestamp(&timestamp, NOW));
    assert_eq!(error, "timestamp.json expired at 2025-06-01T12:00:00Z");
}

#[test]
fn expired_snapshot_is_refused() {
    let repo = Repo::new();
    let snapshot = repo.snapshot(1, PAST, 1);
    let release = Release {
        timestamp: repo.timestamp(1, FUTURE, &snapshot),
        snapshot,
        targets: repo.targets(1, FUTURE),
    };
    let error = message(refresh(&mut repo.trusted_set(), &release));
    assert_eq!(error, "snapshot.json expired at 2025-06-01T11:59:59Z");
}

#[test]
fn expired_targets_are_refused() {
    let repo = Repo::new();
    let mut release = repo.release(1);
    release.targets = repo.targets(1, PAST);
    let error = message(refresh(&mut repo.trusted_set(), &release));
    assert_eq!(error, "targets.json expired at 2025-06-01T11:59:59Z");
}

#[test]
fn expired_final_root_is_refused_before_timestamp() {
    let repo = Repo::new();
    let root = RootBuilder::successor_of(repo.root.signed(), PAST)
        .build()
        .unwrap();
    let root = rotate_root(repo.root.signed(), root, &[&repo.root_key]).unwrap();
    let mut trusted_set = repo.trusted_set();
    trusted_set.update_root(&root.to_bytes()).unwrap();
    let error = message(trusted_set.update_timestamp(&repo.release(1).timestamp, NOW));
    assert_eq!(error, "root.json expired at 2025-06-01T11:59:59Z");
}

#[test]
fn expired_intermediate_root_does_not_stop_the_walk() {
    let repo = Repo::new();
    let root_2 = RootBuilder::successor_of(repo.root.signed(), PAST)
        .build()
        .unwrap();
    let root_2 = rotate_root(repo.root.signed(), root_2, &[&repo.root_key]).unwrap();
    let root_3 = RootBuilder::successor_of(root_2.signed(), FUTURE)
        .build()
        .unwrap();
    let root_3 = rotate_root(root_2.signed(), root_3, &[&repo.root_key]).unwrap();
    let mut trusted_set = repo.trusted_set();
    trusted_set.update_root(&root_2.to_bytes()).unwrap();
    trusted_set.update_root(&root_3.to_bytes()).unwrap();
    refresh(&mut trusted_set, &repo.release(1)).unwrap();
}

#[test]
fn cached_snapshot_is_not_used_for_targets_when_the_fresh_one_fails() {
    let repo = Repo::new();
    let mut trusted_set = repo.trusted_set();
    trusted_set
        .update_timestamp(&repo.release(2).timestamp, NOW)
        .unwrap();
    trusted_set
        .load_cached_snapshot(&repo.release(1).snapshot)
        .unwrap();
    let error = message(trusted_set.update_targets(&repo.release(1).targets, NOW));
    assert_eq!(
        error,
        "snapshot.json version 1 does not match version 2 listed in timestamp.json"
    );
}

// Rollback.

#[test]
fn replayed_older_timestamp_is_refused_as_a_rollback() {
    let repo = Repo::new();
    let mut trusted_set = repo.trusted_set();
    trusted_set
        .load_cached_timestamp(&repo.release(5).timestamp)
        .unwrap();
    let error = message(trusted_set.update_timestamp(&repo.release(3).timestamp, NOW));
    assert_eq!(
        error,
        "timestamp version 3 is older than trusted version 5 (rollback attack)"
    );
}

#[test]
fn timestamp_pointing_to_an_older_snapshot_is_refused() {
    let repo = Repo::new();
    let mut trusted_set = repo.trusted_set();
    trusted_set
        .load_cached_timestamp(&repo.release(5).timestamp)
        .unwrap();
    let timestamp = repo.timestamp(6, FUTURE, &repo.snapshot(4, FUTURE, 4));
    let error = message(trusted_set.update_timestamp(&timestamp, NOW));
    assert_eq!(
        error,
        "timestamp.json lists snapshot.json version 4, older than trusted version 5 (rollback attack)"
    );
}

#[test]
fn replayed_older_snapshot_is_refused() {
    let repo = Repo::new();
    let mut trusted_set = repo.trusted_set();
    // The timestamp lists snapshot v2 without pinning its bytes; an attacker serves v1.
    let timestamp = sign(
        Timestamp::new(2, FUTURE, MetaFile::new(2)),
        &[&repo.timestamp_key],
    )
    .unwrap();
    trusted_set
        .update_timestamp(&timestamp.to_bytes(), NOW)
        .unwrap();
    let error = message(trusted_set.update_snapshot(&repo.release(1).snapshot, NOW));
    assert_eq!(
        error,
        "snapshot.json version 1 does not match version 2 listed in timestamp.json"
    );
}

#[test]
fn snapshot_pointing_to_older_targets_than_the_trusted_snapshot_is_refused() {
    let repo = Repo::new();
    let mut trusted_set = repo.trusted_set();
    let snapshot = repo.snapshot(3, FUTURE, 1);
    trusted_set
        .update_timestamp(&repo.timestamp(3, FUTURE, &snapshot), NOW)
        .unwrap();
    trusted_set
        .load_cached_snapshot(&repo.release(2).snapshot)
        .unwrap();
    let error = message(trusted_set.update_snapshot(&snapshot, NOW));
    assert_eq!(
        error,
        "snapshot.json lists targets.json version 1, older than trusted version 2 (rollback attack)"
    );
}

#[test]
fn snapshot_dropping_targets_is_refused() {
    let repo = Repo::new();
    let mut snapshot = Snapshot::new(2, FUTURE, MetaFile::new(2));
    snapshot.meta.clear();
    let snapshot = sign(snapshot, &[&repo.snapshot_key]).unwrap().to_bytes();
    let mut trusted_set = repo.trusted_set();
    trusted_set
        .update_timestamp(&repo.timestamp(2, FUTURE, &snapshot), NOW)
        .unwrap();
    trusted_set
        .load_cached_snapshot(&repo.release(1).snapshot)
        .unwrap();
    let error = message(trusted_set.update_snapshot(&snapshot, NOW));
    assert_eq!(error, "targets.json is missing from snapshot.json");
}

#[test]
fn replayed_older_targets_are_refused() {
    let repo = Repo::new();
    let mut release = repo.release(2);
    release.targets = repo.targets(1, FUTURE);
    let error = message(refresh(&mut repo.trusted_set(), &release));
    assert_eq!(
        error,
        "targets.json version 1 does not match version 2 listed in snapshot.json"
    );
}

// Signatures and thresholds.

#[test]
fn valid_signature_from_the_wrong_role_is_refused() {
    let repo = Repo::new();
    let release = repo.release(1);
    let snapshot_meta = MetaFile::from_bytes(1, &release.snapshot);
    let timestamp = sign(
        Timestamp::new(1, FUTURE, snapshot_meta),
        &[&repo.snapshot_key],
    )
    .unwrap();
    let error = message(
        repo.trusted_set()
            .update_timestamp(&timestamp.to_bytes(), NOW),
    );
    assert_eq!(
        error,
        "signature from a key not authorised for the timestamp role"
    );
}

#[test]
fn signatures_below_threshold_are_refused() {
    let repo = Repo::with_targets_threshold(2);
    let mut release = repo.release(1);
    let error = message(refresh(&mut repo.trusted_set(), &release));
    assert_eq!(error, "targets signed by 1 of 2 required keys");
    release.targets = repo.targets_with(1, FUTURE, &[&repo.targets_keys[0], &repo.targets_keys[1]]);
    refresh(&mut repo.trusted_set(), &release).unwrap();
}

#[test]
fn duplicate_signatures_from_one_key_count_once() {
    let repo = Repo::with_targets_threshold(2);
    let mut release = repo.release(1);
    release.targets = tamper(&release.targets, |value| {
        let signature = value["signatures"][0].clone();
        value["signatures"].as_array_mut().unwrap().push(signature);
    });
    let error = message(refresh(&mut repo.trusted_set(), &release));
    assert_eq!(error, "targets signed by 1 of 2 required keys");
}

#[test]
fn one_key_listed_under_two_key_ids_counts_once() {
    let repo = Repo::new();
    let root_key = &repo.root_key;
    // A root whose targets role lists the same key under its real id and an alias, threshold 2.
    let mut root = repo.root.signed().clone();
    let targets_key = &repo.targets_keys[0];
    let alias = crate::KeyId::from("alias-of-the-targets-key");
    root.keys.insert(alias.clone(), targets_key.public_key());
    root.roles.targets = RoleKeys {
        keyids: vec![targets_key.key_id(), alias.clone()],
        threshold: 2,
    };
    let trusted_set = TrustedSet::new(&sign(root, &[root_key]).unwrap().to_bytes()).unwrap();
    let mut release = repo.release(1);
    release.targets = tamper(&release.targets, |value| {
        let sig = value["signatures"][0]["sig"].clone();
        value["signatures"]
            .as_array_mut()
            .unwrap()
            .push(json!({"keyid": alias, "sig": sig}));
    });
    let error = message(refresh(&mut trusted_set.clone(), &release));
    assert_eq!(error, "targets signed by 1 of 2 required keys");
}

// Root rotation.

#[test]
fn root_rotation_not_cross_signed_by_the_old_root_is_refused() {
    let repo = Repo::new();
    let new_root_key = key(40);
    let root_2 = RootBuilder::successor_of(repo.root.signed(), FUTURE)
        .role(Role::Root, &[new_root_key.public_key()], 1)
        .build()
        .unwrap();
    let root_2 = sign(root_2, &[&new_root_key]).unwrap();
    let error = message(repo.trusted_set().update_root(&root_2.to_bytes()));
    assert_eq!(
        error,
        "root version 2 is signed by 0 of 1 required keys of trusted root version 1 \
         (1 signature from a key the root does not list); \
         a root rotation must be cross-signed by the previous root's keys"
    );
}

#[test]
fn root_rotation_not_signed_by_the_new_root_keys_is_refused() {
    let repo = Repo::new();
    let new_root_key = key(40);
    let root_2 = RootBuilder::successor_of(repo.root.signed(), FUTURE)
        .role(Role::Root, &[new_root_key.public_key()], 1)
        .build()
        .unwrap();
    let root_2 = sign(root_2, &[&repo.root_key]).unwrap();
    let error = message(repo.trusted_set().update_root(&root_2.to_bytes()));
    assert_eq!(
        error,
        "root signed by 0 of 1 required keys (1 signature from a key the root does not list)"
    );
}

#[test]
fn root_that_skips_a_version_is_refused() {
    let repo = Repo::new();
    let root_3 = RootBuilder::successor_of(repo.root.signed(), FUTURE)
        .version(3)
        .build()
        .unwrap();
    let root_3 = sign(root_3, &[&repo.root_key]).unwrap();
    let error = message(repo.trusted_set().update_root(&root_3.to_bytes()));
    assert_eq!(
        error,
        "root version 3 is not the next version after trusted root version 1 (expected 2)"
    );
    let error = message(repo.trusted_set().update_root(&repo.root.to_bytes()));
    assert_eq!(
        error,
        "root version 1 is not the next version after trusted root version 1 (expected 2)"
    );
}

#[test]
fn root_walk_stops_at_the_rotation_cap() {
    let repo = Repo::new();
    let mut trusted_set = repo.trusted_set().with_max_root_rotations(1);
    let mut previous = repo.root.clone();
    let mut roots = Vec::new();
    for _ in 0..2 {
        let next = RootBuilder::successor_of(previous.signed(), FUTURE)
            .build()
            .unwrap();
        previous = rotate_root(previous.signed(), next, &[&repo.root_key]).unwrap();
        roots.push(previous.to_bytes());
    }
    trusted_set.update_root(&roots[0]).unwrap();
    assert_eq!(
        message(trusted_set.update_root(&roots[1])),
        "more than 1 root rotations in one update"
    );
}

#[test]
fn initial_root_not_signed_by_its_own_keys_is_refused() {
    let repo = Repo::new();
    let unsigned = Signed::new(repo.root.signed().clone()).unwrap();
    let error = message(TrustedSet::new(&unsigned.to_bytes()));
    assert_eq!(error, "root signed by 0 of 1 required keys");
}

// Workflow order.

#[test]
fn steps_out_of_order_are_refused() {
    let repo = Repo::new();
    let release = repo.release(1);
    let mut trusted_set = repo.trusted_set();
    assert_eq!(
        message(trusted_set.update_snapshot(&release.snapshot, NOW)),
        "cannot update snapshot before timestamp"
    );
    assert_eq!(
        message(trusted_set.update_targets(&release.targets, NOW)),
        "cannot update targets before snapshot"
    );
    trusted_set
        .update_timestamp(&release.timestamp, NOW)
        .unwrap();
    assert_eq!(
        message(trusted_set.update_root(&repo.root.to_bytes())),
        "cannot update root after timestamp"
    );
    trusted_set.update_snapshot(&release.snapshot, NOW).unwrap();
    assert_eq!(
        message(trusted_set.update_timestamp(&release.timestamp, NOW)),
        "cannot update timestamp after snapshot"
    );
}
