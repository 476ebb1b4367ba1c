//! Bodies of the device API (`/api/device/v1`): what firmware sends and receives.

use drover_core::{DeviceId, DeviceStatus, DeviceType, HardwareId, Label, Version};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/device/v1/provision`: a device asks for its credential.
///
/// Three ways in: with a `claim_token` (the operator's bulk enrolment secret); as a pre-authorised
/// device (the operator registered `hardware_id` first, optionally with a `preauth_secret`); or, when
/// the server allows it, as an unknown device that waits in `pending` for an operator. A pending
/// device sends a random `nonce` (16–128 characters) and repeats the same request until accepted;
/// only the holder of that nonce receives the credential.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    #[schema(value_type = String)]
    pub hardware_id: HardwareId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preauth_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Requested device id; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub device_id: Option<DeviceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub device_type: Option<DeviceType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub hw_rev: Option<Label>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub firmware: Option<Version>,
}

/// Response to a provisioning request: `200` with the credential (shown once), or `202` while the
/// device waits for an operator (`status = pending`, no credential).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProvisionResponse {
    #[schema(value_type = String)]
    pub device_id: DeviceId,
    #[schema(value_type = String)]
    pub status: DeviceStatus,
    /// Bearer credential for every later device API call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// For a pending device: when to ask again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
}

/// `GET /api/device/v1/whoami`: the device's own record, as the server knows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = DeviceWhoAmI)]
pub struct WhoAmI {
    #[schema(value_type = String)]
    pub device_id: DeviceId,
    #[schema(value_type = String)]
    pub device_type: DeviceType,
    #[schema(value_type = String)]
    pub status: DeviceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub firmware: Option<Version>,
}

/// `POST /api/device/v1/heartbeat`: what a device reports about its health.
///
/// `metrics` maps metric names to numbers. Known names (see `drover_core::health::KNOWN_METRICS`:
/// `uptime_s`, `cpu_pct`, `mem_free_bytes`, `battery_v`, `rssi_dbm`, `rollback_count`, …) have
/// fixed units and physical ranges; other well-formed names are kept as custom metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// When the device took the readings (its clock); the server's receive time when absent.
    /// Heartbeats buffered while offline carry their original time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sent_at: Option<drover_core::Timestamp>,
    /// The firmware version the device is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub firmware: Option<Version>,
    /// Seconds until the device's next scheduled heartbeat; it counts as offline after three
    /// such intervals without one (the server's default interval is used when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<u32>,
    /// The A/B slot the device booted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub boot_slot: Option<Label>,
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeMap<String, f64>)]
    pub metrics: std::collections::BTreeMap<drover_core::health::MetricName, f64>,
}

/// `POST /api/device/v1/heartbeats`: several heartbeats at once (e.g. flushed after an outage).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBatch {
    pub heartbeats: Vec<Heartbeat>,
}

/// Acknowledgement of durable heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAck {
    /// How many heartbeats were stored.
    pub accepted: u64,
}
