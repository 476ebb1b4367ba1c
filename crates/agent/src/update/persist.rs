//! The update state file (`update.json` in the agent's state directory) and the atomic file
//! writes every other agent record relies on (`state.json` too).
//!
//! A write goes to a temporary file beside the target (`.update.json.tmp`), which is fsynced,
//! renamed over the target, and then the directory is fsynced, so after a power cut the file is
//! either the old record or the new one, never a mix. Only the target name is ever read: a
//! temporary file that a kill left half-written is ignored and overwritten by the next save.
//!
//! A target file that does not parse (a disk fault; atomic writes never produce one) is moved
//! aside to `update.json.corrupt` and the agent starts with no update in progress. That is safe
//! because the bootloader protects the device on its own: with no record of a try-once, the
//! machine rolls back any slot on trial instead of committing it (see [`super::machine`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::machine::Record;

/// The update state file's name inside the state directory.
pub const UPDATE_FILE: &str = "update.json";

/// Why a record cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct PersistError {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// What loading found.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    /// The last record saved.
    Record(Record),
    /// No record: the agent never updated here.
    Missing,
    /// The file did not parse; it was moved aside (the reason says where).
    Corrupt(String),
}

/// The update state file in a state directory.
#[derive(Debug, Clone)]
pub struct UpdateStore {
    dir: PathBuf,
}

impl UpdateStore {
    pub fn new(state_dir: impl Into<PathBuf>) -> UpdateStore {
        UpdateStore {
            dir: state_dir.into(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(UPDATE_FILE)
    }

    /// Where a delta patch is downloaded (small; the full image goes straight into the slot).
    pub fn delta_path(&self) -> PathBuf {
        self.dir.join("update-delta.part")
    }

    pub fn load(&self) -> Result<Loaded, PersistError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(source) => {
                return Err(PersistError {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(record) => Ok(Loaded::Record(record)),
            Err(e) => {
                let aside = self.dir.join(format!("{UPDATE_FILE}.corrupt"));
                std::fs::rename(&path, &aside).map_err(|source| PersistError {
                    action: "move aside",
                    path: path.clone(),
                    source,
                })?;
                Ok(Loaded::Corrupt(format!(
                    "{} did not parse ({e}); moved to {}",
                    path.display(),
                    aside.display()
                )))
            }
        }
    }

    /// Replaces the record atomically and durably.
    pub fn save(&self, record: &Record) -> Result<(), PersistError> {
        let bytes = serde_json::to_vec_pretty(record).expect("an update record serialises");
        write_atomic(&self.path(), &bytes)
    }
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
/// Creates the directory (mode `0700`) if needed; the file gets mode `0600`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| PersistError {
            action,
            path,
            source,
        }
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io("create", dir))?;
    }
    let name = path
        .file_name()
        .map_or_else(|| "state".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    // `mode` applies only to new files; a stale temporary file keeps its own.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io("protect", &tmp))?;
    file.write_all(bytes).map_err(io("write", &tmp))?;
    file.sync_all().map_err(io("sync", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io("replace", path))?;
    sync_dir(dir)
}

/// Removes `path` (if it exists) durably.
pub fn remove_durably(path: &Path) -> Result<(), PersistError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PersistError {
            action: "remove",
            path: path.to_owned(),
            source,
        }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), PersistError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| PersistError {
            action: "sync",
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::tempdir::Dir;

    #[test]
    fn a_record_round_trips_and_leaves_no_temporary_file() {
        let dir = Dir::new("persist");
        let store = UpdateStore::new(dir.path().join("state"));
        assert_eq!(store.load().unwrap(), Loaded::Missing);
        let record = Record::new(None);
        store.save(&record).unwrap();
        store.save(&record).unwrap();
        assert_eq!(store.load().unwrap(), Loaded::Record(record));
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [UPDATE_FILE]);
    }

    #[test]
    fn a_half_written_temporary_file_is_never_taken_for_the_record() {
        let dir = Dir::new("persist-tmp");
        let store = UpdateStore::new(dir.path());
        let record = Record::new(None);
        store.save(&record).unwrap();
        // A kill in the middle of the next save leaves a truncated temporary file.
        std::fs::write(dir.path().join(format!(".{UPDATE_FILE}.tmp")), b"{\"flo").unwrap();
        assert_eq!(store.load().unwrap(), Loaded::Record(record.clone()));
        store.save(&record).unwrap();
        assert_eq!(store.load().unwrap(), Loaded::Record(record));
    }

    #[test]
    fn a_corrupt_record_is_moved_aside_and_reported() {
        let dir = Dir::new("persist-corrupt");
        let store = UpdateStore::new(dir.path());
        std::fs::write(store.path(), b"{\"job\": {\"pha").unwrap();
        let Loaded::Corrupt(reason) = store.load().unwrap() else {
            panic!("not reported as corrupt");
        };
        assert!(reason.contains("update.json.corrupt"), "{reason}");
        assert!(dir.path().join("update.json.corrupt").exists());
        assert_eq!(store.load().unwrap(), Loaded::Missing);
    }
}
