//! Firmware artifacts and device deployments in the admin API (`/api/v1/artifacts`,
//! `/api/v1/devices/{id}/deployments`).
//!
//! An artifact is uploaded as `multipart/form-data` with a `metadata` part ([`ArtifactMetadata`] as
//! JSON) first, then the `image` part, then optionally a `symbols` part (the ELF with debug
//! symbols). The image is streamed to the object store while it is hashed, never held whole.

use drover_core::{ArtifactName, DeviceId, DeviceType, Label, Timestamp, Version};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::update::{DeploymentId, DeploymentState, FailureKind, UpdateType};

/// Where a build came from, as CI reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_url: Option<String>,
}

/// The `metadata` part of an artifact upload.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactMetadata {
    #[schema(value_type = String)]
    pub name: ArtifactName,
    #[schema(value_type = String)]
    pub version: Version,
    /// Device types the image runs on (at least one).
    #[schema(value_type = Vec<String>)]
    pub device_types: Vec<DeviceType>,
    /// Hardware revisions it runs on; empty means every revision.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub hw_revs: Vec<Label>,
    #[serde(default)]
    pub provenance: Provenance,
    #[serde(default)]
    pub release_notes: String,
    /// Devices that install this image refuse any version below this one afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub security_floor: Option<Version>,
}

/// An uploaded file's size and sha256 (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    pub size: u64,
    pub sha256: String,
}

/// A binary delta the server built from another version of the same artifact to this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeltaView {
    /// The version the delta applies to.
    #[schema(value_type = String)]
    pub from_version: Version,
    pub size: u64,
    pub sha256: String,
    /// The delta's TUF target path.
    pub target: String,
}

/// An artifact as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactView {
    #[schema(value_type = String)]
    pub name: ArtifactName,
    #[schema(value_type = String)]
    pub version: Version,
    #[schema(value_type = Vec<String>)]
    pub device_types: Vec<DeviceType>,
    #[schema(value_type = Vec<String>)]
    pub hw_revs: Vec<Label>,
    pub size: u64,
    pub sha256: String,
    /// The image's TUF target path (devices download `/api/device/v1/tuf/targets/<dir>/<sha256>.<file>`).
    pub target: String,
    pub provenance: Provenance,
    pub release_notes: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub security_floor: Option<Version>,
    /// The debug-symbols file, when one was uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbols: Option<FileInfo>,
    #[serde(default)]
    pub deltas: Vec<DeltaView>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    pub created_by: String,
    /// Unfinished deployments of this artifact; it cannot be deleted while there are any.
    #[serde(default)]
    pub active_deployments: u64,
}

/// `POST /api/v1/devices/{id}/deployments`: install an artifact on one device.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDeployment {
    #[schema(value_type = String)]
    pub artifact: ArtifactName,
    #[schema(value_type = String)]
    pub version: Version,
    #[serde(default)]
    pub update_type: UpdateType,
    /// Allow a version older than the device runs now (devices still refuse anything below their
    /// security floor).
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// One device's deployment and its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentView {
    pub id: DeploymentId,
    #[schema(value_type = String)]
    pub device: DeviceId,
    pub artifact: String,
    pub version: String,
    pub state: DeploymentState,
    pub update_type: UpdateType,
    pub attempt: u32,
    /// The firmware the device ran when the deployment was created.
    pub from_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_delta: Option<bool>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    pub created_by: String,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// Every state the deployment went through, oldest first.
    #[serde(default)]
    pub history: Vec<DeploymentEvent>,
}

/// One step of a deployment's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentEvent {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub state: DeploymentState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
