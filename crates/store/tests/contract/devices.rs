//! The device registry: create, read, patch, delete, decommission; hardware-id uniqueness; the
//! lifecycle rules editing must respect; counts; and idempotent migrations.

use drover_core::{Device, DeviceStatus};
use drover_proto::devices::{DevicePatch, NewDevice};
use drover_store::{AuditFilter, StoreError};

use crate::support::*;

contract_tests! {
    /// Every attribute round-trips; a patch sets, clears (`null`) and leaves fields alone; tags are
    /// set and removed key by key.
    async fn devices_are_created_read_patched_and_deleted(store: Store) {
        let new = NewDevice {
            hw_id: Some(hw("SN-0001")),
            hw_rev: Some(label("rev2")),
            site: Some(label("berlin-mitte")),
            region: Some(label("eu")),
            status: Some(DeviceStatus::Active),
            firmware: Some(version("v2.9")),
            tags: tags(&[("env", "prod"), ("owner", "team a"), ("empty", "")]),
            ..new_device("dev-1")
        };
        let (created, credential) = store.create_device(&operator(), new, at(0)).await.unwrap();
        assert_eq!(credential, None);
        let expected = Device {
            id: id("dev-1"),
            device_type: device_type("thermostat"),
            hw_id: Some(hw("SN-0001")),
            hw_rev: Some(label("rev2")),
            site: Some(label("berlin-mitte")),
            region: Some(label("eu")),
            status: DeviceStatus::Active,
            firmware: Some(version("2.9.0")),
            tags: tags(&[("env", "prod"), ("owner", "team a"), ("empty", "")]),
            created_at: at(0),
            updated_at: at(0),
            last_seen: None,
            connectivity: drover_core::Connectivity::Unknown,
            link_score: None,
        };
        assert_eq!(created, expected);
        assert_eq!(store.get_device(&id("dev-1")).await.unwrap(), expected);
        assert_eq!(store.get_device(&id("dev-1")).await.unwrap().firmware.unwrap().to_string(), "2.9.0");

        let patch = DevicePatch {
            device_type: Some(device_type("thermostat-v2")),
            site: Some(None),
            region: Some(Some(label("us"))),
            firmware: Some(Some(version("2.10.0"))),
            status: Some(DeviceStatus::Inactive),
            tags: tag_patch(&[("env", Some("staging")), ("owner", None), ("ring", Some("1")), ("absent", None)]),
            ..DevicePatch::default()
        };
        let updated = store.update_device(&operator(), &id("dev-1"), patch, at(5)).await.unwrap();
        let expected = Device {
            device_type: device_type("thermostat-v2"),
            site: None,
            region: Some(label("us")),
            firmware: Some(version("2.10.0")),
            status: DeviceStatus::Inactive,
            tags: tags(&[("env", "staging"), ("ring", "1"), ("empty", "")]),
            updated_at: at(5),
            ..expected
        };
        assert_eq!(updated, expected);
        assert_eq!(store.get_device(&id("dev-1")).await.unwrap(), expected);

        // Clearing the rest, and a patch that changes nothing keeps updated_at.
        let patch = DevicePatch { hw_id: Some(None), hw_rev: Some(None), firmware: Some(None), ..DevicePatch::default() };
        let cleared = store.update_device(&operator(), &id("dev-1"), patch, at(6)).await.unwrap();
        let expected = Device { hw_id: None, hw_rev: None, firmware: None, updated_at: at(6), ..expected };
        assert_eq!(cleared, expected);
        let patch = DevicePatch { region: Some(Some(label("us"))), tags: tag_patch(&[("ring", Some("1"))]), ..DevicePatch::default() };
        assert_eq!(store.update_device(&operator(), &id("dev-1"), patch, at(7)).await.unwrap(), expected);
        assert_eq!(store.get_device(&id("dev-1")).await.unwrap(), expected);

        assert_err!(
            store.update_device(&operator(), &id("dev-404"), DevicePatch::default(), at(8)).await,
            StoreError::NotFound { kind: "device", id } if id == "dev-404"
        );

        store.delete_device(&operator(), &id("dev-1"), at(9)).await.unwrap();
        assert_err!(store.get_device(&id("dev-1")).await, StoreError::NotFound { kind: "device", id } if id == "dev-1");
        assert_err!(store.delete_device(&operator(), &id("dev-1"), at(10)).await, StoreError::NotFound { .. });
        assert_eq!(store.count_devices(&query(""), NOW).await.unwrap(), 0);
    }

    /// Build metadata does not change a version's precedence, but it is part of what the device
    /// reported, so a patch that changes only the build is still written.
    async fn a_patch_changing_only_firmware_build_metadata_is_written(store: Store) {
        let new = NewDevice { firmware: Some(version("2.3.0")), ..new_device("dev-1") };
        store.create_device(&operator(), new, at(0)).await.unwrap();
        let patch = DevicePatch { firmware: Some(Some(version("2.3.0+b7"))), ..DevicePatch::default() };
        let updated = store.update_device(&operator(), &id("dev-1"), patch, at(1)).await.unwrap();
        assert_eq!((updated.firmware.unwrap().to_string(), updated.updated_at), ("2.3.0+b7".to_owned(), at(1)));
        let stored = store.get_device(&id("dev-1")).await.unwrap();
        assert_eq!(stored.firmware.unwrap().to_string(), "2.3.0+b7");
        assert_eq!(ids_matching(&store, "firmware ~ '*+b7'").await, strings(&["dev-1"]));
    }

    /// Ids are unique; the losing create writes nothing.
    async fn creating_a_device_with_a_taken_id_conflicts(store: Store) {
        let first = create_active(&store, "dev-1", at(0)).await;
        let again = NewDevice { site: Some(label("elsewhere")), hw_id: Some(hw("SN-9")), ..new_device("dev-1") };
        assert_err!(
            store.create_device(&operator(), again, at(1)).await,
            StoreError::Conflict(message) if message == r#"device "dev-1" already exists"#
        );
        assert_eq!(store.get_device(&id("dev-1")).await.unwrap(), first);
        assert_eq!(store.count_devices(&query(""), NOW).await.unwrap(), 1);
        // The losing create did not claim the hardware id either.
        let other = NewDevice { hw_id: Some(hw("SN-9")), ..new_device("dev-2") };
        store.create_device(&operator(), other, at(2)).await.unwrap();
    }

    /// Two live devices never share a hardware id; decommissioning the holder frees it for a
    /// replacement unit while the old record keeps it.
    async fn a_hardware_id_belongs_to_one_live_device_until_decommissioned(store: Store) {
        let holder = NewDevice { hw_id: Some(hw("SN-1")), status: Some(DeviceStatus::Active), ..new_device("dev-a") };
        store.create_device(&operator(), holder, at(0)).await.unwrap();
        let taken = r#"hardware id "SN-1" is already used by device "dev-a""#;

        let rival = NewDevice { hw_id: Some(hw("SN-1")), ..new_device("dev-b") };
        assert_err!(store.create_device(&operator(), rival.clone(), at(1)).await, StoreError::Conflict(m) if m == taken);
        create_active(&store, "dev-c", at(1)).await;
        let patch = DevicePatch { hw_id: Some(Some(hw("SN-1"))), ..DevicePatch::default() };
        assert_err!(store.update_device(&operator(), &id("dev-c"), patch.clone(), at(2)).await, StoreError::Conflict(m) if m == taken);
        assert_eq!(store.get_device(&id("dev-c")).await.unwrap().hw_id, None);
        // Re-stating its own hardware id is not a conflict with itself.
        let same = DevicePatch { hw_id: Some(Some(hw("SN-1"))), site: Some(Some(label("lab"))), ..DevicePatch::default() };
        store.update_device(&operator(), &id("dev-a"), same, at(2)).await.unwrap();

        store.decommission_device(&operator(), &id("dev-a"), at(3)).await.unwrap();
        let (replacement, _) = store.create_device(&operator(), rival, at(4)).await.unwrap();
        assert_eq!(replacement.hw_id, Some(hw("SN-1")));
        let old = store.get_device(&id("dev-a")).await.unwrap();
        assert_eq!((old.status, old.hw_id), (DeviceStatus::Decommissioned, Some(hw("SN-1"))));
        // Now dev-b holds it.
        let taken_by_b = r#"hardware id "SN-1" is already used by device "dev-b""#;
        assert_err!(store.update_device(&operator(), &id("dev-c"), patch, at(5)).await, StoreError::Conflict(m) if m == taken_by_b);
        assert_eq!(ids_matching(&store, "hw_id = SN-1").await, strings(&["dev-a", "dev-b"]));
    }

    /// Decommissioning revokes the credential, keeps the record and its audit history, and is final:
    /// the device can be read or deleted but not edited, re-credentialed or decommissioned again.
    async fn decommissioning_revokes_credentials_and_keeps_history(store: Store) {
        let new = NewDevice { issue_credential: true, ..new_device("dev-1") };
        let (device, credential) = store.create_device(&operator(), new, at(0)).await.unwrap();
        assert_eq!(device.status, DeviceStatus::Active, "an issued credential means nothing is left to provision");
        let credential = credential.expect("credential issued");
        assert!(credential.starts_with("drv_dev_"), "{credential}");
        assert_eq!(store.authenticate_device(&credential).await.unwrap().id, id("dev-1"));

        let decommissioned = store.decommission_device(&operator(), &id("dev-1"), at(1)).await.unwrap();
        assert_eq!(decommissioned, Device { status: DeviceStatus::Decommissioned, updated_at: at(1), ..device.clone() });
        assert_err!(store.authenticate_device(&credential).await, StoreError::Unauthorized(_));
        assert_eq!(store.get_device(&id("dev-1")).await.unwrap(), decommissioned);

        assert_err!(store.decommission_device(&operator(), &id("dev-1"), at(2)).await, StoreError::Conflict(_));
        let patch = DevicePatch { site: Some(Some(label("lab"))), ..DevicePatch::default() };
        assert_err!(
            store.update_device(&operator(), &id("dev-1"), patch, at(2)).await,
            StoreError::Invalid(m) if m == "device dev-1 is decommissioned; it can only be read or deleted"
        );
        assert_err!(store.rotate_credential(&operator(), &id("dev-1"), at(2)).await, StoreError::Invalid(_));
        assert_eq!(store.get_device(&id("dev-1")).await.unwrap(), decommissioned);

        let history = store.list_audit(audit_filter_for("device", "dev-1")).await.unwrap();
        let actions: Vec<&str> = history.items.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["device.decommission", "device.create"]);

        store.delete_device(&operator(), &id("dev-1"), at(3)).await.unwrap();
        let history = store.list_audit(audit_filter_for("device", "dev-1")).await.unwrap();
        let actions: Vec<&str> = history.items.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["device.delete", "device.decommission", "device.create"]);
    }

    /// Editing moves a device only among active, inactive and error; the other transitions have
    /// their own operations. A refused edit changes nothing.
    async fn editing_refuses_status_transitions_reserved_for_lifecycle_operations(store: Store) {
        create_active(&store, "dev-1", at(0)).await;
        let set = |status| DevicePatch { status: Some(status), site: Some(Some(label("moved"))), ..DevicePatch::default() };
        for (step, status) in [DeviceStatus::Inactive, DeviceStatus::Error, DeviceStatus::Active, DeviceStatus::Error].into_iter().enumerate() {
            let device = store.update_device(&operator(), &id("dev-1"), set(status), at(1 + step as i64)).await.unwrap();
            assert_eq!(device.status, status);
        }
        let refusals = [
            (DeviceStatus::Decommissioned, "cannot change status from error to decommissioned by editing: use the decommission operation"),
            (DeviceStatus::Pending, "cannot change status from error to pending by editing: only active, inactive and error can be set"),
            (DeviceStatus::Rejected, "cannot change status from error to rejected by editing: only active, inactive and error can be set"),
            (DeviceStatus::Provisioning, "cannot change status from error to provisioning by editing: only active, inactive and error can be set"),
        ];
        for (status, message) in refusals {
            let patch = DevicePatch { status: Some(status), site: Some(Some(label("nowhere"))), ..DevicePatch::default() };
            assert_err!(store.update_device(&operator(), &id("dev-1"), patch, at(10)).await, StoreError::Invalid(m) if m == message);
        }
        let device = store.get_device(&id("dev-1")).await.unwrap();
        assert_eq!((device.status, device.site, device.updated_at), (DeviceStatus::Error, Some(label("moved")), at(4)));

        let waiting = NewDevice { hw_id: Some(hw("SN-2")), ..new_device("dev-2") };
        assert_eq!(store.create_device(&operator(), waiting, at(0)).await.unwrap().0.status, DeviceStatus::Provisioning);
        let patch = DevicePatch { status: Some(DeviceStatus::Active), ..DevicePatch::default() };
        assert_err!(
            store.update_device(&operator(), &id("dev-2"), patch, at(1)).await,
            StoreError::Invalid(m) if m == "cannot change status from provisioning to active by editing: the device becomes active when it provisions"
        );

        for status in [DeviceStatus::Pending, DeviceStatus::Rejected, DeviceStatus::Decommissioned] {
            let new = NewDevice { status: Some(status), ..new_device("dev-3") };
            assert_err!(store.create_device(&operator(), new, at(0)).await, StoreError::Invalid(_));
        }
        assert_err!(store.get_device(&id("dev-3")).await, StoreError::NotFound { .. });
    }

    /// Counting by query and by status, across every lifecycle status.
    async fn devices_are_counted_by_query_and_by_status(store: Store) {
        assert_eq!(store.count_devices_by_status().await.unwrap(), vec![]);
        for n in 0..3 {
            create_active(&store, &format!("active-{n}"), at(0)).await;
        }
        for (device_id, status) in [("inactive-0", DeviceStatus::Inactive), ("error-0", DeviceStatus::Error)] {
            store.create_device(&operator(), NewDevice { status: Some(status), ..new_device(device_id) }, at(0)).await.unwrap();
        }
        for n in 0..2 {
            let new = NewDevice { hw_id: Some(hw(&format!("PRE-{n}"))), ..new_device(&format!("provisioning-{n}")) };
            store.create_device(&operator(), new, at(0)).await.unwrap();
        }
        create_active(&store, "gone-0", at(0)).await;
        store.decommission_device(&operator(), &id("gone-0"), at(1)).await.unwrap();
        for (n, device_id) in ["pending-0", "rejected-0"].into_iter().enumerate() {
            let request = drover_proto::device_api::ProvisionRequest {
                hardware_id: hw(&format!("UNKNOWN-{n}")),
                claim_token: None,
                preauth_secret: None,
                nonce: Some(format!("nonce-{n}-0123456789abcdef")),
                device_id: Some(id(device_id)),
                device_type: Some(device_type("gateway")),
                hw_rev: None,
                firmware: None,
            };
            let options = drover_store::ProvisionOptions { allow_pending: true };
            store.provision(request, options, at(1)).await.unwrap();
        }
        store.reject_device(&operator(), &id("rejected-0"), at(2)).await.unwrap();

        let expected: Vec<(String, u64)> = [
            ("active", 3),
            ("decommissioned", 1),
            ("error", 1),
            ("inactive", 1),
            ("pending", 1),
            ("provisioning", 2),
            ("rejected", 1),
        ]
        .into_iter()
        .map(|(status, n)| (status.to_owned(), n))
        .collect();
        assert_eq!(store.count_devices_by_status().await.unwrap(), expected);
        assert_eq!(store.count_devices(&query(""), NOW).await.unwrap(), 10);
        assert_eq!(store.count_devices(&query("status = active"), NOW).await.unwrap(), 3);
        assert_eq!(store.count_devices(&query("status NOT IN (active, decommissioned)"), NOW).await.unwrap(), 6);
        assert_eq!(store.count_devices(&query("hw_id EXISTS"), NOW).await.unwrap(), 4);
        assert_eq!(store.count_devices(&query("type = gateway"), NOW).await.unwrap(), 2);
    }
}

/// Opening a database that is already migrated, even from two processes at once, changes nothing.
async fn reopening_a_database_is_idempotent(url: String, backend: &'static str) {
    let store = open(&url, backend).await;
    assert_eq!(store.schema_version().await.unwrap(), 9);
    create_active(&store, "dev-1", at(0)).await;
    let (again, concurrently) = tokio::join!(open(&url, backend), open(&url, backend));
    for reopened in [again, concurrently] {
        assert_eq!(reopened.schema_version().await.unwrap(), 9);
        reopened.ping().await.unwrap();
        reopened.analyze().await.unwrap();
        assert_eq!(
            reopened.get_device(&id("dev-1")).await.unwrap().id,
            id("dev-1")
        );
        assert_eq!(reopened.count_devices(&query(""), NOW).await.unwrap(), 1);
    }
}

mod reopening_the_same_database_is_idempotent {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_sqlite() {
        with_sqlite_url(|url| reopening_a_database_is_idempotent(url, "sqlite")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgres() {
        with_postgres_url(|url| reopening_a_database_is_idempotent(url, "postgres")).await;
    }
}

/// The audit filter selecting one object's history.
fn audit_filter_for(kind: &str, target: &str) -> AuditFilter {
    AuditFilter {
        target_kind: Some(kind.into()),
        target_id: Some(target.into()),
        limit: 100,
        ..AuditFilter::default()
    }
}
