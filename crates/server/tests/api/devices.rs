//! Device registry over HTTP: CRUD, pagination, import and bulk update.

use reqwest::StatusCode;
use serde_json::json;

use crate::api_tests;
use crate::helpers::*;

async fn import(
    app: &TestApp,
    content_type: &str,
    query: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let response = app
        .http
        .post(app.url(&format!("/api/v1/devices/import{query}")))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

api_tests! {
    async fn devices_can_be_created_read_patched_and_deleted(app) {
        let (status, created) = app
            .post("/api/v1/devices", json!({ "id": "d1", "device_type": "gateway", "hw_id": "SN-1", "site": "berlin-1", "tags": { "env": "dev", "tier": "a" } }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(created["device"]["status"], "provisioning");
        assert!(created.get("credential").is_none());

        let (status, patched) = app
            .patch("/api/v1/devices/d1", json!({ "site": null, "region": "eu", "tags": { "env": "prod", "tier": null } }))
            .await;
        assert_eq!(status, StatusCode::OK, "{patched}");
        assert_eq!(patched["site"], serde_json::Value::Null);
        assert_eq!(patched["region"], "eu");
        assert_eq!(patched["tags"], json!({ "env": "prod" }));

        let (status, body) = app.patch("/api/v1/devices/d1", json!({ "status": "decommissioned" })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body["error"]["message"].as_str().unwrap().contains("use the decommission operation"), "{body}");

        let (status, _) = app.delete("/api/v1/devices/d1").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.get("/api/v1/devices/d1").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    async fn decommissioning_frees_the_hardware_id_for_a_replacement(app) {
        let (_, created) = app.post("/api/v1/devices", json!({ "id": "old", "device_type": "t", "hw_id": "SN-7", "issue_credential": true })).await;
        let credential = created["credential"].as_str().unwrap().to_owned();
        assert_eq!(created["device"]["status"], "active");
        let (status, _) = app.send(reqwest::Method::GET, "/api/device/v1/whoami", Some(&credential), None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = app.post("/api/v1/devices/old/decommission", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["status"], "decommissioned");
        let (status, _) = app.send(reqwest::Method::GET, "/api/device/v1/whoami", Some(&credential), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = app.post("/api/v1/devices", json!({ "id": "new", "device_type": "t", "hw_id": "SN-7" })).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, old) = app.get("/api/v1/devices/old").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(old["hw_id"], "SN-7");
    }

    async fn pages_follow_cursors_through_every_device_once(app) {
        let mut lines = String::new();
        for idx in 0..250 {
            lines.push_str(&format!("{{\"id\":\"dev-{idx:03}\",\"device_type\":\"t\",\"firmware\":\"1.{}.0\"}}\n", idx % 12));
        }
        let (status, result) = import(app, "application/x-ndjson", "", &lines).await;
        assert_eq!(status, StatusCode::OK, "{result}");
        assert_eq!(result["created"], 250);
        for (sort, order) in [("id", "asc"), ("firmware", "desc"), ("created_at", "asc")] {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut query = vec![("sort", sort), ("order", order), ("limit", "100")];
                if let Some(c) = &cursor {
                    query.push(("cursor", c.as_str()));
                }
                let (status, page) = app.get_with("/api/v1/devices", &query).await;
                assert_eq!(status, StatusCode::OK, "{page}");
                for item in page["items"].as_array().unwrap() {
                    seen.push((item["firmware"].as_str().unwrap().to_owned(), item["id"].as_str().unwrap().to_owned()));
                }
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
            assert_eq!(seen.len(), 250, "{sort} {order}");
            let mut ids: Vec<&String> = seen.iter().map(|(_, id)| id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), 250, "every device once ({sort} {order})");
            if sort == "firmware" {
                let minors: Vec<u64> = seen.iter().map(|(fw, _)| fw.split('.').nth(1).unwrap().parse().unwrap()).collect();
                assert!(minors.windows(2).all(|w| w[0] >= w[1]), "semantic descending order: 1.11.0 before 1.9.0");
            }
        }
    }

    async fn csv_import_is_all_or_nothing_with_line_numbers(app) {
        let good = "id,device_type,hw_id,hw_rev,site,firmware,tags.env\n\
                    c1,sensor,SN-1,rev2,berlin-1,2.1.0,prod\n\
                    c2,sensor,SN-2,rev3,,2.4.0,\n";
        let (status, result) = import(app, "text/csv", "", good).await;
        assert_eq!(status, StatusCode::OK, "{result}");
        assert_eq!(result, json!({ "created": 2, "updated": 0, "skipped": 0 }));
        let (_, c1) = app.get("/api/v1/devices/c1").await;
        assert_eq!(c1["tags"], json!({ "env": "prod" }));
        let (_, c2) = app.get("/api/v1/devices/c2").await;
        assert_eq!(c2["tags"], json!({}));
        assert_eq!(c2["site"], serde_json::Value::Null);

        let bad = "id,device_type,firmware\nc3,sensor,1.0.0\nc4,sensor,one\nc5,,1.0.0\nc1,sensor,1.0.0\n";
        let (status, body) = import(app, "text/csv", "", bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let lines: Vec<u64> = body["error"]["details"]["lines"].as_array().unwrap().iter().map(|l| l["line"].as_u64().unwrap()).collect();
        assert_eq!(lines, [3, 4]);
        assert_eq!(app.count("").await, 2, "nothing from the rejected import was written");

        let (status, body) = import(app, "text/csv", "", "id,device_type\nc1,sensor\nc9,sensor\n").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["details"]["lines"][0]["line"], 2);
        assert!(body["error"]["details"]["lines"][0]["message"].as_str().unwrap().contains("already exists"));
        assert_eq!(app.count("").await, 2);

        let (status, result) = import(app, "text/csv", "?on_conflict=update", "id,device_type,site\nc1,sensor,paris-2\nc9,sensor,\n").await;
        assert_eq!(status, StatusCode::OK, "{result}");
        assert_eq!(result, json!({ "created": 1, "updated": 1, "skipped": 0 }));
        let (status, result) = import(app, "text/csv", "?on_conflict=skip", "id,device_type\nc1,sensor\n").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(result["skipped"], 1);

        let (status, body) = import(app, "text/csv", "", "id,colour\nx,red\n").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body["error"]["message"].as_str().unwrap().contains("unknown column \"colour\""), "{body}");
        let (status, body) = import(app, "text/csv", "", "id,device_type\nx,t,extra\n").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(body["error"]["message"].as_str().unwrap().contains("fields but the header has"), "{body}");
        let (status, _) = import(app, "application/pdf", "", "%PDF").await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, body) = import(app, "application/x-ndjson", "", "{\"device_type\":\"t\"}\nnot json\n").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["details"]["lines"][0]["line"], 2);
        assert_eq!(app.count("").await, 3);
    }

    async fn bulk_update_changes_every_matching_device_and_is_audited(app) {
        let mut lines = String::new();
        for idx in 0..30 {
            let env = if idx % 3 == 0 { "prod" } else { "dev" };
            lines.push_str(&format!("{{\"id\":\"b{idx}\",\"device_type\":\"t\",\"status\":\"active\",\"tags\":{{\"env\":\"{env}\"}}}}\n"));
        }
        let (status, _) = import(app, "application/x-ndjson", "", &lines).await;
        assert_eq!(status, StatusCode::OK);
        let (status, result) = app
            .post("/api/v1/devices/bulk-update", json!({ "query": "tags.env = prod", "set": { "tags": { "ring": "canary" }, "status": "inactive" } }))
            .await;
        assert_eq!(status, StatusCode::OK, "{result}");
        assert_eq!(result, json!({ "matched": 10, "updated": 10 }));
        assert_eq!(app.count("tags.ring = canary AND status = inactive").await, 10);
        let (status, body) = app.post("/api/v1/devices/bulk-update", json!({ "query": "", "set": { "site": "x" } })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (status, body) = app.post("/api/v1/devices/bulk-update", json!({ "query": "tags.env ==", "set": { "site": "x" } })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (_, audit) = app.get_with("/api/v1/audit", &[("action", "device.bulk_update")]).await;
        assert_eq!(audit["items"].as_array().unwrap().len(), 1);
        assert_eq!(audit["items"][0]["after"]["matched"], 10);
    }
}
