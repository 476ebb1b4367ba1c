//! Groups: static membership, the static hierarchy, dynamic groups that follow device changes, and
//! the rules that keep deletion from silently breaking other groups.

use drover_core::DeviceId;
use drover_proto::devices::DevicePatch;
use drover_proto::groups::{GroupKind, GroupPatch, NewGroup};
use drover_store::{Store, StoreError};

use crate::support::*;

contract_tests! {
    /// Adding and removing members counts only real changes; naming an unknown device fails the
    /// whole change.
    async fn static_group_members_are_added_and_removed(store: Store) {
        for device_id in ["a", "b", "c", "d"] {
            create_active(&store, device_id, at(0)).await;
        }
        let created = store.create_group(&operator(), static_group("canary", None), at(1)).await.unwrap();
        assert_eq!((created.kind, created.query, created.parent, created.created_at), (GroupKind::Static, None, None, at(1)));
        assert_eq!(created.description, "canary devices");
        assert_err!(
            store.create_group(&operator(), static_group("canary", None), at(1)).await,
            StoreError::Conflict(m) if m == r#"group "canary" already exists"#
        );

        assert_eq!(store.add_group_members(&operator(), &group("canary"), ids(&["a", "b"]), at(2)).await.unwrap(), 2);
        assert_eq!(store.add_group_members(&operator(), &group("canary"), ids(&["b", "c", "c"]), at(2)).await.unwrap(), 1);
        assert_eq!(member_count(&store, "canary").await, 3);

        assert_err!(
            store.add_group_members(&operator(), &group("canary"), ids(&["d", "nope-1", "nope-2"]), at(3)).await,
            StoreError::NotFound { kind: "device", id } if id == "nope-1, nope-2"
        );
        assert_err!(
            store.remove_group_members(&operator(), &group("canary"), ids(&["a", "nope-1"]), at(3)).await,
            StoreError::NotFound { kind: "device", id } if id == "nope-1"
        );
        assert_eq!(ids_matching(&store, "group = canary").await, strings(&["a", "b", "c"]));

        assert_eq!(store.remove_group_members(&operator(), &group("canary"), ids(&["a", "d"]), at(4)).await.unwrap(), 1);
        assert_eq!(store.remove_group_members(&operator(), &group("canary"), ids(&["a"]), at(4)).await.unwrap(), 0);
        assert_eq!(ids_matching(&store, "group = canary").await, strings(&["b", "c"]));
        assert_eq!(store.device_groups(&id("b"), NOW).await.unwrap(), vec![group("canary")]);
        assert_eq!(store.device_groups(&id("a"), NOW).await.unwrap(), vec![]);
        assert_eq!(store.group_query(&group("canary")).await.unwrap(), query("group = canary"));

        assert_err!(store.add_group_members(&operator(), &group("canary"), vec![], at(5)).await, StoreError::Invalid(_));
        assert_err!(
            store.add_group_members(&operator(), &group("nowhere"), ids(&["a"]), at(5)).await,
            StoreError::NotFound { kind: "group", id } if id == "nowhere"
        );
        store.create_group(&operator(), dynamic_group("prod", "tags.env = prod"), at(5)).await.unwrap();
        assert_err!(store.add_group_members(&operator(), &group("prod"), ids(&["a"]), at(5)).await, StoreError::Invalid(_));

        // Deleting a device removes its memberships.
        store.delete_device(&operator(), &id("b"), at(6)).await.unwrap();
        assert_eq!(member_count(&store, "canary").await, 1);
    }

    /// A parent must exist and be static, and the hierarchy can never become a cycle.
    async fn group_parents_must_exist_be_static_and_form_no_cycles(store: Store) {
        store.create_group(&operator(), static_group("fleet", None), at(0)).await.unwrap();
        store.create_group(&operator(), static_group("eu", Some("fleet")), at(0)).await.unwrap();
        let berlin = store.create_group(&operator(), static_group("berlin", Some("eu")), at(0)).await.unwrap();
        assert_eq!(berlin.parent, Some(group("eu")));
        store.create_group(&operator(), dynamic_group("prod", "tags.env = prod"), at(0)).await.unwrap();

        assert_err!(
            store.create_group(&operator(), static_group("orphan", Some("missing")), at(1)).await,
            StoreError::Invalid(m) if m == r#"parent group "missing" does not exist"#
        );
        assert_err!(
            store.create_group(&operator(), static_group("under-prod", Some("prod")), at(1)).await,
            StoreError::Invalid(m) if m == "parent group prod is dynamic; only static groups can be parents"
        );
        let dynamic_with_parent = NewGroup { parent: Some(group("fleet")), ..dynamic_group("dyn", "site = x") };
        assert_err!(store.create_group(&operator(), dynamic_with_parent, at(1)).await, StoreError::Invalid(_));
        assert_err!(store.create_group(&operator(), dynamic_group("empty", "  "), at(1)).await, StoreError::Invalid(_));
        assert_err!(store.create_group(&operator(), dynamic_group("broken", "site ="), at(1)).await, StoreError::Invalid(_));

        for parent in ["berlin", "eu", "fleet"] {
            let patch = GroupPatch { parent: Some(Some(group(parent))), ..GroupPatch::default() };
            assert_err!(
                store.update_group(&operator(), &group("fleet"), patch, at(2)).await,
                StoreError::Invalid(m) if m == format!("group {parent} cannot be the parent of fleet: that would make a cycle")
            );
        }
        let patch = GroupPatch { query: Some("site = x".into()), ..GroupPatch::default() };
        assert_err!(store.update_group(&operator(), &group("fleet"), patch, at(2)).await, StoreError::Invalid(_));

        // Moving a subtree is fine, and detaching makes a root.
        let patch = GroupPatch { parent: Some(Some(group("fleet"))), description: Some("moved".into()), ..GroupPatch::default() };
        let moved = store.update_group(&operator(), &group("berlin"), patch, at(3)).await.unwrap();
        assert_eq!((moved.parent, moved.description.as_str(), moved.updated_at), (Some(group("fleet")), "moved", at(3)));
        let patch = GroupPatch { parent: Some(None), ..GroupPatch::default() };
        store.update_group(&operator(), &group("eu"), patch, at(4)).await.unwrap();

        let listed: Vec<(String, Option<String>)> = store
            .list_groups()
            .await
            .unwrap()
            .into_iter()
            .map(|g| (g.name.into_string(), g.parent.map(|p| p.into_string())))
            .collect();
        let expected = [("berlin", Some("fleet")), ("eu", None), ("fleet", None), ("prod", None)]
            .map(|(name, parent)| (name.to_owned(), parent.map(str::to_owned)));
        assert_eq!(listed, expected);
    }

    /// A dynamic group is its query, evaluated on every read: members come and go with device
    /// edits, with no rebuild.
    async fn dynamic_group_membership_follows_device_changes_immediately(store: Store) {
        for device_id in ["a", "b", "c"] {
            create_active(&store, device_id, at(0)).await;
        }
        let set_env = |env: Option<&'static str>| DevicePatch { tags: tag_patch(&[("env", env)]), ..DevicePatch::default() };
        store.update_device(&operator(), &id("a"), set_env(Some("prod")), at(1)).await.unwrap();
        let prod = store.create_group(&operator(), dynamic_group("prod", "TAGS.env = prod"), at(1)).await.unwrap();
        assert_eq!((prod.kind, prod.query.as_deref()), (GroupKind::Dynamic, Some("tags.env = prod")));
        assert_eq!(member_count(&store, "prod").await, 1);

        store.update_device(&operator(), &id("b"), set_env(Some("prod")), at(2)).await.unwrap();
        assert_eq!(member_count(&store, "prod").await, 2);
        store.update_device(&operator(), &id("a"), set_env(None), at(3)).await.unwrap();
        assert_eq!(member_count(&store, "prod").await, 1);
        assert_eq!(store.device_groups(&id("b"), NOW).await.unwrap(), vec![group("prod")]);
        assert_eq!(store.device_groups(&id("a"), NOW).await.unwrap(), vec![]);

        // Dynamic groups can test static membership.
        store.create_group(&operator(), static_group("canary", None), at(4)).await.unwrap();
        store.create_group(&operator(), dynamic_group("canary-prod", "group = canary AND tags.env = prod"), at(4)).await.unwrap();
        assert_eq!(member_count(&store, "canary-prod").await, 0);
        store.add_group_members(&operator(), &group("canary"), ids(&["b", "c"]), at(5)).await.unwrap();
        assert_eq!(member_count(&store, "canary-prod").await, 1);
        assert_eq!(store.device_groups(&id("b"), NOW).await.unwrap(), vec![group("canary"), group("canary-prod"), group("prod")]);
        assert_eq!(store.device_groups(&id("c"), NOW).await.unwrap(), vec![group("canary")]);
        assert_eq!(store.group_query(&group("canary-prod")).await.unwrap(), query("group = canary AND tags.env = prod"));

        // Changing the query changes the members at once.
        let patch = GroupPatch { query: Some("group = canary".into()), ..GroupPatch::default() };
        store.update_group(&operator(), &group("canary-prod"), patch, at(6)).await.unwrap();
        assert_eq!(member_count(&store, "canary-prod").await, 2);
        assert_eq!(store.device_groups(&id("c"), NOW).await.unwrap(), vec![group("canary"), group("canary-prod")]);

        // Time-based queries are evaluated at the time of the read.
        store.create_group(&operator(), dynamic_group("recent", "updated > now-10m"), at(6)).await.unwrap();
        assert_eq!(store.get_group(&group("recent"), at(9)).await.unwrap().member_count, Some(3), "a at 3m, b at 2m, c at 0m");
        assert_eq!(store.get_group(&group("recent"), at(11)).await.unwrap().member_count, Some(2), "a and b");
        assert_eq!(store.get_group(&group("recent"), at(12)).await.unwrap().member_count, Some(1), "only a");
        assert_eq!(store.device_groups(&id("a"), at(12)).await.unwrap(), vec![group("recent")]);
        assert_eq!(store.device_groups(&id("a"), at(14)).await.unwrap(), vec![]);
    }

    /// Deleting a group must not orphan child groups or silently empty a dynamic group whose query
    /// names it.
    async fn a_group_cannot_be_deleted_while_other_groups_depend_on_it(store: Store) {
        create_active(&store, "a", at(0)).await;
        store.create_group(&operator(), static_group("fleet", None), at(0)).await.unwrap();
        store.create_group(&operator(), static_group("eu", Some("fleet")), at(0)).await.unwrap();
        store.create_group(&operator(), static_group("us", Some("fleet")), at(0)).await.unwrap();
        store.add_group_members(&operator(), &group("eu"), ids(&["a"]), at(0)).await.unwrap();
        store.create_group(&operator(), dynamic_group("eu-prod", "group = eu AND tags.env = prod"), at(0)).await.unwrap();
        store.create_group(&operator(), dynamic_group("not-us", "NOT group IN (beta, us)"), at(0)).await.unwrap();
        // Mentions "eu" and "us" only as values of other fields, which is no dependency.
        store.create_group(&operator(), dynamic_group("lookalike", "tags.team = eu OR site = \"fleet\""), at(0)).await.unwrap();

        assert_err!(
            store.delete_group(&operator(), &group("fleet"), at(1)).await,
            StoreError::Conflict(m) if m == "group fleet has child groups (eu, us); move or delete them first"
        );
        assert_err!(
            store.delete_group(&operator(), &group("eu"), at(1)).await,
            StoreError::Conflict(m) if m == "dynamic group eu-prod refers to group eu in its query; change it first"
        );
        assert_err!(
            store.delete_group(&operator(), &group("us"), at(1)).await,
            StoreError::Conflict(m) if m == "dynamic group not-us refers to group us in its query; change it first"
        );
        assert_eq!(member_count(&store, "eu").await, 1);

        store.delete_group(&operator(), &group("eu-prod"), at(2)).await.unwrap();
        store.delete_group(&operator(), &group("not-us"), at(2)).await.unwrap();
        store.delete_group(&operator(), &group("eu"), at(2)).await.unwrap();
        store.delete_group(&operator(), &group("us"), at(2)).await.unwrap();
        store.delete_group(&operator(), &group("fleet"), at(2)).await.unwrap();
        assert_err!(store.get_group(&group("eu"), NOW).await, StoreError::NotFound { kind: "group", .. });
        assert_eq!(store.device_groups(&id("a"), NOW).await.unwrap(), vec![]);
        assert_err!(store.delete_group(&operator(), &group("eu"), at(3)).await, StoreError::NotFound { .. });
        let names: Vec<String> = store.list_groups().await.unwrap().into_iter().map(|g| g.name.into_string()).collect();
        assert_eq!(names, ["lookalike"]);

        // A group re-created under the old name starts empty.
        store.create_group(&operator(), static_group("eu", None), at(4)).await.unwrap();
        assert_eq!(member_count(&store, "eu").await, 0);
    }
}

fn static_group(name: &str, parent: Option<&str>) -> NewGroup {
    NewGroup {
        name: group(name),
        query: None,
        parent: parent.map(group),
        description: format!("{name} devices"),
    }
}

fn dynamic_group(name: &str, query: &str) -> NewGroup {
    NewGroup {
        name: group(name),
        query: Some(query.to_owned()),
        parent: None,
        description: String::new(),
    }
}

fn ids(items: &[&str]) -> Vec<DeviceId> {
    items.iter().map(|item| id(item)).collect()
}

async fn member_count(store: &Store, name: &str) -> u64 {
    store
        .get_group(&group(name), NOW)
        .await
        .unwrap()
        .member_count
        .expect("get_group counts members")
}
