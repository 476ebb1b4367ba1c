//! `/api/v1/fleet`: the dashboard's overview (device counts, unfinished rollouts, alerts) and
//! firmware-version views (distribution, per region, adoption history, warnings).
//!
//! Both read the store's maintained fleet rollups (`drover_store::Store::fleet_counts`), a few
//! hundred rows whatever the fleet size, never the devices table. The alert and warning rules are
//! pure functions at the bottom of this module; `docs/fleet-rollups.md` states them for operators.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use drover_core::{Connectivity, DeviceStatus, Duration, Timestamp, Version};
use drover_proto::auth::Role;
use drover_proto::fleet::{
    AlertKind, DeviceCounts, FleetAlert, FleetOverview, FleetVersions, FleetWarning, HistoryPoint,
    RegionVersions, Severity, VersionHistory, VersionShare, WarningKind,
};
use drover_proto::rollouts::RolloutView;
use drover_store::{FleetCount, ACCEPTED_STATUSES};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;
use crate::extract::{ApiQuery, Operator};
use crate::{now, AppState};

/// Device counts, unfinished rollouts and what needs attention.
#[utoipa::path(get, operation_id = "fleet_overview", path = "/api/v1/fleet/overview", tag = "fleet",
    responses((status = 200, body = FleetOverview), (status = 401, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn overview(
    State(state): State<AppState>,
    auth: Operator,
) -> Result<Json<FleetOverview>, ApiError> {
    auth.require(Role::Viewer)?;
    let computed_at = now();
    let counts = state.store.fleet_counts().await?;
    let active_rollouts = state.store.unfinished_rollouts().await?;
    let rollout_versions = state.store.rollout_versions().await?;
    let devices = device_counts(&counts);
    let accepted = accepted_by_version(&counts);
    let warnings = version_warnings(&accepted, &rollout_versions, computed_at);
    let alerts = overview_alerts(&devices, &active_rollouts, &warnings);
    Ok(Json(FleetOverview {
        computed_at,
        devices,
        active_rollouts,
        alerts,
    }))
}

/// Parameters of the versions view.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VersionsParams {
    /// How far back the adoption history goes: `1h`, `24h`, `7d` (default), `30d` or `90d`.
    pub window: Option<String>,
}

/// The windows the history can be read over.
const WINDOWS: [(&str, i64); 5] = [
    ("1h", 3_600),
    ("24h", 86_400),
    ("7d", 7 * 86_400),
    ("30d", 30 * 86_400),
    ("90d", 90 * 86_400),
];

/// Versions with a history curve: those with the most devices at any point of the window.
const HISTORY_VERSIONS: usize = 8;

/// Most points of one history curve (snapshots are downsampled to this).
const HISTORY_POINTS: usize = 300;

/// Firmware distribution of the accepted devices, per region, adoption history and warnings.
#[utoipa::path(get, operation_id = "fleet_versions", path = "/api/v1/fleet/versions", tag = "fleet",
    params(VersionsParams),
    responses((status = 200, body = FleetVersions), (status = 400, body = drover_proto::error::ErrorBody),
        (status = 401, body = drover_proto::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn versions(
    State(state): State<AppState>,
    auth: Operator,
    ApiQuery(params): ApiQuery<VersionsParams>,
) -> Result<Json<FleetVersions>, ApiError> {
    auth.require(Role::Viewer)?;
    let window = parse_window(params.window.as_deref())?;
    let computed_at = now();
    let counts = state.store.fleet_counts().await?;
    let rollout_versions = state.store.rollout_versions().await?;
    let accepted = accepted_by_version(&counts);
    let total: u64 = accepted.values().sum();

    let mut versions: Vec<VersionShare> = accepted
        .iter()
        .map(|(version, devices)| VersionShare {
            version: version.clone(),
            devices: *devices,
            share: share(*devices, total),
        })
        .collect();
    versions.sort_by(|a, b| b.devices.cmp(&a.devices).then(a.version.cmp(&b.version)));

    let mut regions: BTreeMap<&str, RegionVersions> = BTreeMap::new();
    for count in counts.iter().filter(|c| is_accepted(c)) {
        let region = regions
            .entry(&count.region)
            .or_insert_with(|| RegionVersions {
                region: count.region.clone(),
                total: 0,
                versions: BTreeMap::new(),
            });
        region.total += count.devices;
        *region.versions.entry(count.firmware.clone()).or_insert(0) += count.devices;
    }
    let mut regions: Vec<RegionVersions> = regions.into_values().collect();
    regions.sort_by(|a, b| b.total.cmp(&a.total).then(a.region.cmp(&b.region)));

    let since = computed_at.saturating_add(window.neg());
    let snapshots = state
        .store
        .version_history(since, computed_at, Vec::new(), HISTORY_POINTS)
        .await?;
    let top = history_versions(&accepted, &snapshots);
    let history = top
        .iter()
        .map(|version| {
            let mut points: Vec<HistoryPoint> = snapshots
                .iter()
                .map(|snapshot| HistoryPoint {
                    at: snapshot.at,
                    devices: snapshot.versions.get(version).copied().unwrap_or(0),
                })
                .collect();
            points.push(HistoryPoint {
                at: computed_at,
                devices: accepted.get(version).copied().unwrap_or(0),
            });
            VersionHistory {
                version: version.clone(),
                points,
            }
        })
        .collect();

    let warnings = version_warnings(&accepted, &rollout_versions, computed_at);
    Ok(Json(FleetVersions {
        computed_at,
        total,
        versions,
        regions,
        history,
        warnings,
    }))
}

/// The versions that get a curve: the [`HISTORY_VERSIONS`] with the most devices at any point of
/// the window (now included), so a version the fleet just left keeps its falling curve.
fn history_versions(
    accepted: &BTreeMap<String, u64>,
    snapshots: &[drover_store::VersionSnapshot],
) -> Vec<String> {
    let mut peak: BTreeMap<&str, u64> = BTreeMap::new();
    let now = accepted.iter().map(|(v, n)| (v.as_str(), *n));
    let past = snapshots
        .iter()
        .flat_map(|s| s.versions.iter().map(|(v, n)| (v.as_str(), *n)));
    for (version, devices) in now.chain(past) {
        let entry = peak.entry(version).or_insert(0);
        *entry = (*entry).max(devices);
    }
    let mut ranked: Vec<(&str, u64)> = peak.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(HISTORY_VERSIONS)
        .map(|(version, _)| version.to_owned())
        .collect()
}

fn parse_window(text: Option<&str>) -> Result<Duration, ApiError> {
    let text = text.unwrap_or("7d");
    WINDOWS
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, secs)| Duration::from_secs(*secs))
        .ok_or_else(|| {
            let names: Vec<&str> = WINDOWS.iter().map(|(name, _)| *name).collect();
            ApiError::bad_request(format!(
                "window {text:?} is not one of {}",
                names.join(", ")
            ))
        })
}

// ---- the rules (pure) --------------------------------------------------------------------------

/// A version is in fragmenting use when it runs on at least this share of accepted devices.
const FRAGMENT_MIN_SHARE: f64 = 0.01;
/// More known versions in fragmenting use than this is fragmentation.
const FRAGMENT_MAX_VERSIONS: usize = 5;
/// The newest rolled-out version is slow to adopt when, this long after its first rollout, …
const SLOW_ADOPTION_AFTER: Duration = Duration::from_secs(7 * 86_400);
/// … it runs on less than this share of accepted devices.
const SLOW_ADOPTION_BELOW: f64 = 0.5;
/// More than this share of accepted devices offline is an alert.
const OFFLINE_ALERT_SHARE: f64 = 0.1;

fn is_accepted(count: &FleetCount) -> bool {
    ACCEPTED_STATUSES.contains(&count.status.as_str())
}

fn share(devices: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        devices as f64 / total as f64
    }
}

/// Accepted devices per firmware version (`""`: unknown).
fn accepted_by_version(counts: &[FleetCount]) -> BTreeMap<String, u64> {
    let mut versions = BTreeMap::new();
    for count in counts.iter().filter(|c| is_accepted(c)) {
        *versions.entry(count.firmware.clone()).or_insert(0) += count.devices;
    }
    versions.retain(|_, n| *n > 0);
    versions
}

/// Devices per status (every status, zero-filled) and accepted devices per connectivity.
fn device_counts(counts: &[FleetCount]) -> DeviceCounts {
    let mut by_status: BTreeMap<String, u64> = DeviceStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    let mut by_connectivity: BTreeMap<String, u64> = Connectivity::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), 0))
        .collect();
    for count in counts {
        *by_status.entry(count.status.clone()).or_insert(0) += count.devices;
        if is_accepted(count) {
            *by_connectivity
                .entry(count.connectivity.clone())
                .or_insert(0) += count.devices;
        }
    }
    let total = by_status
        .iter()
        .filter(|(status, _)| status.as_str() != DeviceStatus::Decommissioned.as_str())
        .map(|(_, n)| n)
        .sum();
    DeviceCounts {
        total,
        by_status,
        by_connectivity,
    }
}

/// Fragmentation and slow adoption of the accepted devices' versions. `rollout_versions` are the
/// versions rollouts (not aborted or rolled back) targeted, with their first rollout's creation.
fn version_warnings(
    accepted: &BTreeMap<String, u64>,
    rollout_versions: &[(String, Timestamp)],
    now: Timestamp,
) -> Vec<FleetWarning> {
    let total: u64 = accepted.values().sum();
    let mut warnings = Vec::new();
    if total == 0 {
        return warnings;
    }
    let in_use = accepted
        .iter()
        .filter(|(version, n)| !version.is_empty() && share(**n, total) >= FRAGMENT_MIN_SHARE)
        .count();
    if in_use > FRAGMENT_MAX_VERSIONS {
        warnings.push(FleetWarning {
            kind: WarningKind::Fragmentation,
            message: format!(
                "{in_use} firmware versions each run on at least {:.0}% of accepted devices (more than {FRAGMENT_MAX_VERSIONS})",
                FRAGMENT_MIN_SHARE * 100.0
            ),
            version: None,
        });
    }
    let newest = rollout_versions
        .iter()
        .filter_map(|(text, created)| Version::parse(text).ok().map(|v| (v, text, *created)))
        .max_by(|a, b| a.0.cmp(&b.0));
    if let Some((_, version, first_rollout)) = newest {
        let devices = accepted.get(version).copied().unwrap_or(0);
        let adopted = share(devices, total);
        let out_for = now.as_millis() - first_rollout.as_millis();
        if out_for > SLOW_ADOPTION_AFTER.as_millis() && adopted < SLOW_ADOPTION_BELOW {
            warnings.push(FleetWarning {
                kind: WarningKind::SlowAdoption,
                message: format!(
                    "{version} was first rolled out {} days ago and runs on {:.1}% of accepted devices (less than {:.0}%)",
                    out_for / 86_400_000,
                    adopted * 100.0,
                    SLOW_ADOPTION_BELOW * 100.0
                ),
                version: Some(version.clone()),
            });
        }
    }
    warnings
}

/// The overview's alerts, most severe first: paused rollouts, rollouts waiting for approval,
/// version warnings, and too many accepted devices offline.
fn overview_alerts(
    devices: &DeviceCounts,
    rollouts: &[RolloutView],
    warnings: &[FleetWarning],
) -> Vec<FleetAlert> {
    let mut alerts = Vec::new();
    for rollout in rollouts {
        if rollout.status == "paused" {
            let reason = rollout
                .reason
                .as_deref()
                .map_or(String::new(), |r| format!(": {r}"));
            alerts.push(FleetAlert {
                severity: Severity::Critical,
                kind: AlertKind::RolloutPaused,
                message: format!("rollout {:?} is paused{reason}", rollout.name),
                rollout: Some(rollout.id),
                version: Some(rollout.version.clone()),
            });
        } else if rollout
            .waiting_for
            .as_deref()
            .is_some_and(|w| w.starts_with("approval"))
        {
            alerts.push(FleetAlert {
                severity: Severity::Warning,
                kind: AlertKind::RolloutAwaitingApproval,
                message: format!(
                    "rollout {:?} waits for {}",
                    rollout.name,
                    rollout.waiting_for.as_deref().unwrap_or("approval")
                ),
                rollout: Some(rollout.id),
                version: Some(rollout.version.clone()),
            });
        }
    }
    for warning in warnings {
        alerts.push(FleetAlert {
            severity: Severity::Warning,
            kind: match warning.kind {
                WarningKind::Fragmentation => AlertKind::Fragmentation,
                WarningKind::SlowAdoption => AlertKind::SlowAdoption,
            },
            message: warning.message.clone(),
            rollout: None,
            version: warning.version.clone(),
        });
    }
    let accepted: u64 = devices.by_connectivity.values().sum();
    let offline = devices
        .by_connectivity
        .get(Connectivity::Offline.as_str())
        .copied()
        .unwrap_or(0);
    if share(offline, accepted) > OFFLINE_ALERT_SHARE {
        alerts.push(FleetAlert {
            severity: Severity::Warning,
            kind: AlertKind::DevicesOffline,
            message: format!(
                "{offline} of {accepted} accepted devices ({:.1}%) are offline",
                share(offline, accepted) * 100.0
            ),
            rollout: None,
            version: None,
        });
    }
    alerts.sort_by_key(|a| a.severity);
    alerts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(status: &str, connectivity: &str, firmware: &str, devices: u64) -> FleetCount {
        FleetCount {
            status: status.into(),
            connectivity: connectivity.into(),
            firmware: firmware.into(),
            region: String::new(),
            devices,
        }
    }

    fn versions(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(v, n)| ((*v).to_owned(), *n)).collect()
    }

    const DAY: i64 = 86_400_000;
    const NOW: Timestamp = Timestamp::from_millis(100 * DAY);

    #[test]
    fn device_counts_are_zero_filled_and_connectivity_counts_only_accepted_devices() {
        let counts = device_counts(&[
            count("active", "online", "1.0.0", 5),
            count("error", "offline", "1.0.0", 2),
            count("pending", "unknown", "", 3),
            count("decommissioned", "offline", "1.0.0", 4),
        ]);
        assert_eq!(counts.total, 10);
        assert_eq!(counts.by_status.len(), DeviceStatus::ALL.len());
        assert_eq!(counts.by_status["decommissioned"], 4);
        assert_eq!(counts.by_status["rejected"], 0);
        assert_eq!(
            counts.by_connectivity,
            versions(&[
                ("unknown", 0),
                ("online", 5),
                ("degraded", 0),
                ("offline", 2)
            ])
        );
    }

    #[test]
    fn fragmentation_counts_known_versions_on_at_least_one_percent() {
        let six = versions(&[
            ("1", 10),
            ("2", 10),
            ("3", 10),
            ("4", 10),
            ("5", 10),
            ("6", 10),
        ]);
        let kinds = |v: &BTreeMap<String, u64>| -> Vec<WarningKind> {
            version_warnings(v, &[], NOW)
                .iter()
                .map(|w| w.kind)
                .collect()
        };
        assert_eq!(kinds(&six), vec![WarningKind::Fragmentation]);
        let mut five_and_unknown = six.clone();
        five_and_unknown.remove("6");
        five_and_unknown.insert(String::new(), 10);
        assert_eq!(kinds(&five_and_unknown), vec![], "unknown is not a version");
        let mut tiny = six.clone();
        tiny.insert("6".into(), 1);
        tiny.insert("0".into(), 10_000);
        assert_eq!(kinds(&tiny), vec![], "under 1% does not count");
    }

    #[test]
    fn slow_adoption_looks_at_the_newest_rolled_out_version_after_a_week() {
        let fleet = versions(&[("1.9.0", 70), ("2.0.0", 30)]);
        let rolled = |at_days: i64| {
            vec![
                ("1.9.0".to_owned(), Timestamp::from_millis(10 * DAY)),
                ("2.0.0".to_owned(), Timestamp::from_millis(at_days * DAY)),
                ("not-semver".to_owned(), Timestamp::from_millis(0)),
            ]
        };
        let warnings = version_warnings(&fleet, &rolled(90), NOW);
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].kind, WarningKind::SlowAdoption);
        assert_eq!(warnings[0].version.as_deref(), Some("2.0.0"));
        assert!(
            version_warnings(&fleet, &rolled(95), NOW).is_empty(),
            "out for only 5 days"
        );
        let adopted = versions(&[("1.9.0", 40), ("2.0.0", 60)]);
        assert!(version_warnings(&adopted, &rolled(90), NOW).is_empty());
    }

    #[test]
    fn offline_alert_fires_above_ten_percent() {
        let devices = |online, offline| {
            device_counts(&[
                count("active", "online", "1", online),
                count("active", "offline", "1", offline),
            ])
        };
        assert!(overview_alerts(&devices(90, 10), &[], &[]).is_empty());
        let alerts = overview_alerts(&devices(89, 11), &[], &[]);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, AlertKind::DevicesOffline);
    }

    #[test]
    fn windows_are_validated() {
        assert_eq!(parse_window(None).unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(
            parse_window(Some("1h")).unwrap(),
            Duration::from_secs(3_600)
        );
        assert!(parse_window(Some("2h")).is_err());
    }
}
