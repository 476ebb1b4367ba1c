//! Real devices: the slot protocol over a bootloader environment, read and written with the
//! bootloader's own tools — U-Boot's `fw_printenv` / `fw_setenv` ([`UbootEnv`]) or GRUB's
//! `grub-editenv` ([`GrubEnv`]) — and slot images on block devices (or files).
//!
//! The variables (names configurable, Mender-like defaults): `drover_boot_part` (which slot the
//! bootloader boots, with a configurable value per slot), `upgrade_available`, `bootcount` and,
//! if configured, `bootlimit`. The bootloader script must implement the bootcount logic described
//! in [`super`] (Mender's U-Boot and GRUB integrations do exactly this, with `mender_boot_part`).
//! Each protocol step is one environment write: `fw_setenv -s -` takes all variables in one
//! script and U-Boot's redundant environment makes that write atomic; `grub-editenv set` rewrites
//! its one-sector block in one write.
//!
//! Which slot booted: `drover_slot=a|b` or `root=<slot device>` on the kernel command line when
//! present, otherwise `boot_part` from the environment, which is right as long as the agent has not
//! changed the environment since this boot — the update machine knows when it has (it records the
//! boot id with every environment change) and does not ask then.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    open_image, BootStatus, Rebooted, Slot, SlotBackend, SlotError, SlotImage, SlotInfoStore,
};
use crate::process::{self, RunOptions};

/// How long a bootloader tool may run.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// Reading and writing a bootloader environment.
pub trait BootEnv: Send {
    /// Every variable.
    fn read(&mut self) -> Result<BTreeMap<String, String>, SlotError>;
    /// Sets these variables in one write.
    fn set(&mut self, vars: &[(&str, String)]) -> Result<(), SlotError>;
}

/// U-Boot's environment through `fw_printenv` and `fw_setenv -s -`.
#[derive(Debug, Clone)]
pub struct UbootEnv {
    pub printenv: PathBuf,
    pub setenv: PathBuf,
}

impl BootEnv for UbootEnv {
    fn read(&mut self) -> Result<BTreeMap<String, String>, SlotError> {
        Ok(parse_list(&tool(&self.printenv, &[], None)?))
    }

    fn set(&mut self, vars: &[(&str, String)]) -> Result<(), SlotError> {
        // The script format of `fw_setenv -s`: one `name value` per line.
        let script: String = vars.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
        tool(
            &self.setenv,
            &["-s".into(), "-".into()],
            Some(script.as_bytes()),
        )?;
        Ok(())
    }
}

/// GRUB's environment block through `grub-editenv <file> list|set`.
#[derive(Debug, Clone)]
pub struct GrubEnv {
    pub editenv: PathBuf,
    /// The environment block, e.g. `/boot/grub/grubenv`.
    pub file: PathBuf,
}

impl BootEnv for GrubEnv {
    fn read(&mut self) -> Result<BTreeMap<String, String>, SlotError> {
        let file = self.file.display().to_string();
        Ok(parse_list(&tool(
            &self.editenv,
            &[file, "list".into()],
            None,
        )?))
    }

    fn set(&mut self, vars: &[(&str, String)]) -> Result<(), SlotError> {
        let mut args = vec![self.file.display().to_string(), "set".into()];
        args.extend(vars.iter().map(|(k, v)| format!("{k}={v}")));
        tool(&self.editenv, &args, None)?;
        Ok(())
    }
}

/// The environment's variable names and the values that name each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvNames {
    pub boot_part: String,
    pub upgrade_available: String,
    pub bootcount: String,
    pub bootlimit: String,
    /// The value of `boot_part` for slot a and slot b.
    pub slot_values: [String; 2],
}

impl Default for EnvNames {
    fn default() -> EnvNames {
        EnvNames {
            boot_part: "drover_boot_part".into(),
            upgrade_available: "upgrade_available".into(),
            bootcount: "bootcount".into(),
            bootlimit: "bootlimit".into(),
            slot_values: ["a".into(), "b".into()],
        }
    }
}

/// Everything an environment-backed slot pair needs besides the environment.
#[derive(Debug, Clone)]
pub struct EnvSlotsOptions {
    pub names: EnvNames,
    /// The block device (or file) of slot a and slot b.
    pub devices: [PathBuf; 2],
    /// Written with every try-once when set; otherwise the bootloader's own default applies.
    pub bootlimit: Option<u32>,
    /// The command (and arguments) that reboots the device.
    pub reboot_command: Vec<String>,
    /// Where the slot records go (the agent's state directory).
    pub info_dir: PathBuf,
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id_path: PathBuf,
    /// `/proc/cmdline`.
    pub cmdline_path: PathBuf,
}

impl EnvSlotsOptions {
    /// Defaults for a device with these two slot devices.
    pub fn new(devices: [PathBuf; 2], info_dir: PathBuf) -> EnvSlotsOptions {
        EnvSlotsOptions {
            names: EnvNames::default(),
            devices,
            bootlimit: None,
            reboot_command: vec!["/sbin/reboot".into()],
            info_dir,
            boot_id_path: "/proc/sys/kernel/random/boot_id".into(),
            cmdline_path: "/proc/cmdline".into(),
        }
    }
}

/// A slot pair driven through a bootloader environment.
pub struct EnvSlots<E: BootEnv> {
    env: E,
    options: EnvSlotsOptions,
    info: SlotInfoStore,
}

impl<E: BootEnv> EnvSlots<E> {
    pub fn new(env: E, options: EnvSlotsOptions) -> EnvSlots<E> {
        EnvSlots {
            env,
            info: SlotInfoStore::new(&options.info_dir),
            options,
        }
    }

    fn slot_of(&self, value: &str) -> Option<Slot> {
        let values = &self.options.names.slot_values;
        if value == values[0] {
            Some(Slot::A)
        } else if value == values[1] {
            Some(Slot::B)
        } else {
            None
        }
    }

    fn value_of(&self, slot: Slot) -> String {
        let values = &self.options.names.slot_values;
        match slot {
            Slot::A => values[0].clone(),
            Slot::B => values[1].clone(),
        }
    }

    fn device(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.options.devices[0],
            Slot::B => &self.options.devices[1],
        }
    }

    /// `boot_part` as a slot and whether a try-once cycle is on.
    fn read_env(&mut self) -> Result<(Slot, bool), SlotError> {
        let vars = self.env.read()?;
        let names = &self.options.names;
        let value = vars
            .get(&names.boot_part)
            .ok_or_else(|| SlotError::Env(format!("{} is not set", names.boot_part)))?;
        let slot = self.slot_of(value).ok_or_else(|| {
            SlotError::Env(format!(
                "{}={value:?} names neither slot ({:?} or {:?})",
                names.boot_part, names.slot_values[0], names.slot_values[1]
            ))
        })?;
        let trying = vars
            .get(&names.upgrade_available)
            .is_some_and(|v| v.trim() == "1");
        Ok((slot, trying))
    }

    /// The booted slot according to the kernel command line, when it says.
    fn booted_from_cmdline(&self) -> Option<Slot> {
        let cmdline = std::fs::read_to_string(&self.options.cmdline_path).ok()?;
        for word in cmdline.split_whitespace() {
            if let Some(slot) = word.strip_prefix("drover_slot=").and_then(Slot::parse) {
                return Some(slot);
            }
            if let Some(root) = word.strip_prefix("root=") {
                for slot in [Slot::A, Slot::B] {
                    if Path::new(root) == self.device(slot) {
                        return Some(slot);
                    }
                }
            }
        }
        None
    }
}

impl<E: BootEnv> SlotBackend for EnvSlots<E> {
    fn status(&mut self) -> Result<BootStatus, SlotError> {
        let (boot_part, upgrade_available) = self.read_env()?;
        let booted = self.booted_from_cmdline().unwrap_or(boot_part);
        let path = &self.options.boot_id_path;
        let boot_id = std::fs::read_to_string(path)
            .map_err(|source| SlotError::Io {
                action: "read",
                path: path.clone(),
                source,
            })?
            .trim()
            .to_owned();
        Ok(BootStatus {
            booted,
            trying: upgrade_available && boot_part == booted,
            boot_id,
        })
    }

    fn open(&mut self, slot: Slot, write: bool) -> Result<std::fs::File, SlotError> {
        open_image(self.device(slot), write)
    }

    fn image(&mut self, slot: Slot) -> Result<Option<SlotImage>, SlotError> {
        self.info.get(slot)
    }

    fn set_image(&mut self, slot: Slot, image: Option<&SlotImage>) -> Result<(), SlotError> {
        self.info.set(slot, image)
    }

    fn mark_try_once(&mut self, slot: Slot) -> Result<(), SlotError> {
        let names = self.options.names.clone();
        let mut vars = vec![
            (names.boot_part.as_str(), self.value_of(slot)),
            (names.upgrade_available.as_str(), "1".to_owned()),
            (names.bootcount.as_str(), "0".to_owned()),
        ];
        if let Some(limit) = self.options.bootlimit {
            vars.push((names.bootlimit.as_str(), limit.to_string()));
        }
        self.env.set(&vars)
    }

    fn commit(&mut self) -> Result<(), SlotError> {
        let (boot_part, trying) = self.read_env()?;
        if !trying {
            return Ok(());
        }
        if let Some(booted) = self.booted_from_cmdline() {
            if booted != boot_part {
                return Err(SlotError::Env(format!(
                    "cannot commit slot {booted}: the bootloader is set to try slot {boot_part}"
                )));
            }
        }
        let names = self.options.names.clone();
        self.env.set(&[
            (names.upgrade_available.as_str(), "0".to_owned()),
            (names.bootcount.as_str(), "0".to_owned()),
        ])
    }

    fn roll_back(&mut self) -> Result<(), SlotError> {
        let (boot_part, trying) = self.read_env()?;
        if !trying {
            return Ok(());
        }
        let names = self.options.names.clone();
        self.env.set(&[
            (names.boot_part.as_str(), self.value_of(boot_part.other())),
            (names.upgrade_available.as_str(), "0".to_owned()),
            (names.bootcount.as_str(), "0".to_owned()),
        ])
    }

    fn reboot(&mut self) -> Result<Rebooted, SlotError> {
        let (command, args) = self
            .options
            .reboot_command
            .split_first()
            .ok_or_else(|| SlotError::Command("no reboot command is configured".into()))?;
        tool(Path::new(command), args, None)?;
        Ok(Rebooted::Requested)
    }
}

/// Runs a tool; its stdout on success.
fn tool(command: &Path, args: &[String], stdin: Option<&[u8]>) -> Result<String, SlotError> {
    let options = RunOptions {
        stdin,
        capture_stderr: true,
        timeout: TOOL_TIMEOUT,
        ..RunOptions::default()
    };
    let shown = || format!("{} {}", command.display(), args.join(" "));
    let finished = process::run_with_args(command, args, &options)
        .map_err(|e| SlotError::Command(format!("{}: {e}", shown())))?;
    if !finished.status.success() {
        return Err(SlotError::Command(format!(
            "{} exited with {}: {}",
            shown(),
            finished.status,
            finished.stderr.trim()
        )));
    }
    Ok(finished.stdout)
}

/// `name=value` lines.
fn parse_list(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::process::tempdir::Dir;

    /// Fake `fw_printenv` / `fw_setenv` keeping the environment in `$dir/env` as name=value lines.
    fn fake_uboot(dir: &Dir) -> UbootEnv {
        let env = dir.path().join("env");
        std::fs::write(
            &env,
            "drover_boot_part=2\nbootcount=0\nupgrade_available=0\n",
        )
        .unwrap();
        let printenv = dir.script(
            "fw_printenv",
            &format!("#!/bin/sh\ncat '{}'\n", env.display()),
        );
        let setenv = dir.script(
            "fw_setenv",
            &format!(
                "#!/bin/sh\n[ \"$1 $2\" = '-s -' ] || exit 2\nenv='{}'\n\
                 while read name value; do\n  grep -v \"^$name=\" \"$env\" > \"$env.new\"\n  \
                 echo \"$name=$value\" >> \"$env.new\"\n  mv \"$env.new\" \"$env\"\ndone\n",
                env.display()
            ),
        );
        UbootEnv { printenv, setenv }
    }

    /// Fake `grub-editenv FILE list|set a=b ...`.
    fn fake_grub(dir: &Dir) -> GrubEnv {
        let file = dir.path().join("grubenv");
        std::fs::write(&file, "drover_boot_part=a\n").unwrap();
        let editenv = dir.script(
            "grub-editenv",
            "#!/bin/sh\nfile=$1; cmd=$2; shift 2\ncase $cmd in\n  list) cat \"$file\";;\n  \
             set) for kv in \"$@\"; do name=${kv%%=*}; grep -v \"^$name=\" \"$file\" > \"$file.new\"; \
             echo \"$kv\" >> \"$file.new\"; mv \"$file.new\" \"$file\"; done;;\n  *) exit 2;;\nesac\n",
        );
        GrubEnv { editenv, file }
    }

    fn options(dir: &Dir) -> EnvSlotsOptions {
        let boot_id = dir.path().join("boot_id");
        std::fs::write(&boot_id, "boot-1\n").unwrap();
        let mut options = EnvSlotsOptions::new(
            [dir.path().join("part-a"), dir.path().join("part-b")],
            dir.path().join("state"),
        );
        options.boot_id_path = boot_id;
        options.cmdline_path = dir.path().join("cmdline");
        options.reboot_command = vec![dir
            .script(
                "reboot",
                "#!/bin/sh\ntouch \"$(dirname \"$0\")/rebooted\"\n",
            )
            .display()
            .to_string()];
        options
    }

    /// Runs the protocol: try b once, boot it, commit; then try a, roll back.
    fn exercise<E: BootEnv>(dir: &Dir, slots: &mut EnvSlots<E>, read_env: impl Fn() -> String) {
        let status = slots.status().unwrap();
        assert_eq!((status.booted, status.trying), (Slot::A, false));
        assert_eq!(status.boot_id, "boot-1");
        let mut file = slots.open(Slot::B, true).unwrap();
        file.write_all(b"image").unwrap();
        slots.mark_try_once(Slot::B).unwrap();
        assert!(read_env().contains("upgrade_available=1"), "{}", read_env());
        assert_eq!(slots.reboot().unwrap(), Rebooted::Requested);
        assert!(dir.path().join("rebooted").exists());
        // The bootloader boots b and the kernel says so.
        std::fs::write(dir.path().join("cmdline"), "console=ttyS0 drover_slot=b").unwrap();
        let status = slots.status().unwrap();
        assert_eq!((status.booted, status.trying), (Slot::B, true));
        slots.commit().unwrap();
        assert!(read_env().contains("upgrade_available=0"));
        let status = slots.status().unwrap();
        assert_eq!((status.booted, status.trying), (Slot::B, false));
        slots.mark_try_once(Slot::A).unwrap();
        slots.roll_back().unwrap();
        let status = slots.status().unwrap();
        assert_eq!((status.booted, status.trying), (Slot::B, false));
        assert!(!read_env().contains("upgrade_available=1"));
    }

    #[test]
    fn the_uboot_backend_runs_the_protocol_through_fw_setenv_scripts() {
        let dir = Dir::new("uboot");
        let env = fake_uboot(&dir);
        let mut options = options(&dir);
        options.names.slot_values = ["2".into(), "3".into()];
        options.bootlimit = Some(1);
        let mut slots = EnvSlots::new(env, options);
        let path = dir.path().join("env");
        exercise(&dir, &mut slots, || std::fs::read_to_string(&path).unwrap());
        let env = std::fs::read_to_string(&path).unwrap();
        assert!(env.contains("drover_boot_part=3"), "{env}");
        assert!(env.contains("bootlimit=1"), "{env}");
    }

    #[test]
    fn the_grub_backend_runs_the_protocol_through_grub_editenv() {
        let dir = Dir::new("grub");
        let env = fake_grub(&dir);
        let mut slots = EnvSlots::new(env, options(&dir));
        let path = dir.path().join("grubenv");
        exercise(&dir, &mut slots, || std::fs::read_to_string(&path).unwrap());
    }

    #[test]
    fn an_unknown_boot_part_value_is_an_error_naming_the_variable() {
        let dir = Dir::new("uboot-bad");
        let env = fake_uboot(&dir);
        let mut slots = EnvSlots::new(env, options(&dir));
        let error = slots.status().unwrap_err().to_string();
        assert!(error.contains("drover_boot_part=\"2\""), "{error}");
    }

    #[test]
    fn the_root_device_on_the_kernel_command_line_names_the_booted_slot() {
        let dir = Dir::new("uboot-root");
        let env = fake_grub(&dir);
        let options = options(&dir);
        let root = options.devices[1].display().to_string();
        std::fs::write(&options.cmdline_path, format!("quiet root={root} rw")).unwrap();
        let mut slots = EnvSlots::new(env, options);
        assert_eq!(slots.status().unwrap().booted, Slot::B);
    }
}
