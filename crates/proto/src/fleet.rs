//! The dashboard's fleet views: `GET /api/v1/fleet/overview` (device counts, unfinished rollouts,
//! alerts) and `GET /api/v1/fleet/versions` (firmware distribution, per region, adoption history,
//! warnings). Both are read from maintained rollups, never from a scan of the devices; the rules
//! behind the alerts and warnings are in `docs/fleet-rollups.md`.
//!
//! "Accepted" devices are those in an operating state: `active`, `inactive` or `error`.

use std::collections::BTreeMap;

use drover_core::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::rollouts::{RolloutId, RolloutView};

/// `GET /api/v1/fleet/overview`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetOverview {
    /// When the server computed this view (the counts are exact at that moment).
    #[schema(value_type = String)]
    pub computed_at: Timestamp,
    /// Device counts by status and, for accepted devices, by connectivity.
    pub devices: DeviceCounts,
    /// Rollouts not in a final state (`running` or `paused`), newest first, as
    /// `GET /api/v1/rollouts` shows them.
    pub active_rollouts: Vec<RolloutView>,
    /// What needs an operator's attention, most severe first.
    pub alerts: Vec<FleetAlert>,
}

/// Device counts of the overview.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeviceCounts {
    /// Every device except decommissioned ones.
    pub total: u64,
    /// Devices per status, every status present (zero when none): `pending`, `rejected`,
    /// `provisioning`, `active`, `inactive`, `error`, `decommissioned`.
    pub by_status: BTreeMap<String, u64>,
    /// Accepted devices per connectivity, every state present (zero when none): `unknown`,
    /// `online`, `degraded`, `offline`.
    pub by_connectivity: BTreeMap<String, u64>,
}

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A rollout is paused (by its gates or an operator); critical.
    RolloutPaused,
    /// A rollout's phase waits for an operator's approval; warning.
    RolloutAwaitingApproval,
    /// Too many firmware versions in use (see [`WarningKind::Fragmentation`]); warning.
    Fragmentation,
    /// The newest released version is not being adopted (see [`WarningKind::SlowAdoption`]);
    /// warning.
    SlowAdoption,
    /// More than 10% of accepted devices are offline; warning.
    DevicesOffline,
}

/// One alert of the overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetAlert {
    pub severity: Severity,
    pub kind: AlertKind,
    /// A sentence for people.
    pub message: String,
    /// The rollout it concerns, for rollout alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutId>,
    /// The firmware version it concerns, for version alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `GET /api/v1/fleet/versions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetVersions {
    /// When the server computed this view; also the time of each history's last point.
    #[schema(value_type = String)]
    pub computed_at: Timestamp,
    /// Accepted devices.
    pub total: u64,
    /// Every version running on an accepted device, most devices first.
    pub versions: Vec<VersionShare>,
    /// Accepted devices per region, largest region first.
    pub regions: Vec<RegionVersions>,
    /// Adoption over the requested window of the (at most 8) versions with the most devices at any
    /// point of the window.
    pub history: Vec<VersionHistory>,
    /// Fragmentation and slow adoption, when they apply.
    pub warnings: Vec<FleetWarning>,
}

/// One version's share of the accepted devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VersionShare {
    /// The firmware version; `""` for devices that never reported one.
    pub version: String,
    /// Accepted devices running it.
    pub devices: u64,
    /// `devices / total`, 0.0–1.0.
    pub share: f64,
}

/// One region's accepted devices by version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionVersions {
    /// The region; `""` for devices without one.
    pub region: String,
    /// Accepted devices in the region.
    pub total: u64,
    /// Devices per version (`""`: unknown) in the region.
    pub versions: BTreeMap<String, u64>,
}

/// One version's adoption curve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionHistory {
    /// The firmware version; `""` for unknown.
    pub version: String,
    /// Oldest first: the snapshots in the window (downsampled to at most a few hundred, a version
    /// absent from a snapshot counted as 0), then the current count at `computed_at`.
    pub points: Vec<HistoryPoint>,
}

/// Accepted devices on a version at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPoint {
    #[schema(value_type = String)]
    pub at: Timestamp,
    pub devices: u64,
}

/// What a version warning is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// More than 5 known versions each run on at least 1% of accepted devices.
    Fragmentation,
    /// The newest version a rollout targeted was first rolled out more than 7 days ago and runs on
    /// less than half of the accepted devices.
    SlowAdoption,
}

/// One warning of the versions view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FleetWarning {
    pub kind: WarningKind,
    /// A sentence for people.
    pub message: String,
    /// The version it concerns (slow adoption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}
