//! Fleet rollups: device counts per (status, connectivity, firmware, region) follow every kind of
//! device change — before and after the deltas are folded — and the per-version history is
//! snapshotted only when it changed, read back downsampled and pruned.

use std::collections::BTreeMap;

use drover_core::health::MetricName;
use drover_core::{DeviceStatus, Timestamp};
use drover_proto::device_api::Heartbeat;
use drover_proto::devices::{DevicePatch, NewDevice, OnConflict};
use drover_store::{HeartbeatRecord, ImportMsg, ImportRow, IngestOptions, Store};

use crate::support::*;

type Key = (&'static str, &'static str, &'static str, &'static str);

/// The counts as a map, checked to be the same before and after folding the deltas.
async fn counts(store: &Store) -> BTreeMap<(String, String, String, String), u64> {
    let read = |counts: Vec<drover_store::FleetCount>| {
        counts
            .into_iter()
            .map(|c| ((c.status, c.connectivity, c.firmware, c.region), c.devices))
            .collect::<BTreeMap<_, _>>()
    };
    let before = read(store.fleet_counts().await.unwrap());
    store.fold_fleet_counts().await.unwrap();
    assert_eq!(
        store.fold_fleet_counts().await.unwrap(),
        0,
        "nothing left to fold"
    );
    let after = read(store.fleet_counts().await.unwrap());
    assert_eq!(before, after, "folding changes no count");
    after
}

fn expect(entries: &[(Key, u64)]) -> BTreeMap<(String, String, String, String), u64> {
    entries
        .iter()
        .map(|((s, c, f, r), n)| {
            (
                (s.to_string(), c.to_string(), f.to_string(), r.to_string()),
                *n,
            )
        })
        .collect()
}

fn heartbeat(device: &str, received_at: Timestamp, firmware: Option<&str>) -> HeartbeatRecord {
    HeartbeatRecord {
        device: id(device),
        received_at,
        heartbeat: Heartbeat {
            sent_at: None,
            firmware: firmware.map(version),
            interval_s: Some(600),
            boot_slot: None,
            metrics: BTreeMap::from([(MetricName::parse("cpu_pct").unwrap(), 5.0)]),
        },
    }
}

async fn create(store: &Store, device_id: &str, firmware: Option<&str>, region: Option<&str>) {
    let new = NewDevice {
        status: Some(DeviceStatus::Active),
        firmware: firmware.map(version),
        region: region.map(label),
        ..new_device(device_id)
    };
    store.create_device(&operator(), new, at(0)).await.unwrap();
}

async fn patch(store: &Store, device_id: &str, patch: DevicePatch) {
    store
        .update_device(&operator(), &id(device_id), patch, at(1))
        .await
        .unwrap();
}

contract_tests! {
    /// Every way a counted column changes moves the counts: creation, status, connectivity
    /// (heartbeats and the offline sweep), firmware, region, decommissioning, deletion, import;
    /// a heartbeat that changes nothing counted leaves no delta behind.
    async fn fleet_counts_follow_every_device_change(store: Store) {
        assert_eq!(counts(&store).await, expect(&[]));
        create(&store, "a", Some("1.0.0"), Some("eu")).await;
        create(&store, "b", Some("1.0.0"), Some("eu")).await;
        create(&store, "c", None, None).await;
        assert_eq!(counts(&store).await, expect(&[
            (("active", "unknown", "", ""), 1),
            (("active", "unknown", "1.0.0", "eu"), 2),
        ]));

        patch(&store, "a", DevicePatch { status: Some(DeviceStatus::Inactive), ..Default::default() }).await;
        patch(&store, "b", DevicePatch { firmware: Some(Some(version("1.1.0"))), ..Default::default() }).await;
        patch(&store, "c", DevicePatch { region: Some(Some(label("us"))), ..Default::default() }).await;
        assert_eq!(counts(&store).await, expect(&[
            (("active", "unknown", "", "us"), 1),
            (("active", "unknown", "1.1.0", "eu"), 1),
            (("inactive", "unknown", "1.0.0", "eu"), 1),
        ]));

        // Heartbeats: "b" comes online and reports a new firmware, "c" comes online.
        let options = IngestOptions::default();
        store.record_heartbeats(vec![heartbeat("b", at(2), Some("1.2.0")), heartbeat("c", at(2), None)], options).await.unwrap();
        assert_eq!(counts(&store).await, expect(&[
            (("active", "online", "", "us"), 1),
            (("active", "online", "1.2.0", "eu"), 1),
            (("inactive", "unknown", "1.0.0", "eu"), 1),
        ]));
        // More heartbeats that change nothing counted add no delta: the fold finds nothing.
        store.record_heartbeats(vec![heartbeat("b", at(3), Some("1.2.0")), heartbeat("c", at(3), None)], options).await.unwrap();
        assert_eq!(store.fold_fleet_counts().await.unwrap(), 0, "heartbeats that change no counted column cost no delta");

        // The offline sweep (deadline: 3 × 600 s after the last heartbeat).
        assert_eq!(store.mark_offline(at(3 + 31), 10).await.unwrap().len(), 2);
        assert_eq!(counts(&store).await, expect(&[
            (("active", "offline", "", "us"), 1),
            (("active", "offline", "1.2.0", "eu"), 1),
            (("inactive", "unknown", "1.0.0", "eu"), 1),
        ]));

        store.decommission_device(&operator(), &id("a"), at(40)).await.unwrap();
        store.delete_device(&operator(), &id("c"), at(40)).await.unwrap();
        assert_eq!(counts(&store).await, expect(&[
            (("active", "offline", "1.2.0", "eu"), 1),
            (("decommissioned", "unknown", "1.0.0", "eu"), 1),
        ]));

        // An import of many devices, in batches; counts are exact before any fold.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let producer = tokio::spawn(async move {
            for batch in 0..5u64 {
                let rows = (0..500u64)
                    .map(|n| {
                        let line = batch * 500 + n + 1;
                        let device = NewDevice {
                            status: Some(DeviceStatus::Active),
                            firmware: Some(version(if line % 2 == 0 { "2.0.0" } else { "1.2.0" })),
                            region: Some(label("eu")),
                            ..new_device(&format!("imp-{line}"))
                        };
                        ImportRow { line, device }
                    })
                    .collect();
                tx.send(ImportMsg::Batch(rows)).await.unwrap();
            }
            tx.send(ImportMsg::Commit).await.unwrap();
        });
        store.import_devices(&operator(), OnConflict::Error, rx, at(50)).await.unwrap();
        producer.await.unwrap();
        let unfolded: u64 = store.fleet_counts().await.unwrap().iter().map(|c| c.devices).sum();
        assert_eq!(unfolded, 2502);
        assert_eq!(counts(&store).await, expect(&[
            (("active", "offline", "1.2.0", "eu"), 1),
            (("active", "unknown", "1.2.0", "eu"), 1250),
            (("active", "unknown", "2.0.0", "eu"), 1250),
            (("decommissioned", "unknown", "1.0.0", "eu"), 1),
        ]));
    }

    /// A snapshot is written only when accepted devices per version changed; a version that
    /// disappears ends at zero; history is downsampled and pruned.
    async fn version_history_is_snapshotted_only_when_it_changes(store: Store) {
        assert!(!store.snapshot_versions(at(0)).await.unwrap(), "an empty fleet has nothing to record");
        create(&store, "a", Some("1.0.0"), None).await;
        create(&store, "b", Some("1.0.0"), None).await;
        // Not accepted: not in the version history.
        store.create_device(&operator(), NewDevice { firmware: Some(version("9.9.9")), ..new_device("p") }, at(0)).await.unwrap();
        assert!(store.snapshot_versions(at(1)).await.unwrap());
        assert!(!store.snapshot_versions(at(2)).await.unwrap(), "unchanged");
        patch(&store, "a", DevicePatch { firmware: Some(Some(version("1.1.0"))), ..Default::default() }).await;
        assert!(store.snapshot_versions(at(3)).await.unwrap());
        patch(&store, "b", DevicePatch { firmware: Some(Some(version("1.1.0"))), ..Default::default() }).await;
        let tick = store.fleet_rollup_tick(at(4), at(-1000)).await.unwrap().expect("no other replica");
        assert!(tick.snapshot);
        assert!(tick.folded > 0);
        assert_eq!(store.fleet_rollup_tick(at(5), at(-1000)).await.unwrap().unwrap(), drover_store::FleetTick::default());

        let versions = vec!["1.0.0".to_owned(), "1.1.0".to_owned()];
        let history = store.version_history(at(0), at(10), versions.clone(), 100).await.unwrap();
        let points: Vec<(Timestamp, Vec<(&str, u64)>)> = history
            .iter()
            .map(|s| (s.at, s.versions.iter().map(|(v, n)| (v.as_str(), *n)).collect()))
            .collect();
        assert_eq!(points, vec![
            (at(1), vec![("1.0.0", 2)]),
            (at(3), vec![("1.0.0", 1), ("1.1.0", 1)]),
            (at(4), vec![("1.1.0", 2)]),
        ]);
        // Two buckets from the first snapshot (minute 1) to the end: the last snapshot of each.
        let coarse = store.version_history(at(0), at(10), versions.clone(), 2).await.unwrap();
        assert_eq!(coarse.iter().map(|s| s.at).collect::<Vec<_>>(), vec![at(4)]);
        let coarse = store.version_history(at(0), at(6), versions.clone(), 2).await.unwrap();
        assert_eq!(coarse.iter().map(|s| s.at).collect::<Vec<_>>(), vec![at(3), at(4)]);
        // A long window over a young history keeps its detail: the grid starts at minute 1.
        let long = store.version_history(at(-100_000), at(10), versions.clone(), 100).await.unwrap();
        assert_eq!(long.len(), 3);
        // No version list: every version.
        let all = store.version_history(at(0), at(10), Vec::new(), 100).await.unwrap();
        assert_eq!(all, history);
        assert_eq!(store.version_history(at(2), at(10), versions.clone(), 100).await.unwrap().len(), 2);

        assert_eq!(store.prune_version_history(at(3)).await.unwrap(), 1);
        let left = store.version_history(at(0), at(10), versions, 100).await.unwrap();
        assert_eq!(left.iter().map(|s| s.at).collect::<Vec<_>>(), vec![at(3), at(4)]);
    }
}
