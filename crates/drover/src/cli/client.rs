//! The HTTP client of the admin API: builds `/api/v1/…` URLs (each path segment percent-encoded),
//! sends the bearer token, and turns every failure — no token, connection refused, an error body —
//! into a [`CliError`] whose kind decides the exit code.

use std::time::Duration;

use drover_proto::error::ErrorBody;
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::cli::{CliError, ClientOptions, ErrorKind};

/// Query-string parameters of a request.
pub type Params = Vec<(&'static str, String)>;

/// Most import line errors printed under an import error.
const MAX_LINE_NOTES: usize = 20;

/// A client for one server and one operator token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl Client {
    /// Checks the options: a token must be given and the server must be an http(s) URL.
    pub fn new(options: &ClientOptions) -> Result<Client, CliError> {
        let token = options
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                CliError::new(
                    ErrorKind::Auth,
                    "no API token: set DROVER_TOKEN or pass --token",
                )
            })?;
        let base = Url::parse(options.server.trim())
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && !url.cannot_be_a_base())
            .ok_or_else(|| {
                CliError::usage(format!(
                    "invalid server URL {:?}: expected http://HOST:PORT (set DROVER_SERVER or pass --server)",
                    options.server
                ))
            })?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("drover-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                CliError::new(
                    ErrorKind::Other,
                    format!("cannot set up the HTTP client: {e}"),
                )
            })?;
        Ok(Client {
            http,
            base,
            token: token.to_owned(),
        })
    }

    /// The server's base URL.
    pub fn server(&self) -> &Url {
        &self.base
    }

    /// The URL of `segments` under the server's base URL; each segment is percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        // `new` refused URLs that cannot be a base, so there are always path segments to extend.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `GET /api/v1/<path>?<params>`.
    pub async fn get(&self, path: &[&str], params: &Params) -> Result<Value, CliError> {
        self.send(self.request(Method::GET, path).query(params))
            .await
    }

    /// A request without a body, e.g. `POST /api/v1/devices/{id}/accept` or a `DELETE`.
    pub async fn call(&self, method: Method, path: &[&str]) -> Result<Value, CliError> {
        self.send(self.request(method, path)).await
    }

    /// A request with a JSON body.
    pub async fn call_json<B: Serialize>(
        &self,
        method: Method,
        path: &[&str],
        body: &B,
    ) -> Result<Value, CliError> {
        self.send(self.request(method, path).json(body)).await
    }

    /// A request with a JSON body whose answer the caller interprets, errors included (e.g. a
    /// 409 carrying a confirmation token): the status and the JSON body (`null` when empty).
    pub async fn call_json_status<B: Serialize>(
        &self,
        method: Method,
        path: &[&str],
        body: &B,
    ) -> Result<(StatusCode, Value), CliError> {
        let response = self
            .request(method, path)
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if text.trim().is_empty() {
            return Ok((status, Value::Null));
        }
        match serde_json::from_str(&text) {
            Ok(value) => Ok((status, value)),
            Err(_) if !status.is_success() => Err(http_error(status, &text)),
            Err(e) => Err(CliError::new(
                ErrorKind::Other,
                format!("unexpected response from {}: not JSON ({e})", self.base),
            )),
        }
    }

    /// A request with query parameters and, if given, a JSON body, e.g. `PATCH
    /// /api/v1/devices/{id}/shadow?name=config`.
    pub async fn call_with<B: Serialize>(
        &self,
        method: Method,
        path: &[&str],
        params: &Params,
        body: Option<&B>,
    ) -> Result<Value, CliError> {
        let mut request = self.request(method, path).query(params);
        if let Some(body) = body {
            request = request.json(body);
        }
        self.send(request).await
    }

    /// `POST /api/v1/<path>` with a streamed body of `content_type`.
    pub async fn upload(
        &self,
        path: &[&str],
        params: &Params,
        content_type: &str,
        body: reqwest::Body,
    ) -> Result<Value, CliError> {
        let request = self
            .request(Method::POST, path)
            .query(params)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.send(request).await
    }

    /// `POST /api/v1/<path>` with a `multipart/form-data` body (artifact uploads).
    pub async fn upload_form(
        &self,
        path: &[&str],
        form: reqwest::multipart::Form,
    ) -> Result<Value, CliError> {
        self.send(self.request(Method::POST, path).multipart(form))
            .await
    }

    /// `GET /api/v1/<path>` answered with a file: the response (200 or 206) to stream, or the
    /// failure as a [`CliError`]. `range_from` asks for the bytes from that offset on, guarded by
    /// `if_range` (the ETag of the partial file) so a changed file is sent whole.
    pub async fn download(
        &self,
        path: &[&str],
        range_from: Option<(u64, String)>,
    ) -> Result<reqwest::Response, CliError> {
        let mut request = self.request(Method::GET, path);
        if let Some((offset, etag)) = range_from {
            request = request
                .header(reqwest::header::RANGE, format!("bytes={offset}-"))
                .header(reqwest::header::IF_RANGE, etag);
        }
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() || status == StatusCode::RANGE_NOT_SATISFIABLE {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        Err(http_error(status, &text))
    }

    /// Maps a failure while reading a response body.
    pub fn body_error(&self, error: &reqwest::Error) -> CliError {
        self.transport_error(error)
    }

    fn request(&self, method: Method, path: &[&str]) -> RequestBuilder {
        let segments: Vec<&str> = ["api", "v1"]
            .into_iter()
            .chain(path.iter().copied())
            .collect();
        self.http
            .request(method, self.url(&segments))
            .bearer_auth(&self.token)
    }

    async fn send(&self, request: RequestBuilder) -> Result<Value, CliError> {
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if !status.is_success() {
            return Err(http_error(status, &text));
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            CliError::new(
                ErrorKind::Other,
                format!("unexpected response from {}: not JSON ({e})", self.base),
            )
        })
    }

    fn transport_error(&self, error: &reqwest::Error) -> CliError {
        let cause = root_cause(error);
        if error.is_connect() || error.is_timeout() {
            CliError::new(
                ErrorKind::Unavailable,
                format!(
                    "cannot reach the Drover server at {}: {cause}; `drover serve` may not be running there \
                     (point DROVER_SERVER or --server at it)",
                    self.base
                ),
            )
        } else if error.is_decode() {
            CliError::new(
                ErrorKind::Other,
                format!("unexpected response from {}: {cause}", self.base),
            )
        } else {
            CliError::new(
                ErrorKind::Unavailable,
                format!("the connection to {} failed: {cause}", self.base),
            )
        }
    }
}

/// Deserialises a response into the wire type a human rendering needs.
pub fn decode<T: DeserializeOwned>(value: Value) -> Result<T, CliError> {
    serde_json::from_value(value).map_err(|e| {
        CliError::new(
            ErrorKind::Other,
            format!("unexpected response from the server: {e}"),
        )
    })
}

/// Adds `name=value` to `params` when there is a value.
pub fn param(params: &mut Params, name: &'static str, value: Option<impl ToString>) {
    if let Some(value) = value {
        params.push((name, value.to_string()));
    }
}

/// Maps an HTTP error response to a [`CliError`]: the kind from the status, the message from the
/// error body, and notes from its details (a query caret, import line errors).
pub fn http_error(status: StatusCode, body: &str) -> CliError {
    let kind = match status.as_u16() {
        400 | 413 | 415 | 422 => ErrorKind::Usage,
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        500..=599 => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    };
    let Ok(ErrorBody { error }) = serde_json::from_str::<ErrorBody>(body) else {
        let snippet: String = body
            .trim()
            .chars()
            .take(200)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let message = if snippet.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {snippet}")
        };
        return CliError::new(kind, message);
    };
    let message = if status.is_server_error() {
        format!(
            "the server failed (HTTP {}): {}",
            status.as_u16(),
            error.message
        )
    } else {
        error.message
    };
    let mut cli_error = CliError::new(kind, message);
    if let Some(details) = &error.details {
        cli_error.notes = detail_notes(details);
        // The server's message repeats the first failing line, which the notes list anyway.
        if let Some(first) = cli_error
            .notes
            .iter()
            .find(|note| note.starts_with("  line "))
        {
            if let Some(summary) = cli_error.message.strip_suffix(first.trim_start()) {
                cli_error.message = format!("{}:", summary.trim_end_matches([':', ' ']));
            }
        }
    }
    cli_error
}

/// Context lines from an error's `details`: the caret rendering of a query error, and the first
/// failing lines of an import.
fn detail_notes(details: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(pointer) = details.get("pointer").and_then(Value::as_str) {
        notes.extend(pointer.lines().map(|line| format!("  {line}")));
    }
    if let Some(lines) = details.get("lines").and_then(Value::as_array) {
        for line in lines.iter().take(MAX_LINE_NOTES) {
            let number = line.get("line").and_then(Value::as_u64).unwrap_or(0);
            let message = line.get("message").and_then(Value::as_str).unwrap_or("");
            notes.push(format!("  line {number}: {message}"));
        }
        if lines.len() > MAX_LINE_NOTES {
            notes.push(format!("  … and {} more", lines.len() - MAX_LINE_NOTES));
        }
    }
    notes
}

/// The innermost cause of an error, which names the actual problem ("Connection refused").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server: &str) -> Client {
        Client::new(&ClientOptions {
            server: server.into(),
            token: Some("t".into()),
            json: false,
        })
        .unwrap()
    }

    #[test]
    fn statuses_map_to_exit_kinds() {
        for (status, kind) in [
            (400, ErrorKind::Usage),
            (413, ErrorKind::Usage),
            (415, ErrorKind::Usage),
            (422, ErrorKind::Usage),
            (401, ErrorKind::Auth),
            (403, ErrorKind::Auth),
            (404, ErrorKind::NotFound),
            (409, ErrorKind::Conflict),
            (500, ErrorKind::Unavailable),
            (503, ErrorKind::Unavailable),
            (429, ErrorKind::Other),
        ] {
            let body = r#"{"error":{"code":"x","message":"m"}}"#;
            assert_eq!(
                http_error(StatusCode::from_u16(status).unwrap(), body).kind,
                kind,
                "{status}"
            );
        }
    }

    #[test]
    fn query_errors_carry_the_caret_and_import_errors_their_lines() {
        let body = r#"{"error":{"code":"invalid_query","message":"expected a value at column 8",
            "details":{"column":8,"pointer":"site = \n       ^"}}}"#;
        let error = http_error(StatusCode::BAD_REQUEST, body);
        assert_eq!(
            error.to_string(),
            "error: expected a value at column 8\n  site = \n         ^"
        );

        let one = serde_json::json!({ "error": { "code": "invalid_request",
            "message": "import rejected, nothing was written; 1 line(s) have errors: line 3: bad id",
            "details": { "lines": [{ "line": 3, "message": "bad id" }] } } });
        let error = http_error(StatusCode::UNPROCESSABLE_ENTITY, &one.to_string());
        assert_eq!(
            error.to_string(),
            "error: import rejected, nothing was written; 1 line(s) have errors:\n  line 3: bad id"
        );

        let lines: Vec<Value> = (1..=25)
            .map(|n| serde_json::json!({ "line": n, "message": "bad" }))
            .collect();
        let body = serde_json::json!({ "error": { "code": "invalid_request", "message": "import rejected", "details": { "lines": lines } } });
        let error = http_error(StatusCode::UNPROCESSABLE_ENTITY, &body.to_string());
        assert_eq!(error.message, "import rejected");
        assert_eq!(error.notes.len(), 21);
        assert_eq!(error.notes[0], "  line 1: bad");
        assert_eq!(error.notes[20], "  … and 5 more");
    }

    #[test]
    fn bodies_that_are_not_drover_errors_are_quoted() {
        let error = http_error(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>\n");
        assert_eq!(error.kind, ErrorKind::Unavailable);
        assert_eq!(
            error.message,
            "HTTP 502 Bad Gateway: <html>bad gateway</html>"
        );
    }

    #[test]
    fn path_segments_are_percent_encoded_under_the_base_path() {
        assert_eq!(
            client("http://h:1")
                .url(&["api", "v1", "devices", "a b/c"])
                .as_str(),
            "http://h:1/api/v1/devices/a%20b%2Fc"
        );
        assert_eq!(
            client("http://h:1/drover/").url(&["api"]).as_str(),
            "http://h:1/drover/api"
        );
    }

    #[test]
    fn a_missing_token_or_bad_server_url_is_refused_before_any_request() {
        let no_token = Client::new(&ClientOptions {
            server: "http://h".into(),
            token: Some(" ".into()),
            json: false,
        })
        .unwrap_err();
        assert_eq!(no_token.kind, ErrorKind::Auth);
        assert!(no_token
            .message
            .contains("set DROVER_TOKEN or pass --token"));
        let bad_url = Client::new(&ClientOptions {
            server: "localhost:8080".into(),
            token: Some("t".into()),
            json: false,
        })
        .unwrap_err();
        assert_eq!(bad_url.kind, ErrorKind::Usage);
    }
}
