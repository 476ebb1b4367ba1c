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

/// Whether a device is reachable, from its heartbeats.
///
/// `online` and `degraded` are set by each heartbeat (`degraded` when it reports poor link quality:
/// see [`Connectivity::from_link`]); `offline` when no heartbeat arrived within the device's
/// announced interval times the grace factor; `unknown` until the first heartbeat.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Connectivity {
    #[default]
    Unknown,
    Online,
    Degraded,
    Offline,
}

/// Link-quality limits beyond which a reporting device counts as degraded.
pub const DEGRADED_PACKET_LOSS_PCT: f64 = 10.0;
pub const DEGRADED_RSSI_DBM: f64 = -105.0;
pub const DEGRADED_SNR_DB: f64 = 0.0;
/// Reconnections between two heartbeats from which a device counts as degraded.
pub const DEGRADED_RECONNECTS: f64 = 3.0;

impl Connectivity {
    pub const ALL: [Connectivity; 4] = [
        Connectivity::Unknown,
        Connectivity::Online,
        Connectivity::Degraded,
        Connectivity::Offline,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Connectivity::Unknown => "unknown",
            Connectivity::Online => "online",
            Connectivity::Degraded => "degraded",
            Connectivity::Offline => "offline",
        }
    }

    pub fn parse(text: &str) -> Result<Connectivity, String> {
        Connectivity::ALL
            .into_iter()
            .find(|c| c.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown connectivity {text:?} (expected unknown, online, degraded or offline)"
                )
            })
    }
}

/// The link metrics of one heartbeat that decide its connectivity; absent ones count as fine.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkQuality {
    pub packet_loss_pct: Option<f64>,
    pub rssi_dbm: Option<f64>,
    pub snr_db: Option<f64>,
    /// Reconnections since the previous heartbeat.
    pub reconnects: Option<f64>,
}

impl LinkQuality {
    /// The state a heartbeat with this link puts a device in: `degraded` when packet loss exceeds
    /// 10 %, RSSI is below −105 dBm, SNR below 0 dB or it reconnected 3 times or more since its
    /// previous heartbeat; otherwise `online`.
    pub fn state(&self) -> Connectivity {
        let poor = self
            .packet_loss_pct
            .is_some_and(|v| v > DEGRADED_PACKET_LOSS_PCT)
            || self.rssi_dbm.is_some_and(|v| v < DEGRADED_RSSI_DBM)
            || self.snr_db.is_some_and(|v| v < DEGRADED_SNR_DB)
            || self.reconnects.is_some_and(|v| v >= DEGRADED_RECONNECTS);
        if poor {
            Connectivity::Degraded
        } else {
            Connectivity::Online
        }
    }

    /// Link quality from 0 (unusable) to 100 (perfect): 100 minus a penalty per metric, each capped
    /// — 4 points per % of packet loss (max 60), 2.5 per dB of RSSI below −90 dBm (max 50), 4 per
    /// dB of SNR below 10 dB (max 50), 20 per reconnection (max 60). A link at exactly one
    /// `degraded` limit scores about 60; two such problems score near zero.
    pub fn score(&self) -> u8 {
        let penalty = |value: Option<f64>, f: &dyn Fn(f64) -> f64, cap: f64| {
            value
                .filter(|v| v.is_finite())
                .map_or(0.0, |v| f(v).clamp(0.0, cap))
        };
        let total = penalty(self.packet_loss_pct, &|v| 4.0 * v, 60.0)
            + penalty(self.rssi_dbm, &|v| 2.5 * (-90.0 - v), 50.0)
            + penalty(self.snr_db, &|v| 4.0 * (10.0 - v), 50.0)
            + penalty(self.reconnects, &|v| 20.0 * v, 60.0);
        (100.0 - total).clamp(0.0, 100.0).round() as u8
    }
}

impl fmt::Display for Connectivity {
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
    /// Reachability from heartbeats (maintained by ingest and the offline detector, not edited).
    #[serde(default)]
    pub connectivity: Connectivity,
    /// Link quality of the latest heartbeat, 0–100 (see [`LinkQuality::score`]).
    #[serde(default)]
    pub link_score: Option<u8>,
}

#[cfg(test)]
mod link_tests {
    use super::*;

    #[test]
    fn a_clean_link_is_online_and_scores_full() {
        let link = LinkQuality {
            packet_loss_pct: Some(0.5),
            rssi_dbm: Some(-70.0),
            snr_db: Some(20.0),
            reconnects: Some(0.0),
        };
        assert_eq!((link.state(), link.score()), (Connectivity::Online, 98));
        assert_eq!(
            (
                LinkQuality::default().state(),
                LinkQuality::default().score()
            ),
            (Connectivity::Online, 100)
        );
    }

    #[test]
    fn each_limit_alone_degrades_the_link() {
        for link in [
            LinkQuality {
                packet_loss_pct: Some(10.5),
                ..LinkQuality::default()
            },
            LinkQuality {
                rssi_dbm: Some(-106.0),
                ..LinkQuality::default()
            },
            LinkQuality {
                snr_db: Some(-0.5),
                ..LinkQuality::default()
            },
            LinkQuality {
                reconnects: Some(3.0),
                ..LinkQuality::default()
            },
        ] {
            assert_eq!(link.state(), Connectivity::Degraded, "{link:?}");
            assert!(
                (40..=60).contains(&link.score()),
                "{link:?} scored {}",
                link.score()
            );
        }
        let awful = LinkQuality {
            packet_loss_pct: Some(40.0),
            rssi_dbm: Some(-120.0),
            snr_db: Some(-10.0),
            reconnects: Some(9.0),
        };
        assert_eq!(awful.score(), 0);
        let nonsense = LinkQuality {
            packet_loss_pct: Some(f64::NAN),
            ..LinkQuality::default()
        };
        assert_eq!(nonsense.score(), 100);
    }
}
