use super::*;
use drover_proto::update::{TargetCustom, TargetRef};

fn version(text: &str) -> Version {
    Version::parse(text).unwrap()
}

fn options() -> MachineOptions {
    MachineOptions {
        device_type: Some("hub".into()),
        hw_rev: None,
        security_floor: None,
        allow_downgrade: false,
        delta: false,
        firmware: Some(version("1.0.0")),
        check_interval: Duration::from_secs(60),
        watchdog_timeout: Duration::from_secs(300),
        health_retry: Duration::from_secs(10),
    }
}

fn image() -> VerifiedTarget {
    VerifiedTarget {
        target: "hub/2.0.0/fw.img".into(),
        length: 10,
        sha256: "ab".into(),
        custom: TargetCustom {
            name: "hub-fw".into(),
            version: version("2.0.0"),
            device_types: vec!["hub".into()],
            hw_revs: vec![],
            kind: TargetKind::Full,
            base_sha256: None,
            image_target: None,
            security_floor: None,
        },
    }
}

fn job(phase: Phase) -> Job {
    Job {
        offer: UpdateOffer {
            deployment: DeploymentId(1),
            image: TargetRef {
                target: "hub/2.0.0/fw.img".into(),
                length: 10,
                sha256: "ab".into(),
            },
            delta: None,
            update_type: UpdateType::Forced,
            attempt: 1,
        },
        from: Slot::A,
        from_version: Some(version("1.0.0")),
        image: Some(image()),
        delta: None,
        env_changed: Some(("boot-1".into(), Slot::A)),
        booted_new: false,
        phase,
    }
}

fn status(boot_id: &str, booted: Slot, trying: bool) -> BootStatus {
    BootStatus {
        booted,
        trying,
        boot_id: boot_id.into(),
    }
}

/// The actions other than persisting and reporting, with the phase persisted first if any.
fn summary(actions: &[Action]) -> (Option<String>, Vec<String>) {
    let mut persisted = None;
    let mut rest = Vec::new();
    for action in actions {
        match action {
            Action::Persist(record) => {
                persisted = record.job.as_ref().map(|j| match &j.phase {
                    Phase::Finish { report } => format!("finish {}", report.state.as_str()),
                    phase => format!("{phase:?}")
                        .split([' ', '{'])
                        .next()
                        .unwrap()
                        .to_lowercase(),
                })
            }
            Action::Report { .. } => {}
            Action::SendFinal { report, .. } => {
                rest.push(format!("send {}", report.state.as_str()))
            }
            Action::Bootloader(op) => rest.push(format!("{op:?}")),
            other => rest.push(
                format!("{other:?}")
                    .split([' ', '(', '{'])
                    .next()
                    .unwrap()
                    .to_owned(),
            ),
        }
    }
    (persisted, rest)
}

#[test]
#[allow(clippy::type_complexity)]
fn a_restart_resumes_or_rolls_back_according_to_the_persisted_phase_and_the_boot() {
    let verify = || Phase::Verify {
        boot_id: "boot-2".into(),
        deadline_ms: 1_000,
    };
    let cases: Vec<(&str, Phase, BootStatus, Option<&str>, &[&str])> = vec![
        (
            "marked, same boot: mark again",
            Phase::MarkTryOnce,
            status("boot-1", Slot::B, true),
            Some("marktryonce"),
            &["MarkTryOnce(B)"],
        ),
        (
            "rebooting, same boot: mark again and go on",
            Phase::Reboot,
            status("boot-1", Slot::A, false),
            Some("marktryonce"),
            &["MarkTryOnce(B)"],
        ),
        (
            "rebooted into the new slot: verify",
            Phase::Reboot,
            status("boot-2", Slot::B, true),
            Some("verify"),
            &["CheckHealth"],
        ),
        (
            "rebooted into the old slot: it did not boot",
            Phase::Reboot,
            status("boot-2", Slot::A, false),
            Some("rollback"),
            &["RollBack"],
        ),
        (
            "verifying, same boot: check again",
            verify(),
            status("boot-2", Slot::B, true),
            None,
            &["CheckHealth"],
        ),
        (
            "verifying, restarted on the old slot: rolled back",
            verify(),
            status("boot-3", Slot::A, false),
            Some("rollback"),
            &["RollBack"],
        ),
        (
            "committing on the new slot: commit again",
            Phase::Commit,
            status("boot-2", Slot::B, false),
            None,
            &["Commit"],
        ),
        (
            "a success whose slot was left is not reported as one",
            Phase::Finish {
                report: DeploymentReport {
                    state: DeploymentState::Succeeded,
                    reason: None,
                    failure: None,
                    bytes_done: None,
                    firmware: Some(version("2.0.0")),
                    used_delta: None,
                },
            },
            status("boot-3", Slot::A, false),
            Some("finish rolled_back"),
            &["send rolled_back"],
        ),
        (
            "downloading: resume from the persisted bytes",
            Phase::Download {
                delta: false,
                bytes_done: 4,
                etag: None,
            },
            status("boot-1", Slot::A, false),
            None,
            &["Download"],
        ),
    ];
    for (name, phase, status, persisted, expected) in cases {
        let mut record = Record::new(None);
        record.job = Some(job(phase));
        let mut machine = UpdateMachine::new(options(), Some(record));
        let actions = machine.on_event(
            0,
            Event::Started {
                status,
                running: None,
                inactive: None,
            },
        );
        let (got_persisted, rest) = summary(&actions);
        assert_eq!(got_persisted.as_deref(), persisted, "{name}: {actions:?}");
        assert_eq!(rest, expected, "{name}: {actions:?}");
    }
}

#[test]
fn the_watchdog_deadline_survives_a_restart_in_the_same_boot() {
    let mut record = Record::new(None);
    record.job = Some(job(Phase::Verify {
        boot_id: "boot-2".into(),
        deadline_ms: 1_000,
    }));
    let mut machine = UpdateMachine::new(options(), Some(record));
    let started = Event::Started {
        status: status("boot-2", Slot::B, true),
        running: None,
        inactive: None,
    };
    let actions = machine.on_event(1_001, started);
    assert_eq!(
        summary(&actions),
        (Some("rollback".into()), vec!["RollBack".into()])
    );
    let Some(Job {
        phase: Phase::RollBack { failure, reason },
        ..
    }) = machine.job()
    else {
        panic!("not rolling back");
    };
    assert_eq!(*failure, FailureKind::HealthCheckFailed);
    assert!(reason.contains("watchdog"), "{reason}");
}

#[test]
fn health_checks_that_are_not_passing_yet_are_retried_until_the_deadline() {
    let mut record = Record::new(None);
    record.job = Some(job(Phase::Verify {
        boot_id: "boot-2".into(),
        deadline_ms: 25_000,
    }));
    let mut machine = UpdateMachine::new(options(), Some(record));
    machine.on_event(
        0,
        Event::Started {
            status: status("boot-2", Slot::B, true),
            running: None,
            inactive: None,
        },
    );
    let not_yet = || Event::Health(HealthOutcome::NotYet("app starting".into()));
    assert_eq!(machine.on_event(0, not_yet()), [Action::SleepUntil(10_000)]);
    assert_eq!(
        machine.on_event(20_000, not_yet()),
        [Action::SleepUntil(25_000)]
    );
    let actions = machine.on_event(25_000, not_yet());
    assert_eq!(summary(&actions).1, ["RollBack"]);
}

#[test]
fn a_report_conflict_abandons_the_job_only_before_the_point_of_no_return() {
    for (phase, abandoned) in [
        (Phase::Metadata, true),
        (
            Phase::Download {
                delta: false,
                bytes_done: 0,
                etag: None,
            },
            true,
        ),
        (Phase::Install { delta: false }, true),
        (Phase::MarkTryOnce, false),
        (Phase::Reboot, false),
        (Phase::Commit, false),
    ] {
        let name = format!("{phase:?}");
        let mut record = Record::new(None);
        record.job = Some(job(phase));
        let mut machine = UpdateMachine::new(options(), Some(record));
        machine.on_event(
            0,
            Event::Started {
                status: status("boot-1", Slot::A, false),
                running: None,
                inactive: None,
            },
        );
        machine.on_event(0, Event::Ended);
        assert_eq!(machine.job().is_none(), abandoned, "{name}");
    }
}
