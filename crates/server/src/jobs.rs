//! The fleet jobs tick: every `rollout_tick` (and at once after a job was created or a device
//! finished an execution), each running job gets one step (`drover_store::Store::tick_job`: time
//! out silent attempts, start due executions up to `max_parallel`, complete the job), and the
//! devices offered an execution hear of it at once (their long-poll wakes; MQTT devices get
//! `drover/{id}/jobs/notify`). Shadows a `config` job changed go out like an operator's change.
//!
//! Several replicas may run this loop against one PostgreSQL: each tick locks its job's row with
//! `SKIP LOCKED`, so a job is stepped by one replica at a time and none waits.

use std::time::Duration;

use drover_core::DeviceId;

use crate::wake::WakeKey;
use crate::{now, AppState};

/// Runs ticks every `every` (and at once when woken) until the server stops.
pub(crate) async fn run(state: AppState, every: Duration) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = state.jobs_changed.notified() => {}
        }
        run_once(&state).await;
    }
}

/// One pass over the running jobs.
pub(crate) async fn run_once(state: &AppState) {
    let ids = match state.store.active_jobs().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "could not list running jobs");
            return;
        }
    };
    for id in ids {
        match state.store.tick_job(id, now()).await {
            Ok(Some(outcome)) => {
                for (device, version) in outcome.desired_changed {
                    state.shadows.publish(&device, None, version);
                    state.shadows.desired_changed(&device, None, version);
                }
                for device in outcome.offered {
                    announce(state, &device);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(job = %id, error = %e, "job tick failed"),
        }
    }
}

/// Tells a device its jobs changed: wakes its long-poll and has MQTT send its next offer.
pub(crate) fn announce(state: &AppState, device: &DeviceId) {
    state.wakes.wake(&WakeKey::Job(device.clone()));
    // Nobody listening (MQTT off) is fine: devices also ask over HTTP.
    let _ = state.job_offers.send(device.clone());
}
