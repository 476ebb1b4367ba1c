//! The config hook: the operator's executable that applies desired configuration from the shadow.
//!
//! The contract (also in `docs/agent.md`): the hook gets the delta (the desired fields that differ
//! from the reported ones) as one JSON object on stdin, and `DROVER_SHADOW_VERSION` and
//! `DROVER_DEVICE_ID` in its environment. Exit status 0 means applied: the agent reports the delta
//! as the device's state, or, if the hook printed a JSON object on stdout, that object instead
//! (for values it adjusted or could apply only in part). Any other status, a timeout or an
//! unreadable stdout means nothing was applied. Logs go to stderr, which the agent passes on to its
//! own log. Without a hook the agent reports desired values as applied.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use drover_core::shadow::JsonObject;
use drover_core::DeviceId;

use crate::process::{self, RunError, RunOptions};

/// The environment variable carrying the shadow version the delta belongs to.
pub const VERSION_ENV: &str = "DROVER_SHADOW_VERSION";
/// The environment variable carrying the device id.
pub const DEVICE_ENV: &str = "DROVER_DEVICE_ID";

/// The configured hook, or none.
#[derive(Debug, Clone)]
pub struct ConfigHook {
    command: Option<PathBuf>,
    timeout: Duration,
}

/// Why a delta was not applied.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("config hook {}: {source}", command.display())]
    Run { command: PathBuf, source: RunError },
    #[error("config hook {} exited with {status}{}", command.display(), last_line(stderr))]
    Failed {
        command: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    #[error(
        "config hook {} printed something other than a JSON object on stdout ({reason}); \
         logs belong on stderr",
        command.display()
    )]
    BadReport { command: PathBuf, reason: String },
}

impl ConfigHook {
    pub fn new(command: Option<PathBuf>, timeout: Duration) -> ConfigHook {
        ConfigHook { command, timeout }
    }

    /// Applies `delta` (of shadow `version`); returns what to report as the device's state.
    pub fn apply(
        &self,
        device: &DeviceId,
        version: u64,
        delta: &JsonObject,
    ) -> Result<JsonObject, HookError> {
        let Some(command) = &self.command else {
            return Ok(delta.clone());
        };
        let input = serde_json::to_vec(delta).expect("a JSON object serialises");
        let options = RunOptions {
            stdin: Some(&input),
            env: vec![
                (VERSION_ENV, version.to_string()),
                (DEVICE_ENV, device.to_string()),
            ],
            capture_stderr: true,
            timeout: self.timeout,
        };
        let finished = process::run(command, &options).map_err(|source| HookError::Run {
            command: command.clone(),
            source,
        })?;
        for line in finished.stderr.lines().filter(|l| !l.trim().is_empty()) {
            info!("config hook: {line}");
        }
        if !finished.status.success() {
            return Err(HookError::Failed {
                command: command.clone(),
                status: finished.status,
                stderr: finished.stderr,
            });
        }
        report_from_stdout(&finished.stdout, delta).map_err(|reason| HookError::BadReport {
            command: command.clone(),
            reason,
        })
    }
}

/// What to report after a successful hook: the JSON object it printed, or the delta when it
/// printed nothing.
pub fn report_from_stdout(stdout: &str, delta: &JsonObject) -> Result<JsonObject, String> {
    if stdout.trim().is_empty() {
        return Ok(delta.clone());
    }
    match serde_json::from_str(stdout) {
        Ok(serde_json::Value::Object(report)) => Ok(report),
        Ok(other) => Err(format!("a JSON {}", kind(&other))),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// `": <last line of stderr>"`, or nothing when it said nothing.
fn last_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::process::tempdir::Dir;

    fn object(value: serde_json::Value) -> JsonObject {
        match value {
            serde_json::Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    fn device() -> DeviceId {
        DeviceId::parse("dev-1").unwrap()
    }

    #[test]
    fn the_report_is_the_delta_or_the_object_the_hook_printed() {
        let delta = object(json!({"led": "on", "rate": 5}));
        for (stdout, expected) in [
            ("", Ok(json!({"led": "on", "rate": 5}))),
            ("  \n", Ok(json!({"led": "on", "rate": 5}))),
            ("{\"led\": \"dim\"}\n", Ok(json!({"led": "dim"}))),
            ("{}", Ok(json!({}))),
            ("applying led\n", Err("not JSON")),
            ("[1, 2]", Err("a JSON array")),
            ("\"on\"", Err("a JSON string")),
        ] {
            let report = report_from_stdout(stdout, &delta).map(serde_json::Value::Object);
            match (report, expected) {
                (Ok(report), Ok(expected)) => assert_eq!(report, expected, "{stdout:?}"),
                (Err(reason), Err(expected)) => {
                    assert!(reason.contains(expected), "{stdout:?}: {reason}")
                }
                (report, expected) => panic!("{stdout:?}: {report:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn without_a_hook_the_desired_values_are_reported_as_applied() {
        let hook = ConfigHook::new(None, Duration::from_secs(1));
        let delta = object(json!({"led": "on"}));
        assert_eq!(hook.apply(&device(), 3, &delta).unwrap(), delta);
    }

    #[test]
    fn the_hook_reads_the_delta_and_its_environment_and_may_adjust_the_report() {
        let dir = Dir::new("hook");
        let seen = dir.path().join("seen");
        let script = format!(
            "#!/bin/sh\n{{ cat; echo; echo \"$DROVER_SHADOW_VERSION $DROVER_DEVICE_ID\"; }} > {}\n\
             echo applying >&2\necho '{{\"led\": \"dim\"}}'\n",
            seen.display()
        );
        let hook = ConfigHook::new(
            Some(dir.script("apply.sh", &script)),
            Duration::from_secs(10),
        );
        let report = hook
            .apply(&device(), 7, &object(json!({"led": "on"})))
            .unwrap();
        assert_eq!(serde_json::Value::Object(report), json!({"led": "dim"}));
        let seen = std::fs::read_to_string(seen).unwrap();
        assert_eq!(seen, "{\"led\":\"on\"}\n7 dev-1\n");
    }

    #[test]
    fn a_failing_or_hanging_hook_applies_nothing_and_says_why() {
        let dir = Dir::new("hook-fail");
        let delta = object(json!({"led": "on"}));
        let failing = dir.script("fail.sh", "#!/bin/sh\necho 'no such led' >&2\nexit 2\n");
        let error = ConfigHook::new(Some(failing), Duration::from_secs(10))
            .apply(&device(), 1, &delta)
            .unwrap_err()
            .to_string();
        assert!(error.contains("exit status: 2: no such led"), "{error}");

        let hanging = dir.script("hang.sh", "#!/bin/sh\nsleep 30\n");
        let error = ConfigHook::new(Some(hanging), Duration::from_millis(200))
            .apply(&device(), 1, &delta)
            .unwrap_err();
        assert!(
            matches!(
                error,
                HookError::Run {
                    source: RunError::TimedOut(_),
                    ..
                }
            ),
            "{error}"
        );

        let chatty = dir.script("chatty.sh", "#!/bin/sh\necho done\n");
        let error = ConfigHook::new(Some(chatty), Duration::from_secs(10))
            .apply(&device(), 1, &delta)
            .unwrap_err()
            .to_string();
        assert!(error.contains("logs belong on stderr"), "{error}");
    }
}
