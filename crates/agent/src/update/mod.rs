//! Over-the-air A/B updates: the agent checks for an offered update, verifies it against the
//! signed TUF metadata, the anti-rollback floor and the device's compatibility, downloads it
//! (resumably) into the inactive slot, marks that slot try-once, reboots, checks the new image's
//! health and commits it — or falls back to the previous slot. Every step is persisted before it
//! is acted on and reported to the server.
//!
//! # Layout
//! - [`machine`]: the pure state machine (`on_event(now, event) -> Vec<Action>`); its module doc
//!   has the states and the crash-safety argument.
//! - [`runner`]: carries out the actions, one per [`runner::UpdateRunner::step`].
//! - [`slots`]: the A/B slot backends ([`slots::simulated`], U-Boot and GRUB in [`slots::env`]).
//! - [`persist`]: the update state file, written atomically.
//! - [`health`]: the post-boot health checks.
//! - [`client`]: the server ([`client::UpdateClient`], over HTTP).
//! - [`verify`]: the traits for TUF verification and delta application; [`tuf`] implements
//!   the first over `drover-tuf`.
//!
//! [`run`] is the update thread's loop, for a configured agent.

pub mod client;
pub mod health;
pub mod machine;
pub mod persist;
pub mod runner;
pub mod slots;
pub mod tuf;
pub mod verify;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::{Config, SlotsConfig, UpdateConfig};
use crate::http::HttpTransport;
use crate::transport::{Credential, Provisioning};
use client::HttpUpdateClient;
use health::{HealthChecker, HealthOptions};
use machine::MachineOptions;
use persist::UpdateStore;
use runner::{BootClock, Clock, RunnerParts, Step, UpdateRunner};
use slots::env::{EnvSlots, EnvSlotsOptions, GrubEnv, UbootEnv};
use slots::simulated::SimulatedSlots;
use slots::SlotBackend;
use verify::{DeltaApplier, Verifier};

/// How long the update thread waits before starting over after an error.
const RESTART_DELAY: Duration = Duration::from_secs(60);
/// How soon a health check that is not passing yet runs again (at most).
const HEALTH_RETRY: Duration = Duration::from_secs(10);

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The machine's options from the agent's configuration.
pub fn machine_options(config: &Config, update: &UpdateConfig, delta: bool) -> MachineOptions {
    MachineOptions {
        device_type: config.device_type.as_ref().map(|t| t.as_str().to_owned()),
        hw_rev: config.hw_rev.as_ref().map(|r| r.as_str().to_owned()),
        security_floor: update.security_floor.clone(),
        allow_downgrade: update.allow_downgrade,
        delta,
        firmware: config.firmware.clone(),
        check_interval: update.check_interval,
        watchdog_timeout: update.watchdog_timeout,
        health_retry: HEALTH_RETRY.min(update.watchdog_timeout / 4),
    }
}

/// How a wait between steps ended.
enum Waited {
    Stop,
    Offer(drover_proto::update::UpdateOffer),
    Elapsed,
}

/// Waits up to `delay` for a stop or, over MQTT, an offer the server pushed (checked every
/// 200 ms: std channels cannot be selected on together).
fn wait_for_offer(
    stop: &Receiver<()>,
    offers: Option<&Receiver<drover_proto::update::UpdateOffer>>,
    delay: Duration,
) -> Waited {
    let Some(offers) = offers else {
        return if crate::agent::wait(stop, delay) {
            Waited::Stop
        } else {
            Waited::Elapsed
        };
    };
    let deadline = std::time::Instant::now() + delay;
    loop {
        if let Ok(offer) = offers.try_recv() {
            return Waited::Offer(offer);
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Waited::Elapsed;
        }
        if crate::agent::wait(stop, left.min(Duration::from_millis(200))) {
            return Waited::Stop;
        }
    }
}

/// The delta applier the agent uses: `drover-delta`, in bounded memory (under 1 MiB whatever
/// the image size; the base image is read from its slot with seeks).
pub fn delta_applier() -> Option<Box<dyn DeltaApplier>> {
    Some(Box::new(DroverDelta))
}

struct DroverDelta;

impl DeltaApplier for DroverDelta {
    fn apply(
        &self,
        old: &mut dyn verify::ReadSeek,
        patch: &mut dyn std::io::Read,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, verify::DeltaError> {
        drover_delta::apply(old, patch, out)
            .map(|report| report.result_len)
            .map_err(|e| verify::DeltaError(e.to_string()))
    }
}

/// The configured slot backend.
pub fn slot_backend(
    config: &Config,
    update: &UpdateConfig,
) -> Result<Box<dyn SlotBackend>, slots::SlotError> {
    let info_dir = config.state_dir.join("slots");
    Ok(match &update.slots {
        SlotsConfig::Simulated { dir } => Box::new(SimulatedSlots::open(dir)?),
        SlotsConfig::Uboot {
            env: options,
            fw_printenv,
            fw_setenv,
        } => Box::new(EnvSlots::new(
            UbootEnv {
                printenv: fw_printenv.clone(),
                setenv: fw_setenv.clone(),
            },
            with_info_dir(options, info_dir),
        )),
        SlotsConfig::Grub {
            env: options,
            grub_editenv,
            env_file,
        } => Box::new(EnvSlots::new(
            GrubEnv {
                editenv: grub_editenv.clone(),
                file: env_file.clone(),
            },
            with_info_dir(options, info_dir),
        )),
    })
}

fn with_info_dir(options: &EnvSlotsOptions, info_dir: PathBuf) -> EnvSlotsOptions {
    EnvSlotsOptions {
        info_dir,
        ..options.clone()
    }
}

/// The update thread's loop: runs the update machine over HTTP until `stop` receives a message or
/// its sender is dropped. `running` hears the running version and booted slot after every step
/// (heartbeats report them). The TUF `verifier` and the optional delta applier come from the caller
/// (the `drover-tuf` and `drover-delta` crates). Errors (an unwritable state directory, an
/// unreadable bootloader environment) are logged and the runner starts over from the persisted
/// record after a minute.
// Each argument is a separate dependency the agent's wiring injects (and tests replace); a struct
// holding them would only be built once, here.
#[allow(clippy::too_many_arguments)]
pub fn run(
    config: &Config,
    update: &UpdateConfig,
    credential: Credential,
    mut verifier: impl FnMut() -> Box<dyn Verifier>,
    mut delta: impl FnMut() -> Option<Box<dyn DeltaApplier>>,
    mut running: impl FnMut(Option<drover_core::Version>, Option<slots::Slot>),
    offers: Option<Receiver<drover_proto::update::UpdateOffer>>,
    stop: Receiver<()>,
) {
    let clock = BootClock;
    loop {
        let applier = delta();
        let options = machine_options(config, update, applier.is_some());
        let started = slot_backend(config, update)
            .map_err(runner::RunnerError::from)
            .and_then(|slots| {
                let mut whoami = HttpTransport::new(&config.server_url, config.request_timeout);
                let whoami_credential = credential.clone();
                let connectivity: health::Connectivity = Box::new(move || {
                    whoami
                        .whoami(&whoami_credential)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                });
                let parts = RunnerParts {
                    store: UpdateStore::new(&config.state_dir),
                    slots,
                    client: Box::new(HttpUpdateClient::new(
                        HttpTransport::new(&config.server_url, config.request_timeout),
                        credential.clone(),
                    )),
                    verifier: verifier(),
                    delta: applier,
                    health: HealthChecker::new(
                        HealthOptions {
                            process: update.health_process.clone(),
                            hook: update.health_check_command.clone(),
                            hook_timeout: update.health_check_timeout,
                        },
                        update.health_connectivity.then_some(connectivity),
                    ),
                    clock: Box::new(BootClock),
                };
                UpdateRunner::start(options, parts)
            });
        let mut runner = match started {
            Ok(runner) => runner,
            Err(e) => {
                warn!(
                    "updates: {e}; starting over in {} s",
                    RESTART_DELAY.as_secs()
                );
                if crate::agent::wait(&stop, RESTART_DELAY) {
                    return;
                }
                continue;
            }
        };
        loop {
            let step = runner.step();
            running(
                runner.machine().running_version(),
                runner.machine().booted_slot(),
            );
            match step {
                Ok(Step::Acted) => {
                    if !matches!(stop.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)) {
                        return;
                    }
                }
                Ok(Step::Sleep(at)) => {
                    let delay = Duration::from_millis(at.saturating_sub(clock.now_ms()));
                    match wait_for_offer(&stop, offers.as_ref(), delay) {
                        Waited::Stop => return,
                        Waited::Offer(offer) => runner.offer(offer),
                        Waited::Elapsed => {}
                    }
                }
                Ok(Step::Halted) => {
                    // The system is going down; if it does not, start over from the record.
                    if crate::agent::wait(&stop, RESTART_DELAY * 5) {
                        return;
                    }
                    break;
                }
                Err(e) => {
                    warn!(
                        "updates: {e}; starting over in {} s",
                        RESTART_DELAY.as_secs()
                    );
                    if crate::agent::wait(&stop, RESTART_DELAY) {
                        return;
                    }
                    break;
                }
            }
        }
    }
}
