//! Canary statistics: is the canary cohort (devices that took the new firmware) worse than the
//! baseline cohort (devices in the same target still on the old firmware, over the same window)?
//!
//! Like Netflix's and Google's Kayenta, every metric is judged on its own and the verdicts are
//! combined, so an operator sees which metric failed and by how much:
//!
//! - Continuous metrics (battery current, free memory, CPU load, one value per device) use the
//!   [`mann_whitney`] rank test. It assumes no distribution, shrugs off outliers, and reports the size
//!   of the change as a Hodges–Lehmann shift next to its p-value. It is a fixed-sample test: judge it
//!   once per phase, at the phase's end, not at every tick.
//! - Counts over exposure (crashes, watchdog resets per device-hour) use [`RateSprt`], and outcomes
//!   per device (boot failures, rollbacks after an update) use [`BernoulliSprt`]. Both are sequential:
//!   they may be checked at every orchestrator tick, and stop a bad rollout as soon as the evidence is
//!   in, without raising their false-alarm rate.
//! - Proportions judged once (the fraction of devices offline) use [`two_proportions`], Fisher's
//!   exact test, which is exact at any size.
//! - [`judge`] turns a p-value and an effect size into a [`Verdict`]; [`bonferroni`] splits the
//!   false-alarm budget over the metrics of a phase.
//!
//! # False alarms
//! A release no worse than its baseline should rarely fail a phase. With `m` fixed-sample metrics
//! each judged once per phase at level `bonferroni(alpha, m)`, the chance that any of them fails is at
//! most `alpha` (a union bound, so it holds whatever the correlation between metrics). Each
//! sequential test run at level `alpha` adds at most `alpha` over the whole phase, however often it is
//! checked. Splitting one budget over all `m + s` tests keeps a phase's false-fail rate at `alpha`.
//! Marginal verdicts are twice as likely by design: they ask for a look, not a rollback.
//!
//! Everything here is pure arithmetic, with its own normal distribution and log-gamma function: no
//! dependencies, no IO, no randomness.

use serde::{Deserialize, Serialize};

/// The fewest finite values each cohort needs before [`mann_whitney`] will compare them. Below this
/// even complete separation cannot reach a useful significance level.
pub const MIN_SAMPLES: usize = 5;

/// Which way a change in a metric is bad for the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A larger canary value is bad: battery current, crashes, CPU load.
    Increase,
    /// A smaller canary value is bad: free memory, signal quality.
    Decrease,
    /// A change either way is suspect; the test is two-sided.
    Either,
}

/// The evidence from comparing one continuous metric between the cohorts with [`mann_whitney`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MannWhitney {
    /// Finite canary values compared; values that were NaN or infinite are not counted.
    pub n_canary: usize,
    /// Finite baseline values compared.
    pub n_baseline: usize,
    /// The canary's U statistic: the number of (canary, baseline) pairs in which the canary value is
    /// larger, ties counting one half. It runs from 0 to `n_canary * n_baseline`.
    pub u: f64,
    /// The continuity-corrected standard score of U in the bad direction (of the larger of the two U
    /// statistics for [`Direction::Either`]): large positive values are evidence of harm, and
    /// `p_value` is its upper normal tail. Zero when all values are equal.
    pub z: f64,
    /// The chance of evidence at least this strong if canary and baseline values came from the same
    /// distribution: one-sided in the bad direction, two-sided for [`Direction::Either`].
    pub p_value: f64,
    /// The median canary value, for dashboards.
    pub canary_median: f64,
    /// The median baseline value, for dashboards and as the scale of `relative_change`.
    pub baseline_median: f64,
    /// The Hodges–Lehmann estimate of canary − baseline: the median of all pairwise differences.
    /// Unlike the difference of medians it is the shift the rank test is measuring, and it is robust.
    pub shift: f64,
    /// `shift / |baseline_median|`, the effect size [`judge`] compares with its minimum effect; `None`
    /// when the baseline median is zero.
    pub relative_change: Option<f64>,
    /// P(canary > baseline) + ½ P(tie) for a random pair, `u / (n_canary * n_baseline)`: 0.5 means
    /// no difference. Also known as the common-language effect size.
    pub prob_superiority: f64,
}

/// Compares a continuous metric between the cohorts with the Mann–Whitney U (Wilcoxon rank-sum) test;
/// `bad` says which direction of change is harmful.
///
/// NaN and infinite values are dropped first; `None` when either cohort has fewer than
/// [`MIN_SAMPLES`] values left. Tied values share their average rank and the variance is corrected
/// for ties; the p-value uses the normal approximation with a continuity correction, as
/// `scipy.stats.mannwhitneyu(canary, baseline, method="asymptotic")` does (`alternative="greater"`
/// for [`Direction::Increase`], `"less"` for [`Direction::Decrease`], `"two-sided"` for
/// [`Direction::Either`]). Near the usual levels the approximation is within a few percent of the
/// exact p-value even for five devices a side; in small cohorts it overstates very small p-values
/// (0.0006 where the exact value is 0.00008 for 5 against 20 devices), which errs towards passing.
///
/// The null hypothesis is that both cohorts draw from one distribution; a change in spread alone can
/// move the p-value too, so the test is calibrated only for a canary that behaves like its baseline.
///
/// Cost: O((n_canary + n_baseline) log(n_canary + n_baseline)) time, including the Hodges–Lehmann
/// shift, which is selected exactly without forming the n_canary × n_baseline differences.
pub fn mann_whitney(canary: &[f64], baseline: &[f64], bad: Direction) -> Option<MannWhitney> {
    let canary = finite_sorted(canary);
    let baseline = finite_sorted(baseline);
    if canary.len() < MIN_SAMPLES || baseline.len() < MIN_SAMPLES {
        return None;
    }
    let n_canary = canary.len() as f64;
    let n_baseline = baseline.len() as f64;
    let n_pairs = n_canary * n_baseline;

    let ranks = rank_sum(&canary, &baseline);
    let u = ranks.canary - n_canary * (n_canary + 1.0) / 2.0;
    let (z, p_value) = if ranks.n_distinct == 1 {
        // Every value is the same: there is no evidence either way (and the variance is zero).
        (0.0, 1.0)
    } else {
        let n = n_canary + n_baseline;
        let variance = n_pairs / 12.0 * ((n + 1.0) - ranks.tie_term / (n * (n - 1.0)));
        let (u_bad, n_sides) = match bad {
            Direction::Increase => (u, 1.0),
            Direction::Decrease => (n_pairs - u, 1.0),
            Direction::Either => (u.max(n_pairs - u), 2.0),
        };
        let z = (u_bad - n_pairs / 2.0 - 0.5) / variance.sqrt();
        (z, (n_sides * normal_sf(z)).min(1.0))
    };

    let baseline_median = median(&baseline);
    let shift = hodges_lehmann(&canary, &baseline);
    Some(MannWhitney {
        n_canary: canary.len(),
        n_baseline: baseline.len(),
        u,
        z,
        p_value,
        canary_median: median(&canary),
        baseline_median,
        shift,
        relative_change: (baseline_median != 0.0).then(|| shift / baseline_median.abs()),
        prob_superiority: u / n_pairs,
    })
}

/// A sequential probability ratio test that the canary's event rate (crashes, watchdog resets per
/// device-hour) is higher than the baseline's, fed one increment of counts and exposure per tick.
///
/// H0: the canary rate equals the baseline rate; H1: it is `ratio` times the baseline rate. Events
/// are taken as Poisson over exposure, and each increment is judged conditionally on its total count:
/// given `n = dc + db` events, the canary's share `dc` is binomial with success probability
/// `p0 = ec / (ec + eb)` under H0 and `p1 = ratio·ec / (ratio·ec + eb)` under H1. Conditioning
/// removes the unknown baseline rate (it may drift during a rollout) and makes the test exact.
///
/// The likelihood ratio is a nonnegative martingale with mean 1 under H0 (a supermartingale when the
/// canary is better than baseline), so by Ville's inequality the chance that it ever reaches
/// `1/alpha` is at most `alpha`, however often [`rejects`](Self::rejects) is asked. Checking at every
/// tick therefore costs nothing in false alarms, and a bad canary is stopped as soon as the evidence
/// is in. There is deliberately no lower boundary that accepts H0: a phase ends by time. Under H0 the
/// log-likelihood ratio drifts downwards, which delays detection of a canary that turns bad late in a
/// long phase; keep phases bounded.
///
/// The guarantee assumes events are independent. A device in a crash loop makes crashes come in
/// bursts, and bursts raise the false-alarm rate; count crashing devices per tick rather than crashes
/// where that matters.
///
/// The state serializes, so it can be stored between ticks and across restarts; deserializing
/// checks it as [`new`](Self::new) does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RateSprtState")]
pub struct RateSprt {
    /// The canary-to-baseline rate ratio of H1, which sets how evidence is weighed.
    ratio: f64,
    /// The running evidence, compared with the threshold on every `rejects`.
    log_likelihood_ratio: f64,
    /// Totals, kept for `rate_ratio` and for showing operators what the test has seen.
    canary_events: u64,
    canary_exposure: f64,
    baseline_events: u64,
    baseline_exposure: f64,
}

impl RateSprt {
    /// A test against a canary rate `ratio` times the baseline's (e.g. 2.0: double the crashes).
    /// The ratio must be finite and above 1.
    pub fn new(ratio: f64) -> Result<Self, String> {
        if !(ratio.is_finite() && ratio > 1.0) {
            return Err(format!(
                "the rate ratio to detect must be a finite number above 1, not {ratio}"
            ));
        }
        Ok(RateSprt {
            ratio,
            log_likelihood_ratio: 0.0,
            canary_events: 0,
            canary_exposure: 0.0,
            baseline_events: 0,
            baseline_exposure: 0.0,
        })
    }

    /// Adds one increment: events counted in each cohort since the last call, and the exposure
    /// (device-hours, or any unit used consistently) they were counted over. An increment where
    /// either exposure is zero, negative or not finite carries no comparison and is ignored whole.
    pub fn observe(
        &mut self,
        canary_events: u64,
        canary_exposure: f64,
        baseline_events: u64,
        baseline_exposure: f64,
    ) {
        let usable = |exposure: f64| exposure.is_finite() && exposure > 0.0;
        if !(usable(canary_exposure) && usable(baseline_exposure)) {
            return;
        }
        let p0 = canary_exposure / (canary_exposure + baseline_exposure);
        // ln((1 - p1) / (1 - p0)) = -ln(1 + (ratio - 1) p0), and ln(p1 / p0) is that plus ln(ratio).
        let log_baseline_share = -((self.ratio - 1.0) * p0).ln_1p();
        let log_canary_share = self.ratio.ln() + log_baseline_share;
        self.log_likelihood_ratio +=
            canary_events as f64 * log_canary_share + baseline_events as f64 * log_baseline_share;
        self.canary_events = self.canary_events.saturating_add(canary_events);
        self.canary_exposure += canary_exposure;
        self.baseline_events = self.baseline_events.saturating_add(baseline_events);
        self.baseline_exposure += baseline_exposure;
    }

    /// The natural log of the likelihood ratio of H1 to H0 over everything observed; 0 at the start.
    pub fn log_likelihood_ratio(&self) -> f64 {
        self.log_likelihood_ratio
    }

    /// Whether the evidence rejects H0 at level `alpha`: the log-likelihood ratio has reached
    /// `ln(1/alpha)`. Always false for `alpha` outside (0, 1).
    pub fn rejects(&self, alpha: f64) -> bool {
        crosses(self.log_likelihood_ratio, alpha)
    }

    /// The rate ratio the test was set up to detect.
    pub fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Canary events over all observed increments.
    pub fn canary_events(&self) -> u64 {
        self.canary_events
    }

    /// Canary exposure over all observed increments.
    pub fn canary_exposure(&self) -> f64 {
        self.canary_exposure
    }

    /// Baseline events over all observed increments.
    pub fn baseline_events(&self) -> u64 {
        self.baseline_events
    }

    /// Baseline exposure over all observed increments.
    pub fn baseline_exposure(&self) -> f64 {
        self.baseline_exposure
    }

    /// The observed rate ratio `(canary events / canary exposure) / (baseline events / baseline
    /// exposure)`; `None` before any exposure or while the baseline has no events.
    pub fn rate_ratio(&self) -> Option<f64> {
        if self.canary_exposure > 0.0 && self.baseline_exposure > 0.0 && self.baseline_events > 0 {
            let canary_rate = self.canary_events as f64 / self.canary_exposure;
            Some(canary_rate / (self.baseline_events as f64 / self.baseline_exposure))
        } else {
            None
        }
    }
}

/// A sequential probability ratio test that too many devices fail an outcome (a boot after the
/// update, a health check), fed device outcomes as they come in.
///
/// H0: each device fails with probability `p0` (acceptable); H1: with probability `p1 > p0`. The
/// likelihood ratio is a nonnegative martingale with mean 1 when the failure probability is `p0`, and
/// a supermartingale when it is lower, so by Ville's inequality the chance that it ever reaches
/// `1/alpha` is at most `alpha`, however often [`rejects`](Self::rejects) is asked. As for
/// [`RateSprt`], there is no boundary that accepts H0.
///
/// The state serializes, so it can be stored between ticks and across restarts; deserializing
/// checks it as [`new`](Self::new) does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "BernoulliSprtState")]
pub struct BernoulliSprt {
    /// The acceptable failure probability (H0).
    p0: f64,
    /// The failure probability to detect (H1).
    p1: f64,
    /// The running evidence, compared with the threshold on every `rejects`.
    log_likelihood_ratio: f64,
    /// Totals, for showing operators what the test has seen.
    failures: u64,
    successes: u64,
}

impl BernoulliSprt {
    /// A test of the acceptable failure probability `p0` against the bad one `p1`; they must satisfy
    /// `0 < p0 < p1 < 1`.
    pub fn new(p0: f64, p1: f64) -> Result<Self, String> {
        if !(0.0 < p0 && p0 < p1 && p1 < 1.0) {
            return Err(format!(
                "failure probabilities must satisfy 0 < p0 < p1 < 1, not p0 = {p0}, p1 = {p1}"
            ));
        }
        Ok(BernoulliSprt {
            p0,
            p1,
            log_likelihood_ratio: 0.0,
            failures: 0,
            successes: 0,
        })
    }

    /// Adds the outcomes of more devices: how many failed and how many succeeded.
    pub fn observe(&mut self, failures: u64, successes: u64) {
        let log_failure = (self.p1 / self.p0).ln();
        let log_success = (-self.p1).ln_1p() - (-self.p0).ln_1p();
        self.log_likelihood_ratio += failures as f64 * log_failure + successes as f64 * log_success;
        self.failures = self.failures.saturating_add(failures);
        self.successes = self.successes.saturating_add(successes);
    }

    /// The natural log of the likelihood ratio of H1 to H0 over everything observed; 0 at the start.
    pub fn log_likelihood_ratio(&self) -> f64 {
        self.log_likelihood_ratio
    }

    /// Whether the evidence rejects H0 at level `alpha`: the log-likelihood ratio has reached
    /// `ln(1/alpha)`. Always false for `alpha` outside (0, 1).
    pub fn rejects(&self, alpha: f64) -> bool {
        crosses(self.log_likelihood_ratio, alpha)
    }

    /// The acceptable failure probability.
    pub fn p0(&self) -> f64 {
        self.p0
    }

    /// The failure probability the test was set up to detect.
    pub fn p1(&self) -> f64 {
        self.p1
    }

    /// Failed devices observed.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Successful devices observed.
    pub fn successes(&self) -> u64 {
        self.successes
    }
}

/// The evidence from comparing a proportion between the cohorts with [`two_proportions`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proportions {
    /// The fraction of canary devices with the bad outcome.
    pub canary_rate: f64,
    /// The fraction of baseline devices with the bad outcome.
    pub baseline_rate: f64,
    /// `canary_rate - baseline_rate`: positive when the canary is worse.
    pub difference: f64,
    /// The chance of at least this many bad canary devices if the outcome were independent of the
    /// cohort (Fisher's exact test, one-sided).
    pub p_value: f64,
    /// Canary devices counted.
    pub n_canary: u64,
    /// Baseline devices counted.
    pub n_baseline: u64,
}

/// Tests whether a larger fraction of canary devices than of baseline devices has a bad outcome (is
/// offline, rolled back, reported an error), with Fisher's exact test, one-sided.
///
/// The p-value is the upper tail of the hypergeometric distribution of the canary's bad count given
/// both margins, as `scipy.stats.fisher_exact([[canary_bad, canary_good], [baseline_bad,
/// baseline_good]], alternative="greater")` computes it. It is exact at any size, without a normal
/// approximation: the tail's largest term comes from a log-gamma function and the others from the
/// ratio of neighbouring terms, summed outwards until they no longer matter (about ten standard
/// deviations of terms at most). Floating-point rounding in the log-gamma terms grows with the number
/// of devices: the p-value's relative error is about 1e-11 for ten thousand devices and a few parts
/// in 1e8 for ten million, far below anything a verdict can notice.
///
/// `None` when either cohort is empty or has more bad devices than devices.
pub fn two_proportions(
    canary_bad: u64,
    canary_n: u64,
    baseline_bad: u64,
    baseline_n: u64,
) -> Option<Proportions> {
    if canary_n == 0 || baseline_n == 0 || canary_bad > canary_n || baseline_bad > baseline_n {
        return None;
    }
    let n_devices = canary_n.checked_add(baseline_n)?;
    let n_bad = canary_bad + baseline_bad;
    let canary_rate = canary_bad as f64 / canary_n as f64;
    let baseline_rate = baseline_bad as f64 / baseline_n as f64;
    Some(Proportions {
        canary_rate,
        baseline_rate,
        difference: canary_rate - baseline_rate,
        p_value: hypergeometric_upper_tail(canary_bad, canary_n, n_bad, n_devices),
        n_canary: canary_n,
        n_baseline: baseline_n,
    })
}

/// How a metric's evidence reads for a rollout phase. Ordered by severity, so the verdict of a phase
/// is the maximum over its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No evidence that the canary is worse.
    Pass,
    /// Weak evidence, or a significant change too small to matter: worth a look, not a rollback.
    Marginal,
    /// Significant evidence of a change large enough to matter.
    Fail,
}

impl Verdict {
    /// The verdict's name as it appears in JSON: `pass`, `marginal` or `fail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Marginal => "marginal",
            Verdict::Fail => "fail",
        }
    }
}

/// Turns one metric's evidence into a verdict.
///
/// - [`Verdict::Fail`] when `p_value < alpha` and the relative effect, when known, is at least
///   `min_effect` in magnitude. On a large fleet a change of 0.1 % can be highly significant; it is
///   not a reason to roll back, so significance alone is not enough.
/// - [`Verdict::Marginal`] when `p_value < 2 * alpha` but the result is not a failure, which includes
///   a significant change smaller than `min_effect`.
/// - [`Verdict::Pass`] otherwise, including for a NaN p-value. A NaN effect counts as unknown.
///
/// For a false-alarm rate of `alpha` per phase across `m` metrics judged once, pass
/// `bonferroni(alpha, m)` as `alpha` (see the [module docs](self)). Verdicts from sequential tests
/// come from their own `rejects`, not from here.
pub fn judge(p_value: f64, relative_effect: Option<f64>, alpha: f64, min_effect: f64) -> Verdict {
    let effect_matters = relative_effect
        .filter(|effect| !effect.is_nan())
        .is_none_or(|effect| effect.abs() >= min_effect);
    if p_value < alpha && effect_matters {
        Verdict::Fail
    } else if p_value < 2.0 * alpha {
        Verdict::Marginal
    } else {
        Verdict::Pass
    }
}

/// The level at which to judge each of `n_tests` tests so that the chance of any false alarm among
/// them is at most `alpha`, whatever their correlation: `alpha / n_tests` (Bonferroni). Zero tests
/// are treated as one.
pub fn bonferroni(alpha: f64, n_tests: usize) -> f64 {
    alpha / n_tests.max(1) as f64
}

/// The serialized form of a [`RateSprt`], checked before it becomes one.
#[derive(Deserialize)]
struct RateSprtState {
    ratio: f64,
    log_likelihood_ratio: f64,
    canary_events: u64,
    canary_exposure: f64,
    baseline_events: u64,
    baseline_exposure: f64,
}

impl TryFrom<RateSprtState> for RateSprt {
    type Error = String;

    fn try_from(state: RateSprtState) -> Result<Self, String> {
        let sprt = RateSprt {
            log_likelihood_ratio: state.log_likelihood_ratio,
            canary_events: state.canary_events,
            canary_exposure: state.canary_exposure,
            baseline_events: state.baseline_events,
            baseline_exposure: state.baseline_exposure,
            ..RateSprt::new(state.ratio)?
        };
        let exposures = [sprt.canary_exposure, sprt.baseline_exposure];
        if !sprt.log_likelihood_ratio.is_finite()
            || exposures.iter().any(|e| !(e.is_finite() && *e >= 0.0))
        {
            return Err("a stored rate test has a non-finite likelihood ratio or exposure".into());
        }
        Ok(sprt)
    }
}

/// The serialized form of a [`BernoulliSprt`], checked before it becomes one.
#[derive(Deserialize)]
struct BernoulliSprtState {
    p0: f64,
    p1: f64,
    log_likelihood_ratio: f64,
    failures: u64,
    successes: u64,
}

impl TryFrom<BernoulliSprtState> for BernoulliSprt {
    type Error = String;

    fn try_from(state: BernoulliSprtState) -> Result<Self, String> {
        if !state.log_likelihood_ratio.is_finite() {
            return Err("a stored failure test has a non-finite likelihood ratio".into());
        }
        Ok(BernoulliSprt {
            log_likelihood_ratio: state.log_likelihood_ratio,
            failures: state.failures,
            successes: state.successes,
            ..BernoulliSprt::new(state.p0, state.p1)?
        })
    }
}

/// Whether a log-likelihood ratio has reached the rejection threshold `ln(1/alpha)`.
fn crosses(log_likelihood_ratio: f64, alpha: f64) -> bool {
    0.0 < alpha && alpha < 1.0 && log_likelihood_ratio >= -alpha.ln()
}

/// The finite values, sorted ascending.
fn finite_sorted(values: &[f64]) -> Vec<f64> {
    // Adding +0.0 turns -0.0 into +0.0 and leaves everything else alone, so that `total_cmp` (which
    // puts -0.0 before +0.0) agrees with `==` and no difference of two values is ever -0.0.
    let mut sorted: Vec<f64> = values
        .iter()
        .filter(|value| value.is_finite())
        .map(|value| value + 0.0)
        .collect();
    sorted.sort_unstable_by(f64::total_cmp);
    sorted
}

/// The median of sorted values; callers guarantee at least one.
fn median(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        // Halving first cannot overflow, unlike `(a + b) / 2`.
        0.5 * sorted[mid - 1] + 0.5 * sorted[mid]
    }
}

/// The canary's rank sum in the pooled sample, with what the variance needs about ties.
struct RankSum {
    /// Sum of the canary values' ranks (1-based, ties sharing their average rank).
    canary: f64,
    /// Σ (t³ − t) over groups of t tied values.
    tie_term: f64,
    /// The number of distinct values in the pooled sample.
    n_distinct: usize,
}

/// Ranks the pooled sample by merging the two sorted cohorts: O(n_canary + n_baseline).
fn rank_sum(canary: &[f64], baseline: &[f64]) -> RankSum {
    let mut rank_sum = RankSum {
        canary: 0.0,
        tie_term: 0.0,
        n_distinct: 0,
    };
    let (mut canary_idx, mut baseline_idx) = (0, 0);
    while canary_idx < canary.len() || baseline_idx < baseline.len() {
        let value = [canary.get(canary_idx), baseline.get(baseline_idx)]
            .into_iter()
            .flatten()
            .fold(f64::INFINITY, |min, &value| min.min(value));
        let n_canary = canary[canary_idx..]
            .iter()
            .take_while(|&&x| x == value)
            .count();
        let n_baseline = baseline[baseline_idx..]
            .iter()
            .take_while(|&&x| x == value)
            .count();
        // The tied values take ranks n_ranked + 1 ..= n_ranked + n_tied; each gets their average.
        let n_ranked = (canary_idx + baseline_idx) as f64;
        let n_tied = (n_canary + n_baseline) as f64;
        rank_sum.canary += n_canary as f64 * (n_ranked + (n_tied + 1.0) / 2.0);
        rank_sum.tie_term += n_tied * n_tied * n_tied - n_tied;
        rank_sum.n_distinct += 1;
        canary_idx += n_canary;
        baseline_idx += n_baseline;
    }
    rank_sum
}

/// The Hodges–Lehmann shift of two sorted, non-empty samples: the median of all differences
/// `canary[i] - baseline[j]`, selected exactly by [`kth_difference`].
fn hodges_lehmann(canary: &[f64], baseline: &[f64]) -> f64 {
    let n_pairs = canary.len() as u64 * baseline.len() as u64;
    let upper = kth_difference(canary, baseline, n_pairs / 2);
    if n_pairs % 2 == 1 {
        upper
    } else {
        let lower = kth_difference(canary, baseline, n_pairs / 2 - 1);
        0.5 * lower + 0.5 * upper
    }
}

/// The `rank`-th smallest (from 0) of the differences `a[i] - b[j]` over all pairs, for `a` and `b`
/// sorted ascending, in O((n_a + n_b) log(n_a n_b)) time and O(n_a + n_b) space.
///
/// Picture the differences as a matrix whose row `i` holds `a[i] - b[j]` with `b` taken in descending
/// order: rows and columns are non-decreasing (floating-point subtraction is monotone). Each row
/// keeps a window of columns that may still hold the answer; every entry left of a window is smaller
/// than the answer and every entry right of it larger. A round takes as pivot the median of the
/// windows' middle entries weighted by window width, so at least a quarter of the candidates lie on
/// each side of it, and counts the entries below and at the pivot by walking the staircase that
/// separates them (O(n_a + n_b)). Either the pivot is the answer or the side that cannot hold it is
/// dropped: a quarter of the candidates per round, O(log(n_a n_b)) rounds. Once no more than
/// n_a + n_b candidates are left they are selected directly. This is the weighted-median pivot of
/// Johnson and Mizoguchi's (1978) selection in X + Y; Monahan (1984) used the same matrix search,
/// with random pivots, for the one-sample Hodges–Lehmann estimator.
fn kth_difference(a: &[f64], b: &[f64], rank: u64) -> f64 {
    let (n_rows, n_cols) = (a.len(), b.len());
    let entry = |row: usize, col: usize| a[row] - b[n_cols - 1 - col];
    let mut lo = vec![0; n_rows];
    let mut hi = vec![n_cols; n_rows];
    let mut n_below_by_row = vec![0; n_rows];
    let mut n_at_or_below_by_row = vec![0; n_rows];
    let mut middles = Vec::with_capacity(n_rows);
    loop {
        let n_candidates: u64 = lo.iter().zip(&hi).map(|(&l, &h)| (h - l) as u64).sum();
        if n_candidates <= (n_rows + n_cols) as u64 {
            let n_left: u64 = lo.iter().map(|&l| l as u64).sum();
            let mut candidates: Vec<f64> = (0..n_rows)
                .flat_map(|row| (lo[row]..hi[row]).map(move |col| entry(row, col)))
                .collect();
            let (_, answer, _) =
                candidates.select_nth_unstable_by((rank - n_left) as usize, f64::total_cmp);
            return *answer;
        }

        middles.clear();
        middles.extend((0..n_rows).filter(|&row| lo[row] < hi[row]).map(|row| {
            let width = hi[row] - lo[row];
            (entry(row, lo[row] + (width - 1) / 2), width as u64)
        }));
        let pivot = weighted_median(&mut middles, n_candidates.div_ceil(2));

        let n_below = count_by_row(n_cols, entry, |x| x < pivot, &mut n_below_by_row);
        let n_at_or_below = count_by_row(n_cols, entry, |x| x <= pivot, &mut n_at_or_below_by_row);
        if rank < n_below {
            for (hi, &n_below) in hi.iter_mut().zip(&n_below_by_row) {
                *hi = (*hi).min(n_below);
            }
        } else if rank < n_at_or_below {
            return pivot;
        } else {
            for (lo, &n_at_or_below) in lo.iter_mut().zip(&n_at_or_below_by_row) {
                *lo = (*lo).max(n_at_or_below);
            }
        }
    }
}

/// For each row of a matrix whose rows and columns are non-decreasing, counts the entries that
/// satisfy `is_low` (a downward-closed condition such as `x < pivot`), storing each row's count in
/// `counts` (one per row) and returning the total. The boundary only moves left from one row to the next, so this
/// takes O(n_rows + n_cols).
fn count_by_row(
    n_cols: usize,
    entry: impl Fn(usize, usize) -> f64,
    is_low: impl Fn(f64) -> bool,
    counts: &mut [usize],
) -> u64 {
    let mut n_low_cols = n_cols;
    let mut total = 0;
    for (row, count) in counts.iter_mut().enumerate() {
        while n_low_cols > 0 && !is_low(entry(row, n_low_cols - 1)) {
            n_low_cols -= 1;
        }
        *count = n_low_cols;
        total += n_low_cols as u64;
    }
    total
}

/// The smallest value whose cumulative weight, taking values in ascending order, reaches `target`
/// (between 1 and the total weight). Quickselect that descends into the side holding the target:
/// linear time, as each step's selection is linear and halves the range.
fn weighted_median(items: &mut [(f64, u64)], mut target: u64) -> f64 {
    let (mut start, mut end) = (0, items.len());
    loop {
        let range = &mut items[start..end];
        let mid = range.len() / 2;
        range.select_nth_unstable_by(mid, |x, y| x.0.total_cmp(&y.0));
        let weight_below: u64 = range[..mid].iter().map(|item| item.1).sum();
        let (value, weight) = range[mid];
        if target <= weight_below {
            end = start + mid;
        } else if target <= weight_below + weight {
            return value;
        } else {
            target -= weight_below + weight;
            start += mid + 1;
        }
    }
}

/// P(X ≥ x) for X hypergeometric: the number of bad items among `n_drawn` drawn without replacement
/// from `n_total` items of which `n_bad` are bad. Callers guarantee `x ≤ n_drawn ≤ n_total` and
/// `n_bad ≤ n_total`.
///
/// Terms are summed from the end of the tail nearest the mode outwards, where they only shrink, as
/// multiples of the first term (so none underflows), stopping when they no longer change the sum.
/// When `x` is at or below the mode the tail holds at least about half the mass, so it is computed as
/// one minus the lower tail, which is then the short sum.
fn hypergeometric_upper_tail(x: u64, n_drawn: u64, n_bad: u64, n_total: u64) -> f64 {
    let n_good = n_total - n_bad;
    let lowest = n_drawn.saturating_sub(n_good);
    let highest = n_drawn.min(n_bad);
    if x <= lowest {
        return 1.0;
    }
    let (n_drawn_f, n_bad_f, n_good_f) = (n_drawn as f64, n_bad as f64, n_good as f64);
    let log_pmf = |k: u64| {
        let k = k as f64;
        ln_choose(n_bad_f, k) + ln_choose(n_good_f, n_drawn_f - k)
            - ln_choose(n_total as f64, n_drawn_f)
    };
    // pmf(k + 1) / pmf(k), from the ratio of binomial coefficients.
    let ratio_up =
        |k: f64| (n_bad_f - k) * (n_drawn_f - k) / ((k + 1.0) * (n_good_f - n_drawn_f + k + 1.0));
    let mode = ((n_drawn_f + 1.0) * (n_bad_f + 1.0) / (n_total as f64 + 2.0)).floor();

    let mut sum = 0.0;
    let mut term = 1.0;
    let tail = if x as f64 > mode {
        for k in x..=highest {
            sum += term;
            term *= ratio_up(k as f64);
            if term <= sum * 1e-17 {
                break;
            }
        }
        log_pmf(x).exp() * sum
    } else {
        for k in (lowest..x).rev() {
            sum += term;
            // pmf(k - 1) / pmf(k) is the reciprocal of ratio_up(k - 1) (infinite just outside the
            // support, which makes the unused last term zero).
            term /= ratio_up(k as f64 - 1.0);
            if term <= sum * 1e-17 {
                break;
            }
        }
        1.0 - log_pmf(x - 1).exp() * sum
    };
    tail.clamp(0.0, 1.0)
}

/// ln C(n, k) for real 0 ≤ k ≤ n.
fn ln_choose(n: f64, k: f64) -> f64 {
    ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0)
}

/// ln Γ(x) for x > 0, by the Lanczos approximation with g = 7 and nine coefficients (the set
/// published with Numerical Recipes' successors and on Wikipedia), relative error about 1e-15 in
/// Γ; below ½ by the reflection formula.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Γ(x) Γ(1 − x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let series = COEFFICIENTS[1..]
        .iter()
        .enumerate()
        .fold(COEFFICIENTS[0], |sum, (i, c)| {
            sum + c / (x + i as f64 + 1.0)
        });
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// P(Z > z) for a standard normal Z, with relative error below about 1.2e-7 across the whole range
/// (so small p-values are accurate too, not just absolute error small).
fn normal_sf(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function by the Chebyshev fit of Numerical Recipes (`erfcc`, Press et
/// al., 2nd ed., §6.2): fractional error below 1.2e-7 everywhere.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = [
        -1.265_512_23,
        1.000_023_68,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_203_98,
        1.488_515_87,
        -0.822_152_23,
        0.170_872_77,
    ]
    .iter()
    .rev()
    .fold(0.0, |acc, c| acc * t + c);
    let tail = t * (-z * z + poly).exp();
    if x >= 0.0 {
        tail
    } else {
        2.0 - tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative closeness, for values that span many orders of magnitude.
    fn assert_close(actual: f64, expected: f64, tolerance: f64, what: &str) {
        let error = (actual - expected).abs() / expected.abs().max(f64::MIN_POSITIVE);
        assert!(
            error <= tolerance || actual == expected,
            "{what}: {actual} is not within {tolerance:e} of {expected} (relative error {error:e})"
        );
    }

    /// splitmix64: a small deterministic generator, enough for Monte Carlo checks.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform on (0, 1), never 0, so that its logarithm is finite.
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }

        /// Standard normal by Box–Muller.
        fn normal(&mut self) -> f64 {
            let radius = (-2.0 * self.uniform().ln()).sqrt();
            radius * (2.0 * std::f64::consts::PI * self.uniform()).cos()
        }

        /// Log-normal around `median`: a realistic shape for currents and latencies.
        fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
            median * (sigma * self.normal()).exp()
        }

        /// Poisson by Knuth's multiplication method; fine for the small means used here.
        fn poisson(&mut self, mean: f64) -> u64 {
            let limit = (-mean).exp();
            let mut product = self.uniform();
            let mut count = 0;
            while product > limit {
                product *= self.uniform();
                count += 1;
            }
            count
        }

        fn bernoulli(&mut self, p: f64) -> bool {
            self.uniform() < p
        }
    }

    fn brute_force_hodges_lehmann(canary: &[f64], baseline: &[f64]) -> f64 {
        let mut differences: Vec<f64> = canary
            .iter()
            .flat_map(|c| baseline.iter().map(move |b| c - b))
            .collect();
        differences.sort_unstable_by(f64::total_cmp);
        median(&differences)
    }

    #[test]
    #[allow(clippy::approx_constant)] // The 3.14 in the data is a measurement, not π.
    fn mann_whitney_matches_scipy_on_small_and_tied_examples() {
        let depression = (
            vec![1.83, 0.50, 1.62, 2.48, 1.68, 1.88, 1.55, 3.06, 1.30],
            vec![0.878, 0.647, 0.598, 2.05, 1.06, 1.29, 1.06, 3.14, 1.29],
        );
        let ties = (
            vec![3.0, 3.0, 4.0, 5.0, 5.0, 5.0, 6.0],
            vec![1.0, 2.0, 3.0, 3.0, 4.0, 4.0, 5.0, 5.0],
        );
        let modular = (
            (0..30).map(|i| (i % 7 + i % 3) as f64).collect::<Vec<_>>(),
            (0..40).map(|i| (i * 3 % 5) as f64).collect::<Vec<_>>(),
        );
        let large = (
            (0..200)
                .map(|i| (i * 37 % 101) as f64 / 10.0)
                .collect::<Vec<_>>(),
            (0..300)
                .map(|i| (i * 53 % 97) as f64 / 10.0 + 0.3)
                .collect::<Vec<_>>(),
        );
        // (data, U, p for increase / decrease / either, Hodges–Lehmann shift, medians), from
        // scipy 1.17 `mannwhitneyu(canary, baseline, method="asymptotic", alternative=…)` and
        // `numpy.median(numpy.subtract.outer(canary, baseline))`.
        let cases = [
            (
                &depression,
                58.0,
                [0.06645972909265946, 0.9442044002897128, 0.13291945818531892],
                0.56,
                (1.68, 1.06),
            ),
            (
                &ties,
                40.0,
                [0.08484420286293581, 0.9322309895901534, 0.16968840572587163],
                1.0,
                (5.0, 3.5),
            ),
            (
                &modular,
                888.0,
                [
                    0.0002773317923069524,
                    0.999734762384386,
                    0.0005546635846139048,
                ],
                2.0,
                (4.0, 2.0),
            ),
            (
                &large,
                29604.0,
                [0.5989106295750173, 0.40133367357056926, 0.8026673471411385],
                -0.09999999999999964,
                (5.0, 5.1),
            ),
        ];
        for ((canary, baseline), u, p_values, shift, (canary_median, baseline_median)) in cases {
            let directions = [Direction::Increase, Direction::Decrease, Direction::Either];
            for (bad, p_value) in directions.into_iter().zip(p_values) {
                let result = mann_whitney(canary, baseline, bad).unwrap();
                let what = format!("{bad:?} on {canary:?}");
                assert_eq!(result.u, u, "{what}");
                assert_close(result.p_value, p_value, 2e-6, &what);
                assert!(
                    (result.shift - shift).abs() < 1e-12,
                    "{what}: shift {}",
                    result.shift
                );
                assert_eq!(result.canary_median, canary_median, "{what}");
                assert_eq!(result.baseline_median, baseline_median, "{what}");
                assert_eq!(result.n_canary, canary.len());
                assert_eq!(result.n_baseline, baseline.len());
                assert_eq!(
                    result.prob_superiority,
                    u / (canary.len() * baseline.len()) as f64
                );
            }
        }
    }

    #[test]
    fn mann_whitney_z_is_large_in_the_bad_direction_and_relative_change_follows_the_shift() {
        let baseline = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0];
        let canary = [20.0, 21.0, 22.0, 23.0, 24.0, 25.0];
        let worse = mann_whitney(&canary, &baseline, Direction::Increase).unwrap();
        assert!(worse.z > 2.0 && worse.p_value < 0.01, "{worse:?}");
        assert_eq!(worse.u, 36.0);
        assert_eq!(worse.prob_superiority, 1.0);
        assert_eq!(worse.shift, 10.0);
        assert_eq!(worse.relative_change, Some(10.0 / 12.5));
        let better = mann_whitney(&canary, &baseline, Direction::Decrease).unwrap();
        assert!(better.z < -2.0 && better.p_value > 0.99, "{better:?}");

        let zero_baseline = [0.0; 6];
        let result = mann_whitney(&canary, &zero_baseline, Direction::Increase).unwrap();
        assert_eq!(result.relative_change, None);
    }

    #[test]
    fn mann_whitney_needs_five_finite_values_on_each_side() {
        let five = [1.0, 2.0, 3.0, 4.0, 5.0];
        let four = [1.0, 2.0, 3.0, 4.0];
        let four_and_junk = [
            1.0,
            f64::NAN,
            2.0,
            f64::INFINITY,
            3.0,
            f64::NEG_INFINITY,
            4.0,
        ];
        assert_eq!(MIN_SAMPLES, 5);
        for (canary, baseline) in [
            (&five[..], &four[..]),
            (&four[..], &five[..]),
            (&[][..], &five[..]),
            (&five[..], &[][..]),
            (&five[..], &four_and_junk[..]),
            (&[f64::NAN; 10][..], &five[..]),
        ] {
            assert_eq!(
                mann_whitney(canary, baseline, Direction::Either),
                None,
                "{canary:?} {baseline:?}"
            );
        }
    }

    #[test]
    fn mann_whitney_drops_non_finite_values_and_counts_the_rest() {
        let clean = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let dirty = [
            f64::NAN,
            1.0,
            2.0,
            f64::INFINITY,
            3.0,
            4.0,
            5.0,
            6.0,
            f64::NEG_INFINITY,
        ];
        let baseline = [0.5, 1.5, 2.5, 3.5, 4.5];
        let from_clean = mann_whitney(&clean, &baseline, Direction::Increase).unwrap();
        let from_dirty = mann_whitney(&dirty, &baseline, Direction::Increase).unwrap();
        assert_eq!(from_dirty, from_clean);
        assert_eq!(from_dirty.n_canary, 6);
    }

    #[test]
    fn identical_cohorts_give_no_evidence() {
        let same = [7.0; 8];
        for bad in [Direction::Increase, Direction::Decrease, Direction::Either] {
            let result = mann_whitney(&same, &same, bad).unwrap();
            assert_eq!((result.z, result.p_value, result.shift), (0.0, 1.0, 0.0));
            assert_eq!(result.prob_superiority, 0.5);
        }
        // -0.0 and +0.0 are the same value and tie.
        let zeros = [0.0, -0.0, 0.0, -0.0, 0.0];
        let result = mann_whitney(&zeros, &[-0.0; 5], Direction::Either).unwrap();
        assert_eq!((result.p_value, result.u), (1.0, 12.5));
        let shuffled = [3.0, 1.0, 2.0, 5.0, 4.0, 6.0];
        let result = mann_whitney(&shuffled, &shuffled, Direction::Either).unwrap();
        assert_eq!((result.p_value, result.shift), (1.0, 0.0));
    }

    #[test]
    fn hodges_lehmann_shift_is_the_median_of_pairwise_differences_at_any_size() {
        let mut rng = Rng(7);
        // Sizes include odd and even pair counts, one-row and one-column matrices and more than
        // 250,000 pairs; rounding to a coarse grid makes many differences tie.
        for (n_canary, n_baseline, grid) in [
            (1, 1, 1.0),
            (1, 9, 0.1),
            (8, 1, 0.1),
            (5, 7, 1.0),
            (13, 13, 0.5),
            (40, 300, 1.0),
            (300, 40, 0.01),
            (97, 101, 0.0),
            (600, 500, 0.25),
        ] {
            let mut sample = |n: usize, median: f64| {
                let mut values: Vec<f64> = (0..n)
                    .map(|_| rng.log_normal(median, 0.5))
                    .map(|x| {
                        if grid > 0.0 {
                            (x / grid).round() * grid
                        } else {
                            x
                        }
                    })
                    .collect();
                values.sort_unstable_by(f64::total_cmp);
                values
            };
            let canary = sample(n_canary, 12.0);
            let baseline = sample(n_baseline, 10.0);
            assert_eq!(
                hodges_lehmann(&canary, &baseline),
                brute_force_hodges_lehmann(&canary, &baseline),
                "{n_canary} x {n_baseline} on a grid of {grid}"
            );
        }
    }

    #[test]
    fn kth_difference_finds_every_rank_of_a_tied_matrix() {
        let a = [0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 8.0];
        let b = [-1.0, 0.0, 0.0, 1.0, 1.0, 5.0];
        let mut differences: Vec<f64> = a
            .iter()
            .flat_map(|x| b.iter().map(move |y| x - y))
            .collect();
        differences.sort_unstable_by(f64::total_cmp);
        for (rank, expected) in differences.iter().enumerate() {
            assert_eq!(
                kth_difference(&a, &b, rank as u64),
                *expected,
                "rank {rank}"
            );
        }
    }

    #[test]
    fn the_normal_tail_is_accurate_to_a_few_parts_in_ten_million() {
        // (z, P(Z > z)) from scipy.stats.norm.sf.
        let cases = [
            (-3.0, 0.9986501019683699),
            (-1.0, 0.8413447460685429),
            (0.0, 0.5),
            (0.5, 0.3085375387259869),
            (1.0, 0.15865525393145707),
            (1.6448536269514722, 0.050000000000000044),
            (1.96, 0.024997895148220435),
            (2.326347874040841, 0.009999999999999992),
            (3.0, 0.0013498980316300933),
            (5.0, 2.866515718791933e-07),
            (8.0, 6.22096057427174e-16),
        ];
        for (z, expected) in cases {
            assert_close(normal_sf(z), expected, 1.2e-7, &format!("sf({z})"));
        }
    }

    #[test]
    fn ln_gamma_matches_reference_values() {
        // From Python's math.lgamma.
        let cases = [
            (0.1, 2.2527126517342055),
            (0.5, 0.5723649429247004),
            (1.0, 0.0),
            (1.5, -0.12078223763524543),
            (2.0, 0.0),
            (3.7, 1.4280723266653883),
            (10.0, 12.801827480081467),
            (100.5, 361.4355404677776),
            (1_000_001.0, 12815518.384658169),
            (1e9, 19723265827.503716),
        ];
        for (x, expected) in cases {
            let actual = ln_gamma(x);
            assert!(
                (actual - expected).abs() <= 1e-13 * expected.abs().max(1.0),
                "ln_gamma({x}) = {actual}, expected {expected}"
            );
        }
    }

    #[test]
    fn two_proportions_matches_fisher_exact_greater() {
        // ((canary bad, canary good), (baseline bad, baseline good), p) from scipy 1.17
        // `fisher_exact([[cb, cg], [bb, bg]], alternative="greater")`.
        let cases = [
            ((3, 1), (1, 3), 0.24285714285714283),
            ((5, 0), (0, 5), 0.003968253968253969),
            ((0, 10), (0, 10), 1.0),
            ((1, 9), (11, 3), 0.9999663480953022),
            ((0, 5), (5, 0), 1.0),
            ((7, 3), (2, 8), 0.03488925934746368),
            ((10, 90), (3, 197), 0.0013102476431005607),
            ((12, 988), (50, 9950), 0.009069704325580456),
            ((150, 850), (1000, 9000), 1.6648128453022208e-06),
            ((1200, 98800), (10000, 990000), 2.498621043949249e-09),
            ((5200, 994800), (50000, 9950000), 0.003692497267705861),
        ];
        for ((canary_bad, canary_good), (baseline_bad, baseline_good), p_value) in cases {
            let (canary_n, baseline_n) = (canary_bad + canary_good, baseline_bad + baseline_good);
            let result = two_proportions(canary_bad, canary_n, baseline_bad, baseline_n).unwrap();
            let what =
                format!("[[{canary_bad}, {canary_good}], [{baseline_bad}, {baseline_good}]]");
            // Rounding in the log-gamma terms grows with the number of devices.
            let tolerance = 1e-13 + 5e-15 * (canary_n + baseline_n) as f64;
            assert_close(result.p_value, p_value, tolerance, &what);
            assert_eq!(result.canary_rate, canary_bad as f64 / canary_n as f64);
            assert_eq!(
                result.baseline_rate,
                baseline_bad as f64 / baseline_n as f64
            );
            assert_eq!(result.difference, result.canary_rate - result.baseline_rate);
            assert_eq!((result.n_canary, result.n_baseline), (canary_n, baseline_n));
        }
    }

    #[test]
    fn two_proportions_refuses_empty_or_impossible_cohorts() {
        assert_eq!(two_proportions(0, 0, 1, 10), None);
        assert_eq!(two_proportions(1, 10, 0, 0), None);
        assert_eq!(two_proportions(11, 10, 1, 10), None);
        assert_eq!(two_proportions(1, 10, 11, 10), None);
        assert_eq!(two_proportions(1, u64::MAX, 1, 10), None);
        assert_eq!(two_proportions(0, 1, 0, 1).unwrap().p_value, 1.0);
    }

    #[test]
    fn rate_sprt_adds_the_conditional_binomial_log_likelihood_ratio() {
        let mut sprt = RateSprt::new(2.0).unwrap();
        assert_eq!(sprt.log_likelihood_ratio(), 0.0);
        assert!(!sprt.rejects(0.01));
        assert_eq!(sprt.rate_ratio(), None);

        sprt.observe(4, 10.0, 6, 30.0);
        // p0 = 10 / 40, p1 = 20 / 50.
        let (p0, p1): (f64, f64) = (0.25, 0.4);
        let expected = 4.0 * (p1 / p0).ln() + 6.0 * ((1.0 - p1) / (1.0 - p0)).ln();
        assert!((sprt.log_likelihood_ratio() - expected).abs() < 1e-12);
        assert_eq!(sprt.rate_ratio(), Some((4.0 / 10.0) / (6.0 / 30.0)));

        // Unusable exposures are ignored whole, counts included.
        for (canary_exposure, baseline_exposure) in [
            (0.0, 1.0),
            (1.0, -1.0),
            (f64::NAN, 1.0),
            (1.0, f64::INFINITY),
        ] {
            sprt.observe(100, canary_exposure, 0, baseline_exposure);
        }
        assert!((sprt.log_likelihood_ratio() - expected).abs() < 1e-12);
        assert_eq!(
            (
                sprt.canary_events(),
                sprt.canary_exposure(),
                sprt.baseline_events(),
                sprt.baseline_exposure()
            ),
            (4, 10.0, 6, 30.0)
        );

        // ln(1 / 0.01) = 4.6: a burst of canary-only crashes crosses it.
        sprt.observe(12, 10.0, 0, 30.0);
        assert!(sprt.rejects(0.01), "{}", sprt.log_likelihood_ratio());
        assert!(!sprt.rejects(0.0) && !sprt.rejects(1.0) && !sprt.rejects(f64::NAN));
        assert_eq!(sprt.ratio(), 2.0);
    }

    #[test]
    fn rate_sprt_rejects_ratios_that_are_not_above_one() {
        for ratio in [1.0, 0.5, 0.0, -2.0, f64::NAN, f64::INFINITY] {
            assert!(RateSprt::new(ratio).is_err(), "{ratio}");
        }
        assert!(RateSprt::new(1.0001).is_ok());
    }

    #[test]
    fn bernoulli_sprt_adds_the_binomial_log_likelihood_ratio() {
        let mut sprt = BernoulliSprt::new(0.01, 0.05).unwrap();
        sprt.observe(2, 98);
        let expected = 2.0 * 5.0_f64.ln() + 98.0 * (0.95_f64 / 0.99).ln();
        assert!((sprt.log_likelihood_ratio() - expected).abs() < 1e-12);
        assert_eq!(
            (sprt.failures(), sprt.successes(), sprt.p0(), sprt.p1()),
            (2, 98, 0.01, 0.05)
        );
        assert!(!sprt.rejects(0.01));
        sprt.observe(4, 0);
        assert!(sprt.rejects(0.01), "{}", sprt.log_likelihood_ratio());
        for (p0, p1) in [
            (0.05, 0.01),
            (0.0, 0.1),
            (0.1, 1.0),
            (0.1, 0.1),
            (f64::NAN, 0.5),
        ] {
            assert!(BernoulliSprt::new(p0, p1).is_err(), "{p0} {p1}");
        }
    }

    #[test]
    fn sequential_tests_survive_a_round_trip_through_json_and_refuse_corrupt_state() {
        let mut rate = RateSprt::new(2.0).unwrap();
        rate.observe(3, 5.0, 10, 50.0);
        // serde_json parses floats to within an ulp unless its `float_roundtrip` feature is on, so
        // the log-likelihood ratio is compared with a tolerance; everything else must be exact.
        let json = serde_json::to_string(&rate).unwrap();
        let restored: RateSprt = serde_json::from_str(&json).unwrap();
        assert_close(
            restored.log_likelihood_ratio(),
            rate.log_likelihood_ratio(),
            1e-15,
            "rate",
        );
        assert_eq!(
            RateSprt {
                log_likelihood_ratio: rate.log_likelihood_ratio,
                ..restored
            },
            rate
        );
        let corrupt = json.replace("\"ratio\":2.0", "\"ratio\":0.5");
        assert!(
            serde_json::from_str::<RateSprt>(&corrupt).is_err(),
            "{corrupt}"
        );

        let mut bernoulli = BernoulliSprt::new(0.01, 0.05).unwrap();
        bernoulli.observe(1, 40);
        let json = serde_json::to_string(&bernoulli).unwrap();
        let restored: BernoulliSprt = serde_json::from_str(&json).unwrap();
        assert_close(
            restored.log_likelihood_ratio(),
            bernoulli.log_likelihood_ratio(),
            1e-15,
            "bernoulli",
        );
        assert_eq!(
            BernoulliSprt {
                log_likelihood_ratio: bernoulli.log_likelihood_ratio,
                ..restored
            },
            bernoulli
        );
        let corrupt = json.replace("\"p1\":0.05", "\"p1\":0.001");
        assert!(
            serde_json::from_str::<BernoulliSprt>(&corrupt).is_err(),
            "{corrupt}"
        );
    }

    #[test]
    fn judge_fails_only_significant_changes_that_are_large_enough() {
        let (alpha, min_effect) = (0.01, 0.05);
        let cases = [
            (0.001, Some(0.20), Verdict::Fail),
            (0.001, Some(-0.20), Verdict::Fail),
            (0.001, None, Verdict::Fail),
            (0.001, Some(0.05), Verdict::Fail),
            (0.001, Some(0.01), Verdict::Marginal),
            (0.001, Some(f64::NAN), Verdict::Fail),
            (0.015, Some(0.50), Verdict::Marginal),
            (0.015, Some(0.001), Verdict::Marginal),
            (0.02, Some(0.50), Verdict::Pass),
            (0.5, None, Verdict::Pass),
            (f64::NAN, Some(0.5), Verdict::Pass),
        ];
        for (p_value, effect, verdict) in cases {
            assert_eq!(
                judge(p_value, effect, alpha, min_effect),
                verdict,
                "p {p_value}, effect {effect:?}"
            );
        }
        assert_eq!(bonferroni(0.05, 5), 0.01);
        assert_eq!(bonferroni(0.05, 0), 0.05);
        assert_eq!(
            [Verdict::Pass, Verdict::Fail, Verdict::Marginal]
                .into_iter()
                .max(),
            Some(Verdict::Fail)
        );
    }

    #[test]
    fn verdicts_and_directions_read_as_snake_case() {
        for verdict in [Verdict::Pass, Verdict::Marginal, Verdict::Fail] {
            let json = serde_json::to_string(&verdict).unwrap();
            assert_eq!(json, format!("\"{}\"", verdict.as_str()));
        }
        assert_eq!(
            serde_json::to_string(&Direction::Increase).unwrap(),
            "\"increase\""
        );
        assert_eq!(
            serde_json::from_str::<Direction>("\"either\"").unwrap(),
            Direction::Either
        );
    }

    #[test]
    fn mann_whitney_false_alarms_stay_near_alpha_for_a_good_release() {
        let mut rng = Rng(1);
        let n_trials = 2_000;
        let alpha = 0.01;
        let (mut continuous_alarms, mut tied_alarms) = (0, 0);
        for _ in 0..n_trials {
            // Battery current: log-normal, the same for both cohorts.
            let canary: Vec<f64> = (0..10).map(|_| rng.log_normal(40.0, 0.3)).collect();
            let baseline: Vec<f64> = (0..100).map(|_| rng.log_normal(40.0, 0.3)).collect();
            let result = mann_whitney(&canary, &baseline, Direction::Increase).unwrap();
            continuous_alarms += usize::from(result.p_value < alpha);
            // Reboots per device: small counts, almost all tied.
            let canary: Vec<f64> = (0..20).map(|_| rng.poisson(0.5) as f64).collect();
            let baseline: Vec<f64> = (0..100).map(|_| rng.poisson(0.5) as f64).collect();
            let result = mann_whitney(&canary, &baseline, Direction::Either).unwrap();
            tied_alarms += usize::from(result.p_value < alpha);
        }
        // Expected about 20 of 2,000 each; 40 would be a false-alarm rate of twice alpha.
        assert!(
            continuous_alarms <= 40,
            "{continuous_alarms} false alarms of {n_trials}"
        );
        assert!(
            tied_alarms <= 40,
            "{tied_alarms} false alarms of {n_trials} with ties"
        );
        // And the test is not uselessly conservative either.
        assert!(
            continuous_alarms >= 5,
            "{continuous_alarms} false alarms of {n_trials}"
        );
    }

    #[test]
    fn rate_sprt_checked_at_every_tick_keeps_its_false_alarm_rate() {
        let mut rng = Rng(2);
        let n_trials = 2_000;
        let mut alarms = 0;
        for _ in 0..n_trials {
            let mut sprt = RateSprt::new(2.0).unwrap();
            // 10 canary and 100 baseline devices for an hour per tick, 0.05 crashes per device-hour.
            for _ in 0..200 {
                sprt.observe(rng.poisson(0.5), 10.0, rng.poisson(5.0), 100.0);
                if sprt.rejects(0.01) {
                    alarms += 1;
                    break;
                }
            }
        }
        // Ville's inequality bounds it by 1 %, checked 200 times.
        assert!(alarms <= 30, "{alarms} false alarms of {n_trials}");
    }

    #[test]
    fn bernoulli_sprt_checked_after_every_device_keeps_its_false_alarm_rate() {
        let mut rng = Rng(3);
        let n_trials = 2_000;
        let mut alarms = 0;
        for _ in 0..n_trials {
            let mut sprt = BernoulliSprt::new(0.01, 0.05).unwrap();
            for _ in 0..500 {
                let failed = rng.bernoulli(0.01);
                sprt.observe(u64::from(failed), u64::from(!failed));
                if sprt.rejects(0.01) {
                    alarms += 1;
                    break;
                }
            }
        }
        assert!(alarms <= 30, "{alarms} false alarms of {n_trials}");
    }

    #[test]
    fn mann_whitney_catches_a_canary_drawing_twenty_times_the_battery_current() {
        let mut rng = Rng(4);
        let n_trials = 200;
        let mut detected = 0;
        for _ in 0..n_trials {
            let canary: Vec<f64> = (0..10).map(|_| rng.log_normal(800.0, 0.3)).collect();
            let baseline: Vec<f64> = (0..100).map(|_| rng.log_normal(40.0, 0.3)).collect();
            let result = mann_whitney(&canary, &baseline, Direction::Increase).unwrap();
            let verdict = judge(
                result.p_value,
                result.relative_change,
                bonferroni(0.01, 5),
                0.1,
            );
            detected += usize::from(verdict == Verdict::Fail);
        }
        assert_eq!(detected, n_trials);
    }

    #[test]
    fn mann_whitney_usually_catches_a_fifty_percent_rise_with_ten_canaries() {
        let mut rng = Rng(5);
        let n_trials = 500;
        let mut detected = 0;
        for _ in 0..n_trials {
            let canary: Vec<f64> = (0..10).map(|_| rng.log_normal(60.0, 0.3)).collect();
            let baseline: Vec<f64> = (0..100).map(|_| rng.log_normal(40.0, 0.3)).collect();
            let result = mann_whitney(&canary, &baseline, Direction::Increase).unwrap();
            detected += usize::from(result.p_value < 0.01);
        }
        assert!(detected >= 400, "{detected} of {n_trials}");
    }

    #[test]
    fn rate_sprt_catches_triple_the_crash_rate_within_a_day() {
        let mut rng = Rng(6);
        let n_trials = 500;
        let mut ticks_to_detect = Vec::new();
        for _ in 0..n_trials {
            let mut sprt = RateSprt::new(2.0).unwrap();
            // 100 canary and 1,000 baseline devices; 0.01 crashes per device-hour on the old firmware.
            let detected_at = (1..=24).find(|_| {
                sprt.observe(
                    rng.poisson(100.0 * 0.03),
                    100.0,
                    rng.poisson(1_000.0 * 0.01),
                    1_000.0,
                );
                sprt.rejects(0.01)
            });
            ticks_to_detect.extend(detected_at);
        }
        assert!(
            ticks_to_detect.len() >= 490,
            "{} of {n_trials} detected in 24 h",
            ticks_to_detect.len()
        );
        ticks_to_detect.sort_unstable();
        let median_ticks = ticks_to_detect[ticks_to_detect.len() / 2];
        assert!(
            median_ticks <= 8,
            "median detection after {median_ticks} hours"
        );
    }

    #[test]
    fn bernoulli_sprt_catches_a_five_percent_failure_rate_within_a_few_hundred_devices() {
        let mut rng = Rng(8);
        let n_trials = 500;
        let mut detected = 0;
        for _ in 0..n_trials {
            let mut sprt = BernoulliSprt::new(0.01, 0.05).unwrap();
            detected += usize::from((0..400).any(|_| {
                let failed = rng.bernoulli(0.05);
                sprt.observe(u64::from(failed), u64::from(!failed));
                sprt.rejects(0.01)
            }));
        }
        assert!(
            detected >= 475,
            "{detected} of {n_trials} detected within 400 devices"
        );
    }
}
