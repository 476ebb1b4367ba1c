//! `drover bench delta`: patch size, generation time, apply time and apply memory of Drover's
//! binary deltas on a real pair of images, beside Debian's `bsdiff`/`bspatch` and
//! `zstd --patch-from` run as subprocesses on the same files in the same run.
//!
//! Apply memory is measured on processes, since a counting allocator cannot be installed from a
//! module: every apply (Drover's, bspatch, zstd) runs as a child under `/usr/bin/time -f %M` for
//! its whole-process peak RSS. Drover's child is this binary re-run with the hidden
//! `--apply-child` flag; it also prints its own peak RSS before and after the apply, so the table
//! shows how much the apply itself added on top of the binary's start-up footprint.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;

#[derive(Debug, Args)]
pub struct DeltaArgs {
    /// The base image (the version on the device).
    #[arg(long)]
    pub old: PathBuf,
    /// The result image (the version to install).
    #[arg(long)]
    pub new: PathBuf,
    /// Timed repetitions of each generation and apply (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Internal: apply this patch to --old in this process and report, as the measured child.
    #[arg(long, hide = true, requires = "out")]
    pub apply_child: Option<PathBuf>,
    /// Internal: where the child writes the result.
    #[arg(long, hide = true)]
    pub out: Option<PathBuf>,
}

/// Runs the benchmark (or, with `--apply-child`, one measured apply) and prints a markdown table.
pub async fn run(args: DeltaArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || match args.apply_child.clone() {
        Some(patch) => apply_child(
            &args.old,
            &patch,
            args.out.as_deref().context("--out is required")?,
        ),
        None => compare(&args),
    })
    .await?
}

/// One row of the table.
struct Measured {
    name: String,
    patch_bytes: u64,
    generate: Duration,
    apply: Duration,
    /// Peak RSS of the applying process, from /usr/bin/time (KiB).
    apply_peak_kib: Option<u64>,
    /// For Drover: how much the apply raised its process's peak RSS (KiB).
    apply_growth_kib: Option<u64>,
}

fn compare(args: &DeltaArgs) -> anyhow::Result<()> {
    ensure!(args.runs >= 1, "--runs must be at least 1");
    let old =
        std::fs::read(&args.old).with_context(|| format!("reading {}", args.old.display()))?;
    let new =
        std::fs::read(&args.new).with_context(|| format!("reading {}", args.new.display()))?;
    let dir = ScratchDir::new()?;
    let time_available = Path::new("/usr/bin/time").exists();
    println!(
        "old {} ({} bytes), new {} ({} bytes), {} runs; {}; bsdiff {}",
        args.old.display(),
        old.len(),
        args.new.display(),
        new.len(),
        args.runs,
        tool_version("zstd", &["-V"]),
        debian_version("bsdiff"),
    );

    // Drover: generation in this process, apply in a child.
    let patch_path = dir.path.join("drover.delta");
    let mut generate_times = Vec::new();
    let mut patch_bytes = 0;
    for _ in 0..args.runs {
        let started = Instant::now();
        let mut patch = Vec::new();
        let info = drover_delta::generate(&old, &new, &mut patch)?;
        generate_times.push(started.elapsed());
        patch_bytes = info.patch_len;
        std::fs::write(&patch_path, &patch)?;
    }
    let out_path = dir.path.join("drover.out");
    let (mut apply_times, mut peaks, mut growths) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let mut command = timed(time_available, std::env::current_exe()?);
        command
            .args(["bench", "delta", "--old"])
            .arg(&args.old)
            .arg("--new")
            .arg(&args.new);
        command
            .arg("--apply-child")
            .arg(&patch_path)
            .arg("--out")
            .arg(&out_path);
        let (stdout, peak) = run_measured(command, time_available)?;
        let report = ChildReport::parse(&stdout)?;
        apply_times.push(report.apply);
        growths.push(report.hwm_after_kib.saturating_sub(report.hwm_before_kib));
        peaks.extend(peak);
        check_same(&out_path, &new)?;
    }
    let drover = Measured {
        name: format!(
            "Drover delta (bsdiff-style scan, 3 xz streams, dictionary 2^{})",
            drover_delta::DEFAULT_WINDOW_LOG
        ),
        patch_bytes,
        generate: median(generate_times),
        apply: median(apply_times),
        apply_peak_kib: peaks.iter().max().copied(),
        apply_growth_kib: growths.iter().max().copied(),
    };

    // bsdiff 4 (bzip2), Debian's build.
    let bsdiff_patch = dir.path.join("bsdiff.patch");
    let bsdiff_out = dir.path.join("bsdiff.out");
    let bsdiff = anchor(
        "anchor: bsdiff / bspatch",
        args.runs,
        time_available,
        || {
            let mut command = Command::new("bsdiff");
            command.arg(&args.old).arg(&args.new).arg(&bsdiff_patch);
            command
        },
        || {
            let mut command = timed(time_available, "bspatch");
            command.arg(&args.old).arg(&bsdiff_out).arg(&bsdiff_patch);
            command
        },
        &bsdiff_patch,
        &bsdiff_out,
        &new,
    )?;

    // zstd with the old image as a reference prefix; the window must cover the larger image.
    let window_log = (old.len().max(new.len()).max(1) as f64)
        .log2()
        .ceil()
        .clamp(10.0, 31.0) as u32;
    let long = format!("--long={window_log}");
    let patch_from = format!("--patch-from={}", args.old.display());
    let zstd_patch = dir.path.join("zstd.patch");
    let zstd_out = dir.path.join("zstd.out");
    let zstd = anchor(
        "anchor: zstd -19 --patch-from",
        args.runs,
        time_available,
        || {
            let mut command = Command::new("zstd");
            command
                .args(["-q", "-f", "-19", &long, &patch_from])
                .arg(&args.new)
                .arg("-o")
                .arg(&zstd_patch);
            command
        },
        || {
            let mut command = timed(time_available, "zstd");
            command
                .args(["-q", "-f", "-d", &long, &patch_from])
                .arg(&zstd_patch)
                .arg("-o")
                .arg(&zstd_out);
            command
        },
        &zstd_patch,
        &zstd_out,
        &new,
    )?;

    println!();
    println!("| tool | patch bytes | ratio to bsdiff | generation | apply | apply peak RSS (process) | apply's own peak RSS growth |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for row in [&bsdiff, &zstd, &drover] {
        println!(
            "| {} | {} | {:.3} | {:.2} s | {:.3} s | {} | {} |",
            row.name,
            row.patch_bytes,
            row.patch_bytes as f64 / bsdiff.patch_bytes as f64,
            row.generate.as_secs_f64(),
            row.apply.as_secs_f64(),
            row.apply_peak_kib.map_or("n/a".to_string(), |kib| format!(
                "{:.1} MiB",
                kib as f64 / 1024.0
            )),
            row.apply_growth_kib
                .map_or("-".to_string(), |kib| format!("{kib} KiB")),
        );
    }
    Ok(())
}

/// Times `generate` and `apply` subprocesses `runs` times each and checks the result.
#[allow(clippy::too_many_arguments)]
fn anchor(
    name: &str,
    runs: usize,
    time_available: bool,
    generate: impl Fn() -> Command,
    apply: impl Fn() -> Command,
    patch: &Path,
    out: &Path,
    new: &[u8],
) -> anyhow::Result<Measured> {
    let (mut generate_times, mut apply_times, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let started = Instant::now();
        run_measured(generate(), false)?;
        generate_times.push(started.elapsed());
    }
    for _ in 0..runs {
        let started = Instant::now();
        let (_, peak) = run_measured(apply(), time_available)?;
        apply_times.push(started.elapsed());
        peaks.extend(peak);
        check_same(out, new)?;
    }
    Ok(Measured {
        name: name.to_string(),
        patch_bytes: std::fs::metadata(patch)?.len(),
        generate: median(generate_times),
        apply: median(apply_times),
        apply_peak_kib: peaks.iter().max().copied(),
        apply_growth_kib: None,
    })
}

/// The measured child: applies the patch and prints its time and peak RSS before and after.
fn apply_child(old: &Path, patch: &Path, out: &Path) -> anyhow::Result<()> {
    let hwm_before_kib = vm_hwm_kib()?;
    let started = Instant::now();
    let report = drover_delta::apply(
        std::fs::File::open(old).with_context(|| format!("opening {}", old.display()))?,
        std::fs::File::open(patch).with_context(|| format!("opening {}", patch.display()))?,
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    )?;
    let apply = started.elapsed();
    println!(
        "apply_child micros={} hwm_before_kib={hwm_before_kib} hwm_after_kib={} buffers={} decoders={}",
        apply.as_micros(),
        vm_hwm_kib()?,
        report.buffer_bytes,
        report.decoder_bytes
    );
    Ok(())
}

/// What the child printed.
struct ChildReport {
    apply: Duration,
    hwm_before_kib: u64,
    hwm_after_kib: u64,
}

impl ChildReport {
    fn parse(stdout: &str) -> anyhow::Result<ChildReport> {
        let line = stdout
            .lines()
            .find(|line| line.starts_with("apply_child "))
            .context("the apply child printed no report")?;
        let field = |name: &str| -> anyhow::Result<u64> {
            line.split_whitespace()
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .context("malformed apply child report")?
                .parse()
                .context("malformed apply child report")
        };
        Ok(ChildReport {
            apply: Duration::from_micros(field("micros")?),
            hwm_before_kib: field("hwm_before_kib")?,
            hwm_after_kib: field("hwm_after_kib")?,
        })
    }
}

/// `program` wrapped in `/usr/bin/time -f %M` when it exists, so its peak RSS is reported.
fn timed(time_available: bool, program: impl AsRef<std::ffi::OsStr>) -> Command {
    if time_available {
        let mut command = Command::new("/usr/bin/time");
        command.args(["-f", "maxrss_kib=%M"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Runs `command` to completion; returns its stdout and, if it ran under /usr/bin/time, its peak
/// RSS in KiB (GNU time prints it as the last line of stderr).
fn run_measured(mut command: Command, timed: bool) -> anyhow::Result<(String, Option<u64>)> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let peak = if timed {
        let value = stderr
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix("maxrss_kib="));
        Some(
            value
                .context("no maxrss from /usr/bin/time")?
                .trim()
                .parse()?,
        )
    } else {
        None
    };
    Ok((String::from_utf8(output.stdout)?, peak))
}

fn check_same(out: &Path, new: &[u8]) -> anyhow::Result<()> {
    let result = std::fs::read(out).with_context(|| format!("reading {}", out.display()))?;
    ensure!(
        result == new,
        "{} differs from the new image",
        out.display()
    );
    Ok(())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Peak resident set of this process so far (VmHWM), in KiB.
fn vm_hwm_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .context("no VmHWM in /proc/self/status")
}

fn tool_version(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|| format!("{program}: not found"))
}

fn debian_version(package: &str) -> String {
    let version = tool_version("dpkg-query", &["-W", "-f", "${Version}", package]);
    if version.is_empty() {
        "version unknown".to_string()
    } else {
        version
    }
}

/// A directory for patches and results, removed on drop.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn new() -> anyhow::Result<ScratchDir> {
        let path = std::env::temp_dir().join(format!("drover-bench-delta-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(ScratchDir { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
