//! TUF verification for the whole simulated fleet: one [`TufVerifier`] of the agent (the same
//! client workflow and checks as every real device), whose trusted metadata all virtual devices
//! share, so that a fleet of ten thousand does not download and verify `targets.json` ten thousand
//! times. The first refresh trusts the server's root (trust on first use, as an agent without a
//! pinned `tuf_root` does); later refreshes walk root rotations like any TUF client.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_agent::transport::{Credential, TransportError};
use drover_agent::update::tuf::TufVerifier;
use drover_agent::update::verify::{MetadataSource, VerifiedTarget, Verifier, VerifyError};

use crate::api::DeviceApi;

/// Metadata younger than this is used without asking the server again.
const FRESH_FOR: Duration = Duration::from_secs(10);

/// The fleet's shared TUF client.
#[derive(Clone)]
pub struct SharedVerifier {
    inner: Arc<Mutex<State>>,
}

struct State {
    verifier: TufVerifier,
    refreshed: Option<Instant>,
}

impl SharedVerifier {
    /// A verifier keeping its trusted metadata in `dir`.
    pub fn new(dir: PathBuf) -> SharedVerifier {
        SharedVerifier {
            inner: Arc::new(Mutex::new(State {
                verifier: TufVerifier::new(dir, None),
                refreshed: None,
            })),
        }
    }

    /// The signed facts about `image` (and `delta`), refreshing the metadata when it is not fresh
    /// or does not know the target yet. Runs on a blocking thread: the agent's verifier is
    /// synchronous, and its fetches go through the async client by the runtime's handle.
    pub async fn verify(
        &self,
        api: DeviceApi,
        credential: Credential,
        image: String,
        delta: Option<String>,
    ) -> Result<(VerifiedTarget, Option<Result<VerifiedTarget, String>>), VerifyError> {
        let inner = self.inner.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let mut state = inner.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = state.refreshed.is_some_and(|at| at.elapsed() < FRESH_FOR);
            let known = fresh && state.verifier.verify_target(&image).is_ok();
            if !known {
                let mut source = Source {
                    api,
                    credential,
                    handle,
                };
                state.verifier.refresh(&mut source)?;
                state.refreshed = Some(Instant::now());
            }
            let image = state.verifier.verify_target(&image)?;
            let delta = delta.map(|d| state.verifier.verify_target(&d).map_err(|e| e.to_string()));
            Ok((image, delta))
        })
        .await
        .unwrap_or_else(|e| Err(VerifyError::Rejected(format!("the verifier failed: {e}"))))
    }
}

struct Source {
    api: DeviceApi,
    credential: Credential,
    handle: tokio::runtime::Handle,
}

impl MetadataSource for Source {
    fn fetch_metadata(&mut self, name: &str) -> Result<Option<Vec<u8>>, TransportError> {
        self.handle
            .block_on(self.api.metadata(&self.credential, name))
    }
}
