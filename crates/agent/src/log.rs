//! A minimal stderr logger. The agent runs under an init system that timestamps and stores its
//! output, so a full logging framework would only add size. `DROVER_AGENT_LOG=debug` shows the
//! per-heartbeat lines; `warn` keeps only problems.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static SILENT: AtomicBool = AtomicBool::new(false);

/// Turns the log off for this process: the fleet simulator runs thousands of agents' logic and
/// reports through its own counters instead.
pub fn silence() {
    SILENT.store(true, Ordering::Relaxed);
}

/// How much to print: 0 = warnings and errors, 1 = info, 2 = debug.
fn verbosity() -> u8 {
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| match std::env::var("DROVER_AGENT_LOG").as_deref() {
        Ok("debug") | Ok("trace") => 2,
        Ok("warn") | Ok("error") => 0,
        _ => 1,
    })
}

/// Writes one line to stderr if `level` is enabled.
pub(crate) fn write(level: &str, args: std::fmt::Arguments<'_>) {
    let needed = match level {
        "debug" => 2,
        "info" => 1,
        _ => 0,
    };
    if verbosity() >= needed && !SILENT.load(Ordering::Relaxed) {
        eprintln!("drover-agent {level}: {args}");
    }
}

macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::write("debug", format_args!($($arg)*)) };
}
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::write("info", format_args!($($arg)*)) };
}
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::write("warn", format_args!($($arg)*)) };
}
