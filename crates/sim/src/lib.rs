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
//! - [`net`]: the network models as the transport layer applies them (latency, jitter, loss as
//!   retransmission delay, bandwidth, disconnect periods), without root.
//! - [`api`]: the HTTP device API over one shared connection pool, classifying answers with the
//!   agent's own code; [`mqtt`]: one device's MQTT connection, driven by the agent's session state
//!   machine; [`verify`]: one TUF client (the agent's) shared by the whole fleet.
//! - [`device`]: a virtual device — the agent's heartbeat scheduler, shadow sync and update state
//!   machine (with its simulated bootloader) as async loops, with readings and firmware behaviour
//!   from the scenario.
//! - [`run`]: a whole run: claim token, saved credentials, one task per device, progress and
//!   summary. [`stats`]: the fleet's counters.
//!
//! The model modules (`scenario`, `sample`, `time`) have no IO; the rest runs on the caller's tokio
//! runtime. `drover sim` is the command-line front end.

pub mod api;
pub mod device;
pub mod mqtt;
pub mod net;
pub mod run;
pub mod sample;
pub mod scenario;
pub mod stats;
pub mod time;
pub mod verify;

pub use run::{run, RunOptions, Summary};
pub use sample::{expand_fleet, metric_sample, SimRng, Transport, VirtualDeviceSpec};
pub use scenario::{
    match_firmware, Bandwidth, Cohort, Distribution, DurationModel, FirmwareBehaviour, FirmwareKey,
    FirmwareModel, NetworkModel, Scenario, ScenarioError, Weighted,
};
pub use time::TimeScale;
