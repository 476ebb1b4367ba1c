//! Bodies of the device-shadow endpoints, in the shape of AWS IoT Device Shadow.
//!
//! The server builds these bodies with `drover_core::shadow` (`ShadowDocument::to_json`,
//! `UpdateOutcome::accepted_json`, `ShadowDocument::delta_json`) and parses update requests with
//! `ShadowUpdate::from_json`, which is where the rules live; the types here describe the same JSON
//! for the OpenAPI document and let clients such as the CLI read and write it. Field names follow
//! AWS (`clientToken` included) so firmware written against AWS needs few changes.

use drover_core::shadow::{JsonObject, ShadowName};
use drover_core::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A whole shadow document: `GET /api/device/v1/shadow`, `GET` and `PATCH
/// /api/v1/devices/{id}/shadow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShadowView {
    pub state: ShadowStateView,
    /// When each leaf last changed, mirroring `state.desired` and `state.reported`:
    /// `{"led": {"timestamp": <ms since epoch>}}`.
    pub metadata: ShadowMetadataView,
    /// Bumped by one on every update that changes something; send it back as `version` to update
    /// only if nobody else has changed the shadow since.
    pub version: u64,
    /// When the document last changed.
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Timestamp,
}

/// The three halves of a shadow's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShadowStateView {
    /// What operators want the device to be (possibly `{}`).
    #[schema(value_type = Object)]
    pub desired: JsonObject,
    /// What the device says it is (possibly `{}`).
    #[schema(value_type = Object)]
    pub reported: JsonObject,
    /// The desired fields the device has not reported yet; absent once it has converged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub delta: Option<JsonObject>,
}

/// Per-leaf timestamps of `desired` and `reported`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShadowMetadataView {
    #[schema(value_type = Object)]
    pub desired: JsonObject,
    #[schema(value_type = Object)]
    pub reported: JsonObject,
}

/// A request to change a shadow: `POST /api/device/v1/shadow` (devices send `reported`) and `PATCH
/// /api/v1/devices/{id}/shadow` (operators send `desired`).
///
/// Objects merge into the stored state field by field; `null` deletes a field; arrays and scalars
/// replace the old value whole. Unknown fields are rejected, because a misspelt `version` would
/// otherwise silently turn off the concurrency check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowUpdateRequest {
    pub state: ShadowStatePatch,
    /// Apply only if the shadow is still at this version (`0`: only if it was never written);
    /// otherwise `409` with the current version in `details.current_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Echoed back in the answer, so a client can match answers to requests.
    #[serde(
        rename = "clientToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_token: Option<String>,
}

/// The `state` of an update request. `null` for a section clears all of it; an absent section is
/// left alone.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowStatePatch {
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Object>)]
    pub desired: Option<Value>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<Object>)]
    pub reported: Option<Value>,
}

/// The answer to a device's update: what was applied (changed leaves with their new values,
/// deleted fields as `null`), their timestamps, and the document version after the update. An
/// update that changed nothing has an empty `state` and the unchanged version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShadowAccepted {
    pub state: ShadowSections,
    pub metadata: ShadowSections,
    pub version: u64,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Timestamp,
    #[serde(
        rename = "clientToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub client_token: Option<String>,
}

/// `desired` and / or `reported`, each present only if the update touched it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
pub struct ShadowSections {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub desired: Option<JsonObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub reported: Option<JsonObject>,
}

/// `GET /api/device/v1/shadow/delta`: what the device still has to do. This is the whole delta,
/// not only what changed last, so acting on the newest message is enough.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShadowDelta {
    /// The desired fields the device has not reported yet.
    #[schema(value_type = Object)]
    pub state: JsonObject,
    /// Their desired-side timestamps.
    #[schema(value_type = Object)]
    pub metadata: JsonObject,
    /// The document version; pass it as `version` to the next long-poll.
    pub version: u64,
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Timestamp,
}

/// `GET /api/v1/devices/{id}/shadows`: the device's shadows, the classic one first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShadowList {
    pub shadows: Vec<ShadowSummary>,
}

/// One shadow of a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ShadowSummary {
    /// The shadow's name; absent for the classic (unnamed) shadow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub name: Option<ShadowName>,
    pub version: u64,
    /// When the shadow last changed.
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: Timestamp,
}

/// Deserialises a field that is present, keeping an explicit `null` as `Some(Value::Null)` (plain
/// `Option<Value>` would turn it into `None`, losing "clear this section").
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_null_section_survives_a_round_trip_and_an_absent_one_stays_absent() {
        let body = json!({"state": {"desired": null}, "version": 3, "clientToken": "t"});
        let request: ShadowUpdateRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(request.state.desired, Some(Value::Null));
        assert_eq!(request.state.reported, None);
        assert_eq!(serde_json::to_value(&request).unwrap(), body);
    }

    #[test]
    fn unknown_fields_in_an_update_are_errors() {
        let typo = json!({"state": {"desired": {}}, "verison": 1});
        assert!(serde_json::from_value::<ShadowUpdateRequest>(typo).is_err());
    }
}
