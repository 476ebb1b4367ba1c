//! `/api/v1/groups`: static and dynamic groups.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use drover_core::GroupName;
use drover_proto::auth::Role;
use drover_proto::devices::DeviceView;
use drover_proto::groups::{GroupPatch, GroupView, MembersChange, MembersChanged, NewGroup};
use drover_proto::Page;

use crate::error::ApiError;
use crate::extract::{parse_id, ApiJson, ApiQuery, Operator};
use crate::routes::devices::{parse_query, ListParams};
use crate::{now, AppState};

fn group_name(text: &str) -> Result<GroupName, ApiError> {
    parse_id(text, GroupName::parse)
}

/// Lists all groups.
#[utoipa::path(get, operation_id = "groups_list", path = "/api/v1/groups", tag = "groups", responses((status = 200, body = Vec<GroupView>)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Operator,
) -> Result<Json<Vec<GroupView>>, ApiError> {
    auth.require(Role::Viewer)?;
    Ok(Json(state.store.list_groups().await?))
}

/// Creates a static group, or a dynamic one when `query` is given.
#[utoipa::path(post, operation_id = "groups_create", path = "/api/v1/groups", tag = "groups", request_body = NewGroup,
    responses((status = 201, body = GroupView), (status = 400, body = drover_proto::error::ErrorBody),
              (status = 409, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    auth: Operator,
    ApiJson(new): ApiJson<NewGroup>,
) -> Result<(StatusCode, Json<GroupView>), ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    if let Some(query) = &new.query {
        parse_query(Some(query))?;
    }
    let mut group = state.store.create_group(&actor, new, now()).await?;
    group.member_count = Some(
        state
            .store
            .count_devices(&state.store.group_query(&group.name).await?, now())
            .await?,
    );
    Ok((StatusCode::CREATED, Json(group)))
}

/// Shows a group with its current member count.
#[utoipa::path(get, operation_id = "groups_get", path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 200, body = GroupView), (status = 404, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    auth: Operator,
    Path(name): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    auth.require(Role::Viewer)?;
    Ok(Json(
        state.store.get_group(&group_name(&name)?, now()).await?,
    ))
}

/// Changes a group's query (dynamic), parent (static) or description.
#[utoipa::path(patch, operation_id = "groups_update", path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)), request_body = GroupPatch,
    responses((status = 200, body = GroupView), (status = 404, body = drover_proto::error::ErrorBody),
              (status = 422, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    auth: Operator,
    Path(name): Path<String>,
    ApiJson(patch): ApiJson<GroupPatch>,
) -> Result<Json<GroupView>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    if let Some(query) = &patch.query {
        parse_query(Some(query))?;
    }
    Ok(Json(
        state
            .store
            .update_group(&actor, &group_name(&name)?, patch, now())
            .await?,
    ))
}

/// Deletes a group (its devices stay).
#[utoipa::path(delete, operation_id = "groups_delete", path = "/api/v1/groups/{name}", tag = "groups", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Operator,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    state
        .store
        .delete_group(&actor, &group_name(&name)?, now())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists a group's members, optionally narrowed by a further query.
#[utoipa::path(get, operation_id = "groups_devices", path = "/api/v1/groups/{name}/devices", tag = "groups", params(("name" = String, Path), ListParams),
    responses((status = 200, body = Page<DeviceView>), (status = 404, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn devices(
    State(state): State<AppState>,
    auth: Operator,
    Path(name): Path<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Page<DeviceView>>, ApiError> {
    auth.require(Role::Viewer)?;
    let members = state.store.group_query(&group_name(&name)?).await?;
    let narrowed = parse_query(params.q.as_deref())?;
    let query = if narrowed.is_all() {
        members
    } else {
        members.and(narrowed)
    };
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

/// Adds devices to a static group.
#[utoipa::path(post, operation_id = "groups_add_members", path = "/api/v1/groups/{name}/members", tag = "groups", params(("name" = String, Path)), request_body = MembersChange,
    responses((status = 200, body = MembersChanged), (status = 404, body = drover_proto::error::ErrorBody),
              (status = 422, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn add_members(
    State(state): State<AppState>,
    auth: Operator,
    Path(name): Path<String>,
    ApiJson(change): ApiJson<MembersChange>,
) -> Result<Json<MembersChanged>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let changed = state
        .store
        .add_group_members(&actor, &group_name(&name)?, change.device_ids, now())
        .await?;
    Ok(Json(MembersChanged { changed }))
}

/// Removes devices from a static group.
#[utoipa::path(delete, operation_id = "groups_remove_members", path = "/api/v1/groups/{name}/members", tag = "groups", params(("name" = String, Path)), request_body = MembersChange,
    responses((status = 200, body = MembersChanged), (status = 404, body = drover_proto::error::ErrorBody),
              (status = 422, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn remove_members(
    State(state): State<AppState>,
    auth: Operator,
    Path(name): Path<String>,
    ApiJson(change): ApiJson<MembersChange>,
) -> Result<Json<MembersChanged>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let changed = state
        .store
        .remove_group_members(&actor, &group_name(&name)?, change.device_ids, now())
        .await?;
    Ok(Json(MembersChanged { changed }))
}
