//! `drover bench rollout-safety`: how well the rollout gates protect a fleet. A Monte Carlo of many
//! rollouts driven through the real orchestrator state machine (`drover_core::rollout::Machine`)
//! with simulated time, over a simulated fleet: devices take minutes to update, some downloads fail
//! and are retried, some devices go silent, every device crashes now and then, and each has its own
//! level of battery current, free memory and CPU. A release is one of:
//!
//! - `good`: exactly like the old version;
//! - `crash3x`: three times the baseline crash rate;
//! - `battery20x`: twenty times the battery current;
//! - `boot5pct`: 5% of devices fail to boot it (and fall back), against a normal 0.5%.
//!
//! For bad releases it reports how often the rollout stopped, how often it stopped before more than
//! 2% of the target had been offered the release (the blast radius, counted conservatively: every
//! device offered the release counts, even if it had not finished installing), the blast radius
//! and detection time with their spread, and which gate fired. For the good release it reports the
//! false-pause rate with a 95% upper confidence bound.
//!
//! What the store contributes in production is modelled the way the store does it: the canary's
//! metrics and crashes come from the first 1,000 devices to succeed, the baseline is the last
//! `baseline_devices` ranks of the target (never reached before the final phase), crash exposure
//! accrues per minute, and per-device metric means are compared at each gate.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use drover_core::rollout::canary::{CanaryData, MetricSamples};
use drover_core::rollout::machine::{Action, Event, Machine, Outcome, Status};
use drover_core::rollout::plan::phase_quota;
use drover_core::rollout::spec::{RolloutSpec, Strategy};
use drover_core::{Duration, Timestamp};
use drover_sim::sample::{poisson_sample, SimRng};

#[derive(Debug, Args)]
pub struct SafetyArgs {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 100_000])]
    pub devices: Vec<u64>,
    /// Simulated rollouts per bad release and fleet size.
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Simulated rollouts of the good release per fleet size (the false-pause rate needs many).
    #[arg(long, default_value_t = 2000)]
    pub good_runs: usize,
    /// Releases to simulate, comma-separated: good, crash3x, battery20x, boot5pct.
    #[arg(long, value_delimiter = ',', default_values_t = ["good".to_owned(), "crash3x".to_owned(), "battery20x".to_owned(), "boot5pct".to_owned()])]
    pub releases: Vec<String>,
    /// A rollout definition (JSON, the `spec` fields of `POST /api/v1/rollouts`) to test instead of
    /// the defaults.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Crashes per device-hour on the old version.
    #[arg(long, default_value_t = 0.02)]
    pub crash_rate: f64,
    /// Seed; the same seed gives the same numbers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// How a release behaves, relative to the old version.
#[derive(Debug, Clone, Copy)]
struct Release {
    name: &'static str,
    crash_factor: f64,
    battery_factor: f64,
    boot_failure: f64,
}

const RELEASES: &[Release] = &[
    Release {
        name: "good",
        crash_factor: 1.0,
        battery_factor: 1.0,
        boot_failure: BASE_BOOT_FAILURE,
    },
    Release {
        name: "crash3x",
        crash_factor: 3.0,
        battery_factor: 1.0,
        boot_failure: BASE_BOOT_FAILURE,
    },
    Release {
        name: "battery20x",
        crash_factor: 1.0,
        battery_factor: 20.0,
        boot_failure: BASE_BOOT_FAILURE,
    },
    Release {
        name: "boot5pct",
        crash_factor: 1.0,
        battery_factor: 1.0,
        boot_failure: 0.05,
    },
];

/// The fleet's normal behaviour, the same for every release.
const BASE_BOOT_FAILURE: f64 = 0.005;
/// A download or install attempt fails (retried by policy).
const ATTEMPT_FAILURE: f64 = 0.02;
/// A device goes silent during its update and times out.
const SILENT: f64 = 0.005;
/// Share of devices offline at any moment.
const OFFLINE: f64 = 0.02;
/// Canary devices whose data the analysis reads (the store's bound).
const ANALYSIS_DEVICES: u64 = 1000;
/// Simulated time per orchestrator tick.
const TICK_MS: i64 = 60_000;
/// A rollout that has not finished after this long is stopped and counted as "still running".
const MAX_TICKS: u64 = 14 * 24 * 60;

/// Per-device metric levels: (metric, median, spread of the log across devices, noise of one
/// device's mean over a soak).
const METRICS: &[(&str, f64, f64, f64)] = &[
    ("battery_ma", 40.0, 0.35, 0.05),
    ("mem_free_bytes", 24.0e6, 0.2, 0.02),
    ("cpu_pct", 15.0, 0.4, 0.1),
];

/// How one simulated rollout ended.
#[derive(Debug, Clone)]
struct RunResult {
    stopped: bool,
    /// Devices offered the release when it stopped (or in all), as a share of the target.
    blast_pct: f64,
    /// Simulated hours from start to the stop.
    hours: f64,
    /// Which gate stopped it: `canary:<metric>`, `crash_sprt`, `boot_sprt`, `threshold:<name>`.
    gate: String,
}

pub async fn run(args: SafetyArgs) -> anyhow::Result<()> {
    let spec = match &args.spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the rollout definition {}", path.display()))?;
            serde_json::from_str::<RolloutSpec>(&text)
                .with_context(|| format!("{} is not a rollout definition", path.display()))?
        }
        None => RolloutSpec::default(),
    };
    spec.validate()
        .map_err(|e| anyhow::anyhow!("the rollout definition is invalid: {e}"))?;
    let mut releases = Vec::new();
    for name in &args.releases {
        match RELEASES.iter().find(|r| r.name == name) {
            Some(release) => releases.push(*release),
            None => {
                anyhow::bail!("unknown release {name:?}; use good, crash3x, battery20x or boot5pct")
            }
        }
    }
    if args.runs == 0 || args.good_runs == 0 {
        anyhow::bail!("--runs and --good-runs must be at least 1");
    }
    if !(args.crash_rate > 0.0 && args.crash_rate.is_finite()) {
        anyhow::bail!("--crash-rate must be a positive number of crashes per device-hour");
    }
    if let Some(devices) = args.devices.iter().find(|&&n| n < 100) {
        anyhow::bail!("--devices: a fleet of {devices} is too small to stage; use at least 100");
    }
    println!(
        "# drover bench rollout-safety: {}",
        crate::bench_download::machine_line()
    );
    println!("# spec: {}", describe(&spec));
    println!(
        "# fleet: {} crashes/device-hour, {}% boot failures, {}% failed attempts, {}% silent, {}% offline",
        args.crash_rate,
        BASE_BOOT_FAILURE * 100.0,
        ATTEMPT_FAILURE * 100.0,
        SILENT * 100.0,
        OFFLINE * 100.0
    );
    println!(
        "{:>8}  {:>10}  {:>5}  {:>8}  {:>9}  {:>22}  {:>18}  {:>6}  gates",
        "devices",
        "release",
        "runs",
        "stopped",
        "within 2%",
        "blast % p50/p90/max",
        "hours p50/p90",
        "wall s"
    );
    for &devices in &args.devices {
        for release in &releases {
            let runs = if release.name == "good" {
                args.good_runs
            } else {
                args.runs
            };
            let started = Instant::now();
            let results = run_many(&spec, devices, *release, runs, &args);
            print_row(devices, release, &results, started.elapsed().as_secs_f64());
        }
    }
    Ok(())
}

fn describe(spec: &RolloutSpec) -> String {
    let strategy = match &spec.strategy {
        Strategy::Phases(phases) => phases
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if i + 1 == phases.len() {
                    format!("{}%", p.percent)
                } else {
                    format!("{}% soak {}", p.percent, p.soak)
                }
            })
            .collect::<Vec<_>>()
            .join(" → "),
        Strategy::Rate(rate) => format!(
            "rate {}/min ×{} up to {}/min, {} canary devices",
            rate.base_per_minute, rate.increment_factor, rate.max_per_minute, rate.canary_devices
        ),
    };
    let c = &spec.gates.canary;
    let t = &spec.gates.thresholds;
    format!(
        "{strategy}; alpha {}, crash ratio {}, boot failures {}%→{}%, baseline {} devices; thresholds after {} finished: failure {}%, rollback {}%, timeout {}%",
        c.alpha, c.crash_ratio, c.acceptable_failure_pct, c.bad_failure_pct, c.baseline_devices,
        t.min_finished, t.max_failure_pct, t.max_rollback_pct, t.max_timeout_pct
    )
}

/// Runs `runs` rollouts on every core.
fn run_many(
    spec: &RolloutSpec,
    devices: u64,
    release: Release,
    runs: usize,
    args: &SafetyArgs,
) -> Vec<RunResult> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::with_capacity(runs));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= runs {
                    break;
                }
                let seed =
                    args.seed ^ (devices << 20) ^ ((i as u64) << 4) ^ release.name.len() as u64;
                let result = simulate(spec, devices, release, args.crash_rate, seed);
                results.lock().expect("no panics while held").push(result);
            });
        }
    });
    results.into_inner().expect("no panics while held")
}

/// One rollout of `release` over `devices` devices, driven by the real state machine.
fn simulate(
    spec: &RolloutSpec,
    devices: u64,
    release: Release,
    crash_rate: f64,
    seed: u64,
) -> RunResult {
    let mut rng = SimRng::from_seed(seed);
    let mut machine = Machine::new(spec, devices);
    let start = Timestamp::from_millis(1_800_000_000_000);
    let mut now = start;
    // Devices are numbered in rank order; the baseline is the last ranks the final phase reaches.
    let before_last = match &spec.strategy {
        Strategy::Phases(phases) if phases.len() >= 2 => {
            phase_quota(devices, phases[phases.len() - 2].percent)
        }
        Strategy::Rate(rate) => u64::from(rate.canary_devices).min(devices),
        _ => devices,
    };
    let baseline = u64::from(spec.gates.canary.baseline_devices).min(devices - before_last);
    let mut next_device: u64 = 0;
    // (finish tick, device, attempt, outcome)
    let mut updating: BinaryHeap<Reverse<(u64, u64, u32, u8)>> = BinaryHeap::new();
    let mut retries: Vec<(u64, u32, Timestamp)> = Vec::new();
    // Canary devices on the release whose data the analysis reads.
    let mut analysis: u64 = 0;
    let mut crash_counting = false;
    let silent_ticks = (spec.policy.step_timeout.as_millis() / TICK_MS).max(1) as u64;
    let metric_seed = rng.next_u64();
    for tick in 0..MAX_TICKS {
        let mut events = Vec::new();
        while let Some(&Reverse((at, device, attempt, code))) = updating.peek() {
            if at > tick {
                break;
            }
            updating.pop();
            let outcome = OUTCOMES[usize::from(code)];
            if outcome == Outcome::Succeeded && analysis < ANALYSIS_DEVICES {
                analysis += 1;
            }
            events.push(Event::Outcome {
                device: device as i64,
                outcome,
                attempt,
            });
        }
        if analysis > 0 {
            // The first minute after the first success starts the exposure.
            if crash_counting && baseline > 0 {
                let canary_hours = analysis as f64 / 60.0;
                let baseline_hours = baseline as f64 / 60.0;
                events.push(Event::Crashes {
                    canary_events: poisson_sample(
                        crash_rate * release.crash_factor * canary_hours,
                        &mut rng,
                    ),
                    canary_hours,
                    baseline_events: poisson_sample(crash_rate * baseline_hours, &mut rng),
                    baseline_hours,
                });
            }
            crash_counting = true;
        }
        let mut pending = events;
        loop {
            let actions = machine.step(spec, now, std::mem::take(&mut pending));
            for action in actions {
                match action {
                    Action::Dispatch {
                        new,
                        retries: n_retries,
                    } => {
                        let n = new.min(devices - next_device);
                        for _ in 0..n {
                            schedule(
                                &mut updating,
                                &mut rng,
                                release,
                                tick,
                                next_device,
                                1,
                                silent_ticks,
                            );
                            next_device += 1;
                        }
                        let mut retried = 0;
                        let mut later = Vec::new();
                        for (device, attempt, at) in retries.drain(..) {
                            if at <= now && retried < n_retries {
                                schedule(
                                    &mut updating,
                                    &mut rng,
                                    release,
                                    tick,
                                    device,
                                    attempt,
                                    silent_ticks,
                                );
                                retried += 1;
                            } else {
                                later.push((device, attempt, at));
                            }
                        }
                        retries = later;
                        pending.push(Event::Assigned {
                            new: n,
                            retried,
                            skipped: 0,
                            queue_empty: n < new,
                        });
                    }
                    Action::Retry {
                        device,
                        attempt,
                        at,
                    } => retries.push((device as u64, attempt, at)),
                    Action::Analyze { .. } => {
                        pending.push(Event::CanaryData(canary_data(
                            metric_seed,
                            release,
                            analysis,
                            devices - baseline,
                            baseline,
                            &mut rng,
                        )));
                    }
                    Action::CancelUnfinished | Action::RollBack => updating.clear(),
                    Action::Record(_) => {}
                }
            }
            if pending.is_empty() {
                break;
            }
        }
        match machine.status {
            Status::Running => {}
            Status::Completed => {
                return RunResult {
                    stopped: false,
                    blast_pct: 100.0 * machine.counts.assigned as f64 / devices as f64,
                    hours: hours(start, now),
                    gate: String::new(),
                };
            }
            Status::Paused | Status::Aborted | Status::RolledBack => {
                return RunResult {
                    stopped: true,
                    blast_pct: 100.0 * machine.counts.assigned as f64 / devices as f64,
                    hours: hours(start, now),
                    gate: gate_name(machine.reason.as_deref().unwrap_or("")),
                };
            }
        }
        now = now.saturating_add(Duration::from_millis(TICK_MS));
    }
    RunResult {
        stopped: false,
        blast_pct: 100.0 * machine.counts.assigned as f64 / devices as f64,
        hours: hours(start, now),
        gate: "still running".into(),
    }
}

fn hours(start: Timestamp, now: Timestamp) -> f64 {
    (now.as_millis() - start.as_millis()) as f64 / 3_600_000.0
}

/// Puts one attempt on the update queue with its outcome: most attempts take 3 to 30 minutes; a
/// silent device is heard of again only when its step times out.
fn schedule(
    queue: &mut BinaryHeap<Reverse<(u64, u64, u32, u8)>>,
    rng: &mut SimRng,
    release: Release,
    tick: u64,
    device: u64,
    attempt: u32,
    silent_ticks: u64,
) {
    let draw = rng.next_f64();
    let (outcome, minutes) = if draw < SILENT {
        (Outcome::TimedOut, silent_ticks)
    } else {
        let minutes = (3.0 + (2.0 + 0.6 * rng.standard_normal()).exp()).min(120.0) as u64;
        let outcome = if draw < SILENT + ATTEMPT_FAILURE {
            Outcome::Failed
        } else if rng.chance(release.boot_failure) {
            Outcome::RolledBack
        } else {
            Outcome::Succeeded
        };
        (outcome, minutes)
    };
    let code = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0) as u8;
    queue.push(Reverse((tick + minutes.max(1), device, attempt, code)));
}

const OUTCOMES: [Outcome; 4] = [
    Outcome::Succeeded,
    Outcome::Failed,
    Outcome::RolledBack,
    Outcome::TimedOut,
];

/// The gate's data: per-device means for the canary (the analysed devices) and the baseline, each
/// device keeping its own level from gate to gate.
fn canary_data(
    seed: u64,
    release: Release,
    canary: u64,
    first_baseline: u64,
    baseline: u64,
    rng: &mut SimRng,
) -> CanaryData {
    let level = |metric: usize, device: u64, rng: &mut SimRng| {
        let (_, median, spread, noise) = METRICS[metric];
        let mut own = SimRng::for_stream(seed ^ metric as u64, device);
        median * (spread * own.standard_normal()).exp() * (1.0 + noise * rng.standard_normal())
    };
    let metrics = METRICS
        .iter()
        .enumerate()
        .map(|(m, (name, ..))| {
            let factor = if *name == "battery_ma" {
                release.battery_factor
            } else {
                1.0
            };
            MetricSamples {
                metric: (*name).to_owned(),
                canary: (0..canary).map(|d| level(m, d, rng) * factor).collect(),
                baseline: (first_baseline..first_baseline + baseline)
                    .map(|d| level(m, d, rng))
                    .collect(),
            }
        })
        .collect();
    let offline = |n: u64, rng: &mut SimRng| (0..n).filter(|_| rng.chance(OFFLINE)).count() as u64;
    CanaryData {
        metrics,
        canary_devices: canary,
        baseline_devices: baseline,
        canary_offline: offline(canary, rng),
        baseline_offline: offline(baseline, rng),
    }
}

/// A short name for the gate that stopped a rollout, from the machine's reason.
fn gate_name(reason: &str) -> String {
    if let Some((_, checks)) = reason.split_once("canary gate: ") {
        let failed = checks
            .split("; ")
            .find(|check| check.contains(" fail"))
            .and_then(|check| check.split_whitespace().next())
            .unwrap_or("unknown");
        format!("canary:{failed}")
    } else if reason.contains("crash rate") {
        "crash_sprt".into()
    } else if reason.contains("failed to boot") {
        "boot_sprt".into()
    } else if reason.contains("% threshold") {
        let name = reason.split_whitespace().next().unwrap_or("unknown");
        format!("threshold:{name}")
    } else {
        "other".into()
    }
}

fn print_row(devices: u64, release: &Release, results: &[RunResult], wall: f64) {
    let n = results.len();
    let stopped: Vec<&RunResult> = results.iter().filter(|r| r.stopped).collect();
    let mut gates: Vec<(String, usize)> = Vec::new();
    for result in results {
        if result.gate.is_empty() {
            continue;
        }
        match gates.iter_mut().find(|(g, _)| *g == result.gate) {
            Some((_, count)) => *count += 1,
            None => gates.push((result.gate.clone(), 1)),
        }
    }
    gates.sort_by_key(|g| std::cmp::Reverse(g.1));
    let gates = gates
        .iter()
        .map(|(g, c)| format!("{g} {c}"))
        .collect::<Vec<_>>()
        .join(", ");
    if release.name == "good" {
        let k = stopped.len();
        println!(
            "{:>8}  {:>10}  {:>5}  {:>8}  {:>9}  {:>22}  {:>18}  {:>6.1}  false pauses {k}/{n} = {:.2}% (95% upper bound {:.2}%); completion hours p50/p90 {:.1}/{:.1}{}{}",
            devices,
            release.name,
            n,
            format!("{k}"),
            "-",
            "-",
            "-",
            wall,
            100.0 * k as f64 / n as f64,
            100.0 * upper_bound(k, n),
            quantile(results.iter().map(|r| r.hours), 0.5),
            quantile(results.iter().map(|r| r.hours), 0.9),
            if gates.is_empty() { "" } else { "; " },
            gates
        );
        return;
    }
    let within = results
        .iter()
        .filter(|r| r.stopped && r.blast_pct <= 2.0)
        .count();
    let blast = |q| quantile(results.iter().map(|r| r.blast_pct), q);
    let hours = |q| quantile(stopped.iter().map(|r| r.hours), q);
    let max_blast = results.iter().map(|r| r.blast_pct).fold(0.0, f64::max);
    println!(
        "{:>8}  {:>10}  {:>5}  {:>7.1}%  {:>8.1}%  {:>22}  {:>18}  {:>6.1}  {}",
        devices,
        release.name,
        n,
        100.0 * stopped.len() as f64 / n as f64,
        100.0 * within as f64 / n as f64,
        format!("{:.2}/{:.2}/{:.2}", blast(0.5), blast(0.9), max_blast),
        format!("{:.1}/{:.1}", hours(0.5), hours(0.9)),
        wall,
        gates
    );
}

/// The `q` quantile (nearest rank) of `values`; NaN when there are none.
fn quantile(values: impl Iterator<Item = f64>, q: f64) -> f64 {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// The 95% one-sided upper confidence bound on a proportion after `k` events in `n` trials
/// (Clopper–Pearson, found by bisection on the binomial tail).
fn upper_bound(k: usize, n: usize) -> f64 {
    let tail = |p: f64| -> f64 {
        // P(X <= k) for X ~ Binomial(n, p), summed in log space.
        let mut total = 0.0;
        let mut log_choose = 0.0f64;
        for i in 0..=k {
            if i > 0 {
                log_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
            }
            let log_p = if p > 0.0 {
                i as f64 * p.ln()
            } else if i == 0 {
                0.0
            } else {
                f64::NEG_INFINITY
            };
            let log_q = if p < 1.0 {
                (n - i) as f64 * (1.0 - p).ln()
            } else if i == n {
                0.0
            } else {
                f64::NEG_INFINITY
            };
            total += (log_choose + log_p + log_q).exp();
        }
        total
    };
    if k >= n {
        return 1.0;
    }
    let (mut lo, mut hi) = (k as f64 / n as f64, 1.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if tail(mid) > 0.05 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upper_bound_after_no_events_is_the_rule_of_three() {
        let bound = upper_bound(0, 1000);
        assert!((bound - 0.002_991).abs() < 1e-5, "{bound}");
        assert!(upper_bound(5, 100) > 0.05);
    }

    #[test]
    fn a_battery_draining_release_stops_at_the_canary() {
        let spec = RolloutSpec::default();
        let result = simulate(&spec, 10_000, RELEASES[2], 0.02, 3);
        assert!(result.stopped, "{result:?}");
        assert!(result.blast_pct <= 2.0, "{result:?}");
        assert_eq!(result.gate, "canary:battery_ma");
    }

    #[test]
    fn gate_names_come_from_the_machines_reasons() {
        assert_eq!(
            gate_name("rollback rate 12.0% (3 of 25 finished devices) is above the 5% threshold"),
            "threshold:rollback"
        );
        assert_eq!(
            gate_name("the crash rate on the release is 3.1× the baseline's"),
            "crash_sprt"
        );
        assert_eq!(
            gate_name("phase 1 failed its canary gate: battery_ma fail (+1896%, p=4.91e-8) (10 canary vs 200 baseline devices)"),
            "canary:battery_ma"
        );
    }
}
