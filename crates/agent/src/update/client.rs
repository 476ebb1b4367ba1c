//! How the update machinery talks to the server: [`UpdateClient`] (offers, reports, TUF metadata,
//! ranged target downloads) and its HTTP implementation over the agent's ureq client.
//!
//! Downloads resume with `Range: bytes=N-` and `If-Range: "<etag>"`; the server answers `206` with
//! the rest, or `200` with the whole file when the range is not honoured (or the ETag changed),
//! which the client writes from the start; `416` restarts from zero. The file name carries the
//! consistent-snapshot hash prefix (`targets/{dir}/{sha256}.{basename}`), so a path names exactly
//! one content and a resumed download cannot mix two files.

use std::io::{Read, Seek, SeekFrom, Write};

use drover_proto::update::{DeploymentId, DeploymentReport, UpdateOffer};

use super::verify::MetadataSource;
use crate::http::{bearer, Answer, HttpTransport};
use crate::transport::{Credential, TransportError};

/// Largest TUF metadata file the agent reads.
pub const MAX_METADATA: u64 = 16 << 20;

/// What the server said to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    Accepted,
    /// `409`: the server has canceled or ended the deployment.
    Ended,
}

/// Where a download writes.
pub trait WriteSeek: Write + Seek {}
impl<T: Write + Seek> WriteSeek for T {}

/// How a download went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// Whether the server honoured the range (otherwise the bytes were written from offset 0).
    pub honoured: bool,
    pub etag: Option<String>,
}

/// The server, as the update machinery needs it.
pub trait UpdateClient: MetadataSource + Send {
    /// The offered update, if any.
    fn next_offer(&mut self) -> Result<Option<UpdateOffer>, TransportError>;

    fn report(
        &mut self,
        deployment: DeploymentId,
        report: &DeploymentReport,
    ) -> Result<ReportOutcome, TransportError>;

    /// Downloads the TUF target `target` (with hash `sha256`, `length` bytes) into `out` from
    /// offset `from` (`etag` from the earlier attempt, for `If-Range`). `out` is positioned by the
    /// client: at `from` when the server honours the range, at 0 otherwise. Never writes past
    /// `length`. On an error, `out`'s position says how far it got.
    fn download(
        &mut self,
        target: &str,
        sha256: &str,
        length: u64,
        from: u64,
        etag: Option<&str>,
        out: &mut dyn WriteSeek,
    ) -> Result<Download, TransportError>;
}

/// [`UpdateClient`] over the HTTP device API.
pub struct HttpUpdateClient {
    http: HttpTransport,
    credential: Credential,
}

impl HttpUpdateClient {
    pub fn new(http: HttpTransport, credential: Credential) -> HttpUpdateClient {
        HttpUpdateClient { http, credential }
    }

    fn request(&self, path: &str) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        self.http
            .agent()
            .get(self.http.url(path))
            .header("authorization", bearer(&self.credential))
    }
}

/// The URL path of a target file: the sha256 prefixes the file name (consistent snapshots).
pub fn target_path(target: &str, sha256: &str) -> String {
    match target.rsplit_once('/') {
        Some((dir, name)) => format!("tuf/targets/{dir}/{sha256}.{name}"),
        None => format!("tuf/targets/{sha256}.{target}"),
    }
}

impl MetadataSource for HttpUpdateClient {
    fn fetch_metadata(&mut self, name: &str) -> Result<Option<Vec<u8>>, TransportError> {
        let mut response = self
            .request(&format!("tuf/{name}"))
            .call()
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if status != 200 {
            return Err(error_of(response));
        }
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_METADATA)
            .read_to_vec()
            .map_err(|e| TransportError::Unreachable(format!("reading {name}: {e}")))?;
        Ok(Some(bytes))
    }
}

impl UpdateClient for HttpUpdateClient {
    fn next_offer(&mut self) -> Result<Option<UpdateOffer>, TransportError> {
        let answer = self
            .http
            .get("deployments/next", &self.credential)?
            .success()?;
        if answer.status == 204 {
            return Ok(None);
        }
        answer.json().map(Some)
    }

    fn report(
        &mut self,
        deployment: DeploymentId,
        report: &DeploymentReport,
    ) -> Result<ReportOutcome, TransportError> {
        let path = format!("deployments/{deployment}/status");
        let answer = self.http.post(&path, Some(&self.credential), report)?;
        if answer.status == 409 {
            return Ok(ReportOutcome::Ended);
        }
        answer.success()?;
        Ok(ReportOutcome::Accepted)
    }

    fn download(
        &mut self,
        target: &str,
        sha256: &str,
        length: u64,
        from: u64,
        etag: Option<&str>,
        out: &mut dyn WriteSeek,
    ) -> Result<Download, TransportError> {
        let path = target_path(target, sha256);
        let timeout = self.http.timeout();
        let mut request = self.request(&path);
        if from > 0 {
            request = request.header("range", format!("bytes={from}-"));
            if let Some(etag) = etag {
                request = request.header("if-range", etag);
            }
        }
        // A large image takes longer than one request timeout: bound each read instead.
        let request = request
            .config()
            .timeout_global(None)
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout))
            .build();
        let mut response = request
            .call()
            .map_err(|e| TransportError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let etag_of = |response: &ureq::http::Response<ureq::Body>| {
            response
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let start = match status {
            206 => {
                let range = response
                    .headers()
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let first = range
                    .strip_prefix("bytes ")
                    .and_then(|r| r.split('-').next())
                    .and_then(|n| n.parse::<u64>().ok());
                if first != Some(from) {
                    return Err(TransportError::Protocol(format!(
                        "asked for bytes {from}- of {path}, got {range:?}"
                    )));
                }
                from
            }
            200 => 0,
            416 if from > 0 => {
                // The server has no such range (the file changed or shrank): start over.
                return self.download(target, sha256, length, 0, None, out);
            }
            _ => return Err(error_of(response)),
        };
        let etag = etag_of(&response);
        out.seek(SeekFrom::Start(start))
            .map_err(|e| TransportError::Protocol(format!("cannot write the download: {e}")))?;
        let remaining = length.saturating_sub(start);
        let mut body = response
            .body_mut()
            .with_config()
            .limit(remaining.saturating_add(1))
            .reader();
        copy(&mut body, out, remaining)?;
        let mut extra = [0u8; 1];
        if body.read(&mut extra).map(|n| n > 0).unwrap_or(false) {
            return Err(TransportError::Protocol(format!(
                "{path} is longer than its signed {length} bytes"
            )));
        }
        Ok(Download {
            honoured: start == from,
            etag,
        })
    }
}

/// Copies up to `limit` bytes; a short body is an error (the position shows the progress).
fn copy(body: &mut dyn Read, out: &mut dyn WriteSeek, limit: u64) -> Result<(), TransportError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = limit;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = body
            .read(&mut buf[..want])
            .map_err(|e| TransportError::Unreachable(format!("download interrupted: {e}")))?;
        if n == 0 {
            return Err(TransportError::Unreachable(format!(
                "download ended {left} bytes short"
            )));
        }
        out.write_all(&buf[..n])
            .map_err(|e| TransportError::Protocol(format!("cannot write the download: {e}")))?;
        left -= n as u64;
    }
    Ok(())
}

fn error_of(response: ureq::http::Response<ureq::Body>) -> TransportError {
    match Answer::read(Ok(response)).and_then(Answer::success) {
        Ok(answer) => TransportError::Protocol(format!("unexpected HTTP {}", answer.status)),
        Err(e) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_files_carry_their_hash_before_the_file_name() {
        assert_eq!(
            target_path("sensor-hub/1.3.0/firmware.img", "ab12"),
            "tuf/targets/sensor-hub/1.3.0/ab12.firmware.img"
        );
        assert_eq!(target_path("fw.img", "ab12"), "tuf/targets/ab12.fw.img");
    }
}
