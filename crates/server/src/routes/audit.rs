//! `/api/v1/audit`: the audit log.

use axum::extract::State;
use axum::Json;
use drover_core::Timestamp;
use drover_proto::audit::AuditEntry;
use drover_proto::auth::Role;
use drover_proto::Page;
use drover_store::AuditFilter;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{ApiQuery, Operator};
use crate::AppState;

/// Audit log filters; all optional, combined with AND.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// `token:<id>`, `device:<id>` or `system`.
    pub actor: Option<String>,
    /// Exact action (`device.create`) or a prefix ending in `.` or `*` (`device.`).
    pub action: Option<String>,
    /// `device`, `group`, `claim`, `token` or `devices`.
    pub target_kind: Option<String>,
    pub target_id: Option<String>,
    /// RFC 3339; entries at or after.
    pub since: Option<String>,
    /// RFC 3339; entries before.
    pub until: Option<String>,
    /// 1–1000 (default 100).
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn time(name: &str, text: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    text.map(|t| {
        Timestamp::parse_rfc3339(t).map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
    })
    .transpose()
}

/// Reads the audit log, newest first.
#[utoipa::path(get, operation_id = "audit_list", path = "/api/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = Page<AuditEntry>), (status = 400, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    auth: Operator,
    ApiQuery(params): ApiQuery<AuditParams>,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    auth.require(Role::Viewer)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    let before_seq = params
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::bad_request("invalid cursor: pass next_cursor unchanged"))
        })
        .transpose()?;
    let filter = AuditFilter {
        actor: params.actor,
        action: params.action,
        target_kind: params.target_kind,
        target_id: params.target_id,
        since: time("since", params.since.as_deref())?,
        until: time("until", params.until.as_deref())?,
        before_seq,
        limit,
    };
    Ok(Json(state.store.list_audit(filter).await?))
}
