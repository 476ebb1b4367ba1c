//! The rollout orchestrator as a pure state machine: `Machine::step(spec, now, events) -> actions`.
//!
//! The server's loop gathers what happened since the last tick (device outcomes, operator commands,
//! target growth, crash observations, a canary report it was asked for), calls `step`, carries out
//! the returned actions (assign devices, schedule retries, run the canary analysis, roll back,
//! alert) and stores the machine in the same transaction. The machine never does IO and never
//! reads a clock, so every decision can be replayed in a test with simulated time, and a restart
//! resumes from exactly the stored state.
//!
//! Counting is by device, not by attempt: a device is `assigned` once (when first offered the
//! release) and ends in exactly one of succeeded, failed, rolled back, timed out, rejected, skipped
//! or canceled; between attempts it waits for a retry.

use serde::{Deserialize, Serialize};

use crate::rollout::canary::{self, CanaryData, CanaryReport};
use crate::rollout::plan::phase_quota;
use crate::rollout::spec::{FailureAction, RolloutSpec, Strategy};
use crate::rollout::stats::{BernoulliSprt, RateSprt, Verdict};
use crate::{Duration, Timestamp};

/// Where a rollout is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    /// Stopped offering the release; devices already updating finish. `reason` says why.
    Paused,
    /// Every device of the target has finished (a dynamic rollout still offers the release to
    /// devices that join the target later).
    Completed,
    /// Stopped for good by an operator; unfinished device updates were canceled.
    Aborted,
    /// Stopped for good and the previous release put back on the devices that took this one.
    RolledBack,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Aborted => "aborted",
            Status::RolledBack => "rolled_back",
        }
    }

    /// Aborted and rolled-back rollouts never dispatch again.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Aborted | Status::RolledBack)
    }
}

/// How one device's attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The device runs the release and proved healthy.
    Succeeded,
    /// The attempt failed in a way a retry may fix (download, install, verification).
    Failed,
    /// The new image failed to boot or its health check, and the device fell back.
    RolledBack,
    /// The device went silent past its deadline.
    TimedOut,
    /// The device refused the image (incompatible, below its security floor): never retried.
    Rejected,
    /// The deployment was canceled.
    Canceled,
}

/// An operator's command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "command")]
pub enum Command {
    Pause {
        reason: String,
    },
    Resume,
    Abort {
        reason: String,
    },
    /// Lets the phase waiting for approval start.
    Approve,
    Rollback {
        reason: String,
    },
}

/// What happened since the last step.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The target's current size (it changes when devices join or leave a dynamic target).
    TargetSize(u64),
    /// The result of a `Dispatch`: devices newly offered the release, retries offered again,
    /// devices skipped as ineligible (each counts as finished), and whether the queue of devices
    /// not yet offered ran dry.
    Assigned {
        new: u64,
        retried: u64,
        skipped: u64,
        queue_empty: bool,
    },
    /// One device's attempt ended.
    Outcome {
        device: i64,
        outcome: Outcome,
        attempt: u32,
    },
    /// A device given the previous release back by a rollback finished that update.
    Reverted { ok: bool },
    /// Crashes and exposure (device-hours) observed since the last observation, for the canary
    /// devices on the release and the baseline devices on the old version.
    Crashes {
        canary_events: u64,
        canary_hours: f64,
        baseline_events: u64,
        baseline_hours: f64,
    },
    /// An operator command, with who gave it.
    Command { actor: String, command: Command },
    /// The data asked for by `Action::Analyze`.
    CanaryData(CanaryData),
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Offer the release to up to `new` more devices in rank order, and again to up to `retries`
    /// devices whose retry is due; answer with `Event::Assigned`.
    Dispatch { new: u64, retries: u64 },
    /// Offer the release to `device` again at `at` (attempt `attempt`).
    Retry {
        device: i64,
        attempt: u32,
        at: Timestamp,
    },
    /// Gather canary and baseline data for the current phase and answer with `Event::CanaryData`.
    Analyze { phase: usize, since: Timestamp },
    /// Cancel every unfinished device update of the rollout.
    CancelUnfinished,
    /// Cancel unfinished updates and deploy the previous release to every device that took this one.
    RollBack,
    /// Record a decision in the rollout's log (and alert, when `alert` is set).
    Record(Decision),
}

/// One entry of a rollout's decision log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// `started`, `phase_started`, `waiting_approval`, `soaking`, `gate`, `paused`, `resumed`,
    /// `approved`, `aborted`, `rolled_back`, `completed`.
    pub kind: String,
    /// `orchestrator`, or the operator who gave the command.
    pub actor: String,
    pub phase: usize,
    pub message: String,
    /// Evidence for gate decisions (a `CanaryReport` or the threshold figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<serde_json::Value>,
    /// Whether operators are alerted (webhook and log).
    pub alert: bool,
}

/// Device counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Devices in the target now.
    pub target: u64,
    /// Devices offered the release at least once (or skipped).
    pub assigned: u64,
    pub in_flight: u64,
    pub retry_waiting: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub rolled_back: u64,
    pub timed_out: u64,
    pub rejected: u64,
    pub skipped: u64,
    pub canceled: u64,
    /// Devices given the previous release back by a rollback, and those where that failed.
    pub reverted: u64,
    pub revert_failed: u64,
}

impl Counts {
    /// Devices whose part in the rollout is over.
    pub fn finished(&self) -> u64 {
        self.succeeded
            + self.failed
            + self.rolled_back
            + self.timed_out
            + self.rejected
            + self.skipped
            + self.canceled
    }
}

/// The exponential rate's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateState {
    pub per_minute: f64,
    /// Devices that may be dispatched now (refilled at `per_minute`, at most one minute's worth).
    pub tokens: f64,
    pub refilled_at: Option<Timestamp>,
    pub successes_since_raise: u64,
}

/// The orchestrator's whole state for one rollout; stored as JSON between ticks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub status: Status,
    pub reason: Option<String>,
    pub phase: usize,
    /// When the current phase started dispatching; `None` while it waits to start (approval).
    pub phase_started_at: Option<Timestamp>,
    /// When every device of the phase had finished, so the soak began.
    pub soak_started_at: Option<Timestamp>,
    /// The phase whose start was approved.
    pub approved_phase: Option<usize>,
    /// Whether a marginal verdict already extended this phase's soak once.
    pub extended: bool,
    /// An `Analyze` is outstanding.
    pub analyzing: bool,
    /// Whether the `waiting_approval` decision for this phase was recorded.
    pub announced_wait: bool,
    pub queue_empty: bool,
    pub counts: Counts,
    pub rate: RateState,
    pub crashes: RateSprt,
    pub failures: BernoulliSprt,
    /// Gate reports so far, one per judged phase.
    pub reports: Vec<CanaryReport>,
}

/// Where the alpha budget goes (see `docs/rollouts.md`): a quarter to each sequential test, half
/// to the fixed-look tests, split over the gated phases and their metrics.
pub fn sequential_alpha(spec: &RolloutSpec) -> f64 {
    spec.gates.canary.alpha / 4.0
}

impl Machine {
    /// A new rollout's machine, running from `now` over a target of `target` devices.
    pub fn new(spec: &RolloutSpec, target: u64) -> Machine {
        let canary = &spec.gates.canary;
        let rate = match &spec.strategy {
            Strategy::Rate(rate) => RateState {
                per_minute: f64::from(rate.base_per_minute),
                ..RateState::default()
            },
            Strategy::Phases(_) => RateState::default(),
        };
        Machine {
            status: Status::Running,
            reason: None,
            phase: 0,
            phase_started_at: None,
            soak_started_at: None,
            approved_phase: None,
            extended: false,
            analyzing: false,
            announced_wait: false,
            queue_empty: false,
            counts: Counts {
                target,
                ..Counts::default()
            },
            rate,
            // Validation guarantees these parameters are in range; fall back to safe values anyway.
            crashes: RateSprt::new(canary.crash_ratio)
                .or_else(|_| RateSprt::new(2.0))
                .expect("2 is a valid ratio"),
            failures: BernoulliSprt::new(
                canary.acceptable_failure_pct / 100.0,
                canary.bad_failure_pct / 100.0,
            )
            .or_else(|_| BernoulliSprt::new(0.01, 0.05))
            .expect("valid proportions"),
            reports: Vec::new(),
        }
    }

    /// Applies `events` and decides what to do at `now`.
    pub fn step(&mut self, spec: &RolloutSpec, now: Timestamp, events: Vec<Event>) -> Vec<Action> {
        let mut actions = Vec::new();
        // A step that carries a dispatch's answer does not dispatch again: one dispatch per tick,
        // so a retry that is not yet due cannot make the caller spin.
        let answered = events.iter().any(|e| matches!(e, Event::Assigned { .. }));
        for event in events {
            self.apply(spec, now, event, &mut actions);
        }
        self.advance(spec, now, !answered, &mut actions);
        actions
    }

    /// The cumulative share of the target the current phase reaches, in percent.
    pub fn phase_percent(&self, spec: &RolloutSpec) -> f64 {
        match &spec.strategy {
            Strategy::Phases(phases) => phases.get(self.phase).map_or(100.0, |p| p.percent),
            Strategy::Rate(_) => 100.0,
        }
    }

    /// The devices the current phase covers by its end.
    pub fn phase_quota(&self, spec: &RolloutSpec) -> u64 {
        match &spec.strategy {
            Strategy::Phases(phases) => phase_quota(
                self.counts.target,
                phases.get(self.phase).map_or(100.0, |p| p.percent),
            ),
            Strategy::Rate(rate) if self.phase == 0 && rate.canary_devices > 0 => {
                u64::from(rate.canary_devices).min(self.counts.target)
            }
            Strategy::Rate(_) => self.counts.target,
        }
    }

    fn is_last_phase(&self, spec: &RolloutSpec) -> bool {
        self.phase + 1 >= spec.n_phases()
    }

    fn phase_soak(&self, spec: &RolloutSpec) -> Duration {
        match &spec.strategy {
            Strategy::Phases(phases) => phases
                .get(self.phase)
                .map_or(Duration::from_millis(0), |p| p.soak),
            Strategy::Rate(rate) => rate.canary_soak,
        }
    }

    fn needs_approval(&self, spec: &RolloutSpec) -> bool {
        match &spec.strategy {
            Strategy::Phases(phases) => phases.get(self.phase).is_some_and(|p| p.approval),
            Strategy::Rate(_) => false,
        }
    }

    fn apply(
        &mut self,
        spec: &RolloutSpec,
        now: Timestamp,
        event: Event,
        actions: &mut Vec<Action>,
    ) {
        let counts = &mut self.counts;
        match event {
            Event::TargetSize(total) => counts.target = total,
            Event::Assigned {
                new,
                retried,
                skipped,
                queue_empty,
            } => {
                counts.assigned += new + skipped;
                counts.skipped += skipped;
                counts.in_flight += new + retried;
                counts.retry_waiting = counts.retry_waiting.saturating_sub(retried);
                self.queue_empty = queue_empty;
                if matches!(spec.strategy, Strategy::Rate(_)) && self.phase > 0 {
                    self.rate.tokens = (self.rate.tokens - (new + retried) as f64).max(0.0);
                }
            }
            Event::Outcome {
                device,
                outcome,
                attempt,
            } => {
                counts.in_flight = counts.in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Succeeded => {
                        counts.succeeded += 1;
                        self.rate.successes_since_raise += 1;
                        self.failures.observe(0, 1);
                    }
                    Outcome::RolledBack => {
                        counts.rolled_back += 1;
                        self.failures.observe(1, 0);
                    }
                    Outcome::Rejected => counts.rejected += 1,
                    Outcome::Canceled => counts.canceled += 1,
                    Outcome::Failed | Outcome::TimedOut => {
                        if attempt < spec.policy.max_attempts && !self.status.is_final() {
                            counts.retry_waiting += 1;
                            let backoff = spec
                                .policy
                                .retry_backoff
                                .as_millis()
                                .saturating_mul(1i64 << (attempt.saturating_sub(1)).min(16));
                            actions.push(Action::Retry {
                                device,
                                attempt: attempt + 1,
                                at: now.saturating_add(Duration::from_millis(backoff)),
                            });
                        } else if outcome == Outcome::Failed {
                            counts.failed += 1;
                        } else {
                            counts.timed_out += 1;
                        }
                    }
                }
            }
            Event::Reverted { ok } => {
                if ok {
                    counts.reverted += 1;
                } else {
                    counts.revert_failed += 1;
                }
            }
            Event::Crashes {
                canary_events,
                canary_hours,
                baseline_events,
                baseline_hours,
            } => {
                self.crashes
                    .observe(canary_events, canary_hours, baseline_events, baseline_hours);
            }
            Event::Command { actor, command } => self.command(spec, now, actor, command, actions),
            Event::CanaryData(data) => {
                self.analyzing = false;
                if self.status != Status::Running {
                    return;
                }
                let report =
                    canary::judge(spec, self.phase, now, &data, &self.crashes, &self.failures);
                let evidence = serde_json::to_value(&report).ok();
                let verdict = report.verdict;
                let summary = report.summary();
                self.reports.push(report);
                match verdict {
                    Verdict::Pass => {
                        actions.push(Action::Record(self.decision(
                            "gate",
                            "orchestrator",
                            format!("phase {} passed its gate: {summary}", self.phase + 1),
                            evidence,
                            false,
                        )));
                        self.next_phase();
                    }
                    Verdict::Marginal if !self.extended => {
                        self.extended = true;
                        self.soak_started_at = Some(now);
                        actions.push(Action::Record(self.decision("gate", "orchestrator", format!("phase {} is marginal ({summary}); soaking once more before judging again", self.phase + 1), evidence, false)));
                    }
                    Verdict::Marginal => {
                        actions.push(Action::Record(self.decision("gate", "orchestrator", format!("phase {} is marginal again ({summary}); continuing, with a warning", self.phase + 1), evidence, true)));
                        self.next_phase();
                    }
                    Verdict::Fail => {
                        self.fail(
                            spec,
                            format!("phase {} failed its canary gate: {summary}", self.phase + 1),
                            evidence,
                            actions,
                        );
                    }
                }
            }
        }
    }

    fn command(
        &mut self,
        spec: &RolloutSpec,
        now: Timestamp,
        actor: String,
        command: Command,
        actions: &mut Vec<Action>,
    ) {
        match command {
            Command::Pause { reason } if self.status == Status::Running => {
                self.status = Status::Paused;
                self.reason = Some(format!("paused by {actor}: {reason}"));
                actions.push(Action::Record(
                    self.decision("paused", &actor, reason, None, true),
                ));
            }
            Command::Resume if self.status == Status::Paused => {
                self.status = Status::Running;
                self.reason = None;
                // The operator overrides whatever paused the rollout: evidence starts afresh.
                let canary = &spec.gates.canary;
                if self.crashes.rejects(sequential_alpha(spec)) {
                    self.crashes =
                        RateSprt::new(canary.crash_ratio).unwrap_or_else(|_| self.crashes.clone());
                }
                if self.failures.rejects(sequential_alpha(spec)) {
                    self.failures = BernoulliSprt::new(
                        canary.acceptable_failure_pct / 100.0,
                        canary.bad_failure_pct / 100.0,
                    )
                    .unwrap_or_else(|_| self.failures.clone());
                }
                self.soak_started_at = self.soak_started_at.map(|_| now);
                actions.push(Action::Record(self.decision(
                    "resumed",
                    &actor,
                    "resumed".into(),
                    None,
                    true,
                )));
            }
            Command::Approve if !self.status.is_final() => {
                self.approved_phase = Some(self.phase);
                actions.push(Action::Record(self.decision(
                    "approved",
                    &actor,
                    format!("phase {} approved", self.phase + 1),
                    None,
                    false,
                )));
            }
            Command::Abort { reason } if !self.status.is_final() => {
                self.status = Status::Aborted;
                self.reason = Some(format!("aborted by {actor}: {reason}"));
                actions.push(Action::CancelUnfinished);
                actions.push(Action::Record(
                    self.decision("aborted", &actor, reason, None, true),
                ));
            }
            Command::Rollback { reason } if !self.status.is_final() => {
                self.status = Status::RolledBack;
                self.reason = Some(format!("rolled back by {actor}: {reason}"));
                actions.push(Action::RollBack);
                actions.push(Action::Record(self.decision(
                    "rolled_back",
                    &actor,
                    reason,
                    None,
                    true,
                )));
            }
            // Commands that do not apply in the current status are refused before they get here
            // (see `Machine::check_command`); ignore any that slip through.
            _ => {}
        }
    }

    /// Whether `command` applies now; the error says why not, for the operator.
    pub fn check_command(&self, spec: &RolloutSpec, command: &Command) -> Result<(), String> {
        let status = self.status.as_str();
        match command {
            Command::Pause { .. } if self.status != Status::Running => Err(format!(
                "the rollout is {status}; only a running rollout can be paused"
            )),
            Command::Resume if self.status != Status::Paused => Err(format!(
                "the rollout is {status}; only a paused rollout can be resumed"
            )),
            Command::Approve if self.status.is_final() => Err(format!("the rollout is {status}")),
            Command::Approve if !(self.needs_approval(spec) && self.phase_started_at.is_none()) => {
                Err(format!(
                    "phase {} does not wait for approval",
                    self.phase + 1
                ))
            }
            Command::Abort { .. } | Command::Rollback { .. } if self.status.is_final() => {
                Err(format!("the rollout is already {status}"))
            }
            _ => Ok(()),
        }
    }

    fn advance(
        &mut self,
        spec: &RolloutSpec,
        now: Timestamp,
        may_dispatch: bool,
        actions: &mut Vec<Action>,
    ) {
        if self.status == Status::Completed && spec.dynamic {
            // Late joiners of a dynamic target still get the release, without gates.
            let room = self.parallel_room(spec);
            let new = self
                .counts
                .target
                .saturating_sub(self.counts.assigned)
                .min(room);
            if !may_dispatch {
            } else if new > 0 && !self.queue_empty {
                actions.push(Action::Dispatch {
                    new,
                    retries: self.counts.retry_waiting.min(room),
                });
            } else if self.counts.retry_waiting > 0 && room > 0 {
                actions.push(Action::Dispatch {
                    new: 0,
                    retries: self.counts.retry_waiting.min(room),
                });
            }
            return;
        }
        if self.status != Status::Running {
            return;
        }
        if let Some((reason, evidence)) = self.continuous_gates(spec) {
            self.fail(spec, reason, Some(evidence), actions);
            return;
        }
        if self.phase_started_at.is_none() {
            if self.needs_approval(spec) && self.approved_phase != Some(self.phase) {
                if !self.announced_wait {
                    self.announced_wait = true;
                    actions.push(Action::Record(self.decision(
                        "waiting_approval",
                        "orchestrator",
                        format!(
                            "phase {} ({}%) waits for an operator's approval",
                            self.phase + 1,
                            self.phase_percent(spec)
                        ),
                        None,
                        true,
                    )));
                }
                return;
            }
            self.phase_started_at = Some(now);
            self.queue_empty = false;
            let message = format!(
                "phase {} of {} started: up to {} of {} devices",
                self.phase + 1,
                spec.n_phases(),
                self.phase_quota(spec),
                self.counts.target
            );
            actions.push(Action::Record(self.decision(
                if self.phase == 0 {
                    "started"
                } else {
                    "phase_started"
                },
                "orchestrator",
                message,
                None,
                false,
            )));
        }
        let quota = self.phase_quota(spec);
        let mut room = self.parallel_room(spec);
        if let Some(window) = &spec.window {
            if !window.is_open(now) {
                // Devices already updating finish; nobody new starts until the window opens.
                room = 0;
            }
        }
        let mut new = if self.queue_empty {
            0
        } else {
            quota.saturating_sub(self.counts.assigned).min(room)
        };
        if let Strategy::Rate(rate) = &spec.strategy {
            if self.phase == spec.n_phases() - 1 {
                self.refill(rate, now);
                new = new.min(self.rate.tokens.floor() as u64);
            }
        }
        if !may_dispatch {
            new = 0;
        }
        let retries = self.counts.retry_waiting.min(room.saturating_sub(new));
        if may_dispatch && (new > 0 || retries > 0) {
            actions.push(Action::Dispatch { new, retries });
        }
        let all_offered =
            (self.counts.assigned >= quota || self.queue_empty) && new == 0 && may_dispatch;
        let everyone_done = self.counts.in_flight == 0 && self.counts.retry_waiting == 0;
        // Before the last phase, enough finished devices start the soak; the last phase completes
        // only when every device finished.
        let enough_done = {
            let needed =
                ((self.counts.assigned as f64) * spec.advance_at_pct / 100.0).ceil() as u64;
            self.counts.finished() >= needed
        };
        let settled = all_offered && (everyone_done || (!self.is_last_phase(spec) && enough_done));
        if !settled {
            return;
        }
        if self.is_last_phase(spec) {
            self.status = Status::Completed;
            let c = &self.counts;
            let message = format!(
                "completed: {} succeeded, {} failed, {} rolled back, {} timed out, {} rejected, {} skipped of {}",
                c.succeeded, c.failed, c.rolled_back, c.timed_out, c.rejected, c.skipped, c.target
            );
            actions.push(Action::Record(self.decision(
                "completed",
                "orchestrator",
                message,
                None,
                true,
            )));
            return;
        }
        let soak_started = match self.soak_started_at {
            Some(at) => at,
            None => {
                self.soak_started_at = Some(now);
                let until = now.saturating_add(self.phase_soak(spec));
                actions.push(Action::Record(self.decision(
                    "soaking",
                    "orchestrator",
                    format!("phase {} dispatched; soaking until {until}", self.phase + 1),
                    None,
                    false,
                )));
                now
            }
        };
        if now.as_millis()
            < soak_started
                .saturating_add(self.phase_soak(spec))
                .as_millis()
        {
            return;
        }
        if spec.gates.canary.enabled {
            if !self.analyzing {
                self.analyzing = true;
                actions.push(Action::Analyze {
                    phase: self.phase,
                    since: self.phase_started_at.unwrap_or(now),
                });
            }
        } else {
            actions.push(Action::Record(self.decision(
                "gate",
                "orchestrator",
                format!("phase {} soaked; thresholds held", self.phase + 1),
                None,
                false,
            )));
            self.next_phase();
            self.advance(spec, now, may_dispatch, actions);
        }
    }

    /// Thresholds and the sequential tests, checked at every step.
    fn continuous_gates(&self, spec: &RolloutSpec) -> Option<(String, serde_json::Value)> {
        let c = &self.counts;
        let t = &spec.gates.thresholds;
        let judged = c.succeeded + c.failed + c.rolled_back + c.timed_out;
        if judged >= u64::from(t.min_finished) && judged > 0 {
            let pct = |n: u64| 100.0 * n as f64 / judged as f64;
            for (name, n, limit) in [
                ("failure", c.failed, t.max_failure_pct),
                ("rollback", c.rolled_back, t.max_rollback_pct),
                ("timeout", c.timed_out, t.max_timeout_pct),
            ] {
                if pct(n) > limit {
                    return Some((
                        format!("{name} rate {:.1}% ({n} of {judged} finished devices) is above the {limit}% threshold", pct(n)),
                        serde_json::json!({"threshold": name, "count": n, "finished": judged, "pct": pct(n), "limit_pct": limit}),
                    ));
                }
            }
        }
        if !spec.gates.canary.enabled {
            return None;
        }
        let alpha = sequential_alpha(spec);
        if self.failures.rejects(alpha) {
            let (f, s) = (self.failures.failures(), self.failures.successes());
            return Some((
                format!(
                    "{f} of {} updated devices failed to boot or rolled back, significantly above the acceptable {}% (sequential test, false-alarm rate {alpha})",
                    f + s, spec.gates.canary.acceptable_failure_pct
                ),
                serde_json::json!({"test": "bernoulli_sprt", "failures": f, "successes": s, "log_likelihood_ratio": self.failures.log_likelihood_ratio(), "alpha": alpha}),
            ));
        }
        if self.crashes.rejects(alpha) {
            let ratio = self.crashes.rate_ratio();
            return Some((
                format!(
                    "the crash rate on the release is {} the baseline's ({} crashes in {:.1} device-hours vs {} in {:.1}; sequential test, false-alarm rate {alpha})",
                    ratio.map_or("above".to_owned(), |r| format!("{r:.1}×")),
                    self.crashes.canary_events(), self.crashes.canary_exposure(),
                    self.crashes.baseline_events(), self.crashes.baseline_exposure()
                ),
                serde_json::json!({"test": "rate_sprt", "canary_crashes": self.crashes.canary_events(), "canary_hours": self.crashes.canary_exposure(),
                    "baseline_crashes": self.crashes.baseline_events(), "baseline_hours": self.crashes.baseline_exposure(),
                    "rate_ratio": ratio, "log_likelihood_ratio": self.crashes.log_likelihood_ratio(), "alpha": alpha}),
            ));
        }
        None
    }

    fn fail(
        &mut self,
        spec: &RolloutSpec,
        reason: String,
        evidence: Option<serde_json::Value>,
        actions: &mut Vec<Action>,
    ) {
        match spec.on_failure {
            FailureAction::Pause => {
                self.status = Status::Paused;
                self.reason = Some(reason.clone());
                actions.push(Action::Record(self.decision(
                    "paused",
                    "orchestrator",
                    reason,
                    evidence,
                    true,
                )));
            }
            FailureAction::Rollback => {
                self.status = Status::RolledBack;
                self.reason = Some(reason.clone());
                actions.push(Action::RollBack);
                actions.push(Action::Record(self.decision(
                    "rolled_back",
                    "orchestrator",
                    reason,
                    evidence,
                    true,
                )));
            }
        }
    }

    fn next_phase(&mut self) {
        self.phase += 1;
        self.phase_started_at = None;
        self.soak_started_at = None;
        self.extended = false;
        self.announced_wait = false;
        self.queue_empty = false;
    }

    fn parallel_room(&self, spec: &RolloutSpec) -> u64 {
        if spec.max_parallel == 0 {
            u64::MAX
        } else {
            u64::from(spec.max_parallel).saturating_sub(self.counts.in_flight)
        }
    }

    fn refill(&mut self, rate: &crate::rollout::spec::RateStrategy, now: Timestamp) {
        let state = &mut self.rate;
        while state.successes_since_raise >= u64::from(rate.raise_after) {
            state.successes_since_raise -= u64::from(rate.raise_after);
            state.per_minute =
                (state.per_minute * rate.increment_factor).min(f64::from(rate.max_per_minute));
        }
        let elapsed_min = state.refilled_at.map_or(1.0, |at| {
            (now.as_millis() - at.as_millis()).max(0) as f64 / 60_000.0
        });
        state.tokens =
            (state.tokens + elapsed_min * state.per_minute).min(state.per_minute.max(1.0));
        state.refilled_at = Some(now);
    }

    fn decision(
        &self,
        kind: &str,
        actor: &str,
        message: String,
        evidence: Option<serde_json::Value>,
        alert: bool,
    ) -> Decision {
        Decision {
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            phase: self.phase,
            message,
            evidence,
            alert,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::canary::MetricSamples;
    use crate::rollout::spec::{Phase, RateStrategy};

    const MIN: i64 = 60_000;

    /// A fleet that answers the machine's actions: every dispatched device finishes one tick later
    /// with `outcome(device_index)`; canary data comes from `battery(on_release)` per device.
    struct World {
        spec: RolloutSpec,
        machine: Machine,
        now: Timestamp,
        next_device: i64,
        updating: Vec<(i64, u32)>,
        retries: Vec<(i64, u32, Timestamp)>,
        outcome: fn(i64, u32) -> Outcome,
        battery_on_release: f64,
        log: Vec<Decision>,
        rolled_back: bool,
        max_in_flight: u64,
    }

    impl World {
        fn new(spec: RolloutSpec, target: u64, outcome: fn(i64, u32) -> Outcome) -> World {
            spec.validate().unwrap();
            World {
                machine: Machine::new(&spec, target),
                spec,
                now: Timestamp::from_millis(1_000_000_000),
                next_device: 0,
                updating: Vec::new(),
                retries: Vec::new(),
                outcome,
                battery_on_release: 100.0,
                log: Vec::new(),
                rolled_back: false,
                max_in_flight: 0,
            }
        }

        /// One tick: finish last tick's updates, step, carry out the actions.
        fn tick(&mut self, mut events: Vec<Event>) {
            for (device, attempt) in std::mem::take(&mut self.updating) {
                events.push(Event::Outcome {
                    device,
                    outcome: (self.outcome)(device, attempt),
                    attempt,
                });
            }
            let mut pending = events;
            loop {
                let actions = self
                    .machine
                    .step(&self.spec, self.now, std::mem::take(&mut pending));
                for action in actions {
                    match action {
                        Action::Dispatch { new, retries } => {
                            let remaining = self.machine.counts.target as i64 - self.next_device;
                            let n = (new as i64).min(remaining).max(0);
                            for _ in 0..n {
                                self.updating.push((self.next_device, 1));
                                self.next_device += 1;
                            }
                            let mut retried = 0;
                            let now = self.now;
                            let (due, later): (Vec<_>, Vec<_>) =
                                self.retries.drain(..).partition(|r| r.2 <= now);
                            self.retries = later;
                            for (device, attempt, at) in due {
                                if retried < retries {
                                    self.updating.push((device, attempt));
                                    retried += 1;
                                } else {
                                    self.retries.push((device, attempt, at));
                                }
                            }
                            pending.push(Event::Assigned {
                                new: n as u64,
                                retried,
                                skipped: 0,
                                queue_empty: n < new as i64,
                            });
                        }
                        Action::Retry {
                            device,
                            attempt,
                            at,
                        } => self.retries.push((device, attempt, at)),
                        Action::Analyze { .. } => {
                            let on_release = self.machine.counts.succeeded as usize;
                            let noise = |i: usize| 100.0 + ((i * 7919) % 13) as f64;
                            pending.push(Event::CanaryData(CanaryData {
                                metrics: vec![MetricSamples {
                                    metric: "battery_ma".into(),
                                    canary: (0..on_release)
                                        .map(|i| noise(i) * self.battery_on_release / 100.0)
                                        .collect(),
                                    baseline: (0..200).map(|i| noise(i + 3)).collect(),
                                }],
                                canary_devices: on_release as u64,
                                baseline_devices: 200,
                                canary_offline: 0,
                                baseline_offline: 4,
                            }));
                        }
                        Action::RollBack => self.rolled_back = true,
                        Action::CancelUnfinished => self.updating.clear(),
                        Action::Record(decision) => self.log.push(decision),
                    }
                }
                self.max_in_flight = self.max_in_flight.max(self.machine.counts.in_flight);
                if pending.is_empty() {
                    break;
                }
            }
            // Whatever is stored must come back identical: a restart resumes exactly here.
            let stored = serde_json::to_string(&self.machine).unwrap();
            assert_eq!(
                serde_json::from_str::<Machine>(&stored).unwrap(),
                self.machine
            );
            self.now = self.now.saturating_add(Duration::from_millis(MIN));
        }

        fn run(&mut self, ticks: usize) {
            for _ in 0..ticks {
                self.tick(Vec::new());
            }
        }

        fn kinds(&self) -> Vec<&str> {
            self.log.iter().map(|d| d.kind.as_str()).collect()
        }
    }

    fn phased(percents: &[f64], soak_min: i64) -> RolloutSpec {
        RolloutSpec {
            strategy: Strategy::Phases(
                percents
                    .iter()
                    .map(|&percent| Phase {
                        percent,
                        soak: Duration::from_millis(soak_min * MIN),
                        approval: false,
                    })
                    .collect(),
            ),
            ..RolloutSpec::default()
        }
    }

    #[test]
    fn a_good_release_passes_every_gate_and_completes() {
        let mut world = World::new(phased(&[1.0, 5.0, 25.0, 100.0], 10), 10_000, |_, _| {
            Outcome::Succeeded
        });
        world.run(60);
        assert_eq!(world.machine.status, Status::Completed, "{:?}", world.log);
        assert_eq!(world.machine.counts.succeeded, 10_000);
        assert_eq!(world.machine.reports.len(), 3);
        assert!(world
            .machine
            .reports
            .iter()
            .all(|r| r.verdict == Verdict::Pass));
        assert_eq!(world.kinds().iter().filter(|k| **k == "gate").count(), 3);
        assert_eq!(*world.kinds().last().unwrap(), "completed");
    }

    #[test]
    fn rollout_pauses_at_the_canary_when_battery_current_rises_twentyfold() {
        let mut world = World::new(phased(&[1.0, 5.0, 25.0, 100.0], 10), 10_000, |_, _| {
            Outcome::Succeeded
        });
        world.battery_on_release = 2000.0;
        world.run(30);
        assert_eq!(world.machine.status, Status::Paused);
        assert_eq!(world.machine.phase, 0);
        assert_eq!(
            world.machine.counts.assigned, 100,
            "only the 1% canary got it"
        );
        let report = world.machine.reports.last().unwrap();
        assert_eq!(report.verdict, Verdict::Fail);
        let battery = report
            .metrics
            .iter()
            .find(|m| m.metric == "battery_ma")
            .unwrap();
        assert_eq!(battery.verdict, Verdict::Fail);
        assert!(battery.effect.unwrap() > 10.0);
        let paused = world.log.last().unwrap();
        assert_eq!(paused.kind, "paused");
        assert!(paused.alert && paused.evidence.is_some());
        assert!(
            paused.message.contains("battery_ma fail"),
            "{}",
            paused.message
        );
    }

    #[test]
    fn a_failed_gate_rolls_back_when_the_policy_says_so() {
        let mut spec = phased(&[1.0, 100.0], 10);
        spec.on_failure = FailureAction::Rollback;
        let mut world = World::new(spec, 1000, |_, _| Outcome::Succeeded);
        world.battery_on_release = 2000.0;
        world.run(20);
        assert_eq!(world.machine.status, Status::RolledBack);
        assert!(world.rolled_back);
        // Nothing more is dispatched after a rollback.
        let assigned = world.machine.counts.assigned;
        world.run(10);
        assert_eq!(world.machine.counts.assigned, assigned);
    }

    #[test]
    fn boot_failures_stop_the_rollout_by_the_sequential_test() {
        // Every 10th device fails to boot (10%).
        let mut world = World::new(phased(&[1.0, 5.0, 25.0, 100.0], 10), 10_000, |d, _| {
            if d % 10 == 3 {
                Outcome::RolledBack
            } else {
                Outcome::Succeeded
            }
        });
        world.spec.gates.thresholds.max_rollback_pct = 100.0;
        world.run(60);
        assert_eq!(world.machine.status, Status::Paused, "{:?}", world.kinds());
        assert!(world
            .machine
            .reason
            .as_deref()
            .unwrap()
            .contains("failed to boot or rolled back"));
        assert!(world.machine.counts.assigned <= 500);
    }

    #[test]
    fn thresholds_pause_once_enough_devices_finished() {
        let mut world = World::new(phased(&[100.0], 0), 100, |d, _| {
            if d % 4 == 0 {
                Outcome::Rejected
            } else if d % 4 == 1 {
                Outcome::Failed
            } else {
                Outcome::Succeeded
            }
        });
        world.spec.policy.max_attempts = 1;
        world.spec.gates.canary.enabled = false;
        world.spec.gates.thresholds.min_finished = 10;
        world.run(5);
        assert_eq!(world.machine.status, Status::Paused);
        assert!(
            world
                .machine
                .reason
                .as_deref()
                .unwrap()
                .contains("failure rate"),
            "{:?}",
            world.machine.reason
        );
    }

    #[test]
    fn failed_attempts_are_retried_with_backoff_but_refusals_never() {
        let mut spec = phased(&[100.0], 0);
        spec.gates.canary.enabled = false;
        spec.gates.thresholds.max_failure_pct = 100.0;
        spec.policy.retry_backoff = Duration::from_millis(2 * MIN);
        // Device 0 fails its first two attempts; device 1 always refuses.
        let mut world = World::new(spec, 3, |d, attempt| match (d, attempt) {
            (0, 1) | (0, 2) => Outcome::Failed,
            (1, _) => Outcome::Rejected,
            _ => Outcome::Succeeded,
        });
        world.run(3);
        assert_eq!(world.machine.counts.retry_waiting, 1);
        assert_eq!(world.machine.status, Status::Running);
        world.run(10);
        assert_eq!(
            world.machine.status,
            Status::Completed,
            "{:?}",
            world.kinds()
        );
        let c = &world.machine.counts;
        assert_eq!((c.succeeded, c.rejected, c.failed), (2, 1, 0));
    }

    #[test]
    fn max_parallel_bounds_devices_updating_at_once() {
        let mut spec = phased(&[100.0], 0);
        spec.max_parallel = 7;
        let mut world = World::new(spec, 100, |_, _| Outcome::Succeeded);
        world.run(20);
        assert_eq!(world.machine.status, Status::Completed);
        assert_eq!(world.max_in_flight, 7);
    }

    #[test]
    fn a_phase_waits_for_approval_and_commands_are_checked() {
        let mut spec = phased(&[10.0, 100.0], 5);
        if let Strategy::Phases(phases) = &mut spec.strategy {
            phases[1].approval = true;
        }
        let mut world = World::new(spec, 100, |_, _| Outcome::Succeeded);
        assert!(world
            .machine
            .check_command(&world.spec, &Command::Approve)
            .is_err());
        world.run(15);
        assert_eq!(world.machine.counts.assigned, 10);
        assert_eq!(world.kinds().last(), Some(&"waiting_approval"));
        assert!(world
            .machine
            .check_command(&world.spec, &Command::Resume)
            .unwrap_err()
            .contains("only a paused rollout"));
        world
            .machine
            .check_command(&world.spec, &Command::Approve)
            .unwrap();
        world.tick(vec![Event::Command {
            actor: "ops".into(),
            command: Command::Approve,
        }]);
        world.run(5);
        assert_eq!(world.machine.status, Status::Completed);
    }

    #[test]
    fn pause_resume_and_abort_follow_operator_commands() {
        let mut world = World::new(phased(&[50.0, 100.0], 5), 100, |_, _| Outcome::Succeeded);
        world.tick(vec![]);
        world.tick(vec![Event::Command {
            actor: "ops".into(),
            command: Command::Pause {
                reason: "checking logs".into(),
            },
        }]);
        let assigned = world.machine.counts.assigned;
        world.run(10);
        assert_eq!(world.machine.status, Status::Paused);
        assert_eq!(world.machine.counts.assigned, assigned);
        world.tick(vec![Event::Command {
            actor: "ops".into(),
            command: Command::Resume,
        }]);
        world.tick(vec![Event::Command {
            actor: "ops".into(),
            command: Command::Abort {
                reason: "wrong build".into(),
            },
        }]);
        assert_eq!(world.machine.status, Status::Aborted);
        assert!(world
            .machine
            .check_command(&world.spec, &Command::Resume)
            .is_err());
        let kinds: Vec<&str> = world
            .kinds()
            .into_iter()
            .filter(|k| ["paused", "resumed", "aborted"].contains(k))
            .collect();
        assert_eq!(kinds, ["paused", "resumed", "aborted"]);
    }

    #[test]
    fn a_rate_rollout_raises_its_rate_as_devices_succeed() {
        let spec = RolloutSpec {
            strategy: Strategy::Rate(RateStrategy {
                base_per_minute: 10,
                increment_factor: 2.0,
                raise_after: 20,
                max_per_minute: 5000,
                canary_devices: 0,
                canary_soak: Duration::from_millis(0),
            }),
            ..RolloutSpec::default()
        };
        let mut world = World::new(spec, 20_000, |_, _| Outcome::Succeeded);
        let mut per_tick = Vec::new();
        for _ in 0..15 {
            let before = world.machine.counts.assigned;
            world.tick(vec![]);
            per_tick.push(world.machine.counts.assigned - before);
        }
        assert_eq!(per_tick[0], 10);
        let ramp: Vec<u64> = per_tick
            .iter()
            .copied()
            .take_while(|&n| n == 5000 || n < 5000 && per_tick.iter().all(|_| true))
            .collect();
        let peak = per_tick
            .iter()
            .position(|&n| n == 5000)
            .expect("the rate reaches its maximum");
        assert!(
            ramp[..=peak].windows(2).all(|w| w[1] >= w[0]),
            "{per_tick:?}"
        );
        assert!(per_tick[..peak].iter().all(|&n| n < 5000), "{per_tick:?}");
        world.run(10);
        assert_eq!(world.machine.status, Status::Completed);
    }

    #[test]
    fn devices_start_updating_only_inside_the_maintenance_window() {
        let mut spec = phased(&[100.0], 0);
        // Every hour from minute 0 to 9 (UTC); the world starts at 1e9 ms = 13:46:40Z.
        spec.window = Some(
            crate::rollout::window::MaintenanceWindow::parse(
                "0 * * * *",
                Duration::from_millis(10 * MIN),
                "UTC",
            )
            .unwrap(),
        );
        spec.max_parallel = 1;
        let mut world = World::new(spec, 100, |_, _| Outcome::Succeeded);
        world.run(10);
        assert_eq!(world.machine.counts.assigned, 0);
        world.run(20);
        // 14:00 to 14:09 open: one device per tick for ten ticks.
        assert_eq!(world.machine.counts.assigned, 10);
    }

    #[test]
    fn one_silent_device_does_not_hold_up_a_phase() {
        // Device 3 never answers (each attempt times out); with 95% finished the phase moves on.
        let mut spec = phased(&[50.0, 100.0], 2);
        spec.gates.canary.enabled = false;
        spec.gates.thresholds.max_timeout_pct = 100.0;
        spec.policy.retry_backoff = Duration::from_millis(60 * MIN);
        let mut world = World::new(spec, 40, |d, _| {
            if d == 3 {
                Outcome::TimedOut
            } else {
                Outcome::Succeeded
            }
        });
        world.run(8);
        assert_eq!(world.machine.phase, 1, "{:?}", world.kinds());
        assert!(world.machine.counts.retry_waiting == 1);
    }

    #[test]
    fn devices_joining_a_dynamic_target_late_still_get_the_release() {
        let mut world = World::new(phased(&[100.0], 0), 10, |_, _| Outcome::Succeeded);
        world.run(3);
        assert_eq!(world.machine.status, Status::Completed);
        world.tick(vec![Event::TargetSize(15)]);
        world.run(2);
        assert_eq!(world.machine.counts.succeeded, 15);
    }
}
