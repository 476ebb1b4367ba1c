//! Placeholder replaced by the statistics module.
use serde::{Deserialize, Serialize};

/// Which change of a metric is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Increase,
    Decrease,
    Either,
}

/// Sequential test of a canary's event rate against the baseline's (placeholder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateSprt {
    ratio: f64,
    log_lr: f64,
    canary_events: u64,
    canary_exposure: f64,
    baseline_events: u64,
    baseline_exposure: f64,
}

impl RateSprt {
    pub fn new(ratio: f64) -> Result<Self, String> {
        if !(ratio > 1.0 && ratio.is_finite()) {
            return Err(format!("ratio {ratio} must be above 1"));
        }
        Ok(RateSprt { ratio, log_lr: 0.0, canary_events: 0, canary_exposure: 0.0, baseline_events: 0, baseline_exposure: 0.0 })
    }
    pub fn observe(&mut self, canary_events: u64, canary_exposure: f64, baseline_events: u64, baseline_exposure: f64) {
        if !(canary_exposure > 0.0 && baseline_exposure > 0.0 && canary_exposure.is_finite() && baseline_exposure.is_finite()) {
            return;
        }
        let p0 = canary_exposure / (canary_exposure + baseline_exposure);
        let p1 = self.ratio * canary_exposure / (self.ratio * canary_exposure + baseline_exposure);
        self.log_lr += canary_events as f64 * (p1 / p0).ln() + baseline_events as f64 * ((1.0 - p1) / (1.0 - p0)).ln();
        self.canary_events += canary_events;
        self.canary_exposure += canary_exposure;
        self.baseline_events += baseline_events;
        self.baseline_exposure += baseline_exposure;
    }
    pub fn log_likelihood_ratio(&self) -> f64 { self.log_lr }
    pub fn rejects(&self, alpha: f64) -> bool { self.log_lr >= (1.0 / alpha).ln() }
    pub fn rate_ratio(&self) -> Option<f64> {
        let c = self.canary_events as f64 / self.canary_exposure;
        let b = self.baseline_events as f64 / self.baseline_exposure;
        (c.is_finite() && b > 0.0).then(|| c / b)
    }
    pub fn canary_events(&self) -> u64 { self.canary_events }
    pub fn canary_exposure(&self) -> f64 { self.canary_exposure }
    pub fn baseline_events(&self) -> u64 { self.baseline_events }
    pub fn baseline_exposure(&self) -> f64 { self.baseline_exposure }
}

/// Sequential test of a failure proportion (placeholder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BernoulliSprt {
    p0: f64,
    p1: f64,
    log_lr: f64,
    failures: u64,
    successes: u64,
}

impl BernoulliSprt {
    pub fn new(p0: f64, p1: f64) -> Result<Self, String> {
        if !(0.0 < p0 && p0 < p1 && p1 < 1.0) {
            return Err(format!("need 0 < p0 < p1 < 1, got {p0} and {p1}"));
        }
        Ok(BernoulliSprt { p0, p1, log_lr: 0.0, failures: 0, successes: 0 })
    }
    pub fn observe(&mut self, failures: u64, successes: u64) {
        self.log_lr += failures as f64 * (self.p1 / self.p0).ln() + successes as f64 * ((1.0 - self.p1) / (1.0 - self.p0)).ln();
        self.failures += failures;
        self.successes += successes;
    }
    pub fn log_likelihood_ratio(&self) -> f64 { self.log_lr }
    pub fn rejects(&self, alpha: f64) -> bool { self.log_lr >= (1.0 / alpha).ln() }
    pub fn failures(&self) -> u64 { self.failures }
    pub fn successes(&self) -> u64 { self.successes }
}

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Marginal,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Marginal => "marginal",
            Verdict::Fail => "fail",
        }
    }
}

pub const MIN_SAMPLES: usize = 5;

/// Mann-Whitney result (placeholder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MannWhitney {
    pub n_canary: usize,
    pub n_baseline: usize,
    pub u: f64,
    pub z: f64,
    pub p_value: f64,
    pub canary_median: f64,
    pub baseline_median: f64,
    pub shift: f64,
    pub relative_change: Option<f64>,
    pub prob_superiority: f64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

fn phi(z: f64) -> f64 {
    // Abramowitz-Stegun 7.1.26 on erf.
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * (-x * x).exp();
    0.5 * (1.0 + if x >= 0.0 { y } else { -y })
}

pub fn mann_whitney(canary: &[f64], baseline: &[f64], bad: Direction) -> Option<MannWhitney> {
    let mut a: Vec<f64> = canary.iter().copied().filter(|v| v.is_finite()).collect();
    let mut b: Vec<f64> = baseline.iter().copied().filter(|v| v.is_finite()).collect();
    if a.len() < MIN_SAMPLES || b.len() < MIN_SAMPLES { return None; }
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    let mut all: Vec<(f64, bool)> = a.iter().map(|&v| (v, true)).chain(b.iter().map(|&v| (v, false))).collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let (mut r1, mut ties, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 { j += 1; }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        for item in &all[i..=j] { if item.1 { r1 += rank; } }
        i = j + 1;
    }
    let u = r1 - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let var = n1 * n2 / 12.0 * ((n + 1.0) - ties / (n * (n - 1.0)));
    let mean = n1 * n2 / 2.0;
    let sd = var.sqrt().max(1e-12);
    let z = (u - mean) / sd;
    let p = match bad {
        Direction::Increase => 1.0 - phi((u - mean - 0.5) / sd),
        Direction::Decrease => phi((u - mean + 0.5) / sd),
        Direction::Either => (2.0 * (1.0 - phi(((u - mean).abs() - 0.5) / sd))).min(1.0),
    };
    let (cm, bm) = (median(&mut a), median(&mut b));
    let shift = cm - bm;
    Some(MannWhitney { n_canary: a.len(), n_baseline: b.len(), u, z, p_value: p.clamp(0.0, 1.0), canary_median: cm, baseline_median: bm, shift,
        relative_change: (bm != 0.0).then(|| shift / bm.abs()), prob_superiority: u / (n1 * n2) })
}

/// Two proportions (placeholder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proportions {
    pub canary_rate: f64,
    pub baseline_rate: f64,
    pub difference: f64,
    pub p_value: f64,
    pub n_canary: u64,
    pub n_baseline: u64,
}

pub fn two_proportions(canary_bad: u64, canary_n: u64, baseline_bad: u64, baseline_n: u64) -> Option<Proportions> {
    if canary_n == 0 || baseline_n == 0 { return None; }
    let (p1, p2) = (canary_bad as f64 / canary_n as f64, baseline_bad as f64 / baseline_n as f64);
    let pooled = (canary_bad + baseline_bad) as f64 / (canary_n + baseline_n) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / canary_n as f64 + 1.0 / baseline_n as f64)).sqrt();
    let p = if se == 0.0 { 1.0 } else { 1.0 - phi((p1 - p2) / se) };
    Some(Proportions { canary_rate: p1, baseline_rate: p2, difference: p1 - p2, p_value: p, n_canary: canary_n, n_baseline: baseline_n })
}

pub fn judge(p_value: f64, relative_effect: Option<f64>, alpha: f64, min_effect: f64) -> Verdict {
    let big = relative_effect.is_none_or(|e| e.abs() >= min_effect);
    if p_value < alpha && big { Verdict::Fail } else if p_value < 2.0 * alpha || p_value < alpha { Verdict::Marginal } else { Verdict::Pass }
}

pub fn bonferroni(alpha: f64, n_tests: usize) -> f64 {
    alpha / n_tests.max(1) as f64
}
