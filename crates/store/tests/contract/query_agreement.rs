//! The fleet query language has two implementations: `Query::matches` evaluates a device in memory
//! (the reference semantics) and `Query::to_sql` compiles to SQL for the store. Over a fleet built
//! to hit every edge (missing attributes, empty and case-variant values, `%`, `_` and `[` in values,
//! pre-release versions, never-seen devices, every lifecycle status, static groups), each query must
//! select exactly the same devices both ways, through `list_devices` (paged) and `count_devices`.

use std::collections::{BTreeMap, BTreeSet};

use drover_core::{Device, DeviceStatus, GroupName};
use drover_proto::device_api::ProvisionRequest;
use drover_proto::devices::{DevicePatch, DeviceSort, NewDevice, SortOrder};
use drover_proto::groups::NewGroup;
use drover_store::{ProvisionOptions, Store};

use crate::support::*;

/// Queries covering every field, every operator, and the combinators.
const QUERIES: &[&str] = &[
    // Always-present text fields.
    "id = dev-007",
    "id != dev-007",
    "id ~ 'dev-0?1'",
    "id IN (dev-001, dev-002, dev-250, missing)",
    "id NOT IN (dev-001, dev-002)",
    "type = thermostat",
    "device_type NOT IN (thermostat, meter)",
    "type ~ '*-v?'",
    // Optional text fields, with literal % _ [ in values and patterns.
    "serial EXISTS",
    "NOT hw_id EXISTS",
    "hw_id ~ 'SN_1*'",
    "hw_id ~ '*%*'",
    "hw_id !~ 'SN-1*'",
    "hw_id != SN-10",
    "hw_rev IN (rev2, 'rev2.1')",
    "hw_rev NOT IN (rev1)",
    "hw_rev = rev_3 OR hw_rev = 'rev%4'",
    "hw_rev ~ 'rev?'",
    "hw_rev ~ 'rev_*'",
    "site ~ 'berlin-*'",
    "site ~ '100%_*'",
    "site ~ '100?*'",
    "site ~ 'b[1]' OR site = 'b[1]'",
    "site ~ 'caf?'",
    "site != hamburg",
    "NOT site = hamburg",
    "site = ''",
    "site IN (hamburg, '')",
    "region IN (eu, us) AND status = active",
    "region NOT IN (eu)",
    "region !~ 'e*'",
    // Tags.
    "tags.env = prod",
    "tags.env != prod",
    "NOT tags.env = prod",
    "tags.env = ''",
    "tags.env ~ '*'",
    "tags.env !~ 'p*'",
    "tags.env EXISTS AND NOT tags.owner EXISTS",
    "tags.owner ~ 'team?a'",
    "tags.owner ~ '*%*' OR tags.owner ~ '*_b'",
    "tags.owner NOT IN ('team a', 'TEAM A')",
    "tags.ring IN ('1', '10')",
    "tags.Ring EXISTS",
    // Status.
    "status IN (active, error)",
    "status NOT IN (active, decommissioned)",
    "status != pending",
    "status = rejected OR status = provisioning",
    // Firmware: semantic order, pre-releases, build metadata, text globs.
    "firmware < 2.10.0",
    "firmware >= 2.3.0-beta.2 AND firmware <= 2.9.1",
    "firmware > 1.0.0-rc.1",
    "firmware = 2.3.0",
    "firmware != 2.3.0",
    "firmware IN (1.0.0, 2.10.0)",
    "firmware NOT IN (1.0.0)",
    "firmware ~ '2.*'",
    "firmware !~ '*-*'",
    "firmware ~ '*+b7'",
    "NOT firmware EXISTS",
    "NOT firmware < 3.0.0",
    // Times, relative and absolute.
    "last_seen < now-10m",
    "last_seen > now-10m",
    "last_seen <= now-30m OR last_seen >= now-5m",
    "NOT last_seen > now-10m",
    "last_seen >= 1970-01-01T00:00:00Z",
    "last_seen EXISTS",
    "created < now-60m",
    "created >= 2027-01-15T06:30:00Z AND created <= now-45m",
    "updated > now-30m",
    "updated_at <= now-2h",
    // Static groups.
    "group = canary",
    "group != canary",
    "group IN (canary, berlin)",
    "group NOT IN (beta)",
    "group = canary AND NOT (site ~ 'berlin-*' OR tags.env = prod)",
    // Combinations.
    "(status = active OR status = inactive) AND firmware < 2.10.0 AND last_seen < now-10m",
    "tags.env = prod AND firmware < 2.3.0 AND hw_rev IN (rev2, \"rev2.1\") AND last_seen < now-10m AND NOT site ~ \"berlin-*\"",
    "NOT (NOT region = eu OR tags.ring EXISTS)",
    "",
];

/// Firmware versions the fleet reports: pre-releases, build metadata, and 2.10 after 2.9.
const FIRMWARE: [Option<&str>; 10] = [
    None,
    Some("1.0.0-rc.1"),
    Some("1.0.0"),
    Some("2.3.0-beta.2"),
    Some("2.3.0"),
    Some("2.3.0+b7"),
    Some("2.9.1"),
    Some("2.10.0"),
    Some("3.0.0-alpha"),
    Some("10.0.0"),
];

/// Sites, including a case variant, SQL wildcard characters, a glob bracket and a non-ASCII letter.
const SITES: [Option<&str>; 9] = [
    None,
    Some("berlin-mitte"),
    Some("berlin-kreuzberg"),
    Some("Berlin-mitte"),
    Some("hamburg"),
    Some("100%_sure"),
    Some("100 percent"),
    Some("b[1]"),
    Some("café"),
];

/// Queries that legitimately select nothing (or everything) in this fleet.
const TRIVIAL: &[&str] = &["site = ''", ""];

contract_tests! {
    async fn sql_and_in_memory_evaluation_select_the_same_devices(store: Store) {
        let fleet = create_fleet(&store, 300).await;
        let n_devices = fleet.len();
        assert_eq!(store.count_devices(&query(""), NOW).await.unwrap(), n_devices as u64);

        // The reference: evaluate in memory on each device as the store returns it.
        let mut loaded: Vec<(Device, Vec<GroupName>)> = Vec::with_capacity(n_devices);
        for device_id in &fleet {
            let device = store.get_device(&id(device_id)).await.unwrap();
            // No dynamic groups exist here, so these are exactly the static memberships.
            let groups = store.device_groups(&id(device_id), NOW).await.unwrap();
            loaded.push((device, groups));
        }
        let statuses: BTreeSet<DeviceStatus> = loaded.iter().map(|(d, _)| d.status).collect();
        assert_eq!(statuses.len(), DeviceStatus::ALL.len(), "the fleet has every status: {statuses:?}");

        let mut failures = Vec::new();
        for (query_idx, text) in QUERIES.iter().enumerate() {
            let parsed = query(text);
            let expected: BTreeSet<String> = loaded
                .iter()
                .filter(|(device, groups)| parsed.matches(device, groups, NOW))
                .map(|(device, _)| device.id.as_str().to_owned())
                .collect();
            if !TRIVIAL.contains(text) {
                assert!(
                    !expected.is_empty() && expected.len() < n_devices,
                    "query {text:?} should select some but not all devices (selects {})",
                    expected.len()
                );
            }
            // Page through in a different order for each query, so query and cursor parameters mix.
            let sort = [DeviceSort::Id, DeviceSort::CreatedAt, DeviceSort::UpdatedAt, DeviceSort::LastSeen, DeviceSort::Firmware][query_idx % 5];
            let order = if query_idx % 2 == 0 { SortOrder::Asc } else { SortOrder::Desc };
            let (listed, _) = list_all(&store, &parsed, sort, order, 23, NOW).await;
            let listed_ids: Vec<String> = ids_of(&listed);
            let listed_set: BTreeSet<String> = listed_ids.iter().cloned().collect();
            assert_eq!(listed_set.len(), listed_ids.len(), "{text}: a device was listed twice");
            let counted = store.count_devices(&parsed, NOW).await.unwrap();
            if listed_set != expected || counted != expected.len() as u64 {
                failures.push(format!(
                    "{text:?}: memory {} / list {} / count {counted}; only in memory {:?}; only in SQL {:?}",
                    expected.len(),
                    listed_set.len(),
                    expected.difference(&listed_set).take(5).collect::<Vec<_>>(),
                    listed_set.difference(&expected).take(5).collect::<Vec<_>>(),
                ));
            }
        }
        assert!(failures.is_empty(), "SQL and in-memory evaluation disagree:\n{}", failures.join("\n"));

        // Dynamic groups use both paths too: `get_group` counts members in SQL, `device_groups`
        // evaluates each device in memory.
        let dynamic = [
            ("recently-seen", "last_seen > now-10m"),
            ("prod-behind", "tags.env = prod AND firmware < 2.10.0"),
            ("canary-berlin", "group = canary AND site ~ 'berlin-*'"),
            ("odd-values", "hw_id ~ '*%*' OR hw_rev = rev_3 OR NOT region EXISTS"),
        ];
        let mut members: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (name, text) in dynamic {
            let new = NewGroup { name: group(name), query: Some(text.to_owned()), parent: None, description: String::new() };
            store.create_group(&operator(), new, NOW).await.unwrap();
            let (listed, _) = list_all(&store, &store.group_query(&group(name)).await.unwrap(), DeviceSort::Id, SortOrder::Asc, 1000, NOW).await;
            let listed: BTreeSet<String> = ids_of(&listed).into_iter().collect();
            assert_eq!(store.get_group(&group(name), NOW).await.unwrap().member_count, Some(listed.len() as u64), "{name}");
            assert!(!listed.is_empty() && listed.len() < n_devices, "{name} selects {}", listed.len());
            members.insert(name, listed);
        }
        for (device, static_groups) in &loaded {
            let in_groups: BTreeSet<String> = store.device_groups(&device.id, NOW).await.unwrap().into_iter().map(GroupName::into_string).collect();
            let mut expected: BTreeSet<String> = static_groups.iter().map(|g| g.as_str().to_owned()).collect();
            expected.extend(members.iter().filter(|(_, ids)| ids.contains(device.id.as_str())).map(|(name, _)| (*name).to_owned()));
            assert_eq!(in_groups, expected, "{}", device.id);
        }
    }
}

/// A deterministic pseudo-random sequence (xorshift64*), so the fleet is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// How a fleet device comes into being.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Origin {
    /// Registered by an operator as active, inactive or error; never seen.
    Registered,
    /// Pre-authorised, not yet provisioned.
    Preauthorised,
    /// Pre-authorised and provisioned, so seen at some point.
    Provisioned,
    /// Registered, then decommissioned.
    Decommissioned,
    /// Asked to join without a claim and waits for an operator.
    Pending,
    /// Asked to join and was turned away.
    Rejected,
}

async fn create_fleet(store: &Store, n: usize) -> Vec<String> {
    let mut rng = Rng(0x5EED_D40E_u64);
    for name in ["canary", "berlin", "beta"] {
        let new = NewGroup {
            name: group(name),
            query: None,
            parent: None,
            description: String::new(),
        };
        store
            .create_group(&operator(), new, at(-1000))
            .await
            .unwrap();
    }
    let mut members: BTreeMap<&str, Vec<drover_core::DeviceId>> = BTreeMap::new();
    let mut fleet = Vec::with_capacity(n);
    for idx in 0..n {
        let device_id = format!("dev-{idx:03}");
        let origin = rng.pick(&[
            Origin::Registered,
            Origin::Registered,
            Origin::Provisioned,
            Origin::Provisioned,
            Origin::Preauthorised,
            Origin::Decommissioned,
            Origin::Pending,
            Origin::Rejected,
        ]);
        let needs_hw = matches!(
            origin,
            Origin::Preauthorised | Origin::Provisioned | Origin::Pending | Origin::Rejected
        );
        let hw_id = match rng.below(5) {
            0 if !needs_hw => None,
            0 | 1 => Some(format!("SN-{idx}")),
            2 => Some(format!("SN_{idx}")),
            3 => Some(format!("SN%{idx}")),
            _ => Some(format!("sn-{idx}")),
        };
        let created = at(-(rng.below(180) as i64));
        let firmware = rng.pick(&FIRMWARE).map(version);
        let device_type =
            device_type(rng.pick(&["thermostat", "meter", "gateway-v2", "gateway-v10"]));

        let mut attributes = DevicePatch {
            hw_rev: Some(
                rng.pick(&[
                    None,
                    Some("rev1"),
                    Some("rev2"),
                    Some("rev2.1"),
                    Some("rev_3"),
                    Some("rev%4"),
                    Some("REV2"),
                ])
                .map(label),
            ),
            site: Some(rng.pick(&SITES).map(label)),
            region: Some(
                rng.pick(&[None, Some("eu"), Some("us"), Some("ap")])
                    .map(label),
            ),
            ..DevicePatch::default()
        };
        let mut tag_pairs: Vec<(&str, &str)> = Vec::new();
        if let Some(env) = rng.pick(&[
            None,
            Some("prod"),
            Some("prod"),
            Some("staging"),
            Some("dev"),
            Some(""),
        ]) {
            tag_pairs.push(("env", env));
        }
        if let Some(owner) = rng.pick(&[
            None,
            Some("team a"),
            Some("team_b"),
            Some("team%c"),
            Some("TEAM A"),
        ]) {
            tag_pairs.push(("owner", owner));
        }
        if let Some(ring) = rng.pick(&[None, None, Some("1"), Some("2"), Some("10")]) {
            tag_pairs.push(("ring", ring));
        }
        if rng.chance(5) {
            tag_pairs.push(("Ring", "upper"));
        }
        let device_tags = tags(&tag_pairs);

        match origin {
            Origin::Registered
            | Origin::Decommissioned
            | Origin::Preauthorised
            | Origin::Provisioned => {
                let status = match origin {
                    Origin::Registered | Origin::Decommissioned => Some(rng.pick(&[
                        DeviceStatus::Active,
                        DeviceStatus::Inactive,
                        DeviceStatus::Error,
                    ])),
                    _ => None,
                };
                let new = NewDevice {
                    id: Some(id(&device_id)),
                    device_type: device_type.clone(),
                    hw_id: hw_id.as_deref().map(hw),
                    hw_rev: attributes.hw_rev.take().flatten(),
                    site: attributes.site.take().flatten(),
                    region: attributes.region.take().flatten(),
                    status,
                    firmware: firmware.clone(),
                    tags: device_tags,
                    last_seen: None,
                    preauth_secret: None,
                    issue_credential: false,
                };
                store
                    .create_device(&operator(), new, created)
                    .await
                    .unwrap();
            }
            Origin::Pending | Origin::Rejected => {
                let request = ProvisionRequest {
                    hardware_id: hw(hw_id.as_deref().unwrap()),
                    claim_token: None,
                    preauth_secret: None,
                    nonce: Some(format!("nonce-for-{device_id}-0123456789")),
                    device_id: Some(id(&device_id)),
                    device_type: Some(device_type.clone()),
                    hw_rev: None,
                    firmware: firmware.clone(),
                };
                store
                    .provision(
                        request,
                        ProvisionOptions {
                            allow_pending: true,
                        },
                        created,
                    )
                    .await
                    .unwrap();
                // Enrolment sets no site or tags; an operator may add them while it waits.
                attributes.tags = device_tags.into_iter().map(|(k, v)| (k, Some(v))).collect();
                store
                    .update_device(&operator(), &id(&device_id), attributes, created)
                    .await
                    .unwrap();
            }
        }

        let later = |rng: &mut Rng| {
            at((created.as_millis() - NOW.as_millis()) / MINUTE + rng.below(60) as i64).min(NOW)
        };
        match origin {
            Origin::Provisioned => {
                let request = ProvisionRequest {
                    hardware_id: hw(hw_id.as_deref().unwrap()),
                    claim_token: None,
                    preauth_secret: None,
                    nonce: None,
                    device_id: None,
                    device_type: None,
                    hw_rev: None,
                    firmware: None,
                };
                store
                    .provision(request, ProvisionOptions::default(), later(&mut rng))
                    .await
                    .unwrap();
                if rng.chance(30) {
                    let patch = DevicePatch {
                        status: Some(rng.pick(&[DeviceStatus::Inactive, DeviceStatus::Error])),
                        ..DevicePatch::default()
                    };
                    store
                        .update_device(&operator(), &id(&device_id), patch, later(&mut rng))
                        .await
                        .unwrap();
                }
            }
            Origin::Decommissioned => {
                store
                    .decommission_device(&operator(), &id(&device_id), later(&mut rng))
                    .await
                    .unwrap();
            }
            Origin::Rejected => {
                store
                    .reject_device(&operator(), &id(&device_id), later(&mut rng))
                    .await
                    .unwrap();
            }
            Origin::Registered if rng.chance(30) => {
                let patch = DevicePatch {
                    tags: tag_patch(&[("edited", Some("yes"))]),
                    ..DevicePatch::default()
                };
                store
                    .update_device(&operator(), &id(&device_id), patch, later(&mut rng))
                    .await
                    .unwrap();
            }
            _ => {}
        }

        for name in ["canary", "berlin", "beta"] {
            if rng.chance(20) {
                members.entry(name).or_default().push(id(&device_id));
            }
        }
        fleet.push(device_id);
    }
    for (name, ids) in members {
        store
            .add_group_members(&operator(), &group(name), ids, at(0))
            .await
            .unwrap();
    }
    fleet
}
