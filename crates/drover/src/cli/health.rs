//! `drover health rollups`: how one heartbeat metric behaves per firmware version over time, from
//! the server's per-cohort rollups (count, mean, standard deviation, extremes, percentiles).

use clap::{Args, Subcommand};
use drover_core::health::MetricName;
use drover_core::{Duration, Timestamp, Version};
use drover_proto::devices::{CohortRollupView, CohortRollups};

use crate::cli::client::{decode, param, Client, Params};
use crate::cli::output::{self, emit, print_json, Table};
use crate::cli::CliError;

/// `drover health` subcommands.
#[derive(Debug, Subcommand)]
pub enum HealthCommand {
    /// Statistics of one metric per firmware version and time bucket.
    Rollups(RollupsArgs),
}

/// `drover health rollups`.
#[derive(Debug, Args)]
pub struct RollupsArgs {
    /// Metric name, e.g. mem_free_bytes, battery_v or a custom metric.
    #[arg(long, value_parser = MetricName::parse)]
    pub metric: MetricName,
    /// Only this firmware version; every version with readings when absent.
    #[arg(long)]
    pub firmware: Option<Version>,
    /// Start of the window: a duration back from now (6h, 7d) or an RFC 3339 time; the server's
    /// default (24h) when absent. At most 31 days.
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<Since>,
    /// Merge the server's buckets (one minute) into wider ones, e.g. 1h.
    #[arg(long, value_name = "DURATION", value_parser = Duration::parse)]
    pub bucket: Option<Duration>,
}

/// Where a window starts: relative to now or at a fixed time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(Duration),
    At(Timestamp),
}

impl Since {
    /// The start time, for a window ending `now`.
    pub fn resolve(self, now: Timestamp) -> Timestamp {
        match self {
            Since::Ago(duration) => now.saturating_add(duration.neg()),
            Since::At(at) => at,
        }
    }
}

/// Parses `--since`: a duration (`6h`) or, when it does not look like one, an RFC 3339 time.
pub fn parse_since(text: &str) -> Result<Since, String> {
    match Duration::parse(text) {
        Ok(duration) => Ok(Since::Ago(duration)),
        Err(_) => Timestamp::parse_rfc3339(text)
            .map(Since::At)
            .map_err(|_| {
                format!("expected a duration such as 6h or 7d, or an RFC 3339 time such as 2026-11-23T10:00:00Z, not {text:?}")
            }),
    }
}

/// Runs a `drover health` subcommand.
pub async fn run(client: &Client, json: bool, command: HealthCommand) -> Result<(), CliError> {
    match command {
        HealthCommand::Rollups(args) => rollups(client, json, args).await,
    }
}

async fn rollups(client: &Client, json: bool, args: RollupsArgs) -> Result<(), CliError> {
    let mut params = Params::from([("metric", args.metric.to_string())]);
    param(&mut params, "firmware", args.firmware.as_ref());
    param(
        &mut params,
        "from",
        args.since
            .map(|since| since.resolve(output::now()).to_rfc3339()),
    );
    param(&mut params, "bucket", args.bucket);
    let value = client.get(&["health", "rollups"], &params).await?;
    if json {
        return print_json(&value);
    }
    let cohorts = match decode::<CohortRollups>(value)? {
        CohortRollups::One(cohort) => vec![cohort],
        CohortRollups::All(cohorts) => cohorts,
    };
    if cohorts.iter().all(|cohort| cohort.buckets.is_empty()) {
        let cohort = match &args.firmware {
            Some(firmware) => format!(" from firmware {firmware}"),
            None => String::new(),
        };
        eprintln!("no {} readings{cohort} in the window", args.metric);
        return Ok(());
    }
    emit(&rollups_table(&cohorts))
}

/// The rollups table: one row per firmware version and bucket, values in the metric's unit.
pub fn rollups_table(cohorts: &[CohortRollupView]) -> String {
    let mut table = Table::new(&[
        "FIRMWARE", "BUCKET", "COUNT", "MEAN", "STDDEV", "MIN", "P50", "P95", "P99", "MAX",
    ]);
    for cohort in cohorts {
        let firmware = if cohort.firmware.is_empty() {
            "unknown".to_owned()
        } else {
            cohort.firmware.clone()
        };
        for bucket in &cohort.buckets {
            table.row(vec![
                firmware.clone(),
                output::time(bucket.bucket),
                bucket.count.to_string(),
                number(bucket.mean),
                bucket.stddev.map_or_else(|| "-".to_owned(), number),
                number(bucket.min),
                number(bucket.p50),
                number(bucket.p95),
                number(bucket.p99),
                number(bucket.max),
            ]);
        }
    }
    table.render()
}

/// A reading with at most three decimals and no trailing zeros: `3.71`, `1048576`, `1290.994`.
fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use drover_proto::devices::RollupBucketView;

    use super::*;

    #[test]
    fn since_is_a_duration_back_from_now_or_a_time() {
        let now = Timestamp::from_millis(1_800_000_000_000);
        assert_eq!(
            parse_since("6h").unwrap().resolve(now),
            Timestamp::from_millis(1_800_000_000_000 - 6 * 3_600_000)
        );
        let at = parse_since("2026-11-23T10:00:00Z").unwrap();
        assert_eq!(at.resolve(now).to_rfc3339(), "2026-11-23T10:00:00.000Z");
        assert!(parse_since("yesterday").unwrap_err().contains("6h or 7d"));
    }

    #[test]
    fn rollups_table_has_a_row_per_firmware_and_bucket() {
        let bucket = |minute: i64, count: u64, mean: f64, stddev: Option<f64>| RollupBucketView {
            bucket: Timestamp::from_millis(1_700_000_000_000 + minute * 60_000),
            count,
            mean,
            stddev,
            min: 1000.0,
            max: 4000.0,
            p50: 2000.0,
            p95: 3960.5,
            p99: 4000.0,
        };
        let metric = MetricName::parse("mem_free_bytes").unwrap();
        let cohorts = [
            CohortRollupView {
                firmware: String::new(),
                metric: metric.clone(),
                bucket_seconds: 60,
                buckets: vec![bucket(0, 1, 1000.0, None)],
            },
            CohortRollupView {
                firmware: "1.0.0".into(),
                metric,
                bucket_seconds: 60,
                buckets: vec![bucket(0, 4, 2500.0, Some(1290.99444))],
            },
        ];
        assert_eq!(
            rollups_table(&cohorts),
            "FIRMWARE  BUCKET                COUNT  MEAN  STDDEV    MIN   P50   P95     P99   MAX\n\
             unknown   2023-11-14T22:13:20Z  1      1000  -         1000  2000  3960.5  4000  4000\n\
             1.0.0     2023-11-14T22:13:20Z  4      2500  1290.994  1000  2000  3960.5  4000  4000\n"
        );
        assert_eq!(number(-0.0001), "0");
        assert_eq!(number(3.71), "3.71");
    }
}
