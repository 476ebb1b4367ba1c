//! `/api/v1/tuf`: the TUF repository's administration. Operators read the current root, publish a
//! new root signed offline (`drover keys rotate-root`), and hand the server the private keys of the
//! online roles a new root names. Devices read the repository under `/api/device/v1/tuf/`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_proto::auth::Role;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::extract::{ApiJson, Operator};
use crate::tuf_repo::{self, RepoError};
use crate::{now, AppState};

/// `POST /api/v1/tuf/keys`: a private key for an online role.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnlineKey {
    /// `targets`, `snapshot` or `timestamp`.
    pub role: String,
    /// The key file's text (`drover keys generate`).
    pub key: String,
}

/// The answer to a key or root change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TufChange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_version: Option<u64>,
}

/// The newest root metadata, as devices receive it.
#[utoipa::path(get, operation_id = "tuf_root", path = "/api/v1/tuf/root", tag = "tuf",
    responses((status = 200, content_type = "application/json")), security(("bearer" = [])))]
pub async fn root(State(state): State<AppState>, auth: Operator) -> Result<Response, ApiError> {
    auth.require(Role::Viewer)?;
    let root = state
        .store
        .latest_tuf_metadata("root")
        .await?
        .ok_or_else(|| ApiError::internal("the TUF repository has no root"))?;
    let mut response = root.body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Publishes a new root version signed offline by the current root's keys and its own.
#[utoipa::path(post, operation_id = "tuf_publish_root", path = "/api/v1/tuf/root", tag = "tuf",
    request_body(content_type = "application/json", description = "the signed root metadata file"),
    responses((status = 200, body = TufChange), (status = 422, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn publish_root(
    State(state): State<AppState>,
    auth: Operator,
    body: Bytes,
) -> Result<Json<TufChange>, ApiError> {
    auth.require(Role::Admin)?;
    let version = tuf_repo::publish_root(&state.store, &state.config.tuf, &body, now())
        .await
        .map_err(repo_error)?;
    tracing::info!(version, "published a new TUF root");
    Ok(Json(TufChange {
        keyid: None,
        root_version: Some(version),
    }))
}

/// Stores the private key of an online role, ahead of a root that names it.
#[utoipa::path(post, operation_id = "tuf_add_key", path = "/api/v1/tuf/keys", tag = "tuf", request_body = OnlineKey,
    responses((status = 201, body = TufChange), (status = 422, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn add_key(
    State(state): State<AppState>,
    auth: Operator,
    ApiJson(key): ApiJson<OnlineKey>,
) -> Result<(StatusCode, Json<TufChange>), ApiError> {
    auth.require(Role::Admin)?;
    let keyid = tuf_repo::add_online_key(&state.store, &key.role, &key.key, now())
        .await
        .map_err(repo_error)?;
    Ok((
        StatusCode::CREATED,
        Json(TufChange {
            keyid: Some(keyid),
            root_version: None,
        }),
    ))
}

fn repo_error(e: RepoError) -> ApiError {
    match e {
        RepoError::Refused(message) => ApiError::unprocessable(message),
        RepoError::Store(e) => e.into(),
        other => ApiError::internal(other),
    }
}
