//! Heartbeat ingest: last-seen, reported firmware, latest health, raw samples and cohort rollups.

use std::collections::BTreeMap;

use drover_core::health::MetricName;
use drover_core::{Duration, Timestamp};
use drover_proto::device_api::Heartbeat;
use drover_store::{HeartbeatRecord, IngestOptions};

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
        let options = IngestOptions { bucket: Duration::from_secs(60) };
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

        assert_eq!(store.prune_heartbeat_samples(at(6)).await.unwrap(), 1, "only the buffered sample is older");
    }
}
