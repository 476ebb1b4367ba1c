//! `drover devices …`: find, count and show devices; register, change and retire them; import and
//! bulk-update many at once.

use clap::{Args, Subcommand, ValueEnum};
use drover_core::{
    DeviceId, DeviceStatus, DeviceType, HardwareId, Label, TagKey, TagValue, Timestamp, Version,
};
use drover_proto::devices::{
    BulkUpdate, BulkUpdateResult, ConnectivityView, CreatedDevice, DeviceCredential, DeviceGroups,
    DevicePatch, DeviceView, HealthView, NewDevice,
};
use drover_proto::Count;
use reqwest::Method;

use crate::cli::client::{decode, param, Client, Params};
use crate::cli::output::{self, emit, fields, or_dash, print_json, Table};
use crate::cli::paging::{self, Paging};
use crate::cli::{import, parse_tag, wire_name, CliError, ErrorKind};

/// `drover devices` subcommands.
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// List devices, optionally only those matching a fleet query.
    List(ListArgs),
    /// Count devices matching a fleet query.
    Count {
        /// Fleet query (see docs/query-language.md); all devices when absent.
        #[arg(short = 'q', long = "query", value_name = "QUERY")]
        query: Option<String>,
    },
    /// Show one device with its tags and groups.
    Show {
        /// Device id.
        id: DeviceId,
    },
    /// Register a device. With a hardware id it is pre-authorised: it fetches its own credential.
    Create(CreateArgs),
    /// Change a device's attributes and tags.
    Update(UpdateArgs),
    /// Delete a device with its tags, memberships and credentials (admin; its audit history stays).
    Delete {
        /// Device id.
        id: DeviceId,
    },
    /// Retire a device: revoke its credentials, keep its history, free its hardware id.
    Decommission {
        /// Device id.
        id: DeviceId,
    },
    /// Accept a pending device; it receives its credential the next time it asks.
    Accept {
        /// Device id.
        id: DeviceId,
    },
    /// Reject a pending device.
    Reject {
        /// Device id.
        id: DeviceId,
    },
    /// Issue a new credential for a device, revoking the old one; the credential is shown once.
    RotateCredential {
        /// Device id.
        id: DeviceId,
    },
    /// Revoke all of a device's credentials.
    RevokeCredentials {
        /// Device id.
        id: DeviceId,
    },
    /// List the static and dynamic groups a device belongs to now.
    Groups {
        /// Device id.
        id: DeviceId,
    },
    /// Import devices from a CSV or JSON-lines file, all or nothing.
    ///
    /// CSV needs a header row naming columns among id, device_type, hw_id, hw_rev, site, region,
    /// status, firmware, preauth_secret and tags.<key>. JSON lines hold one device object per line.
    Import(import::ImportArgs),
    /// Apply one change to every device matching a fleet query.
    BulkUpdate(BulkUpdateArgs),
}

/// Options of a device list (also used by `drover groups devices`).
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Fleet query (see docs/query-language.md); all devices when absent.
    #[arg(short = 'q', long = "query", value_name = "QUERY")]
    pub query: Option<String>,
    /// Sort field.
    #[arg(long, value_enum)]
    pub sort: Option<SortField>,
    /// Sort direction.
    #[arg(long, value_enum)]
    pub order: Option<SortOrder>,
    #[command(flatten)]
    pub paging: Paging,
}

/// Fields a device list can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum SortField {
    Id,
    CreatedAt,
    UpdatedAt,
    LastSeen,
    /// Semantic version order.
    Firmware,
}

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortOrder {
    Asc,
    Desc,
}

/// `drover devices create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Device type (product model), e.g. thermostat.
    #[arg(long = "type", value_name = "TYPE")]
    pub device_type: DeviceType,
    /// Device id; generated (dev-…) when absent.
    #[arg(long)]
    pub id: Option<DeviceId>,
    /// Hardware id or serial number the device provisions with.
    #[arg(long)]
    pub hw_id: Option<HardwareId>,
    /// Hardware revision.
    #[arg(long)]
    pub hw_rev: Option<Label>,
    #[arg(long)]
    pub site: Option<Label>,
    #[arg(long)]
    pub region: Option<Label>,
    /// Firmware version the device runs.
    #[arg(long)]
    pub firmware: Option<Version>,
    /// provisioning (default), active or inactive.
    #[arg(long, value_parser = DeviceStatus::parse)]
    pub status: Option<DeviceStatus>,
    /// A tag; repeat for several.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(TagKey, TagValue)>,
    /// Secret the device must present with its hardware id when it provisions (16–256 characters).
    #[arg(long, value_name = "SECRET")]
    pub preauth_secret: Option<String>,
    /// Issue the device credential now and print it (once), for devices configured by hand.
    #[arg(long)]
    pub issue_credential: bool,
}

/// Changes shared by `update` and `bulk-update`.
#[derive(Debug, Args)]
pub struct PatchArgs {
    /// New device type.
    #[arg(long = "type", value_name = "TYPE")]
    pub device_type: Option<DeviceType>,
    /// New hardware revision.
    #[arg(long)]
    pub hw_rev: Option<Label>,
    #[arg(long)]
    pub site: Option<Label>,
    #[arg(long)]
    pub region: Option<Label>,
    /// active, inactive or error (other transitions have their own commands).
    #[arg(long, value_parser = DeviceStatus::parse)]
    pub status: Option<DeviceStatus>,
    /// Set a tag; repeat for several.
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(TagKey, TagValue)>,
    /// Remove a tag; repeat for several.
    #[arg(long, value_name = "KEY")]
    pub untag: Vec<TagKey>,
    /// Clear an optional field; repeat for several.
    #[arg(long, value_enum, value_name = "FIELD")]
    pub clear: Vec<ClearField>,
}

/// Optional device fields `--clear` can empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClearField {
    #[value(alias = "hw_id")]
    HwId,
    #[value(alias = "hw_rev")]
    HwRev,
    Site,
    Region,
    Firmware,
}

/// `drover devices update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Device id.
    pub id: DeviceId,
    /// New hardware id (for a replaced unit).
    #[arg(long)]
    pub hw_id: Option<HardwareId>,
    /// Firmware version the device runs.
    #[arg(long)]
    pub firmware: Option<Version>,
    #[command(flatten)]
    pub patch: PatchArgs,
}

/// `drover devices bulk-update`.
#[derive(Debug, Args)]
pub struct BulkUpdateArgs {
    /// Fleet query selecting the devices to change (decommissioned devices are never selected).
    #[arg(short = 'q', long = "query", value_name = "QUERY")]
    pub query: String,
    #[command(flatten)]
    pub patch: PatchArgs,
}

/// Runs a `drover devices` subcommand.
pub async fn run(client: &Client, json: bool, command: DevicesCommand) -> Result<(), CliError> {
    let now = output::now();
    match command {
        DevicesCommand::List(args) => list(client, &["devices"], &args, json).await,
        DevicesCommand::Count { query } => {
            let mut params = Params::new();
            param(&mut params, "q", query);
            let count = client.get(&["devices", "count"], &params).await?;
            if json {
                return print_json(&count);
            }
            emit(&format!("{}\n", decode::<Count>(count)?.count))
        }
        DevicesCommand::Show { id } => {
            let device = client
                .get(&["devices", id.as_str()], &Params::new())
                .await?;
            if json {
                return print_json(&device);
            }
            let groups: DeviceGroups = decode(
                client
                    .get(&["devices", id.as_str(), "groups"], &Params::new())
                    .await?,
            )?;
            // A device that never sent a heartbeat has no health yet: not an error for `show`.
            let health: Option<HealthView> = match client
                .get(&["devices", id.as_str(), "health"], &Params::new())
                .await
            {
                Ok(value) => Some(decode(value)?),
                Err(e) if e.kind == ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            };
            let mut params = Params::new();
            param(&mut params, "limit", Some("5".to_owned()));
            let connectivity: ConnectivityView = decode(
                client
                    .get(&["devices", id.as_str(), "connectivity"], &params)
                    .await?,
            )?;
            let mut text = device_block(&decode(device)?, Some(&groups.groups), now);
            text.push_str(&connectivity_block(&connectivity, now));
            text.push_str(&health_block(health.as_ref(), now));
            emit(&text)
        }
        DevicesCommand::Create(args) => create(client, json, args).await,
        DevicesCommand::Update(args) => {
            let patch = args.patch.into_patch(args.hw_id, args.firmware)?;
            let device = client
                .call_json(Method::PATCH, &["devices", args.id.as_str()], &patch)
                .await?;
            if json {
                return print_json(&device);
            }
            emit(&format!(
                "Updated device {}.\n{}",
                args.id,
                device_block(&decode(device)?, None, now)
            ))
        }
        DevicesCommand::Delete { id } => {
            client
                .call(Method::DELETE, &["devices", id.as_str()])
                .await?;
            if json {
                return Ok(());
            }
            emit(&format!("Deleted device {id}.\n"))
        }
        DevicesCommand::Decommission { id } => {
            let message = format!("Decommissioned device {id}: its credentials are revoked and its hardware id is free.\n");
            lifecycle(client, json, &id, "decommission", message).await
        }
        DevicesCommand::Accept { id } => {
            let message = format!(
                "Accepted device {id}: it receives its credential the next time it asks.\n"
            );
            lifecycle(client, json, &id, "accept", message).await
        }
        DevicesCommand::Reject { id } => {
            lifecycle(
                client,
                json,
                &id,
                "reject",
                format!("Rejected device {id}.\n"),
            )
            .await
        }
        DevicesCommand::RotateCredential { id } => {
            let created = client
                .call(Method::POST, &["devices", id.as_str(), "credentials"])
                .await?;
            if json {
                return print_json(&created);
            }
            let created: DeviceCredential = decode(created)?;
            emit(&credential_block(&created.device_id, &created.credential))
        }
        DevicesCommand::RevokeCredentials { id } => {
            let count = client
                .call(Method::DELETE, &["devices", id.as_str(), "credentials"])
                .await?;
            if json {
                return print_json(&count);
            }
            emit(&format!(
                "Revoked {} credential(s) of device {id}.\n",
                decode::<Count>(count)?.count
            ))
        }
        DevicesCommand::Groups { id } => {
            let groups = client
                .get(&["devices", id.as_str(), "groups"], &Params::new())
                .await?;
            if json {
                return print_json(&groups);
            }
            let groups: DeviceGroups = decode(groups)?;
            if groups.groups.is_empty() {
                eprintln!("device {id} is in no groups");
                return Ok(());
            }
            emit(
                &groups
                    .groups
                    .iter()
                    .map(|g| format!("{g}\n"))
                    .collect::<String>(),
            )
        }
        DevicesCommand::Import(args) => import::run(client, json, args).await,
        DevicesCommand::BulkUpdate(args) => {
            let body = BulkUpdate {
                query: args.query,
                set: args.patch.into_patch(None, None)?,
            };
            let result = client
                .call_json(Method::POST, &["devices", "bulk-update"], &body)
                .await?;
            if json {
                return print_json(&result);
            }
            let result: BulkUpdateResult = decode(result)?;
            emit(&format!(
                "Matched {} device(s); updated {}.\n",
                result.matched, result.updated
            ))
        }
    }
}

/// Prints a page (or with `--all` every page) of the devices at `path`.
pub async fn list(
    client: &Client,
    path: &[&str],
    args: &ListArgs,
    json: bool,
) -> Result<(), CliError> {
    let mut params = Params::new();
    param(&mut params, "q", args.query.as_deref());
    param(&mut params, "sort", args.sort.map(wire_name));
    param(&mut params, "order", args.order.map(wire_name));
    let now = output::now();
    paging::print_list(
        client,
        path,
        params,
        &args.paging,
        json,
        "devices",
        |devices: &[DeviceView]| device_table(devices, now),
    )
    .await
}

/// The device table: one row per device.
pub fn device_table(devices: &[DeviceView], now: Timestamp) -> String {
    let mut table = Table::new(&[
        "ID",
        "TYPE",
        "STATUS",
        "CONNECTIVITY",
        "FIRMWARE",
        "HW REV",
        "SITE",
        "REGION",
        "LAST SEEN",
        "TAGS",
    ]);
    for device in devices {
        table.row(vec![
            device.id.to_string(),
            device.device_type.to_string(),
            device.status.to_string(),
            device.connectivity.to_string(),
            or_dash(device.firmware.as_ref()),
            or_dash(device.hw_rev.as_ref()),
            or_dash(device.site.as_ref()),
            or_dash(device.region.as_ref()),
            output::last_seen(device.last_seen, now),
            output::tags(&device.tags, ","),
        ]);
    }
    table.render()
}

/// One device as a key-value block; `groups` when they were fetched.
pub fn device_block(device: &DeviceView, groups: Option<&[String]>, now: Timestamp) -> String {
    let mut pairs = vec![
        ("ID", device.id.to_string()),
        ("Type", device.device_type.to_string()),
        ("Status", device.status.to_string()),
        ("Firmware", or_dash(device.firmware.as_ref())),
        ("Hardware id", or_dash(device.hw_id.as_ref())),
        ("HW rev", or_dash(device.hw_rev.as_ref())),
        ("Site", or_dash(device.site.as_ref())),
        ("Region", or_dash(device.region.as_ref())),
        ("Tags", output::tags(&device.tags, "\n")),
    ];
    if let Some(groups) = groups {
        pairs.push((
            "Groups",
            if groups.is_empty() {
                "-".to_owned()
            } else {
                groups.join("\n")
            },
        ));
    }
    let last_seen = match device.last_seen {
        Some(at) => format!("{} ({})", output::time(at), output::relative(at, now)),
        None => "never".to_owned(),
    };
    pairs.extend([
        ("Created", output::time(device.created_at)),
        ("Updated", output::time(device.updated_at)),
        ("Last seen", last_seen),
    ]);
    fields(&pairs)
}

/// Connectivity under a device's key-value block: state, link score and the recent changes.
pub fn connectivity_block(view: &ConnectivityView, now: Timestamp) -> String {
    let state = match view.link_score {
        Some(score) => format!("{} (link score {score}/100)", view.state),
        None => view.state.to_string(),
    };
    let mut pairs = vec![("Connectivity".to_owned(), state)];
    for change in &view.history {
        pairs.push((
            format!("  {}", output::relative(change.at, now)),
            format!("{} -> {}", change.from, change.to),
        ));
    }
    let pairs: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    format!("\n{}", fields(&pairs))
}

/// The latest heartbeat under a device's key-value block: when, then one line per metric with
/// its unit for known metrics.
pub fn health_block(health: Option<&HealthView>, now: Timestamp) -> String {
    let Some(health) = health else {
        return "\nHealth:       no heartbeat yet\n".to_owned();
    };
    let mut pairs = vec![(
        "Health".to_owned(),
        format!(
            "{} ({})",
            output::time(health.observed_at),
            output::relative(health.observed_at, now)
        ),
    )];
    if let Some(slot) = &health.boot_slot {
        pairs.push(("  boot slot".to_owned(), slot.clone()));
    }
    for (name, value) in &health.metrics {
        let unit = drover_core::health::MetricName::parse(name)
            .ok()
            .and_then(|m| m.known())
            .map_or("", |known| known.unit);
        pairs.push((
            format!("  {name}"),
            format!("{value} {unit}").trim_end().to_owned(),
        ));
    }
    let pairs: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    format!("\n{}", fields(&pairs))
}

impl PatchArgs {
    /// The patch these flags describe; contradictory or empty changes are usage errors.
    pub fn into_patch(
        self,
        hw_id: Option<HardwareId>,
        firmware: Option<Version>,
    ) -> Result<DevicePatch, CliError> {
        let mut patch = DevicePatch {
            device_type: self.device_type,
            hw_id: hw_id.map(Some),
            hw_rev: self.hw_rev.map(Some),
            site: self.site.map(Some),
            region: self.region.map(Some),
            status: self.status,
            firmware: firmware.map(Some),
            tags: Default::default(),
        };
        for field in self.clear {
            let was_set = match field {
                ClearField::HwId => matches!(patch.hw_id.replace(None), Some(Some(_))),
                ClearField::HwRev => matches!(patch.hw_rev.replace(None), Some(Some(_))),
                ClearField::Site => matches!(patch.site.replace(None), Some(Some(_))),
                ClearField::Region => matches!(patch.region.replace(None), Some(Some(_))),
                ClearField::Firmware => matches!(patch.firmware.replace(None), Some(Some(_))),
            };
            if was_set {
                let name = wire_name(field);
                return Err(CliError::usage(format!(
                    "--{name} and --clear {name} contradict each other"
                )));
            }
        }
        for (key, value) in self.tags {
            patch.tags.insert(key, Some(value));
        }
        for key in self.untag {
            if let Some(Some(_)) = patch.tags.insert(key.clone(), None) {
                return Err(CliError::usage(format!(
                    "--tag {key}=… and --untag {key} contradict each other"
                )));
            }
        }
        if patch.is_empty() {
            return Err(CliError::usage(
                "nothing to change: pass --tag, --untag, --clear or a new value such as --site",
            ));
        }
        Ok(patch)
    }
}

async fn create(client: &Client, json: bool, args: CreateArgs) -> Result<(), CliError> {
    let has_preauth_secret = args.preauth_secret.is_some();
    let new = NewDevice {
        id: args.id,
        device_type: args.device_type,
        hw_id: args.hw_id,
        hw_rev: args.hw_rev,
        site: args.site,
        region: args.region,
        status: args.status,
        firmware: args.firmware,
        tags: args.tags.into_iter().collect(),
        last_seen: None,
        preauth_secret: args.preauth_secret,
        issue_credential: args.issue_credential,
    };
    let created = client.call_json(Method::POST, &["devices"], &new).await?;
    if json {
        return print_json(&created);
    }
    let created: CreatedDevice = decode(created)?;
    let device = &created.device;
    let mut text = format!(
        "Created device {} ({}, {}).\n",
        device.id, device.device_type, device.status
    );
    match (&created.credential, &device.hw_id) {
        (Some(credential), _) => text.push_str(&credential_block(device.id.as_str(), credential)),
        (None, Some(hw_id)) if device.status == DeviceStatus::Provisioning => {
            let provision = client.url(&["api", "device", "v1", "provision"]);
            let secret = if has_preauth_secret {
                " and its preauth_secret"
            } else {
                ""
            };
            text.push_str(&format!(
                "It fetches its own credential from {provision} by presenting hardware_id {:?}{secret}.\n",
                hw_id.as_str()
            ));
        }
        _ => {}
    }
    emit(&text)
}

async fn lifecycle(
    client: &Client,
    json: bool,
    id: &DeviceId,
    verb: &str,
    message: String,
) -> Result<(), CliError> {
    let device = client
        .call(Method::POST, &["devices", id.as_str(), verb])
        .await?;
    if json {
        return print_json(&device);
    }
    emit(&message)
}

fn credential_block(device_id: &str, credential: &str) -> String {
    format!(
        "\nDevice credential for {device_id} (shown only this once; store it on the device):\n\n    {credential}\n\n\
         The device sends it as `Authorization: Bearer <credential>` on every device API call.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::ErrorKind;

    fn patch_args() -> PatchArgs {
        PatchArgs {
            device_type: None,
            hw_rev: None,
            site: None,
            region: None,
            status: None,
            tags: Vec::new(),
            untag: Vec::new(),
            clear: Vec::new(),
        }
    }

    #[test]
    fn patches_set_clear_and_untag_fields() {
        let args = PatchArgs {
            site: Some(Label::parse("berlin-1").unwrap()),
            tags: vec![parse_tag("env=prod").unwrap()],
            untag: vec![TagKey::parse("old").unwrap()],
            clear: vec![ClearField::Region],
            ..patch_args()
        };
        let patch = args.into_patch(None, None).unwrap();
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            serde_json::json!({ "site": "berlin-1", "region": null, "tags": { "env": "prod", "old": null } })
        );
    }

    #[test]
    fn contradictory_or_empty_patches_are_usage_errors() {
        let empty = patch_args().into_patch(None, None).unwrap_err();
        assert_eq!(empty.kind, ErrorKind::Usage);
        let both = PatchArgs {
            site: Some(Label::parse("x").unwrap()),
            clear: vec![ClearField::Site],
            ..patch_args()
        };
        assert!(both
            .into_patch(None, None)
            .unwrap_err()
            .message
            .contains("--site and --clear site"));
        let tag_untag = PatchArgs {
            tags: vec![parse_tag("a=b").unwrap()],
            untag: vec![TagKey::parse("a").unwrap()],
            ..patch_args()
        };
        assert_eq!(
            tag_untag.into_patch(None, None).unwrap_err().kind,
            ErrorKind::Usage
        );
    }

    #[test]
    fn device_tables_show_dashes_for_missing_fields_and_relative_last_seen() {
        let device: DeviceView = serde_json::from_value(serde_json::json!({
            "id": "thermo-0001", "device_type": "thermostat", "hw_id": "SN-1", "hw_rev": "rev2", "site": null,
            "region": null, "status": "active", "firmware": "2.2.0", "tags": { "env": "prod" },
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "last_seen": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        let now = Timestamp::parse_rfc3339("2026-01-01T00:05:00Z").unwrap();
        assert_eq!(
            device_table(&[device], now),
            "ID           TYPE        STATUS  CONNECTIVITY  FIRMWARE  HW REV  SITE  REGION  LAST SEEN  TAGS\n\
             thermo-0001  thermostat  active  unknown       2.2.0     rev2    -     -       5m ago     env=prod\n"
        );
    }
}
