//! The dashboard's HTTP side: its files (with their security headers and caching), login with an
//! operator token for a session cookie, the CSRF header rule, logout, and the raw health samples
//! its device charts read. The pages themselves are tested in Chromium (crates/drover/tests/browser.rs).

use reqwest::header::{CONTENT_TYPE, COOKIE, ETAG, IF_NONE_MATCH, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

/// Logs in with `token`; returns the status, the body and the session cookie (`name=value`).
async fn login(app: &TestApp, body: Value) -> (StatusCode, Value, Option<String>) {
    let response = app
        .http
        .post(app.url("/ui/login"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, cookie)
}

/// A request carrying the session cookie, and the CSRF header when `csrf`.
async fn with_cookie(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: &str,
    csrf: bool,
) -> (StatusCode, Value) {
    let mut request = app
        .http
        .request(method, app.url(path))
        .header(COOKIE, cookie);
    if csrf {
        request = request.header("X-Drover-CSRF", "1");
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

api_tests! {
    async fn the_dashboard_is_served_with_a_strict_content_security_policy_and_revalidation(app) {
        for (path, kind) in [("/", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css"), ("/ui/charts.js", "text/javascript")] {
            let response = app.http.get(app.url(path)).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let headers = response.headers().clone();
            assert!(headers[CONTENT_TYPE].to_str().unwrap().starts_with(kind), "{path}");
            let csp = headers["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
            assert_eq!(headers["x-content-type-options"], "nosniff");
            assert_eq!(headers["cache-control"], "no-cache");
            let etag = headers[ETAG].to_str().unwrap().to_owned();
            let again = app.http.get(app.url(path)).header(IF_NONE_MATCH, &etag).send().await.unwrap();
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        }
        let html = app.http.get(app.url("/")).send().await.unwrap().text().await.unwrap();
        assert!(html.contains("<script type=\"module\" src=\"/ui/app.js\">"), "{html}");
        assert!(!html.contains("http://") && !html.contains("https://"), "nothing loaded from the internet");
        let (status, error) = app.send(Method::GET, "/ui/nope.js", None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    }

    async fn login_trades_a_token_for_a_session_cookie_that_needs_csrf_to_change_anything(app) {
        // Bad logins: each says what is wrong, and none sets a cookie.
        let (status, error, cookie) = login(app, json!({ "token": "drv_op_wrong" })).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
        assert!(error["error"]["message"].as_str().unwrap().contains("unknown API token"), "{error}");
        assert!(cookie.is_none());
        let (status, error, _) = login(app, json!({ "token": "  " })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
        let (status, error, _) = login(app, json!({ "secret": ADMIN_TOKEN })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        let response = app.http.post(app.url("/ui/login")).body("token=x").header(CONTENT_TYPE, "application/x-www-form-urlencoded").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "a cross-site form cannot log anyone in");

        let (status, who, cookie) = login(app, json!({ "token": ADMIN_TOKEN })).await;
        assert_eq!(status, StatusCode::OK, "{who}");
        assert_eq!(who["role"], "admin");
        let cookie = cookie.expect("a session cookie");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        assert!(!cookie.contains(ADMIN_TOKEN), "the cookie is a session of its own, not the token");
        let pair = cookie.split(';').next().unwrap().to_owned();

        // Reads work with the cookie alone; changes need the CSRF header.
        let (status, me) = with_cookie(app, Method::GET, "/api/v1/whoami", &pair, false).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!(me["name"], "web session of bootstrap-admin");
        let (status, error) = with_cookie(app, Method::POST, "/api/v1/groups", &pair, false).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
        assert!(error["error"]["message"].as_str().unwrap().contains("x-drover-csrf"), "{error}");
        let response = app.http.post(app.url("/api/v1/groups")).header(COOKIE, &pair).header("X-Drover-CSRF", "1")
            .json(&json!({ "name": "from-the-dashboard", "query": "device_type = sensor" })).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        // A bearer token needs no CSRF header, cookie or not.
        let (status, _) = app.post("/api/v1/groups", json!({ "name": "from-a-script", "query": "device_type = sensor" })).await;
        assert_eq!(status, StatusCode::CREATED);

        // The session is an audited token; logout revokes it and clears the cookie.
        let (_, entries) = app.get("/api/v1/audit?action=token.create").await;
        assert!(entries["items"].as_array().unwrap().iter().any(|e| e["after"]["name"] == "web session of bootstrap-admin"), "{entries}");
        let response = app.http.post(app.url("/ui/logout")).header(COOKIE, &pair).header("X-Drover-CSRF", "1").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let cleared = response.headers()[SET_COOKIE].to_str().unwrap();
        assert!(cleared.starts_with("drover_session=;") && cleared.contains("Max-Age=0"), "{cleared}");
        let (status, error) = with_cookie(app, Method::GET, "/api/v1/whoami", &pair, false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{error}");
        assert!(error["error"]["message"].as_str().unwrap().contains("revoked"), "{error}");
        // Logging out without a session still answers the browser.
        let response = app.http.post(app.url("/ui/logout")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        let (status, _) = with_cookie(app, Method::GET, "/api/v1/whoami", "drover_session=garbage", false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    async fn a_viewer_session_reads_but_cannot_command(app) {
        let viewer = app.token("viewer").await;
        let (status, who, cookie) = login(app, json!({ "token": viewer })).await;
        assert_eq!(status, StatusCode::OK, "{who}");
        assert_eq!(who["role"], "viewer");
        let pair = cookie.unwrap().split(';').next().unwrap().to_owned();
        let (status, _) = with_cookie(app, Method::GET, "/api/v1/devices", &pair, false).await;
        assert_eq!(status, StatusCode::OK);
        let (status, error) = with_cookie(app, Method::POST, "/api/v1/rollouts/1/pause", &pair, true).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    }

    async fn health_samples_list_a_devices_heartbeats_oldest_first_and_refuse_bad_windows(app) {
        let (status, created) = app
            .post("/api/v1/devices", json!({ "id": "chart-1", "device_type": "sensor", "issue_credential": true }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let credential = created["credential"].as_str().unwrap().to_owned();
        let (status, samples) = app.get("/api/v1/devices/chart-1/health/samples").await;
        assert_eq!(status, StatusCode::OK, "{samples}");
        assert_eq!(samples, json!([]));
        let batch: Vec<_> = (0..5).map(|i| json!({ "metrics": { "battery_v": 3.0 + f64::from(i) / 10.0 } })).collect();
        let (status, ack) = app
            .send(Method::POST, "/api/device/v1/heartbeats", Some(&credential), Some(json!({ "heartbeats": batch })))
            .await;
        assert_eq!(status, StatusCode::OK, "{ack}");
        // Ingest commits in groups: wait for the samples to land.
        let mut samples = Value::Null;
        for _ in 0..50 {
            samples = app.get("/api/v1/devices/chart-1/health/samples?since=1h").await.1;
            if samples.as_array().is_some_and(|s| s.len() == 5) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let samples = samples.as_array().unwrap();
        assert_eq!(samples.len(), 5, "{samples:?}");
        assert!(samples.iter().all(|s| s["metrics"]["battery_v"].is_number() && s["observed_at"].is_string()));
        let (_, newest) = app.get("/api/v1/devices/chart-1/health/samples?limit=2").await;
        assert_eq!(newest.as_array().unwrap().len(), 2, "{newest}");
        assert!(newest[0]["observed_at"].as_str() <= newest[1]["observed_at"].as_str(), "oldest first: {newest}");

        for (query, needle) in [("since=yesterday", "invalid since"), ("since=91d", "at most 90d"), ("limit=0", "between 1 and 5000"), ("limit=5001", "between 1 and 5000"), ("colour=red", "unknown field")] {
            let (status, error) = app.get(&format!("/api/v1/devices/chart-1/health/samples?{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {error}");
            assert!(error["error"]["message"].as_str().unwrap().contains(needle), "{query}: {error}");
        }
        let (status, _) = app.get("/api/v1/devices/no-such-device/health/samples").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
