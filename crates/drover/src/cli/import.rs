//! `drover devices import`: streams a CSV or JSON-lines file (or standard input) to the server in
//! chunks as the connection takes them, so a file of any size is sent without being held in
//! memory, with a progress line on stderr when it is a terminal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::{Args, ValueEnum};
use drover_proto::devices::ImportResult;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::cli::client::{decode, Client, Params};
use crate::cli::output::{emit, print_json, Progress};
use crate::cli::{wire_name, CliError, ErrorKind};

/// `drover devices import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// CSV or JSON-lines file, or `-` for standard input.
    pub file: PathBuf,
    /// File format; taken from the extension (.csv, .jsonl, .ndjson) when absent.
    #[arg(long, value_enum)]
    pub format: Option<ImportFormat>,
    /// What to do with a row whose device id exists.
    #[arg(long, value_enum, default_value_t = OnConflict::Error)]
    pub on_conflict: OnConflict,
}

/// Upload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    Csv,
    #[value(alias = "ndjson")]
    Jsonl,
}

/// What to do with an import row whose device id exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnConflict {
    /// Reject the whole import.
    Error,
    /// Keep the existing device, ignore the row.
    Skip,
    /// Overwrite the existing device's attributes and tags with the row's.
    Update,
}

/// Runs `drover devices import`.
pub async fn run(client: &Client, json: bool, args: ImportArgs) -> Result<(), CliError> {
    let from_stdin = args.file.as_os_str() == "-";
    let format = args
        .format
        .or_else(|| ImportFormat::from_path(&args.file))
        .ok_or_else(|| {
            let what = if from_stdin {
                "standard input".to_owned()
            } else {
                args.file.display().to_string()
            };
            CliError::usage(format!(
                "cannot tell the format of {what}: pass --format csv or --format jsonl"
            ))
        })?;
    let (reader, total, label): (Box<dyn AsyncRead + Send + Unpin>, Option<u64>, String) =
        if from_stdin {
            (
                Box::new(tokio::io::stdin()),
                None,
                "standard input".to_owned(),
            )
        } else {
            let label = args.file.display().to_string();
            let file = tokio::fs::File::open(&args.file)
                .await
                .map_err(|e| CliError::usage(format!("cannot open {label}: {e}")))?;
            let total = file.metadata().await.ok().map(|m| m.len());
            (Box::new(file), total, label)
        };

    let read_error = Arc::new(Mutex::new(None));
    let body = upload_body(Upload {
        reader,
        progress: Progress::new(total),
        label,
        read_error: read_error.clone(),
    });
    let params: Params = vec![
        ("format", wire_name(format)),
        ("on_conflict", wire_name(args.on_conflict)),
    ];
    let outcome = client
        .upload(&["devices", "import"], &params, format.content_type(), body)
        .await;
    let result = match outcome {
        Ok(result) => result,
        Err(error) => {
            // A failure to read the file surfaces as a broken upload; say what really happened.
            let read_error = read_error.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Err(
                read_error.map_or(error, |message| CliError::new(ErrorKind::Other, message))
            );
        }
    };
    if json {
        return print_json(&result);
    }
    let result: ImportResult = decode(result)?;
    emit(&format!(
        "Imported: {} created, {} updated, {} skipped.\n",
        result.created, result.updated, result.skipped
    ))
}

impl ImportFormat {
    /// The format a file name's extension implies.
    fn from_path(path: &Path) -> Option<ImportFormat> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "csv" => Some(ImportFormat::Csv),
            "jsonl" | "ndjson" => Some(ImportFormat::Jsonl),
            _ => None,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            ImportFormat::Csv => "text/csv",
            ImportFormat::Jsonl => "application/x-ndjson",
        }
    }
}

/// Bytes read from the import file per chunk sent.
const UPLOAD_CHUNK: usize = 64 * 1024;

/// The state of a streamed upload: the source, its progress line, and where a read error is kept.
struct Upload {
    reader: Box<dyn AsyncRead + Send + Unpin>,
    progress: Progress,
    label: String,
    read_error: Arc<Mutex<Option<String>>>,
}

/// A request body that reads the source chunk by chunk as the connection takes it, so a file of
/// any size is sent without being held in memory.
fn upload_body(upload: Upload) -> reqwest::Body {
    let stream = futures::stream::try_unfold(upload, |mut upload| async move {
        let mut chunk = vec![0u8; UPLOAD_CHUNK];
        match upload.reader.read(&mut chunk).await {
            Ok(0) => {
                upload.progress.finish();
                Ok(None)
            }
            Ok(n) => {
                chunk.truncate(n);
                upload.progress.advance(n as u64);
                Ok(Some((chunk, upload)))
            }
            Err(e) => {
                *upload.read_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("cannot read {}: {e}", upload.label));
                Err(e)
            }
        }
    });
    reqwest::Body::wrap_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_format_follows_the_extension() {
        assert_eq!(
            ImportFormat::from_path(Path::new("fleet.CSV")),
            Some(ImportFormat::Csv)
        );
        assert_eq!(
            ImportFormat::from_path(Path::new("a/fleet.ndjson")),
            Some(ImportFormat::Jsonl)
        );
        assert_eq!(
            ImportFormat::from_path(Path::new("fleet.jsonl")),
            Some(ImportFormat::Jsonl)
        );
        assert_eq!(ImportFormat::from_path(Path::new("fleet.txt")), None);
        assert_eq!(ImportFormat::from_path(Path::new("-")), None);
    }
}
