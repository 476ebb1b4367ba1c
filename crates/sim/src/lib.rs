//! Drover's fleet simulator: many virtual devices in one process, speaking the real device APIs to a
//! real Drover server, so that rollouts, canary analysis and the server's capacity can be exercised
//! against a fleet with known behaviour.
//!
//! A scenario file describes the fleet (cohorts of device types with weighted hardware revisions,
//! regions, sites and tags, heartbeat timing and baseline metrics), how each firmware version
//! behaves once installed, and the networks the devices sit behind. Simulated time can run faster
//! than the wall clock; devices report rates per hour, so the server's clock is never faked.
//!
//! # Layout
//! - [`scenario`]: the TOML scenario format and its validation into a [`Scenario`], with errors that
//!   name the key path; firmware behaviour lookup ([`match_firmware`]).
//! - [`sample`]: a seeded, reproducible generator; expanding a scenario into one
//!   [`VirtualDeviceSpec`] per device; draws from metric, duration and Poisson distributions.
//! - [`time`]: time compression: simulated ↔ wall time for a speed-up, and per-hour rates over a
//!   simulated interval.
//!
//! This crate is the simulator's model and has no IO: it reads text and returns values. The virtual
//! devices that run the agent's logic over HTTP and MQTT, the transport layer that applies the
//! network models, and the `drover sim` command that runs them are built on top of this model.

pub mod sample;
pub mod scenario;
pub mod time;

pub use sample::{expand_fleet, metric_sample, SimRng, Transport, VirtualDeviceSpec};
pub use scenario::{
    match_firmware, Bandwidth, Cohort, Distribution, DurationModel, FirmwareBehaviour, FirmwareKey,
    FirmwareModel, NetworkModel, Scenario, ScenarioError, Weighted,
};
pub use time::TimeScale;
