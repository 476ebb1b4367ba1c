//! The device record as the domain sees it, and its lifecycle.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, DeviceType, HardwareId, Label, TagKey, TagValue};
use crate::time::Timestamp;
use crate::version::Version;

/// Where a device is in its life.
///
/// `pending` and `rejected` are for devices that asked to join without a claim token (an operator
/// accepts or rejects them); `provisioning` is a pre-authorised device that has not yet fetched its
/// credential; `active`, `inactive` and `error` are operating states; `decommissioned` is final: the
/// credential is revoked, history is kept, and the hardware id is free for a replacement unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    Pending,
    Rejected,
    Provisioning,
    Active,
    Inactive,
    Error,
    Decommissioned,
}

impl DeviceStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [DeviceStatus; 7] = [
        DeviceStatus::Pending,
        DeviceStatus::Rejected,
        DeviceStatus::Provisioning,
        DeviceStatus::Active,
        DeviceStatus::Inactive,
        DeviceStatus::Error,
        DeviceStatus::Decommissioned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Pending => "pending",
            DeviceStatus::Rejected => "rejected",
            DeviceStatus::Provisioning => "provisioning",
            DeviceStatus::Active => "active",
            DeviceStatus::Inactive => "inactive",
            DeviceStatus::Error => "error",
            DeviceStatus::Decommissioned => "decommissioned",
        }
    }

    /// Parses the lower-case name; the error lists the valid names.
    pub fn parse(text: &str) -> Result<DeviceStatus, String> {
        DeviceStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = DeviceStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "unknown device status {text:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }

    /// Whether an operator may move a device from `self` to `to` by editing it. Provisioning, accepting,
    /// rejecting and decommissioning have their own operations and are not plain edits.
    pub fn can_set_to(self, to: DeviceStatus) -> bool {
        use DeviceStatus::*;
        if self == to {
            return true;
        }
        matches!(
            (self, to),
            (Active | Inactive | Error, Active | Inactive | Error)
        )
    }

    /// Live devices hold their hardware id; decommissioned and rejected ones release it.
    pub fn holds_hardware_id(self) -> bool {
        !matches!(self, DeviceStatus::Decommissioned | DeviceStatus::Rejected)
    }
}

impl fmt::Display for DeviceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub id: DeviceId,
    pub device_type: DeviceType,
    /// Hardware id or serial; unique among devices that hold one (see [`DeviceStatus::holds_hardware_id`]).
    pub hw_id: Option<HardwareId>,
    pub hw_rev: Option<Label>,
    pub site: Option<Label>,
    pub region: Option<Label>,
    pub status: DeviceStatus,
    /// The firmware version the device last reported (or was registered with).
    pub firmware: Option<Version>,
    pub tags: BTreeMap<TagKey, TagValue>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the device last talked to Drover; `None` if it never has.
    pub last_seen: Option<Timestamp>,
}
