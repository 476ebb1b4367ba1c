//! The A/B slot pair behind one trait, [`SlotBackend`]: which slot booted, what the bootloader
//! will boot next, writing and reading the inactive slot, and the try-once / commit / roll-back
//! protocol the bootloader implements (U-Boot's `bootcount` / `bootlimit` / `upgrade_available`,
//! or the same variables in GRUB's environment block).
//!
//! The protocol, the same on every backend:
//! - [`SlotBackend::mark_try_once`] makes the bootloader boot the other slot on the next boot
//!   only (`boot_part = new`, `upgrade_available = 1`, `bootcount = 0`, in one environment write).
//! - On every boot with `upgrade_available = 1` the bootloader increments `bootcount`; once it
//!   exceeds `bootlimit` it switches `boot_part` back and clears `upgrade_available`. So a slot that
//!   does not boot, or is not committed before the next reboot, is left behind.
//! - [`SlotBackend::commit`] clears `upgrade_available` while running the new slot: it becomes
//!   the slot that boots from now on. [`SlotBackend::roll_back`] points `boot_part` back at the
//!   committed slot and clears `upgrade_available`, for the next reboot.
//!
//! Backends: [`simulated`] (files and an in-process bootloader, for tests and the simulator),
//! [`env`] with [`env::UbootEnv`] (`fw_printenv` / `fw_setenv`) and [`env::GrubEnv`]
//! (`grub-editenv`) for real devices. What each slot holds (version, length, sha256 of the
//! verified image) is kept beside it by [`SlotInfoStore`], written only after the image was
//! verified and cleared before the slot is overwritten.

pub mod env;
pub mod simulated;

use std::fs::File;
use std::path::{Path, PathBuf};

use drover_core::Version;
use serde::{Deserialize, Serialize};

use super::persist::{self, PersistError};

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    /// The slot that is not this one.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `a` or `b`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// Parses `a` or `b` (either case).
    pub fn parse(text: &str) -> Option<Slot> {
        match text.trim() {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the device runs and what the bootloader will do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootStatus {
    /// The slot this boot came from.
    pub booted: Slot,
    /// Whether the bootloader is in a try-once cycle (`upgrade_available = 1`): the slot it
    /// points at is on trial and is given up unless committed before the next reboot.
    pub trying: bool,
    /// Identifies this boot: it changes on every boot and on nothing else (Linux's
    /// `/proc/sys/kernel/random/boot_id`; the simulated bootloader counts its boots).
    pub boot_id: String,
}

/// The verified image a slot holds, recorded once the bytes were verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotImage {
    /// The signed `TargetCustom.version`.
    pub version: Version,
    /// Length of the image in bytes (a block device is larger than its image).
    pub length: u64,
    /// Lower-case hex sha256 of the first `length` bytes.
    pub sha256: String,
    /// The TUF target it came from, for the log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// What a reboot did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebooted {
    /// The simulated device has rebooted in-process: run the boot procedure again.
    InProcess,
    /// The system is going down: stop and wait to be killed.
    Requested,
}

/// Why a slot operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Command(String),
    #[error("the bootloader environment is not usable: {0}")]
    Env(String),
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// The A/B pair and its bootloader.
pub trait SlotBackend: Send {
    /// Which slot booted, whether it is on trial, and this boot's id.
    fn status(&mut self) -> Result<BootStatus, SlotError>;

    /// Opens a slot's image for writing (`write`; never the booted slot) or reading. Files and
    /// block devices alike: the caller seeks, writes, and `sync_all`s.
    fn open(&mut self, slot: Slot, write: bool) -> Result<File, SlotError>;

    /// The verified image recorded for `slot`, if any.
    fn image(&mut self, slot: Slot) -> Result<Option<SlotImage>, SlotError>;

    /// Records (after verification) or clears (before overwriting) what `slot` holds.
    fn set_image(&mut self, slot: Slot, image: Option<&SlotImage>) -> Result<(), SlotError>;

    /// Boots `slot` on the next boot only. Idempotent.
    fn mark_try_once(&mut self, slot: Slot) -> Result<(), SlotError>;

    /// Makes the booted slot the committed one. Idempotent.
    fn commit(&mut self) -> Result<(), SlotError>;

    /// Points the bootloader back at the committed slot and ends the try-once cycle, for the next
    /// reboot. Idempotent; nothing to do outside a try-once cycle.
    fn roll_back(&mut self) -> Result<(), SlotError>;

    /// Reboots the device.
    fn reboot(&mut self) -> Result<Rebooted, SlotError>;

    /// A backend's own post-boot check of the booted image: the simulated backend fails images
    /// carrying [`simulated::HEALTH_FAIL_MARKER`]. Real backends have none.
    fn self_test(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// [`SlotImage`] records in a directory: `slot-a.json`, `slot-b.json`, each written atomically.
#[derive(Debug, Clone)]
pub struct SlotInfoStore {
    dir: PathBuf,
}

impl SlotInfoStore {
    pub fn new(dir: impl Into<PathBuf>) -> SlotInfoStore {
        SlotInfoStore { dir: dir.into() }
    }

    fn path(&self, slot: Slot) -> PathBuf {
        self.dir.join(format!("slot-{slot}.json"))
    }

    /// The record; a corrupt one counts as none (the slot is then treated as unverified).
    pub fn get(&self, slot: Slot) -> Result<Option<SlotImage>, SlotError> {
        let path = self.path(slot);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SlotError::Io {
                action: "read",
                path,
                source,
            }),
        }
    }

    pub fn set(&self, slot: Slot, image: Option<&SlotImage>) -> Result<(), SlotError> {
        let path = self.path(slot);
        match image {
            Some(image) => {
                let bytes = serde_json::to_vec_pretty(image).expect("a slot image serialises");
                persist::write_atomic(&path, &bytes)?;
            }
            None => persist::remove_durably(&path)?,
        }
        Ok(())
    }
}

/// Opens a slot's file or block device without truncating it (a block device cannot be).
pub(crate) fn open_image(path: &Path, write: bool) -> Result<File, SlotError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .create(write && !path.starts_with("/dev"))
        .truncate(false)
        .open(path)
        .map_err(|source| SlotError::Io {
            action: if write { "open for writing" } else { "open" },
            path: path.to_owned(),
            source,
        })
}
