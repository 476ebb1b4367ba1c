//! The audit log: every mutation records exactly one entry in its own transaction (a refused or
//! no-op request records none), and the log reads back with filters and keyset paging.

use drover_core::DeviceStatus;
use drover_proto::audit::AuditEntry;
use drover_proto::auth::{NewClaim, NewToken, Role};
use drover_proto::device_api::ProvisionRequest;
use drover_proto::devices::{DevicePatch, NewDevice, OnConflict};
use drover_proto::groups::{GroupPatch, NewGroup};
use drover_store::{Actor, AuditFilter, ImportMsg, ImportRow, ProvisionOptions, Store, StoreError};
use serde_json::json;

use crate::support::*;

contract_tests! {
    async fn every_mutation_records_one_audit_entry(store: Store) {
        let admin = Actor::token("tok_admin", "ops-bob");
        let op = operator();
        let pending = ProvisionOptions { allow_pending: true };

        store.bootstrap_admin(None, at(0)).await.unwrap();
        let new = NewDevice { site: Some(label("berlin")), status: Some(DeviceStatus::Active), ..new_device("a") };
        store.create_device(&op, new, at(1)).await.unwrap();
        let clear_site = DevicePatch { site: Some(None), ..DevicePatch::default() };
        store.update_device(&op, &id("a"), clear_site.clone(), at(2)).await.unwrap();
        // A no-op edit and a refused create leave no trace.
        store.update_device(&op, &id("a"), clear_site, at(3)).await.unwrap();
        assert_err!(store.create_device(&op, new_device("a"), at(3)).await, StoreError::Conflict(_));

        let canary = NewGroup { name: group("canary"), query: None, parent: None, description: String::new() };
        store.create_group(&admin, canary, at(4)).await.unwrap();
        store.add_group_members(&admin, &group("canary"), vec![id("a")], at(5)).await.unwrap();
        store.remove_group_members(&admin, &group("canary"), vec![id("a")], at(6)).await.unwrap();
        let describe = GroupPatch { description: Some("first wave".into()), ..GroupPatch::default() };
        store.update_group(&admin, &group("canary"), describe, at(7)).await.unwrap();

        let new_claim = NewClaim { name: "batch".into(), device_type: None, tags: Default::default(), group: None, expires_in: None, max_uses: None };
        let (claim, token) = store.create_claim(&admin, new_claim, at(8)).await.unwrap();
        let request = ProvisionRequest {
            claim_token: Some(token),
            device_id: Some(id("b")),
            device_type: Some(device_type("meter")),
            ..provision_request("SN-B")
        };
        store.provision(request, ProvisionOptions::default(), at(9)).await.unwrap();
        store.rotate_credential(&op, &id("a"), at(10)).await.unwrap();
        store.revoke_credentials(&op, &id("a"), at(11)).await.unwrap();
        store.revoke_claim(&admin, &claim.id, at(12)).await.unwrap();
        let (viewer, _) = store.create_token(&admin, NewToken { name: "viewer".into(), role: Role::Viewer, expires_in: None }, at(13)).await.unwrap();
        store.revoke_token(&admin, &viewer.id, at(14)).await.unwrap();
        let tag = DevicePatch { tags: tag_patch(&[("wave", Some("1"))]), ..DevicePatch::default() };
        store.bulk_update_devices(&op, &query("id = a"), tag, at(15)).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(ImportMsg::Batch(vec![ImportRow { line: 2, device: new_device("c") }])).await.unwrap();
        tx.send(ImportMsg::Commit).await.unwrap();
        store.import_devices(&op, OnConflict::Error, rx, at(16)).await.unwrap();
        let enrol = |hardware_id: &str, device_id: &str| ProvisionRequest {
            nonce: Some("nonce-0123456789abcdef".into()),
            device_id: Some(id(device_id)),
            device_type: Some(device_type("gateway")),
            ..provision_request(hardware_id)
        };
        store.provision(enrol("UNK-P", "p"), pending, at(17)).await.unwrap();
        store.accept_device(&op, &id("p"), at(18)).await.unwrap();
        store.decommission_device(&op, &id("a"), at(19)).await.unwrap();
        store.delete_device(&op, &id("b"), at(20)).await.unwrap();
        store.delete_group(&admin, &group("canary"), at(21)).await.unwrap();
        store.provision(enrol("UNK-Q", "q"), pending, at(22)).await.unwrap();
        store.reject_device(&op, &id("q"), at(23)).await.unwrap();

        let tokens = store.list_tokens().await.unwrap();
        let bootstrap_id = tokens.iter().find(|t| t.name == "bootstrap-admin").unwrap().id.clone();
        let expected: Vec<(i64, &str, &str, &str, &str)> = vec![
            (23, "token:tok_operator", "device.reject", "device", "q"),
            (22, "device:q", "device.enroll", "device", "q"),
            (21, "token:tok_admin", "group.delete", "group", "canary"),
            (20, "token:tok_operator", "device.delete", "device", "b"),
            (19, "token:tok_operator", "device.decommission", "device", "a"),
            (18, "token:tok_operator", "device.accept", "device", "p"),
            (17, "device:p", "device.enroll", "device", "p"),
            (16, "token:tok_operator", "device.import", "devices", "import"),
            (15, "token:tok_operator", "device.bulk_update", "devices", "id = a"),
            (14, "token:tok_admin", "token.revoke", "token", &viewer.id),
            (13, "token:tok_admin", "token.create", "token", &viewer.id),
            (12, "token:tok_admin", "claim.revoke", "claim", &claim.id),
            (11, "token:tok_operator", "device.credential.revoke", "device", "a"),
            (10, "token:tok_operator", "device.credential.rotate", "device", "a"),
            (9, "device:b", "device.provision", "device", "b"),
            (8, "token:tok_admin", "claim.create", "claim", &claim.id),
            (7, "token:tok_admin", "group.update", "group", "canary"),
            (6, "token:tok_admin", "group.members.remove", "group", "canary"),
            (5, "token:tok_admin", "group.members.add", "group", "canary"),
            (4, "token:tok_admin", "group.create", "group", "canary"),
            (2, "token:tok_operator", "device.update", "device", "a"),
            (1, "token:tok_operator", "device.create", "device", "a"),
            (0, "system", "token.create", "token", &bootstrap_id),
        ];
        let page = store.list_audit(AuditFilter { limit: 100, ..AuditFilter::default() }).await.unwrap();
        assert_eq!(page.next_cursor, None);
        let entries = &page.items;
        let got: Vec<(i64, &str, &str, &str, &str)> = entries
            .iter()
            .map(|e| {
                let minute = (e.at.as_millis() - NOW.as_millis()) / MINUTE;
                (minute, e.actor.as_str(), e.action.as_str(), e.target_kind.as_str(), e.target_id.as_str())
            })
            .collect();
        assert_eq!(got, expected);

        let find = |action: &str| -> &AuditEntry { entries.iter().find(|e| e.action == action).unwrap() };
        let update = find("device.update");
        assert_eq!(update.actor_name, "ops-alice");
        assert_eq!(update.before.as_ref().unwrap()["site"], json!("berlin"));
        assert_eq!(update.after.as_ref().unwrap()["site"], json!(null));
        assert_eq!(update.after.as_ref().unwrap()["updated_at"], json!("2027-01-15T08:02:00.000Z"));
        let create = find("device.create");
        assert_eq!((create.before.clone(), create.after.as_ref().unwrap()["id"].clone()), (None, json!("a")));
        let delete = find("device.delete");
        assert_eq!((delete.before.as_ref().unwrap()["id"].clone(), delete.after.clone()), (json!("b"), None));
        let decommission = find("device.decommission");
        assert_eq!(decommission.before.as_ref().unwrap()["status"], json!("active"));
        assert_eq!(decommission.after.as_ref().unwrap()["status"], json!("decommissioned"));
        let bulk = find("device.bulk_update");
        assert_eq!(bulk.after.as_ref().unwrap()["matched"], json!(1));
        assert_eq!(bulk.after.as_ref().unwrap()["updated"], json!(1));
        let import = find("device.import");
        assert_eq!(import.after.as_ref().unwrap()["result"], json!({ "created": 1, "updated": 0, "skipped": 0 }));
        let provision = find("device.provision");
        assert_eq!((provision.actor_name.as_str(), provision.after.as_ref().unwrap()["via"].clone()), ("b", json!("claim")));
        let revoke = find("token.revoke");
        assert_eq!(revoke.before.as_ref().unwrap().get("revoked_at"), None);
        assert!(revoke.after.as_ref().unwrap()["revoked_at"].is_string());
        // Secrets and their hashes never reach the log.
        let text = serde_json::to_string(&page.items).unwrap();
        assert!(!text.contains("drv_") && !text.contains("secret"), "{text}");
    }

    async fn audit_entries_are_filtered_and_paged(store: Store) {
        let alice = Actor::token("tok_alice", "alice");
        let bob = Actor::token("tok_bob", "bob");
        for n in 0..10 {
            let new = NewDevice { status: Some(DeviceStatus::Active), ..new_device(&format!("d-{n:02}")) };
            store.create_device(&alice, new, at(n)).await.unwrap();
        }
        for n in 0..5 {
            let patch = DevicePatch { site: Some(Some(label("moved"))), ..DevicePatch::default() };
            store.update_device(&bob, &id(&format!("d-{n:02}")), patch, at(10 + n)).await.unwrap();
        }
        for (n, name) in ["g1", "g2"].into_iter().enumerate() {
            let new = NewGroup { name: group(name), query: None, parent: None, description: String::new() };
            store.create_group(&bob, new, at(15 + n as i64)).await.unwrap();
        }
        store.rotate_credential(&alice, &id("d-05"), at(17)).await.unwrap();
        store.create_token(&bob, NewToken { name: "t".into(), role: Role::Viewer, expires_in: None }, at(18)).await.unwrap();

        let all = list(&store, AuditFilter::default()).await;
        assert_eq!(all.len(), 19);
        assert!(all.windows(2).all(|pair| pair[0].seq > pair[1].seq), "newest first, by sequence");

        let by_bob = list(&store, AuditFilter { actor: Some("token:tok_bob".into()), ..AuditFilter::default() }).await;
        assert_eq!(
            summary(&by_bob),
            [
                "token.create t",
                "group.create g2",
                "group.create g1",
                "device.update d-04",
                "device.update d-03",
                "device.update d-02",
                "device.update d-01",
                "device.update d-00",
            ]
            .map(str::to_owned)
        );
        let creates = list(&store, AuditFilter { action: Some("device.create".into()), ..AuditFilter::default() }).await;
        assert_eq!(creates.len(), 10);
        assert!(creates.iter().all(|e| e.action == "device.create" && e.actor == "token:tok_alice"));
        let device_actions = list(&store, AuditFilter { action: Some("device.".into()), ..AuditFilter::default() }).await;
        assert_eq!(device_actions.len(), 16);
        assert!(device_actions.iter().all(|e| e.action.starts_with("device.")));
        let credential = list(&store, AuditFilter { action: Some("device.credential*".into()), ..AuditFilter::default() }).await;
        assert_eq!(summary(&credential), ["device.credential.rotate d-05".to_owned()]);
        assert_eq!(list(&store, AuditFilter { action: Some("device".into()), ..AuditFilter::default() }).await.len(), 0);
        let alice_devices = AuditFilter { actor: Some("token:tok_alice".into()), action: Some("device.".into()), ..AuditFilter::default() };
        assert_eq!(list(&store, alice_devices).await.len(), 11);

        let d00 = AuditFilter { target_kind: Some("device".into()), target_id: Some("d-00".into()), ..AuditFilter::default() };
        assert_eq!(summary(&list(&store, d00).await), ["device.update d-00", "device.create d-00"].map(str::to_owned));
        let groups = AuditFilter { target_kind: Some("group".into()), ..AuditFilter::default() };
        assert_eq!(list(&store, groups).await.len(), 2);

        // `since` is inclusive and `until` exclusive.
        let window = list(&store, AuditFilter { since: Some(at(5)), until: Some(at(12)), ..AuditFilter::default() }).await;
        assert_eq!(
            summary(&window),
            [
                "device.update d-01",
                "device.update d-00",
                "device.create d-09",
                "device.create d-08",
                "device.create d-07",
                "device.create d-06",
                "device.create d-05",
            ]
            .map(str::to_owned)
        );

        for (filter, page_sizes) in [
            (AuditFilter::default(), vec![8, 8, 3]),
            (AuditFilter { action: Some("device.".into()), ..AuditFilter::default() }, vec![8, 8]),
            (AuditFilter { actor: Some("token:tok_bob".into()), ..AuditFilter::default() }, vec![8]),
        ] {
            let mut paged = Vec::new();
            let mut sizes = Vec::new();
            let mut filter = AuditFilter { limit: 8, ..filter };
            loop {
                let page = store.list_audit(filter.clone()).await.unwrap();
                sizes.push(page.items.len());
                paged.extend(page.items);
                match page.next_cursor {
                    Some(cursor) => filter.before_seq = Some(cursor.parse().expect("the cursor is a sequence number")),
                    None => break,
                }
            }
            assert_eq!(sizes, page_sizes, "{filter:?}");
            let expected = list(&store, AuditFilter { limit: 1000, before_seq: None, ..filter.clone() }).await;
            assert_eq!(paged.iter().map(|e| e.seq).collect::<Vec<_>>(), expected.iter().map(|e| e.seq).collect::<Vec<_>>());
        }
    }
}

/// Every entry matching `filter` on one page.
async fn list(store: &Store, filter: AuditFilter) -> Vec<AuditEntry> {
    let page = store
        .list_audit(AuditFilter {
            limit: 1000,
            ..filter
        })
        .await
        .unwrap();
    assert_eq!(page.next_cursor, None);
    page.items
}

/// `action target` for each entry (with the token id replaced by the token's name).
fn summary(entries: &[AuditEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            let target = if e.target_kind == "token" {
                "t"
            } else {
                e.target_id.as_str()
            };
            format!("{} {target}", e.action)
        })
        .collect()
}

fn provision_request(hardware_id: &str) -> ProvisionRequest {
    ProvisionRequest {
        hardware_id: hw(hardware_id),
        claim_token: None,
        preauth_secret: None,
        nonce: None,
        device_id: None,
        device_type: None,
        hw_rev: None,
        firmware: None,
    }
}
