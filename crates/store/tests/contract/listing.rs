//! Listing devices with keyset pagination: every sort field in both directions returns each device
//! exactly once in order, cursors survive concurrent inserts, and foreign or forged cursors are
//! refused.

use std::cmp::Ordering;
use std::collections::HashMap;

use drover_core::query::Query;
use drover_core::{Device, DeviceStatus, Version};
use drover_proto::device_api::ProvisionRequest;
use drover_proto::devices::{DevicePatch, DeviceSort, NewDevice, SortOrder};
use drover_store::{ProvisionOptions, Store, StoreError};

use crate::support::*;

const SORTS: [DeviceSort; 5] = [
    DeviceSort::Id,
    DeviceSort::CreatedAt,
    DeviceSort::UpdatedAt,
    DeviceSort::LastSeen,
    DeviceSort::Firmware,
];
const ORDERS: [SortOrder; 2] = [SortOrder::Asc, SortOrder::Desc];

/// Firmware versions in semantic order (with `None` first), deliberately not in text order.
const FIRMWARE: [Option<&str>; 10] = [
    None,
    Some("1.0.0-beta.2"),
    Some("1.0.0-beta.11"),
    Some("1.0.0-rc.1"),
    Some("1.0.0"),
    Some("2.3.0+build5"),
    Some("2.9.0"),
    Some("2.9.1"),
    Some("2.10.0"),
    Some("10.0.0"),
];

contract_tests! {
    /// 250 devices with ties in every sort key, listed 100 at a time in every order.
    async fn pages_cover_every_device_once_in_every_sort_order(store: Store) {
        let created = create_fleet(&store, 250).await;
        let stored = load(&store, &created).await;
        let creation_idx: HashMap<&str, usize> = created.iter().enumerate().map(|(idx, id)| (id.as_str(), idx)).collect();
        for sort in SORTS {
            for order in ORDERS {
                let (listed, page_sizes) = list_all(&store, &Query::all(), sort, order, 100, NOW).await;
                assert_eq!(page_sizes, [100, 100, 50], "{sort:?} {order:?}");
                let mut expected = stored.clone();
                expected.sort_by(|a, b| compare(sort, a, b, &creation_idx));
                if order == SortOrder::Desc {
                    expected.reverse();
                }
                assert_eq!(ids_of(&listed), ids_of(&expected), "{sort:?} {order:?}");
                assert_eq!(listed, expected, "listed devices carry every attribute and tag ({sort:?} {order:?})");
            }
        }

        // Spelled out: firmware order is semantic, devices without firmware come first.
        let (listed, _) = list_all(&store, &Query::all(), DeviceSort::Firmware, SortOrder::Asc, 100, NOW).await;
        let mut seen: Vec<Option<String>> = listed.iter().map(|d| d.firmware.as_ref().map(Version::to_string)).collect();
        seen.dedup();
        let expected: Vec<Option<String>> = FIRMWARE.iter().map(|v| v.map(str::to_owned)).collect();
        assert_eq!(seen, expected);
        // And devices never seen sort as the earliest.
        let (listed, _) = list_all(&store, &Query::all(), DeviceSort::LastSeen, SortOrder::Desc, 100, NOW).await;
        assert!(listed.last().unwrap().last_seen.is_none() && listed.first().unwrap().last_seen.is_some());
    }

    /// A page boundary is a position in the key order, not an offset: rows inserted before it or
    /// deleted at it shift nothing.
    async fn a_cursor_stays_valid_when_devices_are_inserted_before_it(store: Store) {
        create_fleet(&store, 60).await;
        for (sort, early_id, late_id) in [(DeviceSort::Id, "000-early", "zzz-late"), (DeviceSort::CreatedAt, "early-created", "late-created")] {
            let before = list_all(&store, &Query::all(), sort, SortOrder::Asc, 1000, NOW).await.0;
            let first = store.list_devices(&Query::all(), sort, SortOrder::Asc, None, 20, NOW).await.unwrap();
            assert_eq!(ids_of(&first.items), ids_of(&before[..20]));
            let cursor = first.next_cursor.expect("more pages");

            // Insert one device that sorts before the cursor and one after, and delete the device
            // the cursor points at.
            store.create_device(&operator(), new_device(early_id), at(-10_000)).await.unwrap();
            store.create_device(&operator(), new_device(late_id), at(10_000)).await.unwrap();
            store.delete_device(&operator(), &before[19].id, NOW).await.unwrap();

            let mut rest = Vec::new();
            let mut cursor = Some(cursor);
            while let Some(current) = cursor {
                let page = store.list_devices(&Query::all(), sort, SortOrder::Asc, Some(&current), 20, NOW).await.unwrap();
                rest.extend(page.items);
                cursor = page.next_cursor;
            }
            let mut expected = ids_of(&before[20..]);
            expected.push(late_id.to_owned());
            assert_eq!(ids_of(&rest), expected, "{sort:?}");
        }
    }

    /// Cursors are bound to their sort field and refused when tampered with.
    async fn foreign_and_garbage_cursors_are_rejected(store: Store) {
        create_fleet(&store, 5).await;
        let page = store.list_devices(&Query::all(), DeviceSort::Id, SortOrder::Asc, None, 2, NOW).await.unwrap();
        let by_id = page.next_cursor.unwrap();
        assert_err!(
            store.list_devices(&Query::all(), DeviceSort::CreatedAt, SortOrder::Asc, Some(&by_id), 2, NOW).await,
            StoreError::Invalid(m) if m == "cursor belongs to a list sorted by id, not created_at"
        );
        // The same cursor is fine in the other direction of the same field.
        store.list_devices(&Query::all(), DeviceSort::Id, SortOrder::Desc, Some(&by_id), 2, NOW).await.unwrap();

        use base64::Engine;
        let encode = |raw: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let garbage = [
            ("not a cursor!".to_owned(), DeviceSort::Id),
            (String::new(), DeviceSort::Id),
            (encode("id|zz|1"), DeviceSort::Id),
            (encode("id|6465762d31"), DeviceSort::Id),
            (encode("id|6465762d31|one"), DeviceSort::Id),
            (encode("last_seen|yesterday|1"), DeviceSort::LastSeen),
            (encode("firmware|xyz|1"), DeviceSort::Firmware),
        ];
        for (cursor, sort) in garbage {
            assert_err!(
                store.list_devices(&Query::all(), sort, SortOrder::Asc, Some(&cursor), 2, NOW).await,
                StoreError::Invalid(m) if m == "invalid cursor: pass next_cursor from the previous page unchanged"
            );
        }
    }
}

/// Creates `n` devices whose sort keys tie in groups and whose ids are not in creation order, some
/// of them seen (provisioned) and some edited later. Returns the ids in creation order.
async fn create_fleet(store: &Store, n: usize) -> Vec<String> {
    let mut created = Vec::with_capacity(n);
    for idx in 0..n {
        // Ids in a scrambled order, with upper case, digits and ':' to test byte-wise ordering.
        let scrambled = (idx * 97) % n;
        let device_id = match scrambled % 4 {
            0 => format!("dev-{scrambled:03}"),
            1 => format!("Dev-{scrambled:03}"),
            2 => format!("{scrambled:03}-dev"),
            _ => format!("dev:{scrambled:03}"),
        };
        let new = NewDevice {
            hw_id: (idx % 3 == 0).then(|| hw(&format!("SN-{idx}"))),
            firmware: FIRMWARE[idx % FIRMWARE.len()].map(version),
            status: (idx % 3 != 0).then_some(DeviceStatus::Active),
            tags: tags(&[("n", &idx.to_string())]),
            ..new_device(&device_id)
        };
        // Five devices per creation minute.
        store
            .create_device(&operator(), new, at(-1000 + (idx / 5) as i64))
            .await
            .unwrap();
        if idx % 3 == 0 {
            // Pre-authorised: provisioning sets last_seen (and updated_at), in ties of three.
            let request = ProvisionRequest {
                hardware_id: hw(&format!("SN-{idx}")),
                claim_token: None,
                preauth_secret: None,
                nonce: None,
                device_id: None,
                device_type: None,
                hw_rev: None,
                firmware: None,
            };
            store
                .provision(
                    request,
                    ProvisionOptions::default(),
                    at(-500 + (idx / 9) as i64),
                )
                .await
                .unwrap();
        } else if idx % 4 == 1 {
            let patch = DevicePatch {
                site: Some(Some(label("edited"))),
                ..DevicePatch::default()
            };
            store
                .update_device(
                    &operator(),
                    &id(&device_id),
                    patch,
                    at(-200 + (idx % 7) as i64),
                )
                .await
                .unwrap();
        }
        created.push(device_id);
    }
    created
}

/// Every device, read one by one.
async fn load(store: &Store, ids: &[String]) -> Vec<Device> {
    let mut devices = Vec::with_capacity(ids.len());
    for device_id in ids {
        devices.push(store.get_device(&id(device_id)).await.unwrap());
    }
    devices
}

/// The documented order: the sort key, then creation order for ties.
fn compare(
    sort: DeviceSort,
    a: &Device,
    b: &Device,
    creation_idx: &HashMap<&str, usize>,
) -> Ordering {
    let key = match sort {
        DeviceSort::Id => a.id.as_str().as_bytes().cmp(b.id.as_str().as_bytes()),
        DeviceSort::CreatedAt => a.created_at.cmp(&b.created_at),
        DeviceSort::UpdatedAt => a.updated_at.cmp(&b.updated_at),
        DeviceSort::LastSeen => a.last_seen.cmp(&b.last_seen),
        DeviceSort::Firmware => a.firmware.cmp(&b.firmware),
    };
    key.then_with(|| creation_idx[a.id.as_str()].cmp(&creation_idx[b.id.as_str()]))
}
