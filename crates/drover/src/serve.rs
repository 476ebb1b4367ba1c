//! `drover serve`: builds the server configuration from defaults, a TOML file, environment
//! variables and flags (later ones win), sets up logging and runs until SIGINT / SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use drover_server::mqtt::{ExternalBroker, MqttConfig};
use drover_server::ServerConfig;
use serde::Deserialize;

/// Options of `drover serve`. Each flag also reads an environment variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML configuration file (keys as in docs/configuration.md).
    #[arg(long, short = 'c', env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "DROVER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the embedded database and other local state [default: ./data].
    #[arg(long, env = "DROVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store URL: sqlite:PATH or postgres://USER@HOST:PORT/DB [default: sqlite:<data-dir>/drover.db].
    #[arg(long, env = "DROVER_STORE")]
    pub store: Option<String>,
    /// Let unknown devices wait in `pending` for an operator to accept them.
    #[arg(long, env = "DROVER_ALLOW_PENDING")]
    pub allow_pending: Option<bool>,
    /// Secret to use for the first admin token on an empty store (at least 16 characters).
    #[arg(long, env = "DROVER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Log format.
    #[arg(long, env = "DROVER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Embedded MQTT broker address, or `off` [default: 127.0.0.1:1884].
    #[arg(long, env = "DROVER_MQTT_LISTEN")]
    pub mqtt_listen: Option<String>,
    /// Use this external MQTT broker (`mqtt://[user:password@]host[:port]`) instead of the
    /// embedded one.
    #[arg(long, env = "DROVER_MQTT_BROKER", hide_env_values = true)]
    pub mqtt_broker: Option<String>,
    /// Where artifact files are kept: file:DIR or s3://BUCKET[/PREFIX] [default: file:<data-dir>/artifacts].
    #[arg(long, env = "DROVER_ARTIFACT_STORE")]
    pub artifact_store: Option<String>,
    /// How often the rollout orchestrator steps each rollout, e.g. `5s` [default: 5s].
    #[arg(long, env = "DROVER_ROLLOUT_TICK")]
    pub rollout_tick: Option<String>,
    /// How often the fleet rollup tick folds device counts and snapshots version history, e.g.
    /// `60s` [default: 60s].
    #[arg(long, env = "DROVER_ROLLUP_INTERVAL")]
    pub rollup_interval: Option<String>,
    /// Post rollout alerts (pauses, aborts, rollbacks, completions) as JSON to this URL.
    #[arg(long, env = "DROVER_ALERT_WEBHOOK")]
    pub alert_webhook: Option<String>,
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The TOML configuration file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub store: Option<String>,
    pub allow_pending: Option<bool>,
    pub log_format: Option<LogFormat>,
    pub pg_max_connections: Option<usize>,
    pub max_body_bytes: Option<usize>,
    pub max_import_bytes: Option<usize>,
    /// How long raw heartbeat samples are kept, e.g. `7d`.
    pub sample_retention: Option<String>,
    /// Heartbeat interval assumed for devices that do not announce theirs, e.g. `60s`.
    pub default_heartbeat_interval: Option<String>,
    /// Missed heartbeat intervals after which a device is offline (default 3).
    pub offline_grace: Option<u32>,
    /// Embedded MQTT broker address, or `off`.
    pub mqtt_listen: Option<String>,
    /// External MQTT broker URL (replaces the embedded broker).
    pub mqtt_broker: Option<String>,
    /// Shared-subscription group of the replicas using the external broker (default `drover`).
    pub mqtt_group: Option<String>,
    /// This replica's MQTT client id on the external broker (default `drover-<host>-<pid>`).
    pub mqtt_client_id: Option<String>,
    /// Where artifact files are kept: `file:DIR` or `s3://BUCKET[/PREFIX]`.
    pub artifact_store: Option<String>,
    /// object_store options for S3 (`aws_endpoint`, `aws_region`, `aws_allow_http`, …).
    pub artifact_store_options: Option<std::collections::BTreeMap<String, String>>,
    /// Largest artifact image accepted, in bytes (default 4 GiB).
    pub max_artifact_bytes: Option<u64>,
    /// How long a device may stay silent mid-deployment before it times out, e.g. `1h`.
    pub deployment_step_timeout: Option<String>,
    /// The TUF root key file used to create the repository on first start.
    pub tuf_root_key: Option<PathBuf>,
    /// How often the rollout orchestrator steps each rollout, e.g. `5s`.
    pub rollout_tick: Option<String>,
    /// How often the fleet rollup tick runs, e.g. `60s`.
    pub rollup_interval: Option<String>,
    /// Where rollout alerts are posted as JSON.
    pub alert_webhook: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))
    }
}

/// Merges defaults, file and arguments into a validated [`ServerConfig`].
pub fn build_config(args: &ServeArgs) -> anyhow::Result<(ServerConfig, LogFormat)> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let mqtt = mqtt_config(args, &file)?;
    let data_dir = args
        .data_dir
        .clone()
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("data"));
    let mut config = ServerConfig::with_data_dir(&data_dir);
    if let Some(listen) = args.listen.or(file.listen) {
        config.listen = listen;
    }
    if let Some(store) = args.store.clone().or(file.store) {
        config.store_url = store;
    }
    if let Some(allow) = args.allow_pending.or(file.allow_pending) {
        config.allow_pending = allow;
    }
    if let Some(n) = file.pg_max_connections {
        if n == 0 {
            bail!("pg_max_connections must be at least 1");
        }
        config.pg_max_connections = n;
    }
    if let Some(n) = file.max_body_bytes {
        config.max_body_bytes = n;
    }
    if let Some(n) = file.max_import_bytes {
        config.max_import_bytes = n;
    }
    if let Some(text) = &file.sample_retention {
        config.sample_retention = drover_core::Duration::parse(text)
            .map_err(|e| anyhow::anyhow!("sample_retention: {e}"))?;
    }
    if let Some(text) = &file.default_heartbeat_interval {
        let interval = drover_core::Duration::parse(text)
            .map_err(|e| anyhow::anyhow!("default_heartbeat_interval: {e}"))?;
        if interval.as_millis() < 1000 {
            bail!("default_heartbeat_interval must be at least 1s, got {text}");
        }
        config.ingest.options.default_interval = interval;
    }
    if let Some(grace) = file.offline_grace {
        if grace == 0 {
            bail!("offline_grace must be at least 1 (missed heartbeat intervals before a device is offline)");
        }
        config.ingest.options.offline_grace = grace;
    }
    config.mqtt = mqtt;
    if let Some(url) = args.artifact_store.clone().or(file.artifact_store) {
        config.artifacts.url = url;
    }
    if let Some(options) = file.artifact_store_options {
        config.artifacts.options = options;
    }
    if let Some(n) = file.max_artifact_bytes {
        if n == 0 {
            bail!("max_artifact_bytes must be positive");
        }
        config.max_artifact_bytes = n;
    }
    if let Some(text) = &file.deployment_step_timeout {
        let timeout = drover_core::Duration::parse(text)
            .map_err(|e| anyhow::anyhow!("deployment_step_timeout: {e}"))?;
        if timeout.as_millis() < 60_000 {
            bail!("deployment_step_timeout must be at least 1m, got {text}");
        }
        config.deployment_step_timeout = timeout;
    }
    if let Some(path) = file.tuf_root_key {
        config.tuf.root_key_file = path;
    }
    if let Some(text) = args.rollout_tick.clone().or(file.rollout_tick) {
        let tick = drover_core::Duration::parse(&text)
            .map_err(|e| anyhow::anyhow!("rollout_tick: {e}"))?;
        if !(100..=600_000).contains(&tick.as_millis()) {
            bail!("rollout_tick must be between 100ms and 10m, got {text}");
        }
        config.rollout_tick = std::time::Duration::from_millis(tick.as_millis() as u64);
    }
    if let Some(text) = args.rollup_interval.clone().or(file.rollup_interval) {
        let every = drover_core::Duration::parse(&text)
            .map_err(|e| anyhow::anyhow!("rollup_interval: {e}"))?;
        if !(1_000..=3_600_000).contains(&every.as_millis()) {
            bail!("rollup_interval must be between 1s and 1h, got {text}");
        }
        config.rollup_interval = std::time::Duration::from_millis(every.as_millis() as u64);
    }
    if let Some(url) = args.alert_webhook.clone().or(file.alert_webhook) {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("alert_webhook must be an http:// or https:// URL, got {url:?}");
        }
        config.alert_webhook = Some(url);
    }
    config.admin_token = args.admin_token.clone().filter(|t| !t.is_empty());
    if let Some(token) = &config.admin_token {
        if token.len() < 16 {
            bail!("DROVER_ADMIN_TOKEN must be at least 16 characters");
        }
    }
    let log_format = args
        .log_format
        .or(file.log_format)
        .unwrap_or(LogFormat::Pretty);
    Ok((config, log_format))
}

/// The MQTT device API from `mqtt_listen` / `mqtt_broker` (flags over file); both at once is an
/// error, because it is unclear which one devices should use.
fn mqtt_config(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<MqttConfig> {
    let listen = args
        .mqtt_listen
        .clone()
        .or_else(|| file.mqtt_listen.clone());
    let broker = args
        .mqtt_broker
        .clone()
        .or_else(|| file.mqtt_broker.clone())
        .filter(|b| !b.is_empty());
    match (listen, broker) {
        (Some(listen), Some(_)) if listen != "off" => bail!(
            "mqtt_listen ({listen}) and mqtt_broker are both set: use the embedded broker or an external one, not both"
        ),
        (_, Some(url)) => {
            drover_server::mqtt::external::parse_url(&url).context("mqtt_broker")?;
            let group = file.mqtt_group.clone().unwrap_or_else(|| "drover".to_owned());
            if group.is_empty() || group.contains(['/', '+', '#']) {
                bail!("mqtt_group must be a non-empty name without '/', '+' or '#', got {group:?}");
            }
            let client_id = file.mqtt_client_id.clone().unwrap_or_else(default_client_id);
            Ok(MqttConfig::External(ExternalBroker { url, group, client_id }))
        }
        (Some(listen), None) if listen == "off" => Ok(MqttConfig::Off),
        (Some(listen), None) => {
            let listen = listen.parse().map_err(|_| {
                anyhow::anyhow!("mqtt_listen must be an address such as 127.0.0.1:1884 or `off`, got {listen:?}")
            })?;
            Ok(MqttConfig::Embedded { listen })
        }
        (None, None) => Ok(ServerConfig::with_data_dir(Path::new(".")).mqtt),
    }
}

/// `drover-<host name>-<pid>`: unique per replica, recognisable in the broker's logs.
fn default_client_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        })
        .unwrap_or_default();
    format!(
        "drover-{}-{}",
        if host.is_empty() { "server" } else { &host },
        std::process::id()
    )
}

/// Runs the server until a termination signal.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let (config, log_format) = build_config(&args)?;
    init_logging(log_format);
    let server = drover_server::start(config, drover_server::termination_signal()).await?;
    if let Some(token) = &server.bootstrap_token {
        // Printed once, on the first start with an empty store; only its hash is stored.
        eprintln!();
        eprintln!("  First start: created an admin API token. It is shown only this once:");
        eprintln!();
        eprintln!("    export DROVER_TOKEN={token}");
        eprintln!();
    }
    eprintln!("drover is serving on http://{}", server.addr);
    if let Some(mqtt) = server.mqtt_addr {
        eprintln!("devices can connect over MQTT to mqtt://{mqtt}");
    }
    server.wait().await
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DROVER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Options of `drover recover-admin`.
#[derive(Debug, Clone, Args)]
pub struct RecoverArgs {
    /// TOML configuration file (for `data_dir` and `store`).
    #[arg(long, short = 'c', env = "DROVER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded database [default: ./data].
    #[arg(long, env = "DROVER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store URL, as for `drover serve`.
    #[arg(long, env = "DROVER_STORE")]
    pub store: Option<String>,
    /// Name recorded for the new token.
    #[arg(long, default_value = "recovered-admin")]
    pub name: String,
}

/// Creates a new admin token directly in the store, for an operator who has lost every admin
/// token. It needs what `drover serve` needs (the database file or URL), which is the trust
/// boundary: whoever can open the database can already change it. The action is audited as
/// `system`.
pub async fn recover_admin(args: RecoverArgs) -> anyhow::Result<()> {
    let serve_args = ServeArgs {
        config: args.config,
        listen: None,
        data_dir: args.data_dir,
        store: args.store,
        allow_pending: None,
        admin_token: None,
        log_format: None,
        mqtt_listen: None,
        mqtt_broker: None,
        artifact_store: None,
        rollout_tick: None,
        rollup_interval: None,
        alert_webhook: None,
    };
    let (config, _) = build_config(&serve_args)?;
    let store =
        drover_store::Store::open(&config.store_url, &drover_store::StoreOptions::default())
            .await
            .with_context(|| format!("cannot open the store at {}", config.redacted_store_url()))?;
    let new = drover_proto::auth::NewToken {
        name: args.name,
        role: drover_proto::auth::Role::Admin,
        expires_in: None,
    };
    let (token, secret) = store
        .create_token(&drover_store::Actor::system(), new, drover_server::now())
        .await
        .context("cannot create the admin token")?;
    eprintln!("Created admin token {} (shown only this once):", token.id);
    eprintln!();
    eprintln!("    export DROVER_TOKEN={secret}");
    Ok(())
}
