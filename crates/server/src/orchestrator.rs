//! The rollout orchestrator's loop: every tick, each rollout with work left gets one step of its
//! state machine (`drover_store::Store::tick_rollout`, which runs `drover_core`'s pure machine in
//! one transaction); devices it offered an update hear of it at once over MQTT; alerts (pauses,
//! aborts, rollbacks, completions, approvals wanted) go to the log and to the webhook.
//!
//! Several replicas may run this loop against one PostgreSQL: each tick locks its rollout's row
//! with `SKIP LOCKED`, so a rollout is stepped by one replica at a time and none waits.

use std::time::Duration;

use drover_core::DeviceId;
use drover_proto::rollouts::RolloutDecisionView;

use crate::{now, AppState};

/// Alerts delivered per pass.
const ALERTS_PER_PASS: usize = 100;

/// Runs ticks every `every` (and at once when a rollout is created or commanded) until the
/// server stops.
pub(crate) async fn run(state: AppState, every: Duration) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .ok();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = state.rollouts_changed.notified() => {}
        }
        run_once(&state).await;
        deliver_alerts(&state, http.as_ref()).await;
    }
}

/// One pass over the rollouts with work left.
pub(crate) async fn run_once(state: &AppState) {
    let ids = match state.store.active_rollouts().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "could not list active rollouts");
            return;
        }
    };
    for id in ids {
        match state.store.tick_rollout(id, now()).await {
            Ok(Some(outcome)) => announce(state, outcome.offered),
            Ok(None) => {}
            Err(e) => tracing::warn!(rollout = %id, error = %e, "rollout tick failed"),
        }
    }
}

/// Tells MQTT-connected devices about the updates just offered to them.
pub(crate) fn announce(state: &AppState, devices: Vec<DeviceId>) {
    for device in devices {
        // Nobody listening (MQTT off) is fine: devices also ask over HTTP.
        let _ = state.offers.send(device);
    }
}

/// Logs every undelivered alert and posts it to the webhook; an alert the webhook refused stays
/// undelivered and is tried again next pass.
async fn deliver_alerts(state: &AppState, http: Option<&reqwest::Client>) {
    let alerts = match state
        .store
        .undelivered_rollout_alerts(ALERTS_PER_PASS)
        .await
    {
        Ok(alerts) => alerts,
        Err(e) => {
            tracing::warn!(error = %e, "could not read rollout alerts");
            return;
        }
    };
    let mut delivered = Vec::new();
    for (id, name, decision) in alerts {
        let ok = match (&state.config.alert_webhook, http) {
            (Some(url), Some(http)) => post(http, url, id.0, &name, &decision).await,
            _ => true,
        };
        if ok {
            tracing::warn!(rollout = %id, rollout_name = %name, kind = %decision.kind, actor = %decision.actor,
                "rollout alert: {}", decision.message);
            delivered.push(decision.seq);
        }
    }
    if let Err(e) = state.store.mark_rollout_alerts_delivered(delivered).await {
        tracing::warn!(error = %e, "could not mark rollout alerts delivered");
    }
}

/// The webhook's body: `{"rollout": {"id", "name"}, "decision": {...}}`.
async fn post(
    http: &reqwest::Client,
    url: &str,
    id: i64,
    name: &str,
    decision: &RolloutDecisionView,
) -> bool {
    let body = serde_json::json!({
        "rollout": {"id": id, "name": name},
        "decision": decision,
    });
    match http.post(url).json(&body).send().await {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            tracing::warn!(%url, status = %response.status(), "the alert webhook refused an alert; will retry");
            false
        }
        Err(e) => {
            tracing::warn!(%url, error = %e, "could not reach the alert webhook; will retry");
            false
        }
    }
}
