//! Which devices an operation covers: a group, a fleet query or an explicit device list. Shared by
//! rollouts and fleet jobs.

use drover_core::{DeviceId, GroupName};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The devices a rollout or job covers. On the wire exactly one key:
/// `{"group": "field-units"}`, `{"query": "tags.env = prod"}` or `{"devices": ["dev-1", "dev-2"]}`.
/// Groups and queries are dynamic: a device that starts matching later is covered from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// A static or dynamic group, by name.
    #[schema(value_type = String)]
    Group(GroupName),
    /// A fleet query (`docs/query-language.md`).
    Query(String),
    /// An explicit list of device ids (at most [`Target::MAX_DEVICES`]).
    #[schema(value_type = Vec<String>)]
    Devices(Vec<DeviceId>),
}

impl Target {
    /// The longest explicit device list accepted; larger sets are named by a group or a query.
    pub const MAX_DEVICES: usize = 10_000;

    /// A short human description (`group field-units`, `query "tags.env = prod"`, `3 devices`).
    pub fn describe(&self) -> String {
        match self {
            Target::Group(group) => format!("group {group}"),
            Target::Query(query) => format!("query {query:?}"),
            Target::Devices(devices) if devices.len() == 1 => format!("device {}", devices[0]),
            Target::Devices(devices) => format!("{} devices", devices.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_have_one_key_on_the_wire() {
        let group: Target = serde_json::from_str(r#"{"group": "field-units"}"#).unwrap();
        assert_eq!(group.describe(), "group field-units");
        let query: Target = serde_json::from_str(r#"{"query": "tags.env = prod"}"#).unwrap();
        assert_eq!(
            serde_json::to_string(&query).unwrap(),
            r#"{"query":"tags.env = prod"}"#
        );
        let devices: Target = serde_json::from_str(r#"{"devices": ["a", "b"]}"#).unwrap();
        assert_eq!(devices.describe(), "2 devices");
        for bad in [
            r#"{}"#,
            r#"{"group": "a", "query": "x"}"#,
            r#"{"groups": "a"}"#,
            r#"{"devices": ["not a valid id!"]}"#,
        ] {
            assert!(serde_json::from_str::<Target>(bad).is_err(), "{bad}");
        }
    }
}
