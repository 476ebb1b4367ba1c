//! The server's validated configuration. The `drover` binary builds it from defaults, a TOML file,
//! environment variables and flags (in rising priority).

use std::net::SocketAddr;

/// Everything `drover serve` needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// HTTP listen address (admin API, device API, health, metrics).
    pub listen: SocketAddr,
    /// `sqlite:PATH` (default, under the data directory) or `postgres://…`.
    pub store_url: String,
    /// PostgreSQL connection pool size.
    pub pg_max_connections: usize,
    /// Use this secret for the first admin token instead of generating one (from `DROVER_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Let unknown devices wait in `pending` for an operator instead of being refused.
    pub allow_pending: bool,
    /// Largest JSON request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest bulk-import upload, in bytes.
    pub max_import_bytes: usize,
    /// Heartbeat group commit: queue length, batch size, rollup bucket.
    pub ingest: crate::ingest::IngestConfig,
    /// How long raw heartbeat samples are kept for per-device charts (rollups are kept).
    pub sample_retention: drover_core::Duration,
    /// How often the offline detector looks for devices past their heartbeat deadline.
    pub offline_check: std::time::Duration,
    /// The MQTT device API: embedded broker (default), external broker, or off.
    pub mqtt: crate::mqtt::MqttConfig,
    /// Where artifact files are kept: a local directory (default, under the data directory) or an
    /// S3-compatible bucket.
    pub artifacts: crate::storage::StorageConfig,
    /// Largest artifact image (and debug-symbols file) accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// How long a device may stay silent in the middle of a deployment before it times out.
    pub deployment_step_timeout: drover_core::Duration,
    /// The TUF repository: signature lifetimes and where the offline root key lives.
    pub tuf: crate::ota::TufConfig,
    /// How often the rollout orchestrator steps each rollout with work left.
    pub rollout_tick: std::time::Duration,
    /// How often the fleet rollup tick folds device-count deltas and snapshots the per-version
    /// counts (the adoption history's resolution; readers are exact in between).
    pub rollup_interval: std::time::Duration,
    /// Where rollout alerts (pauses, aborts, rollbacks, completions) are posted as JSON, besides
    /// the log.
    pub alert_webhook: Option<String>,
}

impl ServerConfig {
    /// Defaults for a laptop: port 8080 on localhost, SQLite under `data_dir`.
    pub fn with_data_dir(data_dir: &std::path::Path) -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            store_url: format!("sqlite:{}", data_dir.join("drover.db").display()),
            pg_max_connections: 16,
            admin_token: None,
            allow_pending: false,
            max_body_bytes: 1 << 20,
            max_import_bytes: 1 << 30,
            ingest: crate::ingest::IngestConfig::default(),
            sample_retention: drover_core::Duration::from_secs(7 * 86_400),
            offline_check: std::time::Duration::from_secs(5),
            mqtt: crate::mqtt::MqttConfig::Embedded {
                listen: crate::mqtt::DEFAULT_LISTEN
                    .parse()
                    .expect("valid default address"),
            },
            artifacts: crate::storage::StorageConfig {
                url: format!("file:{}", data_dir.join("artifacts").display()),
                options: Default::default(),
            },
            max_artifact_bytes: 4 << 30,
            deployment_step_timeout: drover_core::Duration::from_secs(3600),
            tuf: crate::ota::TufConfig::with_data_dir(data_dir),
            rollout_tick: std::time::Duration::from_secs(5),
            rollup_interval: std::time::Duration::from_secs(60),
            alert_webhook: None,
        }
    }

    /// The store URL without any password, for logs and error messages.
    pub fn redacted_store_url(&self) -> String {
        redact_url(&self.store_url)
    }
}

/// Replaces the password in `scheme://user:password@host` with `***`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_owned()
}
