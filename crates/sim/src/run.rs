//! Running a scenario against a server: the claim token, the fleet's saved credentials, one task
//! per virtual device on the caller's runtime, the progress callback, and the summary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::api::DeviceApi;
use crate::device::{self, Fleet, SavedDevice, SavedDevices};
use crate::mqtt::BrokerAddress;
use crate::sample::{expand_fleet, Transport};
use crate::scenario::Scenario;
use crate::stats::Snapshot;
use crate::verify::SharedVerifier;

/// Provisioning requests in flight at once.
const PROVISIONING_CONCURRENCY: usize = 64;
/// How long devices get to finish their current exchange when the run stops.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The file in the state directory holding the fleet's devices: credentials and running images.
pub const DEVICES_FILE: &str = "devices.json";

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The server's base URL, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// The MQTT broker for MQTT devices.
    pub broker: BrokerAddress,
    /// Provisions devices that have no saved credential.
    pub claim_token: Option<String>,
    /// Creates a claim token when none is given, and labels devices with their region, site and
    /// tags (which a claim token cannot carry per device).
    pub admin_token: Option<String>,
    /// Where credentials and trusted TUF metadata are kept between runs.
    pub state_dir: PathBuf,
    /// Overrides the scenario's `run.duration` (simulated); `None` with no scenario duration runs
    /// until stopped.
    pub duration: Option<drover_core::Duration>,
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// How often the progress callback runs.
    pub progress_every: Duration,
}

/// What a run did (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub server: String,
    pub devices: usize,
    pub http_devices: usize,
    pub mqtt_devices: usize,
    pub speedup: f64,
    /// E.g. "2h of simulated time in 2m of wall time (60× speed-up)".
    pub time: String,
    pub wall_seconds: f64,
    /// Seconds from the start until every device had a heartbeat stored, if that happened.
    pub all_online_after_s: Option<f64>,
    pub peak_online: u64,
    pub fleet: Snapshot,
}

/// Runs `scenario` until its duration passes or `stop` turns true; `progress` sees the counters
/// every `progress_every` (now, the previous snapshot, the time between them, the time since the
/// start).
pub async fn run(
    scenario: Scenario,
    options: RunOptions,
    mut stop: watch::Receiver<bool>,
    mut progress: impl FnMut(&Snapshot, &Snapshot, Duration, Duration),
) -> Result<Summary, String> {
    drover_agent::silence_logs();
    std::fs::create_dir_all(&options.state_dir).map_err(|e| {
        format!(
            "cannot create the state directory {}: {e}",
            options.state_dir.display()
        )
    })?;
    let devices_path = options.state_dir.join(DEVICES_FILE);
    let saved = load_saved(&devices_path)?;
    let api = DeviceApi::new(&options.server, Duration::from_secs(30))?;
    let seed = options.seed.or(scenario.run.seed).unwrap_or(0);
    let specs = expand_fleet(&scenario, seed);
    let missing = specs
        .iter()
        .filter(|spec| !saved.contains_key(spec.id.as_str()))
        .count();
    let admin = options
        .admin_token
        .as_ref()
        .map(|token| Admin::new(&options.server, token))
        .transpose()?;
    let claim_token = match (&options.claim_token, &admin) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(admin)) if missing > 0 => Some(admin.create_claim().await?),
        (None, _) if missing > 0 => {
            return Err(format!(
                "{missing} of the scenario's {} devices have no saved credential in {}: give a claim token (--claim-token) or an admin token (--admin-token) to provision them",
                specs.len(),
                devices_path.display()
            ))
        }
        (None, _) => None,
    };
    let devices = specs.len();
    let mqtt_devices = specs
        .iter()
        .filter(|s| s.transport == Transport::Mqtt)
        .count();
    let scale = scenario.run.time_scale;
    let duration = options.duration.or(scenario.run.duration);
    let wall_limit = duration.map(|d| scale.wall_time(d));

    let (stop_devices, device_stop) = watch::channel(false);
    let fleet = Arc::new(Fleet {
        api,
        broker: Some(options.broker.clone()),
        scenario,
        stats: Default::default(),
        verifier: SharedVerifier::new(options.state_dir.join("tuf")),
        saved: SavedDevices::from_map(saved),
        claim_token,
        provisioning: Semaphore::new(PROVISIONING_CONCURRENCY),
        started: Instant::now(),
        stop: device_stop,
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut labels = Vec::new();
    for spec in specs {
        if admin.is_some() {
            labels.push(Labels::of(&spec));
        }
        let fleet = fleet.clone();
        tasks.spawn(async move { device::run(&fleet, spec).await });
    }
    let mut labelled = admin.is_none();

    let started = fleet.started;
    let mut previous = fleet.stats.snapshot();
    let mut last = Instant::now();
    let mut all_online_after = None;
    let mut peak_online = 0;
    let mut ticker = tokio::time::interval(options.progress_every);
    ticker.tick().await;
    loop {
        let deadline = wall_limit.map(|limit| started + limit);
        tokio::select! {
            _ = ticker.tick() => {}
            _ = crate::net::sleep_until(deadline) => break,
            _ = stop.changed() => break,
        }
        let snapshot = fleet.stats.snapshot();
        peak_online = peak_online.max(snapshot.online);
        if all_online_after.is_none() && snapshot.online as usize >= devices {
            all_online_after = Some(started.elapsed().as_secs_f64());
        }
        if !labelled && snapshot.provisioned as usize >= devices {
            labelled = true;
            if let Some(admin) = &admin {
                let admin = admin.clone();
                let labels = std::mem::take(&mut labels);
                let fleet = fleet.clone();
                tokio::spawn(async move {
                    if let Err(e) = admin.label(labels).await {
                        fleet.stats.error(e);
                    }
                });
            }
        }
        progress(&snapshot, &previous, last.elapsed(), started.elapsed());
        previous = snapshot;
        last = Instant::now();
    }
    let _ = stop_devices.send(true);
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    save_saved(&devices_path, &fleet.saved.to_map())?;
    let wall = started.elapsed();
    let fleet_snapshot = fleet.stats.snapshot();
    Ok(Summary {
        server: options.server,
        devices,
        http_devices: devices - mqtt_devices,
        mqtt_devices,
        speedup: scale.speedup(),
        time: format!(
            "{} of simulated time in {:.0} s of wall time ({scale} speed-up)",
            whole_seconds(scale.simulated_time(wall)),
            wall.as_secs_f64()
        ),
        wall_seconds: wall.as_secs_f64(),
        all_online_after_s: all_online_after,
        peak_online,
        fleet: fleet_snapshot,
    })
}

fn whole_seconds(duration: drover_core::Duration) -> drover_core::Duration {
    drover_core::Duration::from_millis(duration.as_millis() / 1000 * 1000)
}

fn load_saved(path: &std::path::Path) -> Result<BTreeMap<String, SavedDevice>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is not a devices file of drover sim ({e}); move it away to provision the fleet again",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn save_saved(path: &std::path::Path, map: &BTreeMap<String, SavedDevice>) -> Result<(), String> {
    let bytes = serde_json::to_vec(map).expect("saved devices serialise");
    drover_agent::update::persist::write_atomic(path, &bytes).map_err(|e| {
        format!(
            "cannot save the devices' credentials and images to {}: {e}",
            path.display()
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(())
}

/// A device's registry labels that provisioning cannot set.
#[derive(Debug, Clone, Serialize)]
pub struct Labels {
    #[serde(skip)]
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    site: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    tags: BTreeMap<String, String>,
}

impl Labels {
    fn of(spec: &crate::sample::VirtualDeviceSpec) -> Labels {
        Labels {
            id: spec.id.to_string(),
            site: spec.site.as_ref().map(ToString::to_string),
            region: spec.region.as_ref().map(ToString::to_string),
            tags: spec
                .tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

/// The operator API, with an admin token.
#[derive(Clone)]
struct Admin {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Admin {
    fn new(server: &str, token: &str) -> Result<Admin, String> {
        Ok(Admin {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?,
            base: format!("{}/api/v1", server.trim_end_matches('/')),
            token: token.to_owned(),
        })
    }

    /// Creates a claim token for the simulated fleet (valid for a week).
    async fn create_claim(&self) -> Result<String, String> {
        let body = serde_json::json!({ "name": "drover-sim", "expires_in": "7d" });
        let response = self
            .client
            .post(format!("{}/claims", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("cannot reach the server to create a claim token: {e}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!(
                "the server refused to create a claim token (HTTP {status}): {}",
                text.chars().take(300).collect::<String>()
            ));
        }
        let created: drover_proto::auth::CreatedClaim = serde_json::from_str(&text)
            .map_err(|e| format!("unreadable answer to creating a claim token: {e}"))?;
        Ok(created.token)
    }

    /// Sets each device's site, region and tags, a few requests at a time.
    async fn label(&self, labels: Vec<Labels>) -> Result<(), String> {
        use futures::StreamExt;
        let failures = futures::stream::iter(labels)
            .map(|labels| async move {
                let response = self
                    .client
                    .patch(format!("{}/devices/{}", self.base, labels.id))
                    .bearer_auth(&self.token)
                    .json(&labels)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) => Some(format!("labelling {}: HTTP {}", labels.id, r.status())),
                    Err(e) => Some(format!("labelling {}: {e}", labels.id)),
                }
            })
            .buffer_unordered(16)
            .filter_map(|failure| async move { failure })
            .collect::<Vec<_>>()
            .await;
        match failures.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} device(s) could not be labelled, e.g. {first}",
                failures.len()
            )),
        }
    }
}
