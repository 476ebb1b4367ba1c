//! Device shadows: updates merge and persist, versions guard against lost updates (also under
//! concurrent writers), deletion keeps a tombstone with the version, refused updates store nothing,
//! operators' desired changes are audited, and shadows go with their device.

use drover_core::shadow::{ShadowError, ShadowLimits, ShadowName, ShadowUpdate};
use drover_store::{Actor, AuditFilter, Store, StoreError};
use serde_json::{json, Value};

use crate::support::*;

fn update(body: Value) -> ShadowUpdate {
    ShadowUpdate::from_json(body).unwrap_or_else(|e| panic!("bad test update: {e}"))
}

fn desired(state: Value) -> ShadowUpdate {
    update(json!({ "state": { "desired": state } }))
}

fn reported(state: Value) -> ShadowUpdate {
    update(json!({ "state": { "reported": state } }))
}

fn at_version(mut update: ShadowUpdate, version: u64) -> ShadowUpdate {
    update.expected_version = Some(version);
    update
}

fn name(text: &str) -> ShadowName {
    ShadowName::parse(text).unwrap()
}

fn device(device_id: &str) -> Actor {
    Actor::device(device_id)
}

/// Shadow audit entries, newest first, as `(action, target_id)`.
async fn shadow_audit(store: &Store) -> Vec<(String, String)> {
    let filter = AuditFilter {
        action: Some("shadow.".into()),
        limit: 100,
        ..AuditFilter::default()
    };
    let page = store.list_audit(filter).await.unwrap();
    page.items
        .into_iter()
        .map(|entry| (entry.action, entry.target_id))
        .collect()
}

const LIMITS: ShadowLimits = ShadowLimits {
    max_document_bytes: 8 * 1024,
    max_depth: 6,
    max_key_len: 128,
};

contract_tests! {
    /// Desired and reported merge into one stored document whose delta, metadata and version read
    /// back exactly as the update returned them; named shadows are separate documents.
    async fn updates_merge_persist_and_read_back(store: Store) {
        create_active(&store, "sh-1", at(0)).await;
        let sh1 = id("sh-1");
        assert_eq!(store.get_shadow(&sh1, None).await.unwrap(), None);
        assert_eq!(store.list_shadows(&sh1).await.unwrap(), vec![]);

        let (outcome, document) = store
            .update_shadow(&operator(), &sh1, None, desired(json!({"led": "on", "cfg": {"rate": 5, "mode": "eco"}})), at(1), LIMITS)
            .await
            .unwrap();
        assert_eq!(outcome.version, 1);
        assert_eq!(document.version(), 1);
        let (outcome, document) = store
            .update_shadow(&device("sh-1"), &sh1, None, reported(json!({"led": "off", "cfg": {"rate": 5}})), at(2), LIMITS)
            .await
            .unwrap();
        assert_eq!(outcome.version, 2);

        let stored = store.get_shadow(&sh1, None).await.unwrap().expect("stored");
        assert_eq!(stored, document);
        assert_eq!(stored.to_json()["state"]["delta"], json!({"led": "on", "cfg": {"mode": "eco"}}));
        assert_eq!(stored.to_json()["metadata"]["reported"]["led"], json!({"timestamp": at(2).as_millis()}));
        assert_eq!(stored.timestamp(), at(2));

        // null deletes; an update that changes nothing stores nothing and keeps the version.
        store.update_shadow(&operator(), &sh1, None, desired(json!({"cfg": {"mode": null}})), at(3), LIMITS).await.unwrap();
        let (outcome, _) = store
            .update_shadow(&device("sh-1"), &sh1, None, reported(json!({"led": "off"})), at(4), LIMITS)
            .await
            .unwrap();
        assert!(!outcome.changed());
        let stored = store.get_shadow(&sh1, None).await.unwrap().unwrap();
        assert_eq!((stored.version(), stored.timestamp()), (3, at(3)));
        assert_eq!(stored.to_json()["state"]["desired"], json!({"led": "on", "cfg": {"rate": 5}}));

        let config = name("config");
        store.update_shadow(&operator(), &sh1, Some(&config), desired(json!({"ntp": "pool"})), at(5), LIMITS).await.unwrap();
        let named = store.get_shadow(&sh1, Some(&config)).await.unwrap().unwrap();
        assert_eq!(named.version(), 1, "a named shadow has its own versions");
        assert_eq!(named.to_json()["state"]["desired"], json!({"ntp": "pool"}));
        assert_eq!(store.get_shadow(&sh1, Some(&name("other"))).await.unwrap(), None);

        let listed = store.list_shadows(&sh1).await.unwrap();
        let listed: Vec<_> = listed.iter().map(|s| (s.name.as_ref().map(|n| n.to_string()), s.version, s.timestamp)).collect();
        assert_eq!(listed, vec![(None, 3, at(3)), (Some("config".to_owned()), 1, at(5))]);
    }

    /// An update naming a stale version is refused with the current version; concurrent writers
    /// naming the same version (or racing to create a shadow) leave exactly one winner, while
    /// writers naming no version all succeed, one after another.
    async fn versions_guard_against_lost_updates_under_concurrency(store: Store) {
        create_active(&store, "race", at(0)).await;
        let race = id("race");

        // Writers race to create shadows, each only if nobody has written it yet: four writers
        // for each of twelve shadows, all at once, so that some really do overlap.
        let creators = (0..48).map(|writer| {
            let (store, race) = (store.clone(), race.clone());
            tokio::spawn(async move {
                let shadow = (writer % 12 > 0).then(|| name(&format!("s{}", writer % 12)));
                let update = at_version(desired(json!({ "writer": writer })), 0);
                let result = store.update_shadow(&operator(), &race, shadow.as_ref(), update, at(1), LIMITS).await;
                (writer % 12, result)
            })
        });
        let results = futures::future::join_all(creators).await;
        for shadow in 0..12 {
            let results: Vec<_> = results.iter().map(|r| r.as_ref().unwrap()).filter(|(s, _)| *s == shadow).collect();
            assert_eq!(results.iter().filter(|(_, r)| r.is_ok()).count(), 1, "{results:?}");
            for (_, result) in results {
                match result {
                    Ok((outcome, _)) => assert_eq!(outcome.version, 1),
                    Err(e) => assert!(matches!(e, StoreError::Shadow(ShadowError::VersionConflict { expected: 0, current: 1 })), "{e:?}"),
                }
            }
        }

        // Eight writers race from version 1.
        let writers = (0..8).map(|writer| {
            let (store, race) = (store.clone(), race.clone());
            tokio::spawn(async move {
                let update = at_version(desired(json!({ "writer": writer + 100 })), 1);
                store.update_shadow(&operator(), &race, None, update, at(2), LIMITS).await
            })
        });
        let results = futures::future::join_all(writers).await;
        assert_eq!(results.iter().filter(|r| r.as_ref().unwrap().is_ok()).count(), 1, "{results:?}");
        assert_eq!(store.get_shadow(&race, None).await.unwrap().unwrap().version(), 2);

        let stale = at_version(desired(json!({"late": true})), 1);
        assert_err!(
            store.update_shadow(&operator(), &race, None, stale, at(3), LIMITS).await,
            StoreError::Shadow(ShadowError::VersionConflict { expected: 1, current: 2 })
        );

        // Without a version nobody loses, whether the shadow exists (classic) or is being created
        // by the racers themselves (reports): each report is applied on top of the others.
        let reports = name("reports");
        let reporters = (0..16).map(|reporter| {
            let (store, race, reports) = (store.clone(), race.clone(), reports.clone());
            tokio::spawn(async move {
                let shadow = (reporter % 2 == 1).then_some(&reports);
                let update = reported(json!({ format!("sensor_{reporter}"): reporter }));
                store.update_shadow(&device("race"), &race, shadow, update, at(4), LIMITS).await
            })
        });
        for result in futures::future::join_all(reporters).await {
            result.unwrap().unwrap();
        }
        let classic = store.get_shadow(&race, None).await.unwrap().unwrap();
        assert_eq!((classic.version(), classic.reported().len()), (10, 8));
        let reports = store.get_shadow(&race, Some(&reports)).await.unwrap().unwrap();
        assert_eq!((reports.version(), reports.reported().len()), (8, 8));
    }

    /// A deleted shadow reads as absent, but its version lives on in a tombstone: the next write
    /// continues from it, so devices never take the new document for an old one.
    async fn deletion_keeps_a_tombstone_with_the_version(store: Store) {
        create_active(&store, "tomb", at(0)).await;
        let tomb = id("tomb");
        for minute in 1..=3 {
            store.update_shadow(&operator(), &tomb, None, desired(json!({ "step": minute })), at(minute), LIMITS).await.unwrap();
        }
        store.update_shadow(&device("tomb"), &tomb, None, reported(json!({"step": 3})), at(4), LIMITS).await.unwrap();

        assert_eq!(store.delete_shadow(&operator(), &tomb, None, at(5)).await.unwrap(), Some(4));
        assert_eq!(store.get_shadow(&tomb, None).await.unwrap(), None);
        assert_eq!(store.list_shadows(&tomb).await.unwrap(), vec![]);
        assert_eq!(store.delete_shadow(&operator(), &tomb, None, at(6)).await.unwrap(), None);
        assert_eq!(store.delete_shadow(&operator(), &tomb, Some(&name("never")), at(6)).await.unwrap(), None);

        // "Only if never written" is still false: the shadow was written, at version 4.
        let fresh = at_version(desired(json!({"fresh": true})), 0);
        assert_err!(
            store.update_shadow(&operator(), &tomb, None, fresh, at(7), LIMITS).await,
            StoreError::Shadow(ShadowError::VersionConflict { expected: 0, current: 4 })
        );
        let (outcome, document) = store
            .update_shadow(&operator(), &tomb, None, desired(json!({"fresh": true})), at(7), LIMITS)
            .await
            .unwrap();
        assert_eq!(outcome.version, 5);
        assert_eq!(document.to_json()["state"], json!({"desired": {"fresh": true}, "reported": {}, "delta": {"fresh": true}}));
        assert_eq!(store.get_shadow(&tomb, None).await.unwrap(), Some(document));
    }

    /// An update over a limit, or one that is malformed, is refused and stores nothing.
    async fn refused_updates_store_nothing(store: Store) {
        create_active(&store, "lim", at(0)).await;
        let lim = id("lim");
        let small = ShadowLimits { max_document_bytes: 64, max_depth: 3, max_key_len: 16 };
        assert_err!(
            store.update_shadow(&operator(), &lim, None, desired(json!({"blob": "x".repeat(100)})), at(1), small).await,
            StoreError::Shadow(ShadowError::TooLarge { .. })
        );
        assert_eq!(store.get_shadow(&lim, None).await.unwrap(), None, "a refused first update creates nothing");

        store.update_shadow(&operator(), &lim, None, desired(json!({"ok": 1})), at(2), small).await.unwrap();
        let before = store.get_shadow(&lim, None).await.unwrap();
        let refused = [
            desired(json!({"a": {"b": {"c": {"d": 1}}}})),
            reported(json!({"this_key_is_too_long": 1})),
            ShadowUpdate { desired: Some(json!([1])), ..ShadowUpdate::default() },
        ];
        for update in refused {
            let result = store.update_shadow(&operator(), &lim, None, update.clone(), at(3), small).await;
            assert!(matches!(result, Err(StoreError::Shadow(_))), "{update:?}: {result:?}");
        }
        assert_eq!(store.get_shadow(&lim, None).await.unwrap(), before);
        assert_eq!(shadow_audit(&store).await.len(), 1, "only the accepted update is audited");
    }

    /// Operators changing desired state are audited with before and after; a device's reports and
    /// updates that change nothing are not.
    async fn operators_desired_changes_and_deletions_are_audited(store: Store) {
        create_active(&store, "aud", at(0)).await;
        let aud = id("aud");
        store.update_shadow(&operator(), &aud, None, desired(json!({"led": "on"})), at(1), LIMITS).await.unwrap();
        store.update_shadow(&device("aud"), &aud, None, reported(json!({"led": "on", "temp": 21})), at(2), LIMITS).await.unwrap();
        store.update_shadow(&operator(), &aud, None, desired(json!({"led": "on"})), at(3), LIMITS).await.unwrap();
        store.update_shadow(&operator(), &aud, Some(&name("config")), desired(json!({"rate": 5})), at(4), LIMITS).await.unwrap();
        store.delete_shadow(&operator(), &aud, Some(&name("config")), at(5)).await.unwrap();

        assert_eq!(
            shadow_audit(&store).await,
            vec![
                ("shadow.delete".to_owned(), "aud".to_owned()),
                ("shadow.update".to_owned(), "aud".to_owned()),
                ("shadow.update".to_owned(), "aud".to_owned()),
            ]
        );
        let filter = AuditFilter { action: Some("shadow.".into()), limit: 100, ..AuditFilter::default() };
        let entries = store.list_audit(filter).await.unwrap().items;
        let first = &entries[2];
        assert_eq!(first.actor, operator().id);
        assert_eq!(first.target_kind, "device");
        assert_eq!(first.before, Some(json!({"version": 0, "desired": {}})));
        assert_eq!(first.after, Some(json!({"version": 1, "desired": {"led": "on"}})));
        assert_eq!(entries[1].after, Some(json!({"shadow": "config", "version": 1, "desired": {"rate": 5}})));
        assert_eq!(entries[0].before, Some(json!({"shadow": "config", "version": 1, "desired": {"rate": 5}, "reported": {}})));
        assert_eq!(entries[0].after, None);
    }

    /// Unknown devices are `NotFound` everywhere; a decommissioned device's shadow can be read and
    /// deleted but not changed; deleting a device deletes its shadows.
    async fn shadows_belong_to_their_device(store: Store) {
        let ghost = id("ghost");
        assert_err!(store.get_shadow(&ghost, None).await, StoreError::NotFound { kind: "device", .. });
        assert_err!(store.update_shadow(&operator(), &ghost, None, desired(json!({"a": 1})), at(1), LIMITS).await, StoreError::NotFound { kind: "device", .. });
        assert_err!(store.delete_shadow(&operator(), &ghost, None, at(1)).await, StoreError::NotFound { kind: "device", .. });
        assert_err!(store.list_shadows(&ghost).await, StoreError::NotFound { kind: "device", .. });

        create_active(&store, "old", at(0)).await;
        let old = id("old");
        store.update_shadow(&operator(), &old, None, desired(json!({"a": 1})), at(1), LIMITS).await.unwrap();
        store.decommission_device(&operator(), &old, at(2)).await.unwrap();
        assert_err!(store.update_shadow(&operator(), &old, None, desired(json!({"a": 2})), at(3), LIMITS).await, StoreError::Invalid(_));
        assert_eq!(store.get_shadow(&old, None).await.unwrap().unwrap().version(), 1);

        create_active(&store, "gone", at(0)).await;
        let gone = id("gone");
        store.update_shadow(&operator(), &gone, None, desired(json!({"a": 1})), at(1), LIMITS).await.unwrap();
        store.update_shadow(&operator(), &gone, Some(&name("config")), desired(json!({"b": 1})), at(1), LIMITS).await.unwrap();
        store.delete_device(&operator(), &gone, at(2)).await.unwrap();
        assert_err!(store.get_shadow(&gone, None).await, StoreError::NotFound { kind: "device", .. });
        create_active(&store, "gone", at(3)).await;
        assert_eq!(store.list_shadows(&gone).await.unwrap(), vec![], "a new device of the same id starts clean");
    }
}
