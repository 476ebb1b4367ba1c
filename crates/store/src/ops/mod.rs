//! Store operations, each written once against [`crate::db::Db`] and run by both backends.

pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod deployments;
pub mod devices;
pub mod diagnostics;
pub mod fleet;
pub mod groups;
pub mod health;
pub mod jobs;
pub mod provision;
pub mod rollouts;
pub mod shadow;
pub mod targets;
pub mod tuf;

use drover_core::Timestamp;

use crate::db::Value;

/// Stored form of an optional timestamp.
pub(crate) fn opt_ts(value: Option<i64>) -> Option<Timestamp> {
    value.map(Timestamp::from_millis)
}

pub(crate) fn ts(value: Timestamp) -> Value {
    Value::Int(value.as_millis())
}
