//! `drover groups …`: static groups (explicit members, optional parent) and dynamic groups (a
//! fleet query whose members are always current).

use clap::Subcommand;
use drover_core::{DeviceId, GroupName};
use drover_proto::groups::{GroupPatch, GroupView, MembersChange, MembersChanged, NewGroup};
use reqwest::Method;

use crate::cli::client::{decode, Client, Params};
use crate::cli::devices::{self, ListArgs};
use crate::cli::output::{self, emit, fields, or_dash, print_json, Table};
use crate::cli::CliError;

/// `drover groups` subcommands.
#[derive(Debug, Subcommand)]
pub enum GroupsCommand {
    /// List all groups with their member counts.
    List,
    /// Show one group.
    Show {
        /// Group name.
        name: GroupName,
    },
    /// Create a static group, or a dynamic one with --query.
    Create {
        /// Group name.
        name: GroupName,
        /// Fleet query: the group is dynamic, its members are the devices matching it.
        #[arg(
            short = 'q',
            long = "query",
            value_name = "QUERY",
            conflicts_with = "parent"
        )]
        query: Option<String>,
        /// Parent group (static groups only).
        #[arg(long, value_name = "GROUP")]
        parent: Option<GroupName>,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Change a group's query (dynamic), parent (static) or description.
    Update {
        /// Group name.
        name: GroupName,
        /// New fleet query (dynamic groups only).
        #[arg(short = 'q', long = "query", value_name = "QUERY")]
        query: Option<String>,
        /// New parent group (static groups only).
        #[arg(long, value_name = "GROUP", conflicts_with = "no_parent")]
        parent: Option<GroupName>,
        /// Detach the group from its parent.
        #[arg(long)]
        no_parent: bool,
        #[arg(long)]
        description: Option<String>,
    },
    /// Delete a group (its devices stay).
    Delete {
        /// Group name.
        name: GroupName,
    },
    /// List a group's member devices, optionally narrowed by a further query.
    Devices {
        /// Group name.
        name: GroupName,
        #[command(flatten)]
        list: ListArgs,
    },
    /// Add devices to a static group.
    Add {
        /// Group name.
        name: GroupName,
        /// Device ids.
        #[arg(required = true)]
        ids: Vec<DeviceId>,
    },
    /// Remove devices from a static group.
    Remove {
        /// Group name.
        name: GroupName,
        /// Device ids.
        #[arg(required = true)]
        ids: Vec<DeviceId>,
    },
}

/// Runs a `drover groups` subcommand.
pub async fn run(client: &Client, json: bool, command: GroupsCommand) -> Result<(), CliError> {
    match command {
        GroupsCommand::List => {
            let groups = client.get(&["groups"], &Params::new()).await?;
            if json {
                return print_json(&groups);
            }
            let groups: Vec<GroupView> = decode(groups)?;
            if groups.is_empty() {
                eprintln!("no groups");
                return Ok(());
            }
            emit(&group_table(&groups))
        }
        GroupsCommand::Show { name } => {
            let group = client
                .get(&["groups", name.as_str()], &Params::new())
                .await?;
            if json {
                return print_json(&group);
            }
            emit(&group_block(&decode(group)?))
        }
        GroupsCommand::Create {
            name,
            query,
            parent,
            description,
        } => {
            let group = client
                .call_json(
                    Method::POST,
                    &["groups"],
                    &NewGroup {
                        name,
                        query,
                        parent,
                        description,
                    },
                )
                .await?;
            if json {
                return print_json(&group);
            }
            let group: GroupView = decode(group)?;
            emit(&format!(
                "Created {} group {} with {} member(s).\n",
                group.kind.as_str(),
                group.name,
                group.member_count.unwrap_or(0)
            ))
        }
        GroupsCommand::Update {
            name,
            query,
            parent,
            no_parent,
            description,
        } => {
            let parent = if no_parent {
                Some(None)
            } else {
                parent.map(Some)
            };
            if query.is_none() && parent.is_none() && description.is_none() {
                return Err(CliError::usage(
                    "nothing to change: pass --query, --parent, --no-parent or --description",
                ));
            }
            let group = client
                .call_json(
                    Method::PATCH,
                    &["groups", name.as_str()],
                    &GroupPatch {
                        query,
                        parent,
                        description,
                    },
                )
                .await?;
            if json {
                return print_json(&group);
            }
            emit(&format!(
                "Updated group {name}.\n{}",
                group_block(&decode(group)?)
            ))
        }
        GroupsCommand::Delete { name } => {
            client
                .call(Method::DELETE, &["groups", name.as_str()])
                .await?;
            if json {
                return Ok(());
            }
            emit(&format!("Deleted group {name}; its devices stay.\n"))
        }
        GroupsCommand::Devices { name, list } => {
            devices::list(client, &["groups", name.as_str(), "devices"], &list, json).await
        }
        GroupsCommand::Add { name, ids } => members(client, json, Method::POST, name, ids).await,
        GroupsCommand::Remove { name, ids } => {
            members(client, json, Method::DELETE, name, ids).await
        }
    }
}

/// The group table: one row per group.
///
/// The server's list leaves out member counts (they cost a query per group); the MEMBERS column
/// appears only when it sends them.
pub fn group_table(groups: &[GroupView]) -> String {
    let counted = groups.iter().any(|g| g.member_count.is_some());
    let mut table = if counted {
        Table::new(&["NAME", "KIND", "MEMBERS", "PARENT", "QUERY", "DESCRIPTION"])
    } else {
        Table::new(&["NAME", "KIND", "PARENT", "QUERY", "DESCRIPTION"])
    };
    for group in groups {
        let mut row = vec![group.name.to_string(), group.kind.as_str().to_owned()];
        if counted {
            row.push(or_dash(group.member_count));
        }
        row.extend([
            or_dash(group.parent.as_ref()),
            or_dash(group.query.as_ref()),
            group.description.clone(),
        ]);
        table.row(row);
    }
    table.render()
}

/// One group as a key-value block.
pub fn group_block(group: &GroupView) -> String {
    fields(&[
        ("Name", group.name.to_string()),
        ("Kind", group.kind.as_str().to_owned()),
        ("Query", or_dash(group.query.as_ref())),
        ("Parent", or_dash(group.parent.as_ref())),
        (
            "Description",
            if group.description.is_empty() {
                "-".to_owned()
            } else {
                group.description.clone()
            },
        ),
        ("Members", or_dash(group.member_count)),
        ("Created", output::time(group.created_at)),
        ("Updated", output::time(group.updated_at)),
    ])
}

async fn members(
    client: &Client,
    json: bool,
    method: Method,
    name: GroupName,
    ids: Vec<DeviceId>,
) -> Result<(), CliError> {
    let adding = method == Method::POST;
    let n_requested = ids.len();
    let changed = client
        .call_json(
            method,
            &["groups", name.as_str(), "members"],
            &MembersChange { device_ids: ids },
        )
        .await?;
    if json {
        return print_json(&changed);
    }
    let changed: MembersChanged = decode(changed)?;
    let unchanged = n_requested as u64 - changed.changed.min(n_requested as u64);
    let (verb, preposition, already) = if adding {
        ("Added", "to", "already members")
    } else {
        ("Removed", "from", "not members")
    };
    let mut text = format!(
        "{verb} {} device(s) {preposition} group {name}",
        changed.changed
    );
    if unchanged > 0 {
        text.push_str(&format!(" ({unchanged} were {already})"));
    }
    text.push_str(".\n");
    emit(&text)
}
