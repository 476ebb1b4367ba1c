//! Device health: heartbeat metric names and validation, and the mergeable statistics
//! (`Rollup`, with a relative-error quantile sketch) that cohort analysis and dashboards read.
//!
//! A heartbeat is a set of named numeric metrics. The names Drover knows (uptime, CPU, memory,
//! battery, temperature, radio, application and update counters) have documented units; any other
//! well-formed name is kept as a custom metric, so firmware teams can add metrics without a server
//! release. Rollups aggregate one metric of one cohort over one time bucket and merge exactly
//! (count, sum, sum of squares, min, max) or within a bounded relative error (quantiles), so
//! buckets can be combined into any window without the raw samples.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::time::{Duration, Timestamp};

/// The name of a heartbeat metric: 1–64 characters from `[a-z0-9_]`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MetricName(String);

/// Why a heartbeat or metric was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HealthError {
    #[error(
        "invalid metric name {0:?}: use 1-64 characters from [a-z0-9_], starting with a letter"
    )]
    InvalidName(String),
    #[error("metric {name} is not a finite number")]
    NotFinite { name: String },
    #[error("metric {name} = {value} is outside its valid range {min}..={max} {unit}")]
    OutOfRange {
        name: String,
        value: f64,
        min: f64,
        max: f64,
        unit: &'static str,
    },
    #[error("a heartbeat may carry at most {max} metrics, this one has {count}")]
    TooManyMetrics { count: usize, max: usize },
    #[error("sent_at {sent_at} is {ahead} ahead of the server clock (at most {max} is tolerated)")]
    FromTheFuture {
        sent_at: Timestamp,
        ahead: Duration,
        max: Duration,
    },
    #[error("sent_at {sent_at} is older than {max}; buffered heartbeats that old are dropped")]
    TooOld { sent_at: Timestamp, max: Duration },
}

impl HealthError {
    /// A stable machine-readable code (for HTTP error bodies and MQTT `rejected` messages).
    pub fn code(&self) -> &'static str {
        match self {
            HealthError::InvalidName(_) => "invalid_metric_name",
            HealthError::NotFinite { .. } => "invalid_metric_value",
            HealthError::OutOfRange { .. } => "invalid_metric_value",
            HealthError::TooManyMetrics { .. } => "too_many_metrics",
            HealthError::FromTheFuture { .. } => "timestamp_in_future",
            HealthError::TooOld { .. } => "timestamp_too_old",
        }
    }
}

impl MetricName {
    pub fn parse(text: &str) -> Result<MetricName, HealthError> {
        let valid = !text.is_empty()
            && text.len() <= 64
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(MetricName(text.to_owned()))
        } else {
            Err(HealthError::InvalidName(text.chars().take(80).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The documented definition, for metrics Drover knows.
    pub fn known(&self) -> Option<&'static KnownMetric> {
        KNOWN_METRICS.iter().find(|m| m.name == self.0)
    }
}

impl fmt::Display for MetricName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for MetricName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MetricName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        MetricName::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What a known metric means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnownMetric {
    pub name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    /// Values outside this range are physically impossible and rejected as corrupt.
    pub min: f64,
    pub max: f64,
}

const fn metric(
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    min: f64,
    max: f64,
) -> KnownMetric {
    KnownMetric {
        name,
        unit,
        description,
        min,
        max,
    }
}

/// Metrics with a defined meaning. Devices may send others; those are kept as custom metrics.
pub const KNOWN_METRICS: &[KnownMetric] = &[
    // Operational.
    metric("uptime_s", "s", "time since the last boot", 0.0, 1e10),
    metric("cpu_pct", "%", "CPU utilisation", 0.0, 100.0),
    metric("mem_free_bytes", "bytes", "free memory", 0.0, 1e13),
    metric("mem_total_bytes", "bytes", "total memory", 0.0, 1e13),
    metric("battery_v", "V", "battery voltage", 0.0, 1000.0),
    metric(
        "battery_ma",
        "mA",
        "battery current (positive when discharging)",
        -1e6,
        1e6,
    ),
    metric("temp_c", "°C", "device temperature", -273.15, 1000.0),
    metric("rssi_dbm", "dBm", "received signal strength", -200.0, 50.0),
    metric("snr_db", "dB", "signal-to-noise ratio", -100.0, 100.0),
    metric("packet_loss_pct", "%", "packet loss", 0.0, 100.0),
    metric(
        "latency_ms",
        "ms",
        "round-trip latency to the server",
        0.0,
        1e7,
    ),
    metric(
        "reconnects",
        "count",
        "reconnections to the server since the last heartbeat",
        0.0,
        1e9,
    ),
    // Application.
    metric("sensor_rate_hz", "Hz", "sensor sample rate", 0.0, 1e9),
    metric(
        "actuator_ok",
        "count",
        "successful actuator operations since the last heartbeat",
        0.0,
        1e12,
    ),
    metric(
        "actuator_failed",
        "count",
        "failed actuator operations since the last heartbeat",
        0.0,
        1e12,
    ),
    metric(
        "queue_depth",
        "messages",
        "messages waiting to be sent",
        0.0,
        1e12,
    ),
    metric(
        "last_sync_age_s",
        "s",
        "time since the last successful cloud sync",
        0.0,
        1e10,
    ),
    metric(
        "crashes",
        "count",
        "application crashes since the last heartbeat (the canary gate's crash rate)",
        0.0,
        1e9,
    ),
    // Update.
    metric(
        "rollback_count",
        "count",
        "boots that fell back to the previous image",
        0.0,
        1e9,
    ),
];

/// Limits on a heartbeat.
#[derive(Debug, Clone, Copy)]
pub struct HeartbeatLimits {
    pub max_metrics: usize,
    /// Clock skew tolerated for a device's `sent_at`.
    pub max_future: Duration,
    /// Buffered heartbeats older than this are rejected.
    pub max_age: Duration,
}

impl Default for HeartbeatLimits {
    fn default() -> Self {
        HeartbeatLimits {
            max_metrics: 64,
            max_future: Duration::from_secs(300),
            max_age: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Checks a heartbeat's metrics and device timestamp against `limits` at `now`.
pub fn validate_heartbeat(
    metrics: &BTreeMap<MetricName, f64>,
    sent_at: Option<Timestamp>,
    now: Timestamp,
    limits: &HeartbeatLimits,
) -> Result<(), HealthError> {
    if metrics.len() > limits.max_metrics {
        return Err(HealthError::TooManyMetrics {
            count: metrics.len(),
            max: limits.max_metrics,
        });
    }
    for (name, value) in metrics {
        if !value.is_finite() {
            return Err(HealthError::NotFinite {
                name: name.to_string(),
            });
        }
        if let Some(known) = name.known() {
            if *value < known.min || *value > known.max {
                return Err(HealthError::OutOfRange {
                    name: name.to_string(),
                    value: *value,
                    min: known.min,
                    max: known.max,
                    unit: known.unit,
                });
            }
        }
    }
    if let Some(sent_at) = sent_at {
        let ahead = sent_at.as_millis() - now.as_millis();
        if ahead > limits.max_future.as_millis() {
            return Err(HealthError::FromTheFuture {
                sent_at,
                ahead: Duration::from_millis(ahead),
                max: limits.max_future,
            });
        }
        if -ahead > limits.max_age.as_millis() {
            return Err(HealthError::TooOld {
                sent_at,
                max: limits.max_age,
            });
        }
    }
    Ok(())
}

/// The start of the `width`-long time bucket holding `at` (buckets are aligned to the epoch).
pub fn bucket_start(at: Timestamp, width: Duration) -> Timestamp {
    let width = width.as_millis().max(1);
    Timestamp::from_millis(at.as_millis() - at.as_millis().rem_euclid(width))
}

/// Exact moments and a quantile sketch of one metric over one cohort and time bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup {
    pub count: u64,
    pub sum: f64,
    pub sum_sq: f64,
    pub min: f64,
    pub max: f64,
    pub sketch: QuantileSketch,
}

impl Default for Rollup {
    fn default() -> Self {
        Rollup {
            count: 0,
            sum: 0.0,
            sum_sq: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sketch: QuantileSketch::new(),
        }
    }
}

impl Rollup {
    pub fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.sum_sq += value * value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sketch.add(value);
    }

    pub fn merge(&mut self, other: &Rollup) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sketch.merge(&other.sketch);
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// Sample variance (n − 1 denominator); `None` below two samples.
    pub fn variance(&self) -> Option<f64> {
        (self.count > 1).then(|| {
            let n = self.count as f64;
            ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
        })
    }
}

/// A DDSketch-style quantile sketch: every quantile it returns is within 1 % (relative) of a value
/// that is truly at that rank. Values fall into logarithmically sized buckets, so two sketches merge
/// by adding bucket counts, and size grows with the logarithm of the value range, not the count.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QuantileSketch {
    positive: BTreeMap<i32, u64>,
    negative: BTreeMap<i32, u64>,
    zeros: u64,
}

/// Relative accuracy of [`QuantileSketch`].
pub const SKETCH_ACCURACY: f64 = 0.01;
/// Values closer to zero than this count as zero (keeps the bucket range bounded).
const SKETCH_MIN_MAGNITUDE: f64 = 1e-9;
/// Most buckets per sign; beyond it the two lowest-magnitude buckets merge (accuracy degrades
/// only for values far below the bulk of the distribution).
const SKETCH_MAX_BUCKETS: usize = 2048;

fn gamma() -> f64 {
    (1.0 + SKETCH_ACCURACY) / (1.0 - SKETCH_ACCURACY)
}

impl QuantileSketch {
    pub fn new() -> QuantileSketch {
        QuantileSketch::default()
    }

    pub fn count(&self) -> u64 {
        self.zeros + self.positive.values().sum::<u64>() + self.negative.values().sum::<u64>()
    }

    pub fn add(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        let magnitude = value.abs();
        if magnitude < SKETCH_MIN_MAGNITUDE {
            self.zeros += 1;
            return;
        }
        let index = (magnitude.ln() / gamma().ln()).ceil() as i32;
        let store = if value > 0.0 {
            &mut self.positive
        } else {
            &mut self.negative
        };
        *store.entry(index).or_default() += 1;
        collapse(store);
    }

    pub fn merge(&mut self, other: &QuantileSketch) {
        self.zeros += other.zeros;
        for (index, n) in &other.positive {
            *self.positive.entry(*index).or_default() += n;
        }
        for (index, n) in &other.negative {
            *self.negative.entry(*index).or_default() += n;
        }
        collapse(&mut self.positive);
        collapse(&mut self.negative);
    }

    /// The value at quantile `q` (0.0–1.0), or `None` for an empty sketch.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * (total - 1) as f64).round() as u64;
        let mut seen = 0u64;
        let estimate = |index: i32| 2.0 * gamma().powi(index) / (gamma() + 1.0);
        for (index, n) in self.negative.iter().rev() {
            seen += n;
            if seen > rank {
                return Some(-estimate(*index));
            }
        }
        seen += self.zeros;
        if seen > rank {
            return Some(0.0);
        }
        for (index, n) in &self.positive {
            seen += n;
            if seen > rank {
                return Some(estimate(*index));
            }
        }
        None
    }

    /// Compact binary form for storage: a version byte, then the zero count and each sign's
    /// buckets as LEB128 varints (indexes zig-zag encoded).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![1u8];
        put_varint(&mut out, self.zeros);
        for store in [&self.positive, &self.negative] {
            put_varint(&mut out, store.len() as u64);
            for (index, n) in store {
                put_varint(&mut out, zigzag(*index));
                put_varint(&mut out, *n);
            }
        }
        out
    }

    /// Reads [`QuantileSketch::to_bytes`]; `None` if the bytes are not a sketch.
    pub fn from_bytes(bytes: &[u8]) -> Option<QuantileSketch> {
        let (&version, mut rest) = bytes.split_first()?;
        if version != 1 {
            return None;
        }
        let mut sketch = QuantileSketch {
            zeros: take_varint(&mut rest)?,
            ..QuantileSketch::default()
        };
        for sign in 0..2 {
            let n = take_varint(&mut rest)?;
            if n > SKETCH_MAX_BUCKETS as u64 * 2 {
                return None;
            }
            for _ in 0..n {
                let index = unzigzag(take_varint(&mut rest)?)?;
                let count = take_varint(&mut rest)?;
                let store = if sign == 0 {
                    &mut sketch.positive
                } else {
                    &mut sketch.negative
                };
                *store.entry(index).or_default() += count;
            }
        }
        rest.is_empty().then_some(sketch)
    }
}

fn collapse(store: &mut BTreeMap<i32, u64>) {
    while store.len() > SKETCH_MAX_BUCKETS {
        let (lowest, n) = store.pop_first().expect("non-empty");
        let next = store.keys().next().copied().unwrap_or(lowest + 1);
        *store.entry(next).or_default() += n;
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn zigzag(value: i32) -> u64 {
    ((value << 1) ^ (value >> 31)) as u32 as u64
}

fn unzigzag(value: u64) -> Option<i32> {
    let value = u32::try_from(value).ok()?;
    Some(((value >> 1) as i32) ^ -((value & 1) as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> MetricName {
        MetricName::parse(n).unwrap()
    }

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);

    #[test]
    fn metric_names_are_lowercase_snake_case() {
        for ok in ["battery_v", "x", "custom_metric_2"] {
            assert!(MetricName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Battery", "2x", "a-b", "a.b", &"a".repeat(65)] {
            assert!(MetricName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(name("temp_c").known().unwrap().unit, "°C");
        assert!(name("my_custom").known().is_none());
    }

    #[test]
    fn heartbeats_with_impossible_values_or_timestamps_are_rejected() {
        let limits = HeartbeatLimits::default();
        let ok: BTreeMap<_, _> = [
            (name("battery_v"), 3.7),
            (name("rssi_dbm"), -71.0),
            (name("custom"), 1e30),
        ]
        .into();
        assert_eq!(validate_heartbeat(&ok, Some(NOW), NOW, &limits), Ok(()));
        let cases: Vec<(BTreeMap<MetricName, f64>, Option<Timestamp>, &str)> = vec![
            (
                [(name("cpu_pct"), 140.0)].into(),
                None,
                "invalid_metric_value",
            ),
            (
                [(name("custom"), f64::NAN)].into(),
                None,
                "invalid_metric_value",
            ),
            (
                (0..65).map(|i| (name(&format!("m{i}")), 1.0)).collect(),
                None,
                "too_many_metrics",
            ),
            (
                BTreeMap::new(),
                Some(NOW.saturating_add(Duration::from_secs(3600))),
                "timestamp_in_future",
            ),
            (
                BTreeMap::new(),
                Some(NOW.saturating_add(Duration::from_secs(-8 * 86_400))),
                "timestamp_too_old",
            ),
        ];
        for (metrics, sent_at, code) in cases {
            let err = validate_heartbeat(&metrics, sent_at, NOW, &limits).unwrap_err();
            assert_eq!(err.code(), code, "{err}");
        }
        let err =
            validate_heartbeat(&[(name("cpu_pct"), 140.0)].into(), None, NOW, &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "metric cpu_pct = 140 is outside its valid range 0..=100 %"
        );
    }

    #[test]
    fn buckets_align_to_the_epoch() {
        let minute = Duration::from_secs(60);
        assert_eq!(
            bucket_start(Timestamp::from_millis(125_000), minute),
            Timestamp::from_millis(120_000)
        );
        assert_eq!(
            bucket_start(Timestamp::from_millis(-1), minute),
            Timestamp::from_millis(-60_000)
        );
    }

    #[test]
    fn rollups_merge_to_the_same_moments_as_one_pass() {
        let values: Vec<f64> = (0..1000)
            .map(|i| (i as f64 * 0.37).sin() * 50.0 + 20.0)
            .collect();
        let mut whole = Rollup::default();
        let (mut left, mut right) = (Rollup::default(), Rollup::default());
        for (idx, v) in values.iter().enumerate() {
            whole.add(*v);
            if idx % 3 == 0 {
                left.add(*v)
            } else {
                right.add(*v)
            }
        }
        left.merge(&right);
        assert_eq!(left.count, whole.count);
        assert!((left.sum - whole.sum).abs() < 1e-9);
        assert_eq!((left.min, left.max), (whole.min, whole.max));
        assert_eq!(left.sketch, whole.sketch);
        let mean = values.iter().sum::<f64>() / 1000.0;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 999.0;
        assert!((whole.mean().unwrap() - mean).abs() < 1e-9);
        assert!((whole.variance().unwrap() - variance).abs() < 1e-6);
    }

    #[test]
    fn sketch_quantiles_are_within_one_percent_including_negative_values() {
        let mut values: Vec<f64> = (1..=10_000).map(|i| i as f64 * 1.5 - 3000.0).collect();
        let mut sketch = QuantileSketch::new();
        for v in &values {
            sketch.add(*v);
        }
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for q in [0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0] {
            let exact = values[(q * (values.len() - 1) as f64).round() as usize];
            let estimate = sketch.quantile(q).unwrap();
            let tolerance = exact.abs() * SKETCH_ACCURACY + 1e-9;
            assert!(
                (estimate - exact).abs() <= tolerance,
                "q{q}: {estimate} vs {exact}"
            );
        }
        assert_eq!(QuantileSketch::new().quantile(0.5), None);
    }

    #[test]
    fn sketches_round_trip_through_bytes_and_reject_garbage() {
        let mut sketch = QuantileSketch::new();
        for v in [-5.0, 0.0, 0.5, 3.7, 3.7, 1e6] {
            sketch.add(v);
        }
        let bytes = sketch.to_bytes();
        assert_eq!(QuantileSketch::from_bytes(&bytes), Some(sketch));
        assert_eq!(QuantileSketch::from_bytes(&[]), None);
        assert_eq!(QuantileSketch::from_bytes(&[2, 0, 0, 0]), None);
        assert_eq!(QuantileSketch::from_bytes(&[1, 0, 5]), None);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(QuantileSketch::from_bytes(&trailing), None);
    }
}
