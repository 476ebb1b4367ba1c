//! Fleet queries over heartbeat metrics and the link score: SQL over `device_health` selects exactly
//! the devices that in-memory evaluation with each device's latest metrics does, including devices
//! that never sent a heartbeat and heartbeats that lack the metric tested.

use std::collections::{BTreeMap, BTreeSet};

use drover_core::health::MetricName;
use drover_proto::device_api::Heartbeat;
use drover_proto::devices::{DeviceSort, SortOrder};
use drover_store::{HeartbeatRecord, IngestOptions};

use crate::support::*;

/// Each query and the devices it must select, sorted by id. The fleet is `low` (battery 2.9 V, hot,
/// weak radio), `ok` (battery 3.7 V after an earlier 2.5 V reading), `custom` (only a custom metric
/// and a temperature) and `silent` (no heartbeat at all).
const CASES: &[(&str, &[&str])] = &[
    ("battery_v < 3.0", &["low"]),
    ("battery_v < 3", &["low"]),
    ("NOT battery_v < 3.0", &["custom", "ok", "silent"]),
    ("battery_v >= 3.0", &["ok"]),
    ("battery_v = 2.9", &["low"]),
    ("battery_v != 2.9", &["ok"]),
    ("battery_v IN (2.9, 3.7)", &["low", "ok"]),
    ("battery_v NOT IN (2.9)", &["ok"]),
    ("NOT battery_v IN (2.9)", &["custom", "ok", "silent"]),
    ("metrics.battery_v > 3.5", &["ok"]),
    ("metrics.custom_x > 1", &["custom"]),
    ("metrics.custom_x = 2", &["custom"]),
    ("metrics.custom_x <= 1", &[]),
    ("NOT metrics.custom_x > 1", &["low", "ok", "silent"]),
    ("metrics.never_sent != 0", &[]),
    ("temp_c >= 70", &["low", "ok"]),
    ("temp_c >= 70 AND connectivity = online", &["ok"]),
    (
        "status = active AND NOT temp_c < 50",
        &["low", "ok", "silent"],
    ),
    ("rssi_dbm < -100", &["low"]),
    ("rssi_dbm >= -100", &["ok"]),
    (
        "battery_v < 3.0 OR metrics.custom_x > 1",
        &["custom", "low"],
    ),
    ("link_score >= 0", &["custom", "low", "ok"]),
    ("link_score < 60", &["low"]),
    ("link_score != 100", &["low"]),
    ("link_score IN (50, 100)", &["custom", "low", "ok"]),
    ("NOT link_score >= 0", &["silent"]),
];

fn heartbeat(
    device: &str,
    received_at: drover_core::Timestamp,
    metrics: &[(&str, f64)],
) -> HeartbeatRecord {
    HeartbeatRecord {
        device: id(device),
        received_at,
        heartbeat: Heartbeat {
            sent_at: None,
            firmware: None,
            interval_s: None,
            boot_slot: None,
            metrics: metrics
                .iter()
                .map(|(name, value)| (MetricName::parse(name).unwrap(), *value))
                .collect(),
        },
    }
}

contract_tests! {
    /// Metric and link-score queries select the same devices through `list_devices`, `count_devices`
    /// and in-memory evaluation with the latest metrics; a missing reading matches no comparison
    /// and so matches under `NOT`.
    async fn metric_queries_select_by_the_latest_heartbeat_in_sql_as_in_memory(store: Store) {
        for name in ["custom", "low", "ok", "silent"] {
            create_active(&store, name, at(0)).await;
        }
        let options = IngestOptions::default();
        let first = vec![
            heartbeat("low", at(1), &[("battery_v", 2.9), ("temp_c", 80.0), ("rssi_dbm", -110.0)]),
            heartbeat("ok", at(1), &[("battery_v", 2.5)]),
            heartbeat("custom", at(1), &[("custom_x", 2.0), ("temp_c", 20.0)]),
        ];
        store.record_heartbeats(first, options).await.unwrap();
        // Only the latest heartbeat counts: "ok" no longer reads 2.5 V.
        let second = vec![heartbeat("ok", at(2), &[("battery_v", 3.7), ("temp_c", 75.0), ("rssi_dbm", -70.0)])];
        store.record_heartbeats(second, options).await.unwrap();

        // The reference: each device as stored, with its latest metrics (none for "silent").
        let mut loaded = Vec::new();
        for name in ["custom", "low", "ok", "silent"] {
            let device = store.get_device(&id(name)).await.unwrap();
            let metrics: Option<BTreeMap<String, f64>> =
                store.device_health(&id(name)).await.unwrap().map(|health| health.metrics);
            let groups = store.device_groups(&id(name), NOW).await.unwrap();
            loaded.push((device, metrics, groups));
        }
        let link_scores: Vec<Option<u8>> = loaded.iter().map(|(device, _, _)| device.link_score).collect();
        assert_eq!(link_scores, vec![Some(100), Some(50), Some(100), None]);
        assert!(loaded[3].1.is_none(), "silent has no health row");

        let mut failures = Vec::new();
        for (query_idx, (text, expected)) in CASES.iter().enumerate() {
            let parsed = query(text);
            let expected: BTreeSet<String> = expected.iter().map(|name| (*name).to_owned()).collect();
            let in_memory: BTreeSet<String> = loaded
                .iter()
                .filter(|(device, metrics, groups)| parsed.matches_with_metrics(device, groups, metrics.as_ref(), NOW))
                .map(|(device, _, _)| device.id.as_str().to_owned())
                .collect();
            // Small pages in varying orders, so metric parameters mix with cursor parameters.
            let sort = [DeviceSort::Id, DeviceSort::LastSeen, DeviceSort::CreatedAt][query_idx % 3];
            let order = if query_idx % 2 == 0 { SortOrder::Asc } else { SortOrder::Desc };
            let (listed, _) = list_all(&store, &parsed, sort, order, 2, NOW).await;
            let listed: BTreeSet<String> = ids_of(&listed).into_iter().collect();
            let counted = store.count_devices(&parsed, NOW).await.unwrap();
            if in_memory != expected || listed != expected || counted != expected.len() as u64 {
                failures.push(format!(
                    "{text:?}: expected {expected:?}; in memory {in_memory:?}; listed {listed:?}; counted {counted}"
                ));
            }
        }
        assert!(failures.is_empty(), "metric queries disagree:\n{}", failures.join("\n"));

        // A dynamic group over a metric: its member count (SQL) and each device's groups (in
        // memory, with the latest metrics) agree.
        let new = drover_proto::groups::NewGroup {
            name: group("low-battery"),
            query: Some("battery_v < 3.0".into()),
            parent: None,
            description: String::new(),
        };
        store.create_group(&operator(), new, at(3)).await.unwrap();
        let view = store.get_group(&group("low-battery"), NOW).await.unwrap();
        assert_eq!(view.member_count, Some(1), "{view:?}");
        for (name, member) in [("low", true), ("ok", false), ("silent", false), ("custom", false)] {
            let groups = store.device_groups(&id(name), NOW).await.unwrap();
            assert_eq!(groups.contains(&group("low-battery")), member, "{name}: {groups:?}");
        }
    }
}
