//! The HTTP routes: admin API, device API, health and metrics, with the shared middleware.

pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod device_api;
pub mod devices;
pub mod diagnostics;
pub mod download;
pub mod fleet;
pub mod groups;
pub mod health;
pub mod jobs;
pub mod ops;
pub mod rollouts;
pub mod shadow;
pub mod tuf;
pub mod updates;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use tower_http::trace::TraceLayer;

use drover_proto::QueryCheck;

use crate::error::ApiError;
use crate::AppState;

/// Builds the full router around `state`.
pub fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let max_import = state.config.max_import_bytes;
    // An upload carries an image and a symbols file, each up to the artifact limit.
    let max_upload = usize::try_from(
        state
            .config
            .max_artifact_bytes
            .saturating_mul(2)
            .saturating_add(1 << 20),
    )
    .unwrap_or(usize::MAX);
    // Shadow updates are refused before parsing when far larger than any valid update can be.
    let max_shadow = shadow::max_update_bytes();
    let admin = Router::new()
        .route("/devices", get(devices::list).post(devices::create))
        .route("/devices/count", get(devices::count))
        .route("/devices/bulk-update", post(devices::bulk_update))
        .route(
            "/devices/import",
            // The import streams its body and enforces its own, larger limit.
            post(devices::import).layer(DefaultBodyLimit::max(max_import)),
        )
        .route(
            "/devices/{id}",
            get(devices::get)
                .patch(devices::update)
                .delete(devices::delete),
        )
        .route("/devices/{id}/decommission", post(devices::decommission))
        .route("/devices/{id}/accept", post(devices::accept))
        .route("/devices/{id}/reject", post(devices::reject))
        .route(
            "/devices/{id}/credentials",
            post(devices::rotate_credential).delete(devices::revoke_credentials),
        )
        .route("/devices/{id}/groups", get(devices::groups))
        .route("/devices/{id}/health", get(devices::health))
        .route("/devices/{id}/health/samples", get(devices::health_samples))
        .route("/devices/{id}/connectivity", get(devices::connectivity))
        .route("/health/rollups", get(health::rollups))
        .route(
            "/devices/{id}/shadow",
            get(shadow::get)
                .patch(shadow::update)
                .delete(shadow::delete)
                .layer(DefaultBodyLimit::max(max_shadow)),
        )
        .route("/devices/{id}/shadows", get(shadow::list))
        .route(
            "/devices/{id}/deployments",
            get(artifacts::list_deployments).post(artifacts::create_deployment),
        )
        .route(
            "/devices/{id}/deployments/{deployment}/cancel",
            post(artifacts::cancel_deployment),
        )
        .route("/devices/{id}/diagnostics", post(diagnostics::request))
        .route("/jobs", get(jobs::list).post(jobs::create))
        .route("/jobs/{id}", get(jobs::get))
        .route("/jobs/{id}/executions", get(jobs::executions))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/fleet/overview", get(fleet::overview))
        .route("/fleet/versions", get(fleet::versions))
        .route("/rollouts", get(rollouts::list).post(rollouts::create))
        .route("/rollouts/{id}", get(rollouts::get))
        .route("/rollouts/{id}/decisions", get(rollouts::decisions))
        .route("/rollouts/{id}/devices", get(rollouts::devices))
        .route("/rollouts/{id}/pause", post(rollouts::pause))
        .route("/rollouts/{id}/resume", post(rollouts::resume))
        .route("/rollouts/{id}/approve", post(rollouts::approve))
        .route("/rollouts/{id}/abort", post(rollouts::abort))
        .route("/rollouts/{id}/rollback", post(rollouts::rollback))
        .route(
            "/artifacts",
            get(artifacts::list)
                .post(artifacts::upload)
                .layer(DefaultBodyLimit::max(max_upload)),
        )
        .route(
            "/artifacts/{name}/{version}",
            get(artifacts::get).delete(artifacts::delete),
        )
        .route("/artifacts/{name}/{version}/image", get(artifacts::image))
        .route("/tuf/root", get(tuf::root).post(tuf::publish_root))
        .route("/tuf/keys", post(tuf::add_key))
        .route(
            "/artifacts/{name}/{version}/symbols",
            get(artifacts::symbols),
        )
        .route("/groups", get(groups::list).post(groups::create))
        .route(
            "/groups/{name}",
            get(groups::get)
                .patch(groups::update)
                .delete(groups::delete),
        )
        .route("/groups/{name}/devices", get(groups::devices))
        .route(
            "/groups/{name}/members",
            post(groups::add_members).delete(groups::remove_members),
        )
        .route("/claims", get(auth::list_claims).post(auth::create_claim))
        .route(
            "/claims/{id}",
            get(auth::get_claim).delete(auth::revoke_claim),
        )
        .route("/tokens", get(auth::list_tokens).post(auth::create_token))
        .route("/tokens/{id}", axum::routing::delete(auth::revoke_token))
        .route("/whoami", get(auth::whoami))
        .route("/audit", get(audit::list))
        .route("/query/check", get(check_query))
        .route("/openapi.json", get(openapi));
    let device = Router::new()
        .route("/provision", post(device_api::provision))
        .route("/whoami", get(device_api::whoami))
        .route("/heartbeat", post(device_api::heartbeat))
        .route("/heartbeats", post(device_api::heartbeats))
        .route(
            "/shadow",
            get(shadow::device_get)
                .post(shadow::device_update)
                .layer(DefaultBodyLimit::max(max_shadow)),
        )
        .route("/shadow/delta", get(shadow::device_delta))
        .route("/jobs/next", get(jobs::device_next))
        .route("/jobs/{execution}/status", post(jobs::device_report))
        .route("/diagnostics/next", get(diagnostics::device_next))
        .route(
            "/diagnostics/{request_id}",
            post(diagnostics::device_answer),
        )
        .route("/deployments/next", get(updates::next))
        .route("/deployments/{id}/status", post(updates::report))
        .route("/tuf/{file}", get(updates::metadata))
        .route("/tuf/targets/{*path}", get(updates::target));
    Router::new()
        .nest("/api/v1", admin)
        .nest("/api/device/v1", device)
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(crate::ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(reject_nul))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(TraceLayer::new_for_http())
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}

/// Checks a fleet query without running it.
#[utoipa::path(get, operation_id = "check_query", path = "/api/v1/query/check", tag = "devices", params(devices::QueryParams),
    responses((status = 200, body = QueryCheck), (status = 400, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn check_query(
    _auth: crate::extract::Operator,
    crate::extract::ApiQuery(params): crate::extract::ApiQuery<devices::QueryParams>,
) -> Result<Json<QueryCheck>, ApiError> {
    let query = devices::parse_query(params.q.as_deref())?;
    Ok(Json(QueryCheck {
        canonical: query.to_string(),
    }))
}

/// Refuses URLs carrying an encoded NUL character: no identifier or filter may contain one, and
/// PostgreSQL text cannot store one, so it would otherwise surface as a database error.
async fn reject_nul(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = request.uri();
    let has_nul = |text: &str| text.to_ascii_lowercase().contains("%00");
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        return ApiError::bad_request("the URL contains a NUL character (%00)").into_response();
    }
    next.run(request).await
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not supported on {}", uri.path()),
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    ApiError::internal("handler panicked").into_response()
}
