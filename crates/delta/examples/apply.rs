//! Applies a patch file to a base image file, writing the result file: the device's path through
//! `drover_delta::apply`, in a process of its own so its peak RSS can be measured
//! (`/usr/bin/time -v`). `apply --baseline` does nothing, to measure the process without apply.
//!
//! Usage: `cargo run --release -p drover-delta --example apply -- OLD PATCH OUT`

use std::fs::File;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--baseline") {
        println!("VmHWM {}", vm_hwm_kib());
        return Ok(());
    }
    let [old, patch, out] =
        <[String; 3]>::try_from(args).map_err(|_| "usage: apply OLD PATCH OUT")?;
    let before_kib = vm_hwm_kib();
    let started = Instant::now();
    let report = drover_delta::apply(File::open(old)?, File::open(patch)?, File::create(out)?)?;
    let elapsed = started.elapsed();
    println!(
        "applied {} bytes in {:.3} s; buffers {} B, decoder {} B; VmHWM before {} KiB, after {} KiB",
        report.result_len,
        elapsed.as_secs_f64(),
        report.buffer_bytes,
        report.decoder_bytes,
        before_kib,
        vm_hwm_kib()
    );
    Ok(())
}

/// Peak resident set of this process so far, from /proc (0 where there is no /proc).
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))?
                .to_owned();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}
