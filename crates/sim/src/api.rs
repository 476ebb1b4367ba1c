//! The HTTP device API (`/api/device/v1`) for virtual devices: one shared `reqwest` client (one
//! connection pool for the whole fleet) and the agent's own classification of answers
//! ([`drover_agent::http::Answer`]), so a virtual device reacts to every status exactly as
//! `drover-agent` does. Every exchange first waits out the device's [`Link`].

use std::time::{Duration, Instant};

use drover_agent::http::{Answer, DELTA_WAIT};
use drover_agent::transport::{Credential, DeltaWait, Provisioned, TransportError};
use drover_core::shadow::JsonObject;
use drover_proto::device_api::{
    Heartbeat, HeartbeatAck, HeartbeatBatch, ProvisionRequest, ProvisionResponse,
};
use drover_proto::shadow::{
    ShadowAccepted, ShadowDelta, ShadowStatePatch, ShadowUpdateRequest, ShadowView,
};
use drover_proto::update::{DeploymentId, DeploymentReport, UpdateOffer};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::net::Link;
use crate::sample::SimRng;

/// Longest answer read into memory (metadata, documents); downloads are streamed.
const MAX_ANSWER: usize = 8 << 20;

/// The device API of one server.
#[derive(Debug, Clone)]
pub struct DeviceApi {
    client: reqwest::Client,
    base: String,
    timeout: Duration,
}

/// How a deployment report was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    Accepted,
    /// `409`: the server ended the deployment.
    Ended,
}

/// A download's progress, kept between attempts so a resumed download continues the hash.
#[derive(Debug, Clone, Default)]
pub struct Partial {
    pub bytes_done: u64,
    pub etag: Option<String>,
    hasher: Sha256,
}

impl Partial {
    /// The hex sha256 of the bytes received so far.
    pub fn sha256(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

impl DeviceApi {
    /// The device API of the server at `server_url` (`http://host:port`).
    pub fn new(server_url: &str, timeout: Duration) -> Result<DeviceApi, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(DeviceApi {
            client,
            base: format!("{}/api/device/v1", server_url.trim_end_matches('/')),
            timeout,
        })
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        credential: Option<&Credential>,
    ) -> RequestBuilder {
        let mut request = self
            .client
            .request(method, format!("{}/{path}", self.base))
            .timeout(self.timeout);
        if let Some(credential) = credential {
            request = request.bearer_auth(credential.expose());
        }
        request
    }

    /// Waits out the link, then sends and reads the answer.
    async fn exchange(
        &self,
        link: &Link,
        rng: &mut SimRng,
        request: RequestBuilder,
    ) -> Result<Answer, TransportError> {
        through(link, rng).await?;
        let response = request.send().await.map_err(unreachable)?;
        read(response).await
    }

    async fn post<T: Serialize>(
        &self,
        link: &Link,
        rng: &mut SimRng,
        path: &str,
        credential: Option<&Credential>,
        body: &T,
    ) -> Result<Answer, TransportError> {
        let request = self.request(Method::POST, path, credential).json(body);
        self.exchange(link, rng, request).await
    }

    async fn get(
        &self,
        link: &Link,
        rng: &mut SimRng,
        path: &str,
        credential: &Credential,
    ) -> Result<Answer, TransportError> {
        let request = self.request(Method::GET, path, Some(credential));
        self.exchange(link, rng, request).await
    }

    /// `POST provision`.
    pub async fn provision(
        &self,
        link: &Link,
        rng: &mut SimRng,
        request: &ProvisionRequest,
    ) -> Result<Provisioned, TransportError> {
        let answer = self
            .post(link, rng, "provision", None, request)
            .await?
            .success()?;
        let status = answer.status;
        let response: ProvisionResponse = answer.json()?;
        match (status, response.credential.clone()) {
            (200, Some(secret)) => Ok(Provisioned::Accepted {
                credential: Credential::new(secret),
                response,
            }),
            (202, None) => Ok(Provisioned::Pending {
                retry_after: Duration::from_secs(response.retry_after_secs.unwrap_or(60)),
                response,
            }),
            _ => Err(TransportError::Protocol(format!(
                "provisioning answered HTTP {status} without a usable credential"
            ))),
        }
    }

    /// `POST heartbeat` (one) or `POST heartbeats` (a batch).
    pub async fn heartbeats(
        &self,
        link: &Link,
        rng: &mut SimRng,
        credential: &Credential,
        heartbeats: &[Heartbeat],
    ) -> Result<u64, TransportError> {
        let answer = match heartbeats {
            [one] => {
                self.post(link, rng, "heartbeat", Some(credential), one)
                    .await?
            }
            many => {
                let batch = HeartbeatBatch {
                    heartbeats: many.to_vec(),
                };
                self.post(link, rng, "heartbeats", Some(credential), &batch)
                    .await?
            }
        };
        let ack: HeartbeatAck = answer.success()?.json()?;
        Ok(ack.accepted)
    }

    /// `GET shadow`; `None` when the device has no shadow yet.
    pub async fn get_shadow(
        &self,
        link: &Link,
        rng: &mut SimRng,
        credential: &Credential,
    ) -> Result<Option<ShadowView>, TransportError> {
        let answer = self.get(link, rng, "shadow", credential).await?;
        if answer.status == 404 {
            return Ok(None);
        }
        answer.success()?.json().map(Some)
    }

    /// `POST shadow` with reported state; the document's new version.
    pub async fn report(
        &self,
        link: &Link,
        rng: &mut SimRng,
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
            .post(link, rng, "shadow", Some(credential), &request)
            .await?
            .success()?
            .json()?;
        Ok(accepted.version)
    }

    /// The long-poll `GET shadow/delta`, held by the server for up to the agent's wait.
    pub async fn next_delta(
        &self,
        link: &Link,
        rng: &mut SimRng,
        credential: &Credential,
        since: u64,
    ) -> Result<DeltaWait, TransportError> {
        let path = format!("shadow/delta?version={since}&wait={}", DELTA_WAIT.as_secs());
        let request = self
            .request(Method::GET, &path, Some(credential))
            .timeout(DELTA_WAIT + self.timeout);
        let answer = self.exchange(link, rng, request).await?.success()?;
        if answer.status == 204 {
            return Ok(DeltaWait::Nothing);
        }
        let delta: ShadowDelta = answer.json()?;
        Ok(DeltaWait::Delta(delta))
    }

    /// `GET deployments/next`.
    pub async fn next_offer(
        &self,
        link: &Link,
        rng: &mut SimRng,
        credential: &Credential,
    ) -> Result<Option<UpdateOffer>, TransportError> {
        let answer = self
            .get(link, rng, "deployments/next", credential)
            .await?
            .success()?;
        if answer.status == 204 {
            return Ok(None);
        }
        answer.json().map(Some)
    }

    /// `POST deployments/{id}/status`.
    pub async fn report_deployment(
        &self,
        link: &Link,
        rng: &mut SimRng,
        credential: &Credential,
        deployment: DeploymentId,
        report: &DeploymentReport,
    ) -> Result<Reported, TransportError> {
        let path = format!("deployments/{deployment}/status");
        let answer = self
            .post(link, rng, &path, Some(credential), report)
            .await?;
        if answer.status == 409 {
            return Ok(Reported::Ended);
        }
        answer.success()?;
        Ok(Reported::Accepted)
    }

    /// `GET tuf/{name}`; `None` on 404 (how a TUF client learns there is no newer root).
    pub async fn metadata(
        &self,
        credential: &Credential,
        name: &str,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        let response = self
            .request(Method::GET, &format!("tuf/{name}"), Some(credential))
            .send()
            .await
            .map_err(unreachable)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let answer = read(response).await?.success()?;
        Ok(Some(answer.body.into_bytes()))
    }

    /// Downloads the rest of `target` (from `partial.bytes_done`), hashing instead of storing
    /// (a virtual device's slot holds only its image's record), paced to the link's bandwidth.
    /// A disconnect period that begins during the download breaks it; `partial` keeps what
    /// arrived, so the next attempt resumes with a range request like the agent's.
    pub async fn download(
        &self,
        link: &Link,
        rng: &mut SimRng,
        credential: &Credential,
        target_path: &str,
        length: u64,
        partial: &mut Partial,
    ) -> Result<(), TransportError> {
        through(link, rng).await?;
        let mut request = self
            .client
            .get(format!("{}/{target_path}", self.base))
            .bearer_auth(credential.expose());
        let from = partial.bytes_done;
        if from > 0 {
            request = request.header("range", format!("bytes={from}-"));
            if let Some(etag) = &partial.etag {
                request = request.header("if-range", etag);
            }
        }
        let mut response = request.send().await.map_err(unreachable)?;
        match response.status().as_u16() {
            206 => {}
            200 => *partial = Partial::default(),
            416 if from > 0 => {
                *partial = Partial::default();
                return Err(TransportError::Unavailable {
                    status: Some(416),
                    retry_after: None,
                    message: "the server has no such range; starting over".into(),
                });
            }
            _ => {
                return Err(read(response)
                    .await
                    .and_then(Answer::success)
                    .err()
                    .unwrap_or_else(|| {
                        TransportError::Protocol("unexpected download answer".into())
                    }))
            }
        }
        partial.etag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let started = Instant::now();
        let start_bytes = partial.bytes_done;
        loop {
            if link.down_until(Instant::now()).is_some() {
                return Err(TransportError::Unreachable(
                    "the link dropped (simulated disconnect)".into(),
                ));
            }
            let chunk = tokio::time::timeout(self.timeout, response.chunk())
                .await
                .map_err(|_| TransportError::Unreachable("the download stalled".into()))?
                .map_err(unreachable)?;
            let Some(chunk) = chunk else { break };
            partial.hasher.update(&chunk);
            partial.bytes_done += chunk.len() as u64;
            if partial.bytes_done > length {
                return Err(TransportError::Protocol(format!(
                    "{target_path} is longer than its signed {length} bytes"
                )));
            }
            if let Some(rate) = link.bandwidth() {
                let due = Duration::from_secs_f64(
                    (partial.bytes_done - start_bytes) as f64 / rate.max(1) as f64,
                );
                let elapsed = started.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
        }
        if partial.bytes_done < length {
            return Err(TransportError::Unreachable(format!(
                "the download ended after {} of {length} bytes",
                partial.bytes_done
            )));
        }
        Ok(())
    }
}

/// Waits out one round trip of the link; fails at once while the link is down.
pub async fn through(link: &Link, rng: &mut SimRng) -> Result<(), TransportError> {
    if link.down_until(Instant::now()).is_some() {
        return Err(TransportError::Unreachable(
            "no network (simulated disconnect)".into(),
        ));
    }
    let delay = link.round_trip(rng);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Ok(())
}

async fn read(response: reqwest::Response) -> Result<Answer, TransportError> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER as u64)
    {
        return Err(TransportError::Protocol(format!(
            "HTTP {status} with an answer over {MAX_ANSWER} bytes"
        )));
    }
    let body = response.text().await.map_err(unreachable)?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

fn unreachable(error: reqwest::Error) -> TransportError {
    TransportError::Unreachable(error.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
