//! Device registry bodies: the device view, create / patch / import rows, bulk update.

use std::collections::BTreeMap;

use drover_core::health::MetricName;
use drover_core::{
    Connectivity, Device, DeviceId, DeviceStatus, DeviceType, HardwareId, Label, TagKey, TagValue,
    Timestamp, Version,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A device as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    #[schema(value_type = String, example = "thermo-0001")]
    pub id: DeviceId,
    #[schema(value_type = String, example = "thermostat")]
    pub device_type: DeviceType,
    #[schema(value_type = Option<String>)]
    pub hw_id: Option<HardwareId>,
    #[schema(value_type = Option<String>)]
    pub hw_rev: Option<Label>,
    #[schema(value_type = Option<String>)]
    pub site: Option<Label>,
    #[schema(value_type = Option<String>)]
    pub region: Option<Label>,
    #[schema(value_type = String, example = "active")]
    pub status: DeviceStatus,
    #[schema(value_type = Option<String>, example = "2.3.1")]
    pub firmware: Option<Version>,
    #[schema(value_type = BTreeMap<String, String>)]
    pub tags: BTreeMap<TagKey, TagValue>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<Timestamp>,
    /// `unknown` until the first heartbeat, then `online`, `degraded` (poor link) or `offline`
    /// (no heartbeat within three of the device's announced intervals).
    #[serde(default)]
    #[schema(value_type = String, example = "online")]
    pub connectivity: Connectivity,
    /// Link quality of the latest heartbeat, 0 (unusable) to 100 (perfect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_score: Option<u8>,
}

impl From<Device> for DeviceView {
    fn from(d: Device) -> Self {
        DeviceView {
            id: d.id,
            device_type: d.device_type,
            hw_id: d.hw_id,
            hw_rev: d.hw_rev,
            site: d.site,
            region: d.region,
            status: d.status,
            firmware: d.firmware,
            tags: d.tags,
            created_at: d.created_at,
            updated_at: d.updated_at,
            last_seen: d.last_seen,
            connectivity: d.connectivity,
            link_score: d.link_score,
        }
    }
}

/// Registers a device (`POST /api/v1/devices`), also one row of a bulk import.
///
/// Without `status`, a device with a hardware id is pre-authorised (`provisioning`): it fetches its
/// credential from `/api/device/v1/provision` by presenting that hardware id (and `preauth_secret`,
/// when one is set here). With `issue_credential`, the credential is returned in the response
/// instead, for devices configured by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    /// Generated (`dev-` + 16 hex digits) when absent.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub id: Option<DeviceId>,
    #[schema(value_type = String)]
    pub device_type: DeviceType,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub hw_id: Option<HardwareId>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub hw_rev: Option<Label>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub site: Option<Label>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub region: Option<Label>,
    /// `provisioning` (default), `active` or `inactive`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub status: Option<DeviceStatus>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub firmware: Option<Version>,
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub tags: BTreeMap<TagKey, TagValue>,
    /// When the device was last seen, for registries migrated from another system; devices report
    /// it themselves from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<Timestamp>,
    /// For pre-authorised devices: a secret the device must present with its hardware id when it
    /// provisions (stored hashed). Without it, the first caller presenting the hardware id gets the
    /// credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preauth_secret: Option<String>,
    /// Issue the device credential now and return it once in the response.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub issue_credential: bool,
}

/// Response to creating a device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedDevice {
    pub device: DeviceView,
    /// The device credential, shown only this once (when `issue_credential` was set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Partial update of a device (`PATCH /api/v1/devices/{id}`). Absent fields are left alone; `null`
/// clears an optional field; in `tags`, `null` removes a key and a string sets it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub device_type: Option<DeviceType>,
    #[serde(
        default,
        deserialize_with = "crate::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub hw_id: Option<Option<HardwareId>>,
    #[serde(
        default,
        deserialize_with = "crate::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub hw_rev: Option<Option<Label>>,
    #[serde(
        default,
        deserialize_with = "crate::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub site: Option<Option<Label>>,
    #[serde(
        default,
        deserialize_with = "crate::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub region: Option<Option<Label>>,
    /// `active`, `inactive` or `error` (other transitions have their own operations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub status: Option<DeviceStatus>,
    #[serde(
        default,
        deserialize_with = "crate::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub firmware: Option<Option<Version>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = BTreeMap<String, Option<String>>)]
    pub tags: BTreeMap<TagKey, Option<TagValue>>,
}

impl DevicePatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self == &DevicePatch::default()
    }
}

/// `POST /api/v1/devices/bulk-update`: apply `set` to every device matching `query`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkUpdate {
    /// A fleet query; must not be empty (use `id EXISTS`-style intent explicitly: `status != decommissioned`).
    pub query: String,
    /// The change; `hw_id` and `firmware` cannot be set in bulk.
    pub set: DevicePatch,
}

/// Result of a bulk update.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkUpdateResult {
    /// Devices the query selected (decommissioned devices are never selected).
    pub matched: u64,
    /// Devices actually changed; a status change skips devices whose lifecycle does not allow it.
    pub updated: u64,
}

/// What to do with an import row whose device id already exists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    /// Reject the whole import (default).
    #[default]
    Error,
    /// Keep the existing device, ignore the row.
    Skip,
    /// Overwrite the existing device's attributes and tags with the row's.
    Update,
}

/// Result of `POST /api/v1/devices/import`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ImportResult {
    pub created: u64,
    pub updated: u64,
    pub skipped: u64,
}

/// One rejected import line (in `error.details.lines` of a failed import).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportLineError {
    /// 1-based line number in the uploaded file (the CSV header is line 1).
    pub line: u64,
    pub message: String,
}

/// Fields a device list can be sorted by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSort {
    #[default]
    Id,
    CreatedAt,
    UpdatedAt,
    LastSeen,
    Firmware,
}

impl DeviceSort {
    pub fn parse(text: &str) -> Result<DeviceSort, String> {
        match text {
            "id" => Ok(DeviceSort::Id),
            "created_at" | "created" => Ok(DeviceSort::CreatedAt),
            "updated_at" | "updated" => Ok(DeviceSort::UpdatedAt),
            "last_seen" => Ok(DeviceSort::LastSeen),
            "firmware" | "version" => Ok(DeviceSort::Firmware),
            _ => Err(format!("unknown sort field {text:?} (expected id, created_at, updated_at, last_seen or firmware)")),
        }
    }
}

/// Sort direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SortOrder {
    #[default]
    Asc,
    Desc,
}

/// `GET /api/v1/devices/{id}/groups`: the static and dynamic groups a device is in right now.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceGroups {
    pub groups: Vec<String>,
}

/// A newly issued device credential, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceCredential {
    pub device_id: String,
    pub credential: String,
}

/// `GET /api/v1/devices/{id}/health`: the latest heartbeat a device sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// When the readings were taken (device clock, bounded by the receive time).
    #[schema(value_type = String, format = DateTime)]
    pub observed_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub received_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_slot: Option<String>,
    pub metrics: BTreeMap<String, f64>,
}

/// One raw heartbeat sample, as `GET /api/v1/devices/{id}/health/samples` lists them (oldest
/// first) for a device's health charts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthSampleView {
    /// When the readings were taken (device clock, bounded by the receive time).
    #[schema(value_type = String, format = DateTime)]
    pub observed_at: Timestamp,
    /// Metric name to value (`battery_mv`, `current_ma`, `temp_c`, …).
    pub metrics: BTreeMap<String, f64>,
}

/// `GET /api/v1/health/rollups`: how one metric behaved on the devices running one firmware
/// version, bucket by bucket. Built from the rollups heartbeat ingest keeps per firmware, metric
/// and time bucket, so it covers any window without the raw samples (which are pruned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CohortRollupView {
    /// The firmware version the devices reported with their heartbeats (the cohort). Empty for
    /// devices that never reported one.
    #[schema(example = "2.3.1")]
    pub firmware: String,
    #[schema(value_type = String, example = "mem_free_bytes")]
    pub metric: MetricName,
    /// Width of each bucket: the server's rollup bucket (60 s by default) unless a wider one was
    /// asked for.
    pub bucket_seconds: u64,
    /// Buckets that received at least one heartbeat, oldest first; quiet buckets are left out.
    pub buckets: Vec<RollupBucketView>,
}

/// The statistics of one metric over one firmware cohort and one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RollupBucketView {
    /// Start of the bucket (buckets are aligned to the Unix epoch).
    #[schema(value_type = String, format = DateTime)]
    pub bucket: Timestamp,
    /// Readings of the metric in the bucket (one per heartbeat that carried it).
    pub count: u64,
    pub mean: f64,
    /// Sample standard deviation; absent with a single reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stddev: Option<f64>,
    pub min: f64,
    pub max: f64,
    /// The quantiles come from a sketch: each is within 1 % (relative) of a reading truly at that
    /// rank, and never outside `min..=max`.
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The answer of `GET /api/v1/health/rollups`: one cohort when `firmware` was given, otherwise
/// every firmware version with rollups of the metric in the window (in version order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CohortRollups {
    One(CohortRollupView),
    All(Vec<CohortRollupView>),
}

/// A device's connectivity now and how it changed (`GET /api/v1/devices/{id}/connectivity`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConnectivityView {
    #[schema(value_type = String, example = "degraded")]
    pub state: Connectivity,
    /// Link quality of the latest heartbeat, 0 (unusable) to 100 (perfect); absent before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_score: Option<u8>,
    /// Changes of state, newest first (at most `limit`).
    pub history: Vec<ConnectivityChangeView>,
}

/// One change of a device's connectivity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConnectivityChangeView {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    #[schema(value_type = String, example = "online")]
    pub from: Connectivity,
    #[schema(value_type = String, example = "offline")]
    pub to: Connectivity,
}
