//! What an operator asks of a rollout: the strategy (phases or an exponential rate), per-device
//! policies (retries, timeouts, upgrade paths) and gates (absolute thresholds and canary analysis).
//! Validation is here so every entry point (REST, CLI, web UI) rejects the same things with the
//! same words.

use serde::{Deserialize, Serialize};

use crate::rollout::stats::Direction;
use crate::rollout::window::MaintenanceWindow;
use crate::{Duration, Version};

/// How devices are chosen over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Strategy {
    /// Cumulative phases: `[1%, 5%, 25%, 100%]` of the target, each soaking before the next.
    Phases(Vec<Phase>),
    /// An exponential rate, AWS IoT Jobs style but with no fixed ceiling.
    Rate(RateStrategy),
}

impl Default for Strategy {
    /// Canary 1% (soak 30 minutes) → 2% (soak 3 hours) → 5% → 25% (30 minutes each) → 100%,
    /// gated by the canary analysis. The long soak at 2% is what lets the sequential crash test
    /// see a release that triples a rare crash rate (0.02 per device-hour) before more than 2% of
    /// a 10,000-device fleet has it; 30-minute soaks alone never gather enough device-hours
    /// (`drover bench rollout-safety`, BENCHMARKS.md).
    fn default() -> Self {
        let minutes = |m: i64| Duration::from_secs(m * 60);
        Strategy::Phases(
            [
                (1.0, minutes(30)),
                (2.0, minutes(180)),
                (5.0, minutes(30)),
                (25.0, minutes(30)),
                (100.0, minutes(30)),
            ]
            .into_iter()
            .map(|(percent, soak)| Phase {
                percent,
                soak,
                approval: false,
            })
            .collect(),
        )
    }
}

/// One phase: the cumulative share of the target that has been offered the release by its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Cumulative percentage of the target (0 < percent ≤ 100, increasing across phases).
    pub percent: f64,
    /// How long the phase's devices run the release, after the last of them finished updating,
    /// before the gate judges the phase.
    #[serde(default = "default_soak")]
    pub soak: Duration,
    /// Whether an operator must approve the phase before it starts.
    #[serde(default)]
    pub approval: bool,
}

fn default_soak() -> Duration {
    Duration::from_secs(30 * 60)
}

/// An exponential rollout rate: start at `base_per_minute`, multiply by `increment_factor` each
/// time `raise_after` more devices have succeeded, never above `max_per_minute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateStrategy {
    pub base_per_minute: u32,
    #[serde(default = "default_factor")]
    pub increment_factor: f64,
    /// Successes needed before each raise.
    #[serde(default = "default_raise_after")]
    pub raise_after: u32,
    /// Ceiling on devices per minute (any value; there is no built-in cap).
    pub max_per_minute: u32,
    /// Devices updated first and judged by the canary gate before the rate starts (0 = none).
    #[serde(default)]
    pub canary_devices: u32,
    /// How long the canary devices soak before the gate judges them.
    #[serde(default = "default_soak")]
    pub canary_soak: Duration,
}

fn default_factor() -> f64 {
    2.0
}

fn default_raise_after() -> u32 {
    10
}

/// What happens to each device of the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicePolicy {
    /// Attempts per device, counting the first (failed or timed-out attempts are retried; refusals
    /// such as an incompatible image never are).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// How long a device may stay silent in one step before the attempt times out.
    pub step_timeout: Duration,
    /// How long one attempt may take in all before it times out.
    pub attempt_timeout: Duration,
    /// Devices running a version below this one are skipped (they need an intermediate release).
    pub min_source_version: Option<Version>,
    /// Versions a device must already have passed through: a device below one of them is skipped
    /// with a reason naming the version to install first.
    pub required_versions: Vec<Version>,
    /// Whether devices running a newer version may be moved to this older one.
    pub allow_downgrade: bool,
}

impl Default for DevicePolicy {
    fn default() -> Self {
        DevicePolicy {
            max_attempts: 3,
            retry_backoff: Duration::from_secs(5 * 60),
            step_timeout: Duration::from_secs(30 * 60),
            attempt_timeout: Duration::from_secs(4 * 3600),
            min_source_version: None,
            required_versions: Vec::new(),
            allow_downgrade: false,
        }
    }
}

/// Absolute limits, AWS abort-config style: once `min_finished` devices have finished, a share of
/// failures, rollbacks or time-outs above its limit fails the rollout's gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub min_finished: u32,
    pub max_failure_pct: f64,
    pub max_rollback_pct: f64,
    pub max_timeout_pct: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            // Fewer finished devices make one ordinary boot failure look like a 10% rollback rate:
            // with 10, a good release on a fleet whose normal boot failure rate is 0.5% pauses in
            // about 7% of rollouts; with 100, in none of thousands (BENCHMARKS.md).
            min_finished: 100,
            max_failure_pct: 10.0,
            // Five boot failures in the first hundred devices: a fleet whose normal rate is 0.5-1%
            // shows that well under 1% of the time; a release that fails 5% of boots, in most.
            max_rollback_pct: 4.0,
            max_timeout_pct: 10.0,
        }
    }
}

/// Canary-versus-baseline analysis settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanaryConfig {
    pub enabled: bool,
    /// Chance that a release no worse than the old one fails a phase's gate (split across the
    /// metrics by Bonferroni's rule).
    pub alpha: f64,
    /// Metrics compared with Mann-Whitney tests at the end of each soak.
    pub metrics: Vec<MetricCheck>,
    /// Crash rate per device-hour (the `crashes` heartbeat metric), tested sequentially: a rate
    /// `crash_ratio` times the baseline's fails the gate as soon as the evidence is strong.
    pub crash_ratio: f64,
    /// Post-update failures (boot failures, health-check rollbacks): a share above
    /// `acceptable_failure_pct` is normal; `bad_failure_pct` is what the sequential test detects.
    pub acceptable_failure_pct: f64,
    pub bad_failure_pct: f64,
    /// Fewest canary devices with data before any verdict other than "waiting".
    pub min_devices: u32,
    /// Devices held back on the old version as the baseline (the last to update).
    pub baseline_devices: u32,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        CanaryConfig {
            enabled: true,
            alpha: 0.01,
            metrics: vec![
                MetricCheck::new("battery_ma", Direction::Increase, 0.2),
                MetricCheck::new("mem_free_bytes", Direction::Decrease, 0.1),
                MetricCheck::new("cpu_pct", Direction::Increase, 0.25),
            ],
            crash_ratio: 2.0,
            acceptable_failure_pct: 1.0,
            bad_failure_pct: 5.0,
            min_devices: 5,
            // Crash rates are rare events: the baseline's exposure bounds how fast the crash
            // test can decide, so it is larger than the metrics alone would need.
            baseline_devices: 1000,
        }
    }
}

/// One metric compared canary against baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricCheck {
    /// A heartbeat metric name (known or custom).
    pub metric: String,
    /// Which change is bad.
    pub bad: Direction,
    /// Smallest relative change (0.2 = 20%) that counts as a failure when significant.
    #[serde(default = "default_min_effect")]
    pub min_effect: f64,
}

fn default_min_effect() -> f64 {
    0.1
}

impl MetricCheck {
    pub fn new(metric: &str, bad: Direction, min_effect: f64) -> MetricCheck {
        MetricCheck {
            metric: metric.to_owned(),
            bad,
            min_effect,
        }
    }
}

/// All the gates of a rollout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    pub thresholds: Thresholds,
    pub canary: CanaryConfig,
}

/// What a failed gate does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureAction {
    /// Stop offering the release and wait for an operator.
    #[default]
    Pause,
    /// Stop, and put the previous release back on every device that took the new one.
    Rollback,
}

/// Everything about a rollout the orchestrator needs, apart from the release and the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutSpec {
    pub strategy: Strategy,
    /// Most devices updating at once (downloads in flight); 0 = no limit.
    pub max_parallel: u32,
    pub policy: DevicePolicy,
    pub gates: Gates,
    pub on_failure: FailureAction,
    /// Whether devices that join the target later receive the release.
    pub dynamic: bool,
    /// When devices may start updating; none means at any time.
    pub window: Option<MaintenanceWindow>,
    /// A phase's soak starts once this share of its devices finished (the rest keep updating in
    /// the background), so one device that is offline for hours does not hold a phase up.
    pub advance_at_pct: f64,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            strategy: Strategy::default(),
            max_parallel: 0,
            policy: DevicePolicy::default(),
            gates: Gates::default(),
            on_failure: FailureAction::default(),
            dynamic: true,
            window: None,
            advance_at_pct: 95.0,
        }
    }
}

/// Why a rollout definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn bad(message: impl Into<String>) -> Result<(), SpecError> {
    Err(SpecError(message.into()))
}

impl RolloutSpec {
    /// Checks the definition as a whole; the message names the offending field.
    pub fn validate(&self) -> Result<(), SpecError> {
        match &self.strategy {
            Strategy::Phases(phases) => validate_phases(phases, self.gates.canary.enabled)?,
            Strategy::Rate(rate) => validate_rate(rate)?,
        }
        if !(self.advance_at_pct >= 50.0 && self.advance_at_pct <= 100.0) {
            bad(format!(
                "advance_at_pct is {}; use a percentage from 50 to 100",
                self.advance_at_pct
            ))?;
        }
        let policy = &self.policy;
        if policy.max_attempts == 0 || policy.max_attempts > 20 {
            bad(format!(
                "policy.max_attempts is {}; it counts the first attempt, so use 1 to 20",
                policy.max_attempts
            ))?;
        }
        for (name, value) in [
            ("policy.step_timeout", policy.step_timeout),
            ("policy.attempt_timeout", policy.attempt_timeout),
        ] {
            if value.as_millis() < 10_000 {
                bad(format!("{name} is {value}; it must be at least 10s"))?;
            }
        }
        if policy.retry_backoff.as_millis() < 0 {
            bad("policy.retry_backoff cannot be negative")?;
        }
        let thresholds = &self.gates.thresholds;
        for (name, value) in [
            (
                "gates.thresholds.max_failure_pct",
                thresholds.max_failure_pct,
            ),
            (
                "gates.thresholds.max_rollback_pct",
                thresholds.max_rollback_pct,
            ),
            (
                "gates.thresholds.max_timeout_pct",
                thresholds.max_timeout_pct,
            ),
        ] {
            if !(0.0..=100.0).contains(&value) {
                bad(format!("{name} is {value}; use a percentage from 0 to 100"))?;
            }
        }
        let canary = &self.gates.canary;
        if !(canary.alpha > 0.0 && canary.alpha <= 0.2) {
            bad(format!(
                "gates.canary.alpha is {}; use a false-alarm rate above 0 and at most 0.2",
                canary.alpha
            ))?;
        }
        if !(canary.crash_ratio > 1.0 && canary.crash_ratio.is_finite()) {
            bad(format!(
                "gates.canary.crash_ratio is {}; it must be above 1 (the crash-rate multiple to detect)",
                canary.crash_ratio
            ))?;
        }
        if !(canary.acceptable_failure_pct > 0.0
            && canary.acceptable_failure_pct < canary.bad_failure_pct
            && canary.bad_failure_pct < 100.0)
        {
            bad(format!(
                "gates.canary needs 0 < acceptable_failure_pct < bad_failure_pct < 100, got {} and {}",
                canary.acceptable_failure_pct, canary.bad_failure_pct
            ))?;
        }
        for (idx, check) in canary.metrics.iter().enumerate() {
            if crate::health::MetricName::parse(&check.metric).is_err() {
                bad(format!(
                    "gates.canary.metrics[{idx}].metric {:?} is not a metric name",
                    check.metric
                ))?;
            }
            if !(check.min_effect >= 0.0 && check.min_effect.is_finite()) {
                bad(format!(
                    "gates.canary.metrics[{idx}].min_effect is {}; use a relative change such as 0.1",
                    check.min_effect
                ))?;
            }
        }
        let mut seen = std::collections::HashSet::new();
        for check in &canary.metrics {
            if !seen.insert(&check.metric) {
                bad(format!("gates.canary.metrics lists {} twice", check.metric))?;
            }
        }
        Ok(())
    }

    /// The soak before each gate, in phase order (rate rollouts have one gate, on their canary).
    pub fn n_phases(&self) -> usize {
        match &self.strategy {
            Strategy::Phases(phases) => phases.len(),
            Strategy::Rate(rate) => {
                if rate.canary_devices > 0 {
                    2
                } else {
                    1
                }
            }
        }
    }
}

fn validate_phases(phases: &[Phase], gated: bool) -> Result<(), SpecError> {
    if phases.is_empty() {
        bad("strategy.phases is empty; list at least one phase (e.g. 100%)")?;
    }
    if phases.len() > 20 {
        bad(format!(
            "strategy.phases has {} phases; at most 20",
            phases.len()
        ))?;
    }
    let mut previous = 0.0;
    for (idx, phase) in phases.iter().enumerate() {
        if !(phase.percent > 0.0 && phase.percent <= 100.0) {
            bad(format!(
                "strategy.phases[{idx}].percent is {}; use a cumulative percentage above 0 and at most 100",
                phase.percent
            ))?;
        }
        if phase.percent <= previous {
            bad(format!(
                "strategy.phases[{idx}].percent is {} but the phase before reached {previous}; percentages are cumulative and must increase",
                phase.percent
            ))?;
        }
        let last = idx + 1 == phases.len();
        if gated && !last && phase.soak.as_millis() <= 0 {
            bad(format!(
                "strategy.phases[{idx}].soak is zero, so its gate would judge devices that have not run the release; give it a soak time (e.g. 30m) or disable the canary gate"
            ))?;
        }
        if phase.soak.as_millis() < 0 {
            bad(format!("strategy.phases[{idx}].soak cannot be negative"))?;
        }
        previous = phase.percent;
    }
    if previous != 100.0 {
        bad(format!(
            "the last phase reaches {previous}%; the last phase must be 100 (pause the rollout to stop earlier)"
        ))?;
    }
    Ok(())
}

fn validate_rate(rate: &RateStrategy) -> Result<(), SpecError> {
    if rate.base_per_minute == 0 {
        bad("strategy.rate.base_per_minute must be at least 1")?;
    }
    if rate.max_per_minute < rate.base_per_minute {
        bad(format!(
            "strategy.rate.max_per_minute ({}) is below base_per_minute ({})",
            rate.max_per_minute, rate.base_per_minute
        ))?;
    }
    if !(rate.increment_factor >= 1.0 && rate.increment_factor <= 5.0) {
        bad(format!(
            "strategy.rate.increment_factor is {}; use 1 to 5",
            rate.increment_factor
        ))?;
    }
    if rate.raise_after == 0 {
        bad("strategy.rate.raise_after must be at least 1")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases(list: &[(f64, i64)]) -> RolloutSpec {
        RolloutSpec {
            strategy: Strategy::Phases(
                list.iter()
                    .map(|&(percent, soak)| Phase {
                        percent,
                        soak: Duration::from_secs(soak),
                        approval: false,
                    })
                    .collect(),
            ),
            dynamic: true,
            ..RolloutSpec::default()
        }
    }

    #[test]
    fn the_default_rollout_is_valid() {
        RolloutSpec::default().validate().unwrap();
        assert_eq!(RolloutSpec::default().n_phases(), 5);
    }

    #[test]
    fn invalid_strategies_are_refused_with_the_field_named() {
        let cases: &[(RolloutSpec, &str)] = &[
            (phases(&[]), "strategy.phases is empty"),
            (
                phases(&[(5.0, 60), (1.0, 60), (100.0, 0)]),
                "strategy.phases[1].percent is 1",
            ),
            (phases(&[(5.0, 60), (5.0, 60), (100.0, 0)]), "must increase"),
            (
                phases(&[(0.0, 60), (100.0, 0)]),
                "strategy.phases[0].percent is 0",
            ),
            (
                phases(&[(1.0, 60), (150.0, 0)]),
                "strategy.phases[1].percent is 150",
            ),
            (
                phases(&[(1.0, 0), (100.0, 0)]),
                "strategy.phases[0].soak is zero",
            ),
            (
                phases(&[(1.0, 60), (50.0, 60)]),
                "the last phase reaches 50%",
            ),
        ];
        for (spec, expected) in cases {
            let error = spec.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn a_zero_soak_is_fine_without_a_canary_gate() {
        let mut spec = phases(&[(1.0, 0), (100.0, 0)]);
        spec.gates.canary.enabled = false;
        spec.validate().unwrap();
    }

    #[test]
    fn rate_strategies_are_checked() {
        let rate = |base, max, factor| RolloutSpec {
            strategy: Strategy::Rate(RateStrategy {
                base_per_minute: base,
                increment_factor: factor,
                raise_after: 10,
                max_per_minute: max,
                canary_devices: 0,
                canary_soak: Duration::from_secs(60),
            }),
            ..RolloutSpec::default()
        };
        rate(10, 50_000, 2.0).validate().unwrap();
        assert!(rate(0, 10, 2.0).validate().is_err());
        assert!(rate(10, 5, 2.0).validate().is_err());
        assert!(rate(10, 50, 0.5).validate().is_err());
    }

    #[test]
    fn specs_deserialise_from_operator_json() {
        let spec: RolloutSpec = serde_json::from_str(
            r#"{"strategy": {"phases": [{"percent": 10, "soak": "1h", "approval": true}, {"percent": 100}]},
                "policy": {"max_attempts": 2, "min_source_version": "2.0.0"},
                "window": {"cron": "0 2 * * 1-5", "duration": "3h", "time_zone": "Europe/Berlin"},
                "gates": {"canary": {"metrics": [{"metric": "battery_ma", "bad": "increase"}]}},
                "on_failure": "rollback"}"#,
        )
        .unwrap();
        spec.validate().unwrap();
        assert_eq!(spec.on_failure, FailureAction::Rollback);
        assert_eq!(spec.window.as_ref().unwrap().time_zone(), "Europe/Berlin");
        let bad_window = serde_json::from_str::<RolloutSpec>(
            r#"{"window": {"cron": "0 25 * * *", "duration": "1h", "time_zone": "UTC"}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(bad_window.contains("hour"), "{bad_window}");
        assert!(serde_json::from_str::<RolloutSpec>(r#"{"stratgy": {}}"#).is_err());
        let bad_metric: RolloutSpec = serde_json::from_str(
            r#"{"gates": {"canary": {"metrics": [{"metric": "Bad-Name", "bad": "increase"}]}}}"#,
        )
        .unwrap();
        assert!(bad_metric.validate().unwrap_err().0.contains("Bad-Name"));
    }
}
