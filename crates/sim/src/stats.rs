//! What the simulated fleet is doing, counted lock-free by the virtual devices and read by the
//! progress line and the summary.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use drover_core::Version;
use serde::Serialize;

/// Counters shared by every virtual device.
#[derive(Debug, Default)]
pub struct Stats {
    pub devices: AtomicU64,
    pub provisioned: AtomicU64,
    /// Devices whose last heartbeat was stored (gauge).
    pub online: AtomicI64,
    /// Devices with an update in progress (gauge).
    pub updating: AtomicI64,
    pub heartbeats: AtomicU64,
    pub heartbeats_dropped: AtomicU64,
    pub shadow_deltas: AtomicU64,
    pub shadow_reports: AtomicU64,
    pub updates_started: AtomicU64,
    pub updates_succeeded: AtomicU64,
    pub updates_rolled_back: AtomicU64,
    pub updates_failed: AtomicU64,
    /// Boots of a new image that did not come up (the bootloader fell back).
    pub boot_failures: AtomicU64,
    /// Post-boot health checks that failed (the agent rolled back).
    pub health_failures: AtomicU64,
    pub bricked: AtomicU64,
    pub bytes_downloaded: AtomicU64,
    pub reconnects: AtomicU64,
    /// Failed exchanges with the server (each retried).
    pub errors: AtomicU64,
    /// Devices stopped for good (revoked credential, refused provisioning).
    pub stopped: AtomicU64,
    versions: Mutex<BTreeMap<Version, i64>>,
    last_errors: Mutex<Vec<String>>,
}

/// Most distinct error messages kept for the summary.
const KEPT_ERRORS: usize = 8;

impl Stats {
    /// A device now runs `to` instead of `from`.
    pub fn firmware_changed(&self, from: Option<&Version>, to: &Version) {
        let mut versions = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(from) = from {
            if let Some(n) = versions.get_mut(from) {
                *n -= 1;
                if *n <= 0 {
                    versions.remove(from);
                }
            }
        }
        *versions.entry(to.clone()).or_default() += 1;
    }

    /// Counts a failed exchange and keeps its message (the distinct few) for the summary.
    pub fn error(&self, message: impl Into<String>) {
        self.errors.fetch_add(1, Relaxed);
        let message = message.into();
        let mut kept = self.last_errors.lock().unwrap_or_else(|e| e.into_inner());
        if !kept.contains(&message) {
            if kept.len() >= KEPT_ERRORS {
                kept.remove(0);
            }
            kept.push(message);
        }
    }

    /// Everything now.
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Relaxed);
        Snapshot {
            devices: get(&self.devices),
            provisioned: get(&self.provisioned),
            online: self.online.load(Relaxed).max(0) as u64,
            updating: self.updating.load(Relaxed).max(0) as u64,
            heartbeats: get(&self.heartbeats),
            heartbeats_dropped: get(&self.heartbeats_dropped),
            shadow_deltas: get(&self.shadow_deltas),
            shadow_reports: get(&self.shadow_reports),
            updates_started: get(&self.updates_started),
            updates_succeeded: get(&self.updates_succeeded),
            updates_rolled_back: get(&self.updates_rolled_back),
            updates_failed: get(&self.updates_failed),
            boot_failures: get(&self.boot_failures),
            health_failures: get(&self.health_failures),
            bricked: get(&self.bricked),
            bytes_downloaded: get(&self.bytes_downloaded),
            reconnects: get(&self.reconnects),
            errors: get(&self.errors),
            stopped: get(&self.stopped),
            versions: self
                .versions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(v, n)| (v.to_string(), (*n).max(0) as u64))
                .collect(),
            recent_errors: self
                .last_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// The counters at one moment (also the `--json` summary's `fleet` object).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    pub devices: u64,
    pub provisioned: u64,
    pub online: u64,
    pub updating: u64,
    pub heartbeats: u64,
    pub heartbeats_dropped: u64,
    pub shadow_deltas: u64,
    pub shadow_reports: u64,
    pub updates_started: u64,
    pub updates_succeeded: u64,
    pub updates_rolled_back: u64,
    pub updates_failed: u64,
    pub boot_failures: u64,
    pub health_failures: u64,
    pub bricked: u64,
    pub bytes_downloaded: u64,
    pub reconnects: u64,
    pub errors: u64,
    pub stopped: u64,
    /// Devices per running firmware version.
    pub versions: BTreeMap<String, u64>,
    /// The last few distinct error messages.
    pub recent_errors: Vec<String>,
}

impl Snapshot {
    /// The live progress line: devices online, versions, updates, errors, heartbeat rate since
    /// `previous` over `secs`.
    pub fn progress_line(&self, previous: &Snapshot, secs: f64, elapsed: f64) -> String {
        let versions: Vec<String> = self
            .versions
            .iter()
            .map(|(v, n)| format!("{v}: {n}"))
            .collect();
        let rate = (self.heartbeats.saturating_sub(previous.heartbeats)) as f64 / secs.max(1e-3);
        format!(
            "[{:>6.0}s] online {}/{} · {} · updating {} (done {}, rolled back {}, failed {}) · heartbeats {} ({:.0}/s) · reconnects {} · errors {}",
            elapsed,
            self.online,
            self.devices,
            if versions.is_empty() { "no versions yet".to_owned() } else { versions.join(", ") },
            self.updating,
            self.updates_succeeded,
            self.updates_rolled_back,
            self.updates_failed,
            self.heartbeats,
            rate,
            self.reconnects,
            self.errors,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_move_with_the_devices_and_errors_are_kept_distinct() {
        let stats = Stats::default();
        let v1 = Version::parse("1.0.0").unwrap();
        let v2 = Version::parse("2.0.0").unwrap();
        stats.firmware_changed(None, &v1);
        stats.firmware_changed(None, &v1);
        stats.firmware_changed(Some(&v1), &v2);
        stats.firmware_changed(Some(&v2), &v1);
        stats.firmware_changed(Some(&v1), &v2);
        stats.firmware_changed(Some(&v1), &v2);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.versions.get("2.0.0"), Some(&2));
        assert_eq!(snapshot.versions.get("1.0.0"), None);
        for n in 0..20 {
            stats.error(format!("error {}", n % 10));
            stats.error("same");
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.errors, 40);
        assert_eq!(snapshot.recent_errors.len(), KEPT_ERRORS);
    }
}
