//! Drover's wire types: the JSON bodies of the admin REST API (`/api/v1`) and the device API
//! (`/api/device/v1`), shared by the server, the CLI and device-side code.
//!
//! These types are a contract with operators' scripts and with firmware already in the field: add
//! optional fields freely, never rename or remove one without a new API version. Request types reject
//! unknown fields so that a typo is an error, not a silently ignored setting. Identifiers are core
//! newtypes, so a body that deserialises is already valid.
//!
//! # Layout
//! - [`error`]: the one error body every endpoint returns.
//! - [`artifacts`]: firmware artifacts, their deltas and single-device deployments (admin API).
//! - [`devices`]: device registry requests and views, import and bulk update.
//! - [`groups`]: static and dynamic groups.
//! - [`auth`]: operator API tokens, roles and claim tokens.
//! - [`audit`]: audit log entries.
//! - [`device_api`]: what devices send and receive (provisioning, whoami).
//! - [`fleet`]: the dashboard's fleet overview and firmware-version views.
//! - [`jobs`]: fleet jobs (operations over a target, executed per device) and remote diagnostics.
//! - [`rollouts`]: staged rollouts: creation, views with gate evidence, commands, decision log.
//! - [`shadow`]: device shadow documents, updates, deltas (both APIs).
//! - [`mqtt`]: the MQTT topic layout of the device API.
//! - [`target`]: which devices a rollout or job covers (group, query or device list).
//! - [`update`]: over-the-air updates: the offer, the device's step reports, the signed target facts.

pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod device_api;
pub mod devices;
pub mod error;
pub mod fleet;
pub mod groups;
pub mod jobs;
pub mod mqtt;
pub mod rollouts;
pub mod shadow;
pub mod target;
pub mod update;

/// A page of results with an opaque cursor for the next one (keyset pagination: stable while rows
/// are added or removed elsewhere in the list).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to fetch the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A count of matching items.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Count {
    pub count: u64,
}

/// `GET /api/v1/query/check`: the canonical form of a valid fleet query.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct QueryCheck {
    pub canonical: String,
}

/// Deserialises a field that distinguishes "absent" (`None`) from "null" (`Some(None)`), for PATCH
/// bodies where `null` clears a value.
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}
