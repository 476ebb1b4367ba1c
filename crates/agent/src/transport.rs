//! How the agent reaches the server. [`Transport`] is the whole surface the agent needs, so a
//! second implementation (MQTT) can replace [`crate::http::HttpTransport`] without touching the
//! scheduler or the loop. Errors are sorted into the classes the agent reacts to differently.

use std::fmt;
use std::time::Duration;

use drover_proto::device_api::{Heartbeat, ProvisionRequest, ProvisionResponse, WhoAmI};

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
    /// The server answered 5xx (503 under load). Retry later, not before `retry_after`.
    #[error("the server is unavailable (HTTP {status}): {message}")]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    /// 401: the credential or claim token is not (or no longer) valid.
    #[error("the server refused the credentials (HTTP 401): {0}")]
    Unauthorized(String),
    /// Any other 4xx: the request itself is wrong; sending it again cannot help.
    #[error("the server rejected the request (HTTP {status}, {code}): {message}")]
    Rejected {
        status: u16,
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

/// The device API as the agent uses it.
pub trait Transport {
    /// Exchanges a claim token, pre-authorisation or nonce for a credential.
    fn provision(&mut self, request: &ProvisionRequest) -> Result<Provisioned, TransportError>;

    /// Stores heartbeats (oldest first); returns how many the server accepted. One heartbeat and
    /// a batch may use different requests, which is the transport's business.
    fn send_heartbeats(
        &mut self,
        credential: &Credential,
        heartbeats: &[Heartbeat],
    ) -> Result<u64, TransportError>;

    /// The device's own record, which also checks that the credential works.
    fn whoami(&mut self, credential: &Credential) -> Result<WhoAmI, TransportError>;
}
