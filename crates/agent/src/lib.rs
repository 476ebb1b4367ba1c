//! Drover's device-side agent: obtains a device credential by provisioning, then reports a
//! heartbeat with the device's health every interval, buffering heartbeats in memory while the
//! server is unreachable and flushing them in batches when it is back. It keeps the device's
//! shadow in sync and applies desired configuration through the operator's config hook. After
//! provisioning (always HTTP) it talks HTTP or MQTT, as configured.
//!
//! The agent is small on purpose (blocking threads, a handful of dependencies; the MQTT client's
//! single-threaded runtime is the only async code) so that it fits on gateways and single-board
//! computers next to the application.
//!
//! # Layout
//! - [`config`]: the TOML file, flags and environment merged into a validated [`Config`].
//! - [`state`]: the device id and credential persisted in the state directory (atomic, `0600`).
//! - [`backoff`], [`buffer`]: exponential backoff with full jitter; the bounded heartbeat buffer.
//! - [`scheduler`]: the pure heartbeat state machine (`on_event(now, event) -> Action`).
//! - [`shadow`]: the pure shadow-sync decisions (which delta to apply, what to report);
//!   [`shadow_thread`] carries them out on a thread of its own; [`hook`] runs the config hook.
//! - [`metrics`]: Linux health readings (`/proc`, `/sys`), static metrics and the command hook;
//!   [`process`] runs both hooks with a timeout.
//! - [`transport`]: the traits the agent talks through (provisioning, heartbeats, shadow) and
//!   their error classes; [`http`] implements them all over the device API (`/api/device/v1`),
//!   [`mqtt`] heartbeats and the shadow over one MQTT connection.
//! - [`agent`]: the heartbeat loop that carries out the scheduler's actions (the only place with
//!   clocks, sleeps and signals), provisioning, and the wiring of threads.
//! - [`update`]: over-the-air A/B updates — the pure update state machine, its runner, the slot
//!   backends (simulated, U-Boot, GRUB), the atomically persisted update state and the post-boot
//!   health checks; [`update::run`] is the update thread's loop.
//! - [`jobs`]: fleet jobs and remote diagnostics: two threads long-polling the device API over
//!   HTTP, and what the agent answers (system info, log tail, redacted config, ping, reboot).
//! - `log`: a minimal stderr logger (the agent's logs go to the journal, which adds timestamps).
//!
//! Threads: the heartbeat loop (the caller's), the shadow thread, the MQTT link thread (MQTT
//! only; it runs rumqttc's current-thread runtime), and the binary's signal thread (or, through
//! [`Agent::run`], one that turns the caller's shutdown channel into a [`agent::Signal`]).

#[macro_use]
mod log;

pub mod agent;
pub mod backoff;
pub mod buffer;
pub mod config;
pub mod hook;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod mqtt;
pub mod process;
pub mod random;
pub mod scheduler;
pub mod shadow;
pub mod shadow_thread;
pub mod state;
pub mod transport;
pub mod update;

pub use agent::{Agent, Revoked, Stats};
pub use config::{Cli, Config, ConfigError};
pub use log::silence as silence_logs;
