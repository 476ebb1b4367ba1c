//! Canary-versus-baseline judgement at the end of a phase's soak: each configured metric compared
//! with a Mann-Whitney test on per-device means, the offline share with Fisher's exact test, and
//! the sequential crash and failure tests' standing, combined into a pass / marginal / fail
//! verdict with the evidence for each.
//!
//! The false-alarm budget `gates.canary.alpha` is the chance that a release no worse than the old
//! one pauses the rollout anywhere: a quarter goes to each sequential test (checked at every tick,
//! valid under continuous monitoring), half to the fixed-look tests, split by Bonferroni's rule
//! over the gated phases and the tests at each gate.

use serde::{Deserialize, Serialize};

use crate::rollout::spec::RolloutSpec;
use crate::rollout::stats::{self, BernoulliSprt, RateSprt, Verdict};
use crate::Timestamp;

/// One metric's per-device values (each device's mean over the window).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSamples {
    pub metric: String,
    pub canary: Vec<f64>,
    pub baseline: Vec<f64>,
}

/// What the orchestrator's caller gathers for a gate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CanaryData {
    pub metrics: Vec<MetricSamples>,
    /// Devices on the release in this rollout, and baseline devices still on the old version.
    pub canary_devices: u64,
    pub baseline_devices: u64,
    /// Of those, how many are offline now.
    pub canary_offline: u64,
    pub baseline_offline: u64,
}

/// The evidence for one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricEvidence {
    pub metric: String,
    /// `mann_whitney`, `fisher_exact`, `rate_sprt` or `bernoulli_sprt`.
    pub test: String,
    pub verdict: Verdict,
    /// Canary and baseline values: medians of per-device means, or rates.
    pub canary: Option<f64>,
    pub baseline: Option<f64>,
    /// Relative change of the canary against the baseline (0.25 = 25% higher).
    pub effect: Option<f64>,
    pub p_value: Option<f64>,
    /// 1 − p: how sure the test is that the canary is worse.
    pub confidence: Option<f64>,
    /// The significance level this test was judged at.
    pub alpha: f64,
    pub n_canary: u64,
    pub n_baseline: u64,
    pub note: String,
}

/// A phase gate's judgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryReport {
    pub phase: usize,
    pub at: Timestamp,
    pub verdict: Verdict,
    pub n_canary: u64,
    pub n_baseline: u64,
    pub metrics: Vec<MetricEvidence>,
}

impl CanaryReport {
    /// One line: the verdict of each metric that did not pass, or that all passed.
    pub fn summary(&self) -> String {
        let worst: Vec<String> = self
            .metrics
            .iter()
            .filter(|m| m.verdict != Verdict::Pass)
            .map(|m| {
                format!(
                    "{} {} ({}{})",
                    m.metric,
                    m.verdict.as_str(),
                    m.effect
                        .map_or(String::new(), |e| format!("{:+.0}%, ", e * 100.0)),
                    m.p_value.map_or(m.note.clone(), |p| format!("p={p:.2e}"))
                )
            })
            .collect();
        if worst.is_empty() {
            format!(
                "all {} checks passed ({} canary vs {} baseline devices)",
                self.metrics.len(),
                self.n_canary,
                self.n_baseline
            )
        } else {
            format!(
                "{} ({} canary vs {} baseline devices)",
                worst.join("; "),
                self.n_canary,
                self.n_baseline
            )
        }
    }
}

/// The significance level of each fixed-look test at a gate.
pub fn fixed_look_alpha(spec: &RolloutSpec) -> f64 {
    let canary = &spec.gates.canary;
    let gates = spec.n_phases().saturating_sub(1).max(1);
    stats::bonferroni(canary.alpha / 2.0, gates * (canary.metrics.len() + 1))
}

/// Judges phase `phase` from `data` and the sequential tests' standing.
pub fn judge(
    spec: &RolloutSpec,
    phase: usize,
    now: Timestamp,
    data: &CanaryData,
    crashes: &RateSprt,
    failures: &BernoulliSprt,
) -> CanaryReport {
    let alpha = fixed_look_alpha(spec);
    let config = &spec.gates.canary;
    let mut metrics = Vec::new();
    for check in &config.metrics {
        let samples = data.metrics.iter().find(|m| m.metric == check.metric);
        let (canary, baseline) =
            samples.map_or((&[][..], &[][..]), |s| (&s.canary[..], &s.baseline[..]));
        metrics.push(match stats::mann_whitney(canary, baseline, check.bad) {
            Some(mw) => MetricEvidence {
                metric: check.metric.clone(),
                test: "mann_whitney".into(),
                verdict: stats::judge(mw.p_value, mw.relative_change, alpha, check.min_effect),
                canary: Some(mw.canary_median),
                baseline: Some(mw.baseline_median),
                effect: mw.relative_change,
                p_value: Some(mw.p_value),
                confidence: Some(1.0 - mw.p_value),
                alpha,
                n_canary: mw.n_canary as u64,
                n_baseline: mw.n_baseline as u64,
                note: format!("median {:.4} vs {:.4}", mw.canary_median, mw.baseline_median),
            },
            None => MetricEvidence {
                metric: check.metric.clone(),
                test: "mann_whitney".into(),
                verdict: Verdict::Pass,
                canary: None,
                baseline: None,
                effect: None,
                p_value: None,
                confidence: None,
                alpha,
                n_canary: canary.len() as u64,
                n_baseline: baseline.len() as u64,
                note: format!(
                    "not enough data: {} canary and {} baseline devices reported it, {} each needed",
                    canary.len(),
                    baseline.len(),
                    stats::MIN_SAMPLES
                ),
            },
        });
    }
    metrics.push(
        match stats::two_proportions(
            data.canary_offline,
            data.canary_devices,
            data.baseline_offline,
            data.baseline_devices,
        ) {
            Some(p) => {
                let effect = (p.baseline_rate > 0.0).then(|| p.difference / p.baseline_rate);
                MetricEvidence {
                    metric: "offline_rate".into(),
                    test: "fisher_exact".into(),
                    // An absolute rise of 5 points is the smallest that matters.
                    verdict: stats::judge(p.p_value, Some(p.difference / 0.05), alpha, 1.0),
                    canary: Some(p.canary_rate),
                    baseline: Some(p.baseline_rate),
                    effect,
                    p_value: Some(p.p_value),
                    confidence: Some(1.0 - p.p_value),
                    alpha,
                    n_canary: p.n_canary,
                    n_baseline: p.n_baseline,
                    note: format!(
                        "{} of {} canary devices offline vs {} of {}",
                        data.canary_offline,
                        data.canary_devices,
                        data.baseline_offline,
                        data.baseline_devices
                    ),
                }
            }
            None => MetricEvidence {
                metric: "offline_rate".into(),
                test: "fisher_exact".into(),
                verdict: Verdict::Pass,
                canary: None,
                baseline: None,
                effect: None,
                p_value: None,
                confidence: None,
                alpha,
                n_canary: data.canary_devices,
                n_baseline: data.baseline_devices,
                note: "no canary or no baseline devices".into(),
            },
        },
    );
    let sequential = crate::rollout::machine::sequential_alpha(spec);
    metrics.push(MetricEvidence {
        metric: "crash_rate".into(),
        test: "rate_sprt".into(),
        verdict: if crashes.rejects(sequential) {
            Verdict::Fail
        } else {
            Verdict::Pass
        },
        canary: rate(crashes.canary_events(), crashes.canary_exposure()),
        baseline: rate(crashes.baseline_events(), crashes.baseline_exposure()),
        effect: crashes.rate_ratio().map(|r| r - 1.0),
        p_value: None,
        confidence: None,
        alpha: sequential,
        n_canary: crashes.canary_events(),
        n_baseline: crashes.baseline_events(),
        note: format!(
            "crashes per device-hour; log likelihood ratio {:.2} of {:.2} needed to fail",
            crashes.log_likelihood_ratio(),
            (1.0 / sequential).ln()
        ),
    });
    metrics.push(MetricEvidence {
        metric: "update_failures".into(),
        test: "bernoulli_sprt".into(),
        verdict: if failures.rejects(sequential) {
            Verdict::Fail
        } else {
            Verdict::Pass
        },
        canary: rate(
            failures.failures(),
            (failures.failures() + failures.successes()) as f64,
        ),
        baseline: Some(config.acceptable_failure_pct / 100.0),
        effect: None,
        p_value: None,
        confidence: None,
        alpha: sequential,
        n_canary: failures.failures() + failures.successes(),
        n_baseline: 0,
        note: format!(
            "boot failures and rollbacks; log likelihood ratio {:.2} of {:.2} needed to fail",
            failures.log_likelihood_ratio(),
            (1.0 / sequential).ln()
        ),
    });
    let verdict = if metrics.iter().any(|m| m.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if metrics.iter().any(|m| m.verdict == Verdict::Marginal) {
        Verdict::Marginal
    } else {
        Verdict::Pass
    };
    CanaryReport {
        phase,
        at: now,
        verdict,
        n_canary: data.canary_devices,
        n_baseline: data.baseline_devices,
        metrics,
    }
}

fn rate(events: u64, exposure: f64) -> Option<f64> {
    (exposure > 0.0).then(|| events as f64 / exposure)
}
