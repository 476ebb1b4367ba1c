//! Admin subcommands: a client of the REST API under `/api/v1`.

use std::process::ExitCode;

use clap::{Args, Subcommand};

/// Where the server is and who is asking; shared by every admin subcommand.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// Server base URL.
    #[arg(long, global = true, env = "DROVER_SERVER", default_value = "http://127.0.0.1:8080")]
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
pub enum AdminCommand {}

/// Runs an admin subcommand.
pub async fn run(_options: ClientOptions, command: AdminCommand) -> ExitCode {
    match command {}
}
