//! `/api/v1/artifacts` and `/api/v1/devices/{id}/deployments`: firmware uploads (streamed to the
//! object store), listing, downloads for operators, deletion, and single-device deployments.

use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use drover_core::{ArtifactName, DeviceId, Version};
use drover_proto::artifacts::{ArtifactMetadata, ArtifactView, DeploymentView, NewDeployment};
use drover_proto::auth::Role;
use drover_proto::update::DeploymentId;
use drover_proto::Page;
use drover_store::{NewArtifact, StoredObject};
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{parse_id, ApiJson, ApiQuery, Operator};
use crate::routes::download;
use crate::storage::Staged;
use crate::{now, AppState};

/// Largest `metadata` part of an upload.
const MAX_METADATA_BYTES: usize = 256 << 10;
/// Longest provenance field (commit, build id, CI URL).
const MAX_PROVENANCE_CHARS: usize = 512;

/// Uploads an artifact: `multipart/form-data` with a `metadata` part (JSON), then `image`, then
/// optionally `symbols` (an ELF file). The image streams to the object store while it is hashed;
/// nothing is recorded unless every part arrived and checked out.
#[utoipa::path(post, operation_id = "artifacts_upload", path = "/api/v1/artifacts", tag = "artifacts",
    request_body(content_type = "multipart/form-data", description = "parts: metadata (ArtifactMetadata JSON), image, symbols (optional ELF)"),
    responses((status = 201, body = ArtifactView), (status = 400, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody), (status = 413, body = drover_proto::error::ErrorBody),
              (status = 415, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    auth: Operator,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<ArtifactView>), ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the artifact as multipart/form-data with the parts metadata, image and optionally symbols ({})",
                e.body_text()
            ),
        )
    })?;
    let limit = state.config.max_artifact_bytes;

    let field = next_field(&mut multipart)
        .await?
        .ok_or_else(|| ApiError::bad_request("the upload is empty: send a metadata part first"))?;
    expect_name(&field, "metadata")?;
    let metadata = read_metadata(field).await?;
    state
        .store
        .check_new_artifact(&metadata.name, &metadata.version)
        .await?;

    let field = next_field(&mut multipart)
        .await?
        .ok_or_else(|| ApiError::bad_request("the upload has no image part after the metadata"))?;
    expect_name(&field, "image")?;
    let image = stage(&state, field, limit).await?;
    let mut staged = vec![image.clone()];
    let result = async {
        if image.size == 0 {
            return Err(ApiError::unprocessable("the image is empty"));
        }
        let mut symbols = None;
        while let Some(field) = next_field(&mut multipart).await? {
            match field.name() {
                Some("symbols") if symbols.is_none() => {
                    let file = stage(&state, field, limit).await?;
                    staged.push(file.clone());
                    if !file.head.starts_with(b"\x7fELF") {
                        return Err(ApiError::unprocessable(
                            "the symbols part is not an ELF file (it must start with \\x7fELF)",
                        ));
                    }
                    symbols = Some(file);
                }
                Some("symbols") => {
                    return Err(ApiError::bad_request("the upload has two symbols parts"))
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unexpected part {:?}: an upload has the parts metadata, image and optionally symbols",
                        other.unwrap_or("")
                    )))
                }
            }
        }
        Ok(symbols)
    }
    .await;
    let symbols = match result {
        Ok(symbols) => symbols,
        Err(e) => {
            discard(&state, &staged).await;
            return Err(e);
        }
    };

    // Content-addressed final keys; the staging copies go away in the move.
    let image_key = format!("images/{}", image.sha256);
    let symbols_key = symbols.as_ref().map(|s| format!("symbols/{}", s.sha256));
    let promoted = async {
        state.storage.promote(&image, &image_key).await?;
        if let (Some(file), Some(key)) = (&symbols, &symbols_key) {
            state.storage.promote(file, key).await?;
        }
        Ok::<_, crate::storage::StorageError>(())
    }
    .await;
    if let Err(e) = promoted {
        discard(&state, &staged).await;
        return Err(download::storage_error(e));
    }
    let target_path = target_path(&metadata.name, &metadata.version);
    let new = NewArtifact {
        metadata,
        image: StoredObject {
            key: image_key.clone(),
            info: drover_proto::artifacts::FileInfo {
                size: image.size,
                sha256: image.sha256.clone(),
            },
        },
        target_path,
        symbols: symbols
            .as_ref()
            .zip(symbols_key.clone())
            .map(|(file, key)| StoredObject {
                key,
                info: drover_proto::artifacts::FileInfo {
                    size: file.size,
                    sha256: file.sha256.clone(),
                },
            }),
    };
    let view = match state.store.insert_artifact(&actor, new, now()).await {
        Ok(view) => view,
        Err(e) => {
            // Another upload of the same version won the race: drop our copies unless the
            // winner uses the same bytes.
            for key in std::iter::once(image_key).chain(symbols_key) {
                if !state.store.object_in_use(&key).await.unwrap_or(true) {
                    let _ = state.storage.delete(&key).await;
                }
            }
            return Err(e.into());
        }
    };
    let view = crate::ota::artifact_added(&state, view).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// Query of the artifact list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only versions of this artifact.
    pub name: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// Lists artifacts, newest upload first.
#[utoipa::path(get, operation_id = "artifacts_list", path = "/api/v1/artifacts", tag = "artifacts", params(ListParams),
    responses((status = 200, body = Page<ArtifactView>), (status = 400, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Operator,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<ArtifactView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let name = params
        .name
        .as_deref()
        .map(|n| parse_id(n, ArtifactName::parse))
        .transpose()?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let cursor = params
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>().map_err(|_| {
                ApiError::bad_request("invalid cursor: pass next_cursor from the previous page")
            })
        })
        .transpose()?;
    Ok(Json(
        state
            .store
            .list_artifacts(name.as_ref(), cursor, limit)
            .await?,
    ))
}

/// Shows one artifact with its deltas.
#[utoipa::path(get, operation_id = "artifacts_get", path = "/api/v1/artifacts/{name}/{version}", tag = "artifacts",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = ArtifactView), (status = 404, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Operator,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ArtifactView>, ApiError> {
    auth.require(Role::Viewer)?;
    let (name, version) = ids(&name, &version)?;
    Ok(Json(state.store.get_artifact(&name, &version).await?))
}

/// Deletes an artifact, its deltas and its files; refused (409) while it is being deployed.
#[utoipa::path(delete, operation_id = "artifacts_delete", path = "/api/v1/artifacts/{name}/{version}", tag = "artifacts",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 204), (status = 404, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Operator,
    Path((name, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let (name, version) = ids(&name, &version)?;
    let unused = state
        .store
        .delete_artifact(&actor, &name, &version, now())
        .await?;
    crate::ota::artifact_removed(&state).await?;
    for key in unused {
        if let Err(e) = state.storage.delete(&key).await {
            tracing::warn!(error = %e, key, "could not delete an artifact file; it is no longer referenced");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Downloads an artifact's image (with range requests).
#[utoipa::path(get, operation_id = "artifacts_image", path = "/api/v1/artifacts/{name}/{version}/image", tag = "artifacts",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream"), (status = 206), (status = 404, body = drover_proto::error::ErrorBody),
              (status = 416, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn image(
    State(state): State<AppState>,
    auth: Operator,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth.require(Role::Viewer)?;
    let (name, version) = ids(&name, &version)?;
    let artifact = state.store.find_artifact(&name, &version).await?;
    download::serve(
        &state.storage,
        &artifact.image,
        &headers,
        &format!("{name}-{version}.img"),
    )
    .await
}

/// Downloads an artifact's debug-symbols file.
#[utoipa::path(get, operation_id = "artifacts_symbols", path = "/api/v1/artifacts/{name}/{version}/symbols", tag = "artifacts",
    params(("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream"), (status = 206), (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn symbols(
    State(state): State<AppState>,
    auth: Operator,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    auth.require(Role::Viewer)?;
    let (name, version) = ids(&name, &version)?;
    let object = state
        .store
        .artifact_symbols(&name, &version)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("artifact {name} {version} has no debug symbols"))
        })?;
    download::serve(
        &state.storage,
        &object,
        &headers,
        &format!("{name}-{version}.elf"),
    )
    .await
}

/// Deploys an artifact to one device.
#[utoipa::path(post, operation_id = "deployments_create", path = "/api/v1/devices/{id}/deployments", tag = "deployments",
    params(("id" = String, Path)), request_body = NewDeployment,
    responses((status = 201, body = DeploymentView), (status = 404, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_deployment(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    ApiJson(new): ApiJson<NewDeployment>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let device = parse_id(&id, DeviceId::parse)?;
    let view = state
        .store
        .create_deployment(&actor, &device, new, now())
        .await?;
    crate::ota::deployment_created(&state, &device).await;
    Ok((StatusCode::CREATED, Json(view)))
}

/// A device's deployments, newest first, each with its history.
#[utoipa::path(get, operation_id = "deployments_list", path = "/api/v1/devices/{id}/deployments", tag = "deployments",
    params(("id" = String, Path)),
    responses((status = 200, body = Vec<DeploymentView>), (status = 404, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list_deployments(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<Vec<DeploymentView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let device = parse_id(&id, DeviceId::parse)?;
    Ok(Json(state.store.device_deployments(&device, 100).await?))
}

/// Cancels a device's unfinished deployment.
#[utoipa::path(post, operation_id = "deployments_cancel", path = "/api/v1/devices/{id}/deployments/{deployment}/cancel", tag = "deployments",
    params(("id" = String, Path), ("deployment" = i64, Path)),
    responses((status = 200, body = DeploymentView), (status = 404, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel_deployment(
    State(state): State<AppState>,
    auth: Operator,
    Path((id, deployment)): Path<(String, String)>,
) -> Result<Json<DeploymentView>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let device = parse_id(&id, DeviceId::parse)?;
    let deployment = parse_deployment(&deployment)?;
    Ok(Json(
        state
            .store
            .cancel_deployment(&actor, &device, deployment, now())
            .await?,
    ))
}

/// Parses a deployment id from a path segment.
pub fn parse_deployment(text: &str) -> Result<DeploymentId, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .map(DeploymentId)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "invalid deployment id {text:?}: expected a positive number"
            ))
        })
}

/// The TUF target path of an artifact's image.
pub fn target_path(name: &ArtifactName, version: &Version) -> String {
    format!("{name}/{version}/{name}-{version}.img")
}

fn ids(name: &str, version: &str) -> Result<(ArtifactName, Version), ApiError> {
    Ok((
        parse_id(name, ArtifactName::parse)?,
        parse_id(version, Version::parse)?,
    ))
}

async fn next_field<'a>(multipart: &'a mut Multipart) -> Result<Option<Field<'a>>, ApiError> {
    multipart.next_field().await.map_err(|e| {
        ApiError::new(
            e.status(),
            "invalid_request",
            format!("malformed multipart upload: {}", e.body_text()),
        )
    })
}

fn expect_name(field: &Field<'_>, name: &str) -> Result<(), ApiError> {
    match field.name() {
        Some(n) if n == name => Ok(()),
        other => Err(ApiError::bad_request(format!(
            "expected the part {name:?} here, got {:?} (parts: metadata, image, optionally symbols, in that order)",
            other.unwrap_or("")
        ))),
    }
}

async fn read_metadata(mut field: Field<'_>) -> Result<ArtifactMetadata, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| {
        ApiError::new(
            e.status(),
            "invalid_request",
            format!("malformed multipart upload: {}", e.body_text()),
        )
    })? {
        text.extend_from_slice(&chunk);
        if text.len() > MAX_METADATA_BYTES {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the metadata part is larger than {MAX_METADATA_BYTES} bytes"),
            ));
        }
    }
    let metadata: ArtifactMetadata = serde_json::from_slice(&text)
        .map_err(|e| ApiError::unprocessable(format!("invalid artifact metadata: {e}")))?;
    if metadata.device_types.is_empty() {
        return Err(ApiError::unprocessable(
            "invalid artifact metadata: device_types must name at least one device type",
        ));
    }
    let provenance = &metadata.provenance;
    for (field, value) in [
        ("git_commit", &provenance.git_commit),
        ("build_id", &provenance.build_id),
        ("ci_url", &provenance.ci_url),
    ] {
        if let Some(value) = value {
            if value.is_empty()
                || value.chars().count() > MAX_PROVENANCE_CHARS
                || value.chars().any(char::is_control)
            {
                return Err(ApiError::unprocessable(format!(
                    "invalid artifact metadata: provenance.{field} must be 1-{MAX_PROVENANCE_CHARS} characters without control characters"
                )));
            }
        }
    }
    if let Some(url) = &provenance.ci_url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(ApiError::unprocessable(
                "invalid artifact metadata: provenance.ci_url must be an http(s) URL",
            ));
        }
    }
    if let Some(floor) = &metadata.security_floor {
        if *floor > metadata.version {
            return Err(ApiError::unprocessable(format!(
                "invalid artifact metadata: security_floor {floor} is above the artifact's own version {}",
                metadata.version
            )));
        }
    }
    Ok(metadata)
}

async fn stage(state: &AppState, field: Field<'_>, limit: u64) -> Result<Staged, ApiError> {
    let chunks = futures::stream::unfold(field, |mut field| async move {
        match field.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), field)),
            Ok(None) => None,
            Err(e) => Some((Err(e.body_text()), field)),
        }
    });
    state
        .storage
        .stage(Box::pin(chunks), limit)
        .await
        .map_err(download::storage_error)
}

async fn discard(state: &AppState, staged: &[Staged]) {
    for file in staged {
        if let Err(e) = state.storage.delete(&file.key).await {
            tracing::warn!(error = %e, key = file.key, "could not remove a staged upload");
        }
    }
}
