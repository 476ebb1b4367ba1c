//! `drover artifacts …` (upload with a progress line, list, show, download with resume, delete) and
//! `drover deployments …` (install an artifact on one device, follow and cancel it).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::Subcommand;
use drover_core::{ArtifactName, DeviceId, DeviceType, Label, Version};
use drover_proto::artifacts::{
    ArtifactMetadata, ArtifactView, DeploymentView, NewDeployment, Provenance,
};
use drover_proto::update::UpdateType;
use futures::StreamExt;
use reqwest::Method;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::client::{decode, param, Client, Params};
use crate::cli::output::{self, bytes, emit, fields, or_dash, print_json, Progress, Table};
use crate::cli::paging::{print_list, Paging};
use crate::cli::{CliError, ErrorKind};

/// `drover artifacts` subcommands.
#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Upload a firmware image with its metadata (streamed; a progress line on a terminal).
    // `version` is an argument here, so `--version` cannot be the propagated version flag.
    #[command(disable_version_flag = true)]
    Upload(Box<UploadArgs>),
    /// List artifacts, newest upload first.
    List {
        /// Only versions of this artifact.
        #[arg(long)]
        name: Option<ArtifactName>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one artifact: files, hashes, provenance, deltas.
    // `version` is an argument here, so `--version` cannot be the propagated version flag.
    #[command(disable_version_flag = true)]
    Show {
        name: ArtifactName,
        version: Version,
    },
    /// Download an artifact's image (or its debug symbols); resumes a partial file.
    // `version` is an argument here, so `--version` cannot be the propagated version flag.
    #[command(disable_version_flag = true)]
    Download {
        name: ArtifactName,
        version: Version,
        /// Where to write it [default: NAME-VERSION.img, or .elf with --symbols].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The debug-symbols file instead of the image.
        #[arg(long)]
        symbols: bool,
    },
    /// Delete an artifact and its files (refused while it is being deployed).
    // `version` is an argument here, so `--version` cannot be the propagated version flag.
    #[command(disable_version_flag = true)]
    Delete {
        name: ArtifactName,
        version: Version,
    },
}

/// `drover artifacts upload`.
#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    /// The image file.
    pub file: PathBuf,
    #[arg(long)]
    pub name: ArtifactName,
    #[arg(long)]
    pub version: Version,
    /// A device type the image runs on (repeat for several).
    #[arg(long = "device-type", value_name = "TYPE", required = true)]
    pub device_types: Vec<DeviceType>,
    /// A hardware revision it runs on (repeat; none means every revision).
    #[arg(long = "hw-rev", value_name = "REV")]
    pub hw_revs: Vec<Label>,
    /// The git commit it was built from.
    #[arg(long, env = "DROVER_GIT_COMMIT")]
    pub git_commit: Option<String>,
    /// The CI build id.
    #[arg(long, env = "DROVER_BUILD_ID")]
    pub build_id: Option<String>,
    /// The CI run's URL.
    #[arg(long, env = "DROVER_CI_URL")]
    pub ci_url: Option<String>,
    /// Release notes (text).
    #[arg(long, conflicts_with = "notes_file")]
    pub notes: Option<String>,
    /// Release notes from a file.
    #[arg(long, value_name = "FILE")]
    pub notes_file: Option<PathBuf>,
    /// The ELF file with debug symbols, kept for crash symbolication.
    #[arg(long, value_name = "ELF")]
    pub symbols: Option<PathBuf>,
    /// Devices that install this image refuse versions below this afterwards.
    #[arg(long, value_name = "VERSION")]
    pub security_floor: Option<Version>,
}

/// `drover deployments` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// Install an artifact on one device.
    // `version` is an argument here, so `--version` cannot be the propagated version flag.
    #[command(disable_version_flag = true)]
    Create {
        device: DeviceId,
        #[arg(long)]
        artifact: ArtifactName,
        #[arg(long)]
        version: Version,
        /// forced (default), soft or download-only.
        #[arg(long, value_enum, default_value = "forced")]
        update_type: UpdateTypeArg,
        /// Allow installing a version older than the device runs.
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// A device's deployments, newest first.
    List { device: DeviceId },
    /// One deployment with its step history.
    Show { device: DeviceId, id: i64 },
    /// Cancel a device's unfinished deployment.
    Cancel { device: DeviceId, id: i64 },
}

/// How an update is applied (clap's spelling of [`UpdateType`]).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum UpdateTypeArg {
    Forced,
    Soft,
    DownloadOnly,
}

impl From<UpdateTypeArg> for UpdateType {
    fn from(arg: UpdateTypeArg) -> UpdateType {
        match arg {
            UpdateTypeArg::Forced => UpdateType::Forced,
            UpdateTypeArg::Soft => UpdateType::Soft,
            UpdateTypeArg::DownloadOnly => UpdateType::DownloadOnly,
        }
    }
}

pub async fn run(client: &Client, json: bool, command: ArtifactsCommand) -> Result<(), CliError> {
    match command {
        ArtifactsCommand::Upload(args) => upload(client, json, *args).await,
        ArtifactsCommand::List { name, paging } => {
            let mut params = Params::new();
            param(&mut params, "name", name);
            print_list(
                client,
                &["artifacts"],
                params,
                &paging,
                json,
                "artifacts",
                render_list,
            )
            .await
        }
        ArtifactsCommand::Show { name, version } => {
            let value = client
                .get(
                    &["artifacts", name.as_str(), &version.to_string()],
                    &Params::new(),
                )
                .await?;
            if json {
                return print_json(&value);
            }
            emit(&render_show(&decode(value)?))
        }
        ArtifactsCommand::Download {
            name,
            version,
            output,
            symbols,
        } => download(client, &name, &version, output, symbols).await,
        ArtifactsCommand::Delete { name, version } => {
            client
                .call(
                    Method::DELETE,
                    &["artifacts", name.as_str(), &version.to_string()],
                )
                .await?;
            if !json {
                emit(&format!("Deleted artifact {name} {version}.\n"))?;
            }
            Ok(())
        }
    }
}

pub async fn run_deployments(
    client: &Client,
    json: bool,
    command: DeploymentsCommand,
) -> Result<(), CliError> {
    match command {
        DeploymentsCommand::Create {
            device,
            artifact,
            version,
            update_type,
            allow_downgrade,
        } => {
            let body = NewDeployment {
                artifact,
                version,
                update_type: update_type.into(),
                allow_downgrade,
            };
            let value = client
                .call_json(
                    Method::POST,
                    &["devices", device.as_str(), "deployments"],
                    &body,
                )
                .await?;
            if json {
                return print_json(&value);
            }
            let view: DeploymentView = decode(value)?;
            emit(&format!(
                "Deployment {} created: {} {} to {} (from {}); the device picks it up at its next check.\n",
                view.id,
                view.artifact,
                view.version,
                view.device,
                if view.from_version.is_empty() { "unknown firmware" } else { &view.from_version }
            ))
        }
        DeploymentsCommand::List { device } => {
            let value = client
                .get(&["devices", device.as_str(), "deployments"], &Params::new())
                .await?;
            if json {
                return print_json(&value);
            }
            let views: Vec<DeploymentView> = decode(value)?;
            if views.is_empty() {
                eprintln!("no deployments for {device}");
                return Ok(());
            }
            let now = output::now();
            let mut table = Table::new(&[
                "ID", "ARTIFACT", "VERSION", "FROM", "STATE", "ATTEMPT", "UPDATED", "REASON",
            ]);
            for view in &views {
                table.row(vec![
                    view.id.to_string(),
                    view.artifact.clone(),
                    view.version.clone(),
                    if view.from_version.is_empty() {
                        "-".into()
                    } else {
                        view.from_version.clone()
                    },
                    view.state.as_str().to_owned(),
                    view.attempt.to_string(),
                    output::relative(view.updated_at, now),
                    or_dash(view.reason.as_ref()),
                ]);
            }
            emit(&table.render())
        }
        DeploymentsCommand::Show { device, id } => {
            let value = client
                .get(&["devices", device.as_str(), "deployments"], &Params::new())
                .await?;
            let views: Vec<DeploymentView> = decode(value)?;
            let view = views.into_iter().find(|v| v.id.0 == id).ok_or_else(|| {
                CliError::new(
                    ErrorKind::NotFound,
                    format!("device {device} has no deployment {id}"),
                )
            })?;
            if json {
                return print_json(&serde_json::to_value(&view).unwrap_or_default());
            }
            emit(&render_deployment(&view))
        }
        DeploymentsCommand::Cancel { device, id } => {
            let value = client
                .call(
                    Method::POST,
                    &[
                        "devices",
                        device.as_str(),
                        "deployments",
                        &id.to_string(),
                        "cancel",
                    ],
                )
                .await?;
            if json {
                return print_json(&value);
            }
            emit(&format!("Deployment {id} on {device} canceled.\n"))
        }
    }
}

async fn upload(client: &Client, json: bool, args: UploadArgs) -> Result<(), CliError> {
    let release_notes = match (&args.notes, &args.notes_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?,
        (None, None) => String::new(),
    };
    let metadata = ArtifactMetadata {
        name: args.name.clone(),
        version: args.version.clone(),
        device_types: args.device_types.clone(),
        hw_revs: args.hw_revs.clone(),
        provenance: Provenance {
            git_commit: args.git_commit.clone().filter(|s| !s.is_empty()),
            build_id: args.build_id.clone().filter(|s| !s.is_empty()),
            ci_url: args.ci_url.clone().filter(|s| !s.is_empty()),
        },
        release_notes,
        security_floor: args.security_floor.clone(),
    };
    let image = tokio::fs::File::open(&args.file)
        .await
        .map_err(|e| CliError::usage(format!("cannot open {}: {e}", args.file.display())))?;
    let image_size = image.metadata().await.map(|m| m.len()).unwrap_or(0);
    if image_size == 0 {
        return Err(CliError::usage(format!("{} is empty", args.file.display())));
    }
    let symbols = match &args.symbols {
        Some(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| CliError::usage(format!("cannot open {}: {e}", path.display())))?;
            let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            Some((file, size, path.clone()))
        }
        None => None,
    };
    let total = image_size + symbols.as_ref().map_or(0, |(_, size, _)| *size);
    let progress = Arc::new(Mutex::new(Progress::artifact_upload(Some(total))));
    let read_error = Arc::new(Mutex::new(None));
    let metadata_json = serde_json::to_string(&metadata)
        .map_err(|e| CliError::new(ErrorKind::Other, format!("cannot encode metadata: {e}")))?;
    let mut form = reqwest::multipart::Form::new()
        .part(
            "metadata",
            reqwest::multipart::Part::text(metadata_json)
                .mime_str("application/json")
                .map_err(|e| CliError::new(ErrorKind::Other, e.to_string()))?,
        )
        .part(
            "image",
            file_part(
                image,
                image_size,
                &args.file,
                &progress,
                &read_error,
                symbols.is_none(),
            ),
        );
    if let Some((file, size, path)) = symbols {
        form = form.part(
            "symbols",
            file_part(file, size, &path, &progress, &read_error, true),
        );
    }
    let result = client.upload_form(&["artifacts"], form).await;
    let value = match result {
        Ok(value) => value,
        Err(error) => {
            let read_error = read_error.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Err(
                read_error.map_or(error, |message| CliError::new(ErrorKind::Other, message))
            );
        }
    };
    if json {
        return print_json(&value);
    }
    let view: ArtifactView = decode(value)?;
    emit(&format!(
        "Uploaded {} {} ({}, sha256 {}); TUF target {}.\n",
        view.name,
        view.version,
        bytes(view.size),
        view.sha256,
        view.target
    ))
}

/// Bytes read from a file per chunk sent.
const CHUNK: usize = 256 * 1024;

/// A multipart part that streams `file`, advancing the shared progress line; `last` finishes the
/// line when this file is done.
fn file_part(
    file: tokio::fs::File,
    size: u64,
    path: &std::path::Path,
    progress: &Arc<Mutex<Progress>>,
    read_error: &Arc<Mutex<Option<String>>>,
    last: bool,
) -> reqwest::multipart::Part {
    let label = path.display().to_string();
    let file_name = path
        .file_name()
        .map_or_else(|| "file".to_owned(), |n| n.to_string_lossy().into_owned());
    let (progress, read_error) = (progress.clone(), read_error.clone());
    let stream = futures::stream::try_unfold(file, move |mut file| {
        let (progress, read_error, label) = (progress.clone(), read_error.clone(), label.clone());
        async move {
            let mut chunk = vec![0u8; CHUNK];
            match file.read(&mut chunk).await {
                Ok(0) => {
                    if last {
                        progress.lock().unwrap_or_else(|p| p.into_inner()).finish();
                    }
                    Ok(None)
                }
                Ok(n) => {
                    chunk.truncate(n);
                    progress
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .advance(n as u64);
                    Ok(Some((chunk, file)))
                }
                Err(e) => {
                    *read_error.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(format!("cannot read {label}: {e}"));
                    Err(e)
                }
            }
        }
    });
    reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(stream), size)
        .file_name(file_name)
        .mime_str("application/octet-stream")
        .expect("a valid MIME type")
}

/// Downloads into `<output>.part`, resuming it when it exists, checks the sha256 the server
/// recorded, then renames it into place.
async fn download(
    client: &Client,
    name: &ArtifactName,
    version: &Version,
    output: Option<PathBuf>,
    symbols: bool,
) -> Result<(), CliError> {
    let view: ArtifactView = decode(
        client
            .get(
                &["artifacts", name.as_str(), &version.to_string()],
                &Params::new(),
            )
            .await?,
    )?;
    let (kind, expected) = if symbols {
        let info = view.symbols.clone().ok_or_else(|| {
            CliError::new(
                ErrorKind::NotFound,
                format!("artifact {name} {version} has no debug symbols"),
            )
        })?;
        ("symbols", info)
    } else {
        (
            "image",
            drover_proto::artifacts::FileInfo {
                size: view.size,
                sha256: view.sha256.clone(),
            },
        )
    };
    let output = output.unwrap_or_else(|| {
        PathBuf::from(format!(
            "{name}-{version}.{}",
            if symbols { "elf" } else { "img" }
        ))
    });
    let partial = PathBuf::from(format!("{}.part", output.display()));
    let already = tokio::fs::metadata(&partial)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    let resume = (already > 0 && already < expected.size)
        .then(|| (already, format!("\"{}\"", expected.sha256)));
    let version_text = version.to_string();
    let path = ["artifacts", name.as_str(), version_text.as_str(), kind];
    let mut response = client.download(&path, resume.clone()).await?;
    let (mut file, mut hasher, start) = if response.status() == reqwest::StatusCode::PARTIAL_CONTENT
    {
        // Re-hash what is already there, then append.
        let mut hasher = Sha256::new();
        let mut existing = tokio::fs::File::open(&partial).await.map_err(|e| {
            CliError::new(
                ErrorKind::Other,
                format!("cannot read {}: {e}", partial.display()),
            )
        })?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = existing.read(&mut buf).await.map_err(|e| {
                CliError::new(
                    ErrorKind::Other,
                    format!("cannot read {}: {e}", partial.display()),
                )
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&partial)
            .await
            .map_err(|e| {
                CliError::new(
                    ErrorKind::Other,
                    format!("cannot write {}: {e}", partial.display()),
                )
            })?;
        (file, hasher, already)
    } else {
        if response.status() == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            // The partial file is not a prefix we can extend; start over.
            response = client.download(&path, None).await?;
        }
        let file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| CliError::usage(format!("cannot create {}: {e}", partial.display())))?;
        (file, Sha256::new(), 0)
    };
    let mut progress = Progress::download(Some(expected.size), start);
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            let mut error = client.body_error(&e);
            error.message = format!("{}; run the same command again to resume", error.message);
            error
        })?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(|e| {
            CliError::new(
                ErrorKind::Other,
                format!("cannot write {}: {e}", partial.display()),
            )
        })?;
        progress.advance(chunk.len() as u64);
    }
    file.flush().await.map_err(|e| {
        CliError::new(
            ErrorKind::Other,
            format!("cannot write {}: {e}", partial.display()),
        )
    })?;
    progress.finish();
    let actual = hex::encode(hasher.finalize());
    if actual != expected.sha256 {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(CliError::new(
            ErrorKind::Other,
            format!("the download's sha256 is {actual}, the server recorded {}; the partial file was removed, try again", expected.sha256),
        ));
    }
    tokio::fs::rename(&partial, &output).await.map_err(|e| {
        CliError::new(
            ErrorKind::Other,
            format!("cannot move the download to {}: {e}", output.display()),
        )
    })?;
    emit(&format!(
        "Wrote {} ({}, sha256 verified).\n",
        output.display(),
        bytes(expected.size)
    ))
}

fn render_list(views: &[ArtifactView]) -> String {
    let mut table = Table::new(&[
        "NAME",
        "VERSION",
        "SIZE",
        "SHA256",
        "DEVICE TYPES",
        "DELTAS",
        "UPLOADED",
    ]);
    let now = output::now();
    for view in views {
        table.row(vec![
            view.name.to_string(),
            view.version.to_string(),
            bytes(view.size),
            view.sha256.chars().take(12).collect(),
            view.device_types
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            if view.deltas.is_empty() {
                "-".into()
            } else {
                view.deltas
                    .iter()
                    .map(|d| format!("from {}", d.from_version))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            output::relative(view.created_at, now),
        ]);
    }
    table.render()
}

fn render_show(view: &ArtifactView) -> String {
    let mut text = fields(&[
        ("name", view.name.to_string()),
        ("version", view.version.to_string()),
        (
            "size",
            format!("{} ({} bytes)", bytes(view.size), view.size),
        ),
        ("sha256", view.sha256.clone()),
        ("TUF target", view.target.clone()),
        (
            "device types",
            view.device_types
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "hardware revisions",
            if view.hw_revs.is_empty() {
                "all".into()
            } else {
                view.hw_revs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("security floor", or_dash(view.security_floor.as_ref())),
        ("git commit", or_dash(view.provenance.git_commit.as_ref())),
        ("build id", or_dash(view.provenance.build_id.as_ref())),
        ("CI run", or_dash(view.provenance.ci_url.as_ref())),
        (
            "debug symbols",
            view.symbols.as_ref().map_or_else(
                || "-".into(),
                |s| format!("{} (sha256 {})", bytes(s.size), s.sha256),
            ),
        ),
        (
            "uploaded",
            format!("{} by {}", output::time(view.created_at), view.created_by),
        ),
        (
            "deploying to",
            format!("{} device(s)", view.active_deployments),
        ),
    ]);
    if !view.deltas.is_empty() {
        text.push_str("deltas:\n");
        let mut table = Table::new(&["  FROM", "SIZE", "OF FULL", "SHA256"]);
        for delta in &view.deltas {
            table.row(vec![
                format!("  {}", delta.from_version),
                bytes(delta.size),
                format!(
                    "{:.1}%",
                    delta.size as f64 / view.size.max(1) as f64 * 100.0
                ),
                delta.sha256.chars().take(12).collect(),
            ]);
        }
        text.push_str(&table.render());
    }
    if !view.release_notes.is_empty() {
        text.push_str("release notes:\n");
        for line in view.release_notes.lines() {
            text.push_str(&format!("  {line}\n"));
        }
    }
    text
}

fn render_deployment(view: &DeploymentView) -> String {
    let mut text = fields(&[
        ("id", view.id.to_string()),
        ("device", view.device.to_string()),
        ("artifact", format!("{} {}", view.artifact, view.version)),
        (
            "from",
            if view.from_version.is_empty() {
                "-".into()
            } else {
                view.from_version.clone()
            },
        ),
        ("state", view.state.as_str().to_owned()),
        (
            "update type",
            serde_json::to_value(view.update_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        ),
        ("attempt", view.attempt.to_string()),
        ("reason", or_dash(view.reason.as_ref())),
        ("used delta", or_dash(view.used_delta)),
        (
            "created",
            format!("{} by {}", output::time(view.created_at), view.created_by),
        ),
    ]);
    text.push_str("history:\n");
    let mut table = Table::new(&["  AT", "STATE", "REASON"]);
    for event in &view.history {
        table.row(vec![
            format!("  {}", output::time(event.at)),
            event.state.as_str().to_owned(),
            or_dash(event.reason.as_ref()),
        ]);
    }
    text.push_str(&table.render());
    text
}
