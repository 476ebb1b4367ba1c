//! `/api/v1/health`: fleet health across devices, read from the per-cohort rollups heartbeat
//! ingest keeps (firmware version × metric × time bucket). One device's latest health is
//! `/api/v1/devices/{id}/health`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use drover_core::health::{bucket_start, MetricName, Rollup};
use drover_core::{Duration, Timestamp, Version};
use drover_proto::auth::Role;
use drover_proto::devices::{CohortRollupView, CohortRollups, RollupBucketView};
use drover_store::CohortRollup;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{ApiQuery, Operator};
use crate::{now, AppState};

/// The window read when the request names neither end.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The longest window one request may read: a month of one-minute buckets is about 45,000 stored
/// rows per firmware version, all read and merged in memory (a wider `bucket` shortens the answer,
/// not the reading).
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * 86_400);

/// Query parameters of the rollups endpoint.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RollupParams {
    /// Metric name, e.g. `mem_free_bytes`: a known metric or a custom one the devices send.
    pub metric: String,
    /// Firmware version (the cohort). When absent, every version with rollups of the metric in the
    /// window, as a list.
    pub firmware: Option<String>,
    /// RFC 3339; buckets starting at or after this time. Default: 24 hours before `to`.
    pub from: Option<String>,
    /// RFC 3339; buckets starting before this time. Default: now. At most 31 days after `from`.
    pub to: Option<String>,
    /// Merge the stored buckets into wider ones, e.g. `1h`: a multiple of the server's rollup
    /// bucket (which is the default, one minute unless configured otherwise).
    pub bucket: Option<String>,
}

/// Statistics of one heartbeat metric per firmware version and time bucket: count, mean, standard
/// deviation, min, max and the 50th, 95th and 99th percentiles.
#[utoipa::path(get, operation_id = "health_rollups", path = "/api/v1/health/rollups", tag = "health", params(RollupParams),
    responses((status = 200, body = CohortRollups), (status = 400, body = drover_proto::error::ErrorBody)), security(("bearer" = [])))]
pub async fn rollups(
    State(state): State<AppState>,
    auth: Operator,
    ApiQuery(params): ApiQuery<RollupParams>,
) -> Result<Json<CohortRollups>, ApiError> {
    auth.require(Role::Viewer)?;
    let request = RollupRequest::parse(&params, now(), state.config.ingest.options.bucket)?;
    let metric = request.metric.as_str();
    let answer = match &request.firmware {
        Some(firmware) => {
            // The cohort key is the normalised version text, as ingest writes it.
            let firmware = firmware.to_string();
            let rows = state
                .store
                .cohort_rollups(&firmware, metric, request.from, request.to)
                .await?;
            CohortRollups::One(cohort_view(firmware, &request, &rows)?)
        }
        None => {
            let rows = state
                .store
                .metric_rollups(metric, request.from, request.to)
                .await?;
            CohortRollups::All(all_cohorts(&request, rows)?)
        }
    };
    Ok(Json(answer))
}

/// A validated rollups request.
#[derive(Debug, Clone, PartialEq)]
struct RollupRequest {
    metric: MetricName,
    firmware: Option<Version>,
    from: Timestamp,
    to: Timestamp,
    /// Width of the answer's buckets, a multiple of the stored width.
    bucket: Duration,
}

impl RollupRequest {
    /// Checks the parameters against the clock (`now`, for the default window) and the width of
    /// the stored buckets.
    fn parse(
        params: &RollupParams,
        now: Timestamp,
        stored_bucket: Duration,
    ) -> Result<RollupRequest, ApiError> {
        let metric = MetricName::parse(&params.metric)
            .map_err(|e| ApiError::bad_request(format!("metric: {e}")))?;
        let firmware = params
            .firmware
            .as_deref()
            .map(|text| {
                Version::parse(text).map_err(|e| ApiError::bad_request(format!("firmware: {e}")))
            })
            .transpose()?;
        let time = |name: &str, text: &Option<String>| {
            text.as_deref()
                .map(|t| {
                    Timestamp::parse_rfc3339(t)
                        .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))
                })
                .transpose()
        };
        let to = time("to", &params.to)?.unwrap_or(now);
        let from =
            time("from", &params.from)?.unwrap_or_else(|| to.saturating_add(DEFAULT_WINDOW.neg()));
        if from >= to {
            return Err(ApiError::bad_request(format!(
                "from ({from}) must be before to ({to})"
            )));
        }
        let window = Duration::from_millis(to.as_millis().saturating_sub(from.as_millis()));
        if window > MAX_WINDOW {
            return Err(ApiError::bad_request(format!(
                "the window from {from} to {to} is longer than {MAX_WINDOW}; read a longer period in several requests"
            )));
        }
        let bucket = match params.bucket.as_deref() {
            None => stored_bucket,
            Some(text) => {
                let bucket = Duration::parse(text)
                    .map_err(|e| ApiError::bad_request(format!("bucket: {e}")))?;
                let stored = stored_bucket.as_millis().max(1);
                if bucket.as_millis() <= 0
                    || bucket.as_millis() % stored != 0
                    || bucket > MAX_WINDOW
                {
                    return Err(ApiError::bad_request(format!(
                        "bucket must be a multiple of the server's rollup bucket ({stored_bucket}) and at most {MAX_WINDOW}, not {text}"
                    )));
                }
                bucket
            }
        };
        Ok(RollupRequest {
            metric,
            firmware,
            from,
            to,
            bucket,
        })
    }
}

/// One cohort's answer: `rows` (stored buckets, any order) merged into the requested width.
fn cohort_view(
    firmware: String,
    request: &RollupRequest,
    rows: &[CohortRollup],
) -> Result<CohortRollupView, ApiError> {
    let mut merged: BTreeMap<Timestamp, Rollup> = BTreeMap::new();
    for row in rows.iter().filter(|row| row.rollup.count > 0) {
        merged
            .entry(bucket_start(row.bucket, request.bucket))
            .or_default()
            .merge(&row.rollup);
    }
    let buckets = merged
        .into_iter()
        .map(|(bucket, rollup)| {
            bucket_view(bucket, &rollup).ok_or_else(|| {
                ApiError::internal(format!(
                    "rollup {firmware}/{}/{bucket} counts {} readings but its sketch is empty",
                    request.metric, rollup.count
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(CohortRollupView {
        firmware,
        metric: request.metric.clone(),
        bucket_seconds: (request.bucket.as_millis() / 1000) as u64,
        buckets,
    })
}

/// Every cohort in `rows`, in version order (firmware text that is not a version, such as the
/// empty cohort of devices that never reported one, first).
fn all_cohorts(
    request: &RollupRequest,
    rows: Vec<CohortRollup>,
) -> Result<Vec<CohortRollupView>, ApiError> {
    let mut cohorts: BTreeMap<(Option<Version>, String), Vec<CohortRollup>> = BTreeMap::new();
    for row in rows {
        let key = (Version::parse(&row.firmware).ok(), row.firmware.clone());
        cohorts.entry(key).or_default().push(row);
    }
    let mut views = Vec::with_capacity(cohorts.len());
    for ((_, firmware), rows) in cohorts {
        let view = cohort_view(firmware, request, &rows)?;
        if !view.buckets.is_empty() {
            views.push(view);
        }
    }
    Ok(views)
}

/// The statistics of one bucket; `None` if the sketch holds no readings although the count does
/// (stored data out of step, which never happens when ingest writes both in one transaction).
fn bucket_view(bucket: Timestamp, rollup: &Rollup) -> Option<RollupBucketView> {
    // A sketch estimate may stray up to 1 % past the exact extremes; the extremes are known.
    let quantile = |q: f64| {
        rollup
            .sketch
            .quantile(q)
            .map(|v| v.clamp(rollup.min, rollup.max))
    };
    // The moments come from floating-point sums, whose rounding can put the mean a hair outside
    // the extremes and give identical readings a tiny spread; the extremes are exact.
    let stddev = if rollup.min == rollup.max {
        (rollup.count > 1).then_some(0.0)
    } else {
        rollup.variance().map(f64::sqrt)
    };
    Some(RollupBucketView {
        bucket,
        count: rollup.count,
        mean: rollup.mean()?.clamp(rollup.min, rollup.max),
        stddev,
        min: rollup.min,
        max: rollup.max,
        p50: quantile(0.5)?,
        p95: quantile(0.95)?,
        p99: quantile(0.99)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_millis(1_800_000_000_000);
    const MINUTE: Duration = Duration::from_secs(60);

    fn params(pairs: &[(&str, &str)]) -> RollupParams {
        let mut params = RollupParams {
            metric: "mem_free_bytes".into(),
            firmware: None,
            from: None,
            to: None,
            bucket: None,
        };
        for (name, value) in pairs {
            let slot = match *name {
                "metric" => {
                    params.metric = value.to_string();
                    continue;
                }
                "firmware" => &mut params.firmware,
                "from" => &mut params.from,
                "to" => &mut params.to,
                "bucket" => &mut params.bucket,
                other => panic!("no parameter {other}"),
            };
            *slot = Some(value.to_string());
        }
        params
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<RollupRequest, String> {
        RollupRequest::parse(&params(pairs), NOW, MINUTE).map_err(|e| e.message)
    }

    #[test]
    fn the_default_window_is_the_last_day_in_stored_buckets() {
        let request = parse(&[("firmware", "v2.3")]).unwrap();
        assert_eq!(request.firmware.unwrap().to_string(), "2.3.0");
        assert_eq!(
            (request.from, request.to),
            (NOW.saturating_add(DEFAULT_WINDOW.neg()), NOW)
        );
        assert_eq!(request.bucket, MINUTE);
        let request = parse(&[("to", "2026-01-02T00:00:00Z")]).unwrap();
        assert_eq!(request.from.to_rfc3339(), "2026-01-01T00:00:00.000Z");
    }

    #[test]
    fn bad_parameters_are_refused_with_what_is_wrong() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("metric", "Mem-Free")], "metric: invalid metric name"),
            (&[("firmware", "latest")], "firmware: invalid version"),
            (&[("from", "yesterday")], "from: invalid timestamp"),
            (
                &[
                    ("from", "2026-01-02T00:00:00Z"),
                    ("to", "2026-01-02T00:00:00Z"),
                ],
                "must be before to",
            ),
            (
                &[
                    ("from", "2026-01-01T00:00:00Z"),
                    ("to", "2026-02-01T00:00:01Z"),
                ],
                "longer than 31d",
            ),
            (
                &[("bucket", "90s")],
                "multiple of the server's rollup bucket (1m)",
            ),
            (
                &[("bucket", "0s")],
                "multiple of the server's rollup bucket",
            ),
            (&[("bucket", "5w")], "at most 31d"),
            (&[("bucket", "soon")], "bucket: invalid duration"),
        ];
        for (pairs, expected) in cases {
            let message = parse(pairs).unwrap_err();
            assert!(message.contains(expected), "{pairs:?}: {message}");
        }
        assert!(parse(&[
            ("from", "2026-01-01T00:00:00Z"),
            ("to", "2026-02-01T00:00:00Z")
        ])
        .is_ok());
    }

    #[test]
    fn stored_buckets_merge_into_wider_ones_with_exact_moments_and_clamped_quantiles() {
        let request = parse(&[("bucket", "1h")]).unwrap();
        let hour = 3_600_000;
        let row = |minute: i64, values: &[f64]| {
            let mut rollup = Rollup::default();
            for v in values {
                rollup.add(*v);
            }
            CohortRollup {
                firmware: "1.0.0".into(),
                metric: "mem_free_bytes".into(),
                bucket: Timestamp::from_millis(10 * hour + minute * 60_000),
                rollup,
            }
        };
        let rows = [row(0, &[100.0, 300.0]), row(59, &[200.0]), row(60, &[7.0])];
        let view = cohort_view("1.0.0".into(), &request, &rows).unwrap();
        assert_eq!(view.bucket_seconds, 3600);
        assert_eq!(view.buckets.len(), 2);
        let first = &view.buckets[0];
        assert_eq!(first.bucket, Timestamp::from_millis(10 * hour));
        assert_eq!(
            (first.count, first.mean, first.min, first.max),
            (3, 200.0, 100.0, 300.0)
        );
        assert!((first.stddev.unwrap() - 100.0).abs() < 1e-9);
        assert!((first.p50 - 200.0).abs() <= 2.0, "{}", first.p50);
        assert!(first.p99 <= 300.0);
        let second = &view.buckets[1];
        assert_eq!(
            (second.count, second.stddev, second.p50, second.p99),
            (1, None, 7.0, 7.0)
        );
    }

    #[test]
    fn identical_readings_have_no_spread_and_their_own_mean() {
        let mut rollup = Rollup::default();
        for _ in 0..3 {
            rollup.add(3.71);
        }
        // The raw moments say otherwise: 3.709999999999999 and a spread of about 6e-8.
        assert_ne!(rollup.mean(), Some(3.71));
        let view = bucket_view(Timestamp::from_millis(0), &rollup).unwrap();
        assert_eq!((view.mean, view.stddev, view.p50), (3.71, Some(0.0), 3.71));
    }

    #[test]
    fn cohorts_are_listed_in_version_order() {
        let request = parse(&[]).unwrap();
        let row = |firmware: &str| {
            let mut rollup = Rollup::default();
            rollup.add(1.0);
            CohortRollup {
                firmware: firmware.into(),
                metric: "mem_free_bytes".into(),
                bucket: Timestamp::from_millis(0),
                rollup,
            }
        };
        let rows = ["1.10.0", "1.9.0", "", "1.10.0-rc.1"].map(row).to_vec();
        let order: Vec<String> = all_cohorts(&request, rows)
            .unwrap()
            .into_iter()
            .map(|view| view.firmware)
            .collect();
        assert_eq!(order, ["", "1.9.0", "1.10.0-rc.1", "1.10.0"]);
    }
}
