//! The device API's update endpoints: the offered deployment, step reports, the TUF repository's
//! metadata and the target files (images and deltas) with range requests.
//!
//! Everything here needs the device credential. A device may download only the files of its own
//! unfinished deployment; any other target is a 404, whether or not it exists.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_proto::artifacts::DeploymentView;
use drover_proto::update::{DeploymentReport, TargetRef, UpdateOffer};

use crate::error::ApiError;
use crate::extract::{ApiJson, DeviceAuth};
use crate::routes::artifacts::parse_deployment;
use crate::routes::download;
use crate::AppState;

/// The update this device should install, or `204 No Content`.
#[utoipa::path(get, operation_id = "device_next_deployment", path = "/api/device/v1/deployments/next", tag = "device",
    responses((status = 200, body = UpdateOffer), (status = 204, description = "nothing to install"),
              (status = 401, body = drover_proto::error::ErrorBody)))]
pub async fn next(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
) -> Result<Response, ApiError> {
    match crate::ota::offer_for(&state, &device.id).await? {
        Some(offer) => Ok(Json(offer).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Reports a step of a deployment. `409` when the deployment is over (canceled, timed out or
/// already finished): the device abandons it.
#[utoipa::path(post, operation_id = "device_report_deployment", path = "/api/device/v1/deployments/{id}/status", tag = "device",
    params(("id" = i64, Path)), request_body = DeploymentReport,
    responses((status = 200, body = DeploymentView), (status = 404, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    Path(id): Path<String>,
    ApiJson(report): ApiJson<DeploymentReport>,
) -> Result<Json<DeploymentView>, ApiError> {
    let id = parse_deployment(&id)?;
    Ok(Json(
        crate::ota::report(&state, &device.id, id, report).await?,
    ))
}

/// A TUF metadata file: `timestamp.json`, `N.root.json`, `V.snapshot.json`, `V.targets.json`
/// (consistent snapshots), and `root.json` (the newest root, for bootstrapping a device).
#[utoipa::path(get, operation_id = "device_tuf_metadata", path = "/api/device/v1/tuf/{file}", tag = "device",
    params(("file" = String, Path)),
    responses((status = 200, content_type = "application/json"), (status = 404, body = drover_proto::error::ErrorBody)))]
pub async fn metadata(
    State(state): State<AppState>,
    DeviceAuth(_device): DeviceAuth,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found(format!("no TUF metadata file {file:?}"));
    let (role, version) = parse_metadata_name(&file).ok_or_else(missing)?;
    let body = match version {
        Some(version) => state.store.tuf_metadata(role, version).await?,
        None => state.store.latest_tuf_metadata(role).await?.map(|m| m.body),
    }
    .ok_or_else(missing)?;
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    // Versioned files never change; the timestamp (and the bootstrap root) must always be fresh.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if version.is_some() {
            "private, max-age=31536000, immutable"
        } else {
            "no-store"
        }),
    );
    Ok(response)
}

/// A target file by its consistent-snapshot path `<dir>/<sha256>.<name>`, with range requests.
#[utoipa::path(get, operation_id = "device_tuf_target", path = "/api/device/v1/tuf/targets/{path}", tag = "device",
    params(("path" = String, Path)),
    responses((status = 200, content_type = "application/octet-stream"), (status = 206), (status = 404, body = drover_proto::error::ErrorBody),
              (status = 416, body = drover_proto::error::ErrorBody)))]
pub async fn target(
    State(state): State<AppState>,
    DeviceAuth(device): DeviceAuth,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found(format!("no target {path:?} for this device"));
    let (target_path, hash) = split_hashed_path(&path).ok_or_else(missing)?;
    let file = state
        .store
        .target_file(&target_path)
        .await?
        .filter(|file| file.object.info.sha256 == hash)
        .ok_or_else(missing)?;
    // Per-device authorisation: only the artifact of the device's own unfinished deployment.
    // Checked on every (range) request, so one indexed lookup rather than the whole offer.
    if !state
        .store
        .may_download(&device.id, file.artifact_seq)
        .await?
    {
        return Err(missing());
    }
    let name = target_path.rsplit('/').next().unwrap_or("target");
    download::serve(&state.storage, &file.object, &headers, name).await
}

/// Builds the offer a device receives from the store's view of its deployment.
pub fn offer_body(offer: &drover_store::Offer) -> UpdateOffer {
    UpdateOffer {
        deployment: offer.deployment.id,
        image: TargetRef {
            target: offer.artifact.target_path.clone(),
            length: offer.artifact.image.info.size,
            sha256: offer.artifact.image.info.sha256.clone(),
        },
        delta: offer.delta.as_ref().map(|(object, path)| TargetRef {
            target: path.clone(),
            length: object.info.size,
            sha256: object.info.sha256.clone(),
        }),
        update_type: offer.deployment.update_type,
        attempt: offer.deployment.attempt,
    }
}

/// `timestamp.json` → (timestamp, latest); `7.root.json` → (root, 7).
fn parse_metadata_name(file: &str) -> Option<(&'static str, Option<i64>)> {
    let stem = file.strip_suffix(".json")?;
    let roles = ["root", "targets", "snapshot", "timestamp"];
    if let Some(role) = roles.iter().find(|r| **r == stem) {
        return matches!(*role, "timestamp" | "root").then_some((*role, None));
    }
    let (version, role) = stem.split_once('.')?;
    let role = roles.iter().find(|r| **r == role && **r != "timestamp")?;
    // Canonical numbers only: `01.root.json` is not a name the repository publishes.
    if version.starts_with('0') || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((*role, Some(version.parse().ok()?)))
}

/// `fw/1.0/<64 hex>.fw-1.0.img` → (`fw/1.0/fw-1.0.img`, hash).
fn split_hashed_path(path: &str) -> Option<(String, String)> {
    let (dir, file) = match path.rsplit_once('/') {
        Some((dir, file)) => (Some(dir), file),
        None => (None, path),
    };
    let (hash, name) = file.split_once('.')?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) || name.is_empty() {
        return None;
    }
    let target = match dir {
        Some(dir) => format!("{dir}/{name}"),
        None => name.to_owned(),
    };
    Some((target, hash.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_file_names_map_to_roles_and_versions() {
        assert_eq!(
            parse_metadata_name("timestamp.json"),
            Some(("timestamp", None))
        );
        assert_eq!(parse_metadata_name("root.json"), Some(("root", None)));
        assert_eq!(parse_metadata_name("3.root.json"), Some(("root", Some(3))));
        assert_eq!(
            parse_metadata_name("12.targets.json"),
            Some(("targets", Some(12)))
        );
        assert_eq!(
            parse_metadata_name("5.snapshot.json"),
            Some(("snapshot", Some(5)))
        );
        for bad in [
            "snapshot.json",
            "targets.json",
            "1.timestamp.json",
            "0.root.json",
            "-1.root.json",
            "01.root.json",
            "x.root.json",
            "root",
            "1.other.json",
        ] {
            assert_eq!(parse_metadata_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn hashed_target_paths_split_into_path_and_hash() {
        let hash = "a".repeat(64);
        assert_eq!(
            split_hashed_path(&format!("fw/1.0/{hash}.fw-1.0.img")),
            Some(("fw/1.0/fw-1.0.img".to_owned(), hash.clone()))
        );
        assert_eq!(split_hashed_path("fw/1.0/fw-1.0.img"), None);
        assert_eq!(split_hashed_path(&format!("fw/{hash}.")), None);
    }
}
