//! Streaming bulk import: parses CSV or JSON lines from the request body on a blocking thread and
//! feeds validated batches to the store, which writes them in one transaction.
//!
//! Memory stays bounded (a few batches in flight) whatever the upload size. The first invalid line
//! aborts the transaction; parsing continues only to report up to 100 more errors, so one request
//! tells the operator everything to fix.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use drover_core::{
    DeviceId, DeviceStatus, DeviceType, HardwareId, Label, TagKey, TagValue, Timestamp, Version,
};
use drover_proto::devices::{ImportResult, NewDevice, OnConflict};
use drover_store::{Actor, ImportMsg, ImportRow, Store, StoreError};
use futures::TryStreamExt;
use tokio::sync::mpsc;

use crate::error::ApiError;

/// Rows per batch handed to the store.
const BATCH: usize = 2000;
/// Imports at least this large refresh the planner's statistics before answering.
const ANALYZE_AFTER_ROWS: u64 = 10_000;
/// Most line errors reported for one import.
const MAX_ERRORS: usize = 100;

/// Upload formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    /// From `?format=` if given, else from Content-Type.
    pub fn choose(param: Option<&str>, headers: &HeaderMap) -> Result<Format, ApiError> {
        if let Some(param) = param {
            return match param {
                "csv" => Ok(Format::Csv),
                "jsonl" | "ndjson" => Ok(Format::JsonLines),
                other => Err(ApiError::bad_request(format!(
                    "unknown import format {other:?} (expected csv or jsonl)"
                ))),
            };
        }
        let content_type = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match content_type.as_str() {
            "text/csv" => Ok(Format::Csv),
            "application/x-ndjson" | "application/jsonl" | "application/jsonlines" | "application/x-jsonlines" => {
                Ok(Format::JsonLines)
            }
            _ => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send CSV (Content-Type: text/csv) or JSON lines (Content-Type: application/x-ndjson), or pass ?format=csv|jsonl",
            )),
        }
    }
}

/// Parses `body` and imports it; all or nothing.
pub async fn run(
    store: &Store,
    actor: &Actor,
    format: Format,
    on_conflict: OnConflict,
    body: axum::body::Body,
    max_bytes: usize,
) -> Result<ImportResult, ApiError> {
    let too_large = Arc::new(AtomicBool::new(false));
    let flag = too_large.clone();
    let mut seen = 0usize;
    let stream = body
        .into_data_stream()
        .map_err(std::io::Error::other)
        .and_then(move |chunk| {
            seen += chunk.len();
            let result = if seen > max_bytes {
                flag.store(true, Ordering::Relaxed);
                Err(std::io::Error::other("upload too large"))
            } else {
                Ok(chunk)
            };
            futures::future::ready(result)
        });
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));

    let (tx, rx) = mpsc::channel::<ImportMsg>(2);
    let import = {
        let (store, actor) = (store.clone(), actor.clone());
        tokio::spawn(async move {
            store
                .import_devices(&actor, on_conflict, rx, crate::now())
                .await
        })
    };
    let parse = tokio::task::spawn_blocking(move || parse(reader, format, tx));
    let parsed = parse.await.map_err(ApiError::internal)?;
    let stored = import.await.map_err(ApiError::internal)?;

    if too_large.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the import is larger than the limit of {max_bytes} bytes; nothing was written"
            ),
        ));
    }
    match parsed {
        Err(Problem::Io(e)) => Err(ApiError::bad_request(format!(
            "cannot read the upload: {e}; nothing was written"
        ))),
        Err(Problem::Lines(lines)) => Err(StoreError::Import(lines).into()),
        Ok(()) => {
            let result = stored?;
            // A large import changes the data distribution the query planner relies on; refresh
            // its statistics now rather than serve slow plans until the next routine analysis.
            if result.created + result.updated >= ANALYZE_AFTER_ROWS {
                if let Err(e) = store.analyze().await {
                    tracing::warn!(error = %e, "could not refresh planner statistics after import");
                }
            }
            Ok(result)
        }
    }
}

enum Problem {
    Io(std::io::Error),
    Lines(Vec<(u64, String)>),
}

/// Reads every record, sending batches while all is well. Returns the line errors found.
fn parse(reader: impl Read, format: Format, tx: mpsc::Sender<ImportMsg>) -> Result<(), Problem> {
    let mut sink = Sink {
        tx,
        batch: Vec::with_capacity(BATCH),
        errors: Vec::new(),
        store_gone: false,
    };
    let outcome = match format {
        Format::JsonLines => parse_jsonl(reader, &mut sink),
        Format::Csv => parse_csv(reader, &mut sink),
    };
    match outcome {
        Err(e) => {
            let _ = sink.tx.blocking_send(ImportMsg::Abort);
            Err(Problem::Io(e))
        }
        Ok(()) if !sink.errors.is_empty() => {
            let _ = sink.tx.blocking_send(ImportMsg::Abort);
            Err(Problem::Lines(sink.errors))
        }
        Ok(()) => {
            sink.flush();
            let _ = sink.tx.blocking_send(ImportMsg::Commit);
            Ok(())
        }
    }
}

struct Sink {
    tx: mpsc::Sender<ImportMsg>,
    batch: Vec<ImportRow>,
    errors: Vec<(u64, String)>,
    /// The store stopped (it found a conflict); its error is the answer, stop sending.
    store_gone: bool,
}

impl Sink {
    /// True while parsing should go on.
    fn accept(&mut self, line: u64, row: Result<NewDevice, String>) -> bool {
        match row {
            Ok(device) if self.errors.is_empty() && !self.store_gone => {
                self.batch.push(ImportRow { line, device });
                if self.batch.len() >= BATCH {
                    self.flush();
                }
            }
            Ok(_) => {}
            Err(message) => self.errors.push((line, message)),
        }
        self.errors.len() < MAX_ERRORS && !self.store_gone
    }

    fn flush(&mut self) {
        if self.batch.is_empty() || self.store_gone {
            return;
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        if self.tx.blocking_send(ImportMsg::Batch(batch)).is_err() {
            self.store_gone = true;
        }
    }
}

fn parse_jsonl(reader: impl Read, sink: &mut Sink) -> std::io::Result<()> {
    let reader = BufReader::with_capacity(1 << 16, reader);
    for (idx, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str::<NewDevice>(&line).map_err(|e| e.to_string());
        if !sink.accept(idx as u64 + 1, row) {
            break;
        }
    }
    Ok(())
}

/// CSV columns a header may name (plus `tags.<key>`).
const CSV_COLUMNS: &[&str] = &[
    "id",
    "device_type",
    "hw_id",
    "hw_rev",
    "site",
    "region",
    "status",
    "firmware",
    "last_seen",
    "preauth_secret",
];

fn parse_csv(reader: impl Read, sink: &mut Sink) -> std::io::Result<()> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(reader);
    let headers = match csv.headers() {
        Ok(h) => h.clone(),
        Err(e) => return csv_error(e, sink),
    };
    let mut columns = Vec::with_capacity(headers.len());
    for name in headers.iter() {
        let name = name.trim();
        if let Some(key) = name.strip_prefix("tags.") {
            match TagKey::parse(key) {
                Ok(key) => columns.push(Column::Tag(key)),
                Err(e) => {
                    sink.accept(1, Err(format!("header: {e}")));
                    return Ok(());
                }
            }
        } else if CSV_COLUMNS.contains(&name) {
            columns.push(Column::Field(name.to_owned()));
        } else {
            sink.accept(
                1,
                Err(format!(
                    "header: unknown column {name:?} (expected {} or tags.<key>)",
                    CSV_COLUMNS.join(", ")
                )),
            );
            return Ok(());
        }
    }
    if !columns
        .iter()
        .any(|c| matches!(c, Column::Field(f) if f == "device_type"))
    {
        sink.accept(1, Err("header: a device_type column is required".into()));
        return Ok(());
    }
    let mut record = csv::StringRecord::new();
    loop {
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
                if !sink.accept(line, csv_row(&columns, &record)) {
                    break;
                }
            }
            Err(e) => return csv_error(e, sink),
        }
    }
    Ok(())
}

fn csv_error(e: csv::Error, sink: &mut Sink) -> std::io::Result<()> {
    let line = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(io) => Err(io),
        kind => {
            let message = match kind {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => {
                    format!("has {len} fields but the header has {expected_len}")
                }
                csv::ErrorKind::Utf8 { .. } => "is not valid UTF-8".to_owned(),
                other => format!("{other:?}"),
            };
            sink.accept(line, Err(message));
            Ok(())
        }
    }
}

enum Column {
    Field(String),
    Tag(TagKey),
}

fn csv_row(columns: &[Column], record: &csv::StringRecord) -> Result<NewDevice, String> {
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    let mut tags = BTreeMap::new();
    for (column, value) in columns.iter().zip(record.iter()) {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        match column {
            Column::Field(name) => {
                fields.insert(name.as_str(), value);
            }
            Column::Tag(key) => {
                tags.insert(
                    key.clone(),
                    TagValue::parse(value).map_err(|e| e.to_string())?,
                );
            }
        }
    }
    fn opt<T, E: std::fmt::Display>(
        fields: &BTreeMap<&str, &str>,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<Option<T>, String> {
        fields
            .get(name)
            .map(|v| parse(v))
            .transpose()
            .map_err(|e| format!("{name}: {e}"))
    }
    Ok(NewDevice {
        id: opt(&fields, "id", DeviceId::parse)?,
        device_type: opt(&fields, "device_type", DeviceType::parse)?
            .ok_or("device_type is required")?,
        hw_id: opt(&fields, "hw_id", HardwareId::parse)?,
        hw_rev: opt(&fields, "hw_rev", Label::parse)?,
        site: opt(&fields, "site", Label::parse)?,
        region: opt(&fields, "region", Label::parse)?,
        status: opt(&fields, "status", DeviceStatus::parse)?,
        firmware: opt(&fields, "firmware", Version::parse)?,
        last_seen: opt(&fields, "last_seen", Timestamp::parse_rfc3339)?,
        tags,
        preauth_secret: fields.get("preauth_secret").map(|s| s.to_string()),
        issue_credential: false,
    })
}
