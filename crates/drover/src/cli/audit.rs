//! `drover audit`: the audit log, newest first, filtered by actor, action, target and time.

use clap::Args;
use drover_core::Timestamp;
use drover_proto::audit::AuditEntry;

use crate::cli::client::{param, Client, Params};
use crate::cli::output::{self, Table};
use crate::cli::paging::{self, Paging};
use crate::cli::CliError;

/// Filters of `drover audit`; all optional, combined with AND.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Who acted: token:<id>, device:<id> or system.
    #[arg(long)]
    pub actor: Option<String>,
    /// Exact action (device.create) or a prefix ending in `.` or `*` (device.).
    #[arg(long)]
    pub action: Option<String>,
    /// device, group, claim, token or devices (bulk changes).
    #[arg(long, value_name = "KIND")]
    pub target_kind: Option<String>,
    /// Id of the object acted on.
    #[arg(long = "target", value_name = "ID")]
    pub target_id: Option<String>,
    /// Entries at or after this RFC 3339 time, e.g. 2026-11-23T10:00:00Z.
    #[arg(long, value_name = "TIME", value_parser = Timestamp::parse_rfc3339)]
    pub since: Option<Timestamp>,
    /// Entries before this RFC 3339 time.
    #[arg(long, value_name = "TIME", value_parser = Timestamp::parse_rfc3339)]
    pub until: Option<Timestamp>,
    #[command(flatten)]
    pub paging: Paging,
}

/// Runs `drover audit`.
pub async fn run(client: &Client, json: bool, args: AuditArgs) -> Result<(), CliError> {
    let mut params = Params::new();
    param(&mut params, "actor", args.actor);
    param(&mut params, "action", args.action);
    param(&mut params, "target_kind", args.target_kind);
    param(&mut params, "target_id", args.target_id);
    param(&mut params, "since", args.since.map(Timestamp::to_rfc3339));
    param(&mut params, "until", args.until.map(Timestamp::to_rfc3339));
    paging::print_list(
        client,
        &["audit"],
        params,
        &args.paging,
        json,
        "audit entries",
        audit_table,
    )
    .await
}

/// The audit table: one row per entry. The actor shows its name when it has one besides its id.
pub fn audit_table(entries: &[AuditEntry]) -> String {
    let mut table = Table::new(&["SEQ", "TIME", "ACTOR", "ACTION", "TARGET"]);
    for entry in entries {
        let actor = if entry.actor_name.is_empty() || entry.actor.ends_with(&entry.actor_name) {
            entry.actor.clone()
        } else {
            format!("{} ({})", entry.actor, entry.actor_name)
        };
        table.row(vec![
            entry.seq.to_string(),
            output::time(entry.at),
            actor,
            entry.action.clone(),
            format!("{}:{}", entry.target_kind, entry.target_id),
        ]);
    }
    table.render()
}
