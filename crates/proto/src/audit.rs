//! Audit log entries: who did what to which object, when, with the state before and after.

use drover_core::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One audited action.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    /// Monotonic sequence number (also the pagination key).
    pub seq: i64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// `token:<id>` for an operator token, `device:<id>` for a device, `system` for Drover itself.
    pub actor: String,
    /// Human name of the actor (the token's name), when known.
    pub actor_name: String,
    /// Dotted verb, e.g. `device.create`, `group.members.add`, `claim.revoke`, `device.provision`.
    pub action: String,
    /// `device`, `group`, `claim`, `token` or `devices` (bulk).
    pub target_kind: String,
    pub target_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}
