//! Operator API tokens with roles, and claim tokens that let devices provision themselves.

use std::collections::BTreeMap;

use drover_core::{DeviceType, GroupName, TagKey, TagValue, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an operator token may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read everything, change nothing.
    Viewer,
    /// Manage devices, groups and claim tokens.
    Operator,
    /// Everything, including operator tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role {text:?} (expected viewer, operator or admin)"
            )),
        }
    }
}

/// An operator API token (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: Role,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A label for people: who or what uses the token.
    pub name: String,
    pub role: Role,
    /// Lifetime such as `30d` or `12h`; no expiry when absent.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// Response to creating a token: the secret is shown only this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    pub token: TokenView,
    pub secret: String,
}

/// A claim token (never its secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimView {
    pub id: String,
    pub name: String,
    /// Devices provisioned with this claim get this type (and must not claim another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub device_type: Option<DeviceType>,
    /// Tags given to every device provisioned with this claim.
    #[schema(value_type = BTreeMap<String, String>)]
    pub tags: BTreeMap<TagKey, TagValue>,
    /// Static group every device provisioned with this claim joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub group: Option<GroupName>,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
    pub uses: u64,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    pub created_by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<Timestamp>,
}

/// `POST /api/v1/claims`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClaim {
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub device_type: Option<DeviceType>,
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, String>)]
    pub tags: BTreeMap<TagKey, TagValue>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub group: Option<GroupName>,
    /// Lifetime such as `7d` (default `24h`, at most `365d`).
    #[serde(default)]
    pub expires_in: Option<String>,
    /// How many devices may use it; unlimited when absent.
    #[serde(default)]
    pub max_uses: Option<u64>,
}

/// Response to creating a claim token: the secret is shown only this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedClaim {
    pub claim: ClaimView,
    pub token: String,
}

/// `GET /api/v1/whoami`: the token a request was made with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(as = TokenWhoAmI)]
pub struct WhoAmI {
    pub token_id: String,
    pub name: String,
    pub role: Role,
}
