//! Device identity: the three ways to provision (claim token, pre-authorisation, pending approval)
//! and the credential operations.

use drover_core::DeviceStatus;
use drover_proto::auth::NewClaim;
use drover_proto::device_api::ProvisionRequest;
use drover_proto::devices::NewDevice;
use drover_proto::groups::NewGroup;
use drover_store::{ProvisionOptions, StoreError};

use crate::support::*;

const PENDING: ProvisionOptions = ProvisionOptions {
    allow_pending: true,
};

contract_tests! {
    /// A claim token creates an active device with the claim's tags and group, counts its uses and
    /// stops at its limit.
    async fn claim_tokens_provision_active_devices_up_to_their_limit(store: Store) {
        let field = NewGroup { name: group("field"), query: None, parent: None, description: String::new() };
        store.create_group(&operator(), field, at(0)).await.unwrap();
        let new = NewClaim { group: Some(group("field")), ..new_claim("batch-1", Some("thermostat"), Some(2), "1h") };
        let (claim, token) = store.create_claim(&operator(), new, at(0)).await.unwrap();
        assert!(token.starts_with("drv_claim_"), "{token}");
        assert_eq!((claim.uses, claim.max_uses, claim.expires_at), (0, Some(2), at(60)));
        assert_eq!((claim.group, claim.tags.clone()), (Some(group("field")), tags(&[("batch", "1")])));
        assert_eq!(claim.created_by, "token:tok_operator");

        let request = ProvisionRequest { hw_rev: Some(label("rev2")), firmware: Some(version("1.0.0")), ..with_claim("SN-1", &token) };
        let outcome = store.provision(request, ProvisionOptions::default(), at(1)).await.unwrap();
        let device = outcome.device;
        assert!(device.id.as_str().starts_with("dev-"), "generated id {}", device.id);
        assert_eq!(device.status, DeviceStatus::Active);
        assert_eq!(device.device_type, device_type("thermostat"));
        assert_eq!((device.hw_id.clone(), device.hw_rev.clone()), (Some(hw("SN-1")), Some(label("rev2"))));
        assert_eq!(device.firmware, Some(version("1.0.0")));
        assert_eq!(device.tags, tags(&[("batch", "1")]));
        assert_eq!((device.created_at, device.last_seen), (at(1), Some(at(1))));
        assert_eq!(store.get_device(&device.id).await.unwrap(), device);
        let credential = outcome.credential.expect("a credential");
        assert_eq!(store.authenticate_device(&credential).await.unwrap(), device);
        assert_eq!(store.device_groups(&device.id, NOW).await.unwrap(), vec![group("field")]);
        assert_eq!(store.get_claim(&claim.id).await.unwrap().uses, 1);

        let request = ProvisionRequest {
            device_id: Some(id("thermo-2")),
            device_type: Some(device_type("thermostat")),
            ..with_claim("SN-2", &token)
        };
        let second = store.provision(request, ProvisionOptions::default(), at(2)).await.unwrap();
        assert_eq!(second.device.id, id("thermo-2"));
        assert_eq!(store.get_claim(&claim.id).await.unwrap().uses, 2);

        assert_err!(
            store.provision(with_claim("SN-3", &token), ProvisionOptions::default(), at(3)).await,
            StoreError::Unauthorized(m) if m == format!("claim token {} has been used 2 time(s), its limit", claim.id)
        );
        assert_eq!(store.get_claim(&claim.id).await.unwrap().uses, 2);
        assert_eq!(ids_matching(&store, "hw_id = SN-3").await, Vec::<String>::new());
        assert_eq!(ids_matching(&store, "group = field").await.len(), 2);

        // Deleting the claim's group detaches the claim; it keeps working without a group.
        let new = NewClaim { group: Some(group("field")), ..new_claim("open", None, None, "1h") };
        let (open_claim, open_token) = store.create_claim(&operator(), new, at(4)).await.unwrap();
        store.delete_group(&operator(), &group("field"), at(5)).await.unwrap();
        assert_eq!(store.get_claim(&open_claim.id).await.unwrap().group, None);
        let request = ProvisionRequest { device_type: Some(device_type("meter")), ..with_claim("SN-4", &open_token) };
        let outcome = store.provision(request, ProvisionOptions::default(), at(6)).await.unwrap();
        assert_eq!(store.device_groups(&outcome.device.id, NOW).await.unwrap(), vec![]);
    }

    /// Devices racing to use a claim never exceed its limit, and a pre-authorised hardware id
    /// yields exactly one credential however many requests present it at once.
    async fn concurrent_provisioning_respects_claim_limits_and_hands_out_one_credential(store: Store) {
        let (claim, token) = store.create_claim(&operator(), new_claim("rush", Some("meter"), Some(3), "1h"), at(0)).await.unwrap();
        let requests = (0..6).map(|n| store.provision(with_claim(&format!("RUSH-{n}"), &token), ProvisionOptions::default(), at(1)));
        let outcomes = futures::future::join_all(requests).await;
        let provisioned = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(provisioned, 3, "{outcomes:?}");
        assert!(outcomes.iter().all(|outcome| matches!(outcome, Ok(_) | Err(StoreError::Unauthorized(_)))), "{outcomes:?}");
        assert_eq!(store.get_claim(&claim.id).await.unwrap().uses, 3);
        assert_eq!(store.count_devices(&query("type = meter"), NOW).await.unwrap(), 3);

        store.create_device(&operator(), NewDevice { hw_id: Some(hw("PRE-1")), ..new_device("pre-1") }, at(0)).await.unwrap();
        let requests = (0..4).map(|_| store.provision(by_hardware_id("PRE-1"), ProvisionOptions::default(), at(2)));
        let outcomes = futures::future::join_all(requests).await;
        let credentials: Vec<&String> = outcomes.iter().filter_map(|outcome| outcome.as_ref().ok()?.credential.as_ref()).collect();
        assert_eq!(credentials.len(), 1, "{outcomes:?}");
        assert!(outcomes.iter().all(|outcome| matches!(outcome, Ok(_) | Err(StoreError::Conflict(_)))), "{outcomes:?}");
        assert_eq!(store.authenticate_device(credentials[0]).await.unwrap().id, id("pre-1"));
    }

    /// Expired, revoked and unknown claims are refused, as is a device type outside the claim's
    /// scope or a hardware id already in the registry; a refusal writes nothing.
    async fn claim_tokens_are_refused_when_expired_revoked_unknown_or_out_of_scope(store: Store) {
        let (scoped, scoped_token) = store.create_claim(&operator(), new_claim("scoped", Some("thermostat"), None, "10m"), at(0)).await.unwrap();
        let (_, open_token) = store.create_claim(&operator(), new_claim("open", None, None, "10m"), at(0)).await.unwrap();

        let wrong_type = ProvisionRequest { device_type: Some(device_type("meter")), ..with_claim("SN-1", &scoped_token) };
        assert_err!(
            store.provision(wrong_type, ProvisionOptions::default(), at(1)).await,
            StoreError::Invalid(m) if m == "this claim token is for device type thermostat, not meter"
        );
        assert_err!(store.provision(with_claim("SN-1", &open_token), ProvisionOptions::default(), at(1)).await, StoreError::Invalid(_));
        let typed = ProvisionRequest { device_type: Some(device_type("meter")), ..with_claim("SN-1", &open_token) };
        assert_eq!(store.provision(typed, ProvisionOptions::default(), at(1)).await.unwrap().device.device_type, device_type("meter"));

        // The hardware id is now registered, whichever claim is presented.
        assert_err!(store.provision(with_claim("SN-1", &scoped_token), ProvisionOptions::default(), at(2)).await, StoreError::Conflict(_));
        let preauthorised = NewDevice { hw_id: Some(hw("SN-PRE")), ..new_device("pre") };
        store.create_device(&operator(), preauthorised, at(2)).await.unwrap();
        assert_err!(store.provision(with_claim("SN-PRE", &scoped_token), ProvisionOptions::default(), at(2)).await, StoreError::Conflict(_));

        assert_err!(
            store.provision(with_claim("SN-2", "drv_claim_not-a-real-token"), ProvisionOptions::default(), at(2)).await,
            StoreError::Unauthorized(m) if m == "unknown claim token"
        );
        // A claim expires at its expiry instant.
        assert_err!(store.provision(with_claim("SN-2", &scoped_token), ProvisionOptions::default(), at(10)).await, StoreError::Unauthorized(_));
        let just_before_expiry = drover_core::Timestamp::from_millis(at(10).as_millis() - 1);
        store.provision(with_claim("SN-2", &scoped_token), ProvisionOptions::default(), just_before_expiry).await.unwrap();

        let revoked = store.revoke_claim(&operator(), &scoped.id, at(3)).await.unwrap();
        assert_eq!(revoked.revoked_at, Some(at(3)));
        assert_err!(
            store.provision(with_claim("SN-3", &scoped_token), ProvisionOptions::default(), at(4)).await,
            StoreError::Unauthorized(m) if m == format!("claim token {} has been revoked", scoped.id)
        );
        assert_err!(store.revoke_claim(&operator(), &scoped.id, at(5)).await, StoreError::Conflict(_));
        assert_err!(store.revoke_claim(&operator(), "clm_missing", at(5)).await, StoreError::NotFound { kind: "claim", .. });
        assert_eq!(store.get_claim(&scoped.id).await.unwrap().uses, 1);
        assert_eq!(ids_matching(&store, "hw_id IN (SN-2, SN-3)").await.len(), 1);

        let names: Vec<String> = store.list_claims().await.unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names.len(), 2);
        assert!(names.contains(&"scoped".to_owned()) && names.contains(&"open".to_owned()));

        // Claims are validated when created.
        assert_err!(store.create_claim(&operator(), new_claim("zero", None, Some(0), "1h"), at(0)).await, StoreError::Invalid(_));
        assert_err!(store.create_claim(&operator(), new_claim("forever", None, None, "400d"), at(0)).await, StoreError::Invalid(_));
        let lost = NewClaim { group: Some(group("nowhere")), ..new_claim("lost", None, None, "1h") };
        assert_err!(
            store.create_claim(&operator(), lost, at(0)).await,
            StoreError::Invalid(m) if m == r#"group "nowhere" does not exist"#
        );
    }

    /// An operator registers a hardware id; the first device to present it (and the secret, when
    /// one was set) gets the credential, once.
    async fn pre_authorised_devices_provision_with_their_hardware_id(store: Store) {
        let new = NewDevice { hw_id: Some(hw("PRE-1")), site: Some(label("depot")), ..new_device("pre-1") };
        let (registered, credential) = store.create_device(&operator(), new, at(0)).await.unwrap();
        assert_eq!((registered.status, credential), (DeviceStatus::Provisioning, None));

        let request = ProvisionRequest { hw_rev: Some(label("rev3")), firmware: Some(version("2.0.0")), ..by_hardware_id("PRE-1") };
        let outcome = store.provision(request, ProvisionOptions::default(), at(1)).await.unwrap();
        let expected = drover_core::Device {
            status: DeviceStatus::Active,
            hw_rev: Some(label("rev3")),
            firmware: Some(version("2.0.0")),
            updated_at: at(1),
            last_seen: Some(at(1)),
            ..registered
        };
        assert_eq!(outcome.device, expected);
        assert_eq!(store.authenticate_device(&outcome.credential.unwrap()).await.unwrap(), expected);
        assert_err!(
            store.provision(by_hardware_id("PRE-1"), ProvisionOptions::default(), at(2)).await,
            StoreError::Conflict(m) if m.starts_with(r#"hardware id "PRE-1" is already provisioned as device pre-1"#)
        );

        let secret = "s3cret-s3cret-s3cret";
        let new = NewDevice { hw_id: Some(hw("PRE-2")), preauth_secret: Some(secret.into()), ..new_device("pre-2") };
        store.create_device(&operator(), new, at(0)).await.unwrap();
        for presented in [None, Some("wrong-wrong-wrong-wrong")] {
            let request = ProvisionRequest { preauth_secret: presented.map(str::to_owned), ..by_hardware_id("PRE-2") };
            assert_err!(
                store.provision(request, ProvisionOptions::default(), at(1)).await,
                StoreError::Unauthorized(m) if m == "missing or wrong preauth_secret for this hardware id"
            );
        }
        assert_eq!(store.get_device(&id("pre-2")).await.unwrap().status, DeviceStatus::Provisioning);
        let wrong_type = ProvisionRequest { preauth_secret: Some(secret.into()), device_type: Some(device_type("meter")), ..by_hardware_id("PRE-2") };
        assert_err!(store.provision(wrong_type, ProvisionOptions::default(), at(1)).await, StoreError::Invalid(_));
        let request = ProvisionRequest { preauth_secret: Some(secret.into()), ..by_hardware_id("PRE-2") };
        let outcome = store.provision(request, ProvisionOptions::default(), at(2)).await.unwrap();
        assert_eq!(outcome.device.status, DeviceStatus::Active);
        assert!(outcome.credential.is_some());

        assert_err!(
            store.provision(by_hardware_id("UNKNOWN-1"), ProvisionOptions::default(), at(3)).await,
            StoreError::Unauthorized(m) if m == r#"hardware id "UNKNOWN-1" is not pre-authorised and no claim token was given"#
        );
        assert_err!(
            store.create_device(&operator(), NewDevice { preauth_secret: Some(secret.into()), ..new_device("no-hw") }, at(3)).await,
            StoreError::Invalid(_)
        );
        let short = NewDevice { hw_id: Some(hw("PRE-3")), preauth_secret: Some("short".into()), ..new_device("pre-3") };
        assert_err!(store.create_device(&operator(), short, at(3)).await, StoreError::Invalid(_));
        assert_eq!(store.count_devices(&query(""), NOW).await.unwrap(), 2);
    }

    /// An unknown device waits in `pending` under its nonce until an operator accepts it (then the
    /// nonce holder gets the credential) or rejects it (then the hardware id is free again).
    async fn pending_devices_wait_for_an_operator_and_only_their_nonce_gets_the_credential(store: Store) {
        let nonce = "nonce-aaaaaaaaaaaaaaaa";
        assert_err!(store.provision(enrol("UNK-1", None), PENDING, at(0)).await, StoreError::Invalid(_));
        assert_err!(store.provision(enrol("UNK-1", Some("short")), PENDING, at(0)).await, StoreError::Invalid(_));
        assert_err!(store.provision(enrol("UNK-1", Some(nonce)), ProvisionOptions::default(), at(0)).await, StoreError::Unauthorized(_));
        assert_eq!(store.count_devices(&query(""), NOW).await.unwrap(), 0);

        let request = drover_proto::device_api::ProvisionRequest { device_id: Some(id("unk-1")), ..enrol("UNK-1", Some(nonce)) };
        let outcome = store.provision(request, PENDING, at(1)).await.unwrap();
        assert_eq!((outcome.device.id.as_str(), outcome.device.status, outcome.credential), ("unk-1", DeviceStatus::Pending, None));
        assert_eq!(outcome.device.device_type, device_type("gateway"));

        let again = store.provision(enrol("UNK-1", Some(nonce)), PENDING, at(2)).await.unwrap();
        assert_eq!((again.device.id.as_str(), again.device.status, again.credential), ("unk-1", DeviceStatus::Pending, None));
        assert_err!(
            store.provision(enrol("UNK-1", Some("nonce-bbbbbbbbbbbbbbbb")), PENDING, at(2)).await,
            StoreError::Conflict(m) if m == r#"hardware id "UNK-1" is awaiting approval for a different requester (nonce mismatch)"#
        );
        assert_err!(store.reject_device(&operator(), &id("nope"), at(2)).await, StoreError::NotFound { .. });

        let accepted = store.accept_device(&operator(), &id("unk-1"), at(3)).await.unwrap();
        assert_eq!((accepted.status, accepted.updated_at), (DeviceStatus::Provisioning, at(3)));
        assert_err!(store.accept_device(&operator(), &id("unk-1"), at(3)).await, StoreError::Invalid(_));
        assert_err!(
            store.provision(enrol("UNK-1", Some("nonce-bbbbbbbbbbbbbbbb")), PENDING, at(4)).await,
            StoreError::Unauthorized(m) if m == "missing or wrong nonce for this accepted device"
        );
        let provisioned = store.provision(enrol("UNK-1", Some(nonce)), PENDING, at(5)).await.unwrap();
        assert_eq!((provisioned.device.id.as_str(), provisioned.device.status), ("unk-1", DeviceStatus::Active));
        let credential = provisioned.credential.expect("the nonce holder gets the credential");
        assert_eq!(store.authenticate_device(&credential).await.unwrap().id, id("unk-1"));
        assert_err!(store.provision(enrol("UNK-1", Some(nonce)), PENDING, at(6)).await, StoreError::Conflict(_));

        // Rejection frees the hardware id for a new request.
        let first = store.provision(enrol("UNK-2", Some(nonce)), PENDING, at(7)).await.unwrap().device;
        let rejected = store.reject_device(&operator(), &first.id, at(8)).await.unwrap();
        assert_eq!(rejected.status, DeviceStatus::Rejected);
        assert_err!(store.accept_device(&operator(), &first.id, at(9)).await, StoreError::Invalid(_));
        let second = store.provision(enrol("UNK-2", Some("nonce-cccccccccccccccc")), PENDING, at(9)).await.unwrap().device;
        assert_ne!(second.id, first.id);
        assert_eq!(second.status, DeviceStatus::Pending);
        assert_eq!(ids_matching(&store, "hw_id = UNK-2").await.len(), 2);
        assert_eq!(store.get_device(&first.id).await.unwrap().status, DeviceStatus::Rejected);
    }

    /// Rotation replaces the credential; revocation leaves none.
    async fn rotating_a_credential_invalidates_the_old_one_and_revoking_leaves_none(store: Store) {
        let (_, first) = store.create_device(&operator(), NewDevice { issue_credential: true, ..new_device("dev-1") }, at(0)).await.unwrap();
        let first = first.unwrap();
        let second = store.rotate_credential(&operator(), &id("dev-1"), at(1)).await.unwrap();
        assert_ne!(first, second);
        assert_err!(store.authenticate_device(&first).await, StoreError::Unauthorized(_));
        assert_eq!(store.authenticate_device(&second).await.unwrap().id, id("dev-1"));

        assert_eq!(store.revoke_credentials(&operator(), &id("dev-1"), at(2)).await.unwrap(), 1);
        assert_err!(store.authenticate_device(&second).await, StoreError::Unauthorized(_));
        assert_eq!(store.revoke_credentials(&operator(), &id("dev-1"), at(3)).await.unwrap(), 0);
        assert_eq!(store.get_device(&id("dev-1")).await.unwrap().status, DeviceStatus::Active);

        // Issuing a credential by hand to a pre-authorised device completes its provisioning.
        store.create_device(&operator(), NewDevice { hw_id: Some(hw("PRE-1")), ..new_device("pre-1") }, at(4)).await.unwrap();
        let credential = store.rotate_credential(&operator(), &id("pre-1"), at(5)).await.unwrap();
        let device = store.authenticate_device(&credential).await.unwrap();
        assert_eq!((device.id.as_str(), device.status, device.updated_at), ("pre-1", DeviceStatus::Active, at(5)));

        assert_err!(store.rotate_credential(&operator(), &id("nope"), at(6)).await, StoreError::NotFound { kind: "device", .. });
        assert_err!(store.revoke_credentials(&operator(), &id("nope"), at(6)).await, StoreError::NotFound { kind: "device", .. });
        assert_err!(store.authenticate_device("drv_dev_unknown").await, StoreError::Unauthorized(_));

        // Deleting a device deletes its credentials.
        store.delete_device(&operator(), &id("pre-1"), at(7)).await.unwrap();
        assert_err!(store.authenticate_device(&credential).await, StoreError::Unauthorized(_));
    }
}

fn new_claim(
    name: &str,
    device_type_scope: Option<&str>,
    max_uses: Option<u64>,
    expires_in: &str,
) -> NewClaim {
    NewClaim {
        name: name.to_owned(),
        device_type: device_type_scope.map(device_type),
        tags: tags(&[("batch", "1")]),
        group: None,
        expires_in: Some(expires_in.to_owned()),
        max_uses,
    }
}

fn by_hardware_id(hardware_id: &str) -> ProvisionRequest {
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

fn with_claim(hardware_id: &str, token: &str) -> ProvisionRequest {
    ProvisionRequest {
        claim_token: Some(token.to_owned()),
        ..by_hardware_id(hardware_id)
    }
}

fn enrol(hardware_id: &str, nonce: Option<&str>) -> ProvisionRequest {
    ProvisionRequest {
        nonce: nonce.map(str::to_owned),
        device_type: Some(device_type("gateway")),
        ..by_hardware_id(hardware_id)
    }
}
