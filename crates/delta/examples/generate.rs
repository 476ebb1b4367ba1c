//! Writes a patch file from two image files: the server's path through `drover_delta::generate`.
//!
//! Usage: `cargo run --release -p drover-delta --example generate -- OLD NEW PATCH [WINDOW_LOG [BLOCK_LOG]]`

use std::time::Instant;

use drover_delta::{generate_with, GenerateOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(3..=5).contains(&args.len()) {
        return Err("usage: generate OLD NEW PATCH [WINDOW_LOG [BLOCK_LOG]]".into());
    }
    let mut options = GenerateOptions::default();
    if let Some(window_log) = args.get(3) {
        options.window_log = window_log.parse()?;
    }
    if let Some(block_log) = args.get(4) {
        options.block_log = block_log.parse()?;
    }
    let (old, new) = (std::fs::read(&args[0])?, std::fs::read(&args[1])?);
    let started = Instant::now();
    let info = generate_with(
        &old,
        &new,
        std::io::BufWriter::new(std::fs::File::create(&args[2])?),
        &options,
    )?;
    println!(
        "{} bytes in {:.2} s: {info:?}",
        info.patch_len,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
