//! `drover shadow get | set | delete`: a device's shadow: the desired state operators set, the
//! state the device reports, and the delta between them.
//!
//! `set` builds the desired patch from `KEY=VALUE` arguments (dotted keys for nested fields, values
//! read as JSON when they are JSON and as strings otherwise, `null` deleting), optionally on top of
//! a JSON object from a file or the command line, and sends it as one `PATCH`.

use std::path::PathBuf;

use clap::Subcommand;
use drover_core::shadow::{JsonObject, ShadowName};
use drover_core::DeviceId;
use drover_proto::shadow::{ShadowStatePatch, ShadowUpdateRequest, ShadowView};
use reqwest::Method;
use serde_json::Value;

use crate::cli::client::{decode, param, Client, Params};
use crate::cli::output::{self, emit, print_json};
use crate::cli::CliError;

/// `drover shadow` subcommands.
#[derive(Debug, Subcommand)]
pub enum ShadowCommand {
    /// Show a device's shadow: desired and reported state, the delta the device has yet to apply,
    /// and the version.
    Get {
        /// Device id.
        device: DeviceId,
        /// A named shadow; the classic (unnamed) shadow by default.
        #[arg(long)]
        name: Option<ShadowName>,
    },
    /// Set desired state: `drover shadow set lamp-1 led=on cfg.rate=5 old_field=null`.
    Set {
        /// Device id.
        device: DeviceId,
        /// Fields to set. A VALUE that is valid JSON is used as JSON (`5`, `true`, `[1,2]`,
        /// `{"a":1}`, `"5"` for the string), anything else as a string; `null` deletes the field.
        /// Dots in KEY name nested fields: `cfg.rate=5`.
        #[arg(value_name = "KEY=VALUE", value_parser = parse_assignment)]
        assignments: Vec<(Vec<String>, Value)>,
        /// Start from the JSON object in this file (the KEY=VALUE fields are applied on top).
        #[arg(long, value_name = "FILE", conflicts_with = "desired")]
        json_file: Option<PathBuf>,
        /// Start from this JSON object, e.g. '{"cfg": {"rate": 5}}' (`--json` alone is the
        /// global switch for JSON output).
        #[arg(long, value_name = "JSON")]
        desired: Option<String>,
        /// A named shadow; the classic (unnamed) shadow by default.
        #[arg(long)]
        name: Option<ShadowName>,
        /// Apply only if the shadow is still at this version (0: only if it was never written);
        /// exits 5 if someone changed it meanwhile.
        #[arg(long, value_name = "VERSION")]
        expect_version: Option<u64>,
    },
    /// Delete a device's shadow. Its version is kept, so a shadow set later continues from it.
    Delete {
        /// Device id.
        device: DeviceId,
        /// A named shadow; the classic (unnamed) shadow by default.
        #[arg(long)]
        name: Option<ShadowName>,
    },
}

/// Runs a `drover shadow` subcommand.
pub async fn run(client: &Client, json: bool, command: ShadowCommand) -> Result<(), CliError> {
    match command {
        ShadowCommand::Get { device, name } => {
            let document = client
                .get(&["devices", device.as_str(), "shadow"], &name_param(&name))
                .await?;
            show(json, &device, name.as_ref(), document)
        }
        ShadowCommand::Set {
            device,
            assignments,
            json_file,
            desired,
            name,
            expect_version,
        } => {
            let base = match (json_file, desired) {
                (Some(path), _) => Some(read_json_file(&path)?),
                (None, Some(text)) => Some(parse_object(&text, "--desired")?),
                (None, None) => None,
            };
            if base.is_none() && assignments.is_empty() {
                return Err(CliError::usage(
                    "nothing to set: give KEY=VALUE fields, --desired '{…}' or --json-file FILE",
                ));
            }
            let patch = build_patch(base.unwrap_or_default(), assignments);
            let request = ShadowUpdateRequest {
                state: ShadowStatePatch {
                    desired: Some(Value::Object(patch)),
                    reported: None,
                },
                version: expect_version,
                client_token: None,
            };
            let document = client
                .call_with(
                    Method::PATCH,
                    &["devices", device.as_str(), "shadow"],
                    &name_param(&name),
                    Some(&request),
                )
                .await?;
            show(json, &device, name.as_ref(), document)
        }
        ShadowCommand::Delete { device, name } => {
            client
                .call_with(
                    Method::DELETE,
                    &["devices", device.as_str(), "shadow"],
                    &name_param(&name),
                    None::<&()>,
                )
                .await?;
            if json {
                return Ok(());
            }
            emit(&format!(
                "Deleted {} of device {device}.\n",
                describe(name.as_ref())
            ))
        }
    }
}

/// Parses `KEY=VALUE` into the key's path and the value (see `Set::assignments`).
pub fn parse_assignment(text: &str) -> Result<(Vec<String>, Value), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, e.g. led=on or cfg.rate=5, not {text:?}"))?;
    let path: Vec<String> = key.split('.').map(str::to_owned).collect();
    if path.iter().any(String::is_empty) {
        return Err(format!(
            "invalid key {key:?}: dotted keys need a name between the dots (cfg.rate)"
        ));
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((path, value))
}

/// Sets each assignment into `base`, creating nested objects along dotted paths. A later
/// assignment wins over an earlier one, and a path through a non-object replaces it with an object.
pub fn build_patch(mut base: JsonObject, assignments: Vec<(Vec<String>, Value)>) -> JsonObject {
    for (path, value) in assignments {
        let Some((leaf, parents)) = path.split_last() else {
            continue;
        };
        let mut target = &mut base;
        for key in parents {
            let entry = target
                .entry(key.clone())
                .or_insert_with(|| Value::Object(JsonObject::new()));
            if !entry.is_object() {
                *entry = Value::Object(JsonObject::new());
            }
            let Value::Object(object) = entry else {
                unreachable!("the entry was just made an object");
            };
            target = object;
        }
        target.insert(leaf.clone(), value);
    }
    base
}

/// Desired, reported, delta and version as a key-value block, one line per leaf field.
pub fn render(device: &DeviceId, name: Option<&ShadowName>, shadow: &ShadowView) -> String {
    let delta = match &shadow.state.delta {
        Some(delta) => leaf_lines(delta),
        None => "none (the device has converged)".to_owned(),
    };
    output::fields(&[
        ("Device", device.to_string()),
        (
            "Shadow",
            name.map_or_else(|| "classic".to_owned(), ToString::to_string),
        ),
        ("Version", shadow.version.to_string()),
        ("Updated", output::time(shadow.timestamp)),
        ("Desired", leaf_lines(&shadow.state.desired)),
        ("Reported", leaf_lines(&shadow.state.reported)),
        ("Delta", delta),
    ])
}

/// `path = value` per leaf, nested objects flattened into dotted paths, values as compact JSON;
/// `-` for an empty object.
pub fn leaf_lines(object: &JsonObject) -> String {
    fn walk(prefix: &str, object: &JsonObject, lines: &mut Vec<String>) {
        for (key, value) in object {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                Value::Object(child) => walk(&path, child, lines),
                leaf => lines.push(format!("{path} = {leaf}")),
            }
        }
    }
    let mut lines = Vec::new();
    walk("", object, &mut lines);
    if lines.is_empty() {
        "-".to_owned()
    } else {
        lines.join("\n")
    }
}

fn show(
    json: bool,
    device: &DeviceId,
    name: Option<&ShadowName>,
    document: Value,
) -> Result<(), CliError> {
    if json {
        return print_json(&document);
    }
    let shadow: ShadowView = decode(document)?;
    emit(&render(device, name, &shadow))
}

fn name_param(name: &Option<ShadowName>) -> Params {
    let mut params = Params::new();
    param(&mut params, "name", name.as_ref());
    params
}

fn describe(name: Option<&ShadowName>) -> String {
    name.map_or_else(
        || "the classic shadow".to_owned(),
        |name| format!("shadow {name:?}", name = name.as_str()),
    )
}

fn read_json_file(path: &PathBuf) -> Result<JsonObject, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    parse_object(&text, &path.display().to_string())
}

fn parse_object(text: &str, source: &str) -> Result<JsonObject, CliError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(CliError::usage(format!(
            "{source} must hold a JSON object, like {{\"led\": \"on\"}}"
        ))),
        Err(e) => Err(CliError::usage(format!("{source} is not valid JSON: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(value: Value) -> JsonObject {
        match value {
            Value::Object(object) => object,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn assignments_read_json_values_and_fall_back_to_strings() {
        // (argument, path, value)
        let cases = [
            ("led=on", vec!["led"], json!("on")),
            ("rate=5", vec!["rate"], json!(5)),
            ("ratio=0.5", vec!["ratio"], json!(0.5)),
            ("enabled=true", vec!["enabled"], json!(true)),
            ("version=\"5\"", vec!["version"], json!("5")),
            ("list=[1,2]", vec!["list"], json!([1, 2])),
            ("old=null", vec!["old"], Value::Null),
            ("note=", vec!["note"], json!("")),
            ("greeting=a=b", vec!["greeting"], json!("a=b")),
            ("cfg.net.mtu=1400", vec!["cfg", "net", "mtu"], json!(1400)),
        ];
        for (text, path, value) in cases {
            let path: Vec<String> = path.into_iter().map(str::to_owned).collect();
            assert_eq!(parse_assignment(text), Ok((path, value)), "{text}");
        }
        assert!(parse_assignment("led").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_assignment("cfg..rate=1")
            .unwrap_err()
            .contains("between the dots"));
        assert!(parse_assignment(".rate=1").is_err());
    }

    #[test]
    fn dotted_assignments_build_nested_objects_on_top_of_the_base() {
        let base = object(json!({"cfg": {"rate": 1, "mode": "eco"}, "led": {"r": 1}}));
        let assignments = ["cfg.rate=5", "cfg.net.mtu=1400", "led=off", "gone=null"]
            .iter()
            .map(|text| parse_assignment(text).unwrap())
            .collect();
        assert_eq!(
            Value::Object(build_patch(base, assignments)),
            json!({"cfg": {"rate": 5, "mode": "eco", "net": {"mtu": 1400}}, "led": "off", "gone": null})
        );
        let through_a_leaf = vec![
            parse_assignment("a=1").unwrap(),
            parse_assignment("a.b=2").unwrap(),
        ];
        assert_eq!(
            Value::Object(build_patch(JsonObject::new(), through_a_leaf)),
            json!({"a": {"b": 2}})
        );
    }

    #[test]
    fn shadows_render_one_line_per_leaf() {
        let shadow: ShadowView = serde_json::from_value(json!({
            "state": {
                "desired": {"led": "on", "cfg": {"rate": 5, "hosts": ["a", "b"]}},
                "reported": {},
                "delta": {"led": "on"},
            },
            "metadata": {"desired": {}, "reported": {}},
            "version": 3,
            "timestamp": "2026-11-23T10:00:00.000Z",
        }))
        .unwrap();
        let device = DeviceId::parse("lamp-1").unwrap();
        assert_eq!(
            render(&device, None, &shadow),
            "Device:    lamp-1\n\
             Shadow:    classic\n\
             Version:   3\n\
             Updated:   2026-11-23T10:00:00Z\n\
             Desired:   cfg.hosts = [\"a\",\"b\"]\n           cfg.rate = 5\n           led = \"on\"\n\
             Reported:  -\n\
             Delta:     led = \"on\"\n"
        );
    }
}
