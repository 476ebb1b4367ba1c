//! Heartbeat ingest: last-seen, reported firmware, latest health, raw samples and cohort rollups.

use std::collections::BTreeMap;

use drover_core::health::MetricName;
use drover_core::{Connectivity, Duration, Timestamp};
use drover_proto::device_api::Heartbeat;
use drover_store::{ConnectivityChange, HeartbeatRecord, IngestOptions};

use crate::support::*;

fn heartbeat(
    device: &str,
    received_at: Timestamp,
    sent_at: Option<Timestamp>,
    firmware: Option<&str>,
    metrics: &[(&str, f64)],
) -> HeartbeatRecord {
    HeartbeatRecord {
        device: id(device),
        received_at,
        heartbeat: Heartbeat {
            sent_at,
            firmware: firmware.map(version),
            interval_s: None,
            boot_slot: None,
            metrics: metrics
                .iter()
                .map(|(k, v)| (MetricName::parse(k).unwrap(), *v))
                .collect::<BTreeMap<_, _>>(),
        },
    }
}

contract_tests! {
    /// A batch updates last-seen and firmware, keeps the newest health, stores every sample and
    /// merges rollups per firmware, metric and minute; unknown devices are skipped.
    async fn heartbeats_update_health_firmware_and_cohort_rollups(store: Store) {
        create_active(&store, "hb-1", at(0)).await;
        create_active(&store, "hb-2", at(0)).await;
        let options = IngestOptions { bucket: Duration::from_secs(60), ..IngestOptions::default() };
        let batch = vec![
            heartbeat("hb-1", at(10), None, Some("2.3.0"), &[("battery_v", 3.7), ("temp_c", -5.0)]),
            heartbeat("hb-2", at(10), None, Some("2.3.0"), &[("battery_v", 3.9)]),
            // Buffered while offline: older than what hb-1 just sent; must not replace its latest.
            heartbeat("hb-1", at(10), Some(at(5)), Some("2.2.0"), &[("battery_v", 4.1)]),
            heartbeat("ghost", at(10), None, None, &[("battery_v", 1.0)]),
        ];
        assert_eq!(store.record_heartbeats(batch, options).await.unwrap(), 3);

        let device = store.get_device(&id("hb-1")).await.unwrap();
        assert_eq!(device.last_seen, Some(at(10)));
        assert_eq!(device.firmware, Some(version("2.3.0")));
        assert_eq!(ids_matching(&store, "firmware = 2.3.0").await, strings(&["hb-1", "hb-2"]));
        let health = store.device_health(&id("hb-1")).await.unwrap().unwrap();
        assert_eq!(health.observed_at, at(10));
        assert_eq!(health.metrics, BTreeMap::from([("battery_v".to_owned(), 3.7), ("temp_c".to_owned(), -5.0)]));
        assert_eq!(store.device_health(&id("hb-2")).await.unwrap().unwrap().metrics["battery_v"], 3.9);

        let rollups = store.cohort_rollups("2.3.0", "battery_v", at(0), at(60)).await.unwrap();
        assert_eq!(rollups.len(), 1);
        assert_eq!(rollups[0].bucket, at(10));
        assert_eq!(rollups[0].rollup.count, 2);
        assert!((rollups[0].rollup.sum - 7.6).abs() < 1e-9);
        assert_eq!((rollups[0].rollup.min, rollups[0].rollup.max), (3.7, 3.9));
        let old = store.cohort_rollups("2.2.0", "battery_v", at(0), at(60)).await.unwrap();
        assert_eq!((old.len(), old[0].bucket, old[0].rollup.count), (1, at(5), 1));

        // A second batch in the same bucket merges into the stored rollup.
        store.record_heartbeats(vec![heartbeat("hb-2", at(10), None, None, &[("battery_v", 3.5)])], options).await.unwrap();
        let merged = store.cohort_rollups("2.3.0", "battery_v", at(0), at(60)).await.unwrap();
        assert_eq!((merged[0].rollup.count, merged[0].rollup.min), (3, 3.5));
        assert_eq!(merged[0].rollup.sketch.count(), 3);

        // Raw samples: every one kept, oldest observation first, the buffered one included.
        let observed = |samples: Vec<drover_store::HealthSample>| samples.iter().map(|s| s.observed_at).collect::<Vec<_>>();
        assert_eq!(observed(store.health_samples(&id("hb-1"), at(0), 100).await.unwrap()), vec![at(5), at(10)]);
        assert_eq!(observed(store.health_samples(&id("hb-1"), at(6), 100).await.unwrap()), vec![at(10)]);
        assert_eq!(observed(store.health_samples(&id("hb-2"), at(0), 1).await.unwrap()), vec![at(10)], "the newest, when limited");
        assert_eq!(store.health_samples(&id("hb-2"), at(0), 100).await.unwrap().len(), 2);
        // Retention counts from receipt: the buffered sample arrived at 10 like the others.
        assert_eq!(store.prune_heartbeat_samples(at(6)).await.unwrap(), 0, "all were received at 10");
        assert_eq!(store.prune_heartbeat_samples(at(11)).await.unwrap(), 4);
        assert_eq!(store.health_samples(&id("hb-1"), at(0), 100).await.unwrap(), vec![]);
    }

    /// Each device's samples form a chain of their own across batches; a device's samples are
    /// read back exactly, and deleting the device deletes its samples and no one else's.
    async fn sample_chains_keep_each_devices_samples_apart(store: Store) {
        for name in ["ch-a", "ch-b", "ch-c"] {
            create_active(&store, name, at(0)).await;
        }
        let options = IngestOptions::default();
        for minute in 1..=5 {
            // Interleaved devices, a device twice in one batch, and batches that skip a device.
            let mut batch = vec![heartbeat("ch-a", at(minute), None, None, &[("n", minute as f64)])];
            if minute % 2 == 1 {
                batch.push(heartbeat("ch-b", at(minute), None, None, &[("n", 10.0 + minute as f64)]));
            }
            batch.push(heartbeat("ch-a", at(minute), Some(Timestamp::from_millis(at(minute).as_millis() - 1000)), None, &[("n", 0.5)]));
            store.record_heartbeats(batch, options).await.unwrap();
        }
        let values = |samples: Vec<drover_store::HealthSample>| samples.iter().map(|s| s.metrics["n"]).collect::<Vec<_>>();
        assert_eq!(values(store.health_samples(&id("ch-a"), at(0), 100).await.unwrap()),
                   vec![0.5, 1.0, 0.5, 2.0, 0.5, 3.0, 0.5, 4.0, 0.5, 5.0]);
        assert_eq!(values(store.health_samples(&id("ch-b"), at(0), 100).await.unwrap()), vec![11.0, 13.0, 15.0]);
        assert_eq!(values(store.health_samples(&id("ch-b"), at(3), 100).await.unwrap()), vec![13.0, 15.0]);
        // Since minute 4: 4.0, the reading buffered just before minute 5, and 5.0; the newest two.
        assert_eq!(values(store.health_samples(&id("ch-a"), at(4), 2).await.unwrap()), vec![0.5, 5.0]);
        assert_eq!(store.health_samples(&id("ch-c"), at(0), 100).await.unwrap(), vec![]);

        store.delete_device(&operator(), &id("ch-b"), at(6)).await.unwrap();
        assert_eq!(store.prune_heartbeat_samples(at(100)).await.unwrap(), 10, "only ch-a's samples were left");

        // With every sample pruned, new ones start new chains that lead nowhere else: ch-a's head
        // still names a pruned sample, whose number no new sample takes.
        let burst = (0..20).map(|_| heartbeat("ch-c", at(101), None, None, &[("n", 21.0)])).collect();
        store.record_heartbeats(burst, options).await.unwrap();
        store.record_heartbeats(vec![heartbeat("ch-a", at(102), None, None, &[("n", 22.0)])], options).await.unwrap();
        assert_eq!(values(store.health_samples(&id("ch-a"), at(0), 100).await.unwrap()), vec![22.0]);
        assert_eq!(values(store.health_samples(&id("ch-c"), at(0), 100).await.unwrap()), vec![21.0; 20]);
    }

    /// Heartbeats set devices online or degraded with a link score; the detector marks offline
    /// exactly the devices past interval x grace, once; every change is kept as history.
    async fn connectivity_follows_heartbeats_and_their_deadlines(store: Store) {
        for name in ["good", "weak", "quiet", "silent"] {
            create_active(&store, name, at(0)).await;
        }
        let options = IngestOptions { default_interval: Duration::from_secs(3600), offline_grace: 3, ..IngestOptions::default() };
        let mut fast = heartbeat("quiet", at(0), None, None, &[]);
        fast.heartbeat.interval_s = Some(600);
        let batch = vec![
            heartbeat("good", at(0), None, None, &[("rssi_dbm", -70.0), ("packet_loss_pct", 0.0)]),
            heartbeat("weak", at(0), None, None, &[("rssi_dbm", -110.0)]),
            fast,
        ];
        store.record_heartbeats(batch, options).await.unwrap();
        let state = |name: &'static str| {
            let store = store.clone();
            async move {
                let device = store.get_device(&id(name)).await.unwrap();
                (device.connectivity, device.link_score)
            }
        };
        assert_eq!(state("good").await, (Connectivity::Online, Some(100)));
        assert_eq!(state("weak").await, (Connectivity::Degraded, Some(50)));
        assert_eq!(state("silent").await, (Connectivity::Unknown, None));
        assert_eq!(ids_matching(&store, "connectivity = degraded").await, strings(&["weak"]));
        assert_eq!(ids_matching(&store, "connectivity IN (online, degraded)").await, strings(&["good", "quiet", "weak"]));

        // "quiet" announced 10 minutes: offline after 30. The others use the default hour: after 180.
        assert_eq!(store.mark_offline(at(30), 100).await.unwrap(), vec![], "the deadline itself is not past");
        assert_eq!(store.mark_offline(at(31), 100).await.unwrap(), vec![id("quiet")]);
        assert_eq!(store.mark_offline(at(31), 100).await.unwrap(), vec![], "marked once");
        assert_eq!(state("quiet").await.0, Connectivity::Offline);
        // After silence even a buffered, older reading is news: the device is reachable, and that
        // reading is the latest word on its link.
        let mut flushed = heartbeat("quiet", at(40), Some(at(-5)), None, &[("rssi_dbm", -120.0)]);
        flushed.heartbeat.interval_s = Some(600);
        store.record_heartbeats(vec![flushed], options).await.unwrap();
        assert_eq!(state("quiet").await, (Connectivity::Degraded, Some(50)));
        assert_eq!(store.mark_offline(at(69), 100).await.unwrap(), vec![], "deadline moved to 40 + 30");
        assert_eq!(store.mark_offline(at(71), 100).await.unwrap(), vec![id("quiet")]);
        // "good" reports again and stays online; "weak" goes silent.
        store.record_heartbeats(vec![heartbeat("good", at(150), None, None, &[])], options).await.unwrap();
        // A buffered reading older than the latest one extends the deadline but does not speak for
        // the link now.
        let late = heartbeat("good", at(160), Some(at(100)), None, &[("rssi_dbm", -120.0)]);
        store.record_heartbeats(vec![late], options).await.unwrap();
        assert_eq!(state("good").await, (Connectivity::Online, Some(100)));
        assert_eq!(store.mark_offline(at(200), 1).await.unwrap(), vec![id("weak")]);
        assert_eq!(store.mark_offline(at(200), 1).await.unwrap(), vec![]);
        assert_eq!(ids_matching(&store, "connectivity = offline").await, strings(&["quiet", "weak"]));
        assert_eq!(ids_matching(&store, "connectivity = unknown").await, strings(&["silent"]));

        // Back with a clean link.
        store.record_heartbeats(vec![heartbeat("weak", at(300), None, None, &[("rssi_dbm", -80.0)])], options).await.unwrap();
        assert_eq!(state("weak").await, (Connectivity::Online, Some(100)));
        let change = |at, from, to| ConnectivityChange { at, from, to };
        assert_eq!(
            store.connectivity_history(&id("weak"), 10).await.unwrap(),
            vec![
                change(at(300), Connectivity::Offline, Connectivity::Online),
                change(at(200), Connectivity::Degraded, Connectivity::Offline),
                change(at(0), Connectivity::Unknown, Connectivity::Degraded),
            ]
        );
        assert_eq!(store.connectivity_history(&id("weak"), 1).await.unwrap().len(), 1);
        assert_eq!(store.connectivity_history(&id("silent"), 10).await.unwrap(), vec![]);
    }
}
