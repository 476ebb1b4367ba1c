//! How the agent reaches the server: one trait per job, so the heartbeat loop and the shadow
//! thread do not care whether HTTP ([`crate::http`]) or MQTT ([`crate::mqtt`]) carries their
//! messages. Provisioning is HTTP only. Errors are sorted into the classes the agent reacts to
//! differently.

use std::fmt;
use std::time::Duration;

use drover_core::shadow::JsonObject;
use drover_proto::device_api::{Heartbeat, ProvisionRequest, ProvisionResponse, WhoAmI};
use drover_proto::shadow::{ShadowDelta, ShadowView};

/// A device credential. Its `Debug` and `Display` never show the secret, so it cannot leak into
/// logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    pub fn new(secret: String) -> Credential {
        Credential(secret)
    }

    /// The secret itself, for the `Authorization` header and the state file only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(***)")
    }
}

/// Why a request did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No answer: connection refused, DNS, TLS, timeout. Retry later.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server answered 5xx (503 under load), or said so over MQTT. Retry later, not before
    /// `retry_after`.
    #[error("the server is unavailable ({}): {message}", status.map_or("over MQTT".to_owned(), |s| format!("HTTP {s}")))]
    Unavailable {
        /// The HTTP status; `None` over MQTT.
        status: Option<u16>,
        retry_after: Option<Duration>,
        message: String,
    },
    /// 401: the credential or claim token is not (or no longer) valid.
    #[error("the server refused the credentials (HTTP 401): {0}")]
    Unauthorized(String),
    /// Any other 4xx, or an MQTT rejection: the request itself is wrong; sending it again cannot
    /// help.
    #[error("the server rejected the request ({}{code}): {message}", http_status(*status))]
    Rejected {
        /// The HTTP status; `None` over MQTT, where only `code` says what was wrong.
        status: Option<u16>,
        code: String,
        message: String,
        /// For a heartbeat batch: which heartbeat was at fault.
        index: Option<usize>,
    },
    /// The server answered something the agent cannot read (a proxy's HTML page, a newer API).
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl TransportError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::Unreachable(_)
                | TransportError::Unavailable { .. }
                | TransportError::Protocol(_)
        )
    }
}

impl TransportError {
    /// For a rejection of one part of a batch sent in several messages: the index of the faulty
    /// heartbeat within the whole batch, when this message started at `offset`.
    pub fn offset_index(self, offset: usize) -> TransportError {
        match self {
            TransportError::Rejected {
                status,
                code,
                message,
                index,
            } => TransportError::Rejected {
                status,
                code,
                message,
                index: index.map(|idx| idx + offset),
            },
            other => other,
        }
    }

    /// When the server asked to be left alone until (HTTP `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TransportError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

fn http_status(status: Option<u16>) -> String {
    status.map(|s| format!("HTTP {s}, ")).unwrap_or_default()
}

/// The answer to a provisioning request.
#[derive(Debug)]
pub enum Provisioned {
    /// Enrolled: this credential authenticates every later request.
    Accepted {
        response: ProvisionResponse,
        credential: Credential,
    },
    /// Waiting for an operator to accept the device; ask again after `retry_after` with the same
    /// nonce.
    Pending {
        response: ProvisionResponse,
        retry_after: Duration,
    },
}

/// Obtaining and checking the credential: HTTP only, because a device without a credential
/// cannot log in to an MQTT broker.
pub trait Provisioning {
    /// Exchanges a claim token, pre-authorisation or nonce for a credential.
    fn provision(&mut self, request: &ProvisionRequest) -> Result<Provisioned, TransportError>;

    /// The device's own record, which also checks that the credential works.
    fn whoami(&mut self, credential: &Credential) -> Result<WhoAmI, TransportError>;
}

/// What the heartbeat loop needs.
pub trait Transport {
    /// Stores heartbeats (oldest first); returns how many the server accepted. One heartbeat and
    /// a batch may use different requests, which is the transport's business.
    fn send_heartbeats(
        &mut self,
        credential: &Credential,
        heartbeats: &[Heartbeat],
    ) -> Result<u64, TransportError>;
}

/// What the shadow thread needs: the classic shadow of the device the credential belongs to.
pub trait ShadowTransport {
    /// The whole document; `None` when the device has no shadow yet.
    fn get_shadow(&mut self, credential: &Credential)
        -> Result<Option<ShadowView>, TransportError>;

    /// Merges `reported` into the shadow's reported state; returns the document's new version.
    fn report(
        &mut self,
        credential: &Credential,
        reported: &JsonObject,
    ) -> Result<u64, TransportError>;

    /// Waits (up to a transport-chosen time) for a delta newer than `since`.
    fn next_delta(
        &mut self,
        credential: &Credential,
        since: u64,
    ) -> Result<DeltaWait, TransportError>;
}

/// How waiting for a delta ended.
#[derive(Debug, Clone, PartialEq)]
pub enum DeltaWait {
    /// The whole current delta, newer than asked for.
    Delta(ShadowDelta),
    /// Nothing new yet; ask again.
    Nothing,
    /// The connection was re-established since the last call: deltas may have been missed, so
    /// fetch the whole document again.
    Reconnected,
}
