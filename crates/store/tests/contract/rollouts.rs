//! Rollouts in the store: planning, and concurrent orchestrator ticks (as several server replicas
//! would run them) never offering one device the release twice.

use std::collections::HashMap;

use drover_proto::artifacts::{ArtifactMetadata, FileInfo};
use drover_proto::rollouts::NewRollout;
use drover_store::{NewArtifact, Store, StoredObject};
use serde_json::json;

use crate::support::*;

async fn release(store: &Store) {
    let metadata: ArtifactMetadata = serde_json::from_value(json!({
        "name": "thermo-fw", "version": "2.0.0", "device_types": ["thermostat"]
    }))
    .unwrap();
    store
        .insert_artifact(
            &operator(),
            NewArtifact {
                metadata,
                image: StoredObject {
                    key: "images/x".into(),
                    info: FileInfo {
                        size: 10,
                        sha256: "0".repeat(64),
                    },
                },
                target_path: "thermo-fw/2.0.0/thermo-fw.img".into(),
                symbols: None,
            },
            at(0),
        )
        .await
        .unwrap();
}

contract_tests! {
    /// Two replicas ticking the same rollout at once: every device is offered the release once.
    async fn concurrent_ticks_never_double_assign_a_device(store: Store) {
        release(&store).await;
        for idx in 0..120 {
            create_active(&store, &format!("dev-{idx:03}"), at(0)).await;
        }
        let new: NewRollout = serde_json::from_value(json!({
            "artifact": "thermo-fw", "version": "2.0.0", "target": {"query": "device_type = thermostat"},
            "strategy": {"phases": [{"percent": 100}]}, "max_parallel": 7
        }))
        .unwrap();
        let rollout = store.create_rollout(&operator(), new, at(1)).await.unwrap();
        assert_eq!(rollout.counts.target, 120);
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let store = store.clone();
            replicas.push(tokio::spawn(async move {
                for _ in 0..10 {
                    store.tick_rollout(rollout.id, at(2)).await.unwrap();
                }
            }));
        }
        for replica in replicas {
            replica.await.unwrap();
        }
        let view = store.get_rollout(rollout.id).await.unwrap();
        assert_eq!(view.counts.assigned, 7, "max_parallel holds across replicas: {:?}", view.counts);
        let page = store
            .rollout_devices(rollout.id, Some("updating".into()), None, 1000)
            .await
            .unwrap();
        assert_eq!(page.items.len(), 7);
        let mut per_device: HashMap<String, usize> = HashMap::new();
        for idx in 0..120 {
            let device = format!("dev-{idx:03}");
            let n = store.device_deployments(&id(&device), 10).await.unwrap().len();
            per_device.insert(device, n);
        }
        assert_eq!(per_device.values().sum::<usize>(), 7);
        assert!(per_device.values().all(|n| *n <= 1));
    }
}
