//! `drover bench download`: artifact download throughput over loopback, beside nginx serving the
//! same bytes in the same run.
//!
//! A `drover serve` child process (SQLite, local artifact storage in a temporary data directory,
//! MQTT off) receives a random artifact through the admin API; a device with a pending deployment
//! of it then downloads its TUF target through the device API, whole and resumed from the middle
//! with a `Range` request. The anchor is nginx (`sendfile on`, access log off) serving a copy of the
//! same file from a temporary directory. Client and servers are separate processes on the same
//! machine; the client is reqwest reading each body as a stream and discarding it. Every round
//! downloads the file over `connections` concurrent connections and is timed until the last byte;
//! rounds of the anchor and of Drover alternate, so drift in the machine's load affects both.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use drover_store::testing::TempDir;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::bench::BENCH_TOKEN;

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Artifact size: bytes, or with a KiB, MiB or GiB suffix.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub size: u64,
    /// Timed rounds of each measurement (after one warm-up round that also checks the sha256);
    /// the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Concurrent downloads per round; a comma-separated list measures each.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    pub connections: Vec<usize>,
    /// The nginx binary of the anchor.
    #[arg(long, default_value = "nginx")]
    pub nginx: PathBuf,
    /// nginx `worker_processes`: `auto` (one per core) or a number.
    #[arg(long, default_value = "auto")]
    pub nginx_workers: String,
}

pub async fn run(args: DownloadArgs) -> anyhow::Result<()> {
    if args.size == 0 || args.runs == 0 || args.connections.is_empty() {
        bail!("--size and --runs must be positive and --connections not empty");
    }
    if args.connections.iter().any(|&c| c == 0 || c > 256) {
        bail!("--connections must be between 1 and 256");
    }
    let dir = TempDir::new();
    let result = measure(&args, &dir.path).await;
    let _ = std::fs::remove_dir_all(&dir.path);
    result
}

/// One thing to download, with what it must yield.
struct Target {
    /// The row's name in the table.
    name: String,
    url: String,
    /// Device credential (Drover) or none (nginx).
    bearer: Option<String>,
    /// `Range: bytes=N-` when resuming.
    range_from: Option<u64>,
    /// Bytes each download must yield.
    len: u64,
    /// Their sha256, checked once per target in the warm-up round.
    sha256: String,
    /// The server's process, for the CPU time it spends per byte served (children included).
    server_pid: u32,
    /// Whether this is the anchor row.
    anchor: bool,
}

/// Timed rounds of one target at one concurrency.
struct Measured {
    /// Throughput of each round, bytes per second.
    rates: Vec<f64>,
    /// Server CPU time over all rounds, in clock ticks.
    server_ticks: u64,
    /// Bytes over all rounds.
    bytes: u64,
}

impl Measured {
    fn median(&self) -> f64 {
        let mut rates = self.rates.clone();
        rates.sort_by(f64::total_cmp);
        let mid = rates.len() / 2;
        if rates.len().is_multiple_of(2) {
            (rates[mid - 1] + rates[mid]) / 2.0
        } else {
            rates[mid]
        }
    }
}

async fn measure(args: &DownloadArgs, dir: &Path) -> anyhow::Result<()> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    let image_path = www.join("firmware.img");
    let resume_at = args.size / 2;
    let (sha_full, sha_tail) = write_random_file(&image_path, args.size, resume_at)?;
    make_world_readable(dir, &www, &image_path)?;

    let mut server = spawn_drover(&dir.join("drover"))?;
    let mut nginx: Option<Nginx> = None;
    let result = async {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(512)
            .timeout(Duration::from_secs(3600))
            .build()?;
        let base = server.base.clone();
        let started = Instant::now();
        let view = upload(&http, &base, &image_path, args.size).await?;
        let upload_time = started.elapsed();
        ensure!(
            view["sha256"] == sha_full.as_str(),
            "the server hashed the upload as {}, expected {sha_full}",
            view["sha256"]
        );
        let credential = device_with_deployment(&http, &base).await?;
        let target = view["target"].as_str().context("no target in the artifact view")?;
        let (target_dir, file) = target.rsplit_once('/').context("target without a directory")?;
        let device_url = format!("{base}/api/device/v1/tuf/targets/{target_dir}/{sha_full}.{file}");

        let mut targets = Vec::new();
        match Nginx::start(&args.nginx, &args.nginx_workers, dir, &www) {
            Ok(started) => {
                targets.push(Target {
                    name: "anchor: nginx, whole file".into(),
                    url: format!("http://127.0.0.1:{}/firmware.img", started.port),
                    bearer: None,
                    range_from: None,
                    len: args.size,
                    sha256: sha_full.clone(),
                    server_pid: started.child.id(),
                    anchor: true,
                });
                nginx = Some(started);
            }
            Err(e) => eprintln!("no nginx anchor (measuring Drover alone): {e:#}"),
        }
        targets.push(Target {
            name: "Drover device API (TUF target), whole file".into(),
            url: device_url.clone(),
            bearer: Some(credential.clone()),
            range_from: None,
            len: args.size,
            sha256: sha_full.clone(),
            server_pid: server.child.id(),
            anchor: false,
        });
        targets.push(Target {
            name: format!("Drover device API, resumed: `Range: bytes={resume_at}-` (206)"),
            url: device_url,
            bearer: Some(credential),
            range_from: Some(resume_at),
            len: args.size - resume_at,
            sha256: sha_tail,
            server_pid: server.child.id(),
            anchor: false,
        });

        let size_label = size_label(args.size);
        println!(
            "# drover bench download: {size_label} artifact, {} timed round(s) per row, connections {:?}",
            args.runs, args.connections
        );
        println!(
            "upload: {size_label} in {:.2} s ({:.0} MB/s), sha256 {sha_full}",
            upload_time.as_secs_f64(),
            args.size as f64 / upload_time.as_secs_f64() / 1e6
        );
        let mut tables = Vec::new();
        for &connections in &args.connections {
            let mut measured: Vec<Measured> = targets
                .iter()
                .map(|_| Measured { rates: Vec::new(), server_ticks: 0, bytes: 0 })
                .collect();
            for target in &targets {
                round(&http, target, connections, true).await.with_context(|| {
                    format!("warm-up of {} ({connections} connections)", target.name)
                })?;
            }
            for run_idx in 0..args.runs {
                for (target, into) in targets.iter().zip(&mut measured) {
                    let before = cpu_ticks(target.server_pid);
                    let elapsed = round(&http, target, connections, false).await.with_context(|| {
                        format!("{} ({connections} connections)", target.name)
                    })?;
                    into.server_ticks += cpu_ticks(target.server_pid).saturating_sub(before);
                    let bytes = target.len * connections as u64;
                    into.bytes += bytes;
                    into.rates.push(bytes as f64 / elapsed.as_secs_f64());
                }
                let line: Vec<String> = measured
                    .iter()
                    .map(|m| format!("{:.0}", m.rates[run_idx] / 1e6))
                    .collect();
                println!("{connections} connection(s), round {}: {} MB/s", run_idx + 1, line.join(" / "));
            }
            tables.push((connections, measured));
        }

        println!();
        println!("**Machine:** {}", machine_line());
        println!(
            "Drover: `drover serve` child process (SQLite, local artifact storage, MQTT off). Anchor: {}.",
            match &nginx {
                Some(n) => format!(
                    "{} as a child process, `worker_processes {}`, `sendfile on`, `tcp_nopush on`, access log off",
                    n.version, args.nginx_workers
                ),
                None => "none (nginx could not be started)".to_owned(),
            }
        );
        println!("Client: reqwest (HTTP/1.1, keep-alive), in the benchmark's process, body read as a stream and discarded; byte counts checked on every download, sha256 once per row.");
        println!();
        println!("```sh\n{}\n```", command_line());
        println!();
        let clk_tck = clock_ticks_per_second();
        println!("| download ({size_label}) | connections | median MB/s | median GiB/s | min–max MB/s | server CPU s per GiB | ratio to anchor |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for (connections, measured) in &tables {
            let anchor = targets
                .iter()
                .zip(measured)
                .find(|(t, _)| t.anchor)
                .map(|(_, m)| m.median());
            for (target, m) in targets.iter().zip(measured) {
                let median = m.median();
                let (min, max) = m.rates.iter().fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
                println!(
                    "| {} | {connections} | {:.0} | {:.2} | {:.0}–{:.0} | {:.2} | {} |",
                    target.name,
                    median / 1e6,
                    median / (1u64 << 30) as f64,
                    min / 1e6,
                    max / 1e6,
                    m.server_ticks as f64 / clk_tck / (m.bytes as f64 / (1u64 << 30) as f64),
                    anchor.map_or("-".to_owned(), |a| format!("{:.2}", median / a)),
                );
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Some(nginx) = nginx {
        nginx.stop();
    }
    let _ = server.child.kill();
    let _ = server.child.wait();
    result
}

/// Downloads `target` over `connections` concurrent requests; returns the time until the last
/// byte of the last one. With `check`, the first download's sha256 is verified too.
async fn round(
    http: &reqwest::Client,
    target: &Target,
    connections: usize,
    check: bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let downloads = (0..connections).map(|idx| download(http, target, check && idx == 0));
    for result in futures::future::join_all(downloads).await {
        result?;
    }
    Ok(started.elapsed())
}

/// One download: checks the status, counts the bytes and (with `hash`) their sha256.
async fn download(http: &reqwest::Client, target: &Target, hash: bool) -> anyhow::Result<()> {
    let mut request = http.get(&target.url);
    if let Some(bearer) = &target.bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(from) = target.range_from {
        request = request.header(reqwest::header::RANGE, format!("bytes={from}-"));
    }
    let mut response = request.send().await?;
    let status = response.status();
    let expected = if target.range_from.is_some() {
        206
    } else {
        200
    };
    if status.as_u16() != expected {
        let body = response.text().await.unwrap_or_default();
        bail!("expected {expected}, got {status}: {body}");
    }
    let mut hasher = hash.then(Sha256::new);
    let mut n_bytes = 0u64;
    while let Some(chunk) = response.chunk().await? {
        n_bytes += chunk.len() as u64;
        if let Some(hasher) = &mut hasher {
            hasher.update(&chunk);
        }
    }
    ensure!(
        n_bytes == target.len,
        "received {n_bytes} bytes, expected {}",
        target.len
    );
    if let Some(hasher) = hasher {
        let sha256 = hex::encode(hasher.finalize());
        ensure!(
            sha256 == target.sha256,
            "sha256 {sha256}, expected {}",
            target.sha256
        );
    }
    Ok(())
}

/// Writes `size` pseudo-random (incompressible) bytes; returns the sha256 of the whole file and
/// of its tail from `tail_from`.
fn write_random_file(path: &Path, size: u64, tail_from: u64) -> anyhow::Result<(String, String)> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let (mut full, mut tail) = (Sha256::new(), Sha256::new());
    let mut state = 0x853c_49e6_748f_ea9b_u64 ^ size;
    let mut block = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(block.len() as u64) as usize;
        for word in block[..n].chunks_mut(8) {
            // SplitMix64: fast, and nothing on the path compresses it.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            word.copy_from_slice(&z.to_le_bytes()[..word.len()]);
        }
        let bytes = &block[..n];
        full.update(bytes);
        let skip = tail_from.saturating_sub(pos).min(n as u64) as usize;
        tail.update(&bytes[skip..]);
        file.write_all(bytes)?;
        pos += n as u64;
    }
    file.flush()?;
    Ok((hex::encode(full.finalize()), hex::encode(tail.finalize())))
}

/// nginx's workers may run as `nobody`: let them reach the file.
fn make_world_readable(dir: &Path, www: &Path, file: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for path in [dir, www] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// A `drover serve` child process.
struct DroverServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    base: String,
}

/// Starts `drover serve` on a free loopback port with MQTT off and `data_dir` as its data directory.
fn spawn_drover(data_dir: &Path) -> anyhow::Result<DroverServer> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "off",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("DROVER_ADMIN_TOKEN", BENCH_TOKEN)
        .env("DROVER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start drover serve")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let base = loop {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            bail!("drover serve exited before it was serving");
        };
        let line = line?;
        if let Some(addr) = line.strip_prefix("drover is serving on ") {
            break addr.trim().to_owned();
        }
    };
    // Keep draining its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(DroverServer { child, base })
}

/// Uploads the file as artifact `bench-fw` 2.0.0 for device type `bench`, streamed from disk;
/// returns the artifact view.
async fn upload(
    http: &reqwest::Client,
    base: &str,
    image: &Path,
    size: u64,
) -> anyhow::Result<Value> {
    let metadata = json!({ "name": "bench-fw", "version": "2.0.0", "device_types": ["bench"] });
    let file = tokio::fs::File::open(image).await?;
    let image = reqwest::multipart::Part::stream_with_length(reqwest::Body::from(file), size)
        .file_name("firmware.img");
    crate::bench::upload_artifact(http, base, BENCH_TOKEN, &metadata, image).await
}

/// Registers device `bench-dl-1` with a credential and deploys the artifact to it; returns the
/// credential.
async fn device_with_deployment(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let response = http
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(BENCH_TOKEN)
        .json(&json!({ "id": "bench-dl-1", "device_type": "bench", "firmware": "1.0.0", "issue_credential": true }))
        .send()
        .await?;
    let status = response.status();
    let created: Value = response.json().await?;
    if !status.is_success() {
        bail!("cannot create the device: {status} {created}");
    }
    let credential = created["credential"]
        .as_str()
        .context("no credential")?
        .to_owned();
    let response = http
        .post(format!("{base}/api/v1/devices/bench-dl-1/deployments"))
        .bearer_auth(BENCH_TOKEN)
        .json(&json!({ "artifact": "bench-fw", "version": "2.0.0" }))
        .send()
        .await?;
    let status = response.status();
    let deployment: Value = response.json().await?;
    if !status.is_success() {
        bail!("cannot create the deployment: {status} {deployment}");
    }
    Ok(credential)
}

/// An nginx child process serving `www` on a loopback port.
struct Nginx {
    child: Child,
    port: u16,
    /// `nginx/1.22.1`, from `nginx -v`.
    version: String,
    /// `-p prefix -c conf -e log`, again for `-s stop`.
    flags: Vec<String>,
    binary: PathBuf,
}

impl Nginx {
    /// Writes a minimal configuration under `dir/nginx` and starts nginx in the foreground.
    fn start(binary: &Path, workers: &str, dir: &Path, www: &Path) -> anyhow::Result<Nginx> {
        let version = Command::new(binary).arg("-v").output().with_context(|| {
            format!(
                "cannot run {} (install it with `apt-get install -y nginx-light`)",
                binary.display()
            )
        })?;
        let version = String::from_utf8_lossy(&version.stderr)
            .trim()
            .trim_start_matches("nginx version: ")
            .to_owned();
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("tmp"))?;
        // A free port: bind port 0, note it, release it for nginx.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = format!(
            "daemon off;\n\
             worker_processes {workers};\n\
             pid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   sendfile on;\n\
             \x20   tcp_nopush on;\n\
             \x20   keepalive_requests 1000000;\n\
             \x20   default_type application/octet-stream;\n\
             \x20   client_body_temp_path {prefix}/tmp/body;\n\
             \x20   proxy_temp_path {prefix}/tmp/proxy;\n\
             \x20   fastcgi_temp_path {prefix}/tmp/fastcgi;\n\
             \x20   uwsgi_temp_path {prefix}/tmp/uwsgi;\n\
             \x20   scgi_temp_path {prefix}/tmp/scgi;\n\
             \x20   server {{\n\
             \x20       listen 127.0.0.1:{port};\n\
             \x20       root {www};\n\
             \x20   }}\n\
             }}\n",
            prefix = prefix.display(),
            www = www.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let flags = vec![
            "-p".to_owned(),
            prefix.display().to_string(),
            "-c".to_owned(),
            conf_path.display().to_string(),
            "-e".to_owned(),
            prefix.join("error.log").display().to_string(),
        ];
        let mut child = Command::new(binary)
            .args(&flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = || std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default();
            if let Some(status) = child.try_wait()? {
                bail!("nginx exited ({status}): {}", log());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("nginx did not start listening on port {port}: {}", log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Nginx {
            child,
            port,
            version,
            flags,
            binary: binary.to_owned(),
        })
    }

    /// Stops nginx and its workers (killing only the master would orphan them).
    fn stop(mut self) {
        let _ = Command::new(&self.binary)
            .args(&self.flags)
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User plus system CPU time of a process and its direct children (nginx's workers), in clock
/// ticks; 0 if unreadable.
fn cpu_ticks(pid: u32) -> u64 {
    let own = |pid: &str| -> u64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0;
        };
        // Fields after the command name (which may contain spaces): state is field 3, utime 14,
        // stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return 0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(14) + field(15)
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    own(&pid.to_string()) + children.split_whitespace().map(own).sum::<u64>()
}

/// `sysconf(_SC_CLK_TCK)`, from `getconf` (100 on every Linux this runs on).
fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// Cores, CPU model, memory, kernel and today's date.
pub(crate) fn machine_line() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / (1u64 << 20) as f64);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores (nproc), {model}, {mem_gib:.0} GiB RAM, Linux {}, {}",
        kernel.trim(),
        time::OffsetDateTime::now_utc().date()
    )
}

/// The command as it was typed (arguments with spaces quoted).
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.contains([' ', '\'', '"']) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `256 MiB` for whole mebibytes, else bytes.
fn size_label(size: u64) -> String {
    match size {
        s if s % (1 << 30) == 0 => format!("{} GiB", s >> 30),
        s if s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s => format!("{s} bytes"),
    }
}

/// `268435456`, `256MiB`, `256M`, `1GiB`, `64KiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("expected a size such as 268435456 or 256MiB, got {text:?}"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        other => return Err(format!("unknown size unit {other:?}: use KiB, MiB or GiB")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {text:?} is too large"))
}
