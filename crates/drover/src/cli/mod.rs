//! Admin subcommands: a client of the REST API under `/api/v1`.
//!
//! Every subcommand is `drover <resource> <verb>`: it validates its arguments (ids, labels, tags are
//! parsed into core newtypes by clap, so a typo fails before any request), makes one or a few API
//! calls, and prints either a human table / key-value block or, with `--json`, the server's JSON.
//!
//! # Exit codes
//! Scripts can rely on these (they are also listed in `drover --help`):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | other or unexpected failure |
//! | 2 | usage or invalid input (bad arguments, HTTP 400 / 413 / 415 / 422) |
//! | 3 | authentication or authorisation (no token, HTTP 401 / 403) |
//! | 4 | not found (HTTP 404) |
//! | 5 | conflict (HTTP 409) |
//! | 6 | server unreachable or failing (connection refused, timeout, HTTP 5xx) |
//!
//! Errors are printed as one line, `error: <message>`, followed only by structured context the
//! server sent: the caret under a fleet-query error, or the failing lines of an import.
//!
//! # Layout
//! - [`client`]: the HTTP client, URL building and the mapping of failures to [`CliError`].
//! - [`output`]: aligned tables, key-value blocks, time formatting, the upload progress line.
//! - [`paging`]: one page with a hint for the next, or every page with `--all`.
//! - [`devices`] (with [`import`]), [`groups`], [`auth`] (claims, tokens, whoami), [`audit`],
//!   [`query`], [`shadow`], [`artifacts`] (artifacts and deployments), [`rollouts`] (staged
//!   rollouts, their gates and decision log), [`jobs`] (fleet jobs and `drover diag`), [`keys`] (offline TUF keys), [`health`] (heartbeat
//!   statistics per firmware version): the commands.

pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod client;
pub mod devices;
pub mod groups;
pub mod health;
pub mod import;
pub mod jobs;
pub mod keys;
pub mod output;
pub mod paging;
pub mod query;
pub mod rollouts;
pub mod shadow;
pub mod target;

use std::fmt;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use client::Client;

/// The exit-code table, shown at the end of `drover --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other or unexpected failure
  2  usage or invalid input (bad arguments; HTTP 400, 413, 415, 422)
  3  authentication or authorisation (no token given; HTTP 401, 403)
  4  not found (HTTP 404)
  5  conflict (HTTP 409)
  6  server unreachable or failing (connection refused, timeout; HTTP 5xx)";

/// Where the server is and who is asking; shared by every admin subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// Server base URL.
    #[arg(
        long,
        global = true,
        env = "DROVER_SERVER",
        default_value = "http://127.0.0.1:8080"
    )]
    pub server: String,
    /// Operator API token.
    #[arg(long, global = true, env = "DROVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Admin subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Find, register, change and retire devices.
    #[command(subcommand)]
    Devices(devices::DevicesCommand),
    /// Static groups (explicit members) and dynamic groups (a fleet query).
    #[command(subcommand)]
    Groups(groups::GroupsCommand),
    /// Claim tokens that let devices provision themselves.
    #[command(subcommand)]
    Claims(auth::ClaimsCommand),
    /// Operator API tokens.
    #[command(subcommand)]
    Tokens(auth::TokensCommand),
    /// Show which token this CLI is using, and its role.
    Whoami,
    /// Read the audit log, newest first.
    Audit(audit::AuditArgs),
    /// Check fleet queries.
    #[command(subcommand)]
    Query(query::QueryCommand),
    /// Fleet health: heartbeat metrics per firmware version over time.
    #[command(subcommand)]
    Health(health::HealthCommand),
    /// Device shadows: set desired state, see what the device reports and what it has yet to do.
    #[command(subcommand)]
    Shadow(shadow::ShadowCommand),
    /// Firmware artifacts: upload from CI, list, show, download, delete.
    #[command(subcommand)]
    Artifacts(artifacts::ArtifactsCommand),
    /// Install an artifact on one device and follow its progress.
    #[command(subcommand)]
    Deployments(artifacts::DeploymentsCommand),
    /// Staged rollouts: a release to a group, query or device list in gated phases.
    #[command(subcommand)]
    Rollouts(rollouts::RolloutsCommand),
    /// Fleet jobs: reboot, push configuration, run diagnostics or a custom command on a target.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Ask one device a diagnostic question (system-info, log-tail, config-dump, ping, reboot).
    Diag(jobs::DiagArgs),
    /// TUF signing keys kept offline: generate, rotate the root, sign, publish.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
}

/// Runs an admin subcommand, prints any error and maps it to the exit code.
pub async fn run(options: ClientOptions, command: AdminCommand) -> ExitCode {
    match dispatch(&options, command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error.print();
            ExitCode::from(error.kind.exit_code())
        }
    }
}

async fn dispatch(options: &ClientOptions, command: AdminCommand) -> Result<(), CliError> {
    let json = options.json;
    // Key files can be made and signed without a server or token.
    let command = match command {
        AdminCommand::Keys(command) => return keys::run(Client::new(options), json, command).await,
        other => other,
    };
    let client = Client::new(options)?;
    match command {
        AdminCommand::Devices(command) => devices::run(&client, json, command).await,
        AdminCommand::Groups(command) => groups::run(&client, json, command).await,
        AdminCommand::Claims(command) => auth::run_claims(&client, json, command).await,
        AdminCommand::Tokens(command) => auth::run_tokens(&client, json, command).await,
        AdminCommand::Whoami => auth::whoami(&client, json).await,
        AdminCommand::Audit(args) => audit::run(&client, json, args).await,
        AdminCommand::Query(command) => query::run(&client, json, command).await,
        AdminCommand::Health(command) => health::run(&client, json, command).await,
        AdminCommand::Shadow(command) => shadow::run(&client, json, command).await,
        AdminCommand::Artifacts(command) => artifacts::run(&client, json, command).await,
        AdminCommand::Deployments(command) => {
            artifacts::run_deployments(&client, json, command).await
        }
        AdminCommand::Rollouts(command) => rollouts::run(&client, json, command).await,
        AdminCommand::Jobs(command) => jobs::run(&client, json, command).await,
        AdminCommand::Diag(args) => jobs::run_diag(&client, json, args).await,
        AdminCommand::Keys(_) => unreachable!("handled above"),
    }
}

/// What kind of failure ended a command; decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Anything else, including responses the CLI does not understand (exit 1).
    Other,
    /// Bad arguments or input the server rejected (exit 2).
    Usage,
    /// No token, a rejected token, or a role too low (exit 3).
    Auth,
    /// The device, group, claim or token does not exist (exit 4).
    NotFound,
    /// The change conflicts with existing state (exit 5).
    Conflict,
    /// The server cannot be reached or failed (exit 6).
    Unavailable,
}

impl ErrorKind {
    /// The process exit code for this kind of failure.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Other => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Auth => 3,
            ErrorKind::NotFound => 4,
            ErrorKind::Conflict => 5,
            ErrorKind::Unavailable => 6,
        }
    }
}

/// A failed command: one message line plus optional context lines (a query caret, import lines).
#[derive(Debug, Clone)]
pub struct CliError {
    pub kind: ErrorKind,
    /// One sentence; empty for a failure that has already been reported (a closed stdout pipe).
    pub message: String,
    /// Printed under the message as they are.
    pub notes: Vec<String>,
}

impl CliError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CliError {
        CliError {
            kind,
            message: message.into(),
            notes: Vec::new(),
        }
    }

    /// Invalid input detected before any request was made.
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError::new(ErrorKind::Usage, message)
    }

    /// Writes the error to stderr: `error: <message>` and the notes below it.
    pub fn print(&self) {
        if !self.message.is_empty() {
            eprintln!("{self}");
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        for note in &self.notes {
            write!(f, "\n{note}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}

/// Parses `KEY=VALUE` (the value may be empty) into a validated tag, for `--tag`.
pub fn parse_tag(text: &str) -> Result<(drover_core::TagKey, drover_core::TagValue), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, e.g. env=prod, not {text:?}"))?;
    let key = drover_core::TagKey::parse(key).map_err(|e| e.to_string())?;
    let value = drover_core::TagValue::parse(value).map_err(|e| e.to_string())?;
    Ok((key, value))
}

/// The name a clap value enum has on the command line, which is also its name in the API.
fn wire_name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_from_key_equals_value() {
        let (key, value) = parse_tag("env=prod").unwrap();
        assert_eq!((key.as_str(), value.as_str()), ("env", "prod"));
        assert_eq!(parse_tag("note=").unwrap().1.as_str(), "");
        assert!(parse_tag("env").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_tag("a b=c").unwrap_err().contains("tag key"));
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let codes: Vec<u8> = [
            ErrorKind::Other,
            ErrorKind::Usage,
            ErrorKind::Auth,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Unavailable,
        ]
        .into_iter()
        .map(ErrorKind::exit_code)
        .collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6]);
    }
}
