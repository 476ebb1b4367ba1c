//! `drover keys …`: TUF signing keys kept offline. Generate key files, rotate the root (the new
//! root is signed by the old root's keys and the new ones, so devices can walk the chain), add
//! signatures from separate key holders, and publish the result.
//!
//! The private root key never goes to the server: `rotate-root` builds and signs the new root on the
//! operator's machine and uploads only the signed metadata. Keys of the online roles (targets,
//! snapshot, timestamp) are handed to the server when a rotation replaces them.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use drover_tuf::{PrivateKey, PublicKey, Role, Root, RootBuilder, Signed};
use reqwest::Method;
use serde_json::json;

use crate::cli::client::{Client, Params};
use crate::cli::output::{emit, fields, print_json};
use crate::cli::{CliError, ErrorKind};

/// `drover keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate an ed25519 key file (readable only by you).
    Generate {
        /// Where to write it; refuses to overwrite.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Show the server's current root: version, expiry, keys and thresholds of each role.
    ShowRoot,
    /// Build the next root version: replace the keys of any role, sign it with the current root's
    /// keys and the new root keys, and publish it (or write it for more signatures).
    RotateRoot {
        /// A key of the current root (repeat up to its threshold).
        #[arg(long = "sign-with", value_name = "KEY_FILE", required = true)]
        sign_with: Vec<PathBuf>,
        /// The new root's keys (repeat); the current root keys stay when absent.
        #[arg(long = "root-key", value_name = "KEY_FILE")]
        root_keys: Vec<PathBuf>,
        /// Signatures the new root role needs.
        #[arg(long, default_value_t = 1)]
        root_threshold: u32,
        /// Replace the targets key (handed to the server, which signs targets online).
        #[arg(long, value_name = "KEY_FILE")]
        targets_key: Option<PathBuf>,
        /// Replace the snapshot key (handed to the server).
        #[arg(long, value_name = "KEY_FILE")]
        snapshot_key: Option<PathBuf>,
        /// Replace the timestamp key (handed to the server).
        #[arg(long, value_name = "KEY_FILE")]
        timestamp_key: Option<PathBuf>,
        /// How long the new root is valid, e.g. 365d.
        #[arg(long, default_value = "365d")]
        expires_in: String,
        /// Also write the signed root to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Only write the file (for more key holders to `drover keys sign`); do not publish.
        #[arg(long, requires = "out")]
        no_publish: bool,
    },
    /// Add your signature to a root metadata file another key holder prepared.
    Sign {
        /// The metadata file; rewritten with the signature added.
        file: PathBuf,
        #[arg(long, value_name = "KEY_FILE")]
        key: PathBuf,
    },
    /// Publish a signed root file on the server.
    PublishRoot { file: PathBuf },
}

/// Runs a keys subcommand; `generate` and `sign` need no server.
pub async fn run(
    client: Result<Client, CliError>,
    json: bool,
    command: KeysCommand,
) -> Result<(), CliError> {
    match command {
        KeysCommand::Generate { out } => generate(&out, json),
        KeysCommand::Sign { file, key } => {
            let key = load_key(&key)?;
            let mut root = load_root(&file)?;
            root.sign(&key).map_err(tuf_error)?;
            std::fs::write(&file, root.to_bytes()).map_err(|e| write_error(&file, &e))?;
            emit(&format!(
                "Signed {} (root version {}) with key {}; it has {} signature(s).\n",
                file.display(),
                root.signed().version,
                key.key_id(),
                root.signatures().len()
            ))
        }
        KeysCommand::ShowRoot => {
            let client = client?;
            let value = client.get(&["tuf", "root"], &Params::new()).await?;
            if json {
                return print_json(&value);
            }
            let root = root_from_value(&value)?;
            emit(&describe(root.signed()))
        }
        KeysCommand::PublishRoot { file } => {
            let client = client?;
            let bytes = std::fs::read(&file)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
            publish(&client, bytes, json).await
        }
        KeysCommand::RotateRoot {
            sign_with,
            root_keys,
            root_threshold,
            targets_key,
            snapshot_key,
            timestamp_key,
            expires_in,
            out,
            no_publish,
        } => {
            let client = client?;
            let expires_in = drover_core::Duration::parse(&expires_in)
                .map_err(|e| CliError::usage(format!("--expires-in: {e}")))?;
            let old_keys = sign_with
                .iter()
                .map(|p| load_key(p))
                .collect::<Result<Vec<_>, _>>()?;
            let new_root_keys = root_keys
                .iter()
                .map(|p| load_key(p))
                .collect::<Result<Vec<_>, _>>()?;
            let value = client.get(&["tuf", "root"], &Params::new()).await?;
            let current = root_from_value(&value)?.into_signed();
            let expires = time::OffsetDateTime::now_utc()
                + time::Duration::milliseconds(expires_in.as_millis());
            let mut builder = RootBuilder::successor_of(&current, expires);
            if !new_root_keys.is_empty() {
                let public: Vec<PublicKey> =
                    new_root_keys.iter().map(PrivateKey::public_key).collect();
                builder = builder.role(Role::Root, &public, root_threshold);
            }
            for (role, path) in [
                (Role::Targets, &targets_key),
                (Role::Snapshot, &snapshot_key),
                (Role::Timestamp, &timestamp_key),
            ] {
                let Some(path) = path else { continue };
                let key = load_key(path)?;
                if !no_publish {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        CliError::usage(format!("cannot read {}: {e}", path.display()))
                    })?;
                    client
                        .call_json(
                            Method::POST,
                            &["tuf", "keys"],
                            &json!({"role": role.as_str(), "key": text}),
                        )
                        .await?;
                }
                builder = builder.role(role, &[key.public_key()], 1);
            }
            let next = builder.build().map_err(tuf_error)?;
            let signers: Vec<&PrivateKey> = old_keys.iter().chain(new_root_keys.iter()).collect();
            let mut signed = Signed::new(next).map_err(tuf_error)?;
            for key in &signers {
                signed.sign(key).map_err(tuf_error)?;
            }
            let bytes = signed.to_bytes();
            if let Some(out) = &out {
                std::fs::write(out, &bytes).map_err(|e| write_error(out, &e))?;
            }
            if no_publish {
                return emit(&format!(
                    "Wrote root version {} to {}; other key holders add signatures with `drover keys sign`, then `drover keys publish-root`.\n",
                    signed.signed().version,
                    out.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
                ));
            }
            drover_tuf::check_root_successor(&current, &signed).map_err(|e| {
                CliError::usage(format!(
                    "the new root is not valid yet: {e}; sign it with more keys (--sign-with / --root-key), or write it with --out --no-publish for other key holders"
                ))
            })?;
            publish(&client, bytes, json).await
        }
    }
}

fn generate(out: &Path, json: bool) -> Result<(), CliError> {
    if out.exists() {
        return Err(CliError::usage(format!(
            "{} exists; refusing to overwrite a key",
            out.display()
        )));
    }
    let key = PrivateKey::generate().map_err(tuf_error)?;
    drover_server::tuf_repo::write_private(out, &key.to_key_file())
        .map_err(|e| write_error(out, &e))?;
    if json {
        return print_json(
            &json!({"keyid": key.key_id().to_string(), "public": key.public_key().keyval.public}),
        );
    }
    emit(&format!(
        "Wrote {} (keyid {}). Keep it offline and backed up.\n",
        out.display(),
        key.key_id()
    ))
}

async fn publish(client: &Client, bytes: Vec<u8>, json: bool) -> Result<(), CliError> {
    let value = client
        .upload(
            &["tuf", "root"],
            &Params::new(),
            "application/json",
            bytes.into(),
        )
        .await?;
    if json {
        return print_json(&value);
    }
    emit(&format!(
        "Published root version {}; devices walk to it at their next update check.\n",
        value["root_version"]
    ))
}

fn describe(root: &Root) -> String {
    let role = |name: &str, keys: &drover_tuf::RoleKeys| {
        (
            name.to_owned(),
            format!(
                "{} of {} key(s): {}",
                keys.threshold,
                keys.keyids.len(),
                keys.keyids
                    .iter()
                    .map(|k| k.as_str().chars().take(12).collect::<String>())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    let pairs = [
        ("version".to_owned(), root.version.to_string()),
        (
            "expires".to_owned(),
            drover_tuf::metadata::format_expires(root.expires),
        ),
        (
            "consistent snapshots".to_owned(),
            root.consistent_snapshot.to_string(),
        ),
        role("root", &root.roles.root),
        role("targets", &root.roles.targets),
        role("snapshot", &root.roles.snapshot),
        role("timestamp", &root.roles.timestamp),
    ];
    let pairs: Vec<(&str, String)> = pairs.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    fields(&pairs)
}

fn load_key(path: &Path) -> Result<PrivateKey, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read key file {}: {e}", path.display())))?;
    PrivateKey::from_key_file(&text)
        .map_err(|e| CliError::usage(format!("{} is not a valid key file: {e}", path.display())))
}

fn load_root(path: &Path) -> Result<Signed<Root>, CliError> {
    let bytes = std::fs::read(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    Signed::<Root>::from_slice(&bytes)
        .map_err(|e| CliError::usage(format!("{} is not root metadata: {e}", path.display())))
}

fn root_from_value(value: &serde_json::Value) -> Result<Signed<Root>, CliError> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    Signed::<Root>::from_slice(&bytes).map_err(|e| {
        CliError::new(
            ErrorKind::Other,
            format!("the server's root metadata is not valid: {e}"),
        )
    })
}

fn tuf_error(e: drover_tuf::Error) -> CliError {
    CliError::usage(e.to_string())
}

fn write_error(path: &Path, e: &std::io::Error) -> CliError {
    CliError::new(
        ErrorKind::Other,
        format!("cannot write {}: {e}", path.display()),
    )
}
