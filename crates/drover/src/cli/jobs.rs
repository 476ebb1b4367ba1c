//! `drover jobs …` (fleet jobs: create over a target, list, show progress, list executions,
//! cancel) and `drover diag DEVICE ACTION` (ask one device a diagnostic question and print its
//! answer, or say clearly that it did not answer in time).
//!
//! `jobs create` sends the flags as they are, so the server's validation names what is wrong.
//! `diag … reboot` goes through the server's confirmation: the first call returns a single-use
//! token, and the second call (at once with `--yes`, after a prompt on a terminal) reboots.

use std::io::{BufRead, IsTerminal, Write};

use clap::{Args, Subcommand, ValueEnum};
use drover_core::{DeviceId, Duration};
use drover_proto::jobs::{DiagAnswer, JobExecutionView, JobId, JobView};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::cli::client::{decode, http_error, param, Client, Params};
use crate::cli::output::{self, emit, fields, or_dash, print_json, Table};
use crate::cli::paging::{print_list, Paging};
use crate::cli::target::TargetArgs;
use crate::cli::{wire_name, CliError, ErrorKind};

/// `drover jobs` subcommands.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Run an operation on every device of a group, a fleet query or a list of devices.
    ///
    /// Kinds: `reboot`; `config` (--payload is merged into each device shadow's desired state);
    /// `diagnostics` (--payload '{"action": "system_info"}'); `command` (--payload
    /// '{"name": "…", …}', a command the device's agent has configured).
    Create(Box<CreateArgs>),
    /// List jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long, value_enum)]
        state: Option<JobStateArg>,
        /// Most jobs to list, 1–1000 (server default 100).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show a job and its progress.
    Show {
        /// Job id.
        #[arg(value_parser = parse_job_id)]
        id: JobId,
    },
    /// A job's executions, one per device, with state, attempt and answer.
    Executions {
        /// Job id.
        #[arg(value_parser = parse_job_id)]
        id: JobId,
        /// Only executions in this state: queued, in_progress, succeeded, failed, timed_out,
        /// canceled or rejected.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Cancel a running job: queued executions never start, running devices are told to stop.
    Cancel {
        /// Job id.
        #[arg(value_parser = parse_job_id)]
        id: JobId,
        /// Why, recorded on each canceled execution and in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

/// What a job does on each device.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KindArg {
    Reboot,
    Config,
    Diagnostics,
    Command,
}

/// A job's state, for `--state`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum JobStateArg {
    Running,
    Completed,
    Canceled,
}

/// `drover jobs create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// What to do on each device.
    #[arg(long, value_enum)]
    pub kind: KindArg,
    /// The kind's payload, as JSON.
    #[arg(long, value_name = "JSON")]
    pub payload: Option<String>,
    /// A name for people [default: KIND TARGET].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Most devices running the job at once [default: 10].
    #[arg(long, value_name = "N")]
    pub max_parallel: Option<u32>,
    /// How long one attempt may take on a device [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = Duration::parse)]
    pub timeout: Option<Duration>,
    /// How many times a failed or timed-out execution is tried again [default: 0].
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Wait before trying again, doubled for each further attempt [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = Duration::parse)]
    pub backoff: Option<Duration>,
}

/// `drover diag DEVICE ACTION`.
#[derive(Debug, Args)]
pub struct DiagArgs {
    /// The device to ask.
    pub device: DeviceId,
    #[command(subcommand)]
    pub action: DiagActionArg,
    /// How long to wait for the device's answer (1s–60s).
    #[arg(long, global = true, value_name = "DURATION", value_parser = Duration::parse, default_value = "10s")]
    pub timeout: Duration,
}

/// What to ask the device.
#[derive(Debug, Clone, Subcommand)]
pub enum DiagActionArg {
    /// Hostname, kernel, uptime, memory, agent and firmware versions.
    SystemInfo,
    /// The last lines of the agent's log file.
    LogTail {
        /// How many lines (1–10000).
        #[arg(long, value_name = "N", default_value_t = 100)]
        lines: u32,
    },
    /// The agent's effective configuration, secrets redacted.
    ConfigDump,
    /// An echo with the device's timestamps.
    Ping,
    /// Reboot the device (asks for confirmation unless --yes).
    Reboot {
        /// Confirm without asking.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs a `drover jobs` subcommand.
pub async fn run(client: &Client, json: bool, command: JobsCommand) -> Result<(), CliError> {
    match command {
        JobsCommand::Create(args) => {
            let body = create_body(&args)?;
            let value = client.call_json(Method::POST, &["jobs"], &body).await?;
            if json {
                return print_json(&value);
            }
            let view: JobView = decode(value)?;
            emit(&render_show(&view))
        }
        JobsCommand::List { state, limit } => {
            let mut params = Params::new();
            param(&mut params, "state", state.map(wire_name));
            param(&mut params, "limit", limit);
            let value = client.get(&["jobs"], &params).await?;
            if json {
                return print_json(&value);
            }
            let views: Vec<JobView> = decode(value)?;
            if views.is_empty() {
                eprintln!("no jobs");
                return Ok(());
            }
            emit(&job_table(&views))
        }
        JobsCommand::Show { id } => {
            let value = client
                .get(&["jobs", &id.to_string()], &Params::new())
                .await?;
            if json {
                return print_json(&value);
            }
            emit(&render_show(&decode(value)?))
        }
        JobsCommand::Executions { id, state, paging } => {
            let mut params = Params::new();
            param(&mut params, "state", state);
            let id_text = id.to_string();
            print_list(
                client,
                &["jobs", &id_text, "executions"],
                params,
                &paging,
                json,
                "executions",
                execution_table,
            )
            .await
        }
        JobsCommand::Cancel { id, reason } => {
            let value = client
                .call_json(
                    Method::POST,
                    &["jobs", &id.to_string(), "cancel"],
                    &json!({ "reason": reason }),
                )
                .await?;
            if json {
                return print_json(&value);
            }
            emit(&render_show(&decode(value)?))
        }
    }
}

/// Runs `drover diag`.
pub async fn run_diag(client: &Client, json: bool, args: DiagArgs) -> Result<(), CliError> {
    let path = ["devices", args.device.as_str(), "diagnostics"];
    let timeout = args.timeout.to_string();
    let body = match &args.action {
        DiagActionArg::SystemInfo => json!({"action": "system_info", "timeout": timeout}),
        DiagActionArg::LogTail { lines } => {
            json!({"action": "log_tail", "lines": lines, "timeout": timeout})
        }
        DiagActionArg::ConfigDump => json!({"action": "config_dump", "timeout": timeout}),
        DiagActionArg::Ping => json!({"action": "ping", "timeout": timeout}),
        DiagActionArg::Reboot { .. } => json!({"action": "reboot", "timeout": timeout}),
    };
    let (mut status, mut value) = client.call_json_status(Method::POST, &path, &body).await?;
    if let DiagActionArg::Reboot { yes } = args.action {
        let token = (status == StatusCode::CONFLICT)
            .then(|| {
                value["error"]["details"]["token"]
                    .as_str()
                    .map(str::to_owned)
            })
            .flatten();
        if let Some(token) = token {
            if !yes && !confirmed(&args.device)? {
                return Err(CliError::new(
                    ErrorKind::Conflict,
                    format!(
                        "not rebooting {}: confirm with --yes (or answer y at the prompt)",
                        args.device
                    ),
                ));
            }
            let mut body = body.clone();
            body["confirm"] = Value::from(token);
            (status, value) = client.call_json_status(Method::POST, &path, &body).await?;
        }
    }
    if status == StatusCode::GATEWAY_TIMEOUT && value["error"]["code"] == "device_timeout" {
        let request = value["error"]["details"]["request_id"]
            .as_str()
            .unwrap_or("?");
        return Err(CliError::new(
            ErrorKind::Unavailable,
            format!(
                "device {} did not answer within {} (request {request})",
                args.device, args.timeout
            ),
        ));
    }
    if !status.is_success() {
        return Err(http_error(status, &value.to_string()));
    }
    if json {
        return print_json(&value);
    }
    let answer: DiagAnswer = decode(value)?;
    if let Some(error) = &answer.error {
        return Err(CliError::new(
            ErrorKind::Other,
            format!("device {} could not answer: {error}", answer.device),
        ));
    }
    emit(&render_answer(&answer))
}

/// Asks on the terminal whether to reboot; `false` without a terminal.
fn confirmed(device: &DeviceId) -> Result<bool, CliError> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    eprint!("Reboot device {device}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::new(ErrorKind::Other, format!("cannot read the answer: {e}")))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// The request body of `jobs create`: the flags given, nothing more (server defaults apply).
fn create_body(args: &CreateArgs) -> Result<Value, CliError> {
    let mut body = json!({ "kind": wire_name(args.kind), "target": args.target.target() });
    if let Some(payload) = &args.payload {
        let payload: Value = serde_json::from_str(payload)
            .map_err(|e| CliError::usage(format!("--payload is not valid JSON: {e}")))?;
        body["payload"] = payload;
    }
    if let Some(name) = &args.name {
        body["name"] = Value::from(name.as_str());
    }
    if let Some(n) = args.max_parallel {
        body["max_parallel"] = Value::from(n);
    }
    if let Some(timeout) = args.timeout {
        body["timeout"] = Value::from(timeout.to_string());
    }
    if let Some(n) = args.retries {
        body["retries"] = Value::from(n);
    }
    if let Some(backoff) = args.backoff {
        body["backoff"] = Value::from(backoff.to_string());
    }
    Ok(body)
}

fn job_table(views: &[JobView]) -> String {
    let mut table = Table::new(&["ID", "NAME", "KIND", "STATE", "PROGRESS", "CREATED"]);
    for view in views {
        table.row(vec![
            view.id.to_string(),
            view.name.clone(),
            view.kind.as_str().to_owned(),
            view.state.clone(),
            progress(view),
            output::time(view.created_at),
        ]);
    }
    table.render()
}

fn progress(view: &JobView) -> String {
    let p = &view.progress;
    format!(
        "{}/{} done ({} ok, {} failed, {} timed out, {} rejected, {} canceled)",
        p.succeeded + p.failed + p.timed_out + p.rejected + p.canceled,
        p.total,
        p.succeeded,
        p.failed,
        p.timed_out,
        p.rejected,
        p.canceled
    )
}

fn render_show(view: &JobView) -> String {
    let p = &view.progress;
    fields(&[
        ("Job", format!("{} ({})", view.id, view.name)),
        ("Kind", view.kind.as_str().to_owned()),
        ("Target", view.target.describe()),
        (
            "Payload",
            view.payload
                .as_ref()
                .map_or_else(|| "-".to_owned(), Value::to_string),
        ),
        ("State", view.state.clone()),
        (
            "Progress",
            format!(
                "{} total: {} queued, {} in progress, {} succeeded, {} failed, {} timed out, {} rejected, {} canceled",
                p.total, p.queued, p.in_progress, p.succeeded, p.failed, p.timed_out, p.rejected, p.canceled
            ),
        ),
        (
            "Settings",
            format!(
                "max parallel {}, timeout {}, retries {}, backoff {}",
                view.max_parallel, view.timeout, view.retries, view.backoff
            ),
        ),
        (
            "Created",
            format!("{} by {}", output::time(view.created_at), view.created_by),
        ),
        ("Finished", or_dash(view.finished_at.map(output::time))),
    ])
}

fn execution_table(items: &[JobExecutionView]) -> String {
    let mut table = Table::new(&[
        "ID",
        "DEVICE",
        "STATE",
        "ATTEMPT",
        "UPDATED",
        "RESULT / ERROR",
    ]);
    for execution in items {
        let outcome = execution
            .error
            .clone()
            .or_else(|| execution.result.as_ref().map(Value::to_string))
            .unwrap_or_else(|| "-".to_owned());
        table.row(vec![
            execution.id.to_string(),
            execution.device.clone(),
            execution.state.clone(),
            execution.attempt.to_string(),
            output::time(execution.updated_at),
            outcome,
        ]);
    }
    table.render()
}

fn render_answer(answer: &DiagAnswer) -> String {
    let took = answer.answered_at.as_millis() - answer.requested_at.as_millis();
    let mut out = fields(&[
        ("Device", answer.device.clone()),
        ("Action", answer.action.as_str().to_owned()),
        ("Request", answer.request_id.clone()),
        (
            "Answered",
            format!("{} ({took} ms)", output::time(answer.answered_at)),
        ),
    ]);
    match &answer.result {
        // Log lines print as lines; anything else as indented JSON.
        Some(Value::Object(map)) if map.get("lines").is_some_and(Value::is_array) => {
            for line in map["lines"].as_array().into_iter().flatten() {
                out.push_str(line.as_str().unwrap_or_default());
                out.push('\n');
            }
        }
        Some(result) => {
            out.push_str(&serde_json::to_string_pretty(result).unwrap_or_default());
            out.push('\n');
        }
        None => {}
    }
    out
}

fn parse_job_id(text: &str) -> Result<JobId, String> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(JobId)
        .ok_or_else(|| format!("job id {text:?} is not a positive number"))
}
