//! The web dashboard: its static files (compiled into the binary from `crates/server/ui/`), the
//! login that trades an operator token for a session cookie, and logout.
//!
//! A session is an operator token of its own, created at login with the role of the token that
//! logged in and a 12-hour lifetime, named `web session of NAME`. Its secret lives only in an
//! `HttpOnly; SameSite=Strict` cookie; every API request made with the cookie is checked like a
//! bearer token (so revoking the session's token, or it expiring, ends the session), and requests
//! that change something must also carry the `X-Drover-CSRF` header, which a page on another site
//! cannot add without a CORS grant the server never gives. Logout revokes the session's token;
//! housekeeping deletes sessions a week after they expired or were revoked.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, ETAG, IF_NONE_MATCH, SET_COOKIE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use drover_proto::auth::{NewToken, WhoAmI};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::{now, AppState};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "drover_session";
/// The header a cookie-authenticated request must carry to change anything.
pub const CSRF_HEADER: &str = "x-drover-csrf";
/// How long a dashboard session lasts.
const SESSION_LIFETIME: &str = "12h";
const SESSION_SECONDS: u32 = 12 * 3600;

/// The dashboard's files: URL path, content type, body.
const FILES: &[(&str, &str, &str)] = &[
    (
        "/",
        "text/html; charset=utf-8",
        include_str!("../ui/index.html"),
    ),
    (
        "/ui/app.css",
        "text/css; charset=utf-8",
        include_str!("../ui/app.css"),
    ),
    (
        "/ui/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/app.js"),
    ),
    (
        "/ui/api.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/api.js"),
    ),
    (
        "/ui/dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/dom.js"),
    ),
    (
        "/ui/charts.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/charts.js"),
    ),
    (
        "/ui/pages.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/pages.js"),
    ),
    (
        "/ui/detail.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/detail.js"),
    ),
    (
        "/ui/favicon.svg",
        "image/svg+xml",
        include_str!("../ui/favicon.svg"),
    ),
];

/// Scripts, styles and data come from this server only; the page cannot be framed.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The dashboard's routes, merged into the server's router.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout));
    for (index, (path, _, _)) in FILES.iter().enumerate() {
        router = router.route(path, get(move |headers: HeaderMap| serve(index, headers)));
    }
    router
}

/// Each file's entity tag: a hash of its contents, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        FILES
            .iter()
            .map(|(_, _, body)| {
                let digest = Sha256::digest(body.as_bytes());
                format!("\"{}\"", hex_prefix(&digest))
            })
            .collect()
    })
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves `FILES[index]`, or 304 when the browser's copy is current.
async fn serve(index: usize, headers: HeaderMap) -> Response {
    let (_, content_type, body) = FILES[index];
    let etag = &etags()[index];
    let fresh = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(CONTENT_TYPE, content_type)], body).into_response()
    };
    let out = response.headers_mut();
    // Revalidated on every load: a new server version shows its new dashboard at once.
    out.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        out.insert(ETAG, value);
    }
    out.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    out.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    out.insert("x-frame-options", HeaderValue::from_static("DENY"));
    out.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// The session secret from the request's cookie, if it has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Refuses a cookie-authenticated request that changes something without the CSRF header.
pub fn check_csrf(parts: &Parts) -> Result<(), ApiError> {
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if safe || parts.headers.contains_key(CSRF_HEADER) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "a request made with the dashboard's session cookie must carry the {CSRF_HEADER} header \
             to change anything (scripts use `Authorization: Bearer <token>` instead)"
        )))
    }
}

/// `POST /ui/login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// An operator API token (`drv_op_…`).
    pub token: String,
}

fn cookie(headers: &HeaderMap, value: &str, max_age: u32) -> HeaderValue {
    // Behind a TLS-terminating proxy the cookie must not travel over plain HTTP.
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let text = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&text)
        .unwrap_or_else(|_| HeaderValue::from_static("drover_session=; Path=/"))
}

/// Trades an operator token for a session cookie.
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let token = request.token.trim();
    if token.is_empty() {
        return Err(ApiError::bad_request("enter an operator API token"));
    }
    let now = now();
    let auth = state.store.authenticate_token(token, now).await?;
    let name: String = format!("{}{}", drover_store::SESSION_NAME_PREFIX, auth.name)
        .chars()
        .take(128)
        .collect();
    let (session, secret) = state
        .store
        .create_token(
            &auth.actor(),
            NewToken {
                name,
                role: auth.role,
                expires_in: Some(SESSION_LIFETIME.into()),
            },
            now,
        )
        .await?;
    let body = WhoAmI {
        token_id: session.id,
        name: session.name,
        role: session.role,
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, cookie(&headers, &secret, SESSION_SECONDS));
    Ok(response)
}

/// Ends the session: revokes its token and clears the cookie. Always succeeds for the browser.
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(secret) = session_cookie(&headers) {
        let now = now();
        if let Ok(auth) = state.store.authenticate_token(secret, now).await {
            if let Err(e) = state.store.end_session(&auth.actor(), &auth.id, now).await {
                tracing::warn!(error = %e, token = %auth.id, "could not end a dashboard session");
            }
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, cookie(&headers, "", 0));
    response
}
