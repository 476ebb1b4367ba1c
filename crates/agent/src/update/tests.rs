//! Runner tests: the whole update path over the simulated slots, a fake server, a fake TUF
//! verifier and a fake delta applier, with a test clock; and the crash test that abandons the
//! runner after every action and restarts it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_core::Version;
use drover_proto::update::{
    DeploymentId, DeploymentReport, DeploymentState, FailureKind, TargetCustom, TargetKind,
    TargetRef, UpdateOffer, UpdateType,
};

use super::client::{Download, ReportOutcome, UpdateClient, WriteSeek};
use super::health::{HealthChecker, HealthOptions};
use super::machine::MachineOptions;
use super::persist::UpdateStore;
use super::runner::{Clock, RunnerParts, Step, UpdateRunner};
use super::sha256_hex;
use super::slots::simulated::SimulatedSlots;
use super::slots::{Slot, SlotBackend};
use super::verify::{
    DeltaApplier, DeltaError, MetadataSource, ReadSeek, VerifiedTarget, Verifier, VerifyError,
};
use crate::process::tempdir::Dir;
use crate::transport::TransportError;

const IMAGE: &str = "hub/2.0.0/fw.img";
const DELTA: &str = "hub/2.0.0/fw.from-1.0.0.delta";

fn version(text: &str) -> Version {
    Version::parse(text).unwrap()
}

fn old_image() -> Vec<u8> {
    b"factory image 1.0.0 ".repeat(50)
}

fn new_image(marker: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    bytes.extend_from_slice(marker.as_bytes());
    bytes
}

/// The server: one offer, the target files, the reports it received.
#[derive(Default)]
struct Server {
    offer: Option<UpdateOffer>,
    files: HashMap<String, Vec<u8>>,
    reports: Vec<DeploymentReport>,
    /// Downloads started, as (target, from).
    downloads: Vec<(String, u64)>,
    /// Interrupt the next download after this many bytes.
    interrupt_after: Option<u64>,
    /// Answer reports with 409.
    ended: bool,
}

#[derive(Clone, Default)]
struct FakeClient(Arc<Mutex<Server>>);

impl MetadataSource for FakeClient {
    fn fetch_metadata(&mut self, _: &str) -> Result<Option<Vec<u8>>, TransportError> {
        Ok(Some(b"{}".to_vec()))
    }
}

impl UpdateClient for FakeClient {
    fn next_offer(&mut self) -> Result<Option<UpdateOffer>, TransportError> {
        Ok(self.0.lock().unwrap().offer.clone())
    }

    fn report(
        &mut self,
        _: DeploymentId,
        report: &DeploymentReport,
    ) -> Result<ReportOutcome, TransportError> {
        let mut server = self.0.lock().unwrap();
        if server.ended {
            server.offer = None;
            return Ok(ReportOutcome::Ended);
        }
        server.reports.push(report.clone());
        if report.state.is_final() || report.state == DeploymentState::Downloaded {
            server.offer = None;
        }
        Ok(ReportOutcome::Accepted)
    }

    fn download(
        &mut self,
        target: &str,
        _sha256: &str,
        length: u64,
        from: u64,
        _etag: Option<&str>,
        out: &mut dyn WriteSeek,
    ) -> Result<Download, TransportError> {
        let mut server = self.0.lock().unwrap();
        server.downloads.push((target.to_owned(), from));
        let file = server.files.get(target).cloned().unwrap_or_default();
        let start = (from as usize).min(file.len());
        out.seek(std::io::SeekFrom::Start(start as u64)).unwrap();
        let end = file.len().min(length as usize);
        let mut rest = &file[start..end.max(start)];
        if let Some(n) = server.interrupt_after.take() {
            let n = (n as usize).min(rest.len());
            out.write_all(&rest[..n]).unwrap();
            return Err(TransportError::Unreachable("connection reset".into()));
        }
        std::io::copy(&mut rest, out).unwrap();
        Ok(Download {
            honoured: true,
            etag: Some(format!("\"{target}\"")),
        })
    }
}

/// Signed facts by target.
#[derive(Clone, Default)]
struct FakeVerifier {
    targets: HashMap<String, VerifiedTarget>,
}

impl Verifier for FakeVerifier {
    fn refresh(&mut self, source: &mut dyn MetadataSource) -> Result<(), VerifyError> {
        source.fetch_metadata("timestamp.json")?;
        Ok(())
    }

    fn verify_target(&mut self, target: &str) -> Result<VerifiedTarget, VerifyError> {
        self.targets
            .get(target)
            .cloned()
            .ok_or_else(|| VerifyError::Rejected(format!("{target} is not in targets.json")))
    }
}

/// A "delta" is `DELTA:` and the new image; a broken applier writes garbage.
struct FakeDelta {
    broken: bool,
}

impl DeltaApplier for FakeDelta {
    fn apply(
        &self,
        old: &mut dyn ReadSeek,
        patch: &mut dyn Read,
        out: &mut dyn Write,
    ) -> Result<u64, DeltaError> {
        let mut base = Vec::new();
        old.read_to_end(&mut base)
            .map_err(|e| DeltaError(e.to_string()))?;
        let mut bytes = Vec::new();
        patch
            .read_to_end(&mut bytes)
            .map_err(|e| DeltaError(e.to_string()))?;
        let body = bytes
            .strip_prefix(b"DELTA:")
            .ok_or(DeltaError("not a delta".into()))?;
        let body = if self.broken { &body[1..] } else { body };
        out.write_all(body).map_err(|e| DeltaError(e.to_string()))?;
        Ok(body.len() as u64)
    }
}

#[derive(Clone, Default)]
struct FakeClock(Arc<AtomicU64>);

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn custom(version_text: &str, kind: TargetKind) -> TargetCustom {
    TargetCustom {
        name: "hub-fw".into(),
        version: version(version_text),
        device_types: vec!["hub".into()],
        hw_revs: vec![],
        kind,
        base_sha256: None,
        image_target: None,
        security_floor: None,
    }
}

/// A simulated device with its server.
struct Device {
    dir: Dir,
    server: Arc<Mutex<Server>>,
    verifier: FakeVerifier,
    clock: FakeClock,
    options: MachineOptions,
    delta: Option<bool>,
    connectivity_fails: bool,
}

impl Device {
    /// A device running 1.0.0 in slot a, offered `image` signed as 2.0.0.
    fn new(name: &str, image: &[u8]) -> Device {
        let dir = Dir::new(name);
        SimulatedSlots::create(dir.path().join("slots"), &old_image(), version("1.0.0")).unwrap();
        let mut verifier = FakeVerifier::default();
        let signed = VerifiedTarget {
            target: IMAGE.into(),
            length: image.len() as u64,
            sha256: sha256_hex(image),
            custom: custom("2.0.0", TargetKind::Full),
        };
        verifier.targets.insert(IMAGE.into(), signed);
        let server = Server {
            offer: Some(UpdateOffer {
                deployment: DeploymentId(7),
                image: TargetRef {
                    target: IMAGE.into(),
                    length: image.len() as u64,
                    sha256: sha256_hex(image),
                },
                delta: None,
                update_type: UpdateType::Forced,
                attempt: 1,
            }),
            files: [(IMAGE.to_owned(), image.to_vec())].into(),
            ..Server::default()
        };
        Device {
            dir,
            server: Arc::new(Mutex::new(server)),
            verifier,
            clock: FakeClock::default(),
            options: MachineOptions {
                device_type: Some("hub".into()),
                hw_rev: Some("rev2".into()),
                security_floor: None,
                allow_downgrade: false,
                delta: false,
                firmware: None,
                check_interval: Duration::from_secs(60),
                watchdog_timeout: Duration::from_secs(300),
                health_retry: Duration::from_secs(10),
            },
            delta: None,
            connectivity_fails: false,
        }
    }

    /// Offers a delta (whose application is `broken` or not) besides the image.
    fn with_delta(mut self, broken: bool) -> Device {
        let image = self.server.lock().unwrap().files[IMAGE].clone();
        let mut patch = b"DELTA:".to_vec();
        patch.extend_from_slice(&image);
        let mut signed = custom("2.0.0", TargetKind::Delta);
        signed.base_sha256 = Some(sha256_hex(&old_image()));
        signed.image_target = Some(IMAGE.into());
        self.verifier.targets.insert(
            DELTA.into(),
            VerifiedTarget {
                target: DELTA.into(),
                length: patch.len() as u64,
                sha256: sha256_hex(&patch),
                custom: signed,
            },
        );
        let mut server = self.server.lock().unwrap();
        server.offer.as_mut().unwrap().delta = Some(TargetRef {
            target: DELTA.into(),
            length: patch.len() as u64,
            sha256: sha256_hex(&patch),
        });
        server.files.insert(DELTA.into(), patch);
        drop(server);
        self.options.delta = true;
        self.delta = Some(broken);
        self
    }

    fn slots(&self) -> SimulatedSlots {
        SimulatedSlots::open(self.dir.path().join("slots")).unwrap()
    }

    fn runner(&self) -> UpdateRunner {
        let fails = self.connectivity_fails;
        let parts = RunnerParts {
            store: UpdateStore::new(self.dir.path().join("state")),
            slots: Box::new(self.slots()),
            client: Box::new(FakeClient(self.server.clone())),
            verifier: Box::new(self.verifier.clone()),
            delta: self
                .delta
                .map(|broken| Box::new(FakeDelta { broken }) as Box<dyn DeltaApplier>),
            health: HealthChecker::new(
                HealthOptions::default(),
                Some(Box::new(move || {
                    if fails {
                        Err("no route to host".into())
                    } else {
                        Ok(())
                    }
                })),
            ),
            clock: Box::new(self.clock.clone()),
        };
        UpdateRunner::start(self.options.clone(), parts).unwrap()
    }

    /// Steps until the runner has no job and waits for its next check with nothing offered;
    /// returns the number of steps. Sleeping advances the clock.
    fn run(&self, runner: &mut UpdateRunner) -> usize {
        for n in 0..10_000 {
            match runner.step().unwrap() {
                Step::Acted => {}
                Step::Sleep(at) => {
                    let idle = runner.machine().job().is_none()
                        && self.server.lock().unwrap().offer.is_none();
                    if idle {
                        return n;
                    }
                    self.clock.0.store(at, Ordering::SeqCst);
                }
                Step::Halted => panic!("the simulated device reboots in-process"),
            }
        }
        panic!("the update did not settle");
    }

    fn reports(&self) -> Vec<DeploymentReport> {
        self.server.lock().unwrap().reports.clone()
    }

    fn states(&self) -> Vec<&'static str> {
        self.reports().iter().map(|r| r.state.as_str()).collect()
    }

    fn final_report(&self) -> DeploymentReport {
        self.reports()
            .into_iter()
            .rev()
            .find(|r| r.state.is_final())
            .expect("a final report")
    }

    /// The slot that runs now and its recorded version.
    fn running(&self) -> (Slot, String) {
        let mut slots = self.slots();
        let booted = slots.status().unwrap().booted;
        let image = slots
            .image(booted)
            .unwrap()
            .expect("the booted slot has a record");
        (booted, image.version.to_string())
    }

    /// The invariants that must hold whenever the agent has settled.
    fn assert_invariants(&self, context: &str) {
        let mut slots = self.slots();
        let status = slots.status().unwrap();
        let image = slots
            .image(status.booted)
            .unwrap()
            .unwrap_or_else(|| panic!("{context}: booted slot {} is not verified", status.booted));
        let bytes = slots.image_bytes(status.booted).unwrap();
        assert_eq!(
            sha256_hex(&bytes),
            image.sha256,
            "{context}: booted image hash"
        );
        let running = image.version.to_string();
        assert!(
            running == "1.0.0" || running == "2.0.0",
            "{context}: runs {running}"
        );
        assert!(
            !status.trying,
            "{context}: settled on a slot that is still on trial"
        );
        let succeeded = self
            .reports()
            .iter()
            .any(|r| r.state == DeploymentState::Succeeded);
        assert_eq!(
            succeeded,
            running == "2.0.0",
            "{context}: succeeded reported iff the new image runs ({:?})",
            self.states()
        );
        // Reports are delivered at least once: a kill after the server took the final report and
        // before the agent recorded that sends it again, but it is always the same outcome.
        let mut finals: Vec<_> = self
            .reports()
            .into_iter()
            .filter(|r| r.state.is_final())
            .collect();
        finals.dedup();
        assert_eq!(
            finals.len(),
            1,
            "{context}: one outcome ({:?})",
            self.states()
        );
        // The device stays where it settled.
        slots.power_cycle().unwrap();
        assert_eq!(slots.status().unwrap().booted, status.booted, "{context}");
    }
}

#[test]
fn a_good_image_is_installed_booted_checked_committed_and_reported() {
    let device = Device::new("update-ok", &new_image(""));
    let mut runner = device.runner();
    device.run(&mut runner);
    assert_eq!(device.running(), (Slot::B, "2.0.0".into()));
    assert_eq!(
        device.states(),
        [
            "downloading",
            "downloaded",
            "installing",
            "rebooting",
            "verifying",
            "succeeded"
        ]
    );
    let report = device.final_report();
    assert_eq!(report.firmware, Some(version("2.0.0")));
    assert_eq!(report.used_delta, Some(false));
    device.assert_invariants("success");
}

#[test]
fn an_image_that_does_not_boot_falls_back_to_the_old_slot() {
    let device = Device::new("update-bootfail", &new_image("DROVER-SIM-BOOT-FAIL"));
    let mut runner = device.runner();
    device.run(&mut runner);
    assert_eq!(device.running(), (Slot::A, "1.0.0".into()));
    let report = device.final_report();
    assert_eq!(report.state, DeploymentState::RolledBack);
    assert_eq!(report.failure, Some(FailureKind::BootFailed));
    assert_eq!(report.firmware, Some(version("1.0.0")));
    device.assert_invariants("boot failure");
}

#[test]
fn an_image_that_fails_its_health_check_is_rolled_back() {
    let device = Device::new("update-healthfail", &new_image("DROVER-SIM-HEALTH-FAIL"));
    let mut runner = device.runner();
    device.run(&mut runner);
    assert_eq!(device.running(), (Slot::A, "1.0.0".into()));
    let report = device.final_report();
    assert_eq!(report.state, DeploymentState::RolledBack);
    assert_eq!(report.failure, Some(FailureKind::HealthCheckFailed));
    assert!(report.reason.unwrap().contains("HEALTH-FAIL"));
    assert!(device.states().contains(&"verifying"));
    device.assert_invariants("health failure");
}

#[test]
fn an_image_that_never_reaches_the_server_is_rolled_back_when_the_watchdog_expires() {
    let mut device = Device::new("update-watchdog", &new_image(""));
    device.connectivity_fails = true;
    let mut runner = device.runner();
    device.run(&mut runner);
    assert_eq!(device.running(), (Slot::A, "1.0.0".into()));
    let report = device.final_report();
    assert_eq!(report.failure, Some(FailureKind::HealthCheckFailed));
    let reason = report.reason.unwrap();
    assert!(
        reason.contains("watchdog") && reason.contains("300 s"),
        "{reason}"
    );
    assert!(
        device.clock.now_ms() >= 300_000,
        "checked until the deadline"
    );
    device.assert_invariants("watchdog");
}

#[test]
fn a_tampered_or_short_download_is_refused_and_the_device_stays_put() {
    for (name, served) in [
        ("update-tampered", {
            let mut bytes = new_image("");
            bytes[100] ^= 1;
            bytes
        }),
        ("update-short", new_image("")[..5000].to_vec()),
    ] {
        let device = Device::new(name, &new_image(""));
        device
            .server
            .lock()
            .unwrap()
            .files
            .insert(IMAGE.into(), served);
        let mut runner = device.runner();
        device.run(&mut runner);
        assert_eq!(device.running(), (Slot::A, "1.0.0".into()), "{name}");
        let report = device.final_report();
        assert_eq!(report.state, DeploymentState::Failed, "{name}");
        assert_eq!(
            report.failure,
            Some(FailureKind::VerificationFailed),
            "{name}"
        );
        assert!(!device.states().contains(&"rebooting"), "{name}");
        assert_eq!(
            device.slots().image(Slot::B).unwrap(),
            None,
            "{name}: slot b unverified"
        );
        device.assert_invariants(name);
    }
}

#[test]
#[allow(clippy::type_complexity)]
fn images_below_the_floor_not_newer_or_for_other_devices_are_refused() {
    let cases: [(&str, fn(&mut Device), FailureKind, &str); 4] = [
        (
            "below-floor",
            |d| d.options.security_floor = Some(version("3.0.0")),
            FailureKind::BelowSecurityFloor,
            "security floor 3.0.0",
        ),
        (
            "not-newer",
            |d| d.options.firmware = Some(version("2.0.0")),
            FailureKind::BelowSecurityFloor,
            "not newer",
        ),
        (
            "other-type",
            |d| d.options.device_type = Some("gateway".into()),
            FailureKind::Incompatible,
            "not gateway",
        ),
        (
            "other-rev",
            |d| {
                let signed = d.verifier.targets.get_mut(IMAGE).unwrap();
                signed.custom.hw_revs = vec!["rev1".into()];
            },
            FailureKind::Incompatible,
            "not rev2",
        ),
    ];
    for (name, setup, kind, words) in cases {
        let mut device = Device::new(name, &new_image(""));
        if name == "not-newer" {
            // The running slot's record wins over the configured firmware: make it 2.0.0.
            let mut slots = device.slots();
            let mut image = slots.image(Slot::A).unwrap().unwrap();
            image.version = version("2.0.0");
            slots.set_image(Slot::A, Some(&image)).unwrap();
        }
        setup(&mut device);
        let mut runner = device.runner();
        device.run(&mut runner);
        let report = device.final_report();
        assert_eq!(device.states(), ["failed"], "{name}");
        assert_eq!(report.failure, Some(kind), "{name}");
        assert!(
            report.reason.as_deref().unwrap().contains(words),
            "{name}: {report:?}"
        );
        assert!(report.failure.unwrap().is_refusal(), "{name}");
        assert!(
            device.server.lock().unwrap().downloads.is_empty(),
            "{name}: nothing downloaded"
        );
    }
}

#[test]
fn a_committed_image_raises_the_security_floor() {
    let mut device = Device::new("update-floor", &new_image(""));
    let signed = device.verifier.targets.get_mut(IMAGE).unwrap();
    signed.custom.security_floor = Some(version("2.0.0"));
    let mut runner = device.runner();
    device.run(&mut runner);
    assert_eq!(
        runner.machine().record().security_floor,
        Some(version("2.0.0"))
    );
    drop(runner);
    // A fresh start (configured floor unset) keeps the persisted one.
    device.options.security_floor = None;
    let runner = device.runner();
    assert_eq!(
        runner.machine().record().security_floor,
        Some(version("2.0.0"))
    );
}

#[test]
fn a_delta_is_used_when_it_applies_and_a_failing_delta_falls_back_to_the_full_image() {
    let device = Device::new("update-delta", &new_image("")).with_delta(false);
    let mut runner = device.runner();
    device.run(&mut runner);
    assert_eq!(device.running(), (Slot::B, "2.0.0".into()));
    assert_eq!(device.final_report().used_delta, Some(true));
    let downloads = device.server.lock().unwrap().downloads.clone();
    assert_eq!(
        downloads,
        [(DELTA.to_owned(), 0)],
        "only the delta was downloaded"
    );
    device.assert_invariants("delta");

    let device = Device::new("update-delta-broken", &new_image("")).with_delta(true);
    let mut runner = device.runner();
    device.run(&mut runner);
    assert_eq!(device.running(), (Slot::B, "2.0.0".into()));
    assert_eq!(device.final_report().used_delta, Some(false));
    let downloads = device.server.lock().unwrap().downloads.clone();
    assert_eq!(downloads, [(DELTA.to_owned(), 0), (IMAGE.to_owned(), 0)]);
    device.assert_invariants("delta fallback");
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let device = Device::new("update-resume", &new_image(""));
    device.server.lock().unwrap().interrupt_after = Some(12_345);
    let mut runner = device.runner();
    device.run(&mut runner);
    let downloads = device.server.lock().unwrap().downloads.clone();
    assert_eq!(
        downloads,
        [(IMAGE.to_owned(), 0), (IMAGE.to_owned(), 12_345)]
    );
    assert_eq!(device.running(), (Slot::B, "2.0.0".into()));
    device.assert_invariants("resume");
}

#[test]
fn a_deployment_the_server_ended_is_abandoned_before_the_point_of_no_return() {
    let device = Device::new("update-ended", &new_image(""));
    device.server.lock().unwrap().ended = true;
    let mut runner = device.runner();
    device.run(&mut runner);
    assert!(runner.machine().job().is_none());
    assert_eq!(device.running(), (Slot::A, "1.0.0".into()));
    assert!(device.server.lock().unwrap().downloads.is_empty());
}

#[test]
fn a_slot_on_trial_without_a_record_is_rolled_back_not_committed() {
    let device = Device::new("update-stray", &new_image(""));
    let mut slots = device.slots();
    let mut file = slots.open(Slot::B, true).unwrap();
    file.write_all(b"unverified").unwrap();
    slots.mark_try_once(Slot::B).unwrap();
    slots.power_cycle().unwrap();
    assert_eq!(slots.status().unwrap().booted, Slot::B);
    device.server.lock().unwrap().offer = None;
    let mut runner = device.runner();
    device.run(&mut runner);
    assert_eq!(slots.status().unwrap().booted, Slot::A);
    assert!(device.reports().is_empty());
}

/// Abandons the runner after every number of actions (optionally with a power cut), restarts it
/// from the persisted state and the slots, and checks the invariants once it has settled.
fn crash_everywhere(name: &str, marker: &str, expect_new: bool) {
    let device = Device::new(&format!("{name}-clean"), &new_image(marker));
    let mut runner = device.runner();
    let n_steps = device.run(&mut runner);
    assert!(n_steps > 10);
    for k in 0..=n_steps {
        for power_cut in [false, true] {
            let context = format!("{name}: crash after {k} actions, power cut {power_cut}");
            let device = Device::new(&format!("{name}-{k}-{power_cut}"), &new_image(marker));
            let mut runner = device.runner();
            let mut done = 0;
            while done < k {
                match runner.step().unwrap() {
                    Step::Acted => done += 1,
                    Step::Sleep(at) => device.clock.0.store(at, Ordering::SeqCst),
                    Step::Halted => unreachable!(),
                }
            }
            drop(runner);
            if power_cut {
                device.slots().power_cycle().unwrap();
            }
            let mut runner = device.runner();
            device.run(&mut runner);
            device.assert_invariants(&context);
            let (_, running) = device.running();
            if !power_cut {
                // An agent restart alone never costs the update.
                assert_eq!(
                    running == "2.0.0",
                    expect_new,
                    "{context}: {:?}",
                    device.states()
                );
            }
        }
    }
}

#[test]
fn a_crash_at_every_action_boundary_ends_on_a_verified_old_or_new_image() {
    crash_everywhere("crash-good", "", true);
}

#[test]
fn a_crash_at_every_action_boundary_of_a_failing_update_never_reports_success() {
    crash_everywhere("crash-healthfail", "DROVER-SIM-HEALTH-FAIL", false);
}
