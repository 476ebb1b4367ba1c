//! File names of a published repository, with and without consistent snapshots.
//!
//! With `consistent_snapshot`, snapshot and targets metadata are published as `V.snapshot.json`
//! and `V.targets.json`, and target files as `dir/<sha256>.<name>`, so files of an older and a
//! newer repository state can be served side by side while the repository is updated. Root is
//! always `N.root.json` (clients walk the chain by version), timestamp always `timestamp.json`
//! (it is the entry point). These names are what python-tuf's `ngclient` requests.

use crate::metadata::{Role, TargetFile};
use crate::Error;

/// The name of timestamp metadata, the one file fetched without knowing its version.
pub const TIMESTAMP_FILE_NAME: &str = "timestamp.json";

/// `N.root.json`: the name a client fetches root version `version` under.
pub fn root_file_name(version: u64) -> String {
    format!("{version}.root.json")
}

/// The name under which `role`'s metadata of `version` is published and fetched.
///
/// Root is always version-prefixed and timestamp never is; snapshot and targets are
/// version-prefixed only with consistent snapshots.
pub fn metadata_file_name(role: Role, version: u64, consistent_snapshot: bool) -> String {
    match role {
        Role::Root => root_file_name(version),
        Role::Timestamp => TIMESTAMP_FILE_NAME.to_owned(),
        Role::Snapshot | Role::Targets if consistent_snapshot => {
            format!("{version}.{}", role.file_name())
        }
        Role::Snapshot | Role::Targets => role.file_name(),
    }
}

/// `dir/<sha256>.<name>` for target `path`: the hash goes before the last path component.
pub fn hash_prefixed_target_path(path: &str, sha256: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{sha256}.{name}"),
        None => format!("{sha256}.{path}"),
    }
}

/// Where target `path` is published: hash-prefixed with its sha256 under consistent snapshots,
/// as listed otherwise.
///
/// python-tuf prefixes with the *first* hash listed for the target; this crate only writes
/// sha256, so for its own metadata that is the same file. A repository listing several hashes
/// should publish the file under each prefix.
pub fn target_file_path(
    path: &str,
    target_file: &TargetFile,
    consistent_snapshot: bool,
) -> Result<String, Error> {
    if !consistent_snapshot {
        return Ok(path.to_owned());
    }
    let sha256 = target_file
        .sha256()
        .ok_or_else(|| Error::NoSha256(format!("target {path:?}")))?;
    Ok(hash_prefixed_target_path(path, sha256))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_follow_consistent_snapshot() {
        assert_eq!(metadata_file_name(Role::Root, 3, false), "3.root.json");
        assert_eq!(
            metadata_file_name(Role::Timestamp, 9, true),
            "timestamp.json"
        );
        assert_eq!(
            metadata_file_name(Role::Snapshot, 4, true),
            "4.snapshot.json"
        );
        assert_eq!(metadata_file_name(Role::Targets, 4, true), "4.targets.json");
        assert_eq!(metadata_file_name(Role::Targets, 4, false), "targets.json");
    }

    #[test]
    fn hash_prefix_goes_before_the_last_path_component() {
        assert_eq!(
            hash_prefixed_target_path("fw/v2/app.bin", "ab"),
            "fw/v2/ab.app.bin"
        );
        assert_eq!(hash_prefixed_target_path("app.bin", "ab"), "ab.app.bin");
        let target_file = TargetFile::from_bytes(b"x");
        let sha256 = target_file.sha256().unwrap().to_owned();
        assert_eq!(
            target_file_path("d/x", &target_file, true).unwrap(),
            format!("d/{sha256}.x")
        );
        assert_eq!(target_file_path("d/x", &target_file, false).unwrap(), "d/x");
    }
}
