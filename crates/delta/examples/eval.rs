//! The measurements behind docs/delta.md: patch size and generation time of the candidates on
//! one pair of images. Anchors (Debian's `bsdiff`, `zstd --patch-from`) are timed separately by
//! `drover bench delta`; this compares the design choices inside the bsdiff family.
//!
//! Usage: `cargo run --release -p drover-delta --features eval --example eval -- OLD NEW`

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use drover_delta::{bsdiff_streams, generate_with, GenerateOptions, HEADER_LEN};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> AnyResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [old_path, new_path] = <[String; 2]>::try_from(args).map_err(|_| "usage: eval OLD NEW")?;
    let (old, new) = (std::fs::read(&old_path)?, std::fs::read(&new_path)?);
    println!(
        "old {} bytes, new {} bytes; zstd -19 of new alone: {} bytes",
        old.len(),
        new.len(),
        zstd(&new, 19, 27)?.len()
    );
    println!("| candidate | patch bytes | generation s |");
    println!("|---|---:|---:|");

    let cases = [
        (16u8, 16u8, 0usize),
        (16, 16, 12),
        (16, 16, 16),
        (16, 16, 24),
        (16, 16, 32),
    ]
    .into_iter()
    .chain([
        (14, 16, 16),
        (15, 16, 16),
        (17, 16, 16),
        (18, 16, 16),
        (16, 14, 16),
        (16, 15, 16),
    ]);
    for (window_log, block_log, min_match) in cases {
        let started = Instant::now();
        let mut patch = Vec::new();
        let options = GenerateOptions {
            level: 9,
            window_log,
            block_log,
            min_match,
        };
        let info = generate_with(&old, &new, &mut patch, &options)?;
        row(
            &format!("drover (min match {min_match}, 3 xz -9e streams in blocks of 2^{block_log}, dictionary 2^{window_log})"),
            patch.len(),
            started,
        );
        if (window_log, block_log, min_match) == (16, 16, 16) {
            println!(
                "<!-- entries {} blocks {} diff bytes {} extra bytes {} -->",
                info.n_entries, info.n_blocks, info.diff_bytes, info.extra_bytes
            );
        }
    }

    // The same scan (min match 16), its three streams compressed whole by other compressors.
    let started = Instant::now();
    let streams = bsdiff_streams(&old, &new, 16)?;
    let scan_s = started.elapsed().as_secs_f64();
    println!(
        "<!-- scan alone {scan_s:.2} s; control {} diff {} extra {} bytes -->",
        streams[0].len(),
        streams[1].len(),
        streams[2].len()
    );
    for (name, window_log) in [("window 2^18", 18), ("window 2^27", 27)] {
        let total: usize = streams
            .iter()
            .map(|s| zstd(s, 19, window_log).map(|c| c.len()))
            .sum::<AnyResult<usize>>()?;
        println!(
            "| bsdiff scan, 3 separate streams, zstd -19 {name} | {} | |",
            total + HEADER_LEN
        );
    }
    for (tool, flags) in [
        ("xz", &["-9e", "-c"][..]),
        ("xz", &["--lzma2=preset=9e,dict=64KiB", "-c"]),
        ("bzip2", &["-9", "-c"]),
    ] {
        let total: usize = streams
            .iter()
            .map(|s| pipe(tool, flags, s).map(|c| c.len()))
            .sum::<AnyResult<usize>>()?;
        println!(
            "| bsdiff scan, 3 separate streams, {tool} {} | {} | |",
            flags[0],
            total + HEADER_LEN
        );
    }
    let mut interleaved = Vec::new();
    for entry_bytes in interleave(&streams[0], &streams[1], &streams[2]) {
        interleaved.extend_from_slice(entry_bytes);
    }
    for window_log in [16, 18, 27] {
        let n_bytes = zstd(&interleaved, 19, window_log)?.len() + HEADER_LEN;
        println!(
            "| bsdiff scan, one interleaved stream, zstd -19 window 2^{window_log} | {n_bytes} | |"
        );
    }

    let started = Instant::now();
    let mut patch = Vec::new();
    qbsdiff::Bsdiff::new(&old, &new).compare(&mut patch)?;
    row("qbsdiff 1.4 (bsdiff 4 format, bzip2)", patch.len(), started);

    let started = Instant::now();
    let mut raw = Vec::new();
    bidiff::simple_diff(&old, &new, &mut raw)?;
    let compressed = zstd(&raw, 19, 27)?;
    row(
        "bidiff 1.0 + zstd -19 (window 2^27)",
        compressed.len(),
        started,
    );

    let started = Instant::now();
    let mut raw = Vec::new();
    bsdiff::diff(&old, &new, &mut raw)?;
    let compressed = zstd(&raw, 19, 27)?;
    row(
        "bsdiff-rs 0.2 (raw, qsufsort) + zstd -19 (window 2^27)",
        compressed.len(),
        started,
    );
    Ok(())
}

fn row(name: &str, n_bytes: usize, started: Instant) {
    println!(
        "| {name} | {n_bytes} | {:.2} |",
        started.elapsed().as_secs_f64()
    );
}

fn zstd(data: &[u8], level: i32, window_log: u32) -> AnyResult<Vec<u8>> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), level)?;
    encoder.window_log(window_log)?;
    encoder.long_distance_matching(window_log > 24)?;
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

fn pipe(tool: &str, flags: &[&str], data: &[u8]) -> AnyResult<Vec<u8>> {
    let mut child = Command::new(tool)
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let output = child.wait_with_output()?;
    writer.join().expect("writer thread")?;
    Ok(output.stdout)
}

/// Splits the three streams back into per-entry pieces in apply order (control, differences,
/// extra), as a single-stream format would store them.
fn interleave<'a>(control: &'a [u8], diff: &'a [u8], extra: &'a [u8]) -> Vec<&'a [u8]> {
    let (mut pieces, mut at) = (Vec::new(), [0usize; 3]);
    while at[0] < control.len() {
        let start = at[0];
        let add = varint(control, &mut at[0]);
        let copy = varint(control, &mut at[0]);
        varint(control, &mut at[0]);
        pieces.push(&control[start..at[0]]);
        pieces.push(&diff[at[1]..at[1] + add]);
        pieces.push(&extra[at[2]..at[2] + copy]);
        at[1] += add;
        at[2] += copy;
    }
    pieces
}

fn varint(bytes: &[u8], at: &mut usize) -> usize {
    let (mut value, mut shift) = (0usize, 0);
    loop {
        let byte = bytes[*at];
        *at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return value;
        }
    }
}
