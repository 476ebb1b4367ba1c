//! Staged rollouts in the admin API: creating one, its view with phase progress, device counts and
//! gate evidence, operator commands and the decision log.
//!
//! The definition's body (`strategy`, `policy`, `gates`, `window`, …) is
//! [`drover_core::rollout::spec::RolloutSpec`]; its fields are documented in `docs/rollouts.md`.

use drover_core::rollout::canary::CanaryReport;
use drover_core::rollout::machine::Counts;
use drover_core::rollout::spec::RolloutSpec;
use drover_core::{ArtifactName, Timestamp, Version};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::target::Target;
use crate::update::UpdateType;

/// A rollout's id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct RolloutId(pub i64);

impl std::fmt::Display for RolloutId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `POST /api/v1/rollouts`: a release × a target × a definition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRollout {
    /// A name for people; defaults to `ARTIFACT VERSION`.
    #[serde(default)]
    pub name: Option<String>,
    #[schema(value_type = String)]
    pub artifact: ArtifactName,
    #[schema(value_type = String)]
    pub version: Version,
    pub target: Target,
    #[serde(default)]
    pub update_type: UpdateType,
    /// Strategy, policies, gates, window (see `docs/rollouts.md`); every field has a default.
    #[serde(default, flatten)]
    #[schema(value_type = Object)]
    pub spec: RolloutSpec,
}

/// A rollout as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    pub id: RolloutId,
    pub name: String,
    pub artifact: String,
    pub version: String,
    pub target: Target,
    pub update_type: UpdateType,
    /// `running`, `paused`, `completed`, `aborted` or `rolled_back`.
    pub status: String,
    /// Why it is paused or ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The current phase, counting from 1, of `n_phases`.
    pub phase: usize,
    pub n_phases: usize,
    /// The cumulative share of the target the current phase reaches.
    pub phase_percent: f64,
    /// What the rollout waits for now, in words (approval, the maintenance window, the soak, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    #[schema(value_type = Object)]
    pub counts: Counts,
    /// Every gate's judgement so far, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub gates: Vec<CanaryReport>,
    #[schema(value_type = Object)]
    pub spec: RolloutSpec,
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    pub created_by: String,
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
}

/// One entry of the decision log: who or what decided, when, why, with the evidence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutDecisionView {
    pub seq: i64,
    #[schema(value_type = String)]
    pub at: Timestamp,
    pub kind: String,
    pub actor: String,
    /// The phase it concerns, counting from 1.
    pub phase: usize,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub evidence: Option<serde_json::Value>,
    pub alert: bool,
}

/// One device's part in a rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutDeviceView {
    pub device: String,
    pub state: String,
    pub attempt: u32,
    /// Whether it is held back on the old version as the canary baseline.
    pub baseline: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The optional body of `pause`, `abort` and `rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutCommandRequest {
    /// Why, for the decision log.
    #[serde(default)]
    pub reason: Option<String>,
}
