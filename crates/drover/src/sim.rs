//! `drover sim`: runs a scenario's virtual fleet against a server, with a live progress line and a
//! summary (text or `--json`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use drover_sim::mqtt::BrokerAddress;
use drover_sim::{RunOptions, Scenario, Summary};

/// `drover sim` options (the server and admin token are the global `--server` / `--token`).
#[derive(Debug, Args)]
pub struct SimArgs {
    /// The scenario file (see docs/simulator.md).
    #[arg(long, value_name = "FILE")]
    pub scenario: PathBuf,
    /// Claim token the devices provision with; created with the admin token (`--token`) when
    /// absent.
    #[arg(long, env = "DROVER_CLAIM_TOKEN", hide_env_values = true)]
    pub claim_token: Option<String>,
    /// The MQTT broker of the MQTT devices (default: the server's host, port 1884, where
    /// `drover serve` starts its embedded broker).
    #[arg(long, value_name = "HOST:PORT")]
    pub mqtt: Option<String>,
    /// Where device credentials and trusted TUF metadata are kept between runs.
    #[arg(long, value_name = "DIR", default_value = "drover-sim-state")]
    pub state_dir: PathBuf,
    /// How long to run, in simulated time (e.g. `24h`); overrides the scenario's `run.duration`.
    #[arg(long)]
    pub duration: Option<String>,
    /// Overrides the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 1.0)]
    pub progress_every: f64,
}

/// Runs `drover sim`.
pub async fn run(
    args: SimArgs,
    server: String,
    token: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("cannot read the scenario {}", args.scenario.display()))?;
    let scenario =
        Scenario::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.scenario.display()))?;
    let duration = args
        .duration
        .as_deref()
        .map(drover_core::Duration::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    if !(args.progress_every.is_finite() && args.progress_every >= 0.1) {
        bail!("--progress-every must be at least 0.1 seconds");
    }
    let broker = broker_address(args.mqtt.as_deref(), &server)?;
    let options = RunOptions {
        server: server.clone(),
        broker,
        claim_token: args.claim_token,
        admin_token: token,
        state_dir: args.state_dir,
        duration,
        seed: args.seed,
        progress_every: Duration::from_secs_f64(args.progress_every),
    };
    let scale = scenario.run.time_scale;
    eprintln!(
        "simulating {} devices against {server} at {scale} speed-up{}; Ctrl-C (or SIGTERM) stops and saves the devices' credentials",
        scenario.n_devices(),
        match options.duration.or(scenario.run.duration) {
            Some(d) => format!(" for {}", scale.describe(d)),
            None => String::new(),
        }
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Ctrl-C or SIGTERM: stop the devices and save their credentials, so a later run resumes them.
    tokio::spawn(async move {
        drover_server::termination_signal().await;
        let _ = stop.send(true);
    });
    let tty = std::io::stderr().is_terminal();
    let summary = drover_sim::run(
        scenario,
        options,
        stopped,
        |now, previous, since, elapsed| {
            let line = now.progress_line(previous, since.as_secs_f64(), elapsed.as_secs_f64());
            if tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!(e))?;
    if tty {
        eprintln!();
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

fn broker_address(flag: Option<&str>, server: &str) -> anyhow::Result<BrokerAddress> {
    if let Some(flag) = flag {
        let (host, port) = flag
            .rsplit_once(':')
            .context("--mqtt must be HOST:PORT, e.g. 127.0.0.1:1884")?;
        let port = port
            .parse()
            .with_context(|| format!("--mqtt: {port:?} is not a port number"))?;
        return Ok(BrokerAddress {
            host: host.trim_matches(['[', ']']).to_owned(),
            port,
        });
    }
    let url =
        reqwest::Url::parse(server).with_context(|| format!("--server {server:?} is not a URL"))?;
    let host = url
        .host_str()
        .with_context(|| format!("--server {server:?} has no host"))?;
    Ok(BrokerAddress {
        host: host.trim_matches(['[', ']']).to_owned(),
        port: 1884,
    })
}

fn print_summary(summary: &Summary) {
    let f = &summary.fleet;
    println!(
        "Simulated {} devices ({} over HTTP, {} over MQTT) against {}",
        summary.devices, summary.http_devices, summary.mqtt_devices, summary.server
    );
    println!("  time            {}", summary.time);
    match summary.all_online_after_s {
        Some(s) => println!(
            "  online          all {} devices after {s:.1} s (peak {})",
            summary.devices, summary.peak_online
        ),
        None => println!(
            "  online          peak {} of {} devices",
            summary.peak_online, summary.devices
        ),
    }
    println!("  provisioned     {}", f.provisioned);
    println!(
        "  heartbeats      {} stored, {} dropped",
        f.heartbeats, f.heartbeats_dropped
    );
    println!(
        "  shadow          {} deltas applied, {} reports",
        f.shadow_deltas, f.shadow_reports
    );
    println!(
        "  updates         {} started: {} succeeded, {} rolled back, {} failed ({} boot failures, {} health-check failures, {} bricked)",
        f.updates_started, f.updates_succeeded, f.updates_rolled_back, f.updates_failed, f.boot_failures, f.health_failures, f.bricked
    );
    let versions: Vec<String> = f
        .versions
        .iter()
        .map(|(v, n)| format!("{v}: {n}"))
        .collect();
    println!("  versions        {}", versions.join(", "));
    println!(
        "  downloaded      {:.1} MiB",
        f.bytes_downloaded as f64 / (1 << 20) as f64
    );
    println!("  reconnects      {}", f.reconnects);
    println!("  errors          {} (each retried)", f.errors);
    for error in &f.recent_errors {
        println!("    {error}");
    }
}
