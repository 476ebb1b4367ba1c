//! The scenario file: a TOML description of a simulated fleet, its firmware behaviour models and its
//! network models, parsed into a validated [`Scenario`].
//!
//! Parsing happens in two steps. Serde reads the text into private raw types that mirror the file
//! (refusing unknown keys and wrong types, with toml's line and column); [`Scenario::parse`] then
//! checks every value and builds the validated model, naming the key path of anything wrong
//! (`fleet[1].count: must be at least 1`). Past that boundary every value is known to be usable.
//!
//! # Time
//! Durations in a scenario are simulated time (`run.duration`, heartbeat intervals, disconnect
//! periods, download and install durations), except a network model's `latency`, `jitter` and
//! `bandwidth`, which shape real traffic to the real server and so are wall-clock.
//!
//! # Example
//! ```toml
//! [run]
//! speedup = 60          # simulated time runs 60× faster than the wall clock
//! duration = "24h"      # simulated
//! seed = 7
//! transport_mix = 0.25  # a quarter of the devices speak MQTT, the rest HTTP
//!
//! [[fleet]]
//! device_type = "thermostat-v2"
//! count = 80
//! firmware = "1.4.0"
//! hw_revs = { "rev-a" = 0.7, "rev-b" = 0.3 }
//! regions = "eu-west"                    # one value is shorthand for a weight of 1
//! tags = { env = { prod = 9, staging = 1 } }  # weights are relative
//! heartbeat_interval = "60s"
//! heartbeat_jitter = "5s"
//! network = "wifi"
//! crash_rate_per_hour = 0.001
//! metrics = { battery_ma = { normal = { mean = 12, sd = 1.5 } }, temp_c = 21.5 }
//!
//! [firmware."1.5.0"]
//! boot_failure = 0.02
//! crash_rate_multiplier = 3
//! install_duration = { lognormal = { mu = 4.5, sigma = 0.3 } }  # seconds
//!
//! [network.wifi]
//! latency = "40ms"
//! loss = 0.01
//! bandwidth = "2Mbit/s"
//! disconnects = { every = "6h", for = "2m" }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use drover_core::health::{KnownMetric, MetricName};
use drover_core::{ArtifactName, DeviceType, Duration, Label, TagKey, TagValue, Version};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::time::TimeScale;

/// The most devices one scenario may describe; far beyond what one process can simulate, it only
/// keeps a mistyped count from exhausting memory.
pub const MAX_DEVICES: usize = 1_000_000;

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The text is not TOML, or its structure does not match the format (unknown key, wrong type,
    /// missing field). The message carries the line and column.
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    /// A value is out of range or refers to something that does not exist.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub run: RunSettings,
    /// The cohorts, in file order; their order decides device ids and random streams.
    pub fleet: Vec<Cohort>,
    /// Behaviour models, looked up with [`Scenario::firmware_behaviour`].
    pub firmware: Vec<FirmwareModel>,
    /// Network models by name, referred to by cohorts.
    pub networks: BTreeMap<String, NetworkModel>,
}

/// The `[run]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    pub time_scale: TimeScale,
    /// How much simulated time the run covers; `None` runs until stopped.
    pub duration: Option<Duration>,
    /// Makes the fleet and its behaviour reproducible; without one the caller picks a seed and
    /// should print it so the run can be repeated.
    pub seed: Option<u64>,
    /// The share of devices that use the MQTT device API; the others use HTTP.
    pub transport_mix: f64,
    /// Whether devices keep their shadow in sync (default true). Over HTTP that is one held
    /// long-poll per device, so a fleet larger than the process's file-descriptor limit turns it
    /// off and shares a few pooled connections for everything else.
    pub shadow: bool,
    /// Whether devices accept a version older than the one they run (the agent's
    /// `allow_downgrade`; default false). A rollout's rollback needs it: it reinstalls the
    /// previous release.
    pub allow_downgrade: bool,
}

/// One `[[fleet]]` cohort: `count` devices of one type whose attributes are drawn from weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Cohort {
    pub device_type: DeviceType,
    pub count: usize,
    pub hw_revs: Option<Weighted<Label>>,
    pub regions: Option<Weighted<Label>>,
    pub sites: Option<Weighted<Label>>,
    pub tags: BTreeMap<TagKey, Weighted<TagValue>>,
    /// The version every device of the cohort runs when the simulation starts.
    pub firmware: Version,
    pub heartbeat: Heartbeat,
    /// The name of a model in [`Scenario::networks`]; `None` is a perfect network.
    pub network: Option<String>,
    /// Baseline heartbeat metrics with a healthy firmware.
    pub metrics: BTreeMap<MetricName, Distribution>,
    /// Baseline crashes per device-hour with a healthy firmware.
    pub crash_rate_per_hour: f64,
}

/// When a device sends heartbeats: every `interval`, give or take up to `jitter` (simulated time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval: Duration,
    /// Always shorter than `interval`, so every delay is positive.
    pub jitter: Duration,
}

/// Values with relative weights, normalised to sum to 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Weighted<T> {
    choices: Vec<(T, f64)>,
}

/// A random distribution of a number. In the file: `{ normal = { mean = 12, sd = 1.5 } }`,
/// `{ uniform = { min = 0, max = 1 } }`, `{ lognormal = { mu = 4.5, sigma = 0.3 } }`, or
/// `{ constant = 21.5 }` (a bare number is shorthand for a constant).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    Normal {
        mean: f64,
        sd: f64,
    },
    Uniform {
        min: f64,
        max: f64,
    },
    Constant(f64),
    /// `e^X` with `X ~ Normal(mu, sigma)`: positive and right-skewed, like real durations.
    Lognormal {
        mu: f64,
        sigma: f64,
    },
}

/// What a `[firmware."…"]` table applies to: a version, or every version of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FirmwareKey {
    Version(Version),
    Artifact(ArtifactName),
}

/// A `[firmware."…"]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct FirmwareModel {
    pub key: FirmwareKey,
    pub behaviour: FirmwareBehaviour,
}

/// How a device behaves once it runs a firmware. [`FirmwareBehaviour::BASELINE`] is a good version:
/// the cohort's baseline metrics and crash rate, unchanged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FirmwareBehaviour {
    /// Probability that the new image fails to boot (the device rolls back).
    pub boot_failure: f64,
    /// Probability that it boots but fails its health check (the device rolls back).
    pub health_check_failure: f64,
    pub crash_rate_multiplier: f64,
    pub battery_current_multiplier: f64,
    /// Free memory shrinks by this much per simulated hour of uptime.
    pub memory_leak_bytes_per_hour: f64,
    pub connectivity: ConnectivityEffect,
    /// `None`: the download takes as long as the network model makes it.
    pub download_duration: Option<DurationModel>,
    /// `None`: installing takes no simulated time.
    pub install_duration: Option<DurationModel>,
}

/// How a firmware changes the radio link (`connectivity = { packet_loss = 0.02, rssi_delta = -6 }`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConnectivityEffect {
    /// Added to the network model's loss probability.
    pub packet_loss: f64,
    /// Added to the reported RSSI, in dB.
    pub rssi_delta_db: f64,
}

/// A simulated duration: fixed (`"90s"`) or drawn from a distribution of seconds
/// (`{ normal = { mean = 90, sd = 15 } }`, negative samples count as zero).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DurationModel {
    Fixed(Duration),
    Seconds(Distribution),
}

/// A `[network."…"]` table, applied by the simulator's transport layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkModel {
    /// Added to every message (wall-clock).
    pub latency: Duration,
    /// A further random delay of up to this much per message (wall-clock).
    pub jitter: Duration,
    /// Probability that a message is lost.
    pub loss: f64,
    /// `None`: no limit.
    pub bandwidth: Option<Bandwidth>,
    /// `None`: the link never drops.
    pub disconnects: Option<Disconnects>,
}

/// A transfer rate in bytes per second, written like `256kbit`, `10Mbit/s`, `500kB/s` or `1MiB/s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bandwidth(u64);

/// Periodic outages: the link drops every `every` for `lasting` (`{ every = "2h", for = "30s" }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnects {
    pub every: Duration,
    /// Always shorter than `every`.
    pub lasting: Duration,
}

impl Scenario {
    /// Parses and validates a scenario file's text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario = toml::from_str(text)?;
        raw.validate()
    }

    /// How a device running `version` (of `artifact`, when known) behaves: see [`match_firmware`].
    pub fn firmware_behaviour(
        &self,
        version: &Version,
        artifact: Option<&ArtifactName>,
    ) -> &FirmwareBehaviour {
        match_firmware(&self.firmware, version, artifact)
            .map_or(&FirmwareBehaviour::BASELINE, |model| &model.behaviour)
    }

    /// How many devices the scenario describes.
    pub fn n_devices(&self) -> usize {
        self.fleet.iter().map(|cohort| cohort.count).sum()
    }
}

/// The model for a device running `version` of `artifact`: the one keyed by exactly that version
/// (build metadata ignored, as in SemVer) if there is one, otherwise the one keyed by the artifact's
/// name, otherwise none (the firmware behaves like the baseline).
pub fn match_firmware<'a>(
    models: &'a [FirmwareModel],
    version: &Version,
    artifact: Option<&ArtifactName>,
) -> Option<&'a FirmwareModel> {
    let by_version = models
        .iter()
        .find(|model| matches!(&model.key, FirmwareKey::Version(v) if v == version));
    by_version.or_else(|| {
        let artifact = artifact?;
        models
            .iter()
            .find(|model| matches!(&model.key, FirmwareKey::Artifact(a) if a == artifact))
    })
}

impl FirmwareKey {
    /// A version if the text is one (`2.0.0`, `v1.4`), otherwise an artifact name.
    pub fn parse(text: &str) -> Result<FirmwareKey, String> {
        if let Ok(version) = Version::parse(text) {
            return Ok(FirmwareKey::Version(version));
        }
        ArtifactName::parse(text)
            .map(FirmwareKey::Artifact)
            .map_err(|e| format!("neither a version (e.g. 2.3.0) nor an artifact name: {e}"))
    }
}

impl fmt::Display for FirmwareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirmwareKey::Version(version) => write!(f, "version {version}"),
            FirmwareKey::Artifact(artifact) => write!(f, "artifact {artifact}"),
        }
    }
}

impl FirmwareBehaviour {
    /// A good version: behaves exactly like the cohort's baseline.
    pub const BASELINE: FirmwareBehaviour = FirmwareBehaviour {
        boot_failure: 0.0,
        health_check_failure: 0.0,
        crash_rate_multiplier: 1.0,
        battery_current_multiplier: 1.0,
        memory_leak_bytes_per_hour: 0.0,
        connectivity: ConnectivityEffect {
            packet_loss: 0.0,
            rssi_delta_db: 0.0,
        },
        download_duration: None,
        install_duration: None,
    };
}

impl Default for FirmwareBehaviour {
    fn default() -> Self {
        FirmwareBehaviour::BASELINE
    }
}

impl<T> Weighted<T> {
    /// Normalises relative weights. Refused when there are no choices, a weight is negative or not
    /// finite, or all weights are zero.
    pub fn new(choices: Vec<(T, f64)>) -> Result<Weighted<T>, &'static str> {
        if choices.is_empty() {
            return Err("needs at least one value");
        }
        if choices.iter().any(|(_, w)| !w.is_finite() || *w < 0.0) {
            return Err("weights must be finite and not negative");
        }
        let total: f64 = choices.iter().map(|(_, w)| w).sum();
        if total <= 0.0 || !total.is_finite() {
            return Err("weights must not all be zero");
        }
        Ok(Weighted {
            choices: choices.into_iter().map(|(v, w)| (v, w / total)).collect(),
        })
    }

    /// One value, always chosen.
    pub fn single(value: T) -> Weighted<T> {
        Weighted {
            choices: vec![(value, 1.0)],
        }
    }

    /// The values and their weights, which sum to 1.
    pub fn choices(&self) -> &[(T, f64)] {
        &self.choices
    }
}

impl Bandwidth {
    pub const fn from_bytes_per_sec(bytes: u64) -> Bandwidth {
        Bandwidth(bytes)
    }

    pub const fn bytes_per_sec(self) -> u64 {
        self.0
    }

    /// Parses a number and a unit: bits (`bit`, `kbit`, `Mbit`, `Gbit`) or bytes (`B`, `kB`, `MB`,
    /// `GB`, `KiB`, `MiB`, `GiB`), optionally followed by `/s`. Fractions are allowed (`1.5Mbit`);
    /// the result is rounded down to whole bytes per second and must be at least 1.
    pub fn parse(text: &str) -> Result<Bandwidth, String> {
        const EXPECTED: &str = "expected a number and a unit such as 256kbit, 10Mbit/s or 1MiB/s";
        let body = text.trim();
        let body = body.strip_suffix("/s").unwrap_or(body);
        let split = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, unit) = body.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: {EXPECTED}"))?;
        let bytes_per_unit = match unit.trim_start() {
            "bit" => 1.0 / 8.0,
            "kbit" | "Kbit" => 1e3 / 8.0,
            "Mbit" => 1e6 / 8.0,
            "Gbit" => 1e9 / 8.0,
            "B" => 1.0,
            "kB" | "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "" => return Err(format!("{text:?}: missing unit; {EXPECTED}")),
            _ => return Err(format!("{text:?}: unknown unit; {EXPECTED}")),
        };
        let bytes = (number * bytes_per_unit).floor();
        if bytes < 1.0 {
            return Err(format!("{text:?} is less than 1 byte per second"));
        }
        if bytes > u64::MAX as f64 {
            return Err(format!("{text:?} is too large"));
        }
        Ok(Bandwidth(bytes as u64))
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} B/s", self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// The raw file, as serde reads it.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    run: RawRun,
    #[serde(default)]
    fleet: Vec<RawCohort>,
    #[serde(default)]
    firmware: BTreeMap<String, RawFirmware>,
    #[serde(default)]
    network: BTreeMap<String, RawNetwork>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRun {
    speedup: Option<f64>,
    duration: Option<String>,
    seed: Option<u64>,
    transport_mix: Option<f64>,
    shadow: Option<bool>,
    allow_downgrade: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCohort {
    device_type: String,
    // Signed, so that 0 and negative counts get this crate's message rather than serde's.
    count: i64,
    hw_revs: Option<RawWeighted>,
    regions: Option<RawWeighted>,
    sites: Option<RawWeighted>,
    #[serde(default)]
    tags: BTreeMap<String, RawWeighted>,
    firmware: String,
    heartbeat_interval: Option<String>,
    heartbeat_jitter: Option<String>,
    network: Option<String>,
    #[serde(default)]
    metrics: BTreeMap<String, Distribution>,
    crash_rate_per_hour: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFirmware {
    boot_failure: Option<f64>,
    health_check_failure: Option<f64>,
    crash_rate_multiplier: Option<f64>,
    battery_current_multiplier: Option<f64>,
    memory_leak_bytes_per_hour: Option<f64>,
    connectivity: Option<RawConnectivity>,
    download_duration: Option<RawDurationModel>,
    install_duration: Option<RawDurationModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnectivity {
    packet_loss: Option<f64>,
    rssi_delta: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    latency: Option<String>,
    jitter: Option<String>,
    loss: Option<f64>,
    bandwidth: Option<String>,
    disconnects: Option<RawDisconnects>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisconnects {
    every: String,
    #[serde(rename = "for")]
    lasting: String,
}

/// `"rev-a"` or `{ "rev-a" = 0.7, "rev-b" = 0.3 }`, in file order.
struct RawWeighted(Vec<(String, f64)>);

/// `"90s"` or a distribution of seconds; the text is parsed during validation so that its error
/// names the key path.
enum RawDurationModel {
    Text(String),
    Seconds(Distribution),
}

/// The file's spelling of a [`Distribution`] when written as a table.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum TaggedDistribution {
    Normal { mean: f64, sd: f64 },
    Uniform { min: f64, max: f64 },
    Constant(f64),
    Lognormal { mu: f64, sigma: f64 },
}

impl From<TaggedDistribution> for Distribution {
    fn from(tagged: TaggedDistribution) -> Self {
        match tagged {
            TaggedDistribution::Normal { mean, sd } => Distribution::Normal { mean, sd },
            TaggedDistribution::Uniform { min, max } => Distribution::Uniform { min, max },
            TaggedDistribution::Constant(value) => Distribution::Constant(value),
            TaggedDistribution::Lognormal { mu, sigma } => Distribution::Lognormal { mu, sigma },
        }
    }
}

impl<'de> Deserialize<'de> for Distribution {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DistributionVisitor;
        impl<'de> Visitor<'de> for DistributionVisitor {
            type Value = Distribution;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a number or one of { normal = { mean, sd } }, { uniform = { min, max } }, \
                     { constant = x }, { lognormal = { mu, sigma } }",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Distribution, E> {
                Ok(Distribution::Constant(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Distribution, E> {
                Ok(Distribution::Constant(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Distribution, E> {
                Ok(Distribution::Constant(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Distribution, A::Error> {
                TaggedDistribution::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Distribution::from)
            }
        }
        d.deserialize_any(DistributionVisitor)
    }
}

impl<'de> Deserialize<'de> for RawWeighted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct WeightedVisitor;
        impl<'de> Visitor<'de> for WeightedVisitor {
            type Value = RawWeighted;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a value or a table of weighted values, e.g. { "rev-a" = 0.7, "rev-b" = 0.3 }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawWeighted, E> {
                Ok(RawWeighted(vec![(v.to_owned(), 1.0)]))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawWeighted, A::Error> {
                let mut choices = Vec::new();
                while let Some((value, weight)) = map.next_entry::<String, f64>()? {
                    choices.push((value, weight));
                }
                Ok(RawWeighted(choices))
            }
        }
        d.deserialize_any(WeightedVisitor)
    }
}

impl<'de> Deserialize<'de> for RawDurationModel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct DurationModelVisitor;
        impl<'de> Visitor<'de> for DurationModelVisitor {
            type Value = RawDurationModel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"a duration such as "90s" or a distribution of seconds such as { normal = { mean = 90, sd = 15 } }"#,
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDurationModel, E> {
                Ok(RawDurationModel::Text(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawDurationModel, A::Error> {
                TaggedDistribution::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|tagged| RawDurationModel::Seconds(tagged.into()))
            }
        }
        d.deserialize_any(DurationModelVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: raw file → Scenario.

impl RawScenario {
    fn validate(self) -> Result<Scenario, ScenarioError> {
        let run = self.run.validate()?;

        let mut networks = BTreeMap::new();
        for (name, raw) in self.network {
            let path = format!("network.{}", key_segment(&name));
            Label::parse(&name).map_err(|e| invalid(&path, e))?;
            networks.insert(name, raw.validate(&path)?);
        }

        let mut firmware = Vec::new();
        let mut seen: HashMap<FirmwareKey, String> = HashMap::new();
        for (name, raw) in self.firmware {
            let path = format!("firmware.{}", key_segment(&name));
            let key = FirmwareKey::parse(&name).map_err(|e| invalid(&path, e))?;
            // Versions compare without build metadata, so "1.4" and "1.4.0+b7" are the same key.
            if let Some(first) = seen.get(&key) {
                return Err(invalid(
                    &path,
                    format!("the same {key} as firmware.{}", key_segment(first)),
                ));
            }
            seen.insert(key.clone(), name);
            firmware.push(FirmwareModel {
                key,
                behaviour: raw.validate(&path)?,
            });
        }

        if self.fleet.is_empty() {
            return Err(invalid(
                "fleet",
                "a scenario needs at least one [[fleet]] cohort",
            ));
        }
        let mut fleet = Vec::with_capacity(self.fleet.len());
        let mut n_devices: usize = 0;
        for (cohort_idx, raw) in self.fleet.into_iter().enumerate() {
            let path = format!("fleet[{cohort_idx}]");
            let cohort = raw.validate(&path, &networks)?;
            n_devices = n_devices.saturating_add(cohort.count);
            if n_devices > MAX_DEVICES {
                return Err(invalid(
                    format!("{path}.count"),
                    format!("the fleet would have more than {MAX_DEVICES} devices"),
                ));
            }
            fleet.push(cohort);
        }

        Ok(Scenario {
            run,
            fleet,
            firmware,
            networks,
        })
    }
}

impl RawRun {
    fn validate(self) -> Result<RunSettings, ScenarioError> {
        let time_scale = match self.speedup {
            None => TimeScale::REAL_TIME,
            Some(speedup) => TimeScale::new(speedup).ok_or_else(|| {
                invalid(
                    "run.speedup",
                    format!("{speedup} must be a number of at least 1 (1 is real time)"),
                )
            })?,
        };
        let duration = self
            .duration
            .map(|text| positive_duration("run.duration", &text))
            .transpose()?;
        let transport_mix = match self.transport_mix {
            None => 0.0,
            Some(share) if (0.0..=1.0).contains(&share) => share,
            Some(share) => {
                return Err(invalid(
                    "run.transport_mix",
                    format!("{share} is not a share of devices (0..=1)"),
                ))
            }
        };
        Ok(RunSettings {
            time_scale,
            duration,
            seed: self.seed,
            transport_mix,
            shadow: self.shadow.unwrap_or(true),
            allow_downgrade: self.allow_downgrade.unwrap_or(false),
        })
    }
}

impl RawCohort {
    fn validate(
        self,
        path: &str,
        networks: &BTreeMap<String, NetworkModel>,
    ) -> Result<Cohort, ScenarioError> {
        let at = |key: &str| format!("{path}.{key}");
        let device_type =
            DeviceType::parse(&self.device_type).map_err(|e| invalid(at("device_type"), e))?;
        let count = match usize::try_from(self.count) {
            Ok(count) if count >= 1 => count,
            _ => return Err(invalid(at("count"), "must be at least 1")),
        };
        let labels = |key: &str, raw: Option<RawWeighted>| {
            raw.map(|raw| weighted(&at(key), raw, Label::parse))
                .transpose()
        };
        let hw_revs = labels("hw_revs", self.hw_revs)?;
        let regions = labels("regions", self.regions)?;
        let sites = labels("sites", self.sites)?;
        let mut tags = BTreeMap::new();
        for (key, raw) in self.tags {
            let tag_path = format!("{path}.tags.{}", key_segment(&key));
            let key = TagKey::parse(&key).map_err(|e| invalid(&tag_path, e))?;
            tags.insert(key, weighted(&tag_path, raw, TagValue::parse)?);
        }
        let firmware = Version::parse(&self.firmware).map_err(|e| invalid(at("firmware"), e))?;

        let interval = match &self.heartbeat_interval {
            None => Duration::from_secs(60),
            Some(text) => positive_duration(&at("heartbeat_interval"), text)?,
        };
        let jitter = match &self.heartbeat_jitter {
            None => Duration::from_millis(0),
            Some(text) => duration(&at("heartbeat_jitter"), text)?,
        };
        if jitter >= interval {
            return Err(invalid(
                at("heartbeat_jitter"),
                format!("{jitter} must be shorter than heartbeat_interval ({interval})"),
            ));
        }

        if let Some(name) = &self.network {
            if !networks.contains_key(name) {
                let known: Vec<&str> = networks.keys().map(String::as_str).collect();
                return Err(invalid(
                    at("network"),
                    format!(
                        "no network model named {name:?} (defined: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }

        let mut metrics = BTreeMap::new();
        for (name, distribution) in self.metrics {
            let metric_path = format!("{path}.metrics.{}", key_segment(&name));
            let name = MetricName::parse(&name).map_err(|e| invalid(&metric_path, e))?;
            check_distribution(&metric_path, &distribution)?;
            if let Some(known) = name.known() {
                check_metric_range(&metric_path, &distribution, known)?;
            }
            metrics.insert(name, distribution);
        }

        let crash_rate_per_hour = self
            .crash_rate_per_hour
            .map(|rate| non_negative(&at("crash_rate_per_hour"), rate))
            .transpose()?
            .unwrap_or(0.0);

        Ok(Cohort {
            device_type,
            count,
            hw_revs,
            regions,
            sites,
            tags,
            firmware,
            heartbeat: Heartbeat { interval, jitter },
            network: self.network,
            metrics,
            crash_rate_per_hour,
        })
    }
}

impl RawFirmware {
    fn validate(self, path: &str) -> Result<FirmwareBehaviour, ScenarioError> {
        let at = |key: &str| format!("{path}.{key}");
        let base = FirmwareBehaviour::BASELINE;
        let probability_or = |key: &str, value: Option<f64>, default: f64| {
            value.map_or(Ok(default), |v| probability(&at(key), v))
        };
        let non_negative_or = |key: &str, value: Option<f64>, default: f64| {
            value.map_or(Ok(default), |v| non_negative(&at(key), v))
        };
        let connectivity = match self.connectivity {
            None => base.connectivity,
            Some(raw) => ConnectivityEffect {
                packet_loss: probability_or(
                    "connectivity.packet_loss",
                    raw.packet_loss,
                    base.connectivity.packet_loss,
                )?,
                rssi_delta_db: match raw.rssi_delta {
                    None => base.connectivity.rssi_delta_db,
                    Some(delta) => finite(&at("connectivity.rssi_delta"), delta)?,
                },
            },
        };
        let duration_model = |key: &str, raw: Option<RawDurationModel>| {
            raw.map(|raw| raw.validate(&at(key))).transpose()
        };
        Ok(FirmwareBehaviour {
            boot_failure: probability_or("boot_failure", self.boot_failure, base.boot_failure)?,
            health_check_failure: probability_or(
                "health_check_failure",
                self.health_check_failure,
                base.health_check_failure,
            )?,
            crash_rate_multiplier: non_negative_or(
                "crash_rate_multiplier",
                self.crash_rate_multiplier,
                base.crash_rate_multiplier,
            )?,
            battery_current_multiplier: non_negative_or(
                "battery_current_multiplier",
                self.battery_current_multiplier,
                base.battery_current_multiplier,
            )?,
            memory_leak_bytes_per_hour: non_negative_or(
                "memory_leak_bytes_per_hour",
                self.memory_leak_bytes_per_hour,
                base.memory_leak_bytes_per_hour,
            )?,
            connectivity,
            download_duration: duration_model("download_duration", self.download_duration)?,
            install_duration: duration_model("install_duration", self.install_duration)?,
        })
    }
}

impl RawDurationModel {
    fn validate(self, path: &str) -> Result<DurationModel, ScenarioError> {
        match self {
            RawDurationModel::Text(text) => duration(path, &text).map(DurationModel::Fixed),
            RawDurationModel::Seconds(distribution) => {
                check_distribution(path, &distribution)?;
                let negative = match distribution {
                    Distribution::Normal { mean, .. } => mean < 0.0,
                    Distribution::Uniform { min, .. } => min < 0.0,
                    Distribution::Constant(value) => value < 0.0,
                    Distribution::Lognormal { .. } => false,
                };
                if negative {
                    return Err(invalid(path, "a duration in seconds cannot be negative"));
                }
                Ok(DurationModel::Seconds(distribution))
            }
        }
    }
}

impl RawNetwork {
    fn validate(self, path: &str) -> Result<NetworkModel, ScenarioError> {
        let at = |key: &str| format!("{path}.{key}");
        let optional_duration = |key: &str, text: Option<String>| {
            text.map_or(Ok(Duration::from_millis(0)), |text| {
                duration(&at(key), &text)
            })
        };
        let disconnects = match self.disconnects {
            None => None,
            Some(raw) => {
                let every = positive_duration(&at("disconnects.every"), &raw.every)?;
                let lasting = positive_duration(&at("disconnects.for"), &raw.lasting)?;
                if lasting >= every {
                    return Err(invalid(
                        at("disconnects.for"),
                        format!("{lasting} must be shorter than every ({every})"),
                    ));
                }
                Some(Disconnects { every, lasting })
            }
        };
        Ok(NetworkModel {
            latency: optional_duration("latency", self.latency)?,
            jitter: optional_duration("jitter", self.jitter)?,
            loss: self
                .loss
                .map_or(Ok(0.0), |loss| probability(&at("loss"), loss))?,
            bandwidth: self
                .bandwidth
                .map(|text| Bandwidth::parse(&text).map_err(|e| invalid(at("bandwidth"), e)))
                .transpose()?,
            disconnects,
        })
    }
}

fn invalid(path: impl Into<String>, message: impl fmt::Display) -> ScenarioError {
    ScenarioError::Invalid {
        path: path.into(),
        message: message.to_string(),
    }
}

/// A key as TOML writes it in a path: bare when it can be, quoted otherwise (`firmware."2.0.0"`).
fn key_segment(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn weighted<T, E: fmt::Display>(
    path: &str,
    raw: RawWeighted,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Weighted<T>, ScenarioError> {
    let mut choices = Vec::with_capacity(raw.0.len());
    for (text, weight) in raw.0 {
        let choice_path = format!("{path}.{}", key_segment(&text));
        let value = parse(&text).map_err(|e| invalid(&choice_path, e))?;
        if !weight.is_finite() || weight < 0.0 {
            return Err(invalid(
                &choice_path,
                format!("{weight} is not a weight (a number of at least 0)"),
            ));
        }
        choices.push((value, weight));
    }
    Weighted::new(choices).map_err(|reason| invalid(path, reason))
}

fn duration(path: &str, text: &str) -> Result<Duration, ScenarioError> {
    Duration::parse(text).map_err(|e| invalid(path, e))
}

fn positive_duration(path: &str, text: &str) -> Result<Duration, ScenarioError> {
    let parsed = duration(path, text)?;
    if parsed.as_millis() <= 0 {
        return Err(invalid(path, "must be longer than zero"));
    }
    Ok(parsed)
}

fn finite(path: &str, value: f64) -> Result<f64, ScenarioError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(invalid(path, format!("{value} is not a finite number")))
    }
}

fn probability(path: &str, value: f64) -> Result<f64, ScenarioError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            path,
            format!("{value} is not a probability (0..=1)"),
        ))
    }
}

fn non_negative(path: &str, value: f64) -> Result<f64, ScenarioError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(invalid(
            path,
            format!("{value} must be a number of at least 0"),
        ))
    }
}

fn check_distribution(path: &str, distribution: &Distribution) -> Result<(), ScenarioError> {
    match *distribution {
        Distribution::Normal { mean, sd } => {
            finite(&format!("{path}.normal.mean"), mean)?;
            non_negative(&format!("{path}.normal.sd"), sd)?;
        }
        Distribution::Uniform { min, max } => {
            finite(&format!("{path}.uniform.min"), min)?;
            finite(&format!("{path}.uniform.max"), max)?;
            if min > max {
                return Err(invalid(
                    format!("{path}.uniform"),
                    format!("min {min} is greater than max {max}"),
                ));
            }
        }
        Distribution::Constant(value) => {
            finite(&format!("{path}.constant"), value)?;
        }
        Distribution::Lognormal { mu, sigma } => {
            // e^700 is near the largest f64; beyond it every sample would be infinite.
            if !mu.is_finite() || mu.abs() > 700.0 {
                return Err(invalid(
                    format!("{path}.lognormal.mu"),
                    format!("{mu} must be a number between -700 and 700"),
                ));
            }
            non_negative(&format!("{path}.lognormal.sigma"), sigma)?;
        }
    }
    Ok(())
}

/// Refuses distributions of a known metric centred outside the values a device may report, which
/// the server would reject as corrupt.
fn check_metric_range(
    path: &str,
    distribution: &Distribution,
    known: &KnownMetric,
) -> Result<(), ScenarioError> {
    let values: &[f64] = match distribution {
        Distribution::Normal { mean, .. } => &[*mean],
        Distribution::Uniform { min, max } => &[*min, *max],
        Distribution::Constant(value) => &[*value],
        Distribution::Lognormal { .. } => &[],
    };
    for value in values {
        if !(known.min..=known.max).contains(value) {
            return Err(invalid(
                path,
                format!(
                    "{value} is outside {}'s valid range {}..={} {}",
                    known.name, known.min, known.max, known.unit
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[fleet]]
device_type = "sensor"
count = 3
firmware = "1.0.0"
"#;

    fn error(text: &str) -> String {
        Scenario::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_minimal_scenario_gets_the_documented_defaults() {
        let scenario = Scenario::parse(MINIMAL).unwrap();
        assert_eq!(scenario.run.time_scale, TimeScale::REAL_TIME);
        assert_eq!(scenario.run.duration, None);
        assert_eq!(scenario.run.seed, None);
        assert_eq!(scenario.run.transport_mix, 0.0);
        let cohort = &scenario.fleet[0];
        assert_eq!(cohort.count, 3);
        assert_eq!(cohort.heartbeat.interval, Duration::from_secs(60));
        assert_eq!(cohort.heartbeat.jitter, Duration::from_millis(0));
        assert_eq!(cohort.network, None);
        assert_eq!(cohort.crash_rate_per_hour, 0.0);
        assert_eq!(scenario.n_devices(), 3);
    }

    #[test]
    fn every_section_of_a_full_scenario_is_read() {
        let scenario = Scenario::parse(
            r#"
[run]
speedup = 60
duration = "24h"
seed = 7
transport_mix = 0.25

[[fleet]]
device_type = "thermostat-v2"
count = 80
firmware = "1.4"
hw_revs = { "rev-a" = 7, "rev-b" = 3 }
regions = "eu-west"
tags = { env = { prod = 0.9, staging = 0.1 } }
heartbeat_interval = "60s"
heartbeat_jitter = "5s"
network = "wifi"
crash_rate_per_hour = 0.001
metrics = { battery_ma = { normal = { mean = 12, sd = 1.5 } }, temp_c = 21.5, mem_free_bytes = { uniform = { min = 1e6, max = 2e6 } } }

[firmware."1.5.0"]
boot_failure = 0.02
health_check_failure = 0.05
crash_rate_multiplier = 3
battery_current_multiplier = 1.4
memory_leak_bytes_per_hour = 20000
connectivity = { packet_loss = 0.02, rssi_delta = -6 }
download_duration = "2m"
install_duration = { lognormal = { mu = 4.5, sigma = 0.3 } }

[network.wifi]
latency = "40ms"
jitter = "10ms"
loss = 0.01
bandwidth = "2Mbit/s"
disconnects = { every = "6h", for = "2m" }
"#,
        )
        .unwrap();
        assert_eq!(scenario.run.time_scale.speedup(), 60.0);
        assert_eq!(scenario.run.duration, Some(Duration::parse("24h").unwrap()));
        assert_eq!(scenario.run.seed, Some(7));

        let cohort = &scenario.fleet[0];
        assert_eq!(cohort.firmware, Version::parse("1.4.0").unwrap());
        let revs = cohort.hw_revs.as_ref().unwrap().choices();
        assert_eq!(revs[0].0.as_str(), "rev-a");
        assert!((revs[0].1 - 0.7).abs() < 1e-12);
        assert_eq!(cohort.regions.as_ref().unwrap().choices().len(), 1);
        assert_eq!(
            cohort.metrics[&MetricName::parse("temp_c").unwrap()],
            Distribution::Constant(21.5)
        );
        assert_eq!(
            cohort.metrics[&MetricName::parse("battery_ma").unwrap()],
            Distribution::Normal {
                mean: 12.0,
                sd: 1.5
            }
        );

        let bad = scenario.firmware_behaviour(&Version::parse("1.5.0").unwrap(), None);
        assert_eq!(bad.boot_failure, 0.02);
        assert_eq!(bad.connectivity.rssi_delta_db, -6.0);
        assert_eq!(
            bad.download_duration,
            Some(DurationModel::Fixed(Duration::parse("2m").unwrap()))
        );
        assert_eq!(
            bad.install_duration,
            Some(DurationModel::Seconds(Distribution::Lognormal {
                mu: 4.5,
                sigma: 0.3
            }))
        );

        let wifi = &scenario.networks["wifi"];
        assert_eq!(wifi.latency, Duration::from_millis(40));
        assert_eq!(wifi.bandwidth, Some(Bandwidth::from_bytes_per_sec(250_000)));
        assert_eq!(
            wifi.disconnects,
            Some(Disconnects {
                every: Duration::parse("6h").unwrap(),
                lasting: Duration::parse("2m").unwrap(),
            })
        );
    }

    #[test]
    fn invalid_values_are_refused_with_their_key_path() {
        let fleet = |extra: &str| format!("{MINIMAL}{extra}\n");
        let cases: Vec<(String, &str)> = vec![
            (
                format!(
                    "{MINIMAL}\n[[fleet]]\ndevice_type = \"x\"\ncount = 0\nfirmware = \"1.0.0\"\n"
                ),
                "fleet[1].count: must be at least 1",
            ),
            (
                format!("{MINIMAL}\n[firmware.\"2.0.0\"]\nboot_failure = 1.5\n"),
                r#"firmware."2.0.0".boot_failure: 1.5 is not a probability (0..=1)"#,
            ),
            (
                format!("[run]\nspeedup = 0.5\n{MINIMAL}"),
                "run.speedup: 0.5 must be a number of at least 1 (1 is real time)",
            ),
            (
                format!("[run]\ntransport_mix = 2\n{MINIMAL}"),
                "run.transport_mix: 2 is not a share of devices (0..=1)",
            ),
            (
                format!("[run]\nduration = \"24\"\n{MINIMAL}"),
                "run.duration: invalid duration \"24\": missing unit",
            ),
            (
                fleet("network = \"lte\""),
                r#"fleet[0].network: no network model named "lte" (defined: none)"#,
            ),
            (
                fleet("hw_revs = { \"rev-a\" = -1 }"),
                "fleet[0].hw_revs.rev-a: -1 is not a weight",
            ),
            (
                fleet("hw_revs = { \"rev-a\" = 0 }"),
                "fleet[0].hw_revs: weights must not all be zero",
            ),
            (
                fleet("hw_revs = {}"),
                "fleet[0].hw_revs: needs at least one value",
            ),
            (
                fleet("heartbeat_interval = \"10s\"\nheartbeat_jitter = \"10s\""),
                "fleet[0].heartbeat_jitter: 10s must be shorter than heartbeat_interval (10s)",
            ),
            (
                fleet("metrics = { temp_c = { uniform = { min = 5, max = 1 } } }"),
                "fleet[0].metrics.temp_c.uniform: min 5 is greater than max 1",
            ),
            (
                fleet("metrics = { temp_c = -300 }"),
                "fleet[0].metrics.temp_c: -300 is outside temp_c's valid range",
            ),
            (
                fleet("metrics = { \"Temp\" = 1 }"),
                r#"fleet[0].metrics.Temp: invalid metric name "Temp""#,
            ),
            (
                fleet("tags = { env = { \"\\u0007\" = 1 } }"),
                r#"fleet[0].tags.env."\u{7}": invalid tag value"#,
            ),
            (
                fleet("crash_rate_per_hour = -1"),
                "fleet[0].crash_rate_per_hour: -1 must be a number of at least 0",
            ),
            (
                MINIMAL.replace("1.0.0", "one"),
                "fleet[0].firmware: invalid version \"one\"",
            ),
            (
                fleet("[firmware.\"bad name\"]"),
                r#"firmware."bad name": neither a version (e.g. 2.3.0) nor an artifact name"#,
            ),
            (
                fleet("[firmware.\"1.4\"]\n[firmware.\"1.4.0+b7\"]"),
                r#"firmware."1.4.0+b7": the same version 1.4.0+b7 as firmware."1.4""#,
            ),
            (
                fleet("[firmware.\"1.4\"]\ninstall_duration = { normal = { mean = -5, sd = 1 } }"),
                r#"firmware."1.4".install_duration: a duration in seconds cannot be negative"#,
            ),
            (
                fleet("[network.lte]\nbandwidth = \"10 furlongs\""),
                r#"network.lte.bandwidth: "10 furlongs": unknown unit"#,
            ),
            (
                fleet("[network.lte]\nloss = -0.1"),
                "network.lte.loss: -0.1 is not a probability (0..=1)",
            ),
            (
                fleet("[network.lte]\ndisconnects = { every = \"1m\", for = \"2m\" }"),
                "network.lte.disconnects.for: 2m must be shorter than every (1m)",
            ),
            (
                "[run]\nspeedup = 2\n".to_owned(),
                "fleet: a scenario needs at least one [[fleet]] cohort",
            ),
            (
                MINIMAL.replace("count = 3", "count = 1000001"),
                "fleet[0].count: the fleet would have more than 1000000 devices",
            ),
        ];
        for (text, expected) in cases {
            let message = error(&text);
            assert!(
                message.starts_with(expected),
                "expected {expected:?}\n     got {message:?}\nfor\n{text}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_with_line_and_column() {
        let message = error(&format!("{MINIMAL}colour = \"blue\"\n"));
        assert!(message.contains("line 6"), "{message}");
        assert!(message.contains("unknown field `colour`"), "{message}");

        let message = error(&format!(
            "{MINIMAL}metrics = {{ temp_c = {{ gauss = 1 }} }}\n"
        ));
        assert!(message.contains("unknown variant `gauss`"), "{message}");

        let message = error(&format!(
            "{MINIMAL}metrics = {{ temp_c = {{ normal = {{ mean = 1, sd = 1, skew = 2 }} }} }}\n"
        ));
        assert!(message.contains("unknown field `skew`"), "{message}");

        let message = error("[[fleet]]\ncount = 1\nfirmware = \"1.0.0\"\n");
        assert!(message.contains("missing field `device_type`"), "{message}");

        let message = error("this is not toml");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn exact_version_models_win_over_artifact_models() {
        let key = |text: &str| FirmwareKey::parse(text).unwrap();
        let model = |text: &str, boot_failure: f64| FirmwareModel {
            key: key(text),
            behaviour: FirmwareBehaviour {
                boot_failure,
                ..FirmwareBehaviour::BASELINE
            },
        };
        // The artifact model comes first to show that order does not decide.
        let models = [model("sensor-fw", 0.5), model("2.0.0", 0.9)];
        let artifact = ArtifactName::parse("sensor-fw").unwrap();
        let other = ArtifactName::parse("other-fw").unwrap();
        let v = |text: &str| Version::parse(text).unwrap();

        let found = |version: &str, artifact: Option<&ArtifactName>| {
            match_firmware(&models, &v(version), artifact).map(|m| m.behaviour.boot_failure)
        };
        assert_eq!(found("2.0.0", Some(&artifact)), Some(0.9));
        assert_eq!(found("2.0.0+build.3", None), Some(0.9));
        assert_eq!(found("2.1.0", Some(&artifact)), Some(0.5));
        assert_eq!(found("2.1.0", Some(&other)), None);
        assert_eq!(found("2.1.0", None), None);
        assert!(matches!(key("v2.0"), FirmwareKey::Version(_)));
        assert!(matches!(key("sensor-fw"), FirmwareKey::Artifact(_)));
    }

    #[test]
    fn unmodelled_firmware_behaves_like_the_baseline() {
        let scenario = Scenario::parse(MINIMAL).unwrap();
        let behaviour = scenario.firmware_behaviour(&Version::parse("9.9.9").unwrap(), None);
        assert_eq!(*behaviour, FirmwareBehaviour::BASELINE);
        assert_eq!(behaviour.crash_rate_multiplier, 1.0);
    }

    #[test]
    fn bandwidths_parse_bits_and_bytes_into_bytes_per_second() {
        let cases = [
            ("256kbit", 32_000),
            ("10Mbit/s", 1_250_000),
            ("1.5 Mbit", 187_500),
            ("500kB/s", 500_000),
            ("1MiB/s", 1_048_576),
            ("2GiB", 2 * 1024 * 1024 * 1024),
            ("8bit", 1),
        ];
        for (text, bytes) in cases {
            assert_eq!(
                Bandwidth::parse(text).map(Bandwidth::bytes_per_sec),
                Ok(bytes),
                "{text}"
            );
        }
        for bad in [
            "",
            "fast",
            "10",
            "10 furlongs",
            "4bit",
            "0MiB/s",
            "1..2Mbit",
        ] {
            assert!(Bandwidth::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_example_scenarios_parse() {
        let small = Scenario::parse(include_str!("../scenarios/small.toml")).unwrap();
        assert_eq!(small.n_devices(), 100);
        assert_eq!(small.fleet.len(), 2);
        assert_eq!(small.networks.len(), 2);
        let large = Scenario::parse(include_str!("../scenarios/large.toml")).unwrap();
        assert_eq!(large.n_devices(), 10_000);
        let bench = Scenario::parse(include_str!("../scenarios/bench-10k.toml")).unwrap();
        assert_eq!(bench.n_devices(), 10_000);
        assert!(bench.run.shadow);
        let big = Scenario::parse(include_str!("../scenarios/bench-100k.toml")).unwrap();
        assert_eq!(big.n_devices(), 100_000);
        assert!(!big.run.shadow);
    }
}
