//! Groups over HTTP.

use reqwest::StatusCode;
use serde_json::json;

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

api_tests! {
    async fn static_and_dynamic_groups_track_membership(app) {
        for (id, env) in [("g1", "prod"), ("g2", "prod"), ("g3", "dev")] {
            let (status, _) = app.post("/api/v1/devices", json!({ "id": id, "device_type": "t", "tags": { "env": env } })).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (status, _) = app.post("/api/v1/groups", json!({ "name": "lab", "description": "bench units" })).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, body) = app.post("/api/v1/groups/lab/members", json!({ "device_ids": ["g1", "g3"] })).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["changed"], 2);
        let (status, body) = app.post("/api/v1/groups/lab/members", json!({ "device_ids": ["g2", "ghost"] })).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("ghost"));

        let (status, group) = app.post("/api/v1/groups", json!({ "name": "prod-lab", "query": "tags.env = prod AND group = lab" })).await;
        assert_eq!(status, StatusCode::CREATED, "{group}");
        assert_eq!(group["member_count"], 1);
        let (_, groups) = app.get("/api/v1/devices/g1/groups").await;
        assert_eq!(groups["groups"], json!(["lab", "prod-lab"]));

        let (_, _) = app.patch("/api/v1/devices/g3", json!({ "tags": { "env": "prod" } })).await;
        let (_, group) = app.get("/api/v1/groups/prod-lab").await;
        assert_eq!(group["member_count"], 2);
        let (_, page) = app.get_with("/api/v1/groups/prod-lab/devices", &[("q", "id = g3")]).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 1);

        let (status, body) = app.post("/api/v1/groups/prod-lab/members", json!({ "device_ids": ["g2"] })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let (status, body) = app.post("/api/v1/groups", json!({ "name": "broken", "query": "tags.env = " })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "invalid_query");
        let (status, _) = app.post("/api/v1/groups", json!({ "name": "lab" })).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let (status, body) = app.delete("/api/v1/groups/lab").await;
        assert_eq!(status, StatusCode::CONFLICT, "a dynamic group refers to it: {body}");
        let (status, _) = app.delete("/api/v1/groups/prod-lab").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.delete("/api/v1/groups/lab").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = app.get("/api/v1/groups/lab").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
