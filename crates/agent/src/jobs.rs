//! Fleet jobs and remote diagnostics on the device: two threads that hear of work from the device
//! API's long-polls (`jobs/next`, `diagnostics/next`) over HTTP, or, when the agent runs on MQTT,
//! from what the server pushes on `jobs/notify` and `diag/request` (handed over by the MQTT link).
//! Reports and answers go over HTTP either way, as update reports do.
//!
//! A job execution is carried out by kind: `reboot` reports success, then runs the reboot
//! command; `config` needs nothing here (the shadow thread applies the desired state and the
//! server sees it reported); `diagnostics` answers like a diagnostics request; `command` runs the
//! program configured for the command's name with the payload on stdin (an unknown name is
//! `rejected`). A 409 `job_canceled` on a report means stop: the agent drops the execution.
//!
//! What the agent answers ([`diagnose`]) is pure apart from reading `/proc` and the log file.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use drover_proto::jobs::{
    DiagAction, DiagCommand, DiagResponse, ExecutionId, JobKind, JobOffer, JobStatusReport,
    ReportedJobState, DEFAULT_LOG_LINES,
};
use serde_json::{json, Value};

use crate::agent::wait;
use crate::backoff::Backoff;
use crate::config::{Config, JobsConfig, TransportKind};
use crate::http::{bearer, Answer, HttpTransport};
use crate::process::{self, RunOptions};
use crate::random::Rng;
use crate::transport::{Credential, TransportError};

/// How long one long-poll waits on the server (it allows 60 s).
pub const POLL_WAIT: Duration = Duration::from_secs(25);
/// Most bytes of the log file read for `log_tail`.
const MAX_LOG_BYTES: u64 = 1 << 20;

/// What a job execution came to on the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub report: Option<JobStatusReport>,
    /// Reboot once the report is sent.
    pub reboot: bool,
}

/// Starts the jobs and diagnostics threads; dropping the returned sender stops them after their
/// current long-poll. They are not joined: a long-poll cannot be interrupted, and a stopping agent
/// must not wait for one.
pub fn start(
    config: &Config,
    credential: &Credential,
    rng: &mut Rng,
    pushed: Option<Pushed>,
) -> Option<Sender<()>> {
    let jobs = config.jobs.clone()?;
    let (pushed_jobs, pushed_diagnostics) = match pushed {
        Some(pushed) => (Some(pushed.jobs), Some(pushed.diagnostics)),
        None => (None, None),
    };
    let (stop, stopped) = mpsc::channel::<()>();
    let (forward, stopped_diag) = mpsc::channel::<()>();
    // One stop signal for both threads: the jobs thread passes the hang-up on.
    let config = config.clone();
    let (jobs_config, credential_jobs) = (jobs.clone(), credential.clone());
    let diag_config = config.clone();
    let credential_diag = credential.clone();
    let seeds = (rng.next_u64(), rng.next_u64());
    let jobs_http = HttpTransport::new(&config.server_url, config.request_timeout);
    let diag_http = HttpTransport::new(&config.server_url, config.request_timeout);
    let spawned = std::thread::Builder::new()
        .name("jobs".into())
        .spawn(move || {
            let _forward = forward;
            run_jobs(
                &jobs_http,
                pushed_jobs.as_ref(),
                &config,
                &jobs_config,
                &credential_jobs,
                Rng::seeded(seeds.0),
                &stopped,
            );
        });
    if spawned.is_err() {
        warn!("cannot start the jobs thread; fleet jobs are off");
        return None;
    }
    let _ = std::thread::Builder::new()
        .name("diagnostics".into())
        .spawn(move || {
            run_diagnostics(
                &diag_http,
                pushed_diagnostics.as_ref(),
                &diag_config,
                &jobs,
                &credential_diag,
                Rng::seeded(seeds.1),
                &stopped_diag,
            )
        });
    Some(stop)
}

/// What the MQTT link hands the jobs threads.
pub struct Pushed {
    pub jobs: Receiver<JobOffer>,
    pub diagnostics: Receiver<DiagCommand>,
}

/// The next piece of work: from the link when there is one (`None` after a quiet `POLL_WAIT`),
/// otherwise from a long-poll of `path`. `Err(Unauthorized)` also stands for "the link is gone".
fn next<T: serde::de::DeserializeOwned>(
    pushed: Option<&Receiver<T>>,
    http: &HttpTransport,
    credential: &Credential,
    path: &str,
) -> Result<Option<T>, TransportError> {
    match pushed {
        Some(pushed) => match pushed.recv_timeout(POLL_WAIT) {
            Ok(work) => Ok(Some(work)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                Err(TransportError::Unauthorized("the MQTT link stopped".into()))
            }
        },
        None => poll(http, credential, path),
    }
}

/// Waits for the next piece of work from [`next`], through quiet polls and, after a transport
/// error, the agent's backoff; `None` when the thread must stop (asked to, the credential was
/// refused, or the MQTT link is gone).
fn next_work<T: serde::de::DeserializeOwned>(
    pushed: Option<&Receiver<T>>,
    http: &HttpTransport,
    credential: &Credential,
    path: &str,
    backoff: &mut Backoff,
    rng: &mut Rng,
    stop: &Receiver<()>,
) -> Option<T> {
    while !stopping(stop) {
        match next(pushed, http, credential, path) {
            Ok(Some(work)) => {
                backoff.reset();
                return Some(work);
            }
            Ok(None) => backoff.reset(),
            Err(TransportError::Unauthorized(_)) => return None,
            Err(e) => {
                let delay = backoff.on_failure(rng, None);
                debug!("{path}: {e}; retrying in {:.1} s", delay.as_secs_f64());
                if wait(stop, delay) {
                    return None;
                }
            }
        }
    }
    None
}

fn run_jobs(
    http: &HttpTransport,
    pushed: Option<&Receiver<JobOffer>>,
    config: &Config,
    jobs: &JobsConfig,
    credential: &Credential,
    mut rng: Rng,
    stop: &Receiver<()>,
) {
    let mut backoff = Backoff::standard();
    let mut last: Option<(ExecutionId, u32)> = None;
    while let Some(offer) = next_work(
        pushed,
        http,
        credential,
        "jobs/next",
        &mut backoff,
        &mut rng,
        stop,
    ) {
        if last == Some((offer.execution_id, offer.attempt)) {
            // Already handled (a config job converging, or a report that did not arrive): look
            // again in a moment rather than spin.
            if wait(stop, Duration::from_secs(2)) {
                return;
            }
            continue;
        }
        last = Some((offer.execution_id, offer.attempt));
        info!(
            "job {} ({}): execution {}, attempt {}",
            offer.job_id,
            offer.kind.as_str(),
            offer.execution_id,
            offer.attempt
        );
        let outcome = execute(config, jobs, &offer);
        if let Some(report) = &outcome.report {
            let path = format!("jobs/{}/status", offer.execution_id);
            match http
                .post(&path, Some(credential), report)
                .and_then(Answer::success)
            {
                Ok(_) => {}
                Err(TransportError::Rejected { code, message, .. }) => {
                    warn!(
                        "job {}: the server refused the report ({code}): {message}",
                        offer.job_id
                    );
                    if code == "job_canceled" {
                        continue;
                    }
                }
                Err(e) => warn!("job {}: cannot report: {e}", offer.job_id),
            }
        }
        if outcome.reboot {
            reboot(&jobs.reboot_command);
        }
    }
}

fn run_diagnostics(
    http: &HttpTransport,
    pushed: Option<&Receiver<DiagCommand>>,
    config: &Config,
    jobs: &JobsConfig,
    credential: &Credential,
    mut rng: Rng,
    stop: &Receiver<()>,
) {
    let mut backoff = Backoff::standard();
    while let Some(command) = next_work(
        pushed,
        http,
        credential,
        "diagnostics/next",
        &mut backoff,
        &mut rng,
        stop,
    ) {
        info!(
            "diagnostics request {}: {}",
            command.request_id,
            command.action.as_str()
        );
        let answer = diagnose(config, jobs, command.action, command.lines);
        let path = format!("diagnostics/{}", command.request_id);
        if let Err(e) = http
            .post(&path, Some(credential), &answer)
            .and_then(Answer::success)
        {
            warn!(
                "diagnostics request {}: cannot answer: {e}",
                command.request_id
            );
        } else if command.action == DiagAction::Reboot && answer.error.is_none() {
            reboot(&jobs.reboot_command);
        }
    }
}

/// Carries out one execution and says what to report.
pub fn execute(config: &Config, jobs: &JobsConfig, offer: &JobOffer) -> Outcome {
    let report = |state, result: Option<Value>, message: Option<String>| JobStatusReport {
        execution_id: Some(offer.execution_id),
        attempt: Some(offer.attempt),
        state,
        result,
        message,
    };
    let payload = offer.payload.clone().unwrap_or(Value::Null);
    match offer.kind {
        JobKind::Reboot => Outcome {
            report: Some(report(
                ReportedJobState::Succeeded,
                Some(json!({"rebooting": true})),
                None,
            )),
            reboot: true,
        },
        // The shadow thread applies it; the server sees the reported state.
        JobKind::Config => Outcome {
            report: None,
            reboot: false,
        },
        JobKind::Diagnostics => {
            let action = payload["action"]
                .as_str()
                .and_then(DiagAction::parse)
                .filter(|a| *a != DiagAction::Reboot);
            let Some(action) = action else {
                return Outcome {
                    report: Some(report(
                        ReportedJobState::Rejected,
                        None,
                        Some(format!("unsupported diagnostics payload {payload}")),
                    )),
                    reboot: false,
                };
            };
            let lines = payload["lines"].as_u64().map(|n| n as u32);
            let answer = diagnose(config, jobs, action, lines);
            let state = if answer.error.is_some() {
                ReportedJobState::Failed
            } else {
                ReportedJobState::Succeeded
            };
            Outcome {
                report: Some(report(state, answer.result, answer.error)),
                reboot: false,
            }
        }
        JobKind::Command => {
            let name = payload["name"].as_str().unwrap_or_default();
            let Some(program) = jobs.commands.get(name) else {
                return Outcome {
                    report: Some(report(
                        ReportedJobState::Rejected,
                        None,
                        Some(format!("this device has no command {name:?} configured")),
                    )),
                    reboot: false,
                };
            };
            let stdin = serde_json::to_vec(&payload).unwrap_or_default();
            let options = RunOptions {
                stdin: Some(&stdin),
                env: vec![
                    ("DROVER_JOB_ID", offer.job_id.to_string()),
                    ("DROVER_EXECUTION_ID", offer.execution_id.to_string()),
                ],
                capture_stderr: true,
                timeout: jobs.command_timeout,
            };
            let (state, result, message) = match process::run(program, &options) {
                Ok(done) => {
                    let output = serde_json::from_str::<Value>(&done.stdout)
                        .unwrap_or_else(|_| Value::String(done.stdout.clone()));
                    let result = json!({"exit_code": done.status.code(), "output": output});
                    if done.status.success() {
                        (ReportedJobState::Succeeded, Some(result), None)
                    } else {
                        let why = done.stderr.trim().chars().take(1000).collect::<String>();
                        (
                            ReportedJobState::Failed,
                            Some(result),
                            Some(format!("{name} exited with {}: {why}", done.status)),
                        )
                    }
                }
                Err(e) => (ReportedJobState::Failed, None, Some(format!("{name}: {e}"))),
            };
            Outcome {
                report: Some(report(state, result, message)),
                reboot: false,
            }
        }
    }
}

/// The answer to a diagnostic question.
pub fn diagnose(
    config: &Config,
    jobs: &JobsConfig,
    action: DiagAction,
    lines: Option<u32>,
) -> DiagResponse {
    let (result, error) = match action {
        DiagAction::SystemInfo => (Some(system_info(config)), None),
        DiagAction::LogTail => {
            match log_tail(jobs.log_file.as_deref(), lines.unwrap_or(DEFAULT_LOG_LINES)) {
                Ok(lines) => (Some(json!({ "lines": lines })), None),
                Err(e) => (None, Some(e)),
            }
        }
        DiagAction::ConfigDump => (Some(config_dump(config)), None),
        DiagAction::Ping => (
            Some(
                json!({"pong": true, "device_time": now_rfc3339(), "agent_version": env!("CARGO_PKG_VERSION")}),
            ),
            None,
        ),
        DiagAction::Reboot => (Some(json!({"rebooting": true})), None),
    };
    DiagResponse {
        request_id: None,
        result,
        error,
    }
}

fn system_info(config: &Config) -> Value {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let uptime_secs = read("/proc/uptime")
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|v| v as u64);
    let meminfo = read("/proc/meminfo").unwrap_or_default();
    let mem_kib = |key: &str| {
        meminfo
            .lines()
            .find(|line| line.starts_with(key))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    json!({
        "hostname": read("/proc/sys/kernel/hostname"),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "uptime_secs": uptime_secs,
        "memory_total_kib": mem_kib("MemTotal:"),
        "memory_available_kib": mem_kib("MemAvailable:"),
        "agent_version": env!("CARGO_PKG_VERSION"),
        "firmware": config.firmware.as_ref().map(ToString::to_string),
        "device_type": config.device_type.as_ref().map(ToString::to_string),
    })
}

/// The last `n` lines of the log file.
fn log_tail(path: Option<&Path>, n: u32) -> Result<Vec<String>, String> {
    let path =
        path.ok_or("no log file is configured (set log_file in the agent's [jobs] section)")?;
    let mut file = std::fs::File::open(path)
        .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(MAX_LOG_BYTES);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| format!("cannot read the log file {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_LOG_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the log file {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    // A read from the middle of the file starts inside a line: drop that fragment.
    let all = if start > 0 && !all.is_empty() {
        &all[1..]
    } else {
        &all[..]
    };
    let from = all.len().saturating_sub(n as usize);
    Ok(all[from..].iter().map(|line| (*line).to_owned()).collect())
}

/// The effective configuration, secrets redacted.
fn config_dump(config: &Config) -> Value {
    let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
    let transport = match &config.transport {
        TransportKind::Http => "http".to_owned(),
        TransportKind::Mqtt(address) => address.to_string(),
    };
    let commands: BTreeMap<&String, String> = config
        .jobs
        .iter()
        .flat_map(|jobs| jobs.commands.iter())
        .map(|(name, program)| (name, program.display().to_string()))
        .collect();
    json!({
        "server_url": config.server_url,
        "state_dir": config.state_dir.display().to_string(),
        "hardware_id": config.hardware_id.as_ref().map(ToString::to_string),
        "claim_token": redacted(&config.claim_token),
        "preauth_secret": redacted(&config.preauth_secret),
        "device_id": config.device_id.as_ref().map(ToString::to_string),
        "device_type": config.device_type.as_ref().map(ToString::to_string),
        "firmware": config.firmware.as_ref().map(ToString::to_string),
        "heartbeat_interval_ms": config.heartbeat_interval.as_millis() as u64,
        "request_timeout_ms": config.request_timeout.as_millis() as u64,
        "transport": transport,
        "shadow_sync": config.shadow_sync,
        "config_hook": config.config_hook.as_ref().map(|p| p.display().to_string()),
        "updates": config.update.is_some(),
        "jobs": config.jobs.as_ref().map(|jobs| json!({
            "reboot_command": jobs.reboot_command.join(" "),
            "commands": commands,
            "command_timeout_ms": jobs.command_timeout.as_millis() as u64,
            "log_file": jobs.log_file.as_ref().map(|p| p.display().to_string()),
        })),
    })
}

fn reboot(command: &[String]) {
    let Some((program, args)) = command.split_first() else {
        return;
    };
    warn!("rebooting: {}", command.join(" "));
    let options = RunOptions {
        timeout: Duration::from_secs(60),
        capture_stderr: true,
        ..RunOptions::default()
    };
    match process::run_with_args(Path::new(program), args, &options) {
        Ok(done) if done.status.success() => {}
        Ok(done) => warn!(
            "the reboot command exited with {}: {}",
            done.status,
            done.stderr.trim()
        ),
        Err(e) => warn!("the reboot command failed: {e}"),
    }
}

/// One long-poll: `Some` when there is something to do.
fn poll<T: serde::de::DeserializeOwned>(
    http: &HttpTransport,
    credential: &Credential,
    path: &str,
) -> Result<Option<T>, TransportError> {
    let request = http
        .agent()
        .get(http.url(&format!("{path}?wait={}", POLL_WAIT.as_secs())))
        .header("authorization", bearer(credential))
        .config()
        .timeout_global(Some(POLL_WAIT + http.timeout()))
        .build();
    let answer = Answer::read(request.call())?.success()?;
    if answer.status == 204 {
        return Ok(None);
    }
    answer.json().map(Some)
}

fn stopping(stop: &Receiver<()>) -> bool {
    !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty))
}

fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    drover_core::Timestamp::from_millis(ms).to_rfc3339()
}

#[cfg(test)]
mod tests {
    use drover_proto::jobs::JobId;

    use super::*;

    fn config() -> Config {
        let text = "server_url = \"http://127.0.0.1:1\"\nclaim_token = \"secret-claim\"\nfirmware = \"2.1.0\"\n\
                    [jobs]\nreboot_command = \"/bin/true now\"\n[jobs.commands]\necho = \"/bin/cat\"\n";
        Config::from_toml(text, Path::new("agent.toml")).unwrap()
    }

    fn offer(kind: JobKind, payload: Value) -> JobOffer {
        JobOffer {
            job_id: JobId(1),
            execution_id: ExecutionId(7),
            attempt: 2,
            kind,
            payload: Some(payload),
            deadline: drover_core::Timestamp::from_millis(0),
        }
    }

    #[test]
    fn each_kind_reports_what_it_did_for_the_attempt_it_was_offered() {
        let config = config();
        let jobs = config.jobs.clone().unwrap();
        assert_eq!(jobs.reboot_command, ["/bin/true", "now"]);

        let reboot = execute(&config, &jobs, &offer(JobKind::Reboot, Value::Null));
        let report = reboot.report.unwrap();
        assert!(reboot.reboot);
        assert_eq!(
            (report.state, report.execution_id, report.attempt),
            (ReportedJobState::Succeeded, Some(ExecutionId(7)), Some(2))
        );

        let config_job = execute(&config, &jobs, &offer(JobKind::Config, json!({"rate": 1})));
        assert_eq!(
            config_job,
            Outcome {
                report: None,
                reboot: false
            },
            "the shadow thread applies it"
        );

        let unknown = execute(
            &config,
            &jobs,
            &offer(JobKind::Command, json!({"name": "format"})),
        )
        .report
        .unwrap();
        assert_eq!(unknown.state, ReportedJobState::Rejected);
        assert!(unknown.message.unwrap().contains("\"format\""));

        let echoed = execute(
            &config,
            &jobs,
            &offer(JobKind::Command, json!({"name": "echo", "x": 1})),
        )
        .report
        .unwrap();
        assert_eq!(echoed.state, ReportedJobState::Succeeded);
        assert_eq!(
            echoed.result.unwrap()["output"],
            json!({"name": "echo", "x": 1})
        );

        let bad = execute(
            &config,
            &jobs,
            &offer(JobKind::Diagnostics, json!({"action": "reboot"})),
        )
        .report
        .unwrap();
        assert_eq!(bad.state, ReportedJobState::Rejected);
        let ping = execute(
            &config,
            &jobs,
            &offer(JobKind::Diagnostics, json!({"action": "ping"})),
        )
        .report
        .unwrap();
        assert_eq!(ping.state, ReportedJobState::Succeeded);
        let no_log = execute(
            &config,
            &jobs,
            &offer(JobKind::Diagnostics, json!({"action": "log_tail"})),
        )
        .report
        .unwrap();
        assert_eq!(no_log.state, ReportedJobState::Failed);
    }

    #[test]
    fn the_config_dump_redacts_secrets_and_system_info_names_the_firmware() {
        let config = config();
        let jobs = config.jobs.clone().unwrap();
        let dump = diagnose(&config, &jobs, DiagAction::ConfigDump, None)
            .result
            .unwrap();
        assert_eq!(dump["claim_token"], "<redacted>");
        assert!(!dump.to_string().contains("secret-claim"));
        assert_eq!(dump["jobs"]["commands"]["echo"], "/bin/cat");
        let info = diagnose(&config, &jobs, DiagAction::SystemInfo, None)
            .result
            .unwrap();
        assert_eq!(info["firmware"], "2.1.0");
    }

    #[test]
    fn jobs_can_be_switched_off_and_bad_command_names_are_refused() {
        let off = Config::from_toml(
            "server_url = \"http://x\"\n[jobs]\nenabled = false\n",
            Path::new("a.toml"),
        )
        .unwrap();
        assert!(off.jobs.is_none());
        let bad = Config::from_toml(
            "server_url = \"http://x\"\n[jobs.commands]\n\"rm -rf\" = \"/bin/rm\"\n",
            Path::new("a.toml"),
        );
        assert!(bad.unwrap_err().to_string().contains("jobs.commands"));
    }

    #[test]
    fn log_tail_returns_the_last_lines_or_says_why_not() {
        let dir = std::env::temp_dir().join(format!("drover-agent-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.log");
        std::fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(log_tail(Some(&path), 2).unwrap(), vec!["two", "three"]);
        assert_eq!(log_tail(Some(&path), 10).unwrap().len(), 3);
        assert!(log_tail(None, 5).unwrap_err().contains("no log file"));
        assert!(log_tail(Some(&dir.join("missing.log")), 5)
            .unwrap_err()
            .contains("cannot open"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
