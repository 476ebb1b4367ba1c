//! The README tour as a test: claim token → device provisions → fleet query finds it → dynamic
//! group contains it → every step is in the audit log.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

api_tests! {
    async fn new_user_tour_provisions_finds_groups_and_audits_a_device(app) {
        let (status, claim) = app
            .post("/api/v1/claims", json!({ "name": "factory-line-1", "device_type": "thermostat", "tags": { "env": "prod" }, "max_uses": 100 }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{claim}");
        let claim_token = claim["token"].as_str().unwrap();
        let claim_id = claim["claim"]["id"].as_str().unwrap();

        let (status, provisioned) = app
            .send(Method::POST, "/api/device/v1/provision", None, Some(json!({
                "claim_token": claim_token, "hardware_id": "SN-0001", "device_id": "thermo-0001",
                "hw_rev": "rev2", "firmware": "2.2.0"
            })))
            .await;
        assert_eq!(status, StatusCode::OK, "{provisioned}");
        assert_eq!(provisioned["device_id"], "thermo-0001");
        assert_eq!(provisioned["status"], "active");
        let credential = provisioned["credential"].as_str().unwrap();

        let (status, me) = app.send(Method::GET, "/api/device/v1/whoami", Some(credential), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(me["device_id"], "thermo-0001");

        let (status, page) = app
            .get_with("/api/v1/devices", &[("q", r#"tags.env = prod AND firmware < 2.3.0 AND hw_rev IN (rev2, "rev2.1") AND NOT site ~ "berlin-*""#)])
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let ids: Vec<&str> = page["items"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["thermo-0001"]);

        let (status, group) = app.post("/api/v1/groups", json!({ "name": "prod-old-firmware", "query": "tags.env = prod AND firmware < 2.3.0" })).await;
        assert_eq!(status, StatusCode::CREATED, "{group}");
        assert_eq!(group["kind"], "dynamic");
        assert_eq!(group["member_count"], 1);
        let (_, members) = app.get("/api/v1/groups/prod-old-firmware/devices").await;
        assert_eq!(members["items"][0]["id"], "thermo-0001");

        // The group is always current: once the device reports newer firmware it leaves the group.
        let (status, _) = app.patch("/api/v1/devices/thermo-0001", json!({ "firmware": "2.3.0" })).await;
        assert_eq!(status, StatusCode::OK);
        let (_, group) = app.get("/api/v1/groups/prod-old-firmware").await;
        assert_eq!(group["member_count"], 0);

        let (_, audit) = app.get("/api/v1/audit").await;
        let actions: Vec<(String, String, String)> = audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["actor"].as_str().unwrap().to_owned(), e["action"].as_str().unwrap().to_owned(), e["target_id"].as_str().unwrap().to_owned()))
            .collect();
        for (actor_prefix, action, target) in [
            ("token:", "claim.create", claim_id),
            ("device:thermo-0001", "device.provision", "thermo-0001"),
            ("token:", "group.create", "prod-old-firmware"),
            ("token:", "device.update", "thermo-0001"),
        ] {
            assert!(
                actions.iter().any(|(a, act, t)| a.starts_with(actor_prefix) && act == action && t == target),
                "missing audit entry {action} on {target}: {actions:?}"
            );
        }
        let (_, provision_entries) = app.get_with("/api/v1/audit", &[("action", "device.provision")]).await;
        assert_eq!(provision_entries["items"][0]["after"]["claim"], claim_id);
    }
}
