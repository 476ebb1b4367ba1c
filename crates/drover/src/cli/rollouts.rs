//! `drover rollouts …`: staged rollouts of a release to a group, a fleet query or a list of
//! devices.
//!
//! `create` writes each flag given over the definition read with `--spec` (if any) and sends the
//! result as JSON; the server validates it, and its messages name the offending field. `show`
//! reads a rollout's phase progress, device counts, gate evidence and latest decisions; the
//! operator commands (pause, resume, approve, abort, rollback) print the status that results.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use drover_core::health::MetricName;
use drover_core::rollout::canary::{CanaryReport, MetricEvidence};
use drover_core::rollout::machine::Counts;
use drover_core::rollout::spec::{FailureAction, RolloutSpec, Strategy};
use drover_core::rollout::stats::Direction;
use drover_core::rollout::window::MaintenanceWindow;
use drover_core::{ArtifactName, Duration, Timestamp, Version};
use drover_proto::rollouts::{
    RolloutCommandRequest, RolloutDecisionView, RolloutDeviceView, RolloutId, RolloutView,
};
use drover_proto::update::UpdateType;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::cli::artifacts::UpdateTypeArg;
use crate::cli::client::{decode, param, Client, Params};
use crate::cli::output::{self, emit, fields, or_dash, print_json, Table};
use crate::cli::paging::{print_list, Paging};
use crate::cli::target::TargetArgs;
use crate::cli::{wire_name, CliError};

/// Decisions `show` prints; `drover rollouts decisions` prints them all.
const SHOWN_DECISIONS: usize = 10;

/// Width of the progress bar in `show`, in characters.
const BAR_WIDTH: usize = 30;

/// `drover rollouts` subcommands.
#[derive(Debug, Subcommand)]
pub enum RolloutsCommand {
    /// Start a staged rollout of a release to a group, a fleet query or a list of devices.
    ///
    /// Without strategy flags the rollout goes to 1%, 2%, 5%, 25% and 100% of the target, each
    /// phase judged by the canary gate after its soak (3 hours at 2%, so the crash test gathers
    /// enough device-hours; 30 minutes otherwise). The server checks the definition and
    /// says precisely what is wrong with it.
    // `version` is an argument here, so `--version` cannot be the propagated version flag.
    #[command(disable_version_flag = true)]
    Create(Box<CreateArgs>),
    /// List rollouts, newest first.
    List {
        /// Only rollouts with this status.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Most rollouts to list, 1–1000 (server default 100).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Show a rollout: phase progress, device counts, gate evidence and the latest decisions.
    Show {
        /// Rollout id.
        #[arg(value_parser = parse_rollout_id)]
        id: RolloutId,
    },
    /// The whole decision log: every start, gate verdict, command and completion, oldest first.
    Decisions {
        /// Rollout id.
        #[arg(value_parser = parse_rollout_id)]
        id: RolloutId,
    },
    /// A rollout's devices in dispatch order, with their state.
    Devices {
        /// Rollout id.
        #[arg(value_parser = parse_rollout_id)]
        id: RolloutId,
        /// Only devices in this state: queued, updating, retry, succeeded, failed, rolled_back,
        /// timed_out, rejected, skipped, canceled, revert_queued, reverting, reverted or
        /// revert_failed.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Stop offering the release; devices already updating finish.
    Pause {
        /// Rollout id.
        #[arg(value_parser = parse_rollout_id)]
        id: RolloutId,
        /// Why, for the decision log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Resume a paused rollout; after a failed gate this overrides the gate.
    Resume {
        /// Rollout id.
        #[arg(value_parser = parse_rollout_id)]
        id: RolloutId,
    },
    /// Approve the phase that waits for approval.
    Approve {
        /// Rollout id.
        #[arg(value_parser = parse_rollout_id)]
        id: RolloutId,
    },
    /// Stop the rollout for good; unfinished device updates are canceled.
    Abort {
        /// Rollout id.
        #[arg(value_parser = parse_rollout_id)]
        id: RolloutId,
        /// Why, for the decision log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Stop the rollout and put the previous release back on every device that took this one.
    Rollback {
        /// Rollout id.
        #[arg(value_parser = parse_rollout_id)]
        id: RolloutId,
        /// Why, for the decision log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
}

/// `drover rollouts create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The artifact to roll out.
    #[arg(long)]
    pub artifact: ArtifactName,
    /// The artifact's version.
    #[arg(long)]
    pub version: Version,
    /// A name for people [default: ARTIFACT VERSION].
    #[arg(long)]
    pub name: Option<String>,
    /// A definition to start from: a JSON object with any of the fields strategy, max_parallel,
    /// policy, gates, on_failure, dynamic and window (see docs/rollouts.md); flags override it.
    #[arg(long, value_name = "FILE.json")]
    pub spec: Option<PathBuf>,

    #[command(flatten)]
    pub target: TargetArgs,

    /// Cumulative percentages of the target, one per phase; the last must be 100
    /// [default: 1,2,5,25,100, soaking 30m, 3h, 30m, 30m]. Replaces the phases of --spec.
    #[arg(
        long,
        value_name = "PERCENT,…",
        value_delimiter = ',',
        value_parser = parse_percent,
        help_heading = "Strategy"
    )]
    pub phases: Vec<f64>,
    /// How long each phase's devices run the release before its gate judges it, for every phase
    /// [default: 30m; the default phases soak 3h at 2%].
    #[arg(long, value_name = "DURATION", value_parser = Duration::parse, help_heading = "Strategy")]
    pub soak: Option<Duration>,
    /// Phases, numbered from 1, that wait for `drover rollouts approve` before they start.
    #[arg(
        long,
        value_name = "PHASE,…",
        value_delimiter = ',',
        value_parser = parse_phase_number,
        help_heading = "Strategy"
    )]
    pub approve_before: Vec<usize>,
    /// An exponential rate instead of phases: start at BASE devices per minute, multiply by
    /// FACTOR after every --raise-after successes, never above MAX.
    #[arg(
        long,
        value_name = "BASE:FACTOR:MAX",
        value_parser = parse_rate,
        conflicts_with_all = ["phases", "soak", "approve_before"],
        help_heading = "Strategy"
    )]
    pub rate: Option<Rate>,
    /// With --rate: successes needed before each raise [default: 10].
    #[arg(long, value_name = "N", conflicts_with_all = ["phases", "soak", "approve_before"], help_heading = "Strategy")]
    pub raise_after: Option<u32>,
    /// With --rate: devices updated first and judged by the canary gate before the rate starts.
    #[arg(long, value_name = "N", conflicts_with_all = ["phases", "soak", "approve_before"], help_heading = "Strategy")]
    pub canary_devices: Option<u32>,
    /// With --rate: how long the canary devices soak before the gate [default: 30m].
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = Duration::parse,
        conflicts_with_all = ["phases", "soak", "approve_before"],
        help_heading = "Strategy"
    )]
    pub canary_soak: Option<Duration>,
    /// Most devices updating at once (0 = no limit).
    #[arg(long, value_name = "N", help_heading = "Strategy")]
    pub max_parallel: Option<u32>,
    /// Devices that join the target later do not receive the release.
    #[arg(long = "static", help_heading = "Strategy")]
    pub static_target: bool,
    /// Start devices updating only inside this window: a cron expression for when it opens
    /// (minute hour day-of-month month day-of-week).
    #[arg(
        long,
        value_name = "EXPR",
        requires = "window_duration",
        help_heading = "Maintenance window"
    )]
    pub window_cron: Option<String>,
    /// How long the window stays open.
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = Duration::parse,
        requires = "window_cron",
        help_heading = "Maintenance window"
    )]
    pub window_duration: Option<Duration>,
    /// The IANA time zone the cron expression is read in [default: UTC].
    #[arg(
        long,
        value_name = "TZ",
        requires = "window_cron",
        help_heading = "Maintenance window"
    )]
    pub window_tz: Option<String>,

    /// How devices apply the update [default: forced].
    #[arg(long, value_enum, help_heading = "Devices")]
    pub update_type: Option<UpdateTypeArg>,
    /// Attempts per device, counting the first [default: 3].
    #[arg(long, value_name = "N", help_heading = "Devices")]
    pub max_attempts: Option<u32>,
    /// Wait before a device's first retry, doubled for each further one [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = Duration::parse, help_heading = "Devices")]
    pub retry_backoff: Option<Duration>,
    /// How long a device may stay silent in one step [default: 30m].
    #[arg(long, value_name = "DURATION", value_parser = Duration::parse, help_heading = "Devices")]
    pub step_timeout: Option<Duration>,
    /// How long one attempt may take in all [default: 4h].
    #[arg(long, value_name = "DURATION", value_parser = Duration::parse, help_heading = "Devices")]
    pub attempt_timeout: Option<Duration>,
    /// Skip devices running a version below this one.
    #[arg(long, value_name = "VERSION", help_heading = "Devices")]
    pub min_source_version: Option<Version>,
    /// A version devices must already have passed through (repeat for several).
    #[arg(
        long = "require-version",
        value_name = "VERSION",
        help_heading = "Devices"
    )]
    pub required_versions: Vec<Version>,
    /// Let devices running a newer version move to this older one.
    #[arg(long, help_heading = "Devices")]
    pub allow_downgrade: bool,

    /// What a failed gate does [default: pause].
    #[arg(long, value_enum, help_heading = "Gates")]
    pub on_failure: Option<OnFailureArg>,
    /// No canary analysis; only the absolute failure thresholds gate the phases.
    #[arg(long, conflicts_with_all = ["metrics", "alpha", "baseline_devices"], help_heading = "Gates")]
    pub no_canary: bool,
    /// A heartbeat metric the canary gate compares, the change that is bad, and the smallest
    /// relative change that counts (0.2 = 20%; default 0.1). Repeat for several; replaces the
    /// default list (battery_ma, mem_free_bytes, cpu_pct).
    #[arg(
        long = "metric",
        value_name = "NAME:increase|decrease|either[:MIN_EFFECT]",
        value_parser = parse_metric,
        help_heading = "Gates"
    )]
    pub metrics: Vec<MetricArg>,
    /// Chance that a release no worse than the old one fails a gate [default: 0.01].
    #[arg(long, value_name = "A", help_heading = "Gates")]
    pub alpha: Option<f64>,
    /// Devices held back on the old version as the canary baseline [default: 200].
    #[arg(long, value_name = "N", help_heading = "Gates")]
    pub baseline_devices: Option<u32>,
}

/// A rollout's status, for `list --status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum StatusArg {
    Running,
    Paused,
    Completed,
    Aborted,
    RolledBack,
}

/// What a failed gate does (clap's spelling of [`FailureAction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnFailureArg {
    /// Stop offering the release and wait for an operator.
    Pause,
    /// Stop, and put the previous release back on every device that took the new one.
    Rollback,
}

impl From<OnFailureArg> for FailureAction {
    fn from(arg: OnFailureArg) -> FailureAction {
        match arg {
            OnFailureArg::Pause => FailureAction::Pause,
            OnFailureArg::Rollback => FailureAction::Rollback,
        }
    }
}

/// `--rate BASE:FACTOR:MAX`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub base_per_minute: u32,
    pub increment_factor: f64,
    pub max_per_minute: u32,
}

/// `--metric NAME:DIRECTION[:MIN_EFFECT]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricArg {
    pub metric: MetricName,
    /// Which change is bad.
    pub bad: Direction,
    /// The server's default (0.1) when absent.
    pub min_effect: Option<f64>,
}

/// Runs a `drover rollouts` subcommand.
pub async fn run(client: &Client, json: bool, command: RolloutsCommand) -> Result<(), CliError> {
    match command {
        RolloutsCommand::Create(args) => create(client, json, *args).await,
        RolloutsCommand::List { status, limit } => {
            let mut params = Params::new();
            param(&mut params, "status", status.map(wire_name));
            param(&mut params, "limit", limit);
            let value = client.get(&["rollouts"], &params).await?;
            if json {
                return print_json(&value);
            }
            let views: Vec<RolloutView> = decode(value)?;
            if views.is_empty() {
                eprintln!("no rollouts");
                return Ok(());
            }
            emit(&rollout_table(&views, output::now()))
        }
        RolloutsCommand::Show { id } => {
            let id_text = id.to_string();
            let value = client.get(&["rollouts", &id_text], &Params::new()).await?;
            if json {
                return print_json(&value);
            }
            let view: RolloutView = decode(value)?;
            let decisions: Vec<RolloutDecisionView> = decode(
                client
                    .get(&["rollouts", &id_text, "decisions"], &Params::new())
                    .await?,
            )?;
            emit(&render_show(&view, Some(&decisions), output::now()))
        }
        RolloutsCommand::Decisions { id } => {
            let value = client
                .get(&["rollouts", &id.to_string(), "decisions"], &Params::new())
                .await?;
            if json {
                return print_json(&value);
            }
            let decisions: Vec<RolloutDecisionView> = decode(value)?;
            if decisions.is_empty() {
                eprintln!("no decisions");
                return Ok(());
            }
            emit(&decision_table(&decisions))
        }
        RolloutsCommand::Devices { id, state, paging } => {
            let mut params = Params::new();
            param(&mut params, "state", state);
            let id_text = id.to_string();
            print_list(
                client,
                &["rollouts", &id_text, "devices"],
                params,
                &paging,
                json,
                "devices",
                device_table,
            )
            .await
        }
        RolloutsCommand::Pause { id, reason } => {
            let body = RolloutCommandRequest { reason };
            operator_command(client, json, id, "pause", Some(body)).await
        }
        RolloutsCommand::Resume { id } => operator_command(client, json, id, "resume", None).await,
        RolloutsCommand::Approve { id } => {
            operator_command(client, json, id, "approve", None).await
        }
        RolloutsCommand::Abort { id, reason } => {
            let body = RolloutCommandRequest { reason };
            operator_command(client, json, id, "abort", Some(body)).await
        }
        RolloutsCommand::Rollback { id, reason } => {
            let body = RolloutCommandRequest { reason };
            operator_command(client, json, id, "rollback", Some(body)).await
        }
    }
}

/// The body of `POST /api/v1/rollouts`: `spec` (the `--spec` file's fields) with every flag given
/// written over it, the release and the target. Only what was asked for is sent; the server fills
/// in its defaults and validates the whole.
pub fn create_body(args: &CreateArgs, spec: Map<String, Value>) -> Result<Value, CliError> {
    let mut body = Value::Object(spec);
    apply_strategy(args, &mut body)?;
    if let Some(n) = args.max_parallel {
        set(&mut body, &["max_parallel"], json!(n));
    }
    if args.static_target {
        set(&mut body, &["dynamic"], json!(false));
    }
    if let (Some(cron), Some(duration)) = (&args.window_cron, args.window_duration) {
        // Checked here because the three flags make one value: the server's message would point
        // into a JSON body the operator never wrote.
        let time_zone = args.window_tz.as_deref().unwrap_or("UTC");
        let window = MaintenanceWindow::parse(cron, duration, time_zone)
            .map_err(|e| CliError::usage(format!("invalid maintenance window: {e}")))?;
        set(&mut body, &["window"], to_json(&window));
    }

    let policy: [(&str, Option<Value>); 6] = [
        ("max_attempts", args.max_attempts.map(|n| json!(n))),
        ("retry_backoff", args.retry_backoff.map(duration_json)),
        ("step_timeout", args.step_timeout.map(duration_json)),
        ("attempt_timeout", args.attempt_timeout.map(duration_json)),
        (
            "min_source_version",
            args.min_source_version
                .as_ref()
                .map(|v| json!(v.to_string())),
        ),
        (
            "required_versions",
            (!args.required_versions.is_empty())
                .then(|| Value::from_iter(args.required_versions.iter().map(|v| v.to_string()))),
        ),
    ];
    for (field, value) in policy {
        if let Some(value) = value {
            set(&mut body, &["policy", field], value);
        }
    }
    if args.allow_downgrade {
        set(&mut body, &["policy", "allow_downgrade"], json!(true));
    }

    if let Some(action) = args.on_failure {
        set(
            &mut body,
            &["on_failure"],
            to_json(&FailureAction::from(action)),
        );
    }
    if args.no_canary {
        set(&mut body, &["gates", "canary", "enabled"], json!(false));
    }
    if !args.metrics.is_empty() {
        let metrics = args.metrics.iter().map(MetricArg::to_json).collect();
        set(&mut body, &["gates", "canary", "metrics"], metrics);
    }
    if let Some(alpha) = args.alpha {
        set(&mut body, &["gates", "canary", "alpha"], json!(alpha));
    }
    if let Some(n) = args.baseline_devices {
        set(
            &mut body,
            &["gates", "canary", "baseline_devices"],
            json!(n),
        );
    }

    set(&mut body, &["target"], to_json(&args.target.target()));
    set(&mut body, &["artifact"], json!(args.artifact.as_str()));
    set(&mut body, &["version"], json!(args.version.to_string()));
    if let Some(name) = &args.name {
        set(&mut body, &["name"], json!(name));
    }
    if let Some(update_type) = args.update_type {
        set(
            &mut body,
            &["update_type"],
            to_json(&UpdateType::from(update_type)),
        );
    }
    Ok(body)
}

/// The rollout table: one row per rollout.
pub fn rollout_table(views: &[RolloutView], now: Timestamp) -> String {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "RELEASE",
        "STATUS",
        "PHASE",
        "SUCCEEDED/TARGET",
        "FAILED",
        "UPDATED",
    ]);
    for view in views {
        let counts = &view.counts;
        table.row(vec![
            view.id.to_string(),
            view.name.clone(),
            format!("{} {}", view.artifact, view.version),
            view.status.clone(),
            phase(view),
            format!("{}/{}", counts.succeeded, counts.target),
            (counts.failed + counts.rolled_back + counts.timed_out).to_string(),
            output::relative(view.updated_at, now),
        ]);
    }
    table.render()
}

/// `drover rollouts show`: the rollout, every gate's evidence, and the last decisions of
/// `decisions` when given.
pub fn render_show(
    view: &RolloutView,
    decisions: Option<&[RolloutDecisionView]>,
    now: Timestamp,
) -> String {
    let mut status = view.status.clone();
    if let Some(reason) = &view.reason {
        status.push_str(&format!(": {reason}"));
    }
    let mut pairs = vec![
        ("ID", view.id.to_string()),
        ("Name", view.name.clone()),
        (
            "Release",
            format!(
                "{} {} ({} update)",
                view.artifact,
                view.version,
                to_json(&view.update_type).as_str().unwrap_or("?")
            ),
        ),
        ("Target", view.target.describe()),
        ("Status", status),
    ];
    if let Some(waiting_for) = &view.waiting_for {
        pairs.push(("Waiting for", waiting_for.clone()));
    }
    pairs.extend([
        ("Strategy", describe_strategy(&view.spec.strategy)),
        ("Phase", phase(view)),
        ("Progress", progress(view)),
        ("Devices", describe_counts(&view.counts)),
    ]);
    if let Some(window) = &view.spec.window {
        pairs.push(("Window", window.to_string()));
    }
    pairs.extend([
        (
            "On failure",
            to_json(&view.spec.on_failure)
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        ),
        (
            "Created",
            format!("{} by {}", output::time(view.created_at), view.created_by),
        ),
        ("Updated", output::relative(view.updated_at, now)),
    ]);
    let mut text = fields(&pairs);
    for report in &view.gates {
        text.push('\n');
        text.push_str(&render_gate(report));
    }
    if let Some(decisions) = decisions.filter(|d| !d.is_empty()) {
        let first = decisions.len().saturating_sub(SHOWN_DECISIONS);
        text.push('\n');
        if first == 0 {
            text.push_str("Decisions:\n");
        } else {
            text.push_str(&format!(
                "Decisions (the last {SHOWN_DECISIONS} of {}; `drover rollouts decisions {}` shows all):\n",
                decisions.len(),
                view.id
            ));
        }
        text.push_str(&indent(&decision_table(&decisions[first..])));
    }
    text
}

/// One gate's judgement: a verdict line and a table of the evidence per metric.
pub fn render_gate(report: &CanaryReport) -> String {
    let mut text = format!(
        "Gate phase {}: {} ({} canary vs {} baseline)\n",
        report.phase + 1,
        report.verdict.as_str().to_uppercase(),
        report.n_canary,
        report.n_baseline
    );
    let mut table = Table::new(&[
        "METRIC", "TEST", "VERDICT", "CANARY", "BASELINE", "EFFECT", "P-VALUE", "NOTE",
    ]);
    for evidence in &report.metrics {
        table.row(metric_row(evidence));
    }
    text.push_str(&indent(&table.render()));
    text
}

/// The decision table: time, phase, kind, actor and message.
pub fn decision_table(decisions: &[RolloutDecisionView]) -> String {
    let mut table = Table::new(&["AT", "PHASE", "KIND", "ACTOR", "MESSAGE"]);
    for decision in decisions {
        table.row(vec![
            output::time(decision.at),
            decision.phase.to_string(),
            decision.kind.clone(),
            decision.actor.clone(),
            decision.message.clone(),
        ]);
    }
    table.render()
}

/// The device table of a rollout: one row per device, in dispatch order.
pub fn device_table(devices: &[RolloutDeviceView]) -> String {
    let mut table = Table::new(&[
        "DEVICE",
        "STATE",
        "ATTEMPT",
        "BASELINE",
        "FROM",
        "DEPLOYMENT",
        "FINISHED",
        "REASON",
    ]);
    for device in devices {
        table.row(vec![
            device.device.clone(),
            device.state.clone(),
            device.attempt.to_string(),
            if device.baseline { "yes" } else { "-" }.to_owned(),
            or_dash(device.from_version.as_ref()),
            or_dash(device.deployment),
            or_dash(device.finished_at.map(output::time)),
            or_dash(device.reason.as_ref()),
        ]);
    }
    table.render()
}

/// What an operator command left: `Rollout 3 (sensor-fw 1.1.0) is paused at phase 1/2 (50%):
/// paused by an operator`, and what it waits for on a second line.
pub fn status_line(view: &RolloutView) -> String {
    let mut line = format!(
        "Rollout {} ({}) is {}",
        view.id,
        view.name,
        view.status.replace('_', " ")
    );
    if matches!(view.status.as_str(), "running" | "paused") {
        line.push_str(&format!(" at phase {}", phase(view)));
    }
    if let Some(reason) = &view.reason {
        line.push_str(&format!(": {reason}"));
    }
    line.push('\n');
    if let Some(waiting_for) = &view.waiting_for {
        line.push_str(&format!("Waiting for {waiting_for}.\n"));
    }
    line
}

async fn create(client: &Client, json: bool, args: CreateArgs) -> Result<(), CliError> {
    let spec = match &args.spec {
        Some(path) => read_spec(path).await?,
        None => Map::new(),
    };
    let body = create_body(&args, spec)?;
    let value = client.call_json(Method::POST, &["rollouts"], &body).await?;
    if json {
        return print_json(&value);
    }
    let view: RolloutView = decode(value)?;
    emit(&format!(
        "Created rollout {}.\n{}",
        view.id,
        render_show(&view, None, output::now())
    ))
}

/// `POST /api/v1/rollouts/{id}/{verb}`, with the `{"reason": …}` body of the commands that take one.
async fn operator_command(
    client: &Client,
    json: bool,
    id: RolloutId,
    verb: &str,
    body: Option<RolloutCommandRequest>,
) -> Result<(), CliError> {
    let id_text = id.to_string();
    let path = ["rollouts", id_text.as_str(), verb];
    let value = match body {
        Some(body) => client.call_json(Method::POST, &path, &body).await?,
        None => client.call(Method::POST, &path).await?,
    };
    if json {
        return print_json(&value);
    }
    emit(&status_line(&decode(value)?))
}

/// Reads `--spec`: a JSON object whose keys are rollout definition fields. Unknown keys are
/// refused here, where the file can be named; the values are the server's to check.
async fn read_spec(path: &Path) -> Result<Map<String, Value>, CliError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| CliError::usage(format!("{} is not valid JSON: {e}", path.display())))?;
    check_spec(value).map_err(|message| CliError::usage(format!("{}: {message}", path.display())))
}

/// The fields of a rollout definition (a `--spec` file's keys).
fn spec_fields() -> Vec<String> {
    match to_json(&RolloutSpec::default()) {
        Value::Object(map) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn check_spec(value: Value) -> Result<Map<String, Value>, String> {
    let known = spec_fields();
    let Value::Object(map) = value else {
        return Err(format!(
            "expected a JSON object with rollout definition fields ({})",
            known.join(", ")
        ));
    };
    if let Some(unknown) = map.keys().find(|key| !known.contains(key)) {
        return Err(format!(
            "unknown field {unknown:?}; a rollout definition has {} (the release and target come from flags)",
            known.join(", ")
        ));
    }
    Ok(map)
}

/// Writes the strategy flags into `body`: `--rate` replaces the strategy (keeping the rest of a
/// rate from `--spec`), `--phases` replaces the phase list, and `--soak` and `--approve-before`
/// change every phase of the list in effect (the default one when neither says otherwise).
fn apply_strategy(args: &CreateArgs, body: &mut Value) -> Result<(), CliError> {
    if let Some(rate) = args.rate {
        let mut fields = match body.pointer("/strategy/rate") {
            Some(Value::Object(fields)) => fields.clone(),
            _ => Map::new(),
        };
        fields.insert("base_per_minute".into(), json!(rate.base_per_minute));
        fields.insert("increment_factor".into(), json!(rate.increment_factor));
        fields.insert("max_per_minute".into(), json!(rate.max_per_minute));
        set(body, &["strategy"], json!({ "rate": fields }));
    }
    let rate_fields = [
        ("raise_after", args.raise_after.map(|n| json!(n))),
        ("canary_devices", args.canary_devices.map(|n| json!(n))),
        ("canary_soak", args.canary_soak.map(duration_json)),
    ];
    if rate_fields.iter().any(|(_, value)| value.is_some()) {
        let Some(Value::Object(fields)) = body.pointer_mut("/strategy/rate") else {
            return Err(CliError::usage(
                "--raise-after, --canary-devices and --canary-soak shape a rate strategy: add --rate BASE:FACTOR:MAX",
            ));
        };
        for (field, value) in rate_fields {
            if let Some(value) = value {
                fields.insert(field.into(), value);
            }
        }
    }

    if args.phases.is_empty() && args.soak.is_none() && args.approve_before.is_empty() {
        return Ok(());
    }
    let mut phases: Vec<Value> = if !args.phases.is_empty() {
        args.phases
            .iter()
            .map(|percent| json!({ "percent": percent }))
            .collect()
    } else {
        match body.get("strategy") {
            None | Some(Value::Null) => match to_json(&Strategy::default()).get("phases") {
                Some(Value::Array(phases)) => phases.clone(),
                _ => Vec::new(),
            },
            Some(strategy) => match strategy.get("phases") {
                Some(Value::Array(phases)) => phases.clone(),
                _ => {
                    return Err(CliError::usage(
                        "--soak and --approve-before change phases, but the --spec definition has no phase list; add --phases",
                    ))
                }
            },
        }
    };
    if let Some(&number) = args.approve_before.iter().find(|&&n| n > phases.len()) {
        return Err(CliError::usage(format!(
            "--approve-before {number}: there are only {} phases (numbered from 1)",
            phases.len()
        )));
    }
    for (phase_idx, phase) in phases.iter_mut().enumerate() {
        if let Some(soak) = args.soak {
            set(phase, &["soak"], duration_json(soak));
        }
        if !args.approve_before.is_empty() {
            let approval = args.approve_before.contains(&(phase_idx + 1));
            set(phase, &["approval"], json!(approval));
        }
    }
    set(body, &["strategy"], json!({ "phases": phases }));
    Ok(())
}

impl MetricArg {
    fn to_json(&self) -> Value {
        let mut check = json!({ "metric": self.metric.as_str(), "bad": to_json(&self.bad) });
        if let Some(min_effect) = self.min_effect {
            set(&mut check, &["min_effect"], json!(min_effect));
        }
        check
    }
}

/// Sets the value at `path` under `value`, making objects on the way (and replacing anything on
/// the way that is not an object).
fn set(value: &mut Value, path: &[&str], new: Value) {
    let mut node = value;
    for key in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        let Value::Object(map) = node else {
            unreachable!("made an object above")
        };
        node = map.entry(*key).or_insert(Value::Null);
    }
    *node = new;
}

/// A wire type as JSON; the types here always serialise.
fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// A duration as the API writes it (`30m`).
fn duration_json(duration: Duration) -> Value {
    Value::String(duration.to_string())
}

/// `2/4 (5%)`: the current phase of all, and the share of the target it reaches.
fn phase(view: &RolloutView) -> String {
    format!(
        "{}/{} ({}%)",
        view.phase,
        view.n_phases,
        number(view.phase_percent)
    )
}

/// The share of the target that succeeded as a bar (`#`), the rest of the current phase's share
/// (`.`), and in words.
fn progress(view: &RolloutView) -> String {
    let counts = &view.counts;
    let done = if counts.target == 0 {
        0.0
    } else {
        counts.succeeded as f64 / counts.target as f64
    };
    let reach = (view.phase_percent / 100.0).clamp(done, 1.0);
    let n_done = (done * BAR_WIDTH as f64).floor() as usize;
    let n_reach = ((reach * BAR_WIDTH as f64).round() as usize).max(n_done);
    format!(
        "[{}{}{}]  {} of {} succeeded ({}%); phase {} reaches {}%",
        "#".repeat(n_done),
        ".".repeat(n_reach - n_done),
        " ".repeat(BAR_WIDTH.saturating_sub(n_reach)),
        counts.succeeded,
        counts.target,
        number(done * 100.0),
        view.phase,
        number(view.phase_percent)
    )
}

/// Every nonzero count, after the size of the target.
fn describe_counts(counts: &Counts) -> String {
    let named = [
        ("assigned", counts.assigned),
        ("updating", counts.in_flight),
        ("waiting to retry", counts.retry_waiting),
        ("succeeded", counts.succeeded),
        ("failed", counts.failed),
        ("rolled back", counts.rolled_back),
        ("timed out", counts.timed_out),
        ("rejected", counts.rejected),
        ("skipped", counts.skipped),
        ("canceled", counts.canceled),
        ("reverted", counts.reverted),
        ("revert failed", counts.revert_failed),
    ];
    let mut parts = vec![format!("{} in the target", counts.target)];
    parts.extend(
        named
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{n} {name}")),
    );
    parts.join(", ")
}

/// `1% soak 30m → 5% soak 30m, approval → 100%`, or the rate and its canary.
fn describe_strategy(strategy: &Strategy) -> String {
    match strategy {
        Strategy::Phases(phases) => phases
            .iter()
            .enumerate()
            .map(|(phase_idx, phase)| {
                let mut notes = Vec::new();
                if phase.approval {
                    notes.push("approval first".to_owned());
                }
                // The last phase completes the rollout without a soak or a gate.
                if phase_idx + 1 < phases.len() {
                    notes.push(format!("soak {}", phase.soak));
                }
                let mut text = format!("{}%", number(phase.percent));
                if !notes.is_empty() {
                    text.push_str(&format!(" ({})", notes.join(", ")));
                }
                text
            })
            .collect::<Vec<_>>()
            .join(" → "),
        Strategy::Rate(rate) => {
            let mut text = format!(
                "{}/min, ×{} after every {} successes, at most {}/min",
                rate.base_per_minute,
                number(rate.increment_factor),
                rate.raise_after,
                rate.max_per_minute
            );
            if rate.canary_devices > 0 {
                text.push_str(&format!(
                    "; first a canary of {} devices soaking {}",
                    rate.canary_devices, rate.canary_soak
                ));
            }
            text
        }
    }
}

fn metric_row(evidence: &MetricEvidence) -> Vec<String> {
    vec![
        evidence.metric.clone(),
        evidence.test.clone(),
        evidence.verdict.as_str().to_owned(),
        or_dash(evidence.canary.map(number)),
        or_dash(evidence.baseline.map(number)),
        or_dash(evidence.effect.map(|e| format!("{:+.1}%", e * 100.0))),
        or_dash(evidence.p_value.map(p_value)),
        evidence.note.clone(),
    ]
}

/// A measurement with as many decimals as its size needs: `1234`, `98.5`, `0.0123`, `2.1e-5`.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if value == 0.0 || !value.is_finite() {
        return format!("{value}");
    }
    if magnitude < 0.001 {
        return format!("{value:.1e}");
    }
    let decimals = if magnitude >= 1000.0 {
        0
    } else if magnitude >= 1.0 {
        2
    } else {
        4
    };
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// A p-value: three decimals, or scientific notation below 0.001.
fn p_value(p: f64) -> String {
    if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

/// Every line of `text` indented by two spaces, to set a table under its heading.
fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

fn parse_rollout_id(text: &str) -> Result<RolloutId, String> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(RolloutId)
        .ok_or_else(|| format!("a rollout id is a positive number, not {text:?}"))
}

fn parse_percent(text: &str) -> Result<f64, String> {
    text.trim()
        .trim_end_matches('%')
        .parse::<f64>()
        .ok()
        .filter(|percent| percent.is_finite())
        .ok_or_else(|| format!("expected a percentage such as 5 or 12.5, not {text:?}"))
}

fn parse_phase_number(text: &str) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("expected a phase number counting from 1, not {text:?}"))
}

fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || {
        format!(
            "expected BASE:FACTOR:MAX, e.g. 10:2:1000 (start at 10 devices a minute, double, at most 1000), not {text:?}"
        )
    };
    let [base, factor, max] = text.split(':').collect::<Vec<_>>()[..] else {
        return Err(bad());
    };
    Ok(Rate {
        base_per_minute: base.trim().parse().map_err(|_| bad())?,
        increment_factor: factor
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(bad)?,
        max_per_minute: max.trim().parse().map_err(|_| bad())?,
    })
}

fn parse_metric(text: &str) -> Result<MetricArg, String> {
    let mut parts = text.splitn(3, ':');
    let name = parts.next().unwrap_or_default();
    let Some(direction) = parts.next() else {
        return Err(format!(
            "expected NAME:increase|decrease|either[:MIN_EFFECT], e.g. battery_ma:increase:0.2, not {text:?}"
        ));
    };
    let metric = MetricName::parse(name).map_err(|e| e.to_string())?;
    let bad = match direction {
        "increase" => Direction::Increase,
        "decrease" => Direction::Decrease,
        "either" => Direction::Either,
        other => {
            return Err(format!(
                "{other:?} is not a direction: say which change of {name} is bad, increase, decrease or either"
            ))
        }
    };
    let min_effect = parts
        .next()
        .map(|effect| {
            effect
                .parse::<f64>()
                .ok()
                .filter(|e| e.is_finite() && *e >= 0.0)
                .ok_or_else(|| {
                    format!("minimum effect {effect:?} is not a relative change such as 0.2 (20%)")
                })
        })
        .transpose()?;
    Ok(MetricArg {
        metric,
        bad,
        min_effect,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use drover_core::rollout::stats::Verdict;
    use drover_proto::target::Target;

    use super::*;

    #[derive(Debug, Parser)]
    struct Create {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn body(args: &[&str]) -> Result<Value, String> {
        let base = ["create", "--artifact", "fw", "--version", "1.1.0"];
        let parsed = Create::try_parse_from(base.iter().chain(args)).map_err(|e| e.to_string())?;
        create_body(&parsed.args, Map::new()).map_err(|e| e.message)
    }

    #[test]
    fn flags_become_the_api_body_and_nothing_else() {
        assert_eq!(
            body(&["--query", "device_type = sensor"]).unwrap(),
            json!({"artifact": "fw", "version": "1.1.0", "target": {"query": "device_type = sensor"}})
        );
        let full = body(&[
            "--devices",
            "a,b",
            "--name",
            "pilot",
            "--phases",
            "10,100",
            "--soak",
            "1h",
            "--approve-before",
            "2",
            "--max-parallel",
            "5",
            "--update-type",
            "download-only",
            "--on-failure",
            "rollback",
            "--max-attempts",
            "2",
            "--retry-backoff",
            "1m",
            "--min-source-version",
            "1.0.0",
            "--require-version",
            "1.0.5",
            "--allow-downgrade",
            "--window-cron",
            "0 2 * * 1-5",
            "--window-duration",
            "3h",
            "--metric",
            "battery_ma:increase:0.2",
            "--metric",
            "rssi:either",
            "--alpha",
            "0.05",
            "--static",
        ])
        .unwrap();
        assert_eq!(
            full,
            json!({
                "artifact": "fw", "version": "1.1.0", "name": "pilot",
                "target": {"devices": ["a", "b"]},
                "update_type": "download_only",
                "strategy": {"phases": [
                    {"percent": 10.0, "soak": "1h", "approval": false},
                    {"percent": 100.0, "soak": "1h", "approval": true},
                ]},
                "max_parallel": 5,
                "dynamic": false,
                "window": {"cron": "0 2 * * 1-5", "duration": "3h", "time_zone": "UTC"},
                "policy": {"max_attempts": 2, "retry_backoff": "1m", "min_source_version": "1.0.0",
                    "required_versions": ["1.0.5"], "allow_downgrade": true},
                "on_failure": "rollback",
                "gates": {"canary": {"alpha": 0.05, "metrics": [
                    {"metric": "battery_ma", "bad": "increase", "min_effect": 0.2},
                    {"metric": "rssi", "bad": "either"},
                ]}},
            })
        );
    }

    #[test]
    fn soak_and_approval_change_the_default_phases_when_no_list_is_given() {
        let body = body(&["--group", "g", "--soak", "5m", "--approve-before", "5"]).unwrap();
        let phases = body["strategy"]["phases"].as_array().unwrap();
        assert_eq!(phases.len(), 5);
        assert!(phases.iter().all(|p| p["soak"] == "5m"));
        let approvals: Vec<bool> = phases
            .iter()
            .map(|p| p["approval"].as_bool().unwrap())
            .collect();
        assert_eq!(approvals, [false, false, false, false, true]);
    }

    #[test]
    fn a_rate_strategy_takes_its_own_flags() {
        let body = body(&[
            "--group",
            "g",
            "--rate",
            "10:1.5:500",
            "--raise-after",
            "20",
            "--canary-devices",
            "5",
            "--canary-soak",
            "10m",
        ])
        .unwrap();
        assert_eq!(
            body["strategy"],
            json!({"rate": {"base_per_minute": 10, "increment_factor": 1.5, "max_per_minute": 500,
                "raise_after": 20, "canary_devices": 5, "canary_soak": "10m"}})
        );
    }

    #[test]
    fn flags_override_the_spec_file_and_keep_the_rest() {
        let spec = check_spec(json!({
            "strategy": {"rate": {"base_per_minute": 1, "max_per_minute": 10, "canary_devices": 3}},
            "policy": {"max_attempts": 5, "step_timeout": "1h"},
        }))
        .unwrap();
        let parsed = Create::try_parse_from([
            "create",
            "--artifact",
            "fw",
            "--version",
            "1.1.0",
            "--group",
            "g",
            "--raise-after",
            "7",
            "--max-attempts",
            "2",
        ])
        .unwrap();
        let body = create_body(&parsed.args, spec).unwrap();
        assert_eq!(
            body["strategy"]["rate"],
            json!({"base_per_minute": 1, "max_per_minute": 10, "canary_devices": 3, "raise_after": 7})
        );
        assert_eq!(
            body["policy"],
            json!({"max_attempts": 2, "step_timeout": "1h"})
        );
        let unknown = check_spec(json!({"stratgy": {}})).unwrap_err();
        assert!(
            unknown.contains("\"stratgy\"") && unknown.contains("strategy"),
            "{unknown}"
        );
        assert!(check_spec(json!([1])).is_err());
    }

    #[test]
    fn bad_flags_are_refused_before_any_request() {
        let cases: &[(&[&str], &str)] = &[
            (&["--group", "g", "--query", "x"], "cannot be used with"),
            (&[], "--group"),
            (
                &["--group", "g", "--rate", "1:2:3", "--phases", "50,100"],
                "cannot be used with",
            ),
            (&["--group", "g", "--rate", "1:2"], "BASE:FACTOR:MAX"),
            (&["--group", "g", "--soak", "5 minutes"], "duration"),
            (&["--group", "g", "--raise-after", "3"], "add --rate"),
            (
                &[
                    "--group",
                    "g",
                    "--phases",
                    "50,100",
                    "--approve-before",
                    "3",
                ],
                "only 2 phases",
            ),
            (
                &["--group", "g", "--approve-before", "0"],
                "counting from 1",
            ),
            (&["--group", "g", "--metric", "battery_ma"], "NAME:increase"),
            (
                &["--group", "g", "--metric", "battery_ma:up"],
                "not a direction",
            ),
            (
                &["--group", "g", "--metric", "Bad-Name:increase"],
                "Bad-Name",
            ),
            (&["--group", "g", "--min-source-version", "one"], "one"),
            (
                &["--group", "g", "--window-cron", "0 2 * * *"],
                "--window-duration",
            ),
            (
                &[
                    "--group",
                    "g",
                    "--window-cron",
                    "0 25 * * *",
                    "--window-duration",
                    "1h",
                ],
                "invalid maintenance window: cron hour field",
            ),
            (
                &[
                    "--group",
                    "g",
                    "--window-cron",
                    "@daily",
                    "--window-duration",
                    "1h",
                    "--window-tz",
                    "Mars/Olympus",
                ],
                "Mars/Olympus",
            ),
            (
                &["--group", "g", "--no-canary", "--alpha", "0.1"],
                "cannot be used with",
            ),
        ];
        for (args, expected) in cases {
            let error = body(args).unwrap_err();
            assert!(
                error.contains(expected),
                "{args:?}: {error:?} lacks {expected:?}"
            );
        }
    }

    fn view() -> RolloutView {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "strategy": {"phases": [{"percent": 10, "soak": "1h"}, {"percent": 100, "approval": true}]}
        }))
        .unwrap();
        RolloutView {
            id: RolloutId(7),
            name: "sensor-fw 1.1.0".into(),
            artifact: "sensor-fw".into(),
            version: "1.1.0".into(),
            target: Target::Query("device_type = sensor".into()),
            update_type: UpdateType::Forced,
            status: "paused".into(),
            reason: Some("phase 1 failed its canary gate".into()),
            phase: 1,
            n_phases: 2,
            phase_percent: 10.0,
            waiting_for: Some("an operator to resume or roll back".into()),
            counts: Counts {
                target: 40,
                assigned: 4,
                succeeded: 3,
                rolled_back: 1,
                ..Counts::default()
            },
            gates: vec![CanaryReport {
                phase: 0,
                at: Timestamp::from_millis(1_700_000_000_000),
                verdict: Verdict::Fail,
                n_canary: 4,
                n_baseline: 10,
                metrics: vec![MetricEvidence {
                    metric: "battery_ma".into(),
                    test: "mann_whitney".into(),
                    verdict: Verdict::Fail,
                    canary: Some(2100.0),
                    baseline: Some(105.5),
                    effect: Some(18.905),
                    p_value: Some(0.000_012),
                    confidence: Some(0.999_988),
                    alpha: 0.001,
                    n_canary: 4,
                    n_baseline: 10,
                    note: "median 2100.0000 vs 105.5000".into(),
                }],
            }],
            spec,
            created_at: Timestamp::from_millis(1_700_000_000_000),
            created_by: "admin".into(),
            updated_at: Timestamp::from_millis(1_700_000_060_000),
        }
    }

    #[test]
    fn show_summarises_progress_counts_and_gate_evidence() {
        let decisions: Vec<RolloutDecisionView> = (1..=12)
            .map(|seq| RolloutDecisionView {
                seq,
                at: Timestamp::from_millis(1_700_000_000_000 + seq * 1000),
                kind: if seq == 12 {
                    "paused".into()
                } else {
                    "soaking".into()
                },
                actor: "orchestrator".into(),
                phase: 1,
                message: format!("decision {seq}"),
                evidence: None,
                alert: seq == 12,
            })
            .collect();
        let text = render_show(
            &view(),
            Some(&decisions),
            Timestamp::from_millis(1_700_000_120_000),
        );
        assert_eq!(
            text,
            "\
ID:           7
Name:         sensor-fw 1.1.0
Release:      sensor-fw 1.1.0 (forced update)
Target:       query \"device_type = sensor\"
Status:       paused: phase 1 failed its canary gate
Waiting for:  an operator to resume or roll back
Strategy:     10% (soak 1h) → 100% (approval first)
Phase:        1/2 (10%)
Progress:     [##.                           ]  3 of 40 succeeded (7.5%); phase 1 reaches 10%
Devices:      40 in the target, 4 assigned, 3 succeeded, 1 rolled back
On failure:   pause
Created:      2023-11-14T22:13:20Z by admin
Updated:      1m ago

Gate phase 1: FAIL (4 canary vs 10 baseline)
  METRIC      TEST          VERDICT  CANARY  BASELINE  EFFECT    P-VALUE  NOTE
  battery_ma  mann_whitney  fail     2100    105.5     +1890.5%  1.2e-5   median 2100.0000 vs 105.5000

Decisions (the last 10 of 12; `drover rollouts decisions 7` shows all):
  AT                    PHASE  KIND     ACTOR         MESSAGE
  2023-11-14T22:13:23Z  1      soaking  orchestrator  decision 3
  2023-11-14T22:13:24Z  1      soaking  orchestrator  decision 4
  2023-11-14T22:13:25Z  1      soaking  orchestrator  decision 5
  2023-11-14T22:13:26Z  1      soaking  orchestrator  decision 6
  2023-11-14T22:13:27Z  1      soaking  orchestrator  decision 7
  2023-11-14T22:13:28Z  1      soaking  orchestrator  decision 8
  2023-11-14T22:13:29Z  1      soaking  orchestrator  decision 9
  2023-11-14T22:13:30Z  1      soaking  orchestrator  decision 10
  2023-11-14T22:13:31Z  1      soaking  orchestrator  decision 11
  2023-11-14T22:13:32Z  1      paused   orchestrator  decision 12
"
        );
    }

    #[test]
    fn list_rows_and_status_lines_read_at_a_glance() {
        let table = rollout_table(&[view()], Timestamp::from_millis(1_700_000_120_000));
        assert_eq!(
            table,
            "\
ID  NAME             RELEASE          STATUS  PHASE      SUCCEEDED/TARGET  FAILED  UPDATED
7   sensor-fw 1.1.0  sensor-fw 1.1.0  paused  1/2 (10%)  3/40              1       1m ago
"
        );
        assert_eq!(
            status_line(&view()),
            "Rollout 7 (sensor-fw 1.1.0) is paused at phase 1/2 (10%): phase 1 failed its canary gate\n\
             Waiting for an operator to resume or roll back.\n"
        );
    }

    #[test]
    fn numbers_show_the_decimals_their_size_needs() {
        let cases = [
            (0.0, "0"),
            (1234.56, "1235"),
            (98.5, "98.5"),
            (5.0, "5"),
            (0.0123, "0.0123"),
            (0.000021, "2.1e-5"),
            (-0.25, "-0.25"),
        ];
        for (value, expected) in cases {
            assert_eq!(number(value), expected, "{value}");
        }
        assert_eq!(p_value(0.0312), "0.031");
        assert_eq!(p_value(0.000012), "1.2e-5");
    }
}
