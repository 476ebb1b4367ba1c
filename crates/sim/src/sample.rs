//! Deterministic sampling: expanding a [`Scenario`] into one [`VirtualDeviceSpec`] per device, and
//! drawing numbers from the scenario's distributions.
//!
//! Everything random flows from one `u64` seed through [`SimRng`], a small generator of this crate's
//! own (xoshiro256**, seeded through SplitMix64). It is ours rather than `rand`'s `StdRng` because
//! `StdRng` may change its algorithm between releases, and a scenario with a seed must give the same
//! fleet after a dependency upgrade, so a run can be repeated to check a fix.
//!
//! Weighted attributes are allocated by quota, not drawn one device at a time: a cohort of 100 with
//! `rev-a = 0.7` gets exactly 70 `rev-a` devices (rounding remainders are drawn at random), shuffled
//! among the devices. Small scenarios therefore look as written, and large ones lose nothing.

use std::collections::BTreeMap;

use drover_core::health::MetricName;
use drover_core::{DeviceId, DeviceType, Duration, Label, TagKey, TagValue, Version};

use crate::scenario::{Cohort, Distribution, DurationModel, Heartbeat, Scenario, Weighted};

/// Which device API a virtual device speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Http,
    Mqtt,
}

/// Everything about one virtual device that is fixed before the simulation starts.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualDeviceSpec {
    /// `sim-{device_type}-{index}`, numbered across the whole fleet so cohorts never collide.
    pub id: DeviceId,
    /// Index of the scenario cohort this device comes from.
    pub cohort_idx: usize,
    pub device_type: DeviceType,
    pub hw_rev: Option<Label>,
    pub region: Option<Label>,
    pub site: Option<Label>,
    pub tags: BTreeMap<TagKey, TagValue>,
    pub firmware: Version,
    pub heartbeat: Heartbeat,
    /// When the first heartbeat is due, spread over one interval so that a fleet started at once
    /// does not report in lockstep.
    pub first_heartbeat_after: Duration,
    pub transport: Transport,
    /// The name of the device's network model; `None` is a perfect network.
    pub network: Option<String>,
    pub metrics: BTreeMap<MetricName, Distribution>,
    pub crash_rate_per_hour: f64,
    /// Seeds this device's own generator, so its behaviour during the run is reproducible and does
    /// not depend on how the simulator interleaves devices.
    pub rng_seed: u64,
}

/// A small, fast, reproducible pseudo-random generator (xoshiro256**). Not for secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRng {
    state: [u64; 4],
}

impl SimRng {
    pub fn from_seed(seed: u64) -> SimRng {
        // SplitMix64 spreads any seed, including 0, over a state that is never all zeros.
        let mut mix = seed;
        let state = [
            splitmix64(&mut mix),
            splitmix64(&mut mix),
            splitmix64(&mut mix),
            splitmix64(&mut mix),
        ];
        SimRng { state }
    }

    /// An independent generator for one stream (a cohort, a device) of a seeded run, so that what
    /// one stream draws does not shift the numbers of another.
    pub fn for_stream(seed: u64, stream: u64) -> SimRng {
        let mut mix = stream;
        SimRng::from_seed(seed ^ splitmix64(&mut mix))
    }

    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.state;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (0 when `n` is 0). The multiply-shift method's bias is below `n / 2^64`,
    /// far too small to matter here.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// True with probability `p` (clamped to 0..=1).
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// A standard normal sample (Box–Muller).
    pub fn standard_normal(&mut self) -> f64 {
        // 1 - [0, 1) is (0, 1], so the logarithm is finite.
        let u1 = 1.0 - self.next_f64();
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Puts `items` in a uniformly random order (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Expands a scenario into its devices, cohort by cohort in file order. The same scenario and seed
/// always give the same fleet, and a cohort's devices do not change when another cohort does
/// (except for the running number in their ids).
pub fn expand_fleet(scenario: &Scenario, seed: u64) -> Vec<VirtualDeviceSpec> {
    let mut devices = Vec::with_capacity(scenario.n_devices());
    let transports = transport_weights(scenario.run.transport_mix);
    for (cohort_idx, cohort) in scenario.fleet.iter().enumerate() {
        let mut rng = SimRng::for_stream(seed, cohort_idx as u64);
        expand_cohort(cohort_idx, cohort, &transports, &mut rng, &mut devices);
    }
    devices
}

/// One draw from `distribution`. Parameters a validated scenario refuses (a negative `sd`, `min >
/// max`) still give a number, never a panic.
pub fn metric_sample(distribution: &Distribution, rng: &mut SimRng) -> f64 {
    match *distribution {
        Distribution::Normal { mean, sd } => mean + sd * rng.standard_normal(),
        Distribution::Uniform { min, max } => min + (max - min) * rng.next_f64(),
        Distribution::Constant(value) => value,
        Distribution::Lognormal { mu, sigma } => (mu + sigma * rng.standard_normal()).exp(),
    }
}

/// One draw of a simulated duration; negative samples count as zero.
pub fn duration_sample(model: &DurationModel, rng: &mut SimRng) -> Duration {
    match model {
        DurationModel::Fixed(duration) => *duration,
        DurationModel::Seconds(distribution) => {
            let secs = metric_sample(distribution, rng).max(0.0);
            // `as` saturates, so a huge sample cannot overflow.
            Duration::from_millis((secs * 1000.0).round() as i64)
        }
    }
}

/// The delay before a device's next heartbeat: the interval, give or take up to the jitter.
pub fn heartbeat_delay(heartbeat: &Heartbeat, rng: &mut SimRng) -> Duration {
    let jitter_ms = heartbeat.jitter.as_millis().max(0) as u64;
    let offset = rng.below(2 * jitter_ms + 1) as i64 - jitter_ms as i64;
    Duration::from_millis(heartbeat.interval.as_millis() + offset)
}

/// How many events happen when `mean` are expected (a Poisson draw), e.g. crashes in an interval
/// from [`crate::time::expected_events`]. Exact for means up to 30; above, a rounded normal
/// approximation, which is within a fraction of a percent there.
pub fn poisson_sample(mean: f64, rng: &mut SimRng) -> u64 {
    if mean.is_nan() || mean <= 0.0 {
        return 0;
    }
    if mean > 30.0 {
        let sample = mean + mean.sqrt() * rng.standard_normal();
        // `as` saturates, so an infinite mean cannot overflow.
        return sample.round().max(0.0) as u64;
    }
    // Knuth: count uniforms until their product falls below e^-mean.
    let limit = (-mean).exp();
    let mut product = rng.next_f64();
    let mut count = 0;
    while product > limit {
        count += 1;
        product *= rng.next_f64();
    }
    count
}

/// `n` values following `weighted` exactly up to rounding, in random order: each value gets
/// `floor(weight·n)` places and the few places left over go to values drawn in proportion to the
/// remainders.
pub fn allocate<T: Clone>(weighted: &Weighted<T>, n: usize, rng: &mut SimRng) -> Vec<T> {
    let choices = weighted.choices();
    let quotas: Vec<f64> = choices.iter().map(|(_, w)| w * n as f64).collect();
    let mut counts: Vec<usize> = quotas.iter().map(|q| q.floor() as usize).collect();
    let mut remainders: Vec<f64> = quotas.iter().map(|q| q - q.floor()).collect();
    let left_over = n.saturating_sub(counts.iter().sum());
    for _ in 0..left_over {
        let choice_idx = pick_by_weight(&remainders, rng);
        counts[choice_idx] += 1;
        // Each value gets at most one extra place.
        remainders[choice_idx] = 0.0;
    }
    let mut values = Vec::with_capacity(n);
    for ((value, _), count) in choices.iter().zip(counts) {
        values.extend(std::iter::repeat_n(value, count).cloned());
    }
    // Floating-point rounding could in principle give one place too many.
    values.truncate(n);
    rng.shuffle(&mut values);
    values
}

fn expand_cohort(
    cohort_idx: usize,
    cohort: &Cohort,
    transports: &Weighted<Transport>,
    rng: &mut SimRng,
    devices: &mut Vec<VirtualDeviceSpec>,
) {
    let n = cohort.count;
    let mut optional = |weighted: &Option<Weighted<Label>>| -> Vec<Option<Label>> {
        match weighted {
            Some(weighted) => allocate(weighted, n, rng).into_iter().map(Some).collect(),
            None => vec![None; n],
        }
    };
    let hw_revs = optional(&cohort.hw_revs);
    let regions = optional(&cohort.regions);
    let sites = optional(&cohort.sites);
    let tag_columns: Vec<(&TagKey, Vec<TagValue>)> = cohort
        .tags
        .iter()
        .map(|(key, weighted)| (key, allocate(weighted, n, rng)))
        .collect();
    let transports = allocate(transports, n, rng);
    let interval_ms = cohort.heartbeat.interval.as_millis().max(0) as u64;

    for (device_idx, ((hw_rev, region), site)) in
        hw_revs.into_iter().zip(regions).zip(sites).enumerate()
    {
        let number = devices.len();
        let id = DeviceId::parse(&format!("sim-{}-{number:06}", cohort.device_type))
            // A device type is a slug of at most 64 characters, and ids allow 128 of the same ones.
            .expect("a validated device type always makes a valid device id");
        let tags = tag_columns
            .iter()
            .map(|(key, values)| ((*key).clone(), values[device_idx].clone()))
            .collect();
        devices.push(VirtualDeviceSpec {
            id,
            cohort_idx,
            device_type: cohort.device_type.clone(),
            hw_rev,
            region,
            site,
            tags,
            firmware: cohort.firmware.clone(),
            heartbeat: cohort.heartbeat,
            first_heartbeat_after: Duration::from_millis(rng.below(interval_ms) as i64),
            transport: transports[device_idx],
            network: cohort.network.clone(),
            metrics: cohort.metrics.clone(),
            crash_rate_per_hour: cohort.crash_rate_per_hour,
            rng_seed: rng.next_u64(),
        });
    }
}

fn transport_weights(mqtt_share: f64) -> Weighted<Transport> {
    let mqtt_share = mqtt_share.clamp(0.0, 1.0);
    Weighted::new(vec![
        (Transport::Mqtt, mqtt_share),
        (Transport::Http, 1.0 - mqtt_share),
    ])
    // The shares are finite, not negative and sum to 1.
    .unwrap_or_else(|_| Weighted::single(Transport::Http))
}

/// An index drawn in proportion to `weights`; the first positive one if rounding leaves nothing.
fn pick_by_weight(weights: &[f64], rng: &mut SimRng) -> usize {
    let total: f64 = weights.iter().sum();
    let mut target = rng.next_f64() * total;
    for (idx, weight) in weights.iter().enumerate() {
        if *weight > 0.0 && target < *weight {
            return idx;
        }
        target -= weight;
    }
    weights.iter().position(|w| *w > 0.0).unwrap_or(0)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const FLEET: &str = r#"
[run]
transport_mix = 0.3

[[fleet]]
device_type = "sensor"
count = 10000
firmware = "1.0.0"
hw_revs = { "rev-a" = 0.7, "rev-b" = 0.2, "rev-c" = 0.1 }
regions = { "eu" = 1, "us" = 1, "apac" = 1 }
tags = { env = { prod = 0.95, staging = 0.05 } }
heartbeat_interval = "60s"
heartbeat_jitter = "5s"
metrics = { temp_c = { normal = { mean = 20, sd = 2 } } }

[[fleet]]
device_type = "gateway"
count = 7
firmware = "2.0.0"
"#;

    fn counts<T: std::hash::Hash + Eq>(values: impl IntoIterator<Item = T>) -> HashMap<T, usize> {
        let mut counts = HashMap::new();
        for value in values {
            *counts.entry(value).or_default() += 1;
        }
        counts
    }

    fn label(text: &str) -> Option<Label> {
        Some(Label::parse(text).unwrap())
    }

    #[test]
    fn cohorts_expand_to_exactly_their_counts_with_unique_ids() {
        let scenario = Scenario::parse(FLEET).unwrap();
        let devices = expand_fleet(&scenario, 1);
        assert_eq!(devices.len(), 10_007);
        let per_cohort = counts(devices.iter().map(|d| d.cohort_idx));
        assert_eq!(per_cohort[&0], 10_000);
        assert_eq!(per_cohort[&1], 7);
        assert_eq!(counts(devices.iter().map(|d| d.id.clone())).len(), 10_007);
        assert_eq!(devices[0].id.as_str(), "sim-sensor-000000");
        assert_eq!(devices[10_000].id.as_str(), "sim-gateway-010000");
        assert_eq!(devices[10_006].hw_rev, None);
        assert_eq!(devices[10_006].firmware, Version::parse("2.0.0").unwrap());
    }

    #[test]
    fn weighted_attributes_follow_their_weights() {
        let scenario = Scenario::parse(FLEET).unwrap();
        let devices = expand_fleet(&scenario, 99);
        let sensors = &devices[..10_000];
        let share = |n: usize| n as f64 / 10_000.0;
        let within = |actual: f64, expected: f64| (actual - expected).abs() <= 0.01;

        let revs = counts(sensors.iter().map(|d| d.hw_rev.clone()));
        assert!(within(share(revs[&label("rev-a")]), 0.7));
        assert!(within(share(revs[&label("rev-b")]), 0.2));
        assert!(within(share(revs[&label("rev-c")]), 0.1));
        let regions = counts(sensors.iter().map(|d| d.region.clone()));
        for region in ["eu", "us", "apac"] {
            assert!(
                within(share(regions[&label(region)]), 1.0 / 3.0),
                "{region}"
            );
        }
        let env = TagKey::parse("env").unwrap();
        let prod = sensors
            .iter()
            .filter(|d| d.tags[&env].as_str() == "prod")
            .count();
        assert!(within(share(prod), 0.95));
        let mqtt = sensors
            .iter()
            .filter(|d| d.transport == Transport::Mqtt)
            .count();
        assert!(within(share(mqtt), 0.3));
    }

    #[test]
    fn attributes_are_shuffled_rather_than_grouped() {
        let scenario = Scenario::parse(FLEET).unwrap();
        let devices = expand_fleet(&scenario, 3);
        // With rev-a at 70 %, the first 100 devices being all rev-a would mean no shuffle.
        let first = counts(devices[..100].iter().map(|d| d.hw_rev.clone()));
        assert!(first.len() > 1);
        // Hardware revision and region are drawn independently.
        let rev_b_in_eu = devices[..10_000]
            .iter()
            .filter(|d| d.hw_rev == label("rev-b") && d.region == label("eu"))
            .count();
        assert!((rev_b_in_eu as f64 / 10_000.0 - 0.2 / 3.0).abs() < 0.01);
    }

    #[test]
    fn the_same_seed_gives_the_same_fleet_and_another_seed_does_not() {
        let scenario = Scenario::parse(FLEET).unwrap();
        assert_eq!(expand_fleet(&scenario, 42), expand_fleet(&scenario, 42));
        assert_ne!(expand_fleet(&scenario, 42), expand_fleet(&scenario, 43));
    }

    #[test]
    fn a_cohort_is_unchanged_when_a_later_cohort_changes() {
        let before = expand_fleet(&Scenario::parse(FLEET).unwrap(), 5);
        let changed = FLEET.replace("count = 7", "count = 70");
        let after = expand_fleet(&Scenario::parse(&changed).unwrap(), 5);
        assert_eq!(before[..10_000], after[..10_000]);
    }

    #[test]
    fn small_cohorts_get_exact_quotas() {
        let weighted = Weighted::new(vec![("a", 0.7), ("b", 0.3)]).unwrap();
        let mut rng = SimRng::from_seed(0);
        let values = allocate(&weighted, 10, &mut rng);
        assert_eq!(values.iter().filter(|v| **v == "a").count(), 7);
        assert_eq!(values.len(), 10);
        // Three equal weights over two places: two different values, never one twice.
        let thirds = Weighted::new(vec![("a", 1.0), ("b", 1.0), ("c", 1.0)]).unwrap();
        for seed in 0..50 {
            let values = allocate(&thirds, 2, &mut SimRng::from_seed(seed));
            assert_ne!(values[0], values[1]);
        }
        assert!(allocate(&thirds, 0, &mut rng).is_empty());
    }

    #[test]
    fn first_heartbeats_are_spread_over_one_interval() {
        let scenario = Scenario::parse(FLEET).unwrap();
        let devices = expand_fleet(&scenario, 8);
        let offsets: Vec<i64> = devices
            .iter()
            .map(|d| d.first_heartbeat_after.as_millis())
            .collect();
        assert!(offsets.iter().all(|ms| (0..60_000).contains(ms)));
        let early = offsets.iter().filter(|ms| **ms < 30_000).count();
        assert!((early as f64 / offsets.len() as f64 - 0.5).abs() < 0.02);
    }

    #[test]
    fn heartbeat_delays_stay_within_the_jitter() {
        let heartbeat = Heartbeat {
            interval: Duration::from_secs(60),
            jitter: Duration::from_secs(5),
        };
        let mut rng = SimRng::from_seed(11);
        let delays: Vec<i64> = (0..10_000)
            .map(|_| heartbeat_delay(&heartbeat, &mut rng).as_millis())
            .collect();
        assert!(delays.iter().all(|ms| (55_000..=65_000).contains(ms)));
        assert!(delays.iter().any(|ms| *ms < 56_000));
        assert!(delays.iter().any(|ms| *ms > 64_000));
    }

    #[test]
    fn metric_samples_have_the_moments_of_their_distribution() {
        let mut rng = SimRng::from_seed(2024);
        let n = 200_000;
        let mean_and_sd = |distribution: Distribution, rng: &mut SimRng| {
            let samples: Vec<f64> = (0..n).map(|_| metric_sample(&distribution, rng)).collect();
            let mean = samples.iter().sum::<f64>() / n as f64;
            let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
            (mean, var.sqrt(), samples)
        };

        let (mean, sd, _) = mean_and_sd(
            Distribution::Normal {
                mean: 12.0,
                sd: 1.5,
            },
            &mut rng,
        );
        assert!(
            (mean - 12.0).abs() < 0.02 && (sd - 1.5).abs() < 0.02,
            "{mean} {sd}"
        );

        let (mean, _, samples) = mean_and_sd(
            Distribution::Uniform {
                min: -1.0,
                max: 3.0,
            },
            &mut rng,
        );
        assert!((mean - 1.0).abs() < 0.02, "{mean}");
        assert!(samples.iter().all(|x| (-1.0..3.0).contains(x)));

        // The median of a lognormal is e^mu.
        let (_, _, mut samples) = mean_and_sd(
            Distribution::Lognormal {
                mu: 2.0,
                sigma: 0.5,
            },
            &mut rng,
        );
        samples.sort_by(f64::total_cmp);
        let median = samples[n / 2];
        assert!((median / 2.0f64.exp() - 1.0).abs() < 0.02, "{median}");

        assert_eq!(metric_sample(&Distribution::Constant(21.5), &mut rng), 21.5);
    }

    #[test]
    fn duration_samples_are_never_negative() {
        let mut rng = SimRng::from_seed(4);
        let model = DurationModel::Seconds(Distribution::Normal { mean: 1.0, sd: 5.0 });
        for _ in 0..1000 {
            assert!(duration_sample(&model, &mut rng).as_millis() >= 0);
        }
        let fixed = DurationModel::Fixed(Duration::from_secs(90));
        assert_eq!(duration_sample(&fixed, &mut rng), Duration::from_secs(90));
    }

    #[test]
    fn poisson_samples_average_to_their_mean() {
        let mut rng = SimRng::from_seed(9);
        for mean in [0.05, 3.0, 100.0] {
            let n = 100_000;
            let total: u64 = (0..n).map(|_| poisson_sample(mean, &mut rng)).sum();
            let average = total as f64 / n as f64;
            assert!((average / mean - 1.0).abs() < 0.03, "{mean}: {average}");
        }
        assert_eq!(poisson_sample(0.0, &mut rng), 0);
        assert_eq!(poisson_sample(f64::NAN, &mut rng), 0);
    }

    #[test]
    fn the_generator_matches_the_reference_xoshiro256_starstar() {
        // Reference state from the xoshiro authors' test: s = [1, 2, 3, 4].
        let mut rng = SimRng {
            state: [1, 2, 3, 4],
        };
        let first: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(first, [11520, 0, 1509978240]);
        // Streams of one seed differ.
        assert_ne!(
            SimRng::for_stream(1, 0).next_u64(),
            SimRng::for_stream(1, 1).next_u64()
        );
    }
}
