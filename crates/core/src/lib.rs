//! Drover's domain core: validated identifiers, semantic versions, timestamps, the device model and
//! the fleet query language.
//!
//! Everything here is pure: no IO, no async, no clock. Functions that depend on the current time take
//! it as an argument, so callers (and tests) decide what "now" is.
//!
//! # Layout
//! - [`ids`]: validated newtypes for identifiers and labels (`DeviceId`, `GroupName`, `TagKey`, …).
//! - [`version`]: semantic versions with SemVer 2.0 precedence and a byte-sortable key for storage.
//! - [`time`]: millisecond timestamps and human durations (`10m`, `2h`).
//! - [`device`]: the device record and its lifecycle status.
//! - [`health`]: heartbeat metric names and validation, rollups with a mergeable quantile sketch.
//! - [`query`]: the fleet query language: lexer, parser, AST, in-memory evaluation, SQL compilation.
//! - [`shadow`]: device shadows: desired/reported state, merge, versioning, delta and limits.
//! - [`rollout`]: rollout decisions; [`rollout::window`] holds maintenance windows (cron, duration
//!   and IANA time zone) that say when a rollout may start device updates.

pub mod device;
pub mod health;
pub mod ids;
pub mod query;
pub mod rollout;
pub mod shadow;
pub mod time;
pub mod version;

pub use device::{Connectivity, Device, DeviceStatus, LinkQuality};
pub use ids::{ArtifactName, DeviceId, DeviceType, GroupName, HardwareId, Label, TagKey, TagValue};
pub use time::{Duration, Timestamp};
pub use version::Version;
