//! Bulk operations: updating every device a query selects, and streaming imports that commit all
//! rows or none.

use drover_core::{DeviceStatus, Timestamp};
use drover_proto::devices::{
    DevicePatch, DeviceSort, ImportResult, NewDevice, OnConflict, SortOrder,
};
use drover_store::{ImportMsg, ImportRow, Store, StoreError};

use crate::support::*;

contract_tests! {
    /// Tags are set and removed on every selected device; a status change skips devices whose
    /// lifecycle forbids it; decommissioned devices are never selected.
    async fn bulk_updates_change_every_matching_device_their_lifecycle_allows(store: Store) {
        let prod = tags(&[("env", "prod"), ("old", "1")]);
        let operating = [("a", DeviceStatus::Active), ("b", DeviceStatus::Inactive), ("f", DeviceStatus::Error), ("d", DeviceStatus::Active)];
        for (device_id, status) in operating {
            let new = NewDevice { status: Some(status), tags: prod.clone(), site: Some(label("berlin")), ..new_device(device_id) };
            store.create_device(&operator(), new, at(0)).await.unwrap();
        }
        let waiting = NewDevice { hw_id: Some(hw("SN-C")), tags: prod.clone(), ..new_device("c") };
        store.create_device(&operator(), waiting, at(0)).await.unwrap();
        let dev = NewDevice { status: Some(DeviceStatus::Active), tags: tags(&[("env", "dev")]), ..new_device("e") };
        store.create_device(&operator(), dev, at(0)).await.unwrap();
        store.decommission_device(&operator(), &id("d"), at(1)).await.unwrap();
        let mut untouched = Vec::new();
        for device_id in ["c", "d", "e"] {
            untouched.push(store.get_device(&id(device_id)).await.unwrap());
        }

        let patch = DevicePatch {
            status: Some(DeviceStatus::Error),
            tags: tag_patch(&[("rollout", Some("r1")), ("old", None)]),
            ..DevicePatch::default()
        };
        let (matched, updated) = store.bulk_update_devices(&operator(), &query("tags.env = prod"), patch, at(5)).await.unwrap();
        assert_eq!((matched, updated), (4, 3), "a, b, c and f match; c is still provisioning");
        for device_id in ["a", "b", "f"] {
            let device = store.get_device(&id(device_id)).await.unwrap();
            assert_eq!(device.status, DeviceStatus::Error, "{device_id}");
            assert_eq!(device.tags, tags(&[("env", "prod"), ("rollout", "r1")]), "{device_id}");
            assert_eq!(device.updated_at, at(5), "{device_id}");
            assert_eq!(device.site, Some(label("berlin")), "{device_id}");
        }
        for before in &untouched {
            assert_eq!(&store.get_device(&before.id).await.unwrap(), before);
        }

        // Clearing an attribute, with a query whose own field the patch changes.
        let patch = DevicePatch { site: Some(None), region: Some(Some(label("eu"))), ..DevicePatch::default() };
        assert_eq!(store.bulk_update_devices(&operator(), &query("site = berlin"), patch, at(6)).await.unwrap(), (3, 3));
        assert_eq!(ids_matching(&store, "site EXISTS").await, strings(&["d"]));
        assert_eq!(ids_matching(&store, "region = eu").await, strings(&["a", "b", "f"]));

        // Decommissioned devices are never selected, even when asked for by name.
        let patch = DevicePatch { tags: tag_patch(&[("x", Some("y"))]), ..DevicePatch::default() };
        assert_eq!(store.bulk_update_devices(&operator(), &query("status = decommissioned"), patch.clone(), at(7)).await.unwrap(), (0, 0));
        assert_eq!(store.get_device(&id("d")).await.unwrap(), untouched[1]);

        let per_device = "hw_id and firmware are per device and cannot be set in bulk";
        let refusals = [
            ("", patch.clone(), "a bulk update needs a query; to change every device say so, e.g. `status != decommissioned`"),
            ("id = a", DevicePatch::default(), "the bulk update's `set` changes nothing"),
            ("id = a", DevicePatch { firmware: Some(None), ..DevicePatch::default() }, per_device),
            ("id = a", DevicePatch { hw_id: Some(Some(hw("X"))), ..DevicePatch::default() }, per_device),
            (
                "id = a",
                DevicePatch { status: Some(DeviceStatus::Decommissioned), ..DevicePatch::default() },
                "bulk updates can set status to active, inactive or error, not decommissioned",
            ),
        ];
        for (text, patch, message) in refusals {
            assert_err!(store.bulk_update_devices(&operator(), &query(text), patch, at(8)).await, StoreError::Invalid(m) if m == message);
        }
        assert_eq!(store.get_device(&id("a")).await.unwrap().updated_at, at(6));
    }

    /// A committed import writes every row, across batches.
    async fn a_committed_import_writes_every_row(store: Store) {
        let batches = vec![
            vec![row(2, "imp-1", Some("SN-1")), row(3, "imp-2", None)],
            vec![
                row(4, "imp-3", Some("SN-3")),
                ImportRow { line: 5, device: NewDevice { status: Some(DeviceStatus::Active), ..new_device("imp-4") } },
            ],
        ];
        let result = import(&store, OnConflict::Error, batches, End::Commit, at(0)).await.unwrap();
        assert_eq!(counts(&result), (4, 0, 0));
        assert_eq!(ids_matching(&store, "").await, strings(&["imp-1", "imp-2", "imp-3", "imp-4"]));
        let device = store.get_device(&id("imp-1")).await.unwrap();
        assert_eq!(device.status, DeviceStatus::Provisioning);
        assert_eq!(device.hw_id, Some(hw("SN-1")));
        assert_eq!(device.site, Some(label("depot")));
        assert_eq!(device.tags, tags(&[("batch", "b7"), ("line", "2")]));
        assert_eq!(device.created_at, at(0));
        assert_eq!(store.get_device(&id("imp-4")).await.unwrap().status, DeviceStatus::Active);
        // Imported pre-authorised devices can provision.
        let request = drover_proto::device_api::ProvisionRequest {
            hardware_id: hw("SN-3"),
            claim_token: None,
            preauth_secret: None,
            nonce: None,
            device_id: None,
            device_type: None,
            hw_rev: None,
            firmware: None,
        };
        let outcome = store.provision(request, drover_store::ProvisionOptions::default(), at(1)).await.unwrap();
        assert_eq!(outcome.device.id, id("imp-3"));
    }

    /// Nothing is written unless the producer commits.
    async fn an_aborted_or_abandoned_import_writes_nothing(store: Store) {
        for end in [End::Abort, End::DropSender] {
            let batches = vec![vec![row(2, "imp-1", Some("SN-1"))], vec![row(3, "imp-2", None)]];
            assert_err!(
                import(&store, OnConflict::Error, batches, end, at(0)).await,
                StoreError::Invalid(m) if m == "import aborted before it completed; nothing was written"
            );
            assert_eq!(store.count_devices(&query(""), NOW).await.unwrap(), 0, "{end:?}");
        }
        // And the hardware id is still free.
        store.create_device(&operator(), NewDevice { hw_id: Some(hw("SN-1")), ..new_device("later") }, at(1)).await.unwrap();
    }

    /// Every bad line is reported with its number, and one bad line rejects the whole import.
    async fn a_rejected_import_names_its_bad_lines_and_writes_nothing(store: Store) {
        create_active(&store, "existing", at(0)).await;
        let holder = NewDevice { hw_id: Some(hw("SN-HELD")), status: Some(DeviceStatus::Active), ..new_device("holder") };
        store.create_device(&operator(), holder, at(0)).await.unwrap();
        let before = ids_matching(&store, "").await;

        let batches = vec![vec![
            row(2, "imp-1", Some("SN-1")),
            row(3, "existing", None),
            row(4, "imp-1", None),
            row(5, "imp-5", Some("SN-1")),
            row(6, "imp-6", Some("SN-HELD")),
            ImportRow { line: 7, device: NewDevice { status: Some(DeviceStatus::Pending), ..new_device("imp-7") } },
            ImportRow { line: 8, device: NewDevice { issue_credential: true, ..new_device("imp-8") } },
            row(9, "imp-9", None),
            ImportRow { line: 10, device: NewDevice { preauth_secret: Some("long-enough-secret-1".into()), ..new_device("imp-10") } },
            ImportRow { line: 11, device: NewDevice { preauth_secret: Some("short".into()), ..row(11, "imp-11", Some("SN-11")).device } },
        ]];
        let expected = vec![
            (4, r#"device "imp-1" appears twice in the import"#.to_owned()),
            (5, r#"hardware id "SN-1" appears twice in the import"#.to_owned()),
            (7, "a new device cannot start as pending: use provisioning, active, inactive or error".to_owned()),
            (8, "issue_credential is not available in imports; devices provision themselves".to_owned()),
            (10, "preauth_secret needs a hw_id: the device presents both to provision".to_owned()),
            (11, "preauth_secret must be 16-256 characters without whitespace or control characters".to_owned()),
            (3, r#"device "existing" already exists (use on_conflict=skip or update)"#.to_owned()),
            (6, r#"hardware id "SN-HELD" is already used by device "holder""#.to_owned()),
        ];
        let mut errors = match import(&store, OnConflict::Error, batches, End::Commit, at(1)).await {
            Err(StoreError::Import(errors)) => errors,
            other => panic!("expected an import error, got {other:?}"),
        };
        errors.sort();
        let mut expected = expected;
        expected.sort();
        assert_eq!(errors, expected);
        assert_eq!(ids_matching(&store, "").await, before);

        // A repeated id is caught when its lines arrive in different batches, too, whatever the
        // conflict mode.
        for on_conflict in [OnConflict::Error, OnConflict::Skip, OnConflict::Update] {
            let batches = vec![vec![row(2, "imp-1", None), row(3, "imp-2", None)], vec![row(4, "imp-3", None), row(5, "imp-1", None)]];
            assert_err!(
                import(&store, on_conflict, batches, End::Commit, at(1)).await,
                StoreError::Import(errors) if errors == vec![(5, r#"device "imp-1" appears twice in the import"#.to_owned())]
            );
            assert_eq!(ids_matching(&store, "").await, before, "{on_conflict:?}");
        }
    }

    /// `skip` keeps existing devices; `update` overwrites their attributes and tags but keeps their
    /// lifecycle unless a row asks for an allowed status.
    async fn imports_skip_or_update_existing_devices(store: Store) {
        let original = NewDevice {
            status: Some(DeviceStatus::Active),
            site: Some(label("old-site")),
            tags: tags(&[("keep", "no")]),
            ..new_device("a")
        };
        let (original, _) = store.create_device(&operator(), original, at(0)).await.unwrap();
        create_active(&store, "b", at(0)).await;
        let waiting = NewDevice { hw_id: Some(hw("SN-P")), ..new_device("p") };
        store.create_device(&operator(), waiting, at(0)).await.unwrap();
        create_active(&store, "gone", at(0)).await;
        store.decommission_device(&operator(), &id("gone"), at(0)).await.unwrap();

        let batches = vec![vec![row(2, "a", None), row(3, "b", None), row(4, "c", None)]];
        let result = import(&store, OnConflict::Skip, batches, End::Commit, at(1)).await.unwrap();
        assert_eq!(counts(&result), (1, 0, 2));
        assert_eq!(store.get_device(&id("a")).await.unwrap(), original);

        let batches = vec![vec![
            row(2, "a", Some("SN-A")),
            ImportRow { line: 3, device: NewDevice { status: Some(DeviceStatus::Inactive), ..new_device("b") } },
            row(4, "d", None),
        ]];
        let result = import(&store, OnConflict::Update, batches, End::Commit, at(2)).await.unwrap();
        assert_eq!(counts(&result), (1, 2, 0));
        let a = store.get_device(&id("a")).await.unwrap();
        assert_eq!(a.status, DeviceStatus::Active, "no status in the row: the lifecycle stays");
        assert_eq!((a.hw_id, a.site), (Some(hw("SN-A")), Some(label("depot"))));
        assert_eq!(a.tags, tags(&[("batch", "b7"), ("line", "2")]));
        assert_eq!((a.created_at, a.updated_at), (at(0), at(2)));
        assert_eq!(store.get_device(&id("b")).await.unwrap().status, DeviceStatus::Inactive);

        // Rows that would break the lifecycle are errors, and take the whole import down.
        let batches = vec![vec![
            row(2, "e", None),
            ImportRow { line: 3, device: NewDevice { status: Some(DeviceStatus::Active), ..new_device("p") } },
            row(4, "gone", None),
        ]];
        assert_err!(
            import(&store, OnConflict::Update, batches, End::Commit, at(3)).await,
            StoreError::Import(errors) if errors == vec![
                (3, r#"cannot change status of "p" from provisioning to active"#.to_owned()),
                (4, r#"device "gone" is decommissioned and cannot be updated"#.to_owned()),
            ]
        );
        assert_err!(store.get_device(&id("e")).await, StoreError::NotFound { .. });

        // An update may keep its own hardware id, but not take another live device's.
        let batches = vec![vec![row(2, "a", Some("SN-A")), row(3, "b", Some("SN-P"))]];
        assert_err!(
            import(&store, OnConflict::Update, batches, End::Commit, at(4)).await,
            StoreError::Import(errors) if errors == vec![(3, r#"hardware id "SN-P" is already used by device "p""#.to_owned())]
        );
        assert_eq!(store.get_device(&id("b")).await.unwrap().hw_id, None);
    }

    /// Operations over more devices than one SQL statement handles (imports, bulk updates,
    /// membership changes, pages) split their work without losing or repeating any device.
    async fn large_bulk_operations_cover_every_device(store: Store) {
        let n_devices = 1001;
        let rows: Vec<ImportRow> = (0..n_devices).map(|n| row(n + 2, &format!("imp-{n:04}"), Some(&format!("SN-{n}")))).collect();
        let batches: Vec<Vec<ImportRow>> = rows.chunks(600).map(<[ImportRow]>::to_vec).collect();
        let result = import(&store, OnConflict::Error, batches, End::Commit, at(0)).await.unwrap();
        assert_eq!(counts(&result), (n_devices, 0, 0));
        assert_eq!(store.get_device(&id("imp-0999")).await.unwrap().tags, tags(&[("batch", "b7"), ("line", "1001")]));

        let first = store.list_devices(&query(""), DeviceSort::Id, SortOrder::Asc, None, 5000, NOW).await.unwrap();
        assert_eq!(first.items.len(), 1000, "pages are capped at 1000 devices");
        let rest = store.list_devices(&query(""), DeviceSort::Id, SortOrder::Asc, first.next_cursor.as_deref(), 5000, NOW).await.unwrap();
        assert_eq!((ids_of(&rest.items), rest.next_cursor), (strings(&["imp-1000"]), None));

        let everyone: Vec<_> = (0..n_devices).map(|n| id(&format!("imp-{n:04}"))).collect();
        let all = drover_proto::groups::NewGroup { name: group("all"), query: None, parent: None, description: String::new() };
        store.create_group(&operator(), all, at(1)).await.unwrap();
        assert_eq!(store.add_group_members(&operator(), &group("all"), everyone.clone(), at(1)).await.unwrap(), n_devices);
        assert_eq!(store.get_group(&group("all"), NOW).await.unwrap().member_count, Some(n_devices));

        let patch = DevicePatch {
            tags: tag_patch(&[("wave", Some("2")), ("line", None)]),
            region: Some(Some(label("eu"))),
            ..DevicePatch::default()
        };
        assert_eq!(store.bulk_update_devices(&operator(), &query("group = all"), patch, at(2)).await.unwrap(), (n_devices, n_devices));
        assert_eq!(store.count_devices(&query("tags.wave = '2' AND NOT tags.line EXISTS AND region = eu"), NOW).await.unwrap(), n_devices);

        let rows: Vec<ImportRow> = (0..n_devices).map(|n| row(n + 2, &format!("imp-{n:04}"), Some(&format!("SN-{n}")))).collect();
        let result = import(&store, OnConflict::Update, vec![rows], End::Commit, at(3)).await.unwrap();
        assert_eq!(counts(&result), (0, n_devices, 0));
        assert_eq!(store.count_devices(&query("tags.line EXISTS AND NOT tags.wave EXISTS AND NOT region EXISTS"), NOW).await.unwrap(), n_devices);

        assert_eq!(store.remove_group_members(&operator(), &group("all"), everyone, at(4)).await.unwrap(), n_devices);
        assert_eq!(store.count_devices(&query("group = all"), NOW).await.unwrap(), 0);
    }
}

/// How the producer ends an import.
#[derive(Debug, Clone, Copy)]
enum End {
    Commit,
    Abort,
    DropSender,
}

/// Streams `batches` into `import_devices` from a separate task, as the HTTP handler does.
async fn import(
    store: &Store,
    on_conflict: OnConflict,
    batches: Vec<Vec<ImportRow>>,
    end: End,
    now: Timestamp,
) -> Result<ImportResult, StoreError> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let producer = tokio::spawn(async move {
        for batch in batches {
            if tx.send(ImportMsg::Batch(batch)).await.is_err() {
                return; // The store gave up (a rejected batch); it reports why.
            }
        }
        match end {
            End::Commit => {
                let _ = tx.send(ImportMsg::Commit).await;
            }
            End::Abort => {
                let _ = tx.send(ImportMsg::Abort).await;
            }
            End::DropSender => drop(tx),
        }
    });
    let result = store
        .import_devices(&operator(), on_conflict, rx, now)
        .await;
    producer.await.unwrap();
    result
}

/// An import row for a pre-authorised (or, without `hw_id`, provisioning) device.
fn row(line: u64, device_id: &str, hw_id: Option<&str>) -> ImportRow {
    let device = NewDevice {
        hw_id: hw_id.map(hw),
        site: Some(label("depot")),
        tags: tags(&[("batch", "b7"), ("line", &line.to_string())]),
        ..new_device(device_id)
    };
    ImportRow { line, device }
}

fn counts(result: &ImportResult) -> (u64, u64, u64) {
    (result.created, result.updated, result.skipped)
}
