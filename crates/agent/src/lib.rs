//! Drover's device-side agent: obtains a device credential by provisioning, then reports a
//! heartbeat with the device's health every interval, buffering heartbeats in memory while the
//! server is unreachable and flushing them in batches when it is back.
//!
//! The agent is small on purpose (one blocking thread, no async runtime, a handful of
//! dependencies) so that it fits on gateways and single-board computers next to the application.
//!
//! # Layout
//! - [`config`]: the TOML file, flags and environment merged into a validated [`Config`].
//! - [`state`]: the device id and credential persisted in the state directory (atomic, `0600`).
//! - [`backoff`], [`buffer`]: exponential backoff with full jitter; the bounded heartbeat buffer.
//! - [`scheduler`]: the pure heartbeat state machine (`on_event(now, event) -> Action`).
//! - [`metrics`]: Linux health readings (`/proc`, `/sys`), static metrics and the command hook.
//! - [`transport`]: the `Transport` trait the agent talks through and its error classes;
//!   [`http`] implements it over the device API (`/api/device/v1`). MQTT will be a second one.
//! - [`agent`]: the loop that carries out the scheduler's actions (the only place with clocks,
//!   sleeps and signals), and provisioning.
//! - `log`: a minimal stderr logger (the agent's logs go to the journal, which adds timestamps).

#[macro_use]
mod log;

pub mod agent;
pub mod backoff;
pub mod buffer;
pub mod config;
pub mod http;
pub mod metrics;
pub mod random;
pub mod scheduler;
pub mod state;
pub mod transport;

pub use agent::{Agent, Revoked, Stats};
pub use config::{Cli, Config, ConfigError};
