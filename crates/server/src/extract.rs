//! Request extractors that turn every malformed input into an [`ApiError`] with a precise message:
//! JSON bodies, query strings, path ids, operator tokens and device credentials.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use drover_proto::auth::Role;
use drover_store::TokenAuth;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// A JSON body whose rejection is an [`ApiError`].
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::unprocessable(format!(
            "invalid request body: {}",
            inner_message(&e.body_text())
        )),
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!(
                "request body is not valid JSON: {}",
                inner_message(&e.body_text())
            ),
        ),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) => {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "request body is too large",
                )
            } else {
                ApiError::bad_request(format!("cannot read request body: {}", e.body_text()))
            }
        }
        other => ApiError::bad_request(other.body_text()),
    }
}

/// serde's messages arrive wrapped ("Failed to deserialize …: <reason>"); keep the reason.
fn inner_message(text: &str) -> String {
    match text.split_once(": ") {
        Some((prefix, rest)) if prefix.starts_with("Failed to") => rest.to_owned(),
        _ => text.to_owned(),
    }
}

/// A query string whose rejection is an [`ApiError`].
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::bad_request(
                format!("invalid query string: {}", inner_message(&e.body_text())),
            )),
            Err(other) => Err(ApiError::bad_request(other.body_text())),
        }
    }
}

/// Parses a path segment into a validated id; a malformed id is a 400 naming the rule it broke.
pub fn parse_id<T, E: std::fmt::Display>(
    text: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, ApiError> {
    parse(text).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The bearer token of the request, if any.
fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not valid text"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// An authenticated operator. Handlers state the role they need with [`Operator::require`].
pub struct Operator(pub TokenAuth);

impl Operator {
    /// Fails with 403 unless the token's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<&TokenAuth, ApiError> {
        if self.0.role >= role {
            Ok(&self.0)
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {} role; token {} has {}",
                role.as_str(),
                self.0.id,
                self.0.role.as_str()
            )))
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = match bearer(parts)? {
            Some(token) => token,
            None => match crate::ui::session_cookie(&parts.headers) {
                Some(session) => {
                    crate::ui::check_csrf(parts)?;
                    session
                }
                None => {
                    return Err(ApiError::unauthorized(
                        "missing API token: send `Authorization: Bearer <token>` (or log in to the dashboard)",
                    ))
                }
            },
        };
        let now = crate::now();
        let auth = state.store.authenticate_token(token, now).await?;
        state.note_token_use(&auth, now);
        Ok(Operator(auth))
    }
}

/// An authenticated device (by its credential from provisioning).
pub struct DeviceAuth(pub drover_core::Device);

impl FromRequestParts<AppState> for DeviceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?.ok_or_else(|| {
            ApiError::unauthorized(
                "missing device credential: send `Authorization: Bearer <credential>`",
            )
        })?;
        Ok(DeviceAuth(state.store.authenticate_device(token).await?))
    }
}
