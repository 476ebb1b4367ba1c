//! `/api/v1/tokens`, `/api/v1/claims` and `/api/v1/whoami`: operator tokens and claim tokens.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use drover_proto::auth::{
    ClaimView, CreatedClaim, CreatedToken, NewClaim, NewToken, Role, TokenView, WhoAmI,
};

use crate::error::ApiError;
use crate::extract::{ApiJson, Operator};
use crate::{now, AppState};

/// Shows which token the request was made with.
#[utoipa::path(get, operation_id = "auth_whoami", path = "/api/v1/whoami", tag = "auth", responses((status = 200, body = WhoAmI), (status = 401, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn whoami(auth: Operator) -> Json<WhoAmI> {
    Json(WhoAmI {
        token_id: auth.0.id.clone(),
        name: auth.0.name.clone(),
        role: auth.0.role,
    })
}

/// Lists operator tokens (never their secrets).
#[utoipa::path(get, operation_id = "auth_list_tokens", path = "/api/v1/tokens", tag = "auth", responses((status = 200, body = Vec<TokenView>), (status = 403, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    auth: Operator,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    auth.require(Role::Admin)?;
    Ok(Json(state.store.list_tokens().await?))
}

/// Creates an operator token; its secret is in the response only.
#[utoipa::path(post, operation_id = "auth_create_token", path = "/api/v1/tokens", tag = "auth", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 403, body = drover_proto::error::ErrorBody), (status = 422, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    auth: Operator,
    ApiJson(new): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let actor = auth.require(Role::Admin)?.actor();
    let (token, secret) = state.store.create_token(&actor, new, now()).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, secret })))
}

/// Revokes an operator token at once.
#[utoipa::path(delete, operation_id = "auth_revoke_token", path = "/api/v1/tokens/{id}", tag = "auth", params(("id" = String, Path)),
    responses((status = 200, body = TokenView), (status = 404, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let actor = auth.require(Role::Admin)?.actor();
    Ok(Json(state.store.revoke_token(&actor, &id, now()).await?))
}

/// Lists claim tokens (never their secrets).
#[utoipa::path(get, operation_id = "auth_list_claims", path = "/api/v1/claims", tag = "auth", responses((status = 200, body = Vec<ClaimView>)), security(("bearer" = [])))]
pub async fn list_claims(
    State(state): State<AppState>,
    auth: Operator,
) -> Result<Json<Vec<ClaimView>>, ApiError> {
    auth.require(Role::Viewer)?;
    Ok(Json(state.store.list_claims().await?))
}

/// Creates a claim token that lets devices provision themselves; its secret is in the response only.
#[utoipa::path(post, operation_id = "auth_create_claim", path = "/api/v1/claims", tag = "auth", request_body = NewClaim,
    responses((status = 201, body = CreatedClaim), (status = 422, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn create_claim(
    State(state): State<AppState>,
    auth: Operator,
    ApiJson(new): ApiJson<NewClaim>,
) -> Result<(StatusCode, Json<CreatedClaim>), ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    let (claim, token) = state.store.create_claim(&actor, new, now()).await?;
    Ok((StatusCode::CREATED, Json(CreatedClaim { claim, token })))
}

/// Shows a claim token.
#[utoipa::path(get, operation_id = "auth_get_claim", path = "/api/v1/claims/{id}", tag = "auth", params(("id" = String, Path)),
    responses((status = 200, body = ClaimView), (status = 404, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn get_claim(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<ClaimView>, ApiError> {
    auth.require(Role::Viewer)?;
    Ok(Json(state.store.get_claim(&id).await?))
}

/// Revokes a claim token; devices already provisioned with it keep their credentials.
#[utoipa::path(delete, operation_id = "auth_revoke_claim", path = "/api/v1/claims/{id}", tag = "auth", params(("id" = String, Path)),
    responses((status = 200, body = ClaimView), (status = 404, body = drover_proto::error::ErrorBody), (status = 409, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_claim(
    State(state): State<AppState>,
    auth: Operator,
    Path(id): Path<String>,
) -> Result<Json<ClaimView>, ApiError> {
    let actor = auth.require(Role::Operator)?.actor();
    Ok(Json(state.store.revoke_claim(&actor, &id, now()).await?))
}
