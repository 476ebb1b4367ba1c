//! Configuration: flags and environment variables (`DROVER_AGENT_*`) override the TOML file
//! (`--config`, default `/etc/drover/agent.toml`), which overrides the defaults. Everything is
//! validated here, once, into a [`Config`]; the rest of the agent only sees valid values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_core::health::MetricName;
use drover_core::{DeviceId, DeviceType, HardwareId, Label, Version};
use serde::Deserialize;

/// Where the agent looks for its configuration file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drover/agent.toml";
/// Where the credential lives unless configured otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/drover-agent";
/// Read for the hardware id when none is configured.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// Command-line flags; each can also be set by the environment variable shown in `--help`.
#[derive(Debug, Default, Clone, clap::Parser)]
#[command(
    name = "drover-agent",
    version,
    about = "Drover device agent: provisions this device and reports its health to a Drover server."
)]
pub struct Cli {
    /// Configuration file [default: /etc/drover/agent.toml, if it exists].
    #[arg(long, env = "DROVER_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Base URL of the Drover server, e.g. https://drover.example.com.
    #[arg(long, env = "DROVER_AGENT_SERVER_URL")]
    pub server_url: Option<String>,
    /// Directory for the credential [default: /var/lib/drover-agent].
    #[arg(long, env = "DROVER_AGENT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// This unit's hardware id [default: the content of /etc/machine-id].
    #[arg(long, env = "DROVER_AGENT_HARDWARE_ID")]
    pub hardware_id: Option<String>,
    /// Claim token for the first provisioning (not needed once the device has a credential).
    #[arg(long, env = "DROVER_AGENT_CLAIM_TOKEN", hide_env_values = true)]
    pub claim_token: Option<String>,
    /// Secret of a pre-authorised device, as an alternative to a claim token.
    #[arg(long, env = "DROVER_AGENT_PREAUTH_SECRET", hide_env_values = true)]
    pub preauth_secret: Option<String>,
    /// Device id to ask for when provisioning [default: chosen by the server].
    #[arg(long, env = "DROVER_AGENT_DEVICE_ID")]
    pub device_id: Option<String>,
    /// Device type to enrol as.
    #[arg(long, env = "DROVER_AGENT_DEVICE_TYPE")]
    pub device_type: Option<String>,
    /// Hardware revision to enrol with.
    #[arg(long, env = "DROVER_AGENT_HW_REV")]
    pub hw_rev: Option<String>,
    /// Firmware version this device runs (SemVer).
    #[arg(long, env = "DROVER_AGENT_FIRMWARE")]
    pub firmware: Option<String>,
    /// A/B slot the device booted from.
    #[arg(long, env = "DROVER_AGENT_BOOT_SLOT")]
    pub boot_slot: Option<String>,
    /// Time between heartbeats, e.g. 60s or 5m [default: 60s].
    #[arg(long, env = "DROVER_AGENT_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<String>,
    /// Each interval is shifted by a random amount up to this [default: a tenth of the interval].
    #[arg(long, env = "DROVER_AGENT_HEARTBEAT_JITTER")]
    pub heartbeat_jitter: Option<String>,
    /// Heartbeats kept in memory while the server is unreachable [default: 1000].
    #[arg(long, env = "DROVER_AGENT_MAX_BUFFERED_HEARTBEATS")]
    pub max_buffered_heartbeats: Option<usize>,
    /// Executable whose stdout lines `name=value` are added as metrics.
    #[arg(long, env = "DROVER_AGENT_METRICS_COMMAND")]
    pub metrics_command: Option<PathBuf>,
    /// Timeout of one request to the server [default: 30s].
    #[arg(long, env = "DROVER_AGENT_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// How heartbeats and the shadow travel once provisioned: http or mqtt [default: http].
    #[arg(long, env = "DROVER_AGENT_TRANSPORT")]
    pub transport: Option<String>,
    /// MQTT broker for --transport mqtt, e.g. mqtt://drover.example.com:1883.
    #[arg(long, env = "DROVER_AGENT_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// Keep the device shadow in sync and apply desired configuration: true or false [default: true].
    #[arg(long, env = "DROVER_AGENT_SHADOW_SYNC")]
    pub shadow_sync: Option<bool>,
    /// Executable that applies desired configuration; gets the shadow delta as JSON on stdin.
    #[arg(long, env = "DROVER_AGENT_CONFIG_HOOK")]
    pub config_hook: Option<PathBuf>,
    /// How long the config hook may run before it is killed [default: 60s].
    #[arg(long, env = "DROVER_AGENT_CONFIG_HOOK_TIMEOUT")]
    pub config_hook_timeout: Option<String>,
}

/// The TOML file, as written. Unknown keys are errors, so a typo does not silently do nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server_url: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub hardware_id: Option<String>,
    pub claim_token: Option<String>,
    pub preauth_secret: Option<String>,
    pub device_id: Option<String>,
    pub device_type: Option<String>,
    pub hw_rev: Option<String>,
    pub firmware: Option<String>,
    pub boot_slot: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub heartbeat_jitter: Option<String>,
    pub max_buffered_heartbeats: Option<usize>,
    pub metrics_command: Option<PathBuf>,
    pub request_timeout: Option<String>,
    pub transport: Option<String>,
    pub mqtt_url: Option<String>,
    pub shadow_sync: Option<bool>,
    pub config_hook: Option<PathBuf>,
    pub config_hook_timeout: Option<String>,
    /// Metrics the OS cannot provide, reported unchanged in every heartbeat.
    #[serde(default)]
    pub static_metrics: BTreeMap<String, f64>,
    /// Over-the-air updates (`[update]`); off unless `enabled = true`.
    pub update: Option<RawUpdateConfig>,
    /// Fleet jobs and remote diagnostics (`[jobs]`); on unless `enabled = false`.
    pub jobs: Option<RawJobsConfig>,
}

/// The `[jobs]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJobsConfig {
    pub enabled: Option<bool>,
    /// The program (and arguments, split on spaces) that reboots the device.
    pub reboot_command: Option<String>,
    /// Custom commands: a job's `name` → the program run with the job's payload on stdin.
    #[serde(default)]
    pub commands: BTreeMap<String, PathBuf>,
    /// Longest a custom command may run (the job's deadline cuts it shorter).
    pub command_timeout: Option<String>,
    /// The agent's log file, for the `log_tail` diagnostic.
    pub log_file: Option<PathBuf>,
}

/// Fleet jobs and remote diagnostics.
#[derive(Debug, Clone, PartialEq)]
pub struct JobsConfig {
    /// The program and its arguments.
    pub reboot_command: Vec<String>,
    pub commands: BTreeMap<String, PathBuf>,
    pub command_timeout: Duration,
    pub log_file: Option<PathBuf>,
}

/// The `[update]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpdateConfig {
    pub enabled: Option<bool>,
    /// `simulated`, `uboot` or `grub`.
    pub slots: Option<String>,
    /// The simulated device's directory.
    pub slot_dir: Option<PathBuf>,
    pub slot_a_device: Option<PathBuf>,
    pub slot_b_device: Option<PathBuf>,
    pub fw_printenv: Option<PathBuf>,
    pub fw_setenv: Option<PathBuf>,
    pub grub_editenv: Option<PathBuf>,
    pub grub_env_file: Option<PathBuf>,
    pub boot_part_var: Option<String>,
    pub upgrade_available_var: Option<String>,
    pub bootcount_var: Option<String>,
    pub bootlimit_var: Option<String>,
    pub slot_a_value: Option<String>,
    pub slot_b_value: Option<String>,
    pub bootlimit: Option<u32>,
    pub reboot_command: Option<String>,
    pub check_interval: Option<String>,
    pub health_check_command: Option<PathBuf>,
    pub health_check_timeout: Option<String>,
    pub health_process: Option<String>,
    pub health_connectivity: Option<bool>,
    pub watchdog_timeout: Option<String>,
    pub security_floor: Option<String>,
    pub allow_downgrade: Option<bool>,
    /// The TUF root metadata file to trust first.
    pub tuf_root: Option<PathBuf>,
}

/// The validated `[update]` table (present only when updates are enabled).
#[derive(Debug, Clone)]
pub struct UpdateConfig {
    pub slots: SlotsConfig,
    /// Time between two checks for an offered update.
    pub check_interval: Duration,
    /// Exit status 0 = the new image is healthy.
    pub health_check_command: Option<PathBuf>,
    pub health_check_timeout: Duration,
    /// A process (name, or `/path/to/pidfile`) that must be running on the new image.
    pub health_process: Option<crate::update::health::ProcessCheck>,
    /// Whether the new image must reach the Drover server before it is committed.
    pub health_connectivity: bool,
    /// How long the new image has after its boot to prove healthy.
    pub watchdog_timeout: Duration,
    /// The anti-rollback floor (raised by committed images; the raised value is persisted).
    pub security_floor: Option<Version>,
    /// Accept versions not newer than the running one (never below the floor).
    pub allow_downgrade: bool,
    /// The TUF root to trust first (`drover keys show-root --json`); without it the agent trusts
    /// the server's root on first use.
    pub tuf_root: Option<PathBuf>,
}

/// Which slot backend, with its settings.
#[derive(Debug, Clone)]
pub enum SlotsConfig {
    Simulated {
        dir: PathBuf,
    },
    Uboot {
        env: crate::update::slots::env::EnvSlotsOptions,
        fw_printenv: PathBuf,
        fw_setenv: PathBuf,
    },
    Grub {
        env: crate::update::slots::env::EnvSlotsOptions,
        grub_editenv: PathBuf,
        env_file: PathBuf,
    },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server_url: String,
    pub state_dir: PathBuf,
    /// `None`: read [`MACHINE_ID_PATH`] when provisioning (not needed once provisioned).
    pub hardware_id: Option<HardwareId>,
    pub claim_token: Option<String>,
    pub preauth_secret: Option<String>,
    pub device_id: Option<DeviceId>,
    pub device_type: Option<DeviceType>,
    pub hw_rev: Option<Label>,
    pub firmware: Option<Version>,
    pub boot_slot: Option<Label>,
    pub heartbeat_interval: Duration,
    pub heartbeat_jitter: Duration,
    pub max_buffered_heartbeats: usize,
    pub static_metrics: BTreeMap<MetricName, f64>,
    pub metrics_command: Option<PathBuf>,
    pub request_timeout: Duration,
    /// How heartbeats and the shadow travel once provisioned (provisioning is always HTTP).
    pub transport: TransportKind,
    /// Whether to keep the shadow in sync; off, the agent only reports heartbeats.
    pub shadow_sync: bool,
    /// Applies desired configuration; `None` reports desired values as applied.
    pub config_hook: Option<PathBuf>,
    pub config_hook_timeout: Duration,
    /// Over-the-air updates; `None` when disabled.
    pub update: Option<UpdateConfig>,
    /// Fleet jobs and diagnostics; `None` when disabled.
    pub jobs: Option<JobsConfig>,
}

/// How heartbeats and the shadow travel once the device has its credential. Provisioning always
/// uses HTTP: the claim-token exchange is an HTTP endpoint, and a device without a credential
/// cannot log in to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportKind {
    Http,
    Mqtt(MqttAddress),
}

/// Where the MQTT broker listens, from `mqtt://host[:port]` (port 1883 by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttAddress {
    /// A name or address; an IPv6 address keeps its brackets (`[::1]`).
    pub host: String,
    pub port: u16,
}

impl MqttAddress {
    /// Parses `mqtt://host[:port]` (`tcp://` also accepted). The device logs in with its own id
    /// and credential, so a user name or password in the URL is refused rather than ignored.
    pub fn parse(url: &str) -> Result<MqttAddress, String> {
        if url.starts_with("mqtts://") || url.starts_with("ssl://") {
            return Err(format!(
                "{url:?}: MQTT over TLS is not supported yet; use mqtt://"
            ));
        }
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| format!("{url:?} must start with mqtt://"))?
            .trim_end_matches('/');
        if rest.contains('@') {
            return Err(format!(
                "{url:?} must not contain a user name or password: the agent logs in with its device id and credential"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !rest.ends_with(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{url:?} has an invalid port {port:?}"))?;
                (host, port)
            }
            _ => (rest, 1883),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!("{url:?} has no valid host"));
        }
        Ok(MqttAddress {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for MqttAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mqtt://{}:{}", self.host, self.port)
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid TOML in {path}: {message}")]
    Toml { path: PathBuf, message: String },
    #[error("invalid {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("{key} is required: {hint}")]
    Missing {
        key: &'static str,
        hint: &'static str,
    },
}

impl Config {
    /// Loads the file named by `cli.config` (or the default file if it exists) and merges the
    /// flags over it.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let raw = match &cli.config {
            Some(path) => RawConfig::read(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                RawConfig::read(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => RawConfig::default(),
        };
        Config::from_parts(cli, raw)
    }

    /// Parses TOML text (reported as coming from `path`) without any flags.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::from_parts(&Cli::default(), RawConfig::parse(text, path)?)
    }

    /// Validates flags over file values over defaults.
    pub fn from_parts(cli: &Cli, raw: RawConfig) -> Result<Config, ConfigError> {
        let pick = |flag: &Option<String>, file: Option<String>| flag.clone().or(file);
        let server_url = pick(&cli.server_url, raw.server_url).ok_or(ConfigError::Missing {
            key: "server_url",
            hint: "set `server_url` in the configuration file, --server-url or DROVER_AGENT_SERVER_URL",
        })?;
        if !(server_url.starts_with("http://") || server_url.starts_with("https://")) {
            return Err(invalid(
                "server_url",
                format!("{server_url:?} must start with http:// or https://"),
            ));
        }
        let heartbeat_interval = duration(
            "heartbeat_interval",
            pick(&cli.heartbeat_interval, raw.heartbeat_interval),
            Duration::from_secs(60),
        )?;
        if heartbeat_interval < Duration::from_millis(100) {
            return Err(invalid(
                "heartbeat_interval",
                "must be at least 100ms".into(),
            ));
        }
        let heartbeat_jitter = duration(
            "heartbeat_jitter",
            pick(&cli.heartbeat_jitter, raw.heartbeat_jitter),
            heartbeat_interval / 10,
        )?;
        let max_buffered_heartbeats = cli
            .max_buffered_heartbeats
            .or(raw.max_buffered_heartbeats)
            .unwrap_or(1000);
        if max_buffered_heartbeats == 0 {
            return Err(invalid(
                "max_buffered_heartbeats",
                "must be at least 1".into(),
            ));
        }
        let transport = match pick(&cli.transport, raw.transport).as_deref() {
            None | Some("http") => TransportKind::Http,
            Some("mqtt") => {
                let url = pick(&cli.mqtt_url, raw.mqtt_url).ok_or(ConfigError::Missing {
                    key: "mqtt_url",
                    hint: "transport = \"mqtt\" needs the broker's address: `mqtt_url` in the configuration file, --mqtt-url or DROVER_AGENT_MQTT_URL",
                })?;
                TransportKind::Mqtt(MqttAddress::parse(&url).map_err(|e| invalid("mqtt_url", e))?)
            }
            Some(other) => {
                return Err(invalid(
                    "transport",
                    format!("{other:?} is neither \"http\" nor \"mqtt\""),
                ))
            }
        };
        let config_hook_timeout = duration(
            "config_hook_timeout",
            pick(&cli.config_hook_timeout, raw.config_hook_timeout),
            Duration::from_secs(60),
        )?;
        if config_hook_timeout < Duration::from_secs(1) {
            return Err(invalid("config_hook_timeout", "must be at least 1s".into()));
        }
        let mut static_metrics = BTreeMap::new();
        for (name, value) in raw.static_metrics {
            let metric =
                MetricName::parse(&name).map_err(|e| invalid("static_metrics", e.to_string()))?;
            crate::metrics::check_value(&metric, value)
                .map_err(|e| invalid("static_metrics", e))?;
            static_metrics.insert(metric, value);
        }
        let state_dir = cli
            .state_dir
            .clone()
            .or(raw.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let update = match raw.update {
            Some(update) if update.enabled.unwrap_or(false) => {
                Some(UpdateConfig::from_raw(update, &state_dir)?)
            }
            _ => None,
        };
        let jobs = match raw.jobs {
            Some(jobs) if !jobs.enabled.unwrap_or(true) => None,
            jobs => Some(JobsConfig::from_raw(jobs.unwrap_or_default())?),
        };
        Ok(Config {
            server_url,
            state_dir,
            hardware_id: parse_opt(
                "hardware_id",
                pick(&cli.hardware_id, raw.hardware_id),
                HardwareId::parse,
            )?,
            claim_token: pick(&cli.claim_token, raw.claim_token).filter(|t| !t.is_empty()),
            preauth_secret: pick(&cli.preauth_secret, raw.preauth_secret).filter(|t| !t.is_empty()),
            device_id: parse_opt(
                "device_id",
                pick(&cli.device_id, raw.device_id),
                DeviceId::parse,
            )?,
            device_type: parse_opt(
                "device_type",
                pick(&cli.device_type, raw.device_type),
                DeviceType::parse,
            )?,
            hw_rev: parse_opt("hw_rev", pick(&cli.hw_rev, raw.hw_rev), Label::parse)?,
            firmware: parse_opt(
                "firmware",
                pick(&cli.firmware, raw.firmware),
                Version::parse,
            )?,
            boot_slot: parse_opt(
                "boot_slot",
                pick(&cli.boot_slot, raw.boot_slot),
                Label::parse,
            )?,
            heartbeat_interval,
            heartbeat_jitter,
            max_buffered_heartbeats,
            static_metrics,
            metrics_command: cli.metrics_command.clone().or(raw.metrics_command),
            request_timeout: duration(
                "request_timeout",
                pick(&cli.request_timeout, raw.request_timeout),
                Duration::from_secs(30),
            )?,
            transport,
            shadow_sync: cli.shadow_sync.or(raw.shadow_sync).unwrap_or(true),
            config_hook: cli.config_hook.clone().or(raw.config_hook),
            config_hook_timeout,
            update,
            jobs,
        })
    }

    /// The hardware id to provision with: configured, or the machine id.
    pub fn resolve_hardware_id(&self) -> Result<HardwareId, ConfigError> {
        if let Some(id) = &self.hardware_id {
            return Ok(id.clone());
        }
        let text = std::fs::read_to_string(MACHINE_ID_PATH).map_err(|_| ConfigError::Missing {
            key: "hardware_id",
            hint: "this system has no readable /etc/machine-id; set `hardware_id` in the configuration file or --hardware-id",
        })?;
        HardwareId::parse(text.trim())
            .map_err(|e| invalid("hardware_id", format!("from {MACHINE_ID_PATH}: {e}")))
    }
}

impl UpdateConfig {
    fn from_raw(raw: RawUpdateConfig, state_dir: &Path) -> Result<UpdateConfig, ConfigError> {
        use crate::update::slots::env::EnvSlotsOptions;
        let check_interval = duration(
            "update.check_interval",
            raw.check_interval,
            Duration::from_secs(600),
        )?;
        if check_interval < Duration::from_secs(1) {
            return Err(invalid(
                "update.check_interval",
                "must be at least 1s".into(),
            ));
        }
        let watchdog_timeout = duration(
            "update.watchdog_timeout",
            raw.watchdog_timeout,
            Duration::from_secs(300),
        )?;
        let health_check_timeout = duration(
            "update.health_check_timeout",
            raw.health_check_timeout,
            Duration::from_secs(60),
        )?;
        if health_check_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "update.health_check_timeout",
                "must be at least 1s".into(),
            ));
        }
        if watchdog_timeout <= health_check_timeout {
            return Err(invalid(
                "update.watchdog_timeout",
                "must be longer than update.health_check_timeout".into(),
            ));
        }
        let env_options = |default_reboot: &str| -> Result<EnvSlotsOptions, ConfigError> {
            let device = |key: &'static str, value: Option<PathBuf>| {
                value.ok_or(ConfigError::Missing {
                    key,
                    hint: "the uboot and grub slots need the block device (or file) of each slot",
                })
            };
            let mut options = EnvSlotsOptions::new(
                [
                    device("update.slot_a_device", raw.slot_a_device.clone())?,
                    device("update.slot_b_device", raw.slot_b_device.clone())?,
                ],
                state_dir.join("slots"),
            );
            let names = &mut options.names;
            let [value_a, value_b] = &mut names.slot_values;
            for (target, value) in [
                (&mut names.boot_part, &raw.boot_part_var),
                (&mut names.upgrade_available, &raw.upgrade_available_var),
                (&mut names.bootcount, &raw.bootcount_var),
                (&mut names.bootlimit, &raw.bootlimit_var),
                (value_a, &raw.slot_a_value),
                (value_b, &raw.slot_b_value),
            ] {
                if let Some(value) = value {
                    if value.is_empty()
                        || value.contains(char::is_whitespace)
                        || value.contains('=')
                    {
                        return Err(invalid(
                            "update",
                            format!("{value:?} is not a usable bootloader variable name or value"),
                        ));
                    }
                    *target = value.clone();
                }
            }
            if names.slot_values[0] == names.slot_values[1] {
                return Err(invalid(
                    "update.slot_b_value",
                    "must differ from slot_a_value".into(),
                ));
            }
            options.bootlimit = raw.bootlimit;
            let reboot = raw
                .reboot_command
                .clone()
                .unwrap_or_else(|| default_reboot.to_owned());
            options.reboot_command = reboot.split_whitespace().map(str::to_owned).collect();
            if options.reboot_command.is_empty() {
                return Err(invalid("update.reboot_command", "must not be empty".into()));
            }
            Ok(options)
        };
        let slots = match raw.slots.as_deref() {
            Some("simulated") => SlotsConfig::Simulated {
                dir: raw.slot_dir.clone().ok_or(ConfigError::Missing {
                    key: "update.slot_dir",
                    hint: "slots = \"simulated\" keeps its two images and bootloader environment in this directory",
                })?,
            },
            Some("uboot") => SlotsConfig::Uboot {
                env: env_options("/sbin/reboot")?,
                fw_printenv: raw.fw_printenv.clone().unwrap_or_else(|| "fw_printenv".into()),
                fw_setenv: raw.fw_setenv.clone().unwrap_or_else(|| "fw_setenv".into()),
            },
            Some("grub") => SlotsConfig::Grub {
                env: env_options("/sbin/reboot")?,
                grub_editenv: raw.grub_editenv.clone().unwrap_or_else(|| "grub-editenv".into()),
                env_file: raw
                    .grub_env_file
                    .clone()
                    .unwrap_or_else(|| "/boot/grub/grubenv".into()),
            },
            Some(other) => {
                return Err(invalid(
                    "update.slots",
                    format!("{other:?} is none of \"simulated\", \"uboot\", \"grub\""),
                ))
            }
            None => {
                return Err(ConfigError::Missing {
                    key: "update.slots",
                    hint: "say which A/B slots to update: \"simulated\", \"uboot\" or \"grub\"",
                })
            }
        };
        Ok(UpdateConfig {
            slots,
            check_interval,
            health_check_command: raw.health_check_command,
            health_check_timeout,
            health_process: raw
                .health_process
                .filter(|p| !p.is_empty())
                .map(|p| crate::update::health::ProcessCheck::parse(&p)),
            health_connectivity: raw.health_connectivity.unwrap_or(true),
            watchdog_timeout,
            security_floor: parse_opt("update.security_floor", raw.security_floor, Version::parse)?,
            allow_downgrade: raw.allow_downgrade.unwrap_or(false),
            tuf_root: raw.tuf_root,
        })
    }
}

impl RawConfig {
    pub fn read(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        RawConfig::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }
}

impl JobsConfig {
    fn from_raw(raw: RawJobsConfig) -> Result<JobsConfig, ConfigError> {
        let reboot_command: Vec<String> = raw
            .reboot_command
            .as_deref()
            .unwrap_or("/sbin/reboot")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if reboot_command.is_empty() {
            return Err(invalid("jobs.reboot_command", "must not be empty".into()));
        }
        for name in raw.commands.keys() {
            let valid = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !valid {
                return Err(invalid(
                    "jobs.commands",
                    format!("command name {name:?} must be 1-64 characters of A-Z, a-z, 0-9, '_', '.' or '-'"),
                ));
            }
        }
        let command_timeout = duration(
            "jobs.command_timeout",
            raw.command_timeout,
            Duration::from_secs(300),
        )?;
        if command_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "jobs.command_timeout",
                "must be at least 1s".into(),
            ));
        }
        Ok(JobsConfig {
            reboot_command,
            commands: raw.commands,
            command_timeout,
            log_file: raw.log_file,
        })
    }
}

fn invalid(key: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { key, message }
}

fn parse_opt<T, E: std::fmt::Display>(
    key: &'static str,
    value: Option<String>,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<T>, ConfigError> {
    value
        .map(|text| parse(&text).map_err(|e| invalid(key, e.to_string())))
        .transpose()
}

fn duration(
    key: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    let parsed = drover_core::Duration::parse(&text).map_err(|e| invalid(key, e.to_string()))?;
    Ok(Duration::from_millis(parsed.as_millis().max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("agent.toml"))
    }

    #[test]
    fn a_full_file_parses_into_typed_values() {
        let config = parse(
            r#"
            server_url = "https://drover.example.com"
            state_dir = "/tmp/agent"
            hardware_id = "SN-0001"
            claim_token = "drv_claim_x"
            device_type = "gateway"
            firmware = "1.2.3"
            boot_slot = "a"
            heartbeat_interval = "5m"
            heartbeat_jitter = "10s"
            max_buffered_heartbeats = 50
            metrics_command = "/usr/local/bin/metrics"
            [static_metrics]
            battery_v = 3.7
            "#,
        )
        .unwrap();
        assert_eq!(config.heartbeat_interval, Duration::from_secs(300));
        assert_eq!(config.heartbeat_jitter, Duration::from_secs(10));
        assert_eq!(config.max_buffered_heartbeats, 50);
        assert_eq!(config.firmware.unwrap().to_string(), "1.2.3");
        assert_eq!(config.static_metrics.len(), 1);
        assert_eq!(config.state_dir, PathBuf::from("/tmp/agent"));
    }

    #[test]
    fn defaults_apply_when_only_the_server_is_given() {
        let config = parse(r#"server_url = "http://127.0.0.1:8080""#).unwrap();
        assert_eq!(config.heartbeat_interval, Duration::from_secs(60));
        assert_eq!(config.heartbeat_jitter, Duration::from_secs(6));
        assert_eq!(config.max_buffered_heartbeats, 1000);
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert!(config.hardware_id.is_none());
    }

    #[test]
    fn the_mqtt_transport_takes_its_broker_from_the_url() {
        let config = parse(
            r#"
            server_url = "https://drover.example.com"
            transport = "mqtt"
            mqtt_url = "mqtt://broker.example.com"
            config_hook = "/usr/local/lib/drover/apply.sh"
            config_hook_timeout = "20s"
            "#,
        )
        .unwrap();
        let broker = MqttAddress {
            host: "broker.example.com".into(),
            port: 1883,
        };
        assert_eq!(config.transport, TransportKind::Mqtt(broker));
        assert_eq!(config.config_hook_timeout, Duration::from_secs(20));
        assert!(config.shadow_sync);
        let defaults = parse(r#"server_url = "http://a""#).unwrap();
        assert_eq!(defaults.transport, TransportKind::Http);
        assert_eq!(defaults.config_hook_timeout, Duration::from_secs(60));
        for (url, host, port) in [
            ("mqtt://127.0.0.1:1884", "127.0.0.1", 1884),
            ("tcp://b:1/", "b", 1),
            ("mqtt://[::1]:1883", "[::1]", 1883),
            ("mqtt://[::1]", "[::1]", 1883),
        ] {
            let address = MqttAddress::parse(url).unwrap();
            assert_eq!((address.host.as_str(), address.port), (host, port), "{url}");
        }
        let cli = Cli {
            transport: Some("mqtt".into()),
            mqtt_url: Some("mqtt://flag:2000".into()),
            shadow_sync: Some(false),
            ..Cli::default()
        };
        let raw = RawConfig::parse("server_url = \"http://a\"", Path::new("agent.toml")).unwrap();
        let config = Config::from_parts(&cli, raw).unwrap();
        let flagged = MqttAddress::parse("mqtt://flag:2000").unwrap();
        assert_eq!(config.transport, TransportKind::Mqtt(flagged));
        assert!(!config.shadow_sync);
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli {
            heartbeat_interval: Some("10s".into()),
            ..Cli::default()
        };
        let raw = RawConfig::parse(
            "server_url = \"http://a\"\nheartbeat_interval = \"1m\"",
            Path::new("agent.toml"),
        )
        .unwrap();
        let config = Config::from_parts(&cli, raw).unwrap();
        assert_eq!(config.heartbeat_interval, Duration::from_secs(10));
    }

    #[test]
    fn the_update_table_parses_with_backend_defaults() {
        let config = parse(
            r#"
            server_url = "http://a"
            state_dir = "/var/lib/x"
            [update]
            enabled = true
            slots = "uboot"
            slot_a_device = "/dev/mmcblk0p2"
            slot_b_device = "/dev/mmcblk0p3"
            slot_a_value = "2"
            slot_b_value = "3"
            boot_part_var = "mender_boot_part"
            check_interval = "30m"
            health_process = "/run/app.pid"
            security_floor = "2.0.0"
            "#,
        )
        .unwrap();
        let update = config.update.unwrap();
        assert_eq!(update.check_interval, Duration::from_secs(1800));
        assert_eq!(update.watchdog_timeout, Duration::from_secs(300));
        assert!(update.health_connectivity);
        assert_eq!(update.security_floor.unwrap().to_string(), "2.0.0");
        let SlotsConfig::Uboot { env, fw_setenv, .. } = update.slots else {
            panic!("not uboot");
        };
        assert_eq!(env.names.boot_part, "mender_boot_part");
        assert_eq!(env.names.slot_values, ["2".to_owned(), "3".to_owned()]);
        assert_eq!(env.reboot_command, ["/sbin/reboot"]);
        assert_eq!(env.info_dir, PathBuf::from("/var/lib/x/slots"));
        assert_eq!(fw_setenv, PathBuf::from("fw_setenv"));
        let off = parse("server_url = \"http://a\"\n[update]\nslots = \"grub\"").unwrap();
        assert!(off.update.is_none(), "updates are off unless enabled");
    }

    #[test]
    fn bad_configuration_is_reported_precisely() {
        let cases = [
            ("server_url = ", "invalid TOML in agent.toml"),
            (
                "server_url = \"http://a\"\nheartbeat_intervall = \"1m\"",
                "unknown field `heartbeat_intervall`",
            ),
            ("heartbeat_interval = \"1m\"", "server_url is required"),
            (
                "server_url = \"drover.example.com\"",
                "must start with http:// or https://",
            ),
            (
                "server_url = \"http://a\"\nheartbeat_interval = \"soon\"",
                "invalid heartbeat_interval",
            ),
            (
                "server_url = \"http://a\"\nfirmware = \"one\"",
                "invalid firmware",
            ),
            (
                "server_url = \"http://a\"\n[static_metrics]\nBattery = 1.0",
                "invalid static_metrics",
            ),
            (
                "server_url = \"http://a\"\n[static_metrics]\ncpu_pct = 250.0",
                "outside",
            ),
            (
                "server_url = \"http://a\"\nmax_buffered_heartbeats = 0",
                "at least 1",
            ),
            (
                "server_url = \"http://a\"\ntransport = \"coap\"",
                "invalid transport: \"coap\" is neither",
            ),
            (
                "server_url = \"http://a\"\ntransport = \"mqtt\"",
                "mqtt_url is required",
            ),
            (
                "server_url = \"http://a\"\ntransport = \"mqtt\"\nmqtt_url = \"mqtt://dev:secret@b\"",
                "must not contain a user name or password",
            ),
            (
                "server_url = \"http://a\"\ntransport = \"mqtt\"\nmqtt_url = \"mqtts://b\"",
                "TLS is not supported yet",
            ),
            (
                "server_url = \"http://a\"\ntransport = \"mqtt\"\nmqtt_url = \"mqtt://b:0\"",
                "invalid port",
            ),
            (
                "server_url = \"http://a\"\nconfig_hook_timeout = \"10ms\"",
                "at least 1s",
            ),
            (
                "server_url = \"http://a\"\n[update]\nenabled = true",
                "update.slots is required",
            ),
            (
                "server_url = \"http://a\"\n[update]\nenabled = true\nslots = \"mbr\"",
                "invalid update.slots",
            ),
            (
                "server_url = \"http://a\"\n[update]\nenabled = true\nslots = \"simulated\"",
                "update.slot_dir is required",
            ),
            (
                "server_url = \"http://a\"\n[update]\nenabled = true\nslots = \"grub\"",
                "update.slot_a_device is required",
            ),
            (
                "server_url = \"http://a\"\n[update]\nenabled = true\nslots = \"simulated\"\nslot_dir = \"/x\"\nwatchdog_timeout = \"30s\"",
                "must be longer than update.health_check_timeout",
            ),
            (
                "server_url = \"http://a\"\n[update]\nsecurity_flor = \"1.0.0\"",
                "unknown field `security_flor`",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
