//! Over-the-air updates between the server and a device: the update the server offers
//! (`GET /api/device/v1/deployments/next`, or the MQTT topic `drover/{id}/deployments/next`) and the
//! steps the device reports back (`POST /api/device/v1/deployments/{id}/status`, or MQTT
//! `drover/{id}/deployments/status`).
//!
//! The offer only says *what* to install. Whether the bytes may be installed is decided on the
//! device from the signed TUF metadata the server publishes under `/api/device/v1/tuf/`: the offer
//! names TUF targets, and every length, hash, version and compatibility fact the device acts on comes
//! from the verified `targets.json`, never from the offer itself.

use drover_core::Version;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Identifies one device's deployment (one attempt series of one artifact on one device).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
pub struct DeploymentId(pub i64);

impl std::fmt::Display for DeploymentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What the server asks a device to install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpdateOffer {
    pub deployment: DeploymentId,
    /// The full image, as a TUF target.
    pub image: TargetRef,
    /// A binary delta from the image the device runs now to `image`, when the server has one for
    /// exactly that base. The device may use it instead of the full image and must fall back to the
    /// full image if the delta fails in any way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<TargetRef>,
    /// How the update is applied.
    #[serde(default)]
    pub update_type: UpdateType,
    /// Which attempt this is (1 for the first).
    #[serde(default = "one")]
    pub attempt: u32,
}

fn one() -> u32 {
    1
}

/// A file in the TUF repository: its target path (relative to `/api/device/v1/tuf/targets/`,
/// before the consistent-snapshot hash prefix) and, as a hint for progress bars, its length and
/// sha256. The device verifies against the signed `targets.json`, not against these hints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TargetRef {
    /// E.g. `sensor-hub/1.3.0/firmware.img`.
    pub target: String,
    pub length: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// How an offered update is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdateType {
    /// Download, install and reboot as soon as possible.
    #[default]
    Forced,
    /// Download and install; reboot when the device's application allows it (the agent's
    /// `reboot_hook` may defer it).
    Soft,
    /// Download and verify only; install when a later offer says so.
    DownloadOnly,
}

/// The state of one device's deployment. The device reports the steps up to `verifying` and the
/// outcomes `succeeded`, `failed` and `rolled_back`; `pending`, `timed_out` and `canceled` are set by
/// the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Pending,
    Downloading,
    Downloaded,
    Installing,
    Rebooting,
    Verifying,
    /// Booted the new image from its new slot and passed the health checks.
    Succeeded,
    /// Did not install; the device stayed on its working image.
    Failed,
    /// Installed, but the new image failed to boot or failed its health check; the device went
    /// back to the previous slot.
    RolledBack,
    TimedOut,
    Canceled,
}

impl DeploymentState {
    /// Every state, in lifecycle order.
    pub const ALL: [DeploymentState; 11] = [
        DeploymentState::Pending,
        DeploymentState::Downloading,
        DeploymentState::Downloaded,
        DeploymentState::Installing,
        DeploymentState::Rebooting,
        DeploymentState::Verifying,
        DeploymentState::Succeeded,
        DeploymentState::Failed,
        DeploymentState::RolledBack,
        DeploymentState::TimedOut,
        DeploymentState::Canceled,
    ];

    /// The wire name (`rolled_back`).
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Pending => "pending",
            DeploymentState::Downloading => "downloading",
            DeploymentState::Downloaded => "downloaded",
            DeploymentState::Installing => "installing",
            DeploymentState::Rebooting => "rebooting",
            DeploymentState::Verifying => "verifying",
            DeploymentState::Succeeded => "succeeded",
            DeploymentState::Failed => "failed",
            DeploymentState::RolledBack => "rolled_back",
            DeploymentState::TimedOut => "timed_out",
            DeploymentState::Canceled => "canceled",
        }
    }

    /// Parses the wire name.
    pub fn parse(name: &str) -> Option<DeploymentState> {
        DeploymentState::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// Whether the deployment is over (no further step will follow).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeploymentState::Succeeded
                | DeploymentState::Failed
                | DeploymentState::RolledBack
                | DeploymentState::TimedOut
                | DeploymentState::Canceled
        )
    }

    /// Whether a device may report this state (the others are the server's).
    pub fn is_reportable(self) -> bool {
        !matches!(
            self,
            DeploymentState::Pending | DeploymentState::TimedOut | DeploymentState::Canceled
        )
    }
}

/// Why a device did not complete an update. `Incompatible` and `BelowSecurityFloor` are refusals:
/// retrying the same image cannot succeed, so rollouts never retry them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The signed metadata says the image is not for this device type or hardware revision.
    Incompatible,
    /// The image's version is below the device's anti-rollback floor.
    BelowSecurityFloor,
    /// TUF metadata or the image failed verification (signature, threshold, expiry, rollback or
    /// freeze attack, hash or length mismatch).
    VerificationFailed,
    /// The download did not complete (network, server, disk).
    DownloadFailed,
    /// Writing the inactive slot or switching the boot slot failed.
    InstallFailed,
    /// The new slot did not boot (the bootloader fell back).
    BootFailed,
    /// The new image booted but failed a post-boot health check or the watchdog expired.
    HealthCheckFailed,
    /// Anything else; see the reason.
    Other,
}

impl FailureKind {
    /// Refusals that no retry can fix.
    pub fn is_refusal(self) -> bool {
        matches!(
            self,
            FailureKind::Incompatible | FailureKind::BelowSecurityFloor
        )
    }
}

/// A device's report of a deployment step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentReport {
    pub state: DeploymentState,
    /// For `failed` and `rolled_back`: what went wrong, in words an operator can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureKind>,
    /// While downloading: bytes received so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<u64>,
    /// The firmware version the device is running when it reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub firmware: Option<Version>,
    /// Whether the device used the delta rather than the full image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_delta: Option<bool>,
}

/// A report published on `drover/{id}/deployments/status`: the report with its deployment id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentReportMessage {
    pub deployment: DeploymentId,
    #[serde(flatten)]
    pub report: DeploymentReport,
}

/// The signed facts about an image that Drover puts in each TUF target's `custom` object. The
/// device trusts these only after verifying `targets.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TargetCustom {
    /// Artifact name (e.g. `sensor-hub-fw`).
    pub name: String,
    #[schema(value_type = String)]
    pub version: Version,
    /// Device types the image runs on.
    pub device_types: Vec<String>,
    /// Hardware revisions it runs on; empty means every revision of those types.
    #[serde(default)]
    pub hw_revs: Vec<String>,
    /// `full` for an image, `delta` for a binary patch.
    pub kind: TargetKind,
    /// For a delta: the sha256 of the image it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_sha256: Option<String>,
    /// For a delta: the target path of the full image it produces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_target: Option<String>,
    /// Installing this image raises the device's anti-rollback floor to this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub security_floor: Option<Version>,
}

/// Whether a TUF target is a full image or a delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Full,
    Delta,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_states_round_trip_through_their_wire_names() {
        for state in DeploymentState::ALL {
            assert_eq!(DeploymentState::parse(state.as_str()), Some(state));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.as_str()));
        }
    }

    #[test]
    fn a_report_with_an_unknown_field_is_refused() {
        let err = serde_json::from_str::<DeploymentReport>(r#"{"state":"failed","why":"x"}"#);
        assert!(err.is_err());
    }

    #[test]
    fn an_mqtt_report_carries_its_deployment_beside_the_report() {
        let message: DeploymentReportMessage =
            serde_json::from_str(r#"{"deployment":7,"state":"downloading","bytes_done":10}"#)
                .unwrap();
        assert_eq!(message.deployment, DeploymentId(7));
        assert_eq!(message.report.bytes_done, Some(10));
    }
}
