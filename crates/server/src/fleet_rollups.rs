//! The fleet rollup tick: every `rollup_interval` (60 s by default) it folds the device-count
//! deltas the `devices` triggers appended into the fleet counts, snapshots accepted devices per
//! firmware version when those counts changed (the adoption history of `GET /api/v1/fleet/versions`)
//! and prunes snapshots older than [`HISTORY_RETENTION`]. Readers are exact without it (they add
//! the unfolded deltas); the tick keeps that addition small and the history current, and runs at
//! once after a change of many devices (see [`WAKE_AFTER`]).
//!
//! Several replicas may run it against one PostgreSQL: the store skips the tick while another
//! replica holds it (an advisory lock), so nothing is folded or snapshotted twice.

use std::sync::Arc;
use std::time::Duration;

use drover_store::{FleetTick, Store, StoreError};
use tokio::sync::Notify;

use crate::now;

/// How long version snapshots are kept (the longest window the versions view offers).
pub const HISTORY_RETENTION: drover_core::Duration = drover_core::Duration::from_secs(90 * 86_400);

/// Changes of at least this many devices at once (an import, a bulk update, an offline sweep)
/// wake the tick, so readers do not add up that many deltas until the next interval.
pub(crate) const WAKE_AFTER: usize = 1000;

/// Runs a tick every `every`, and at once when `changed` is notified, until the server stops.
pub(crate) async fn run(store: Store, every: Duration, changed: Arc<Notify>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = changed.notified() => {}
        }
        if let Err(e) = run_once(&store).await {
            tracing::warn!(error = %e, "fleet rollup tick failed");
        }
    }
}

/// One tick at the current time; `None` when another replica ran it.
pub(crate) async fn run_once(store: &Store) -> Result<Option<FleetTick>, StoreError> {
    let at = now();
    let outcome = store
        .fleet_rollup_tick(at, at.saturating_add(HISTORY_RETENTION.neg()))
        .await?;
    if let Some(outcome) = outcome {
        tracing::debug!(
            folded = outcome.folded,
            snapshot = outcome.snapshot,
            pruned = outcome.pruned,
            "fleet rollup tick"
        );
    }
    Ok(outcome)
}
