//! One virtual device: the drover-agent's decision logic run as async tasks on the simulator's
//! shared runtime. The heartbeat loop is the agent's [`Scheduler`], the shadow loop its
//! [`ShadowSync`], the update loop its [`UpdateMachine`] with the agent's simulated bootloader
//! ([`SimEnv`]); only the effects are the simulator's: readings come from the scenario's metric
//! distributions and the running firmware's behaviour model, slots hold a record instead of bytes,
//! a download is hashed instead of stored, and a reboot is a pause.
//!
//! A device provisions itself with the fleet's claim token (or reuses the credential saved by an
//! earlier run), then runs its loops until the fleet stops. Every exchange goes through the
//! device's [`Link`], so the network model shapes it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use drover_agent::backoff::Backoff;
use drover_agent::mqtt::session::ShadowMessage;
use drover_agent::random::Rng;
use drover_agent::scheduler::{self, Failure, ScheduleOptions, Scheduler};
use drover_agent::shadow::{Apply, ShadowSync};
use drover_agent::transport::{Credential, DeltaWait, Provisioned, TransportError};
use drover_agent::update::client::target_path;
use drover_agent::update::health::HealthOutcome;
use drover_agent::update::machine::{
    Action, BootOp, Destination, Event, MachineOptions, Record, UpdateMachine,
};
use drover_agent::update::slots::simulated::SimEnv;
use drover_agent::update::slots::{Slot, SlotImage};
use drover_agent::update::verify::VerifyError;
use drover_core::health::MetricName;
use drover_core::{ArtifactName, HardwareId, Label, Timestamp, Version};
use drover_proto::device_api::{Heartbeat, ProvisionRequest};
use drover_proto::update::DeploymentState;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{watch, Semaphore};

use crate::api::{DeviceApi, Partial, Reported};
use crate::mqtt::{BrokerAddress, MqttLink};
use crate::net::Link;
use crate::sample::{
    duration_sample, metric_sample, poisson_sample, SimRng, Transport, VirtualDeviceSpec,
};
use crate::scenario::{FirmwareBehaviour, Scenario};
use crate::stats::Stats;
use crate::time::hours;
use crate::verify::SharedVerifier;

/// Heartbeats a virtual device keeps while it cannot reach the server.
const MAX_BUFFERED: usize = 200;
/// How long a simulated reboot takes (simulated time).
const REBOOT_TIME: Duration = Duration::from_secs(30);
/// Custom metric: crashes per hour over the last heartbeat interval (simulated time).
pub const CRASH_METRIC: &str = "crashes_per_hour";
/// Known metric: crashes since the last heartbeat, which the rollout canary gate counts.
pub const CRASH_COUNT_METRIC: &str = "crashes";

/// What every virtual device of a run shares.
pub struct Fleet {
    pub api: DeviceApi,
    /// The MQTT broker for the devices that speak MQTT.
    pub broker: Option<BrokerAddress>,
    pub scenario: Scenario,
    pub stats: Stats,
    pub verifier: SharedVerifier,
    /// Credentials and committed images, saved between runs.
    pub saved: SavedDevices,
    pub claim_token: Option<String>,
    /// Limits provisioning requests in flight, so a fleet starting at once is no stampede.
    pub provisioning: Semaphore,
    pub started: Instant,
    pub stop: watch::Receiver<bool>,
}

/// What a device keeps between runs: its credential, and the image it runs when that is not the
/// scenario's firmware (it installed an update), so a fleet comes back as it was left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedDevice {
    pub credential: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<SavedSlot>,
}

/// The committed slot and its image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSlot {
    pub slot: Slot,
    pub image: SlotImage,
}

/// The fleet's saved devices by device id.
#[derive(Debug, Default)]
pub struct SavedDevices {
    map: Mutex<BTreeMap<String, SavedDevice>>,
}

impl SavedDevices {
    pub fn from_map(map: BTreeMap<String, SavedDevice>) -> SavedDevices {
        SavedDevices {
            map: Mutex::new(map),
        }
    }

    pub fn get(&self, device: &str) -> Option<SavedDevice> {
        self.lock().get(device).cloned()
    }

    pub fn insert(&self, device: &str, credential: &Credential) {
        self.lock().insert(
            device.to_owned(),
            SavedDevice {
                credential: credential.expose().to_owned(),
                running: None,
            },
        );
    }

    /// Records the committed image a device runs.
    pub fn set_running(&self, device: &str, running: Option<SavedSlot>) {
        if let Some(saved) = self.lock().get_mut(device) {
            saved.running = running;
        }
    }

    pub fn remove(&self, device: &str) {
        self.lock().remove(device);
    }

    pub fn to_map(&self) -> BTreeMap<String, SavedDevice> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SavedDevice>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs one virtual device until the fleet stops.
pub async fn run(fleet: &Fleet, spec: VirtualDeviceSpec) {
    fleet.stats.devices.fetch_add(1, Relaxed);
    let mut rng = SimRng::for_stream(spec.rng_seed, 0);
    let network = spec
        .network
        .as_ref()
        .and_then(|name| fleet.scenario.networks.get(name))
        .copied();
    let link = Link::new(
        network,
        fleet.scenario.run.time_scale,
        fleet.started,
        &mut rng,
    );
    let Some(credential) = provision(fleet, &spec, &link, &mut rng).await else {
        fleet.stats.stopped.fetch_add(1, Relaxed);
        return;
    };
    let saved = fleet
        .saved
        .get(spec.id.as_str())
        .and_then(|saved| saved.running);
    let mqtt = match (spec.transport, &fleet.broker) {
        (Transport::Mqtt, Some(broker)) => Some(MqttLink::new(
            spec.id.clone(),
            broker.clone(),
            credential.clone(),
        )),
        _ => None,
    };
    let device = Device::new(fleet, spec, credential, link, mqtt);
    let slots = Slots::new(saved.as_ref());
    fleet.stats.firmware_changed(None, &device.spec.firmware);
    device.booted(
        slots.env.booted,
        slots.images[idx(slots.env.booted)].as_ref(),
    );
    let seed = device.spec.rng_seed;
    let shadow = fleet.scenario.run.shadow;
    match &device.mqtt {
        Some(mqtt) => {
            let link = device.link();
            tokio::join!(
                mqtt.pump(&link, seed ^ 0x5eed, fleet.stop.clone()),
                device.heartbeats(),
                async {
                    if shadow {
                        device.shadow_over_mqtt(mqtt).await
                    }
                },
                device.updates(slots),
            );
        }
        None => {
            tokio::join!(
                device.heartbeats(),
                async {
                    if shadow {
                        device.shadow_over_http().await
                    }
                },
                device.updates(slots)
            );
        }
    }
    device.set_online(false);
}

async fn provision(
    fleet: &Fleet,
    spec: &VirtualDeviceSpec,
    link: &Link,
    rng: &mut SimRng,
) -> Option<Credential> {
    if let Some(saved) = fleet.saved.get(spec.id.as_str()) {
        fleet.stats.provisioned.fetch_add(1, Relaxed);
        return Some(Credential::new(saved.credential));
    }
    let Some(token) = &fleet.claim_token else {
        fleet.stats.error(
            "a device has no saved credential and the run has no claim token to provision it",
        );
        return None;
    };
    let request = ProvisionRequest {
        hardware_id: HardwareId::parse(&format!("hw-{}", spec.id)).ok()?,
        claim_token: Some(token.clone()),
        preauth_secret: None,
        nonce: None,
        device_id: Some(spec.id.clone()),
        device_type: Some(spec.device_type.clone()),
        hw_rev: spec.hw_rev.clone(),
        firmware: Some(spec.firmware.clone()),
    };
    let mut backoff = Backoff::standard();
    let mut jitter = Rng::seeded(spec.rng_seed ^ 0x9e37);
    let mut stop = fleet.stop.clone();
    loop {
        let result = {
            let _permit = fleet.provisioning.acquire().await.ok()?;
            fleet.api.provision(link, rng, &request).await
        };
        let wait = match result {
            Ok(Provisioned::Accepted { credential, .. }) => {
                fleet.saved.insert(spec.id.as_str(), &credential);
                fleet.stats.provisioned.fetch_add(1, Relaxed);
                return Some(credential);
            }
            Ok(Provisioned::Pending { retry_after, .. }) => retry_after,
            Err(e) if e.is_transient() => {
                fleet.stats.error(format!("provisioning: {e}"));
                backoff.on_failure(&mut jitter, e.retry_after())
            }
            Err(e) => {
                fleet.stats.error(format!("provisioning {}: {e}", spec.id));
                return None;
            }
        };
        if pause(&mut stop, wait).await {
            return None;
        }
    }
}

/// Sleeps `duration`; true when the fleet is stopping.
async fn pause(stop: &mut watch::Receiver<bool>, duration: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(duration) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// The simulated A/B slot pair: the agent's bootloader environment, and per slot the record of
/// its image and whether that image boots and passes its health check (drawn from the firmware
/// model when it is installed).
struct Slots {
    env: SimEnv,
    images: [Option<SlotImage>; 2],
    boots: [bool; 2],
    healthy: [bool; 2],
}

impl Slots {
    /// A device's slots at the start of a run: the factory image in slot `a`, or what it ran when
    /// the last run ended.
    fn new(saved: Option<&SavedSlot>) -> Slots {
        let mut env = SimEnv::factory();
        let mut images = [None, None];
        if let Some(saved) = saved {
            env.boot_part = saved.slot;
            images[idx(saved.slot)] = Some(saved.image.clone());
        }
        let _ = env.power_cycle(|_| Ok::<bool, ()>(true));
        let mut boots = [false, false];
        boots[idx(env.booted)] = true;
        Slots {
            env,
            images,
            boots,
            healthy: [true, true],
        }
    }
}

fn idx(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// What is running now: the heartbeat loop reads it, the update loop changes it.
struct Running {
    firmware: Version,
    artifact: Option<ArtifactName>,
    slot: Slot,
    /// When the running image was booted: its uptime, and how much its memory leak has taken.
    booted_at: Instant,
    online: bool,
    link: Link,
}

struct Device<'f> {
    fleet: &'f Fleet,
    spec: VirtualDeviceSpec,
    credential: Credential,
    mqtt: Option<MqttLink>,
    running: Mutex<Running>,
}

impl<'f> Device<'f> {
    fn new(
        fleet: &'f Fleet,
        spec: VirtualDeviceSpec,
        credential: Credential,
        link: Link,
        mqtt: Option<MqttLink>,
    ) -> Device<'f> {
        let now = Instant::now();
        let running = Running {
            firmware: spec.firmware.clone(),
            artifact: None,
            slot: Slot::A,
            booted_at: now,
            online: false,
            link,
        };
        let device = Device {
            fleet,
            spec,
            credential,
            mqtt,
            running: Mutex::new(running),
        };
        device.apply_behaviour();
        device
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn link(&self) -> Link {
        self.lock().link.clone()
    }

    fn behaviour(&self) -> FirmwareBehaviour {
        let running = self.lock();
        *self
            .fleet
            .scenario
            .firmware_behaviour(&running.firmware, running.artifact.as_ref())
    }

    /// The running firmware's connectivity degradation applies to the link.
    fn apply_behaviour(&self) {
        let loss = self.behaviour().connectivity.packet_loss;
        self.lock().link.set_extra_loss(loss);
    }

    fn set_online(&self, online: bool) {
        let mut running = self.lock();
        if running.online != online {
            running.online = online;
            self.fleet
                .stats
                .online
                .fetch_add(if online { 1 } else { -1 }, Relaxed);
        }
    }

    fn scale(&self) -> crate::time::TimeScale {
        self.fleet.scenario.run.time_scale
    }

    fn wall(&self, simulated: Duration) -> Duration {
        self.scale().wall_time(drover_core::Duration::from_millis(
            simulated.as_millis().min(i64::MAX as u128) as i64,
        ))
    }

    // ---- heartbeats ------------------------------------------------------------------------

    async fn heartbeats(&self) {
        let scale = self.scale();
        let interval = scale
            .wall_time(self.spec.heartbeat.interval)
            .max(Duration::from_millis(100));
        let jitter = scale
            .wall_time(self.spec.heartbeat.jitter)
            .min(interval / 2);
        let mut scheduler = Scheduler::new(
            ScheduleOptions {
                interval,
                jitter,
                max_buffered: MAX_BUFFERED,
            },
            Backoff::standard(),
            Rng::seeded(self.spec.rng_seed ^ 0x4842),
        );
        let mut rng = SimRng::for_stream(self.spec.rng_seed, 1);
        let mut stop = self.fleet.stop.clone();
        let first = scale.wall_time(self.spec.first_heartbeat_after);
        if pause(&mut stop, first).await {
            return;
        }
        let mut event = scheduler::Event::Started;
        let mut epoch = 0;
        let mut dropped = 0;
        let mut last_sample: Option<Instant> = None;
        loop {
            let action = scheduler.on_event(Instant::now(), event);
            if scheduler.dropped() > dropped {
                self.fleet
                    .stats
                    .heartbeats_dropped
                    .fetch_add(scheduler.dropped() - dropped, Relaxed);
                dropped = scheduler.dropped();
            }
            event = match action {
                scheduler::Action::Sample => {
                    let covered = last_sample.map_or(interval, |at| at.elapsed());
                    last_sample = Some(Instant::now());
                    scheduler::Event::Sampled(self.sample(&mut rng, covered, interval))
                }
                scheduler::Action::Send(heartbeats) => {
                    let link = self.link();
                    let sent = match &self.mqtt {
                        Some(mqtt) => mqtt.send_heartbeats(&link, &mut rng, &heartbeats).await,
                        None => {
                            self.fleet
                                .api
                                .heartbeats(&link, &mut rng, &self.credential, &heartbeats)
                                .await
                        }
                    };
                    match sent {
                        Ok(_) => {
                            self.fleet
                                .stats
                                .heartbeats
                                .fetch_add(heartbeats.len() as u64, Relaxed);
                            self.set_online(true);
                            scheduler::Event::Sent
                        }
                        Err(_) if *stop.borrow() => return,
                        Err(e) => {
                            if e.is_transient() {
                                self.set_online(false);
                            }
                            self.fleet.stats.error(format!("heartbeat: {e}"));
                            scheduler::Event::SendFailed(Failure::of(&e))
                        }
                    }
                }
                scheduler::Action::SleepUntil(at) => {
                    let Some(mqtt) = &self.mqtt else {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at.into()) => {}
                            _ = stop.changed() => return,
                        }
                        event = scheduler::Event::Woke;
                        continue;
                    };
                    let notified = mqtt.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if mqtt.is_ready() && mqtt.epoch() != epoch {
                        epoch = mqtt.epoch();
                        if epoch > 1 {
                            self.fleet.stats.reconnects.fetch_add(1, Relaxed);
                        }
                        event = scheduler::Event::Connected;
                        continue;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = notified => {}
                        _ = stop.changed() => return,
                    }
                    scheduler::Event::Woke
                }
                scheduler::Action::Exit => {
                    self.fleet.stats.error(format!(
                        "{}: the server refused the credential",
                        self.spec.id
                    ));
                    self.fleet.saved.remove(self.spec.id.as_str());
                    self.fleet.stats.stopped.fetch_add(1, Relaxed);
                    return;
                }
            };
        }
    }

    /// One reading: the cohort's baseline distributions, changed by the running firmware's
    /// behaviour model. `covered` is the simulated time since the last reading, over which
    /// crashes are drawn and reported as a rate per hour.
    fn sample(&self, rng: &mut SimRng, covered: Duration, interval: Duration) -> Heartbeat {
        let behaviour = self.behaviour();
        let running = self.lock();
        let scale = self.scale();
        let simulated = |wall: Duration| scale.simulated_time(wall);
        let mut metrics = BTreeMap::new();
        for (name, distribution) in &self.spec.metrics {
            let value = metric_sample(distribution, rng);
            let value = match name.as_str() {
                "battery_ma" => value * behaviour.battery_current_multiplier,
                "mem_free_bytes" => {
                    let leaked = behaviour.memory_leak_bytes_per_hour
                        * hours(simulated(running.booted_at.elapsed()));
                    (value - leaked).max(0.0)
                }
                "rssi_dbm" => value + behaviour.connectivity.rssi_delta_db,
                _ => value,
            };
            metrics.insert(name.clone(), value);
        }
        let covered = simulated(covered);
        let rate = self.spec.crash_rate_per_hour * behaviour.crash_rate_multiplier;
        let covered_hours = hours(covered);
        if covered_hours > 0.0 {
            let crashes = poisson_sample(rate * covered_hours, rng);
            if let Ok(name) = MetricName::parse(CRASH_METRIC) {
                metrics.insert(name, crashes as f64 / covered_hours);
            }
            if let Ok(name) = MetricName::parse(CRASH_COUNT_METRIC) {
                metrics.insert(name, crashes as f64);
            }
        }
        if let Ok(name) = MetricName::parse("uptime_s") {
            let uptime = simulated(running.booted_at.elapsed()).as_millis() as f64 / 1000.0;
            metrics.insert(name, uptime.max(0.0));
        }
        if let Ok(name) = MetricName::parse("packet_loss_pct") {
            metrics.insert(name, running.link.loss() * 100.0);
        }
        Heartbeat {
            sent_at: Some(Timestamp::from_millis(now_millis())),
            firmware: Some(running.firmware.clone()),
            interval_s: Some(interval.as_secs_f64().ceil().max(1.0) as u32),
            boot_slot: Label::parse(running.slot.as_str()).ok(),
            metrics,
        }
    }

    // ---- shadow ----------------------------------------------------------------------------

    async fn shadow_over_http(&self) {
        let mut sync = ShadowSync::default();
        let mut backoff = Backoff::standard();
        let mut jitter = Rng::seeded(self.spec.rng_seed ^ 0x5348);
        let mut rng = SimRng::for_stream(self.spec.rng_seed, 2);
        let mut stop = self.fleet.stop.clone();
        let api = &self.fleet.api;
        'fetch: loop {
            let link = self.link();
            match api.get_shadow(&link, &mut rng, &self.credential).await {
                Ok(document) => {
                    if let Some(apply) = sync.on_document(document.as_ref()) {
                        self.apply_over_http(&mut sync, apply, &mut rng).await;
                    }
                }
                Err(e) => {
                    self.fleet.stats.error(format!("shadow: {e}"));
                    if pause(&mut stop, backoff.on_failure(&mut jitter, e.retry_after())).await {
                        return;
                    }
                    continue;
                }
            }
            backoff.reset();
            loop {
                let link = self.link();
                let waited = tokio::select! {
                    waited = api.next_delta(&link, &mut rng, &self.credential, sync.since()) => waited,
                    _ = stop.changed() => return,
                };
                match waited {
                    Ok(DeltaWait::Delta(delta)) => {
                        if let Some(apply) = sync.on_delta(&delta) {
                            self.apply_over_http(&mut sync, apply, &mut rng).await;
                        }
                    }
                    Ok(DeltaWait::Nothing) => {}
                    Ok(DeltaWait::Reconnected) => continue 'fetch,
                    Err(e) => {
                        self.fleet.stats.error(format!("shadow: {e}"));
                        if pause(&mut stop, backoff.on_failure(&mut jitter, e.retry_after())).await
                        {
                            return;
                        }
                        continue 'fetch;
                    }
                }
            }
        }
    }

    /// The virtual device's configuration accepts every desired value as it is.
    async fn apply_over_http(&self, sync: &mut ShadowSync, apply: Apply, rng: &mut SimRng) {
        self.fleet.stats.shadow_deltas.fetch_add(1, Relaxed);
        let Some(report) = sync.on_applied(Ok(apply.delta)) else {
            return;
        };
        let link = self.link();
        match self
            .fleet
            .api
            .report(&link, rng, &self.credential, &report)
            .await
        {
            Ok(version) => {
                sync.on_reported(version);
                self.fleet.stats.shadow_reports.fetch_add(1, Relaxed);
            }
            Err(e) => self.fleet.stats.error(format!("shadow report: {e}")),
        }
    }

    async fn shadow_over_mqtt(&self, mqtt: &MqttLink) {
        let mut sync = ShadowSync::default();
        let mut stop = self.fleet.stop.clone();
        let mut fetched_epoch = 0;
        let mut token = 0u64;
        loop {
            let notified = mqtt.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if mqtt.is_ready() && mqtt.epoch() != fetched_epoch {
                // A new connection may have missed deltas: fetch the whole document.
                fetched_epoch = mqtt.epoch();
                token += 1;
                mqtt.publish_shadow(json!({ "clientToken": format!("sim-{token}") }), true);
            }
            for message in mqtt.shadow_messages() {
                let apply = match message {
                    ShadowMessage::GetAccepted(view) => sync.on_document(Some(&view)),
                    ShadowMessage::GetRejected(rejection) => {
                        if rejection.error.code != "not_found" {
                            self.fleet
                                .stats
                                .error(format!("shadow: {}", rejection.error.message));
                        }
                        sync.on_document(None)
                    }
                    ShadowMessage::Delta(delta) => sync.on_delta(&delta),
                    ShadowMessage::UpdateAccepted(accepted) => {
                        sync.on_reported(accepted.version);
                        None
                    }
                    ShadowMessage::UpdateRejected(rejection) => {
                        self.fleet
                            .stats
                            .error(format!("shadow report: {}", rejection.error.message));
                        None
                    }
                };
                if let Some(apply) = apply {
                    self.fleet.stats.shadow_deltas.fetch_add(1, Relaxed);
                    if let Some(report) = sync.on_applied(Ok(apply.delta)) {
                        token += 1;
                        let body = json!({
                            "state": { "reported": report },
                            "clientToken": format!("sim-{token}"),
                        });
                        if mqtt.publish_shadow(body, false) {
                            self.fleet.stats.shadow_reports.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = stop.changed() => return,
            }
        }
    }

    // ---- updates ---------------------------------------------------------------------------

    async fn updates(&self, mut slots: Slots) {
        let options = MachineOptions {
            device_type: Some(self.spec.device_type.to_string()),
            hw_rev: self.spec.hw_rev.as_ref().map(ToString::to_string),
            security_floor: None,
            allow_downgrade: self.fleet.scenario.run.allow_downgrade,
            delta: false,
            firmware: Some(self.spec.firmware.clone()),
            check_interval: self
                .scale()
                .wall_time(self.spec.heartbeat.interval)
                .max(Duration::from_secs(5)),
            watchdog_timeout: Duration::from_secs(60),
            health_retry: Duration::from_secs(5),
        };
        let mut rng = SimRng::for_stream(self.spec.rng_seed, 3);
        let mut stop = self.fleet.stop.clone();
        let clock = Instant::now();
        let now = || clock.elapsed().as_millis() as u64;
        let mut record: Option<Record> = None;
        let mut machine = UpdateMachine::new(options.clone(), None);
        let mut queue: VecDeque<Action> = machine.on_event(now(), started(&slots)).into();
        let mut partial = Partial::default();
        let mut final_state: Option<DeploymentState> = None;
        let mut updating = false;
        loop {
            let Some(action) = queue.pop_front() else {
                let actions = machine.on_event(now(), Event::Woke);
                queue = actions.into();
                continue;
            };
            let link = self.link();
            let api = &self.fleet.api;
            let event = match action {
                Action::Persist(saved) => {
                    record = Some(saved);
                    None
                }
                Action::SleepUntil(at) => {
                    let wait = Duration::from_millis(at.saturating_sub(now()));
                    let woke = match &self.mqtt {
                        Some(mqtt) => {
                            let notified = mqtt.notified();
                            tokio::pin!(notified);
                            notified.as_mut().enable();
                            match mqtt.take_offer() {
                                Some(offer) if machine.job().is_none() => {
                                    Some(Event::Offered(offer))
                                }
                                _ => tokio::select! {
                                    _ = tokio::time::sleep(wait) => Some(Event::Woke),
                                    _ = notified => None,
                                    _ = stop.changed() => return,
                                },
                            }
                        }
                        None => tokio::select! {
                            _ = tokio::time::sleep(wait) => Some(Event::Woke),
                            _ = stop.changed() => return,
                        },
                    };
                    if woke.is_none() || (matches!(woke, Some(Event::Woke)) && now() < at) {
                        queue.push_front(Action::SleepUntil(at));
                        continue;
                    }
                    woke
                }
                Action::Check => Some(
                    match api.next_offer(&link, &mut rng, &self.credential).await {
                        Ok(Some(offer)) => Event::Offered(offer),
                        Ok(None) => Event::NoOffer,
                        Err(e) => {
                            self.fleet.stats.error(format!("update check: {e}"));
                            Event::CheckFailed(e.to_string())
                        }
                    },
                ),
                Action::Report { deployment, report } => {
                    match api
                        .report_deployment(&link, &mut rng, &self.credential, deployment, &report)
                        .await
                    {
                        Ok(Reported::Ended) => Some(Event::Ended),
                        Ok(Reported::Accepted) => None,
                        Err(e) => {
                            self.fleet.stats.error(format!("deployment report: {e}"));
                            None
                        }
                    }
                }
                Action::SendFinal { deployment, report } => {
                    let state = report.state;
                    Some(
                        match api
                            .report_deployment(
                                &link,
                                &mut rng,
                                &self.credential,
                                deployment,
                                &report,
                            )
                            .await
                        {
                            Ok(Reported::Accepted) => {
                                final_state = Some(state);
                                Event::ReportDelivered
                            }
                            Ok(Reported::Ended) => Event::Ended,
                            Err(e @ TransportError::Rejected { .. }) => {
                                Event::ReportRefused(e.to_string())
                            }
                            Err(e) => {
                                self.fleet.stats.error(format!("deployment report: {e}"));
                                Event::ReportFailed(e.to_string())
                            }
                        },
                    )
                }
                Action::VerifyMetadata { image, delta } => {
                    let verified = self
                        .fleet
                        .verifier
                        .verify(api.clone(), self.credential.clone(), image, delta)
                        .await;
                    Some(match verified {
                        Ok((image, delta)) => Event::MetadataVerified { image, delta },
                        Err(e) => {
                            self.fleet.stats.error(format!("update metadata: {e}"));
                            Event::MetadataFailed {
                                transient: matches!(e, VerifyError::Fetch(_)),
                                reason: e.to_string(),
                            }
                        }
                    })
                }
                Action::Download {
                    target,
                    destination,
                    from,
                    etag: _,
                } => {
                    if from == 0 || partial.bytes_done != from {
                        partial = Partial::default();
                        if let Destination::Slot(slot) = destination {
                            slots.images[idx(slot)] = None;
                        }
                    }
                    let behaviour = self.behaviour_of(&target.custom.version, &target.custom.name);
                    let planned = behaviour
                        .download_duration
                        .as_ref()
                        .map(|model| self.scale().wall_time(duration_sample(model, &mut rng)));
                    let started = Instant::now();
                    let before = partial.bytes_done;
                    let path = target_path(&target.target, &target.sha256);
                    let result = api
                        .download(
                            &link,
                            &mut rng,
                            &self.credential,
                            &path,
                            target.length,
                            &mut partial,
                        )
                        .await;
                    self.fleet
                        .stats
                        .bytes_downloaded
                        .fetch_add(partial.bytes_done.saturating_sub(before), Relaxed);
                    Some(match result {
                        Ok(()) => {
                            if let Some(rest) =
                                planned.and_then(|p| p.checked_sub(started.elapsed()))
                            {
                                if pause(&mut stop, rest).await {
                                    return;
                                }
                            }
                            Event::DownloadDone {
                                etag: partial.etag.clone(),
                            }
                        }
                        Err(e) => {
                            self.fleet.stats.error(format!("download: {e}"));
                            Event::DownloadFailed {
                                bytes_done: partial.bytes_done,
                                etag: partial.etag.clone(),
                                transient: e.is_transient(),
                                reason: e.to_string(),
                            }
                        }
                    })
                }
                Action::VerifyDownload { target, .. } => Some(
                    if partial.bytes_done == target.length && partial.sha256() == target.sha256 {
                        Event::DownloadVerified
                    } else {
                        partial = Partial::default();
                        Event::DownloadCorrupt(format!(
                            "the download does not match the signed sha256 of {}",
                            target.target
                        ))
                    },
                ),
                Action::Install { slot, image, .. } => {
                    let behaviour = self.behaviour_of(&image.custom.version, &image.custom.name);
                    if let Some(model) = &behaviour.install_duration {
                        let wall = self.scale().wall_time(duration_sample(model, &mut rng));
                        if pause(&mut stop, wall).await {
                            return;
                        }
                    }
                    let installed = SlotImage {
                        version: image.custom.version.clone(),
                        length: image.length,
                        sha256: image.sha256.clone(),
                        target: Some(image.target.clone()),
                    };
                    slots.images[idx(slot)] = Some(installed.clone());
                    slots.boots[idx(slot)] = !rng.chance(behaviour.boot_failure);
                    slots.healthy[idx(slot)] = !rng.chance(behaviour.health_check_failure);
                    Some(Event::Installed(installed))
                }
                Action::Bootloader(op) => Some(match op {
                    BootOp::MarkTryOnce(slot) => match slots.env.mark_try_once(slot) {
                        Ok(()) => Event::BootloaderDone,
                        Err(e) => Event::BootloaderFailed(e.to_string()),
                    },
                    BootOp::Commit => {
                        slots.env.commit();
                        self.save_running(&slots);
                        Event::BootloaderDone
                    }
                    BootOp::RollBack => {
                        slots.env.roll_back();
                        Event::BootloaderDone
                    }
                }),
                Action::Reboot => {
                    if pause(&mut stop, self.wall(REBOOT_TIME)).await {
                        return;
                    }
                    let trying = slots.env.upgrade_available.then_some(slots.env.boot_part);
                    let boots = slots.boots;
                    let booted = slots
                        .env
                        .power_cycle(|slot| Ok::<bool, ()>(boots[idx(slot)]));
                    let Ok(Some(booted)) = booted else {
                        self.fleet.stats.bricked.fetch_add(1, Relaxed);
                        self.fleet
                            .stats
                            .error(format!("{}: bricked (no slot boots)", self.spec.id));
                        return;
                    };
                    if trying.is_some_and(|slot| slot != booted) {
                        self.fleet.stats.boot_failures.fetch_add(1, Relaxed);
                    }
                    self.booted(booted, slots.images[idx(booted)].as_ref());
                    self.save_running(&slots);
                    machine = UpdateMachine::new(options.clone(), record.clone());
                    queue = machine.on_event(now(), started(&slots)).into();
                    continue;
                }
                Action::CheckHealth => {
                    let booted = slots.env.booted;
                    Some(Event::Health(if slots.healthy[idx(booted)] {
                        HealthOutcome::Healthy
                    } else {
                        self.fleet.stats.health_failures.fetch_add(1, Relaxed);
                        HealthOutcome::Unhealthy(
                            "the simulated firmware failed its health check (firmware model)"
                                .into(),
                        )
                    }))
                }
                Action::CleanUp => None,
            };
            if let Some(event) = event {
                let actions = machine.on_event(now(), event);
                if !actions.is_empty() {
                    queue = actions.into();
                }
            }
            let busy = machine.job().is_some();
            if busy != updating {
                updating = busy;
                let stats = &self.fleet.stats;
                stats.updating.fetch_add(if busy { 1 } else { -1 }, Relaxed);
                if busy {
                    stats.updates_started.fetch_add(1, Relaxed);
                } else {
                    match final_state.take() {
                        Some(DeploymentState::Succeeded) => &stats.updates_succeeded,
                        Some(DeploymentState::RolledBack) => &stats.updates_rolled_back,
                        _ => &stats.updates_failed,
                    }
                    .fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn behaviour_of(&self, version: &Version, artifact: &str) -> FirmwareBehaviour {
        let artifact = ArtifactName::parse(artifact).ok();
        *self
            .fleet
            .scenario
            .firmware_behaviour(version, artifact.as_ref())
    }

    /// The device came up on `slot`, holding `image` (`None`: the factory image).
    fn booted(&self, slot: Slot, image: Option<&SlotImage>) {
        let version = image.map_or_else(|| self.spec.firmware.clone(), |i| i.version.clone());
        let artifact = image
            .and_then(|i| i.target.as_deref())
            .and_then(|t| t.split('/').next())
            .and_then(|name| ArtifactName::parse(name).ok());
        let previous = {
            let mut running = self.lock();
            let previous = std::mem::replace(&mut running.firmware, version.clone());
            running.artifact = artifact;
            running.slot = slot;
            running.booted_at = Instant::now();
            previous
        };
        if previous != version {
            self.fleet.stats.firmware_changed(Some(&previous), &version);
        }
        self.apply_behaviour();
    }

    /// Saves what the device runs, once it is committed (a slot on trial is not).
    fn save_running(&self, slots: &Slots) {
        let status = slots.env.status();
        if status.trying {
            return;
        }
        let saved = slots.images[idx(status.booted)]
            .as_ref()
            .map(|image| SavedSlot {
                slot: status.booted,
                image: image.clone(),
            });
        self.fleet.saved.set_running(self.spec.id.as_str(), saved);
    }
}

fn started(slots: &Slots) -> Event {
    let status = slots.env.status();
    Event::Started {
        running: slots.images[idx(status.booted)].clone(),
        inactive: slots.images[idx(status.booted.other())].clone(),
        status,
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
