//! What the admin commands print: aligned tables, key-value blocks, times, and the upload progress
//! line. Formatting is pure (strings in, strings out, "now" passed in); only [`emit`],
//! [`print_json`] and [`Progress`] write.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use drover_core::Timestamp;

use crate::cli::{CliError, ErrorKind};

/// Writes `text` to stdout. A closed pipe (`drover devices list | head`) ends the command quietly.
pub fn emit(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Err(CliError::new(ErrorKind::Other, ""))
        }
        Err(e) => Err(CliError::new(
            ErrorKind::Other,
            format!("cannot write to stdout: {e}"),
        )),
    }
}

/// Prints a JSON value, pretty, followed by a newline.
pub fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    emit(&format!("{value:#}\n"))
}

/// A table with a header row and columns aligned by padding with spaces.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; control characters in cells become spaces so a row stays on one line.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|cell| {
                    cell.chars()
                        .map(|c| if c.is_control() { ' ' } else { c })
                        .collect()
                })
                .collect(),
        );
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, columns separated by at least two spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (cell_idx, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(cell_idx) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let headers = self
            .headers
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (cell_idx, cell) in row.iter().enumerate() {
                if cell_idx > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths
                    .get(cell_idx)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A `Key: value` block with the values aligned; a multi-line value continues under its first line.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(key, _)| key.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let label = format!("{key}:");
        for (line_idx, line) in value.lines().enumerate() {
            let shown = if line_idx == 0 { label.as_str() } else { "" };
            out.push_str(format!("{shown:width$}  {line}").trim_end());
            out.push('\n');
        }
        if value.is_empty() {
            out.push_str(&label);
            out.push('\n');
        }
    }
    out
}

/// The value, or `-` when absent.
pub fn or_dash<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Tags as `key=value` joined by `separator`, or `-` when there are none.
pub fn tags<K: Display, V: Display>(tags: &BTreeMap<K, V>, separator: &str) -> String {
    if tags.is_empty() {
        return "-".to_owned();
    }
    tags.iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(separator)
}

/// The current time. The CLI reads the clock only to say how long ago something happened.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Timestamp::from_millis(ms)
}

/// A timestamp to the second, in UTC and RFC 3339, so it can be pasted into `--since`.
pub fn time(at: Timestamp) -> String {
    let text = at.to_rfc3339();
    // `2026-11-23T10:00:00.000Z` → `2026-11-23T10:00:00Z`.
    match text.split_once('.') {
        Some((seconds, _)) if text.ends_with('Z') => format!("{seconds}Z"),
        _ => text,
    }
}

/// How long ago (or how far ahead) `at` is from `now`, in the largest whole unit: `5m ago`, `in 3d`.
pub fn relative(at: Timestamp, now: Timestamp) -> String {
    let delta_ms = now.as_millis() - at.as_millis();
    let secs = delta_ms.unsigned_abs() / 1000;
    if secs < 1 {
        return "just now".to_owned();
    }
    let amount = match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    };
    if delta_ms >= 0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

/// [`relative`] for an optional time, `never` when absent.
pub fn last_seen(at: Option<Timestamp>, now: Timestamp) -> String {
    at.map_or_else(|| "never".to_owned(), |at| relative(at, now))
}

/// A byte count in binary units with one decimal: `512 B`, `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit_idx = 0;
    while value >= 1024.0 && unit_idx + 1 < UNITS.len() {
        value /= 1024.0;
        unit_idx += 1;
    }
    format!("{value:.1} {}", UNITS[unit_idx])
}

/// The text of the upload progress line.
pub fn progress_line(sent: u64, total: Option<u64>) -> String {
    transfer_line("uploading", sent, total)
}

/// The text of a transfer's progress line: `uploading 1.0 MiB / 4.0 MiB (25%)`.
fn transfer_line(verb: &str, sent: u64, total: Option<u64>) -> String {
    match total {
        Some(total) if total > 0 => {
            let percent = (sent.min(total) as f64 / total as f64 * 100.0).floor();
            format!("{verb} {} / {} ({percent:.0}%)", bytes(sent), bytes(total))
        }
        _ => format!("{verb} {}", bytes(sent)),
    }
}

/// An upload progress line on stderr, redrawn in place at most ten times a second, and only when
/// stderr is a terminal (logs and pipes get nothing).
#[derive(Debug)]
pub struct Progress {
    /// `uploading` or `downloading`.
    verb: &'static str,
    /// The line left when the transfer is complete.
    done: &'static str,
    total: Option<u64>,
    sent: u64,
    last_draw: Option<Instant>,
    enabled: bool,
    finished: bool,
}

impl Progress {
    /// An upload whose result the server is still preparing when the bytes are sent.
    pub fn new(total: Option<u64>) -> Progress {
        Progress::with_words(
            "uploading",
            "uploaded {}; waiting for the server to import it",
            total,
        )
    }

    /// An artifact upload.
    pub fn artifact_upload(total: Option<u64>) -> Progress {
        Progress::with_words(
            "uploading",
            "uploaded {}; waiting for the server to check it",
            total,
        )
    }

    /// A download that may resume at `already` bytes.
    pub fn download(total: Option<u64>, already: u64) -> Progress {
        let mut progress = Progress::with_words("downloading", "downloaded {}", total);
        progress.sent = already;
        progress
    }

    fn with_words(verb: &'static str, done: &'static str, total: Option<u64>) -> Progress {
        Progress {
            verb,
            done,
            total,
            sent: 0,
            last_draw: None,
            enabled: std::io::stderr().is_terminal(),
            finished: false,
        }
    }

    /// Records `n` more bytes sent.
    pub fn advance(&mut self, n: u64) {
        self.sent += n;
        let due = self
            .last_draw
            .is_none_or(|at| at.elapsed() >= Duration::from_millis(100));
        if self.enabled && due {
            self.last_draw = Some(Instant::now());
            eprint!(
                "\r\x1b[2K{}",
                transfer_line(self.verb, self.sent, self.total)
            );
        }
    }

    /// Draws the final state and ends the line; the server's answer comes next.
    pub fn finish(&mut self) {
        if self.enabled && !self.finished {
            self.finished = true;
            eprintln!("\r\x1b[2K{}", self.done.replace("{}", &bytes(self.sent)));
        }
    }
}

impl Drop for Progress {
    /// An upload that failed midway leaves the line open; end it so the error starts on its own line.
    fn drop(&mut self) {
        if self.enabled && self.last_draw.is_some() && !self.finished {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_trailing_space() {
        let mut table = Table::new(&["ID", "STATUS", "TAGS"]);
        table.row(vec![
            "thermo-0001".into(),
            "active".into(),
            "env=prod".into(),
        ]);
        table.row(vec!["t2".into(), "provisioning".into(), "-".into()]);
        assert_eq!(
            table.render(),
            "ID           STATUS        TAGS\n\
             thermo-0001  active        env=prod\n\
             t2           provisioning  -\n"
        );
    }

    #[test]
    fn table_cells_with_control_characters_stay_on_one_line() {
        let mut table = Table::new(&["A"]);
        table.row(vec!["x\ny".into()]);
        assert_eq!(table.render(), "A\nx y\n");
    }

    #[test]
    fn field_blocks_align_values_and_continue_multi_line_values() {
        let text = fields(&[
            ("ID", "d1".into()),
            ("Tags", "env=prod\nfloor=3".into()),
            ("Last seen", "never".into()),
        ]);
        assert_eq!(
            text,
            "ID:         d1\nTags:       env=prod\n            floor=3\nLast seen:  never\n"
        );
    }

    #[test]
    fn times_are_rfc3339_to_the_second() {
        assert_eq!(
            time(Timestamp::from_millis(1_700_000_000_123)),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn relative_times_use_the_largest_whole_unit() {
        let now = Timestamp::from_millis(1_000_000_000);
        let ago = |ms: i64| relative(Timestamp::from_millis(1_000_000_000 - ms), now);
        assert_eq!(ago(500), "just now");
        assert_eq!(ago(42_000), "42s ago");
        assert_eq!(ago(5 * 60_000 + 1), "5m ago");
        assert_eq!(ago(3 * 3_600_000), "3h ago");
        assert_eq!(ago(2 * 86_400_000), "2d ago");
        assert_eq!(ago(-86_400_000), "in 1d");
        assert_eq!(last_seen(None, now), "never");
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 * 1024 * 1024 + 300 * 1024), "12.3 MiB");
        assert_eq!(
            progress_line(512, Some(2048)),
            "uploading 512 B / 2.0 KiB (25%)"
        );
        assert_eq!(progress_line(2048, None), "uploading 2.0 KiB");
    }

    #[test]
    fn tags_render_as_key_value_pairs() {
        let mut map = BTreeMap::new();
        assert_eq!(tags(&map, ","), "-");
        map.insert("env", "prod");
        map.insert("floor", "3");
        assert_eq!(tags(&map, ","), "env=prod,floor=3");
    }
}
