//! The HTTP device API (`/api/device/v1`) with ureq: blocking, rustls, no async runtime.
//! Connections are kept alive between requests. Implements every transport trait: provisioning,
//! heartbeats, and the shadow with a long-poll for deltas.

use std::time::Duration;

use drover_core::shadow::JsonObject;
use drover_proto::device_api::{
    Heartbeat, HeartbeatAck, HeartbeatBatch, ProvisionRequest, ProvisionResponse, WhoAmI,
};
use drover_proto::shadow::{
    ShadowAccepted, ShadowDelta, ShadowStatePatch, ShadowUpdateRequest, ShadowView,
};
use serde::de::DeserializeOwned;

use crate::transport::{
    Credential, DeltaWait, Provisioned, Provisioning, ShadowTransport, Transport, TransportError,
};

/// Where an absent `Retry-After` on a pending answer leaves the agent.
const DEFAULT_PENDING_RETRY: Duration = Duration::from_secs(60);

/// How long one delta long-poll waits on the server (it allows 60 s). Below a minute so that
/// proxies with the common 60-second idle timeout do not cut it off.
pub const DELTA_WAIT: Duration = Duration::from_secs(50);

/// The device API over HTTP(S).
pub struct HttpTransport {
    base: String,
    agent: ureq::Agent,
    timeout: Duration,
}

impl HttpTransport {
    /// A client of the server at `server_url` (e.g. `https://drover.example.com`).
    pub fn new(server_url: &str, timeout: Duration) -> HttpTransport {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .user_agent(concat!("drover-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpTransport {
            base: server_url.trim_end_matches('/').to_owned(),
            agent: ureq::Agent::new_with_config(config),
            timeout,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/api/device/v1/{path}", self.base)
    }

    pub(crate) fn post(
        &self,
        path: &str,
        credential: Option<&Credential>,
        body: &impl serde::Serialize,
    ) -> Result<Answer, TransportError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| TransportError::Protocol(format!("cannot encode the request: {e}")))?;
        let mut request = self
            .agent
            .post(self.url(path))
            .content_type("application/json");
        if let Some(credential) = credential {
            request = request.header("authorization", bearer(credential));
        }
        Answer::read(request.send(&body[..]))
    }

    pub(crate) fn get(
        &self,
        path: &str,
        credential: &Credential,
    ) -> Result<Answer, TransportError> {
        let request = self
            .agent
            .get(self.url(path))
            .header("authorization", bearer(credential));
        Answer::read(request.call())
    }
}

impl HttpTransport {
    /// The underlying client, for requests of their own (the update downloads).
    pub(crate) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// The per-request timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Provisioning for HttpTransport {
    fn provision(&mut self, request: &ProvisionRequest) -> Result<Provisioned, TransportError> {
        let answer = self.post("provision", None, request)?.success()?;
        let status = answer.status;
        let response: ProvisionResponse = answer.json()?;
        match (status, response.credential.clone()) {
            (200, Some(secret)) => Ok(Provisioned::Accepted {
                credential: Credential::new(secret),
                response,
            }),
            (202, None) => Ok(Provisioned::Pending {
                retry_after: response
                    .retry_after_secs
                    .map_or(DEFAULT_PENDING_RETRY, Duration::from_secs),
                response,
            }),
            _ => Err(TransportError::Protocol(format!(
                "provisioning answered HTTP {status} {} a credential",
                if response.credential.is_some() {
                    "with"
                } else {
                    "without"
                }
            ))),
        }
    }

    fn whoami(&mut self, credential: &Credential) -> Result<WhoAmI, TransportError> {
        self.get("whoami", credential)?.success()?.json()
    }
}

impl Transport for HttpTransport {
    fn send_heartbeats(
        &mut self,
        credential: &Credential,
        heartbeats: &[Heartbeat],
    ) -> Result<u64, TransportError> {
        let answer = match heartbeats {
            [one] => self.post("heartbeat", Some(credential), one)?,
            many => {
                let batch = HeartbeatBatch {
                    heartbeats: many.to_vec(),
                };
                self.post("heartbeats", Some(credential), &batch)?
            }
        };
        let ack: HeartbeatAck = answer.success()?.json()?;
        Ok(ack.accepted)
    }
}

impl ShadowTransport for HttpTransport {
    fn get_shadow(
        &mut self,
        credential: &Credential,
    ) -> Result<Option<ShadowView>, TransportError> {
        let answer = self.get("shadow", credential)?;
        if answer.status == 404 {
            return Ok(None);
        }
        answer.success()?.json().map(Some)
    }

    fn report(
        &mut self,
        credential: &Credential,
        reported: &JsonObject,
    ) -> Result<u64, TransportError> {
        let request = ShadowUpdateRequest {
            state: ShadowStatePatch {
                desired: None,
                reported: Some(serde_json::Value::Object(reported.clone())),
            },
            version: None,
            client_token: None,
        };
        let accepted: ShadowAccepted = self
            .post("shadow", Some(credential), &request)?
            .success()?
            .json()?;
        Ok(accepted.version)
    }

    fn next_delta(
        &mut self,
        credential: &Credential,
        since: u64,
    ) -> Result<DeltaWait, TransportError> {
        let path = format!("shadow/delta?version={since}&wait={}", DELTA_WAIT.as_secs());
        // The server holds the request for up to DELTA_WAIT; the usual timeout applies on top.
        let request = self
            .agent
            .get(self.url(&path))
            .header("authorization", bearer(credential))
            .config()
            .timeout_global(Some(DELTA_WAIT + self.timeout))
            .build();
        let answer = Answer::read(request.call())?.success()?;
        if answer.status == 204 {
            return Ok(DeltaWait::Nothing);
        }
        let delta: ShadowDelta = answer.json()?;
        Ok(DeltaWait::Delta(delta))
    }
}

pub(crate) fn bearer(credential: &Credential) -> String {
    format!("Bearer {}", credential.expose())
}

/// A response read into memory, sorted into the agent's error classes by [`Answer::success`]
/// (public so that the fleet simulator, which speaks HTTP with another client, classifies the
/// server's answers exactly as the agent does).
pub struct Answer {
    pub status: u16,
    /// The `Retry-After` header, in seconds.
    pub retry_after: Option<Duration>,
    pub body: String,
}

impl Answer {
    pub(crate) fn read(
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Answer, TransportError> {
        let mut response = result.map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .map_err(|e| TransportError::Unreachable(format!("reading the answer: {e}")))?;
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// Turns an error status into its [`TransportError`] class.
    pub fn success(self) -> Result<Answer, TransportError> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let error: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        let error = &error["error"];
        let message = error["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| self.body.chars().take(200).collect());
        Err(match self.status {
            401 => TransportError::Unauthorized(message),
            // Timeouts and rate limits are the server asking for patience, not a bad request.
            408 | 429 => TransportError::Unavailable {
                status: Some(self.status),
                retry_after: self.retry_after,
                message,
            },
            400..=499 => TransportError::Rejected {
                status: Some(self.status),
                code: error["code"].as_str().unwrap_or("unknown").to_owned(),
                message,
                index: error["details"]["index"].as_u64().map(|i| i as usize),
            },
            _ => TransportError::Unavailable {
                status: Some(self.status),
                retry_after: self.retry_after,
                message,
            },
        })
    }

    pub fn json<T: DeserializeOwned>(self) -> Result<T, TransportError> {
        serde_json::from_str(&self.body).map_err(|e| {
            TransportError::Protocol(format!("HTTP {} with an unreadable body: {e}", self.status))
        })
    }
}
