//! The device's health readings: Linux sources (`/proc`, `/sys`), the agent's own memory, static
//! metrics from the configuration and an optional command hook. A source that is missing or
//! unreadable is simply left out; the parsers are pure functions over the files' text.
//!
//! Later sources override earlier ones with the same name: system readings, then
//! `static_metrics`, then the command's output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_core::health::MetricName;

use crate::process::RunOptions;

/// How long the metrics command may run before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The server's limit on metrics per heartbeat.
pub const MAX_METRICS: usize = 64;
/// The agent's own resident memory, a custom metric.
pub const RSS_METRIC: &str = "agent_rss_bytes";

/// Cumulative CPU time from the first line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// Takes readings; remembers the previous CPU times so `cpu_pct` covers the last interval.
#[derive(Debug)]
pub struct Collector {
    static_metrics: BTreeMap<MetricName, f64>,
    command: Option<PathBuf>,
    previous_cpu: Option<CpuTimes>,
}

impl Collector {
    pub fn new(static_metrics: BTreeMap<MetricName, f64>, command: Option<PathBuf>) -> Collector {
        Collector {
            static_metrics,
            command,
            previous_cpu: None,
        }
    }

    /// One reading of every available source.
    pub fn collect(&mut self) -> BTreeMap<MetricName, f64> {
        let mut metrics = BTreeMap::new();
        let mut put = |name: &str, value: Option<f64>| {
            if let (Ok(name), Some(value)) = (MetricName::parse(name), value) {
                metrics.insert(name, value);
            }
        };
        put(
            "uptime_s",
            read("/proc/uptime").and_then(|t| parse_uptime(&t)),
        );
        if let Some(cpu) = read("/proc/stat").and_then(|t| parse_cpu_times(&t)) {
            put(
                "cpu_pct",
                self.previous_cpu.and_then(|prev| cpu_pct(prev, cpu)),
            );
            self.previous_cpu = Some(cpu);
        }
        if let Some(memory) = read("/proc/meminfo").map(|t| parse_meminfo(&t)) {
            put("mem_free_bytes", memory.available);
            put("mem_total_bytes", memory.total);
        }
        put(
            "temp_c",
            read("/sys/class/thermal/thermal_zone0/temp").and_then(|t| parse_millidegrees(&t)),
        );
        put(
            RSS_METRIC,
            read("/proc/self/status").and_then(|t| parse_vm_rss(&t)),
        );
        metrics.extend(self.static_metrics.clone());
        if let Some(command) = &self.command {
            match run_command(command, COMMAND_TIMEOUT) {
                Ok(output) => {
                    let (parsed, problems) = parse_command_output(&output);
                    for problem in problems {
                        warn!("metrics command {}: {problem}", command.display());
                    }
                    metrics.extend(parsed);
                }
                Err(e) => warn!("metrics command {}: {e}", command.display()),
            }
        }
        // Keep the heartbeat acceptable: the server refuses more than 64 metrics (as a whole).
        while metrics.len() > MAX_METRICS - 1 {
            metrics.pop_last();
        }
        metrics
    }
}

/// Checks a value against the documented range of a known metric, so one bad reading cannot make
/// the server refuse the whole heartbeat.
pub fn check_value(name: &MetricName, value: f64) -> Result<(), String> {
    if !value.is_finite() {
        return Err(format!("{name} = {value} is not a finite number"));
    }
    match name.known() {
        Some(known) if value < known.min || value > known.max => Err(format!(
            "{name} = {value} is outside its valid range {}..={} {}",
            known.min, known.max, known.unit
        )),
        _ => Ok(()),
    }
}

/// Seconds since boot: the first number of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The aggregate `cpu` line of `/proc/stat`: idle time is `idle + iowait`.
pub fn parse_cpu_times(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 4 {
        return None;
    }
    // guest and guest_nice (fields 9, 10) are already counted in user and nice.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total - idle,
        total,
    })
}

/// CPU utilisation between two readings, or `None` when no time passed.
pub fn cpu_pct(previous: CpuTimes, current: CpuTimes) -> Option<f64> {
    let total = current.total.checked_sub(previous.total)?;
    let busy = current.busy.checked_sub(previous.busy)?;
    (total > 0).then(|| (busy as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
}

/// `MemAvailable` and `MemTotal` of `/proc/meminfo`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Memory {
    pub available: Option<f64>,
    pub total: Option<f64>,
}

pub fn parse_meminfo(text: &str) -> Memory {
    let mut memory = Memory::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("MemAvailable:") {
            memory.available = parse_kb(rest);
        } else if let Some(rest) = line.strip_prefix("MemTotal:") {
            memory.total = parse_kb(rest);
        }
    }
    memory
}

/// `VmRSS` of `/proc/self/status`, in bytes.
pub fn parse_vm_rss(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(parse_kb)
}

/// A thermal zone's temperature, written in millidegrees Celsius.
pub fn parse_millidegrees(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().map(|m| m / 1000.0)
}

/// `name=value` lines; blank lines and `#` comments are skipped, anything else malformed is
/// reported and skipped.
pub fn parse_command_output(text: &str) -> (BTreeMap<MetricName, f64>, Vec<String>) {
    let mut metrics = BTreeMap::new();
    let mut problems = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line
            .split_once('=')
            .ok_or_else(|| format!("line {line:?} is not name=value"))
            .and_then(|(name, value)| {
                let name = MetricName::parse(name.trim()).map_err(|e| e.to_string())?;
                let value: f64 = value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}: {:?} is not a number", value.trim()))?;
                check_value(&name, value)?;
                Ok((name, value))
            });
        match parsed {
            Ok((name, value)) => {
                metrics.insert(name, value);
            }
            Err(problem) => problems.push(problem),
        }
    }
    (metrics, problems)
}

/// Runs the command and returns its stdout; kills it after `timeout`.
fn run_command(command: &Path, timeout: Duration) -> Result<String, String> {
    let options = RunOptions {
        timeout,
        ..RunOptions::default()
    };
    let finished = crate::process::run(command, &options).map_err(|e| e.to_string())?;
    if !finished.status.success() {
        return Err(format!("exited with {}", finished.status));
    }
    Ok(finished.stdout)
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn parse_kb(text: &str) -> Option<f64> {
    let kb: f64 = text.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_into_metric_values() {
        assert_eq!(parse_uptime("12345.67 23456.78\n"), Some(12345.67));
        let meminfo =
            "MemTotal:        8000000 kB\nMemFree:   100 kB\nMemAvailable:    2000000 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Memory {
                available: Some(2_048_000_000.0),
                total: Some(8_192_000_000.0)
            }
        );
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t    4096 kB\n"),
            Some(4_194_304.0)
        );
        assert_eq!(parse_millidegrees("47500\n"), Some(47.5));
        assert_eq!(parse_uptime(""), None);
    }

    #[test]
    fn cpu_percentage_is_the_busy_share_between_two_readings() {
        let before = parse_cpu_times("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n").unwrap();
        let after = parse_cpu_times("cpu  200 0 200 1300 300 0 0 0 0 0\n").unwrap();
        assert_eq!(
            before,
            CpuTimes {
                busy: 200,
                total: 1000
            }
        );
        assert_eq!(cpu_pct(before, after), Some(20.0));
        assert_eq!(cpu_pct(after, after), None, "no time passed");
    }

    #[test]
    fn command_output_keeps_good_lines_and_reports_bad_ones() {
        let (metrics, problems) = parse_command_output(
            "# from the battery gauge\nbattery_v=3.71\n\nqueue_depth = 4\nBad=1\nrssi_dbm=loud\ncpu_pct=250\nnoequals\n",
        );
        let names: Vec<&str> = metrics.keys().map(MetricName::as_str).collect();
        assert_eq!(names, ["battery_v", "queue_depth"]);
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn the_collector_reads_linux_sources_static_metrics_and_the_hook() {
        let dir = std::env::temp_dir().join(format!("drover-agent-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hook = dir.join("metrics.sh");
        std::fs::write(&hook, "#!/bin/sh\necho battery_v=3.9\necho rssi_dbm=-60\n").unwrap();
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut static_metrics = BTreeMap::new();
        static_metrics.insert(MetricName::parse("battery_v").unwrap(), 3.7);
        let mut collector = Collector::new(static_metrics, Some(hook));
        collector.collect();
        let metrics = collector.collect();
        let get = |name: &str| metrics.get(&MetricName::parse(name).unwrap()).copied();
        assert_eq!(
            get("battery_v"),
            Some(3.9),
            "the hook overrides static metrics"
        );
        assert_eq!(get("rssi_dbm"), Some(-60.0));
        if Path::new("/proc/uptime").exists() {
            assert!(get("uptime_s").unwrap() > 0.0);
            assert!(get("mem_total_bytes").unwrap() > 0.0);
            assert!(get(RSS_METRIC).unwrap() > 0.0);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
