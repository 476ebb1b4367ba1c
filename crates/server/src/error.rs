//! The one error type of the HTTP layer: every failure becomes `{"error": {code, message, details}}`
//! with a 4xx that says what was wrong, or a 5xx that reveals nothing and logs the cause.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_core::shadow::ShadowError;
use drover_proto::error::{ErrorBody, ErrorDetail};
use drover_store::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<serde_json::Value>,
    /// Sent as `Retry-After` (seconds) with 429 / 503 answers.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after_secs: None,
        }
    }

    /// A 503 telling the client when to retry.
    pub fn busy(message: impl Into<String>, retry_after_secs: u64) -> ApiError {
        let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        error.retry_after_secs = Some(retry_after_secs);
        error
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A fleet query that does not parse: 400 with the column and a caret rendering.
    pub fn query(source: &str, err: &drover_core::query::QueryError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", err.to_string()).with_details(
            serde_json::json!({
                "column": err.column,
                "query": source,
                "pointer": err.render(source),
            }),
        )
    }

    /// A server-side failure: logged in full, answered with a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound { .. } => ApiError::not_found(e.to_string()),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Invalid(m) => ApiError::unprocessable(m),
            StoreError::Unauthorized(m) => ApiError::unauthorized(m),
            StoreError::Forbidden(m) => ApiError::forbidden(m),
            StoreError::Shadow(e) => e.into(),
            StoreError::Import(lines) => {
                let n = lines.len();
                let lines: Vec<_> = lines
                    .into_iter()
                    .take(100)
                    .map(|(line, message)| serde_json::json!({ "line": line, "message": message }))
                    .collect();
                let first = lines
                    .first()
                    .map(|l| {
                        format!(
                            ": line {}: {}",
                            l["line"],
                            l["message"].as_str().unwrap_or("")
                        )
                    })
                    .unwrap_or_default();
                ApiError::unprocessable(format!(
                    "import rejected, nothing was written; {n} line(s) have errors{first}"
                ))
                .with_details(serde_json::json!({ "lines": lines }))
            }
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; retry later",
                )
            }
            other @ (StoreError::Config(_)
            | StoreError::Corrupt(_)
            | StoreError::Backend(_)
            | StoreError::Interrupted) => ApiError::internal(other),
        }
    }
}

/// A refused shadow update: `409` for a version conflict (with the current version in the
/// details, so a client can re-read and retry), `413` for a section over the size limit, `422` for
/// any other well-formed but unacceptable update. The code is [`ShadowError::code`].
impl From<ShadowError> for ApiError {
    fn from(e: ShadowError) -> ApiError {
        let (status, details) = match &e {
            ShadowError::VersionConflict { expected, current } => (
                StatusCode::CONFLICT,
                Some(
                    serde_json::json!({ "expected_version": expected, "current_version": current }),
                ),
            ),
            ShadowError::TooLarge {
                section,
                bytes,
                max,
            } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(
                    serde_json::json!({ "section": section.as_str(), "bytes": bytes, "max_bytes": max }),
                ),
            ),
            ShadowError::TooDeep { section, path, max } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(
                    serde_json::json!({ "section": section.as_str(), "path": path, "max_depth": max }),
                ),
            ),
            ShadowError::InvalidKey {
                section, path, key, ..
            } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(serde_json::json!({ "section": section.as_str(), "path": path, "key": key })),
            ),
            ShadowError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, None),
        };
        let error = ApiError::new(status, e.code(), e.to_string());
        match details {
            Some(details) => error.with_details(details),
            None => error,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                details: self.details,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        response
            .extensions_mut()
            .insert(crate::metrics::ErrorCode(self.code));
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}
