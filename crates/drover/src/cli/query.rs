//! `drover query check`: asks the server whether a fleet query parses, and prints its canonical
//! form or the error with a caret under the offending column.

use clap::Subcommand;
use drover_proto::QueryCheck;

use crate::cli::client::{decode, Client, Params};
use crate::cli::output::{emit, print_json};
use crate::cli::CliError;

/// `drover query` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// Check a fleet query and print its canonical form (see docs/query-language.md).
    Check {
        /// The query, e.g. 'tags.env = prod AND firmware < 2.3.0'.
        query: String,
    },
}

/// Runs a `drover query` subcommand.
pub async fn run(client: &Client, json: bool, command: QueryCommand) -> Result<(), CliError> {
    match command {
        QueryCommand::Check { query } => {
            let checked = client
                .get(&["query", "check"], &Params::from([("q", query)]))
                .await?;
            if json {
                return print_json(&checked);
            }
            let checked: QueryCheck = decode(checked)?;
            emit(&format!("{}\n", checked.canonical))
        }
    }
}
