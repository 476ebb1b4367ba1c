//! The update state machine: pure decisions, no IO (`on_event(now, event) -> Vec<Action>`).
//! [`super::runner`] carries the actions out in order and feeds back what happened.
//!
//! # States
//! `Idle` (no [`Job`]) → *checking* → [`Phase::Metadata`] (verifying TUF metadata, the
//! anti-rollback floor and compatibility) → [`Phase::Download`] (resumable: `bytes_done` is
//! persisted after the bytes are synced) → [`Phase::Downloaded`] (hash verified) →
//! [`Phase::Install`] (delta applied into the inactive slot, or the downloaded image; read back
//! and hashed) → [`Phase::MarkTryOnce`] → [`Phase::Reboot`] → [`Phase::Verify`] (post-boot health
//! checks under a watchdog deadline) → [`Phase::Commit`] → [`Phase::Finish`] with `succeeded`;
//! or [`Phase::RollBack`] (back to the previous slot) → `Finish` with `rolled_back` or `failed`.
//! `Finish` holds the final report until the server has it; then the job is dropped (`Idle`).
//!
//! # Crash safety
//! Every change of the persisted [`Record`] is returned as [`Action::Persist`] *before* the action
//! that depends on it, so the record always names the step that may be under way, never one that
//! has not been decided. The bootloader does the rest: a slot is only ever booted through
//! try-once, and a try-once slot that is not committed before the next boot is given up. After a
//! kill (or power loss) the agent restarts with [`Event::Started`], carrying which slot booted
//! and the boot id, and decides from the record:
//!
//! | Persisted phase | What may have happened | On restart |
//! |---|---|---|
//! | none | nothing, or a lost record | a slot on trial is rolled back (never committed) |
//! | `Metadata`, `Download`, `Downloaded`, `Install` | the *inactive* slot was partly written; the bootloader still boots the running slot | resume (the download from the persisted `bytes_done`, whose bytes were synced first; the install from scratch) |
//! | `MarkTryOnce`, `Reboot`, same boot | the try-once may be set; still on the old slot | set it again (idempotent) and reboot |
//! | `MarkTryOnce`, `Reboot`, new boot | the device rebooted | on the new slot: `Verify`; on the old slot: the new one did not boot → `rolled_back` |
//! | `Verify`, same boot | health checks were running | run them again against the *persisted* deadline |
//! | `Verify`, new boot | rebooted before a commit | on the old slot (the bootloader gave up the uncommitted slot) → `rolled_back`; on the new slot (bootlimit > 1) → verify again |
//! | `Commit` | health passed; the commit may have been written | on the new slot: commit again (idempotent) → `succeeded`; on the old one → `rolled_back` |
//! | `RollBack` | the rollback may have been written, the reboot may have happened | on the new slot: roll back and reboot again; on the old slot: finish |
//! | `Finish` | the outcome is decided, the report may not have arrived | send it again; a `succeeded` is re-checked first and only sent while the new slot is booted and committed |
//!
//! "Same boot" is known from the boot id recorded with every bootloader environment change
//! ([`Job::env_changed`]): within that boot the running slot is the one recorded, whatever the
//! environment says now. The post-boot deadline is on the boot-relative monotonic clock, so it is
//! only compared within the boot that set it.
//!
//! So a device only ever boots (a) its committed slot or (b) a slot holding an image whose signed
//! hash was verified after it was written, once; it commits only after the health checks passed
//! on that boot; and `succeeded` is only reported from `Finish`, created right after the commit
//! while the new slot was booted, and re-checked against the bootloader before every send.
//!
//! # Refusals
//! - The image's signed version must be at least the security floor: the configured
//!   `security_floor`, raised (persistently) to an image's signed `security_floor` when that image
//!   is committed. Below it: `below_security_floor`.
//! - The image's signed version must be newer than the running one, unless the agent is
//!   configured with `allow_downgrade` (a device-side decision: the wire types carry no signed
//!   permission for it). A version that is not newer is refused as `below_security_floor` too
//!   (it is anti-rollback protection; no retry can change it). When the running version is unknown,
//!   only the floor applies.
//! - The signed `device_types` must include this device's type and `hw_revs` (when not empty) its
//!   hardware revision; a device that does not know its type or revision refuses:
//!   `incompatible`.
//!
//! # Cancellation
//! A `409` on a report means the server ended the deployment. Before [`Phase::MarkTryOnce`] the job
//! is dropped: the device never left its working image and the inactive slot is not bootable.
//! From `MarkTryOnce` on (the point of no return) the job runs to its end: the bootloader
//! protocol is already in motion, and finishing it (commit after a healthy boot, or the fallback)
//! is exactly as safe as any update, whereas stopping half-way would add reboots.

use std::time::Duration;

use drover_core::Version;
use drover_proto::update::{
    DeploymentId, DeploymentReport, DeploymentState, FailureKind, TargetKind, UpdateOffer,
    UpdateType,
};
use serde::{Deserialize, Serialize};

use super::health::HealthOutcome;
use super::slots::{BootStatus, Slot, SlotImage};
use super::verify::VerifiedTarget;

/// Consecutive transient failures (metadata, download) before a job fails.
pub const MAX_TRANSIENT_FAILURES: u32 = 8;
/// First retry delay after a transient failure; doubles up to the check interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);

/// What the machine is configured with.
#[derive(Debug, Clone)]
pub struct MachineOptions {
    /// This device's type; `None` refuses every image.
    pub device_type: Option<String>,
    /// This device's hardware revision; `None` refuses images restricted to revisions.
    pub hw_rev: Option<String>,
    /// The configured anti-rollback floor.
    pub security_floor: Option<Version>,
    /// Accept versions that are not newer than the running one (never below the floor).
    pub allow_downgrade: bool,
    /// Whether a delta applier is available.
    pub delta: bool,
    /// The running version when no slot record says (the configured `firmware`).
    pub firmware: Option<Version>,
    pub check_interval: Duration,
    /// How long the new image has after its boot to prove healthy.
    pub watchdog_timeout: Duration,
    /// How soon a health check that is not passing yet runs again.
    pub health_retry: Duration,
}

/// The persisted update state: `update.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The highest anti-rollback floor committed so far (the configured one applies too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_floor: Option<Version>,
    /// The update in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
}

impl Record {
    pub fn new(security_floor: Option<Version>) -> Record {
        Record {
            security_floor,
            job: None,
        }
    }
}

/// One deployment on this device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub offer: UpdateOffer,
    /// The slot that was running (and committed) when the job began.
    pub from: Slot,
    /// Its version, for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<Version>,
    /// The verified full image, once the metadata was verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<VerifiedTarget>,
    /// The verified, usable delta, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<VerifiedTarget>,
    /// The boot in which the agent last changed the bootloader environment for this job, and
    /// the slot that was running then: within that boot the environment no longer tells which
    /// slot runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_changed: Option<(String, Slot)>,
    /// Whether the new image has booted (a failure after that is a roll-back, not a failure).
    #[serde(default)]
    pub booted_new: bool,
    pub phase: Phase,
}

impl Job {
    /// The slot being updated.
    pub fn to(&self) -> Slot {
        self.from.other()
    }

    fn to_version(&self) -> Option<Version> {
        self.image.as_ref().map(|i| i.custom.version.clone())
    }
}

/// Where a job is (see the module doc for what each means after a kill).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    Metadata,
    Download {
        /// The delta rather than the full image.
        delta: bool,
        /// Bytes written and synced.
        bytes_done: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        etag: Option<String>,
    },
    Downloaded {
        delta: bool,
    },
    Install {
        delta: bool,
    },
    MarkTryOnce,
    Reboot,
    Verify {
        boot_id: String,
        /// On the boot-relative monotonic clock, in milliseconds.
        deadline_ms: u64,
    },
    Commit,
    RollBack {
        failure: FailureKind,
        reason: String,
    },
    Finish {
        report: DeploymentReport,
    },
}

/// Where a download goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Straight into the inactive slot (a full image).
    Slot(Slot),
    /// The delta file in the state directory.
    DeltaFile,
}

/// A bootloader operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootOp {
    MarkTryOnce(Slot),
    Commit,
    RollBack,
}

/// What the runner must do, in order.
// Actions and events live for one step; boxing the record would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Save the record atomically. Nothing after it runs if this fails.
    Persist(Record),
    /// Report a step (best effort). Answers only with [`Event::Ended`] on a `409`.
    Report {
        deployment: DeploymentId,
        report: DeploymentReport,
    },
    /// Deliver the final report: answers with a `Report*` event.
    SendFinal {
        deployment: DeploymentId,
        report: DeploymentReport,
    },
    /// Ask the server for an offer.
    Check,
    /// Refresh TUF metadata and verify the targets.
    VerifyMetadata {
        image: String,
        delta: Option<String>,
    },
    /// Download `target` into `destination` from `from` (clearing the slot's record first when
    /// starting from zero).
    Download {
        target: VerifiedTarget,
        destination: Destination,
        from: u64,
        etag: Option<String>,
    },
    /// Hash what was downloaded against the signed target.
    VerifyDownload {
        target: VerifiedTarget,
        destination: Destination,
    },
    /// Apply the delta (if `delta`) into `slot`, read the slot back and hash it against `image`,
    /// then record `image` as the slot's.
    Install {
        slot: Slot,
        image: VerifiedTarget,
        delta: Option<VerifiedTarget>,
    },
    Bootloader(BootOp),
    Reboot,
    CheckHealth,
    /// Wait; answer with [`Event::Woke`].
    SleepUntil(u64),
    /// Remove the delta file.
    CleanUp,
}

/// What happened.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The agent started, or the simulated device rebooted.
    Started {
        status: BootStatus,
        /// The records of the booted and the other slot.
        running: Option<SlotImage>,
        inactive: Option<SlotImage>,
    },
    Woke,
    /// An offer (from a check, or pushed over MQTT).
    Offered(UpdateOffer),
    NoOffer,
    CheckFailed(String),
    MetadataVerified {
        image: VerifiedTarget,
        delta: Option<Result<VerifiedTarget, String>>,
    },
    MetadataFailed {
        reason: String,
        transient: bool,
    },
    DownloadDone {
        etag: Option<String>,
    },
    DownloadFailed {
        bytes_done: u64,
        etag: Option<String>,
        reason: String,
        transient: bool,
    },
    DownloadVerified,
    DownloadCorrupt(String),
    Installed(SlotImage),
    InstallFailed(String),
    BootloaderDone,
    BootloaderFailed(String),
    RebootFailed(String),
    Health(HealthOutcome),
    /// The server ended the deployment (`409`).
    Ended,
    ReportDelivered,
    /// The server refused the report for good (4xx other than 409).
    ReportRefused(String),
    ReportFailed(String),
}

/// The machine: the persisted record plus what it knows about the running system.
#[derive(Debug, Clone)]
pub struct UpdateMachine {
    options: MachineOptions,
    record: Record,
    status: Option<BootStatus>,
    running: Option<SlotImage>,
    inactive: Option<SlotImage>,
    /// Consecutive transient failures of the current step.
    failures: u32,
    next_check: u64,
}

impl UpdateMachine {
    /// A machine resuming `record` (or starting fresh with `None`); feed it [`Event::Started`].
    pub fn new(options: MachineOptions, record: Option<Record>) -> UpdateMachine {
        let mut record = record.unwrap_or_else(|| Record::new(None));
        record.security_floor =
            max_version(record.security_floor.take(), options.security_floor.clone());
        UpdateMachine {
            options,
            record,
            status: None,
            running: None,
            inactive: None,
            failures: 0,
            next_check: 0,
        }
    }

    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The job in progress.
    pub fn job(&self) -> Option<&Job> {
        self.record.job.as_ref()
    }

    /// The record with a download's progress, for the runner to persist while downloading.
    pub fn checkpoint(&self, bytes_done: u64, etag: Option<String>) -> Record {
        let mut record = self.record.clone();
        if let Some(Job {
            phase:
                Phase::Download {
                    bytes_done: b,
                    etag: e,
                    ..
                },
            ..
        }) = &mut record.job
        {
            *b = bytes_done;
            *e = etag;
        }
        record
    }

    /// The slot this boot came from, once the machine has started.
    pub fn booted_slot(&self) -> Option<super::slots::Slot> {
        self.status.as_ref().map(|s| s.booted)
    }

    /// The version of the running image, as far as known.
    pub fn running_version(&self) -> Option<Version> {
        self.running
            .as_ref()
            .map(|i| i.version.clone())
            .or_else(|| self.options.firmware.clone())
    }

    /// One step.
    pub fn on_event(&mut self, now: u64, event: Event) -> Vec<Action> {
        match event {
            Event::Started {
                status,
                running,
                inactive,
            } => {
                self.status = Some(status);
                self.running = running;
                self.inactive = inactive;
                self.failures = 0;
                self.resume(now)
            }
            Event::Ended => self.on_ended(now),
            event if self.record.job.is_none() => self.idle_event(now, event),
            event => self.job_event(now, event),
        }
    }

    // ---- restart ---------------------------------------------------------------------------

    fn resume(&mut self, now: u64) -> Vec<Action> {
        let status = self.status.clone().expect("started");
        let Some(job) = self.record.job.clone() else {
            if status.trying {
                // A slot on trial without a record of trying it (a lost record): never commit
                // what was not verified here; go back to the committed slot.
                warn!(
                    "slot {} is on trial but no update is recorded: rolling back",
                    status.booted
                );
                return vec![Action::Bootloader(BootOp::RollBack)];
            }
            self.next_check = now;
            return vec![Action::SleepUntil(now)];
        };
        let booted = self.booted(&job);
        let same_boot = job
            .env_changed
            .as_ref()
            .is_some_and(|(boot, _)| *boot == status.boot_id);
        match &job.phase {
            Phase::Metadata
            | Phase::Download { .. }
            | Phase::Downloaded { .. }
            | Phase::Install { .. } => {
                if booted != job.from {
                    return self.finish(
                        now,
                        DeploymentState::Failed,
                        FailureKind::Other,
                        format!(
                            "the device now runs slot {booted}, not slot {} where the update began",
                            job.from
                        ),
                    );
                }
                self.continue_phase(now)
            }
            Phase::MarkTryOnce | Phase::Reboot => {
                if same_boot {
                    self.mark_try_once(now)
                } else if booted == job.to() {
                    self.start_verify(now)
                } else {
                    self.enter_rollback(
                        now,
                        FailureKind::BootFailed,
                        format!(
                            "the new image in slot {} did not boot; the bootloader went back to slot {}",
                            job.to(),
                            job.from
                        ),
                    )
                }
            }
            Phase::Verify { boot_id, .. } => {
                if booted != job.to() {
                    self.enter_rollback(
                        now,
                        FailureKind::BootFailed,
                        format!(
                            "the device restarted before the new image in slot {} was committed \
                             (crash, watchdog or power loss); the bootloader went back to slot {}",
                            job.to(),
                            job.from
                        ),
                    )
                } else if *boot_id == status.boot_id {
                    self.check_health(now)
                } else {
                    self.start_verify(now)
                }
            }
            Phase::Commit => {
                if booted == job.to() {
                    vec![Action::Bootloader(BootOp::Commit)]
                } else {
                    self.enter_rollback(
                        now,
                        FailureKind::BootFailed,
                        format!(
                            "the device restarted before the commit of slot {} took effect; the \
                             bootloader went back to slot {}",
                            job.to(),
                            job.from
                        ),
                    )
                }
            }
            Phase::RollBack { .. } => self.continue_phase(now),
            Phase::Finish { report } => {
                let mut report = report.clone();
                if report.state == DeploymentState::Succeeded
                    && (booted != job.to() || status.trying)
                {
                    // Never report success for an image that is not the committed, running one.
                    report = DeploymentReport {
                        state: DeploymentState::RolledBack,
                        reason: Some(format!(
                            "the device left the new image in slot {} after committing it and \
                             runs slot {booted}",
                            job.to()
                        )),
                        failure: Some(FailureKind::BootFailed),
                        firmware: self.running_version(),
                        ..report
                    };
                    self.set_phase(Phase::Finish {
                        report: report.clone(),
                    });
                    return vec![
                        Action::Persist(self.record.clone()),
                        Action::SendFinal {
                            deployment: job.offer.deployment,
                            report,
                        },
                    ];
                }
                vec![Action::SendFinal {
                    deployment: job.offer.deployment,
                    report,
                }]
            }
        }
    }

    /// The slot that is running, given that the environment may have been changed in this boot.
    fn booted(&self, job: &Job) -> Slot {
        let status = self.status.as_ref().expect("started");
        match &job.env_changed {
            Some((boot, slot)) if *boot == status.boot_id => *slot,
            _ => status.booted,
        }
    }

    /// The actions that carry out the current phase (after a restart or a retry).
    fn continue_phase(&mut self, now: u64) -> Vec<Action> {
        let Some(job) = self.record.job.clone() else {
            return self.idle_event(now, Event::Woke);
        };
        match &job.phase {
            Phase::Metadata => vec![Action::VerifyMetadata {
                image: job.offer.image.target.clone(),
                delta: job.offer.delta.as_ref().map(|d| d.target.clone()),
            }],
            Phase::Download {
                delta,
                bytes_done,
                etag,
            } => {
                let (target, destination) = download_target(&job, *delta);
                vec![Action::Download {
                    target,
                    destination,
                    from: *bytes_done,
                    etag: etag.clone(),
                }]
            }
            Phase::Downloaded { delta } => self.downloaded(now, *delta),
            Phase::Install { delta } => vec![Action::Install {
                slot: job.to(),
                image: job.image.clone().expect("verified"),
                delta: if *delta { job.delta.clone() } else { None },
            }],
            Phase::MarkTryOnce => self.mark_try_once(now),
            Phase::Reboot => vec![Action::Reboot],
            Phase::Verify { .. } => self.check_health(now),
            Phase::Commit => vec![Action::Bootloader(BootOp::Commit)],
            Phase::RollBack { .. } => vec![Action::Bootloader(BootOp::RollBack)],
            Phase::Finish { report } => vec![Action::SendFinal {
                deployment: job.offer.deployment,
                report: report.clone(),
            }],
        }
    }

    // ---- idle ------------------------------------------------------------------------------

    fn idle_event(&mut self, now: u64, event: Event) -> Vec<Action> {
        match event {
            Event::Woke if now >= self.next_check => vec![Action::Check],
            Event::Woke => vec![Action::SleepUntil(self.next_check)],
            Event::Offered(offer) => self.accept(now, offer),
            Event::NoOffer => self.sleep_to_next_check(now),
            Event::CheckFailed(reason) => {
                debug!("update check failed: {reason}");
                self.sleep_to_next_check(now)
            }
            // The roll-back of a stray trial slot (see `resume`): reboot onto the committed slot
            // even if the write failed, since the bootloader gives up an uncommitted trial anyway.
            Event::BootloaderDone | Event::BootloaderFailed(_)
                if self.status.as_ref().is_some_and(|s| s.trying) =>
            {
                vec![Action::Reboot]
            }
            _ => self.sleep_to_next_check(now),
        }
    }

    fn sleep_to_next_check(&mut self, now: u64) -> Vec<Action> {
        self.next_check = now + ms(self.options.check_interval);
        vec![Action::SleepUntil(self.next_check)]
    }

    fn accept(&mut self, now: u64, offer: UpdateOffer) -> Vec<Action> {
        let Some(status) = self.status.clone() else {
            return vec![];
        };
        if status.trying {
            // Cannot happen after `resume`; never start an update from a slot on trial.
            return self.sleep_to_next_check(now);
        }
        info!(
            "deployment {}: offered {} (attempt {})",
            offer.deployment, offer.image.target, offer.attempt
        );
        if offer.update_type == UpdateType::Soft {
            debug!("soft update: rebooting as soon as it is installed (no reboot hook yet)");
        }
        self.failures = 0;
        self.record.job = Some(Job {
            offer,
            from: status.booted,
            from_version: self.running_version(),
            image: None,
            delta: None,
            env_changed: None,
            booted_new: false,
            phase: Phase::Metadata,
        });
        let mut actions = vec![Action::Persist(self.record.clone())];
        actions.extend(self.continue_phase(now));
        actions
    }

    // ---- a job -----------------------------------------------------------------------------

    fn job_event(&mut self, now: u64, event: Event) -> Vec<Action> {
        let job = self.record.job.clone().expect("a job");
        match (&job.phase, event) {
            (_, Event::Woke) => self.continue_phase(now),
            // Offers while busy: the server offers the same deployment until it ends.
            (_, Event::Offered(_) | Event::NoOffer | Event::CheckFailed(_)) => vec![],
            (Phase::Metadata, Event::MetadataVerified { image, delta }) => {
                self.failures = 0;
                self.on_metadata(now, job, image, delta)
            }
            (Phase::Metadata, Event::MetadataFailed { reason, transient }) => {
                if transient {
                    self.retry(now, FailureKind::DownloadFailed, reason)
                } else {
                    self.finish(
                        now,
                        DeploymentState::Failed,
                        FailureKind::VerificationFailed,
                        reason,
                    )
                }
            }
            (Phase::Download { delta, .. }, Event::DownloadDone { etag }) => {
                let delta = *delta;
                self.failures = 0;
                let (target, destination) = download_target(&job, delta);
                self.set_phase(Phase::Download {
                    delta,
                    bytes_done: target.length,
                    etag,
                });
                vec![
                    Action::Persist(self.record.clone()),
                    Action::VerifyDownload {
                        target,
                        destination,
                    },
                ]
            }
            (
                Phase::Download {
                    delta, bytes_done, ..
                },
                Event::DownloadFailed {
                    bytes_done: now_done,
                    etag,
                    reason,
                    transient,
                },
            ) => {
                let delta = *delta;
                if now_done > *bytes_done {
                    // Progress counts as a success: an unsteady link may take many sessions.
                    self.failures = 0;
                }
                self.set_phase(Phase::Download {
                    delta,
                    bytes_done: now_done,
                    etag,
                });
                let mut actions = vec![Action::Persist(self.record.clone())];
                if delta && (!transient || self.failures + 1 >= MAX_TRANSIENT_FAILURES) {
                    actions
                        .extend(self.delta_failed(now, format!("downloading the delta: {reason}")));
                } else if transient {
                    actions.extend(self.retry(now, FailureKind::DownloadFailed, reason));
                } else {
                    actions.extend(self.finish(
                        now,
                        DeploymentState::Failed,
                        FailureKind::DownloadFailed,
                        reason,
                    ));
                }
                actions
            }
            (Phase::Download { delta, .. }, Event::DownloadVerified) => {
                let delta = *delta;
                self.set_phase(Phase::Downloaded { delta });
                let mut actions = vec![
                    Action::Persist(self.record.clone()),
                    self.report(DeploymentState::Downloaded),
                ];
                actions.extend(self.downloaded(now, delta));
                actions
            }
            (Phase::Download { delta, .. }, Event::DownloadCorrupt(reason)) => {
                if *delta {
                    self.delta_failed(now, format!("the downloaded delta: {reason}"))
                } else {
                    self.finish(
                        now,
                        DeploymentState::Failed,
                        FailureKind::VerificationFailed,
                        format!("the downloaded image failed verification: {reason}"),
                    )
                }
            }
            (Phase::Install { .. }, Event::Installed(image)) => {
                self.inactive = Some(image);
                if job.offer.update_type == UpdateType::DownloadOnly {
                    return self.finish(
                        now,
                        DeploymentState::Downloaded,
                        FailureKind::Other,
                        String::new(),
                    );
                }
                self.mark_try_once(now)
            }
            (Phase::Install { delta }, Event::InstallFailed(reason)) => {
                if *delta {
                    self.delta_failed(now, format!("applying the delta: {reason}"))
                } else {
                    self.finish(
                        now,
                        DeploymentState::Failed,
                        FailureKind::InstallFailed,
                        format!("writing slot {}: {reason}", job.to()),
                    )
                }
            }
            (Phase::MarkTryOnce, Event::BootloaderDone) => {
                self.set_phase(Phase::Reboot);
                vec![
                    Action::Persist(self.record.clone()),
                    self.report(DeploymentState::Rebooting),
                    Action::Reboot,
                ]
            }
            (Phase::MarkTryOnce, Event::BootloaderFailed(reason)) => self.enter_rollback(
                now,
                FailureKind::InstallFailed,
                format!("cannot set slot {} to boot once: {reason}", job.to()),
            ),
            (Phase::Reboot, Event::RebootFailed(reason)) => self.enter_rollback(
                now,
                FailureKind::InstallFailed,
                format!("cannot reboot into slot {}: {reason}", job.to()),
            ),
            (Phase::Verify { deadline_ms, .. }, Event::Health(outcome)) => {
                let deadline_ms = *deadline_ms;
                match outcome {
                    _ if now > deadline_ms => self.watchdog_expired(now),
                    HealthOutcome::Healthy => {
                        self.set_phase(Phase::Commit);
                        vec![
                            Action::Persist(self.record.clone()),
                            Action::Bootloader(BootOp::Commit),
                        ]
                    }
                    HealthOutcome::Unhealthy(reason) => self.enter_rollback(
                        now,
                        FailureKind::HealthCheckFailed,
                        format!("the new image failed its health check: {reason}"),
                    ),
                    HealthOutcome::NotYet(reason) if now >= deadline_ms => self.enter_rollback(
                        now,
                        FailureKind::HealthCheckFailed,
                        format!(
                            "watchdog: the new image was not healthy within {} s ({reason})",
                            self.options.watchdog_timeout.as_secs()
                        ),
                    ),
                    HealthOutcome::NotYet(reason) => {
                        debug!("health check not passing yet: {reason}");
                        let at = (now + ms(self.options.health_retry)).min(deadline_ms);
                        vec![Action::SleepUntil(at)]
                    }
                }
            }
            (Phase::Commit, Event::BootloaderDone) => {
                // Committed: the new slot boots from now on and its floor applies.
                let image = job.image.clone().expect("verified");
                self.record.security_floor = max_version(
                    self.record.security_floor.take(),
                    image.custom.security_floor.clone(),
                );
                // `running` is already the new image (the boot into it refreshed the slots); the
                // bootloader is no longer in a try-once cycle, so the next offer may start at once.
                if let Some(status) = &mut self.status {
                    status.trying = false;
                }
                info!(
                    "deployment {}: committed {} in slot {}",
                    job.offer.deployment,
                    image.custom.version,
                    job.to()
                );
                self.finish(
                    now,
                    DeploymentState::Succeeded,
                    FailureKind::Other,
                    String::new(),
                )
            }
            (Phase::Commit, Event::BootloaderFailed(reason)) => self.enter_rollback(
                now,
                FailureKind::InstallFailed,
                format!("cannot commit slot {}: {reason}", job.to()),
            ),
            (
                Phase::RollBack { failure, reason },
                Event::BootloaderDone | Event::BootloaderFailed(_),
            ) => {
                // A failed roll-back write is not fatal: an uncommitted trial slot is given up by
                // the bootloader at the next boot anyway.
                let (failure, reason) = (*failure, reason.clone());
                if self.booted(&job) == job.to() {
                    return vec![Action::Reboot];
                }
                let state = if job.booted_new || failure == FailureKind::BootFailed {
                    DeploymentState::RolledBack
                } else {
                    DeploymentState::Failed
                };
                self.finish(now, state, failure, reason)
            }
            (Phase::RollBack { .. }, Event::RebootFailed(reason)) => {
                warn!("cannot reboot back to the previous slot: {reason}; retrying");
                self.failures += 1;
                vec![Action::SleepUntil(now + self.retry_delay())]
            }
            (Phase::Finish { .. }, Event::ReportDelivered) => self.drop_job(now),
            (Phase::Finish { .. }, Event::ReportRefused(reason)) => {
                warn!("the server refused the final report: {reason}");
                self.drop_job(now)
            }
            (Phase::Finish { .. }, Event::ReportFailed(reason)) => {
                self.failures += 1;
                debug!("final report not delivered: {reason}");
                vec![Action::SleepUntil(now + self.retry_delay())]
            }
            (phase, event) => {
                debug!("ignoring {event:?} in {phase:?}");
                vec![]
            }
        }
    }

    fn on_metadata(
        &mut self,
        now: u64,
        mut job: Job,
        image: VerifiedTarget,
        delta: Option<Result<VerifiedTarget, String>>,
    ) -> Vec<Action> {
        if let Some((kind, reason)) = self.refusal(&job, &image) {
            return self.finish(now, DeploymentState::Failed, kind, reason);
        }
        let delta = match delta {
            Some(Ok(delta)) => match self.delta_problem(&job, &image, &delta) {
                None => Some(delta),
                Some(problem) => {
                    info!("not using the offered delta: {problem}");
                    None
                }
            },
            Some(Err(reason)) => {
                info!("not using the offered delta: {reason}");
                None
            }
            None => None,
        };
        let already = self
            .inactive
            .as_ref()
            .is_some_and(|i| i.sha256 == image.sha256 && i.length == image.length);
        if !already {
            self.inactive = None;
        }
        job.image = Some(image);
        job.delta = delta.clone();
        if already {
            // A download-only deployment put this very image into the slot already; the install
            // step reads it back and hashes it again.
            job.phase = Phase::Install { delta: false };
            self.record.job = Some(job);
            return vec![
                Action::Persist(self.record.clone()),
                self.report(DeploymentState::Installing),
                Action::Install {
                    slot: self.job().expect("a job").to(),
                    image: self.job().and_then(|j| j.image.clone()).expect("verified"),
                    delta: None,
                },
            ];
        }
        job.phase = Phase::Download {
            delta: delta.is_some(),
            bytes_done: 0,
            etag: None,
        };
        self.record.job = Some(job);
        let mut actions = vec![
            Action::Persist(self.record.clone()),
            self.report(DeploymentState::Downloading),
        ];
        actions.extend(self.continue_phase(now));
        actions
    }

    /// Why the verified image must not be installed, if it must not.
    fn refusal(&self, job: &Job, image: &VerifiedTarget) -> Option<(FailureKind, String)> {
        let custom = &image.custom;
        if custom.kind != TargetKind::Full {
            return Some((
                FailureKind::VerificationFailed,
                format!("{} is signed as a delta, not a full image", image.target),
            ));
        }
        if image.target != job.offer.image.target {
            return Some((
                FailureKind::VerificationFailed,
                format!(
                    "verified {} instead of the offered {}",
                    image.target, job.offer.image.target
                ),
            ));
        }
        match &self.options.device_type {
            Some(t) if custom.device_types.iter().any(|d| d == t) => {}
            Some(t) => {
                return Some((
                    FailureKind::Incompatible,
                    format!(
                        "{} is signed for device types [{}], not {t}",
                        custom.version,
                        custom.device_types.join(", ")
                    ),
                ))
            }
            None => {
                return Some((
                    FailureKind::Incompatible,
                    "this device's type is not configured (device_type), so no image can be \
                     shown compatible"
                        .into(),
                ))
            }
        }
        if !custom.hw_revs.is_empty() {
            match &self.options.hw_rev {
                Some(rev) if custom.hw_revs.iter().any(|r| r == rev) => {}
                other => {
                    return Some((
                        FailureKind::Incompatible,
                        format!(
                            "{} is signed for hardware revisions [{}], not {}",
                            custom.version,
                            custom.hw_revs.join(", "),
                            other
                                .as_deref()
                                .unwrap_or("an unknown revision (hw_rev is not configured)")
                        ),
                    ))
                }
            }
        }
        if let Some(floor) = &self.record.security_floor {
            if custom.version < *floor {
                return Some((
                    FailureKind::BelowSecurityFloor,
                    format!(
                        "{} is below this device's security floor {floor}",
                        custom.version
                    ),
                ));
            }
        }
        if let Some(running) = self.running_version() {
            if custom.version <= running && !self.options.allow_downgrade {
                return Some((
                    FailureKind::BelowSecurityFloor,
                    format!(
                        "{} is not newer than the running {running}; downgrades and reinstalls \
                         are refused (allow_downgrade is off)",
                        custom.version
                    ),
                ));
            }
        }
        None
    }

    /// Why a verified delta cannot be used, if it cannot.
    fn delta_problem(
        &self,
        job: &Job,
        image: &VerifiedTarget,
        delta: &VerifiedTarget,
    ) -> Option<String> {
        if !self.options.delta {
            return Some("this agent has no delta support".into());
        }
        let custom = &delta.custom;
        if custom.kind != TargetKind::Delta {
            return Some(format!("{} is not signed as a delta", delta.target));
        }
        if custom.image_target.as_deref() != Some(image.target.as_str()) {
            return Some(format!(
                "{} does not produce {}",
                delta.target, image.target
            ));
        }
        let _ = job;
        match (&self.running, &custom.base_sha256) {
            (Some(running), Some(base)) if running.sha256 == *base => None,
            (None, _) => Some("the running image's hash is not known".into()),
            _ => Some(format!("{} applies to another base image", delta.target)),
        }
    }

    fn downloaded(&mut self, now: u64, delta: bool) -> Vec<Action> {
        // Download-only deployments are installed into the slot too (a delta's base may be gone
        // by the time the install is asked for); only the try-once and the reboot wait.
        let _ = now;
        let job = self.job().expect("a job").clone();
        self.set_phase(Phase::Install { delta });
        vec![
            Action::Persist(self.record.clone()),
            self.report(DeploymentState::Installing),
            Action::Install {
                slot: job.to(),
                image: job.image.clone().expect("verified"),
                delta: if delta { job.delta.clone() } else { None },
            },
        ]
    }

    /// The delta failed in some way: download the full image instead.
    fn delta_failed(&mut self, now: u64, reason: String) -> Vec<Action> {
        warn!("delta update failed ({reason}); downloading the full image");
        self.failures = 0;
        let job = self.record.job.as_mut().expect("a job");
        job.delta = None;
        job.phase = Phase::Download {
            delta: false,
            bytes_done: 0,
            etag: None,
        };
        let mut actions = vec![
            Action::Persist(self.record.clone()),
            self.report(DeploymentState::Downloading),
        ];
        actions.extend(self.continue_phase(now));
        actions
    }

    fn mark_try_once(&mut self, _now: u64) -> Vec<Action> {
        let boot_id = self.status.as_ref().expect("started").boot_id.clone();
        let job = self.record.job.as_mut().expect("a job");
        job.env_changed = Some((boot_id, job.from));
        job.phase = Phase::MarkTryOnce;
        let to = job.to();
        vec![
            Action::Persist(self.record.clone()),
            Action::Bootloader(BootOp::MarkTryOnce(to)),
        ]
    }

    fn start_verify(&mut self, now: u64) -> Vec<Action> {
        let boot_id = self.status.as_ref().expect("started").boot_id.clone();
        let deadline_ms = now + ms(self.options.watchdog_timeout);
        let job = self.record.job.as_mut().expect("a job");
        job.booted_new = true;
        job.phase = Phase::Verify {
            boot_id,
            deadline_ms,
        };
        vec![
            Action::Persist(self.record.clone()),
            self.report(DeploymentState::Verifying),
            Action::CheckHealth,
        ]
    }

    /// Runs the health checks, unless the watchdog deadline has passed.
    fn check_health(&mut self, now: u64) -> Vec<Action> {
        match &self.job().expect("a job").phase {
            Phase::Verify { deadline_ms, .. } if now > *deadline_ms => self.watchdog_expired(now),
            _ => vec![Action::CheckHealth],
        }
    }

    fn watchdog_expired(&mut self, now: u64) -> Vec<Action> {
        let reason = format!(
            "watchdog: the new image did not prove healthy within {} s",
            self.options.watchdog_timeout.as_secs()
        );
        self.enter_rollback(now, FailureKind::HealthCheckFailed, reason)
    }

    fn enter_rollback(&mut self, now: u64, failure: FailureKind, reason: String) -> Vec<Action> {
        warn!("update rolling back: {reason}");
        let status = self.status.clone().expect("started");
        let job = self.record.job.clone().expect("a job");
        let booted = self.booted(&job);
        let job = self.record.job.as_mut().expect("a job");
        job.env_changed = Some((status.boot_id, booted));
        job.phase = Phase::RollBack { failure, reason };
        let _ = now;
        vec![
            Action::Persist(self.record.clone()),
            Action::Bootloader(BootOp::RollBack),
        ]
    }

    /// Ends the job with `state`; the report goes out (and is retried) from [`Phase::Finish`].
    fn finish(
        &mut self,
        _now: u64,
        state: DeploymentState,
        failure: FailureKind,
        reason: String,
    ) -> Vec<Action> {
        let job = self.record.job.clone().expect("a job");
        let running_new = self.booted(&job) == job.to();
        let firmware = if running_new {
            job.to_version()
        } else {
            job.from_version.clone()
        };
        let failed = matches!(state, DeploymentState::Failed | DeploymentState::RolledBack);
        if failed {
            warn!(
                "deployment {} {}: {reason}",
                job.offer.deployment,
                state.as_str()
            );
        }
        let report = DeploymentReport {
            state,
            reason: failed.then_some(reason),
            failure: failed.then_some(failure),
            bytes_done: None,
            firmware,
            used_delta: Some(job.delta.is_some()),
        };
        debug_assert!(
            state != DeploymentState::Succeeded || running_new,
            "success is only decided on the new slot, right after its commit"
        );
        self.set_phase(Phase::Finish {
            report: report.clone(),
        });
        vec![
            Action::Persist(self.record.clone()),
            Action::CleanUp,
            Action::SendFinal {
                deployment: job.offer.deployment,
                report,
            },
        ]
    }

    fn drop_job(&mut self, now: u64) -> Vec<Action> {
        self.record.job = None;
        self.failures = 0;
        let mut actions = vec![Action::Persist(self.record.clone())];
        actions.extend(self.sleep_to_next_check(now));
        actions
    }

    /// The server ended the deployment (409 on a report).
    fn on_ended(&mut self, now: u64) -> Vec<Action> {
        let Some(job) = &self.record.job else {
            return vec![];
        };
        match job.phase {
            Phase::Metadata
            | Phase::Download { .. }
            | Phase::Downloaded { .. }
            | Phase::Install { .. } => {
                info!(
                    "deployment {}: ended by the server; staying on slot {}",
                    job.offer.deployment, job.from
                );
                let mut actions = vec![Action::CleanUp];
                actions.extend(self.drop_job(now));
                actions
            }
            Phase::Finish { .. } => self.drop_job(now),
            // Past the point of no return: the update runs to its end (see the module doc).
            _ => vec![],
        }
    }

    fn retry(&mut self, now: u64, kind: FailureKind, reason: String) -> Vec<Action> {
        self.failures += 1;
        if self.failures >= MAX_TRANSIENT_FAILURES {
            return self.finish(
                now,
                DeploymentState::Failed,
                kind,
                format!("gave up after {} attempts: {reason}", self.failures),
            );
        }
        debug!("update step failed ({reason}); retrying");
        vec![Action::SleepUntil(now + self.retry_delay())]
    }

    fn retry_delay(&self) -> u64 {
        let delay = ms(FIRST_RETRY).saturating_mul(1 << self.failures.saturating_sub(1).min(16));
        delay.min(ms(self.options.check_interval).max(ms(FIRST_RETRY)))
    }

    fn set_phase(&mut self, phase: Phase) {
        self.record.job.as_mut().expect("a job").phase = phase;
    }

    /// A best-effort progress report.
    fn report(&self, state: DeploymentState) -> Action {
        let job = self.job().expect("a job");
        let firmware = match state {
            DeploymentState::Verifying => job.to_version(),
            _ => job.from_version.clone(),
        };
        let bytes_done = match (&job.phase, state) {
            (Phase::Download { bytes_done, .. }, DeploymentState::Downloading) => Some(*bytes_done),
            _ => None,
        };
        Action::Report {
            deployment: job.offer.deployment,
            report: DeploymentReport {
                state,
                reason: None,
                failure: None,
                bytes_done,
                firmware,
                used_delta: Some(job.delta.is_some()),
            },
        }
    }
}

/// What a download phase fetches, and where to.
fn download_target(job: &Job, delta: bool) -> (VerifiedTarget, Destination) {
    if delta {
        (
            job.delta.clone().expect("a verified delta"),
            Destination::DeltaFile,
        )
    } else {
        (
            job.image.clone().expect("a verified image"),
            Destination::Slot(job.to()),
        )
    }
}

fn max_version(a: Option<Version>, b: Option<Version>) -> Option<Version> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b > a { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn ms(duration: Duration) -> u64 {
    duration.as_millis() as u64
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
