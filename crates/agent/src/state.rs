//! What the agent remembers across restarts: its device id and credential (or, while waiting for
//! an operator, its enrolment nonce), in `state.json` in the state directory.
//!
//! The file is written atomically (temporary file in the same directory, fsync, rename, fsync of
//! the directory), so a power cut leaves either the old or the new state, never half of one. It is
//! created with mode `0600`: the credential is the device's identity.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use drover_core::DeviceId;
use serde::{Deserialize, Serialize};

use crate::transport::Credential;

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "state.json";

/// The persisted state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// Present once provisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The nonce of a pending enrolment: it must be the same on every retry, across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The server this credential belongs to, so a changed `server_url` is noticed in the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_url: Option<String>,
}

impl State {
    pub fn credential(&self) -> Option<Credential> {
        self.credential.clone().map(Credential::new)
    }
}

/// Why the state cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt ({source}); move it away to provision again")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    pub fn new(dir: impl Into<PathBuf>) -> StateStore {
        StateStore { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The stored state; empty when the agent never ran here.
    pub fn load(&self) -> Result<State, StateError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StateError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(source) => Err(StateError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Replaces the stored state atomically (see [`crate::update::persist::write_atomic`]).
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| StateError::Io {
            action: "create",
            path: self.dir.clone(),
            source,
        })?;
        // The directory holds a secret too: keep others out (best effort on an existing one).
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        crate::update::persist::write_atomic(&self.path(), &bytes).map_err(|e| StateError::Io {
            action: e.action,
            path: e.path,
            source: e.source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("drover-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn state_round_trips_through_a_private_file() {
        let dir = temp_dir("state");
        let store = StateStore::new(dir.join("nested"));
        assert_eq!(store.load().unwrap(), State::default());
        let state = State {
            device_id: Some(DeviceId::parse("dev-1").unwrap()),
            credential: Some("drv_dev_secret".into()),
            nonce: None,
            server_url: Some("http://a".into()),
        };
        store.save(&state).unwrap();
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        let mode = std::fs::metadata(store.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("nested")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_the_file() {
        let dir = temp_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), "{not json").unwrap();
        let error = StateStore::new(&dir).load().unwrap_err().to_string();
        assert!(error.contains("state.json is corrupt"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
