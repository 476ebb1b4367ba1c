//! `spawn_app_with()`, the `api_tests!` macro and request helpers.

use drover_server::{RunningServer, ServerConfig};
use drover_store::testing::{TempDir, TestDb};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "drv_test_admin_token_0123456789";

/// Which store a test app runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running server and an HTTP client with the admin token.
pub struct TestApp {
    pub base: String,
    /// The embedded MQTT broker's address, when it runs.
    pub mqtt_addr: Option<std::net::SocketAddr>,
    pub http: reqwest::Client,
    server: Option<RunningServer>,
    config: ServerConfig,
    db: Option<TestDb>,
    _dir: TempDir,
}

/// Options for [`spawn_app_with`].
#[derive(Default)]
pub struct AppOptions {
    pub allow_pending: bool,
    pub max_body_bytes: Option<usize>,
    pub max_import_bytes: Option<usize>,
    /// How often the offline detector runs (the server default when absent).
    pub offline_check: Option<std::time::Duration>,
    /// The MQTT device API; the embedded broker on a free port when absent.
    pub mqtt: Option<drover_server::mqtt::MqttConfig>,
    /// Artifact storage; a directory under the test's data directory when absent.
    pub artifacts: Option<drover_server::storage::StorageConfig>,
    pub max_artifact_bytes: Option<u64>,
    /// How often the rollout orchestrator ticks (the server default when absent).
    pub rollout_tick: Option<std::time::Duration>,
    /// Where rollout alerts are posted.
    pub alert_webhook: Option<String>,
    /// How often the fleet rollup tick runs (the server default when absent).
    pub rollup_interval: Option<std::time::Duration>,
}

/// Starts a server on a fresh store, or returns `None` when the backend is not configured.
pub async fn spawn_app_with(backend: Backend, options: AppOptions) -> Option<TestApp> {
    let dir = TempDir::new();
    let db = match backend {
        Backend::Sqlite => TestDb::sqlite(),
        Backend::Postgres => TestDb::postgres().await?,
    };
    let mut config = ServerConfig::with_data_dir(&dir.path);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.store_url = db.url.clone();
    config.pg_max_connections = 4;
    config.admin_token = Some(ADMIN_TOKEN.to_owned());
    config.allow_pending = options.allow_pending;
    if let Some(n) = options.max_body_bytes {
        config.max_body_bytes = n;
    }
    if let Some(n) = options.max_import_bytes {
        config.max_import_bytes = n;
    }
    if let Some(every) = options.offline_check {
        config.offline_check = every;
    }
    config.mqtt = options
        .mqtt
        .unwrap_or(drover_server::mqtt::MqttConfig::Embedded {
            listen: "127.0.0.1:0".parse().unwrap(),
        });
    if let Some(artifacts) = options.artifacts {
        config.artifacts = artifacts;
    }
    if let Some(n) = options.max_artifact_bytes {
        config.max_artifact_bytes = n;
    }
    if let Some(every) = options.rollout_tick {
        config.rollout_tick = every;
    }
    config.alert_webhook = options.alert_webhook;
    if let Some(every) = options.rollup_interval {
        config.rollup_interval = every;
    }
    let server = drover_server::start(config.clone(), std::future::pending())
        .await
        .expect("server starts");
    Some(TestApp {
        base: format!("http://{}", server.addr),
        mqtt_addr: server.mqtt_addr,
        http: reqwest::Client::new(),
        server: Some(server),
        config,
        db: Some(db),
        _dir: dir,
    })
}

impl TestApp {
    /// The server's data directory (local artifact storage lives under it).
    pub fn data_dir(&self) -> &std::path::Path {
        &self._dir.path
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with `token` (if any) and a JSON body (if any); returns status and JSON body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::GET, path, Some(ADMIN_TOKEN), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::POST, path, Some(ADMIN_TOKEN), Some(body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(Method::PATCH, path, Some(ADMIN_TOKEN), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(Method::DELETE, path, Some(ADMIN_TOKEN), None)
            .await
    }

    /// GET with a query string built from pairs (values URL-encoded).
    pub async fn get_with(&self, path: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .query(query)
            .send()
            .await
            .expect("sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Number of devices matching `q`.
    pub async fn count(&self, q: &str) -> u64 {
        let (status, body) = self.get_with("/api/v1/devices/count", &[("q", q)]).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["count"].as_u64().unwrap()
    }

    /// Number of audit entries.
    pub async fn audit_len(&self) -> usize {
        let (_, body) = self.get("/api/v1/audit?limit=1000").await;
        body["items"].as_array().unwrap().len()
    }

    /// Creates a token with `role` and returns its secret.
    pub async fn token(&self, role: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/tokens",
                serde_json::json!({ "name": format!("{role}-test"), "role": role }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["secret"].as_str().unwrap().to_owned()
    }

    /// Stops the server and starts it again on the same store and data directory (on a new port).
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
        let server = drover_server::start(self.config.clone(), std::future::pending())
            .await
            .expect("server restarts");
        self.base = format!("http://{}", server.addr);
        self.mqtt_addr = server.mqtt_addr;
        self.server = Some(server);
    }

    /// Stops the server and drops its database.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.expect("clean shutdown");
        }
        if let Some(db) = self.db.take() {
            db.cleanup().await;
        }
    }
}

/// Declares each scenario twice: `<name>::on_sqlite` and `<name>::on_postgres`; an optional
/// `with <AppOptions>;` after the signature configures the server.
#[macro_export]
macro_rules! api_tests {
    ($(async fn $name:ident($app:ident) $(with $options:expr;)? $body:block)*) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                async fn scenario($app: &$crate::helpers::TestApp) $body

                fn options() -> $crate::helpers::AppOptions {
                    #[allow(unused_variables)]
                    let options = $crate::helpers::AppOptions::default();
                    $(let options = $options;)?
                    options
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    let app = $crate::helpers::spawn_app_with($crate::helpers::Backend::Sqlite, options()).await.expect("sqlite app");
                    scenario(&app).await;
                    app.stop().await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    let Some(app) = $crate::helpers::spawn_app_with($crate::helpers::Backend::Postgres, options()).await else {
                        eprintln!("skipped: DROVER_TEST_PG is not set");
                        return;
                    };
                    scenario(&app).await;
                    app.stop().await;
                }
            }
        )*
    };
}
