//! `drover bench mqtt` and `drover bench mqtt-idle`: the MQTT device API under load.
//!
//! `mqtt` drives QoS 1 heartbeats from many device connections into the embedded broker and counts
//! PUBACKs, which the broker sends only once a heartbeat is durable; the anchor is Mosquitto
//! relaying the same messages from the same number of connections to one subscriber, with no
//! processing. `mqtt-idle` connects thousands of idle devices to a `drover serve` child process
//! and reports the growth of its resident memory per connection, beside a fresh Mosquitto's for
//! the same connections.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use drover_core::DeviceId;
use drover_server::mqtt::MqttConfig;
use drover_server::ServerConfig;
use drover_store::testing::TempDir;

use crate::bench::{enrol, BENCH_TOKEN};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Debug, Args)]
pub struct MqttArgs {
    /// Device connections publishing at once (each its own device and credential).
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// Unacknowledged QoS 1 messages each connection may have in flight.
    #[arg(long, default_value_t = 32)]
    pub inflight: u16,
    /// Heartbeats per message: 1 publishes a heartbeat, more a `{"heartbeats": [...]}` batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The anchor broker (Mosquitto), `mqtt://host:port`.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub anchor: String,
    /// Store URL (default: SQLite in a temporary directory).
    #[arg(long)]
    pub store: Option<String>,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Idle device connections to open.
    #[arg(long, default_value_t = 19_000)]
    pub connections: usize,
    /// Connections per client process (each process may hold only so many file descriptors).
    #[arg(long, default_value_t = 9_500)]
    pub per_process: usize,
    /// Internal: connect the devices listed on stdin to this broker and hold them open.
    #[arg(long, hide = true)]
    pub client_for: Option<String>,
}

/// A heartbeat message as devices send it.
fn heartbeat_payload(i: u64, batch: usize) -> Vec<u8> {
    let one = |i: u64| {
        serde_json::json!({ "metrics": {
            "battery_v": 3.6 + (i % 10) as f64 / 100.0, "temp_c": 20.0 + (i % 7) as f64,
            "rssi_dbm": -60.0 - (i % 20) as f64, "uptime_s": 3600 + i, "cpu_pct": 12.5
        } })
    };
    let body = if batch == 1 {
        one(i)
    } else {
        serde_json::json!({ "heartbeats": (0..batch as u64).map(|k| one(i + k)).collect::<Vec<_>>() })
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

fn address(url: &str) -> anyhow::Result<(String, u16)> {
    let address = drover_server::mqtt::external::parse_url(url)?;
    Ok((address.host, address.port))
}

/// Publishes QoS 1 messages from each connection as fast as its in-flight window allows for
/// `seconds`; returns the PUBACKs received in that time.
async fn publish_load(
    host: &str,
    port: u16,
    devices: &[(String, String)],
    topic: impl Fn(&str) -> String,
    authenticate: bool,
    args: &MqttArgs,
) -> anyhow::Result<(u64, Duration)> {
    let (inflight, batch, seconds) = (args.inflight, args.batch, args.seconds);
    let acks = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    for (idx, (id, credential)) in devices.iter().enumerate() {
        let client_id = if authenticate {
            id.clone()
        } else {
            format!("bench-{}-{idx}", std::process::id())
        };
        let mut options = MqttOptions::new(client_id, host, port);
        options.set_keep_alive(Duration::from_secs(60));
        options.set_inflight(inflight);
        options.set_max_packet_size(1 << 20, 1 << 20);
        if authenticate {
            options.set_credentials(id, credential);
        }
        let (client, mut events) = AsyncClient::new(options, inflight as usize * 2);
        // Publishes go out as soon as they are written, as from a device that has several in
        // flight (Nagle's algorithm would hold each small one back until the last is ACKed).
        let mut network = events.network_options();
        network.set_tcp_nodelay(true);
        events.set_network_options(network);
        let (tx, rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        ready.push(rx);
        let (acks, counting, stop2) = (acks.clone(), counting.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut tx = Some(tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        if counting.load(Ordering::Relaxed) {
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Err(anyhow::anyhow!("{e}")));
                        }
                        if stop2.load(Ordering::Relaxed) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
        let topic = topic(id);
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = idx as u64 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if client
                    .publish(
                        topic.clone(),
                        QoS::AtLeastOnce,
                        false,
                        heartbeat_payload(i, batch),
                    )
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = client.disconnect().await;
        }));
    }
    for rx in ready {
        rx.await.context("connection task ended")??;
    }
    // Warm up, then count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for task in tasks {
        task.abort();
    }
    Ok((acks.load(Ordering::Relaxed), elapsed))
}

/// Counts messages a subscriber receives on `filter` while `load` runs.
async fn relay_load(
    host: &str,
    port: u16,
    devices: &[(String, String)],
    args: &MqttArgs,
) -> anyhow::Result<(u64, Duration)> {
    let prefix = format!("drover-bench-{}", std::process::id());
    let mut options = MqttOptions::new(format!("{prefix}-sub"), host, port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    options.set_keep_alive(Duration::from_secs(60));
    let (subscriber, mut events) = AsyncClient::new(options, 1024);
    subscriber
        .subscribe(format!("{prefix}/+/heartbeat"), QoS::AtMostOnce)
        .await?;
    let received = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reader = {
        let (received, counting) = (received.clone(), counting.clone());
        tokio::spawn(async move {
            let mut tx = Some(tx);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        if counting.load(Ordering::Relaxed) {
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .context("the anchor broker did not answer")??;
    let load = {
        let counting = counting.clone();
        let prefix = prefix.clone();
        async move {
            // Count on the subscriber side over the same window as the publishers.
            let measuring = async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                counting.store(true, Ordering::Relaxed);
                let started = Instant::now();
                tokio::time::sleep(Duration::from_secs(args.seconds)).await;
                counting.store(false, Ordering::Relaxed);
                started.elapsed()
            };
            let publishing = publish_load(
                host,
                port,
                devices,
                move |id| format!("{prefix}/{id}/heartbeat"),
                false,
                args,
            );
            let (elapsed, published) = tokio::join!(measuring, publishing);
            published.map(|_| elapsed)
        }
    };
    let elapsed = load.await?;
    reader.abort();
    Ok((received.load(Ordering::Relaxed), elapsed))
}

pub async fn mqtt(args: MqttArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.inflight == 0 || args.batch == 0 || args.batch > 1000 {
        bail!("--connections and --inflight must be positive and --batch between 1 and 1000");
    }
    let dir = TempDir::new();
    let mut config = ServerConfig::with_data_dir(&dir.path);
    config.listen = "127.0.0.1:0".parse()?;
    config.mqtt = MqttConfig::Embedded {
        listen: "127.0.0.1:0".parse()?,
    };
    config.admin_token = Some(BENCH_TOKEN.into());
    if let Some(store) = &args.store {
        config.store_url = store.clone();
    }
    let server = drover_server::start(config, std::future::pending()).await?;
    let mqtt = server
        .mqtt_addr
        .context("the embedded broker is not running")?;
    let base = format!("http://{}", server.addr);
    println!(
        "# drover bench mqtt: {} connections, {} in flight each, {} heartbeat(s) per message, {} s, on {}",
        args.connections,
        args.inflight,
        args.batch,
        args.seconds,
        server.store.backend_name()
    );
    let devices = enrol(&base, "mq", args.connections).await?;

    let (anchor_host, anchor_port) = address(&args.anchor)?;
    let (relayed, relay_time) = relay_load(&anchor_host, anchor_port, &devices, &args).await?;
    let (acked, drover_time) = publish_load(
        &mqtt.ip().to_string(),
        mqtt.port(),
        &devices,
        |id| drover_proto::mqtt::heartbeat(&DeviceId::parse(id).unwrap_or_else(|_| unreachable!())),
        true,
        &args,
    )
    .await?;
    // Refused heartbeats are acknowledged too (with a rejection message): count them apart.
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    let rejected: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("drover_device_rejections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, n| sum + n);
    let relay_rate = relayed as f64 / relay_time.as_secs_f64();
    let drover_rate = acked as f64 / drover_time.as_secs_f64();
    println!();
    println!("| measurement | messages/s | heartbeats/s | refused messages | ratio to anchor (messages/s) |");
    println!("|---|---:|---:|---:|---:|");
    println!("| anchor: Mosquitto relaying (QoS 1 in, QoS 0 out to one subscriber) | {relay_rate:.0} | - | - | 1.00 |");
    println!(
        "| Drover embedded broker, durable (PUBACK after commit) | {drover_rate:.0} | {:.0} | {rejected:.0} | {:.2} |",
        drover_rate * args.batch as f64,
        drover_rate / relay_rate
    );
    server.shutdown().await?;
    Ok(())
}

/// Starts `drover serve` as a child on free ports; returns it with its HTTP and MQTT addresses.
fn spawn_server(dir: &TempDir) -> anyhow::Result<(Child, String, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&dir.path)
        .env("DROVER_ADMIN_TOKEN", BENCH_TOKEN)
        .env("DROVER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start drover serve")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let (mut http, mut mqtt) = (None, None);
    while http.is_none() || mqtt.is_none() {
        let line = lines.next().context("drover serve exited")??;
        if let Some(addr) = line.strip_prefix("drover is serving on ") {
            http = Some(addr.trim().to_owned());
        } else if let Some(addr) = line.strip_prefix("devices can connect over MQTT to mqtt://") {
            mqtt = Some(addr.trim().to_owned());
        }
    }
    // Keep draining its stderr so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, http.unwrap_or_default(), mqtt.unwrap_or_default()))
}

/// Connects `devices` as idle clients from child processes; returns them once all are connected.
fn connect_idle(
    broker: &str,
    devices: &[(String, String)],
    per_process: usize,
    authenticate: bool,
) -> anyhow::Result<Vec<Child>> {
    let mut children = Vec::new();
    for chunk in devices.chunks(per_process.max(1)) {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "mqtt-idle", "--client-for", broker])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut stdin = child.stdin.take().context("no stdin")?;
        for (id, credential) in chunk {
            let credential = if authenticate {
                credential.as_str()
            } else {
                "-"
            };
            writeln!(stdin, "{id} {credential}")?;
        }
        writeln!(stdin)?;
        // Stdin stays open: closing it tells the child to exit.
        child.stdin = Some(stdin);
        children.push(child);
    }
    for child in &mut children {
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if !line.starts_with("connected") {
            bail!("a client process failed: {line}");
        }
    }
    Ok(children)
}

/// How many times an idle client tries to connect before the benchmark fails.
const CONNECT_ATTEMPTS: u32 = 5;

/// The hidden client mode: reads `id credential` lines until an empty one, connects each, prints
/// `connected N` and holds the connections until stdin closes.
async fn hold_connections(broker: &str) -> anyhow::Result<()> {
    let (host, port) = address(&format!("mqtt://{broker}"))?;
    let mut devices = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        let (id, credential) = line.split_once(' ').context("expected `id credential`")?;
        devices.push((id.to_owned(), credential.to_owned()));
    }
    let mut ready = Vec::new();
    let mut tasks = Vec::new();
    for (id, credential) in devices {
        let mut options = MqttOptions::new(id.clone(), host.clone(), port);
        options.set_keep_alive(Duration::from_secs(600));
        if credential != "-" {
            options.set_credentials(id, credential);
        }
        let (client, mut events) = AsyncClient::new(options, 4);
        let (tx, rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
        ready.push(rx);
        tasks.push(tokio::spawn(async move {
            let _client = client;
            let mut tx = Some(tx);
            let mut failures = 0;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // A handshake lost in a full listen backlog is retried, as a device
                        // would; a broker that keeps refusing fails the benchmark.
                        failures += 1;
                        if failures >= CONNECT_ATTEMPTS {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(Err(anyhow::anyhow!("{e}")));
                                return;
                            }
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
        // Pace the handshakes a little so the listen backlog never overflows.
        if tasks.len() % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let n = ready.len();
    for rx in ready {
        rx.await.context("connection task ended")??;
    }
    println!("connected {n}");
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await?;
    Ok(())
}

pub async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    if let Some(broker) = &args.client_for {
        return hold_connections(broker).await;
    }
    if args.connections == 0 {
        bail!("--connections must be positive");
    }
    let dir = TempDir::new();
    let (mut server, http, mqtt) = spawn_server(&dir)?;
    let result = async {
        println!("# drover bench mqtt-idle: {} idle connections, {} per client process", args.connections, args.per_process);
        let devices = enrol(&http, "idle", args.connections).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = Memory::of_drover(server.id(), &http, &dir.path).await?;
        let clients = connect_idle(&mqtt, &devices, args.per_process, true)?;
        tokio::time::sleep(SETTLE).await;
        let after = Memory::of_drover(server.id(), &http, &dir.path).await?;
        drop_children(clients);
        let n = args.connections as f64;
        let per = |f: fn(&Memory) -> u64| f(&after).saturating_sub(f(&before)) as f64 / n;
        let drover_rss = per(|m| m.rss);
        let drover_file = per(|m| m.file);
        let drover_once = per(|m| m.rss_data_once);
        let drover_sqlite = per(|m| m.sqlite);
        let drover_own = (after.anon.saturating_sub(before.anon) as f64
            - (after.sqlite as f64 - before.sqlite as f64))
            / n;

        // The anchor: a fresh Mosquitto of our own, so its memory starts clean like Drover's.
        let anchor = match spawn_mosquitto() {
            Ok((mut mosquitto, port)) => {
                let measured = async {
                    let before = Memory::of_process(mosquitto.id())?;
                    let clients = connect_idle(&format!("127.0.0.1:{port}"), &devices, args.per_process, false)?;
                    tokio::time::sleep(SETTLE).await;
                    let after = Memory::of_process(mosquitto.id())?;
                    drop_children(clients);
                    Ok::<_, anyhow::Error>(after.rss.saturating_sub(before.rss) as f64 / n)
                }
                .await;
                let _ = mosquitto.kill();
                let _ = mosquitto.wait();
                Some(measured?)
            }
            Err(e) => {
                eprintln!("no Mosquitto anchor: {e:#}");
                None
            }
        };
        let ratio = |x: f64| anchor.map_or("-".to_owned(), |a| format!("{:.2}", x / a));
        println!();
        println!("Per idle connection, in bytes (Drover's resident memory {:.1} MiB before, {:.1} MiB with the connections):", mib(before.rss), mib(after.rss));
        println!();
        println!("| broker | resident (VmRSS) | of which mapped files (SQLite's database, program code) | resident, the database's pages counted once | of which SQLite's page caches | the broker's own (anonymous, less SQLite) | ratio to anchor (own) |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        if let Some(anchor) = anchor {
            println!("| anchor: Mosquitto | {anchor:.0} | | {anchor:.0} | | {anchor:.0} | 1.00 |");
        }
        println!(
            "| Drover embedded broker | {drover_rss:.0} | {drover_file:.0} | {drover_once:.0} | {drover_sqlite:.0} | {drover_own:.0} | {} |",
            ratio(drover_own)
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// How long the connections stay before memory is read again, so that the broker has finished
/// setting them up.
const SETTLE: Duration = Duration::from_secs(10);

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// A process's memory: resident in all (VmRSS), anonymous (heap and stacks), mapped from files
/// (for Drover, mostly SQLite's memory-mapped database), and the heap SQLite holds for its page
/// caches and statements (from Drover's `/metrics`; bounded by `cache_size`, not by connections).
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss: u64,
    /// VmRSS with each page of the data directory's files counted once: SQLite maps the database
    /// once per connection (a writer and its readers), and VmRSS counts a page once per mapping.
    /// Taken from `/proc/PID/smaps` as the proportional size (Pss) of those mappings, which no
    /// other process shares, plus the resident size of every other mapping.
    rss_data_once: u64,
    anon: u64,
    file: u64,
    sqlite: u64,
}

impl Memory {
    fn of_process(pid: u32) -> anyhow::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| kib_field(l, name))
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Memory {
            rss: field("VmRSS:")?,
            rss_data_once: 0,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
            sqlite: 0,
        })
    }

    async fn of_drover(pid: u32, http: &str, data_dir: &Path) -> anyhow::Result<Memory> {
        let metrics = reqwest::get(format!("{http}/metrics"))
            .await?
            .text()
            .await?;
        let sqlite = metrics
            .lines()
            .find_map(|l| l.strip_prefix("drover_sqlite_memory_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .context("no drover_sqlite_memory_bytes in /metrics")?;
        Ok(Memory {
            sqlite: sqlite as u64,
            rss_data_once: resident_with_data_once(pid, data_dir)?,
            ..Memory::of_process(pid)?
        })
    }
}

/// See [`Memory::rss_data_once`].
fn resident_with_data_once(pid: u32, data_dir: &Path) -> anyhow::Result<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let data_dir = data_dir.canonicalize()?;
    let data_dir = data_dir.to_string_lossy();
    let (mut total, mut in_data_dir) = (0, false);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, permissions, offset, device, inode, path.
            in_data_dir = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|path| path.starts_with(&*data_dir));
        } else if let Some(bytes) = kib_field(line, if in_data_dir { "Pss:" } else { "Rss:" }) {
            total += bytes;
        }
    }
    Ok(total)
}

/// The bytes in a `/proc` line `NAME   N kB`, if the line is `name`'s.
fn kib_field(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// Starts `mosquitto -p PORT` on a free loopback port (its default local-only, anonymous mode).
fn spawn_mosquitto() -> anyhow::Result<(Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("mosquitto")
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run mosquitto")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("mosquitto did not start listening on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, port))
}

fn drop_children(children: Vec<Child>) {
    for mut child in children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
