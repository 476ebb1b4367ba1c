//! A simulated A/B device for tests, the simulator and the README demo: a directory holding the
//! two slot images `a.img` and `b.img`, their records `slot-a.json` / `slot-b.json`, and the
//! bootloader environment `bootenv.json` (written atomically), plus a bootloader that behaves like
//! U-Boot's bootcount / bootlimit logic.
//!
//! Booting ([`SimulatedSlots::power_cycle`], and [`SlotBackend::reboot`], which reboots
//! in-process: the caller runs its boot procedure again afterwards):
//! - with `upgrade_available` set, `bootcount` is incremented, and once it exceeds `bootlimit`
//!   (1 by default) the bootloader switches `boot_part` back to the other slot and clears
//!   `upgrade_available`; so a try-once slot boots once, and falls back on the next boot unless
//!   it was committed;
//! - an image whose bytes contain [`BOOT_FAIL_MARKER`] (`DROVER-SIM-BOOT-FAIL`), or an empty
//!   slot, "does not boot": the simulated hardware watchdog resets the device and the bootloader
//!   tries again, which falls back as above;
//! - an image whose bytes contain [`HEALTH_FAIL_MARKER`] (`DROVER-SIM-HEALTH-FAIL`) boots but
//!   fails [`SlotBackend::self_test`], which the post-boot health check runs first.
//!
//! The slot that booted is recorded in the environment file too (`booted`), standing in for
//! what a real device reads from its kernel command line.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{
    open_image, BootStatus, Rebooted, Slot, SlotBackend, SlotError, SlotImage, SlotInfoStore,
};
use crate::update::persist;

/// Bytes that make a simulated image fail to boot.
pub const BOOT_FAIL_MARKER: &[u8] = b"DROVER-SIM-BOOT-FAIL";
/// Bytes that make a simulated image fail its post-boot health check.
pub const HEALTH_FAIL_MARKER: &[u8] = b"DROVER-SIM-HEALTH-FAIL";
/// What a fresh simulated device's slot `a` holds.
pub const FACTORY_IMAGE: &[u8] = b"DROVER SIMULATED FACTORY IMAGE\n";
/// The simulated bootloader environment's file name.
pub const ENV_FILE: &str = "bootenv.json";

/// The simulated bootloader environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimEnv {
    /// The slot the bootloader boots.
    pub boot_part: Slot,
    /// A try-once cycle is in progress.
    pub upgrade_available: bool,
    /// Boots since the try-once was set.
    pub bootcount: u32,
    /// Boots a try-once slot gets before the bootloader gives it up.
    pub bootlimit: u32,
    /// Counts boots; the boot id.
    pub boot_seq: u64,
    /// The slot that is running (the simulated kernel command line).
    pub booted: Slot,
}

impl SimEnv {
    /// A fresh device's environment: slot `a`, committed, not booted yet.
    pub fn factory() -> SimEnv {
        SimEnv {
            boot_part: Slot::A,
            upgrade_available: false,
            bootcount: 0,
            bootlimit: 1,
            boot_seq: 0,
            booted: Slot::A,
        }
    }

    /// What the running system can tell about this boot.
    pub fn status(&self) -> BootStatus {
        BootStatus {
            booted: self.booted,
            trying: self.upgrade_available && self.boot_part == self.booted,
            boot_id: format!("sim-{}", self.boot_seq),
        }
    }

    /// Boots `slot` once on the next boot; refused for the running slot.
    pub fn mark_try_once(&mut self, slot: Slot) -> Result<(), SlotError> {
        if slot == self.booted {
            return Err(SlotError::Env(format!(
                "cannot try slot {slot} once: it is running"
            )));
        }
        self.boot_part = slot;
        self.upgrade_available = true;
        self.bootcount = 0;
        Ok(())
    }

    /// Keeps the slot on trial, if it is the running one; `false` when nothing changed.
    pub fn commit(&mut self) -> bool {
        if self.upgrade_available && self.boot_part == self.booted {
            self.upgrade_available = false;
            self.bootcount = 0;
            return true;
        }
        false
    }

    /// Gives up the slot on trial; `false` when nothing was on trial.
    pub fn roll_back(&mut self) -> bool {
        if self.upgrade_available {
            self.boot_part = self.boot_part.other();
            self.upgrade_available = false;
            self.bootcount = 0;
            return true;
        }
        false
    }

    /// One power cycle of the bootloader's bootcount / bootlimit logic: `boots` says whether a
    /// slot's image comes up. Returns the slot that booted, or `None` when the committed slot
    /// does not boot either (a bricked device, which the update protocol must never produce).
    pub fn power_cycle<E>(
        &mut self,
        mut boots: impl FnMut(Slot) -> Result<bool, E>,
    ) -> Result<Option<Slot>, E> {
        // Each failed boot counts against the try-once slot, so this ends within bootlimit + 1.
        for _ in 0..=self.bootlimit.saturating_add(1) {
            self.boot_seq += 1;
            if self.upgrade_available {
                self.bootcount += 1;
                if self.bootcount > self.bootlimit {
                    self.boot_part = self.boot_part.other();
                    self.upgrade_available = false;
                }
            }
            let slot = self.boot_part;
            if boots(slot)? {
                self.booted = slot;
                return Ok(Some(slot));
            }
            if !self.upgrade_available {
                break;
            }
        }
        Ok(None)
    }
}

/// The simulated slot pair in a directory.
#[derive(Debug, Clone)]
pub struct SimulatedSlots {
    dir: PathBuf,
    info: SlotInfoStore,
}

impl SimulatedSlots {
    /// The device in `dir` (created when missing: a fresh device whose factory image in slot `a`
    /// has no record, so it runs the configured `firmware`); a directory without an environment
    /// gets one that boots slot `a` (which is then booted once).
    pub fn open(dir: impl Into<PathBuf>) -> Result<SimulatedSlots, SlotError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| SlotError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let slots = SimulatedSlots {
            info: SlotInfoStore::new(&dir),
            dir,
        };
        if !slots.env_path().exists() {
            for slot in [Slot::A, Slot::B] {
                open_image(&slots.image_path(slot), true)?;
            }
            // A fresh device ships with a factory image in slot a (an empty slot does not boot).
            let factory = slots.image_path(Slot::A);
            if std::fs::metadata(&factory).map_or(true, |m| m.len() == 0) {
                persist::write_atomic(&factory, FACTORY_IMAGE)?;
            }
            slots.save_env(&SimEnv::factory())?;
            slots.power_cycle()?;
        }
        Ok(slots)
    }

    /// A fresh device in `dir` whose slot `a` holds `image` (of `version`), committed and booted.
    pub fn create(
        dir: impl Into<PathBuf>,
        image: &[u8],
        version: drover_core::Version,
    ) -> Result<SimulatedSlots, SlotError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| SlotError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("a.img");
        persist::write_atomic(&path, image)?;
        let info = SlotInfoStore::new(&dir);
        info.set(
            Slot::A,
            Some(&SlotImage {
                version,
                length: image.len() as u64,
                sha256: crate::update::sha256_hex(image),
                target: None,
            }),
        )?;
        let _ = std::fs::remove_file(dir.join(ENV_FILE));
        SimulatedSlots::open(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file holding `slot`'s image.
    pub fn image_path(&self, slot: Slot) -> PathBuf {
        self.dir.join(format!("{slot}.img"))
    }

    fn env_path(&self) -> PathBuf {
        self.dir.join(ENV_FILE)
    }

    /// The environment as the bootloader left it.
    pub fn env(&self) -> Result<SimEnv, SlotError> {
        let path = self.env_path();
        let bytes = std::fs::read(&path).map_err(|source| SlotError::Io {
            action: "read",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| SlotError::Env(format!("{}: {e}", path.display())))
    }

    fn save_env(&self, env: &SimEnv) -> Result<(), SlotError> {
        let bytes = serde_json::to_vec_pretty(env).expect("the environment serialises");
        persist::write_atomic(&self.env_path(), &bytes)?;
        Ok(())
    }

    /// Turns the simulated device off and on: the bootloader picks a slot (see the module doc).
    /// Fails only when the committed slot does not boot either (a bricked device, which the
    /// update protocol must never produce).
    pub fn power_cycle(&self) -> Result<Slot, SlotError> {
        let mut env = self.env()?;
        let booted = env.power_cycle(|slot| self.boots(slot))?;
        self.save_env(&env)?;
        booted.ok_or_else(|| {
            SlotError::Env(format!(
                "the simulated device is bricked: committed slot {} does not boot",
                env.boot_part
            ))
        })
    }

    /// The bytes of `slot`'s image (its recorded length, or the whole file).
    pub fn image_bytes(&self, slot: Slot) -> Result<Vec<u8>, SlotError> {
        let path = self.image_path(slot);
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|source| SlotError::Io {
                action: "read",
                path,
                source,
            })?;
        if let Some(image) = self.info.get(slot)? {
            bytes.truncate(image.length as usize);
        }
        Ok(bytes)
    }

    /// Whether `slot`'s image (its recorded length, or the whole file) contains `marker`, read in
    /// chunks so that a simulated device's memory stays small whatever its image size.
    fn image_contains(&self, slot: Slot, marker: &[u8]) -> Result<(bool, u64), SlotError> {
        let path = self.image_path(slot);
        let io = |source| SlotError::Io {
            action: "read",
            path: path.clone(),
            source,
        };
        let limit = self.info.get(slot)?.map(|image| image.length);
        let file = std::fs::File::open(&path).map_err(io)?;
        let mut reader = std::io::BufReader::new(file).take(limit.unwrap_or(u64::MAX));
        let mut window: Vec<u8> = Vec::with_capacity(64 * 1024 + marker.len());
        let mut chunk = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut chunk).map_err(io)?;
            if n == 0 {
                return Ok((false, total));
            }
            total += n as u64;
            window.extend_from_slice(&chunk[..n]);
            if contains(&window, marker) {
                return Ok((true, total));
            }
            // Keep the tail a marker split across two reads could start in.
            let keep = marker.len().saturating_sub(1).min(window.len());
            window.drain(..window.len() - keep);
        }
    }

    fn boots(&self, slot: Slot) -> Result<bool, SlotError> {
        let (fails, len) = self.image_contains(slot, BOOT_FAIL_MARKER)?;
        Ok(len > 0 && !fails)
    }
}

impl SlotBackend for SimulatedSlots {
    fn status(&mut self) -> Result<BootStatus, SlotError> {
        Ok(self.env()?.status())
    }

    fn open(&mut self, slot: Slot, write: bool) -> Result<std::fs::File, SlotError> {
        if write && slot == self.env()?.booted {
            return Err(SlotError::Env(format!(
                "refusing to write slot {slot}: it is running"
            )));
        }
        open_image(&self.image_path(slot), write)
    }

    fn image(&mut self, slot: Slot) -> Result<Option<SlotImage>, SlotError> {
        self.info.get(slot)
    }

    fn set_image(&mut self, slot: Slot, image: Option<&SlotImage>) -> Result<(), SlotError> {
        self.info.set(slot, image)
    }

    fn mark_try_once(&mut self, slot: Slot) -> Result<(), SlotError> {
        let mut env = self.env()?;
        env.mark_try_once(slot)?;
        self.save_env(&env)
    }

    fn commit(&mut self) -> Result<(), SlotError> {
        let mut env = self.env()?;
        if env.commit() {
            self.save_env(&env)?;
        }
        Ok(())
    }

    fn roll_back(&mut self) -> Result<(), SlotError> {
        let mut env = self.env()?;
        if env.roll_back() {
            self.save_env(&env)?;
        }
        Ok(())
    }

    fn reboot(&mut self) -> Result<Rebooted, SlotError> {
        self.power_cycle()?;
        Ok(Rebooted::InProcess)
    }

    fn self_test(&mut self) -> Result<(), String> {
        let booted = self.env().map_err(|e| e.to_string())?.booted;
        let (fails, _) = self
            .image_contains(booted, HEALTH_FAIL_MARKER)
            .map_err(|e| e.to_string())?;
        if fails {
            return Err(format!(
                "the simulated image in slot {booted} carries DROVER-SIM-HEALTH-FAIL"
            ));
        }
        Ok(())
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    // A real substring search: a byte-by-byte window comparison over a multi-megabyte image took
    // longer than a simulated reboot may (the power-loss test kills the agent every 5–255 ms).
    memchr::memmem::find(haystack, needle).is_some()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::process::tempdir::Dir;

    fn version(text: &str) -> drover_core::Version {
        drover_core::Version::parse(text).unwrap()
    }

    fn write_slot(slots: &mut SimulatedSlots, slot: Slot, bytes: &[u8]) {
        let mut file = slots.open(slot, true).unwrap();
        file.set_len(0).unwrap();
        file.write_all(bytes).unwrap();
        file.sync_all().unwrap();
    }

    #[test]
    fn a_try_once_slot_boots_once_and_is_given_up_unless_committed() {
        let dir = Dir::new("sim-try");
        let mut slots = SimulatedSlots::create(dir.path(), b"old", version("1.0.0")).unwrap();
        assert_eq!(slots.status().unwrap().booted, Slot::A);
        write_slot(&mut slots, Slot::B, b"new");
        slots.mark_try_once(Slot::B).unwrap();
        assert_eq!(
            slots.status().unwrap().booted,
            Slot::A,
            "not before the reboot"
        );
        assert_eq!(slots.reboot().unwrap(), Rebooted::InProcess);
        let status = slots.status().unwrap();
        assert_eq!((status.booted, status.trying), (Slot::B, true));
        slots.power_cycle().unwrap();
        let status = slots.status().unwrap();
        assert_eq!(
            (status.booted, status.trying),
            (Slot::A, false),
            "fell back"
        );
    }

    #[test]
    fn a_committed_slot_keeps_booting() {
        let dir = Dir::new("sim-commit");
        let mut slots = SimulatedSlots::create(dir.path(), b"old", version("1.0.0")).unwrap();
        write_slot(&mut slots, Slot::B, b"new");
        slots.mark_try_once(Slot::B).unwrap();
        slots.reboot().unwrap();
        let before = slots.status().unwrap().boot_id;
        slots.commit().unwrap();
        slots.power_cycle().unwrap();
        let status = slots.status().unwrap();
        assert_eq!((status.booted, status.trying), (Slot::B, false));
        assert_ne!(status.boot_id, before, "every boot has its own id");
    }

    #[test]
    fn an_image_with_the_boot_fail_marker_falls_back_and_the_health_marker_fails_the_self_test() {
        let dir = Dir::new("sim-markers");
        let mut slots = SimulatedSlots::create(dir.path(), b"old", version("1.0.0")).unwrap();
        write_slot(&mut slots, Slot::B, b"new DROVER-SIM-BOOT-FAIL");
        slots.mark_try_once(Slot::B).unwrap();
        slots.reboot().unwrap();
        assert_eq!(slots.status().unwrap().booted, Slot::A);
        assert!(slots.self_test().is_ok());

        write_slot(&mut slots, Slot::B, b"new DROVER-SIM-HEALTH-FAIL");
        slots.mark_try_once(Slot::B).unwrap();
        slots.reboot().unwrap();
        assert_eq!(slots.status().unwrap().booted, Slot::B);
        assert!(slots.self_test().unwrap_err().contains("HEALTH-FAIL"));
        slots.roll_back().unwrap();
        slots.reboot().unwrap();
        assert_eq!(slots.status().unwrap().booted, Slot::A);
        assert!(
            slots.open(Slot::A, true).is_err(),
            "the running slot is not writable"
        );
    }
}
