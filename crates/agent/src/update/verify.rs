//! The two pieces of the update path that other crates provide, behind small traits so the agent
//! does not depend on them: TUF metadata verification ([`Verifier`], implemented over
//! `drover-tuf`) and binary delta application ([`DeltaApplier`], over `drover-delta`).

use std::io::{Read, Seek, Write};

use drover_proto::update::TargetCustom;
use serde::{Deserialize, Serialize};

use crate::transport::TransportError;

/// What the signed `targets.json` says about one target. Every length, hash and compatibility
/// fact the agent acts on comes from here, never from the offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifiedTarget {
    /// The target path (e.g. `sensor-hub/1.3.0/firmware.img`).
    pub target: String,
    pub length: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub custom: TargetCustom,
}

/// Fetches TUF metadata files (`root`, `timestamp`, `snapshot`, `targets`) by file name, e.g.
/// `2.root.json` or `timestamp.json`; `Ok(None)` when the server has no such file (404), which
/// is how a TUF client learns that there is no newer root.
pub trait MetadataSource {
    fn fetch_metadata(&mut self, name: &str) -> Result<Option<Vec<u8>>, TransportError>;
}

/// Why verification failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The metadata could not be fetched: try again later.
    #[error("cannot fetch TUF metadata: {0}")]
    Fetch(#[from] TransportError),
    /// The metadata or the target failed verification (signature, threshold, expiry, rollback or
    /// freeze attack, unknown target): the update must not be installed.
    #[error("{0}")]
    Rejected(String),
}

/// A TUF client with trusted metadata of its own (persisted by the implementation, e.g. under the
/// state directory), updated by [`Verifier::refresh`].
pub trait Verifier: Send {
    /// Runs the TUF client workflow: newer roots, timestamp, snapshot, targets.
    fn refresh(&mut self, source: &mut dyn MetadataSource) -> Result<(), VerifyError>;

    /// The signed facts about `target` in the metadata of the last successful refresh.
    fn verify_target(&mut self, target: &str) -> Result<VerifiedTarget, VerifyError>;
}

/// Something to read a delta's base image from.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// Why a delta could not be applied (the agent then downloads the full image).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeltaError(pub String);

/// Applies a binary delta.
pub trait DeltaApplier: Send {
    /// Writes the image `patch` produces from `old` to `out`; returns its length.
    fn apply(
        &self,
        old: &mut dyn ReadSeek,
        patch: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<u64, DeltaError>;
}
