//! Fleet jobs and remote diagnostics, in both APIs.
//!
//! A **job** is one operation (reboot, push configuration, run diagnostics, run a named custom
//! command) over a target, carried out on each device as an **execution**: at most `max_parallel`
//! at once, each attempt with its own deadline, failed or silent attempts tried again after a
//! backoff. Operators create, watch and cancel jobs under `/api/v1/jobs`; devices fetch their next
//! execution (`GET /api/device/v1/jobs/next`, or an MQTT `drover/{id}/jobs/notify` message) and
//! report on it (`POST /api/device/v1/jobs/{execution}/status`, or `drover/{id}/jobs/status`).
//!
//! A **diagnostics request** is one question to one device with an answer awaited in the same call
//! (`POST /api/v1/devices/{id}/diagnostics`): system information, the tail of the agent's log,
//! the agent's configuration, a ping, or a reboot, which needs a confirmation token first.
//!
//! See `docs/jobs.md` for the whole model.

use drover_core::{Duration, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::target::Target;

/// A job's id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One device's execution of a job; the id devices report against.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct ExecutionId(pub i64);

impl std::fmt::Display for ExecutionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What a job does on each device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Reboot the device. No payload.
    Reboot,
    /// Push configuration: the payload is a JSON patch of the device shadow's desired state
    /// (`null` deletes a field). The server applies it when the device's execution starts, so the
    /// device receives the usual shadow delta; the execution succeeds when the device's reported
    /// state matches the patch, or when the device reports success.
    Config,
    /// Run a diagnostic: the payload is `{"action": "system_info" | "log_tail" | "config_dump" |
    /// "ping", "lines"?: N}`, and the answer is the execution's result.
    Diagnostics,
    /// Run a custom command the device knows by name: the payload is any JSON object with a
    /// `name` (`[A-Za-z0-9_.-]`, 1–64 characters); the device passes it to the program configured
    /// for that name and refuses (`rejected`) names it does not know.
    Command,
}

impl JobKind {
    pub const ALL: [JobKind; 4] = [
        JobKind::Reboot,
        JobKind::Config,
        JobKind::Diagnostics,
        JobKind::Command,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Reboot => "reboot",
            JobKind::Config => "config",
            JobKind::Diagnostics => "diagnostics",
            JobKind::Command => "command",
        }
    }

    pub fn parse(text: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// `POST /api/v1/jobs`: an operation × a target × how to run it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// A name for people; defaults to the kind and the target.
    #[serde(default)]
    pub name: Option<String>,
    pub kind: JobKind,
    pub target: Target,
    /// What to do, by kind (see [`JobKind`]); absent for `reboot`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// How many devices run the job at once (1–10000, default 10).
    #[serde(default = "default_max_parallel")]
    pub max_parallel: u32,
    /// How long one attempt may take on a device, from the offer to the final report (`30s`, `5m`;
    /// 1 s – 1 day, default 5m). A device silent past it has timed out.
    #[serde(default = "default_timeout")]
    #[schema(value_type = String)]
    pub timeout: Duration,
    /// How many times a failed or timed-out execution is tried again (0–10, default 0). A
    /// `rejected` execution is never tried again: the device said it cannot do it.
    #[serde(default)]
    pub retries: u32,
    /// How long to wait before trying again (`30s` default, at most 1 day); doubled for each
    /// further attempt.
    #[serde(default = "default_backoff")]
    #[schema(value_type = String)]
    pub backoff: Duration,
}

/// The default of [`NewJob::max_parallel`].
pub fn default_max_parallel() -> u32 {
    10
}

/// The default of [`NewJob::timeout`].
pub fn default_timeout() -> Duration {
    Duration::from_secs(300)
}

/// The default of [`NewJob::backoff`].
pub fn default_backoff() -> Duration {
    Duration::from_secs(30)
}

/// How many executions are in each state. `total` is the sum of the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobProgress {
    pub total: u64,
    /// Waiting to start (including executions waiting to be tried again).
    pub queued: u64,
    /// Offered to the device, not finished.
    pub in_progress: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub canceled: u64,
    pub rejected: u64,
}

/// A job as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: JobId,
    pub name: String,
    pub kind: JobKind,
    pub target: Target,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    pub max_parallel: u32,
    #[schema(value_type = String)]
    pub timeout: Duration,
    pub retries: u32,
    #[schema(value_type = String)]
    pub backoff: Duration,
    /// `running`, `completed` (every execution finished) or `canceled`.
    pub state: String,
    pub progress: JobProgress,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    pub created_by: String,
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<Timestamp>,
}

/// One device's execution of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobExecutionView {
    pub id: ExecutionId,
    pub job_id: JobId,
    pub device: String,
    /// `queued`, `in_progress`, `succeeded`, `failed`, `timed_out`, `canceled` or `rejected`.
    pub state: String,
    /// The current or last attempt, counting from 1 (0 before the first).
    pub attempt: u32,
    /// What the device answered with its final report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why the last attempt failed, timed out or was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When a queued execution may start (after a backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub next_attempt_at: Option<Timestamp>,
    /// When the current attempt was offered to the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub offered_at: Option<Timestamp>,
    /// When the current attempt times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub deadline: Option<Timestamp>,
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<Timestamp>,
}

/// The optional body of `POST /api/v1/jobs/{id}/cancel`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobCancelRequest {
    /// Why, for the executions' error and the audit log.
    #[serde(default)]
    pub reason: Option<String>,
}

// ---- device side --------------------------------------------------------------------------------

/// What a device is asked to do: `GET /api/device/v1/jobs/next`, or the MQTT message on
/// `drover/{id}/jobs/notify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobOffer {
    pub job_id: JobId,
    /// Report on this execution: `POST /api/device/v1/jobs/{execution_id}/status`.
    pub execution_id: ExecutionId,
    /// The attempt, counting from 1; echo it in reports so a late report of an old attempt is
    /// recognised.
    pub attempt: u32,
    pub kind: JobKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// When the attempt times out: report a final state before then.
    #[schema(value_type = String)]
    pub deadline: Timestamp,
}

/// The state a device reports for an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportedJobState {
    /// Started, not finished (optional; keeps nothing alive: the deadline stands).
    InProgress,
    Succeeded,
    /// Failed; it is tried again if the job allows retries.
    Failed,
    /// The device cannot do this at all (unknown command, unsupported action); never retried.
    Rejected,
}

/// `POST /api/device/v1/jobs/{execution}/status` and the MQTT message on `drover/{id}/jobs/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobStatusReport {
    /// Required over MQTT (where there is no path); over HTTP it must match the path if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<ExecutionId>,
    /// The attempt the report is about; a report of an earlier attempt is refused (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub state: ReportedJobState,
    /// Any JSON the operator should see (a command's output, a diagnostic's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// A human sentence, the error of a failure or rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The answer to a status report: the execution's state now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobStatusAccepted {
    pub execution_id: ExecutionId,
    /// `in_progress`, `succeeded`, `failed`, `rejected`, or `queued` when a failure will be tried
    /// again.
    pub state: String,
}

// ---- diagnostics --------------------------------------------------------------------------------

/// What a diagnostics request asks a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DiagAction {
    /// Hostname, kernel, uptime, memory, agent and firmware versions.
    SystemInfo,
    /// The last `lines` lines of the agent's log file.
    LogTail,
    /// The agent's effective configuration, secrets redacted.
    ConfigDump,
    /// An echo with the device's timestamps.
    Ping,
    /// Reboot; needs a confirmation token (see [`DiagRequest::confirm`]).
    Reboot,
}

impl DiagAction {
    pub const ALL: [DiagAction; 5] = [
        DiagAction::SystemInfo,
        DiagAction::LogTail,
        DiagAction::ConfigDump,
        DiagAction::Ping,
        DiagAction::Reboot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DiagAction::SystemInfo => "system_info",
            DiagAction::LogTail => "log_tail",
            DiagAction::ConfigDump => "config_dump",
            DiagAction::Ping => "ping",
            DiagAction::Reboot => "reboot",
        }
    }

    pub fn parse(text: &str) -> Option<DiagAction> {
        DiagAction::ALL
            .into_iter()
            .find(|action| action.as_str() == text)
    }
}

/// Largest `lines` of a `log_tail`.
pub const MAX_LOG_LINES: u32 = 10_000;
/// Lines of a `log_tail` when `lines` is absent.
pub const DEFAULT_LOG_LINES: u32 = 100;

/// `POST /api/v1/devices/{id}/diagnostics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiagRequest {
    pub action: DiagAction,
    /// For `log_tail`: how many lines (1–10000, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u32>,
    /// How long to wait for the device's answer (1s–60s, default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub timeout: Option<Duration>,
    /// For `reboot`: the token the first call answered with (409 `confirmation_required`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<String>,
}

impl DiagRequest {
    /// Checks the fields that depend on the action; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match (self.action, self.lines) {
            (DiagAction::LogTail, Some(lines)) if !(1..=MAX_LOG_LINES).contains(&lines) => {
                return Err(format!(
                    "lines must be between 1 and {MAX_LOG_LINES}, not {lines}"
                ))
            }
            (DiagAction::LogTail, _) | (_, None) => {}
            (action, Some(_)) => {
                return Err(format!(
                    "lines applies only to log_tail, not to {}",
                    action.as_str()
                ))
            }
        }
        if self.confirm.is_some() && self.action != DiagAction::Reboot {
            return Err(format!(
                "confirm applies only to reboot, not to {}",
                self.action.as_str()
            ));
        }
        Ok(())
    }
}

/// What a device receives: `GET /api/device/v1/diagnostics/next`, or the MQTT message on
/// `drover/{id}/diag/request`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiagCommand {
    /// Answer with `POST /api/device/v1/diagnostics/{request_id}`.
    pub request_id: String,
    pub action: DiagAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<u32>,
    /// After this instant nobody waits for the answer any more.
    #[schema(value_type = String)]
    pub deadline: Timestamp,
}

/// A device's answer: `POST /api/device/v1/diagnostics/{request_id}`, or the MQTT message on
/// `drover/{id}/diag/response` (with `request_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiagResponse {
    /// Required over MQTT; over HTTP it must match the path if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The answer (`system_info`'s facts, `log_tail`'s lines, …); absent with `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Why the device could not answer (no log file configured, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the operator's diagnostics call returns: the device's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DiagAnswer {
    pub request_id: String,
    pub device: String,
    pub action: DiagAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[schema(value_type = String)]
    pub requested_at: Timestamp,
    #[schema(value_type = String)]
    pub answered_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_job_has_defaults_and_refuses_unknown_fields() {
        let job: NewJob =
            serde_json::from_str(r#"{"kind": "reboot", "target": {"group": "g"}}"#).unwrap();
        assert_eq!(job.max_parallel, 10);
        assert_eq!(job.timeout, Duration::from_secs(300));
        assert_eq!(job.retries, 0);
        let job: NewJob = serde_json::from_str(
            r#"{"kind": "command", "target": {"devices": ["a"]}, "payload": {"name": "x"}, "timeout": "30s"}"#,
        )
        .unwrap();
        assert_eq!(job.timeout, Duration::from_secs(30));
        for bad in [
            r#"{"kind": "explode", "target": {"group": "g"}}"#,
            r#"{"kind": "reboot", "target": {"group": "g"}, "paralel": 3}"#,
            r#"{"kind": "reboot", "target": {"group": "g"}, "timeout": "5 minutes"}"#,
            r#"{"kind": "reboot"}"#,
        ] {
            assert!(serde_json::from_str::<NewJob>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn diagnostics_requests_check_their_action_specific_fields() {
        let ok = |text: &str| {
            serde_json::from_str::<DiagRequest>(text)
                .unwrap()
                .validate()
        };
        assert!(ok(r#"{"action": "log_tail", "lines": 50}"#).is_ok());
        assert!(ok(r#"{"action": "system_info"}"#).is_ok());
        assert!(ok(r#"{"action": "log_tail", "lines": 0}"#)
            .unwrap_err()
            .contains("between 1 and"));
        assert!(ok(r#"{"action": "ping", "lines": 5}"#)
            .unwrap_err()
            .contains("only to log_tail"));
        assert!(ok(r#"{"action": "ping", "confirm": "x"}"#)
            .unwrap_err()
            .contains("only to reboot"));
        assert!(serde_json::from_str::<DiagRequest>(r#"{"action": "format_disk"}"#).is_err());
    }
}
