//! Group bodies: static groups (explicit members, optional parent) and dynamic groups (a fleet query).

use drover_core::{DeviceId, GroupName, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Static or dynamic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    Static,
    Dynamic,
}

impl GroupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Static => "static",
            GroupKind::Dynamic => "dynamic",
        }
    }
}

/// A group as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupView {
    #[schema(value_type = String)]
    pub name: GroupName,
    pub kind: GroupKind,
    /// The fleet query of a dynamic group, in canonical form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Parent of a static group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub parent: Option<GroupName>,
    pub description: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Current number of members (computed on read; for dynamic groups it is always current).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_count: Option<u64>,
}

/// `POST /api/v1/groups`. With `query` the group is dynamic; without, static.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGroup {
    #[schema(value_type = String)]
    pub name: GroupName,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub parent: Option<GroupName>,
    #[serde(default)]
    pub description: String,
}

/// `PATCH /api/v1/groups/{name}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    /// New query (dynamic groups only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// New parent, or `null` to detach (static groups only).
    #[serde(
        default,
        deserialize_with = "crate::double_option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub parent: Option<Option<GroupName>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `POST` / `DELETE /api/v1/groups/{name}/members`: add or remove static members.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembersChange {
    #[schema(value_type = Vec<String>)]
    pub device_ids: Vec<DeviceId>,
}

/// Result of a membership change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MembersChanged {
    /// Devices whose membership actually changed (already-members / non-members are not counted).
    pub changed: u64,
}
