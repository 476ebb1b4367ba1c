//! `/api/v1/devices`: the device registry.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use drover_core::query::Query;
use drover_core::DeviceId;
use drover_proto::auth::Role;
use drover_proto::devices::{
    BulkUpdate, BulkUpdateResult, ConnectivityChangeView, ConnectivityView, CreatedDevice,
    DeviceCredential, DeviceGroups, DevicePatch, DeviceSort, DeviceView, HealthSampleView,
    HealthView, ImportResult, NewDevice, OnConflict, SortOrder,
};
use drover_proto::{Count, Page};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{parse_id, ApiJson, ApiQuery, Operator};
use crate::{now, AppState};

/// Parses a fleet query from a request, with a 400 that points at the error.
pub(crate) fn parse_query(text: Option<&str>) -> Result<Query, ApiError> {
    let text = text.unwrap_or("");
    Query::parse(text).map_err(|e| ApiError::query(text, &e))
}

pub(crate) fn device_id(text: &str) -> Result<DeviceId, ApiError> {
    parse_id(text, DeviceId::parse)
}

/// Paging and filtering for device lists.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Fleet query (see docs/query-language.md); all devices when absent.
    pub q: Option<String>,
    /// `id` (default), `created_at`, `updated_at`, `last_seen` or `firmware` (semantic order).
    pub sort: Option<String>,
    /// `asc` (default) or `desc`.
    pub order: Option<String>,
    /// Page size, 1–1000 (default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListParams {
    pub(crate) fn sort(&self) -> Result<(DeviceSort, SortOrder, usize), ApiError> {
        let sort = self
            .sort
            .as_deref()
            .map(DeviceSort::parse)
            .transpose()
            .map_err(ApiError::bad_request)?
            .unwrap_or_default();
        let order = match self.order.as_deref() {
            None | Some("asc") => SortOrder::Asc,
            Some("desc") => SortOrder::Desc,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "unknown order {other:?} (expected asc or desc)"
                )))
            }
        };
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and 1000, not {limit}"
            )));
        }
        Ok((sort, order, limit))
    }
}

/// Lists devices matching a fleet query, one page at a time.
#[utoipa::path(get, operation_id = "devices_list", path = "/api/v1/devices", tag = "devices", params(ListParams),
    responses((status = 200, body = Page<DeviceView>), (status = 400, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Operator,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<DeviceView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let query = parse_query(params.q.as_deref())?;
    let (sort, order, limit) = params.sort()?;
    let page = state
        .store
        .list_devices(&query, sort, order, params.cursor.as_deref(), limit, now())
        .await?;
    Ok(Json(Page {
        items: page.items.into_iter().map(DeviceView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Query-only parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    /// Fleet query; all devices when absent.
    pub q: Option<String>,
}

/// Counts devices matching a fleet query.
#[utoipa::path(get, operation_id = "devices_count", path = "/api/v1/devices/count", tag = "devices", params(QueryParams),
    responses((status = 200, body = Count), (status = 400, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn count(
    State(state): State<AppState>,
    auth: Operator,
    ApiQuery(params): ApiQuery<QueryParams>,
) -> Result<Json<Count>, ApiError> {
    auth.require(Role::Viewer)?;
    let query = parse_query(params.q.as_deref())?;
    Ok(Json(Count {
        count: state.store.count_devices(&query, now()).await?,
    }))
}

/// Registers a device (pre-authorised by default).
#[utoipa::path(post, operation_id = "devices_create", path = "/api/v1/devices", tag = "devices", request_body = NewDevice,
    responses((status = 201, body = CreatedDevice), (status = 409, body = drover_proto::error::ErrorBody),
              (status = 422, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Operator,
    ApiJson(new): ApiJson<NewDevice>,
) -> Result<(StatusCode, Json<CreatedDevice>), ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let (device, credential) = state.store.create_device(&actor, new, now()).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedDevice {
            device: device.into(),
            credential,
        }),
    ))
}

/// Shows one device.
#[utoipa::path(get, operation_id = "devices_get", path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    auth.require(Role::Viewer)?;
    let id = device_id(&id)?;
    Ok(Json(state.store.get_device(&id).await?.into()))
}

/// Changes a device's attributes and tags (`null` clears a field or removes a tag).
#[utoipa::path(patch, operation_id = "devices_update", path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path)), request_body = DevicePatch,
    responses((status = 200, body = DeviceView), (status = 404, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<DevicePatch>,
) -> Result<Json<DeviceView>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let id = device_id(&id)?;
    Ok(Json(
        state
            .store
            .update_device(&actor, &id, patch, now())
            .await?
            .into(),
    ))
}

/// Deletes a device and its tags, memberships and credentials (its audit history stays).
#[utoipa::path(delete, operation_id = "devices_delete", path = "/api/v1/devices/{id}", tag = "devices", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = auth.require(Role::Admin)?.actor();
    let id = device_id(&id)?;
    state.store.delete_device(&actor, &id, now()).await?;
    state.credentials_revoked(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Decommissions a device: revokes its credentials, keeps its history and frees its hardware id.
#[utoipa::path(post, operation_id = "devices_decommission", path = "/api/v1/devices/{id}/decommission", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 404, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn decommission(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let id = device_id(&id)?;
    let device = state.store.decommission_device(&actor, &id, now()).await?;
    state.credentials_revoked(&id);
    Ok(Json(device.into()))
}

/// Accepts a pending device; it then fetches its credential with its nonce.
#[utoipa::path(post, operation_id = "devices_accept", path = "/api/v1/devices/{id}/accept", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 422, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn accept(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let id = device_id(&id)?;
    Ok(Json(
        state.store.accept_device(&actor, &id, now()).await?.into(),
    ))
}

/// Rejects a pending device.
#[utoipa::path(post, operation_id = "devices_reject", path = "/api/v1/devices/{id}/reject", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceView), (status = 422, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn reject(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let id = device_id(&id)?;
    Ok(Json(
        state.store.reject_device(&actor, &id, now()).await?.into(),
    ))
}

/// Issues a new credential for a device, revoking the old one.
#[utoipa::path(post, operation_id = "devices_rotate_credential", path = "/api/v1/devices/{id}/credentials", tag = "devices", params(("id" = String, Path)),
    responses((status = 201, body = DeviceCredential), (status = 404, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn rotate_credential(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<DeviceCredential>), ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let id = device_id(&id)?;
    let credential = state.store.rotate_credential(&actor, &id, now()).await?;
    // The old credential no longer holds: its connections end; the device logs in with the new one.
    state.credentials_revoked(&id);
    Ok((
        StatusCode::CREATED,
        Json(DeviceCredential {
            device_id: id.into_string(),
            credential,
        }),
    ))
}

/// Revokes all of a device's credentials.
#[utoipa::path(delete, operation_id = "devices_revoke_credentials", path = "/api/v1/devices/{id}/credentials", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = Count), (status = 404, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn revoke_credentials(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<Count>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let id = device_id(&id)?;
    let count = state.store.revoke_credentials(&actor, &id, now()).await?;
    state.credentials_revoked(&id);
    Ok(Json(Count { count }))
}

/// Lists the static and dynamic groups a device belongs to right now.
#[utoipa::path(get, operation_id = "devices_groups", path = "/api/v1/devices/{id}/groups", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = DeviceGroups), (status = 404, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn groups(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<DeviceGroups>, ApiError> {
    auth.require(Role::Viewer)?;
    let id = device_id(&id)?;
    let groups = state.store.device_groups(&id, now()).await?;
    Ok(Json(DeviceGroups {
        groups: groups.into_iter().map(|g| g.into_string()).collect(),
    }))
}

/// Applies one change to every device matching a fleet query.
#[utoipa::path(post, operation_id = "devices_bulk_update", path = "/api/v1/devices/bulk-update", tag = "devices", request_body = BulkUpdate,
    responses((status = 200, body = BulkUpdateResult), (status = 400, body = drover_proto::error::ErrorBody),
              (status = 422, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn bulk_update(
    State(state): State<AppState>,
    auth: Operator,
    ApiJson(body): ApiJson<BulkUpdate>,
) -> Result<Json<BulkUpdateResult>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let query = parse_query(Some(&body.query))?;
    let (matched, updated) = state
        .store
        .bulk_update_devices(&actor, &query, body.set, now())
        .await?;
    if updated as usize >= crate::fleet_rollups::WAKE_AFTER {
        state.fleet_changed.notify_one();
    }
    Ok(Json(BulkUpdateResult { matched, updated }))
}

/// Import options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// `csv` or `jsonl`; otherwise taken from Content-Type (`text/csv`, `application/x-ndjson`).
    pub format: Option<String>,
    /// `error` (default), `skip` or `update` for rows whose device id exists.
    pub on_conflict: Option<OnConflict>,
}

/// Imports devices from CSV or JSON lines, all or nothing.
///
/// CSV needs a header row; columns are `id, device_type, hw_id, hw_rev, site, region, status,
/// firmware, preauth_secret` and `tags.<key>` for each tag (empty cells are absent). JSON lines have
/// one `NewDevice` object per line. Any invalid line rejects the whole import with per-line errors.
#[utoipa::path(post, operation_id = "devices_import", path = "/api/v1/devices/import", tag = "devices", params(ImportParams),
    request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = ImportResult), (status = 413, body = drover_proto::error::ErrorBody),
              (status = 415, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn import(
    State(state): State<AppState>,
    auth: Operator,
    ApiQuery(params): ApiQuery<ImportParams>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<ImportResult>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let format = crate::import::Format::choose(params.format.as_deref(), &headers)?;
    let result = crate::import::run(
        &state.store,
        &actor,
        format,
        params.on_conflict.unwrap_or_default(),
        body,
        state.config.max_import_bytes,
    )
    .await?;
    if (result.created + result.updated) as usize >= crate::fleet_rollups::WAKE_AFTER {
        state.fleet_changed.notify_one();
    }
    Ok(Json(result))
}

/// The latest health a device reported (404 if it never sent a heartbeat).
#[utoipa::path(get, operation_id = "devices_health", path = "/api/v1/devices/{id}/health", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = HealthView), (status = 404, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn health(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<HealthView>, ApiError> {
    auth.require(Role::Viewer)?;
    let id = device_id(&id)?;
    // Distinguish an unknown device from one that has not reported yet.
    state.store.get_device(&id).await?;
    let health =
        state.store.device_health(&id).await?.ok_or_else(|| {
            ApiError::not_found(format!("device {id} has not sent a heartbeat yet"))
        })?;
    Ok(Json(HealthView {
        observed_at: health.observed_at,
        received_at: health.received_at,
        boot_slot: health.boot_slot,
        metrics: health.metrics,
    }))
}

/// Query parameters of the raw health samples endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SamplesParams {
    /// How far back, such as `6h` or `7d` (default `24h`, at most `90d`).
    pub since: Option<String>,
    /// At most this many samples, the newest ones (1–5000, default 2000).
    pub limit: Option<usize>,
}

/// A device's raw heartbeat samples, oldest first, for its health charts. Samples older than the
/// server's `sample_retention` have been pruned.
#[utoipa::path(get, operation_id = "devices_health_samples", path = "/api/v1/devices/{id}/health/samples", tag = "devices",
    params(("id" = String, Path), SamplesParams),
    responses((status = 200, body = Vec<HealthSampleView>), (status = 400, body = drover_proto::error::ErrorBody), (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn health_samples(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<SamplesParams>,
) -> Result<Json<Vec<HealthSampleView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let id = device_id(&id)?;
    let since = match params.since.as_deref() {
        None => drover_core::Duration::from_secs(24 * 3600),
        Some(text) => drover_core::Duration::parse(text)
            .map_err(|e| ApiError::bad_request(format!("invalid since: {e}")))?,
    };
    if since > drover_core::Duration::from_secs(90 * 24 * 3600) {
        return Err(ApiError::bad_request("since must be at most 90d"));
    }
    let limit = params.limit.unwrap_or(2000);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 5000, not {limit}"
        )));
    }
    state.store.get_device(&id).await?;
    let from = now().saturating_add(since.neg());
    let samples = state.store.health_samples(&id, from, limit).await?;
    Ok(Json(
        samples
            .into_iter()
            .map(|s| HealthSampleView {
                observed_at: s.observed_at,
                metrics: s.metrics,
            })
            .collect(),
    ))
}

/// How many connectivity changes the connectivity endpoint returns when not told.
const DEFAULT_HISTORY: usize = 20;
const MAX_HISTORY: usize = 1000;

/// Query parameters of the connectivity endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// How many changes to return, newest first (1–1000, default 20).
    pub limit: Option<usize>,
}

/// A device's connectivity state, link score and recent changes.
#[utoipa::path(get, operation_id = "devices_connectivity", path = "/api/v1/devices/{id}/connectivity", tag = "devices",
    params(("id" = String, Path), HistoryParams),
    responses((status = 200, body = ConnectivityView), (status = 400, body = drover_proto::error::ErrorBody), (status = 404, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn connectivity(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Result<Json<ConnectivityView>, ApiError> {
    auth.require(Role::Viewer)?;
    let id = device_id(&id)?;
    let limit = params.limit.unwrap_or(DEFAULT_HISTORY);
    if !(1..=MAX_HISTORY).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_HISTORY}, got {limit}"
        )));
    }
    let device = state.store.get_device(&id).await?;
    let history = state.store.connectivity_history(&id, limit).await?;
    Ok(Json(ConnectivityView {
        state: device.connectivity,
        link_score: device.link_score,
        history: history
            .into_iter()
            .map(|c| ConnectivityChangeView {
                at: c.at,
                from: c.from,
                to: c.to,
            })
            .collect(),
    }))
}
