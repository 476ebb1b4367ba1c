//! The agent's TUF client ([`TufVerifier`]): the [`Verifier`] the update machine uses, over the
//! `drover-tuf` crate, with its trusted metadata kept in `<state_dir>/tuf/`.
//!
//! The first trusted root comes from the `update.tuf_root` file when configured (the root an
//! operator copied from `drover keys show-root --json`), otherwise from the server on first use
//! (`root.json` over the agent's authenticated connection, logged). After that, roots are only
//! replaced by walking `N+1.root.json` signed by both the old and the new keys. The last accepted
//! timestamp and snapshot are kept, so a server replaying older metadata later (a rollback or
//! freeze attack) is refused even across agent restarts.

use std::path::{Path, PathBuf};

use drover_proto::update::TargetCustom;
use drover_tuf::TrustedSet;

use super::persist::write_atomic;
use super::verify::{MetadataSource, VerifiedTarget, Verifier, VerifyError};

const ROOT_FILE: &str = "root.json";
const TIMESTAMP_FILE: &str = "timestamp.json";
const SNAPSHOT_FILE: &str = "snapshot.json";

/// A TUF client whose trusted state lives in a directory.
pub struct TufVerifier {
    dir: PathBuf,
    /// The operator-supplied first root, when configured.
    bootstrap: Option<PathBuf>,
    set: Option<TrustedSet>,
}

impl TufVerifier {
    /// A verifier keeping its state in `dir` (created on first refresh).
    pub fn new(dir: impl Into<PathBuf>, bootstrap: Option<PathBuf>) -> TufVerifier {
        TufVerifier {
            dir: dir.into(),
            bootstrap,
            set: None,
        }
    }

    fn trusted_root(&self, source: &mut dyn MetadataSource) -> Result<Vec<u8>, VerifyError> {
        if let Ok(bytes) = std::fs::read(self.dir.join(ROOT_FILE)) {
            return Ok(bytes);
        }
        if let Some(path) = &self.bootstrap {
            return std::fs::read(path).map_err(|e| {
                VerifyError::Rejected(format!(
                    "cannot read the trusted TUF root {}: {e}",
                    path.display()
                ))
            });
        }
        let bytes = source.fetch_metadata(ROOT_FILE)?.ok_or_else(|| {
            VerifyError::Rejected("the server publishes no TUF root (root.json)".into())
        })?;
        warn!(
            "updates: trusting the server's TUF root on first use; set update.tuf_root to pin it"
        );
        Ok(bytes)
    }

    fn save(&self, name: &str, bytes: &[u8]) -> Result<(), VerifyError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            VerifyError::Rejected(format!("cannot create {}: {e}", self.dir.display()))
        })?;
        write_atomic(&self.dir.join(name), bytes).map_err(|e| VerifyError::Rejected(e.to_string()))
    }
}

impl Verifier for TufVerifier {
    fn refresh(&mut self, source: &mut dyn MetadataSource) -> Result<(), VerifyError> {
        let now = time::OffsetDateTime::now_utc();
        let root = self.trusted_root(source)?;
        let mut set = TrustedSet::new(&root).map_err(rejected)?;
        // The first trusted root (configured or taken on first use) is kept once it verified.
        if !self.dir.join(ROOT_FILE).exists() {
            self.save(ROOT_FILE, &root)?;
        }
        loop {
            let name = set.next_root_file_name();
            let Some(bytes) = source.fetch_metadata(&name)? else {
                break;
            };
            set.update_root(&bytes).map_err(rejected)?;
            // Each accepted root is kept at once: the chain is walked only forward.
            self.save(ROOT_FILE, &bytes)?;
        }
        // Earlier accepted metadata guards against replays; a cached file signed by keys a new
        // root no longer trusts is simply not used.
        if let Some(bytes) = read(&self.dir.join(TIMESTAMP_FILE)) {
            let _ = set.load_cached_timestamp(&bytes);
        }
        let timestamp = source.fetch_metadata(TIMESTAMP_FILE)?.ok_or_else(|| {
            VerifyError::Rejected("the server publishes no timestamp.json".into())
        })?;
        set.update_timestamp(&timestamp, now).map_err(rejected)?;
        self.save(TIMESTAMP_FILE, &timestamp)?;
        if let Some(bytes) = read(&self.dir.join(SNAPSHOT_FILE)) {
            let _ = set.load_cached_snapshot(&bytes);
        }
        let name = set.snapshot_file_name().map_err(rejected)?;
        let snapshot = source
            .fetch_metadata(&name)?
            .ok_or_else(|| VerifyError::Rejected(format!("the server does not serve {name}")))?;
        set.update_snapshot(&snapshot, now).map_err(rejected)?;
        self.save(SNAPSHOT_FILE, &snapshot)?;
        let name = set.targets_file_name().map_err(rejected)?;
        let targets = source
            .fetch_metadata(&name)?
            .ok_or_else(|| VerifyError::Rejected(format!("the server does not serve {name}")))?;
        set.update_targets(&targets, now).map_err(rejected)?;
        self.set = Some(set);
        Ok(())
    }

    fn verify_target(&mut self, target: &str) -> Result<VerifiedTarget, VerifyError> {
        let set = self
            .set
            .as_ref()
            .ok_or_else(|| VerifyError::Rejected("no verified TUF metadata yet".into()))?;
        let file = set.target(target).map_err(rejected)?;
        let sha256 = file.hashes.get("sha256").cloned().ok_or_else(|| {
            VerifyError::Rejected(format!("target {target:?} has no sha256 in targets.json"))
        })?;
        let custom = file.custom.clone().ok_or_else(|| {
            VerifyError::Rejected(format!(
                "target {target:?} carries no Drover facts (custom)"
            ))
        })?;
        let custom: TargetCustom = serde_json::from_value(serde_json::Value::Object(custom))
            .map_err(|e| {
                VerifyError::Rejected(format!(
                    "target {target:?} has unreadable custom facts: {e}"
                ))
            })?;
        Ok(VerifiedTarget {
            target: target.to_owned(),
            length: file.length,
            sha256,
            custom,
        })
    }
}

fn read(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok()
}

fn rejected(e: drover_tuf::Error) -> VerifyError {
    VerifyError::Rejected(e.to_string())
}
