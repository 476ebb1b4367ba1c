//! Carries out the [`UpdateMachine`]'s actions, one per [`UpdateRunner::step`], with the slot
//! backend, the update store, the server ([`UpdateClient`]), the TUF [`Verifier`], the
//! [`DeltaApplier`] and the health checks; feeds what happened back to the machine. Time comes
//! from a [`Clock`] the caller supplies, so tests step through an update without sleeping.
//!
//! A step that changes course (an event the machine answers with new actions) replaces the rest
//! of the batch; the machine puts the one action that answers with an event last in each batch,
//! except reports, whose `409` is meant to change course.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use super::client::{ReportOutcome, UpdateClient};
use super::health::HealthChecker;
use super::machine::{Action, BootOp, Destination, Event, MachineOptions, UpdateMachine};
use super::persist::{Loaded, PersistError, UpdateStore};
use super::slots::{Rebooted, Slot, SlotBackend, SlotError, SlotImage};
use super::verify::{DeltaApplier, MetadataSource, Verifier, VerifyError};
use crate::transport::TransportError;

/// How many downloaded bytes between two persisted checkpoints.
pub const CHECKPOINT_EVERY: u64 = 4 << 20;

/// Milliseconds on a clock that is monotonic within one boot (and shared by every process of that
/// boot, so a restarted agent keeps its deadlines).
pub trait Clock: Send {
    fn now_ms(&self) -> u64;
}

/// Linux's `CLOCK_BOOTTIME`: time since boot, suspend included.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootClock;

impl Clock for BootClock {
    fn now_ms(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into the value we own.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
    }
}

/// Everything the runner works with.
pub struct RunnerParts {
    pub store: UpdateStore,
    pub slots: Box<dyn SlotBackend>,
    pub client: Box<dyn UpdateClient>,
    pub verifier: Box<dyn Verifier>,
    pub delta: Option<Box<dyn DeltaApplier>>,
    pub health: HealthChecker,
    pub clock: Box<dyn Clock>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Carried out one action; step again.
    Acted,
    /// Nothing to do before this time ([`Clock::now_ms`]); an offer pushed over MQTT may come
    /// earlier ([`UpdateRunner::offer`]).
    Sleep(u64),
    /// The device is rebooting: stop.
    Halted,
}

/// Why the runner cannot go on (the update thread starts it again later, from the record).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("the slots: {0}")]
    Slots(#[from] SlotError),
}

/// The update machine at work.
pub struct UpdateRunner {
    options: MachineOptions,
    parts: RunnerParts,
    machine: UpdateMachine,
    queue: VecDeque<Action>,
}

impl UpdateRunner {
    /// Loads the record and runs the boot procedure (what booted, what the record says).
    pub fn start(options: MachineOptions, parts: RunnerParts) -> Result<UpdateRunner, RunnerError> {
        let machine = UpdateMachine::new(options.clone(), None);
        let mut runner = UpdateRunner {
            options,
            parts,
            machine,
            queue: VecDeque::new(),
        };
        runner.boot()?;
        Ok(runner)
    }

    pub fn machine(&self) -> &UpdateMachine {
        &self.machine
    }

    /// The slot backend (for tests and the simulator).
    pub fn slots(&mut self) -> &mut dyn SlotBackend {
        &mut *self.parts.slots
    }

    /// An offer pushed by the server (MQTT); taken only while no update is in progress.
    pub fn offer(&mut self, offer: drover_proto::update::UpdateOffer) {
        if self.machine.job().is_none() {
            self.feed(Event::Offered(offer));
        }
    }

    /// Carries out the next action.
    pub fn step(&mut self) -> Result<Step, RunnerError> {
        let Some(action) = self.queue.pop_front() else {
            self.feed(Event::Woke);
            return Ok(Step::Acted);
        };
        let event = match action {
            Action::SleepUntil(at) => {
                if self.parts.clock.now_ms() < at {
                    self.queue.push_front(Action::SleepUntil(at));
                    return Ok(Step::Sleep(at));
                }
                Some(Event::Woke)
            }
            Action::Reboot => match self.parts.slots.reboot() {
                Ok(Rebooted::InProcess) => {
                    self.boot()?;
                    return Ok(Step::Acted);
                }
                Ok(Rebooted::Requested) => {
                    info!("rebooting");
                    self.queue.clear();
                    return Ok(Step::Halted);
                }
                Err(e) => Some(Event::RebootFailed(e.to_string())),
            },
            action => self.act(action)?,
        };
        if let Some(event) = event {
            self.feed(event);
        }
        Ok(Step::Acted)
    }

    /// The boot procedure: reload the record, read the slots, and tell the machine.
    fn boot(&mut self) -> Result<(), RunnerError> {
        let record = match self.parts.store.load()? {
            Loaded::Record(record) => Some(record),
            Loaded::Missing => None,
            Loaded::Corrupt(reason) => {
                warn!("{reason}; starting without an update in progress");
                None
            }
        };
        self.machine = UpdateMachine::new(self.options.clone(), record);
        let slots = &mut self.parts.slots;
        let status = slots.status()?;
        let running = slots.image(status.booted)?;
        let inactive = slots.image(status.booted.other())?;
        self.queue.clear();
        self.feed(Event::Started {
            status,
            running,
            inactive,
        });
        Ok(())
    }

    fn feed(&mut self, event: Event) {
        let now = self.parts.clock.now_ms();
        let actions = self.machine.on_event(now, event);
        if !actions.is_empty() {
            self.queue = actions.into();
        }
    }

    fn act(&mut self, action: Action) -> Result<Option<Event>, RunnerError> {
        let parts = &mut self.parts;
        Ok(match action {
            Action::Persist(record) => {
                parts.store.save(&record)?;
                None
            }
            Action::Report { deployment, report } => {
                match parts.client.report(deployment, &report) {
                    Ok(ReportOutcome::Accepted) => None,
                    Ok(ReportOutcome::Ended) => Some(Event::Ended),
                    Err(e) => {
                        debug!(
                            "deployment {deployment}: {} not reported: {e}",
                            report.state.as_str()
                        );
                        None
                    }
                }
            }
            Action::SendFinal { deployment, report } => {
                Some(match parts.client.report(deployment, &report) {
                    Ok(ReportOutcome::Accepted) => Event::ReportDelivered,
                    Ok(ReportOutcome::Ended) => Event::Ended,
                    Err(e @ TransportError::Rejected { .. }) => Event::ReportRefused(e.to_string()),
                    Err(e) => Event::ReportFailed(e.to_string()),
                })
            }
            Action::Check => Some(match parts.client.next_offer() {
                Ok(Some(offer)) => Event::Offered(offer),
                Ok(None) => Event::NoOffer,
                Err(e) => Event::CheckFailed(e.to_string()),
            }),
            Action::VerifyMetadata { image, delta } => {
                let mut source = Source(&mut *parts.client);
                let verified = parts
                    .verifier
                    .refresh(&mut source)
                    .and_then(|()| parts.verifier.verify_target(&image));
                Some(match verified {
                    Ok(image) => Event::MetadataVerified {
                        image,
                        delta: delta
                            .map(|d| parts.verifier.verify_target(&d).map_err(|e| e.to_string())),
                    },
                    Err(e) => Event::MetadataFailed {
                        transient: matches!(e, VerifyError::Fetch(_)),
                        reason: e.to_string(),
                    },
                })
            }
            Action::Download {
                target,
                destination,
                from,
                etag,
            } => {
                if from == 0 {
                    if let Destination::Slot(slot) = destination {
                        // The slot stops holding a verified image the moment it is overwritten.
                        parts.slots.set_image(slot, None)?;
                    }
                }
                let mut file = match open_destination(parts, destination, true) {
                    Ok(file) => file,
                    Err(e) => {
                        return Ok(Some(Event::DownloadFailed {
                            bytes_done: from,
                            etag,
                            reason: e,
                            transient: false,
                        }))
                    }
                };
                if from >= target.length {
                    return Ok(Some(Event::DownloadDone { etag }));
                }
                let mut writer = Checkpointing {
                    file: &mut file,
                    position: from,
                    last_checkpoint: from,
                    checkpoint: &mut |bytes_done| {
                        parts
                            .store
                            .save(&self.machine.checkpoint(bytes_done, etag.clone()))
                    },
                };
                let result = parts.client.download(
                    &target.target,
                    &target.sha256,
                    target.length,
                    from,
                    etag.as_deref(),
                    &mut writer,
                );
                let position = writer.position;
                let synced = file.sync_all();
                Some(match (result, synced) {
                    (Ok(download), Ok(())) => {
                        if !download.honoured && from > 0 {
                            info!("the server did not resume the download; it started over");
                        }
                        Event::DownloadDone {
                            etag: download.etag,
                        }
                    }
                    (Ok(_), Err(e)) => Event::DownloadFailed {
                        bytes_done: 0,
                        etag: None,
                        reason: format!("cannot sync the download: {e}"),
                        transient: false,
                    },
                    (Err(e), synced) => Event::DownloadFailed {
                        bytes_done: if synced.is_ok() { position } else { 0 },
                        etag,
                        transient: e.is_transient(),
                        reason: e.to_string(),
                    },
                })
            }
            Action::VerifyDownload {
                target,
                destination,
            } => {
                let result = open_destination(parts, destination, false)
                    .and_then(|mut file| check_hash(&mut file, target.length, &target.sha256));
                Some(match result {
                    Ok(()) => Event::DownloadVerified,
                    Err(reason) => Event::DownloadCorrupt(reason),
                })
            }
            Action::Install { slot, image, delta } => {
                parts.slots.set_image(slot, None)?;
                let installed = install(parts, slot, &image, delta.is_some()).and_then(|()| {
                    let mut file = parts.slots.open(slot, false).map_err(|e| e.to_string())?;
                    check_hash(&mut file, image.length, &image.sha256)
                        .map_err(|e| format!("read back from slot {slot}: {e}"))
                });
                Some(match installed {
                    Ok(()) => {
                        let record = SlotImage {
                            version: image.custom.version.clone(),
                            length: image.length,
                            sha256: image.sha256.clone(),
                            target: Some(image.target.clone()),
                        };
                        parts.slots.set_image(slot, Some(&record))?;
                        Event::Installed(record)
                    }
                    Err(reason) => Event::InstallFailed(reason),
                })
            }
            Action::Bootloader(op) => {
                let result = match op {
                    BootOp::MarkTryOnce(slot) => parts.slots.mark_try_once(slot),
                    BootOp::Commit => parts.slots.commit(),
                    BootOp::RollBack => parts.slots.roll_back(),
                };
                Some(match result {
                    Ok(()) => Event::BootloaderDone,
                    Err(e) => Event::BootloaderFailed(e.to_string()),
                })
            }
            Action::CheckHealth => {
                let version = self
                    .machine
                    .job()
                    .and_then(|j| j.image.as_ref())
                    .map(|i| i.custom.version.to_string())
                    .unwrap_or_default();
                let self_test = parts.slots.self_test();
                Some(Event::Health(parts.health.check(self_test, &version)))
            }
            Action::CleanUp => {
                let _ = std::fs::remove_file(parts.store.delta_path());
                None
            }
            Action::SleepUntil(_) | Action::Reboot => unreachable!("handled by step"),
        })
    }
}

/// The client as a metadata source for the verifier.
struct Source<'a>(&'a mut dyn UpdateClient);

impl MetadataSource for Source<'_> {
    fn fetch_metadata(&mut self, name: &str) -> Result<Option<Vec<u8>>, TransportError> {
        self.0.fetch_metadata(name)
    }
}

fn open_destination(
    parts: &mut RunnerParts,
    destination: Destination,
    write: bool,
) -> Result<File, String> {
    match destination {
        Destination::Slot(slot) => parts.slots.open(slot, write).map_err(|e| e.to_string()),
        Destination::DeltaFile => {
            let path = parts.store.delta_path();
            std::fs::OpenOptions::new()
                .read(true)
                .write(write)
                .create(write)
                .truncate(false)
                .open(&path)
                .map_err(|e| format!("cannot open {}: {e}", path.display()))
        }
    }
}

/// Writes the image into `slot`: applies the delta, or (a full image) checks it is there.
fn install(
    parts: &mut RunnerParts,
    slot: Slot,
    image: &super::verify::VerifiedTarget,
    delta: bool,
) -> Result<(), String> {
    if !delta {
        // The full image was downloaded straight into the slot; the read-back below checks it.
        let _ = image;
        return Ok(());
    }
    let applier = parts
        .delta
        .as_ref()
        .ok_or("this agent has no delta support")?;
    let mut old = parts
        .slots
        .open(slot.other(), false)
        .map_err(|e| e.to_string())?;
    let patch_path = parts.store.delta_path();
    let mut patch = File::open(&patch_path)
        .map_err(|e| format!("cannot open {}: {e}", patch_path.display()))?;
    let mut out = parts.slots.open(slot, true).map_err(|e| e.to_string())?;
    out.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut writer = std::io::BufWriter::new(&mut out);
    applier
        .apply(&mut old, &mut patch, &mut writer)
        .map_err(|e| e.to_string())?;
    writer.flush().map_err(|e| e.to_string())?;
    drop(writer);
    out.sync_all()
        .map_err(|e| format!("cannot sync slot {slot}: {e}"))
}

/// Hashes the first `length` bytes of `file` against `sha256`.
fn check_hash(file: &mut File, length: u64, sha256: &str) -> Result<(), String> {
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = length;
    let mut reader = file.take(length);
    while left > 0 {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("{left} of the signed {length} bytes are missing"));
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let actual = super::hex(&hasher.finalize());
    if actual != sha256 {
        return Err(format!("sha256 {actual} differs from the signed {sha256}"));
    }
    Ok(())
}

/// A download's writer that syncs and persists its progress every [`CHECKPOINT_EVERY`] bytes.
struct Checkpointing<'a> {
    file: &'a mut File,
    position: u64,
    last_checkpoint: u64,
    checkpoint: &'a mut dyn FnMut(u64) -> Result<(), PersistError>,
}

impl Write for Checkpointing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.position += n as u64;
        if self.position >= self.last_checkpoint + CHECKPOINT_EVERY {
            // The bytes are durable before the record says they are there.
            self.file.sync_data()?;
            (self.checkpoint)(self.position).map_err(std::io::Error::other)?;
            self.last_checkpoint = self.position;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Checkpointing<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.position = self.file.seek(pos)?;
        self.last_checkpoint = self.last_checkpoint.min(self.position);
        Ok(self.position)
    }
}
