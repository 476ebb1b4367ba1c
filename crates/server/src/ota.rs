//! Over-the-air updates on the server: what happens around an artifact upload (publishing it in the
//! TUF repository, building deltas), offering deployments to devices and applying their reports,
//! and the background loop that times out deployments whose device went silent.

use std::path::{Path, PathBuf};

use drover_core::DeviceId;
use drover_proto::artifacts::{ArtifactView, DeploymentView};
use drover_proto::update::{DeploymentId, DeploymentReport, UpdateOffer};
use drover_store::Store;
use sha2::Digest;

use crate::error::ApiError;
use crate::{now, AppState};

/// The TUF repository's settings.
#[derive(Debug, Clone)]
pub struct TufConfig {
    /// Root key file used to create the repository on first start when no root exists yet. After
    /// that the root key is only needed to rotate keys (`drover keys`), so it can live offline.
    pub root_key_file: PathBuf,
    /// Lifetimes of each role's signatures.
    pub root_expiry: drover_core::Duration,
    pub targets_expiry: drover_core::Duration,
    pub snapshot_expiry: drover_core::Duration,
    pub timestamp_expiry: drover_core::Duration,
}

impl TufConfig {
    /// Defaults: keys under `<data_dir>/tuf/`, root valid a year, targets 90 days, snapshot a week,
    /// timestamp a day (re-signed online when half of its lifetime is left).
    pub fn with_data_dir(data_dir: &Path) -> TufConfig {
        let day = 86_400;
        TufConfig {
            root_key_file: data_dir.join("tuf").join("root.key"),
            root_expiry: drover_core::Duration::from_secs(365 * day),
            targets_expiry: drover_core::Duration::from_secs(90 * day),
            snapshot_expiry: drover_core::Duration::from_secs(7 * day),
            timestamp_expiry: drover_core::Duration::from_secs(day),
        }
    }
}

/// Images larger than this get no delta: generation holds both images and a suffix array of the
/// older one (about nine times its size) in memory.
const MAX_DELTA_IMAGE_BYTES: u64 = 512 << 20;

/// Called once an artifact is recorded: publishes it in the TUF repository, then builds a delta
/// to it from the newest older version of the same artifact, in the background.
pub(crate) async fn artifact_added(
    state: &AppState,
    view: ArtifactView,
) -> Result<ArtifactView, ApiError> {
    republish(state).await?;
    let state = state.clone();
    let (name, version) = (view.name.clone(), view.version.clone());
    tokio::spawn(async move {
        if let Err(e) = build_delta(&state, &name, &version).await {
            tracing::warn!(error = %e, artifact = %name, %version, "could not build a delta; devices will download the full image");
        }
    });
    Ok(view)
}

/// Builds, stores and publishes the delta from the newest version below `version` to `version`.
async fn build_delta(
    state: &AppState,
    name: &drover_core::ArtifactName,
    version: &drover_core::Version,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let versions = state.store.artifact_versions(name).await?;
    let Some(target) = versions.iter().find(|a| &a.version == version) else {
        return Ok(());
    };
    let Some(base) = versions.iter().find(|a| &a.version < version) else {
        return Ok(());
    };
    if base.image.info.size.max(target.image.info.size) > MAX_DELTA_IMAGE_BYTES {
        tracing::info!(artifact = %name, %version, "no delta: the images are larger than {MAX_DELTA_IMAGE_BYTES} bytes");
        return Ok(());
    }
    let _permit = state.delta_builds.acquire().await?;
    let started = std::time::Instant::now();
    let old = state.storage.read_all(&base.image.key).await?;
    let new = state.storage.read_all(&target.image.key).await?;
    let (patch, info) = tokio::task::spawn_blocking(move || {
        let mut patch = Vec::new();
        drover_delta::generate(&old, &new, &mut patch).map(|info| (patch, info))
    })
    .await?
    .context("delta generation failed")?;
    // A delta that saves little is not worth a second download path.
    if patch.len() as u64 * 10 > target.image.info.size * 9 {
        tracing::info!(artifact = %name, %version, from = %base.version, "no delta: it would be {} of {} bytes", patch.len(), target.image.info.size);
        return Ok(());
    }
    let sha256 = crate::storage::hex(&sha2::Sha256::digest(&patch));
    let key = format!("deltas/{sha256}");
    let size = patch.len() as u64;
    state.storage.put(&key, patch.into()).await?;
    let target_path = format!(
        "{name}/{version}/{name}-{}-to-{version}.delta",
        base.version
    );
    state
        .store
        .insert_delta(
            drover_store::NewDelta {
                from_seq: base.seq,
                to_seq: target.seq,
                object: drover_store::StoredObject {
                    key,
                    info: drover_proto::artifacts::FileInfo { size, sha256 },
                },
                target_path,
            },
            now(),
        )
        .await?;
    republish(state)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    tracing::info!(
        artifact = %name, %version, from = %base.version, bytes = size, full = target.image.info.size,
        seconds = started.elapsed().as_secs_f64(), entries = info.n_entries,
        "built a delta"
    );
    Ok(())
}

/// Called after an artifact was deleted: republishes the targets without it.
pub(crate) async fn artifact_removed(state: &AppState) -> Result<(), ApiError> {
    republish(state).await
}

async fn republish(state: &AppState) -> Result<(), ApiError> {
    crate::tuf_repo::publish(&state.store, &state.config.tuf, now())
        .await
        .map_err(|e| ApiError::internal(format!("cannot publish the TUF targets: {e}")))
}

/// Re-signs TUF metadata before it expires, every `every`.
pub(crate) async fn tuf_refresh(store: Store, config: TufConfig, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match crate::tuf_repo::refresh(&store, &config, now()).await {
            Ok(true) => tracing::debug!("re-signed TUF metadata before expiry"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not re-sign TUF metadata"),
        }
    }
}

/// Called after an operator created a deployment: tells an MQTT-connected device at once.
pub(crate) async fn deployment_created(state: &AppState, device: &DeviceId) {
    // Nobody listening (MQTT off) is fine: devices also check over HTTP.
    let _ = state.offers.send(device.clone());
}

/// The update `device` should install now.
pub(crate) async fn offer_for(
    state: &AppState,
    device: &DeviceId,
) -> Result<Option<UpdateOffer>, ApiError> {
    Ok(state
        .store
        .deployment_offer(device)
        .await?
        .as_ref()
        .map(crate::routes::updates::offer_body))
}

/// Applies a device's step report.
pub(crate) async fn report(
    state: &AppState,
    device: &DeviceId,
    id: DeploymentId,
    report: DeploymentReport,
) -> Result<DeploymentView, ApiError> {
    Ok(state
        .store
        .report_deployment(
            device,
            id,
            report,
            now(),
            state.config.deployment_step_timeout,
        )
        .await?)
}

/// Times out deployments whose device stayed silent past its deadline, every `every`.
pub(crate) async fn deployment_timeouts(store: Store, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        loop {
            match store.time_out_deployments(now(), 500).await {
                Ok(expired) => {
                    for id in &expired {
                        tracing::info!(deployment = %id, "deployment timed out");
                    }
                    if expired.len() < 500 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not time out deployments");
                    break;
                }
            }
        }
    }
}
