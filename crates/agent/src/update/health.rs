//! Post-boot health checks of a new image, run by the agent before it commits the slot: the
//! backend's own self-test (the simulator's health-fail marker), a process that must be running
//! (by name or pidfile), connectivity to Drover (a callback the agent provides, e.g. `whoami`
//! succeeds), and the operator's hook command with a timeout (exit status 0 = healthy).
//!
//! A process that is not up yet and a server that cannot be reached yet are [`HealthOutcome::NotYet`]:
//! the machine checks again until the watchdog deadline (`watchdog_timeout`) and rolls back when
//! it passes. A failed self-test or hook is [`HealthOutcome::Unhealthy`]: it rolls back at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{self, RunOptions};

/// The result of one round of checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthOutcome {
    Healthy,
    /// Definitely unhealthy: roll back now.
    Unhealthy(String),
    /// Not healthy yet: check again until the watchdog deadline.
    NotYet(String),
}

/// A process that must be running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessCheck {
    /// A process with this name (its `comm`, or the file name of its executable).
    Name(String),
    /// The process whose id this file holds.
    Pidfile(PathBuf),
}

impl ProcessCheck {
    /// `/path` is a pidfile, anything else a process name.
    pub fn parse(text: &str) -> ProcessCheck {
        if text.starts_with('/') {
            ProcessCheck::Pidfile(text.into())
        } else {
            ProcessCheck::Name(text.to_owned())
        }
    }
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct HealthOptions {
    pub process: Option<ProcessCheck>,
    /// Exit status 0 means healthy; it runs with `DROVER_UPDATE_VERSION` in its environment.
    pub hook: Option<PathBuf>,
    pub hook_timeout: Duration,
}

/// The connectivity check: `Ok` when the server answers the device (e.g. `whoami`).
pub type Connectivity = Box<dyn FnMut() -> Result<(), String> + Send>;

/// Runs the checks.
pub struct HealthChecker {
    options: HealthOptions,
    connectivity: Option<Connectivity>,
    proc_root: PathBuf,
}

impl HealthChecker {
    pub fn new(options: HealthOptions, connectivity: Option<Connectivity>) -> HealthChecker {
        HealthChecker {
            options,
            connectivity,
            proc_root: "/proc".into(),
        }
    }

    /// One round: `self_test` is the slot backend's verdict on the booted image, `version` the
    /// new image's version (for the hook).
    pub fn check(&mut self, self_test: Result<(), String>, version: &str) -> HealthOutcome {
        if let Err(reason) = self_test {
            return HealthOutcome::Unhealthy(reason);
        }
        if let Some(process) = &self.options.process {
            if let Err(reason) = process_running(&self.proc_root, process) {
                return HealthOutcome::NotYet(reason);
            }
        }
        if let Some(connectivity) = &mut self.connectivity {
            if let Err(reason) = connectivity() {
                return HealthOutcome::NotYet(format!("cannot reach Drover: {reason}"));
            }
        }
        if let Some(hook) = &self.options.hook {
            let options = RunOptions {
                env: vec![("DROVER_UPDATE_VERSION", version.to_owned())],
                capture_stderr: true,
                timeout: self.options.hook_timeout,
                ..RunOptions::default()
            };
            let shown = hook.display();
            match process::run(hook, &options) {
                Ok(finished) if finished.status.success() => {}
                Ok(finished) => {
                    let last = finished
                        .stderr
                        .lines()
                        .last()
                        .unwrap_or("")
                        .trim()
                        .to_owned();
                    return HealthOutcome::Unhealthy(format!(
                        "health check {shown} exited with {}{}",
                        finished.status,
                        if last.is_empty() {
                            String::new()
                        } else {
                            format!(": {last}")
                        }
                    ));
                }
                Err(e) => return HealthOutcome::Unhealthy(format!("health check {shown}: {e}")),
            }
        }
        HealthOutcome::Healthy
    }
}

/// Whether the process runs.
fn process_running(proc_root: &Path, check: &ProcessCheck) -> Result<(), String> {
    match check {
        ProcessCheck::Pidfile(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read pidfile {}: {e}", path.display()))?;
            let pid: u32 = text
                .trim()
                .parse()
                .map_err(|_| format!("pidfile {} holds no process id", path.display()))?;
            if proc_root.join(pid.to_string()).exists() {
                Ok(())
            } else {
                Err(format!(
                    "process {pid} (from {}) is not running",
                    path.display()
                ))
            }
        }
        ProcessCheck::Name(name) => {
            let entries = std::fs::read_dir(proc_root)
                .map_err(|e| format!("cannot list {}: {e}", proc_root.display()))?;
            // The kernel keeps only 15 bytes of a process name.
            let comm_name: String = name.chars().take(15).collect();
            for entry in entries.flatten() {
                let is_pid = entry
                    .file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
                if !is_pid {
                    continue;
                }
                let dir = entry.path();
                let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
                if comm.trim_end() == comm_name {
                    return Ok(());
                }
                let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
                let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
                let argv0 = Path::new(std::str::from_utf8(argv0).unwrap_or_default());
                if argv0.file_name().is_some_and(|n| n == name.as_str()) {
                    return Ok(());
                }
            }
            Err(format!("no process named {name} is running"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::tempdir::Dir;

    fn checker(options: HealthOptions) -> HealthChecker {
        HealthChecker::new(options, None)
    }

    #[test]
    fn a_running_process_is_found_by_name_and_by_pidfile() {
        let dir = Dir::new("health-process");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfile = dir.path().join("app.pid");
        std::fs::write(&pidfile, child.id().to_string()).unwrap();
        for check in [
            ProcessCheck::Name("sleep".into()),
            ProcessCheck::Pidfile(pidfile.clone()),
        ] {
            let options = HealthOptions {
                process: Some(check),
                ..HealthOptions::default()
            };
            assert_eq!(
                checker(options).check(Ok(()), "1.0.0"),
                HealthOutcome::Healthy
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let options = HealthOptions {
            process: Some(ProcessCheck::Pidfile(pidfile)),
            ..HealthOptions::default()
        };
        assert!(matches!(
            checker(options).check(Ok(()), "1.0.0"),
            HealthOutcome::NotYet(_)
        ));
        let options = HealthOptions {
            process: Some(ProcessCheck::parse("no-such-process-xyz")),
            ..HealthOptions::default()
        };
        assert!(matches!(
            checker(options).check(Ok(()), "1.0.0"),
            HealthOutcome::NotYet(_)
        ));
    }

    #[test]
    fn the_hook_decides_with_its_exit_status_and_sees_the_version() {
        let dir = Dir::new("health-hook");
        let good = dir.script(
            "good.sh",
            "#!/bin/sh\n[ \"$DROVER_UPDATE_VERSION\" = 2.0.0 ]\n",
        );
        let options = HealthOptions {
            hook: Some(good),
            hook_timeout: Duration::from_secs(10),
            ..HealthOptions::default()
        };
        assert_eq!(
            checker(options.clone()).check(Ok(()), "2.0.0"),
            HealthOutcome::Healthy
        );
        let outcome = checker(options).check(Ok(()), "1.0.0");
        assert!(
            matches!(outcome, HealthOutcome::Unhealthy(_)),
            "{outcome:?}"
        );
        let slow = dir.script("slow.sh", "#!/bin/sh\nsleep 30\n");
        let options = HealthOptions {
            hook: Some(slow),
            hook_timeout: Duration::from_millis(200),
            ..HealthOptions::default()
        };
        let HealthOutcome::Unhealthy(reason) = checker(options).check(Ok(()), "1.0.0") else {
            panic!("a hung hook is unhealthy");
        };
        assert!(reason.contains("killed after"), "{reason}");
    }

    #[test]
    fn connectivity_and_the_self_test_are_checked() {
        let mut down = HealthChecker::new(
            HealthOptions::default(),
            Some(Box::new(|| Err("refused".into()))),
        );
        assert!(
            matches!(down.check(Ok(()), "1"), HealthOutcome::NotYet(r) if r.contains("refused"))
        );
        assert!(
            matches!(down.check(Err("marker".into()), "1"), HealthOutcome::Unhealthy(r) if r == "marker")
        );
    }
}
