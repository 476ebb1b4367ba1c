//! Running the operator's executables (the metrics command, the config hook): input on stdin,
//! output captured up to a limit, and a deadline after which the whole process group is killed, so
//! a script that started `sleep` in the background cannot outlive its timeout either.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Most bytes read from each of stdout and stderr; the rest is discarded.
pub const MAX_OUTPUT: u64 = 64 * 1024;

/// How to run a command.
#[derive(Debug, Clone, Default)]
pub struct RunOptions<'a> {
    /// Written to stdin, which is then closed; stdin is `/dev/null` without it.
    pub stdin: Option<&'a [u8]>,
    /// Added to the agent's environment.
    pub env: Vec<(&'static str, String)>,
    /// Capture stderr (for the caller to log); otherwise it goes to the agent's stderr.
    pub capture_stderr: bool,
    pub timeout: Duration,
}

/// A command that ran to its end.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    /// Empty unless [`RunOptions::capture_stderr`].
    pub stderr: String,
}

/// Why a command did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start: {0}")]
    Start(std::io::Error),
    #[error("killed after {} s", .0.as_secs_f64())]
    TimedOut(Duration),
    #[error("cannot wait for it: {0}")]
    Wait(std::io::Error),
}

/// Runs `command` without a shell and waits for it, its output included, up to the timeout.
pub fn run(command: &Path, options: &RunOptions<'_>) -> Result<Finished, RunError> {
    run_with_args(command, &[], options)
}

/// [`run`] with arguments (the bootloader tools, the reboot command).
pub fn run_with_args(
    command: &Path,
    args: &[String],
    options: &RunOptions<'_>,
) -> Result<Finished, RunError> {
    let deadline = Instant::now() + options.timeout;
    let spawn = || {
        Command::new(command)
            .args(args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(if options.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(if options.capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            // Its own process group, so that the timeout can kill everything it started.
            .process_group(0)
            .spawn()
    };
    // "Text file busy": the executable was just written and a process forked meanwhile (by any
    // thread) still holds it open for writing until it execs. That passes within milliseconds.
    let mut attempts = 0;
    let mut child = loop {
        match spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 10 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            result => break result.map_err(RunError::Start)?,
        }
    };
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), options.stdin) {
        // A thread, so a command that does not read its input cannot block the agent; a command
        // that exits without reading it makes the write fail, which is its business.
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    // Output is read on helper threads so a command that fills a pipe cannot deadlock the wait.
    let (tx, outputs) = mpsc::channel();
    let mut n_readers = 0;
    for (is_stdout, pipe) in [
        (
            true,
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            false,
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        if let Some(pipe) = pipe {
            let tx = tx.clone();
            n_readers += 1;
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut bytes);
                let _ = tx.send((is_stdout, String::from_utf8_lossy(&bytes).into_owned()));
            });
        }
    }
    let kill = |child: &mut std::process::Child| {
        // SAFETY: kill(2) with a negative pid signals the process group the child leads; it
        // touches no memory of ours.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                kill(&mut child);
                return Err(RunError::TimedOut(options.timeout));
            }
            Err(e) => {
                kill(&mut child);
                return Err(RunError::Wait(e));
            }
        }
    };
    let mut finished = Finished {
        status,
        stdout: String::new(),
        stderr: String::new(),
    };
    for _ in 0..n_readers {
        // Something the command left running in the background may still hold a pipe open.
        let left = deadline.saturating_duration_since(Instant::now());
        match outputs.recv_timeout(left) {
            Ok((true, text)) => finished.stdout = text,
            Ok((false, text)) => finished.stderr = text,
            Err(_) => {
                kill(&mut child);
                return Err(RunError::TimedOut(options.timeout));
            }
        }
    }
    Ok(finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> (tempdir::Dir, std::path::PathBuf) {
        let dir = tempdir::Dir::new("process");
        let path = dir.script("run.sh", script);
        (dir, path)
    }

    #[test]
    fn input_output_environment_and_status_pass_through() {
        let (_dir, path) = sh("#!/bin/sh\ncat\necho \" $GREETING\"\necho oops >&2\nexit 3\n");
        let options = RunOptions {
            stdin: Some(b"hello"),
            env: vec![("GREETING", "world".into())],
            capture_stderr: true,
            timeout: Duration::from_secs(10),
        };
        let finished = run(&path, &options).unwrap();
        assert_eq!(finished.stdout, "hello world\n");
        assert_eq!(finished.stderr, "oops\n");
        assert_eq!(finished.status.code(), Some(3));
    }

    #[test]
    fn a_command_past_its_deadline_is_killed_with_its_children() {
        let (dir, path) = sh("#!/bin/sh\nsleep 30 &\necho $! > \"$PIDFILE\"\nsleep 30\n");
        let pidfile = dir.path().join("pid");
        let options = RunOptions {
            env: vec![("PIDFILE", pidfile.display().to_string())],
            timeout: Duration::from_millis(300),
            ..RunOptions::default()
        };
        let started = Instant::now();
        let error = run(&path, &options).unwrap_err();
        assert!(matches!(error, RunError::TimedOut(_)), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(pidfile).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let proc = Path::new("/proc").join(pid.trim());
        let state = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(" Z "),
            "the background child was killed too: {state}"
        );
    }

    #[test]
    fn a_missing_command_is_an_error_to_start() {
        let error = run(Path::new("/nonexistent/hook"), &RunOptions::default()).unwrap_err();
        assert!(matches!(error, RunError::Start(_)), "{error}");
    }
}

/// Temporary directories with executable scripts, for this crate's unit tests.
#[cfg(test)]
pub(crate) mod tempdir {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A directory removed when dropped.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Dir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir()
                .join(format!("drover-agent-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }

        /// Writes an executable file.
        pub fn script(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
