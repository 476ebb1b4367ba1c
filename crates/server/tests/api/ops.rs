//! Health, readiness, metrics and the OpenAPI document.

use reqwest::StatusCode;
use serde_json::json;

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

api_tests! {
    async fn health_readiness_and_metrics_report_the_server_state(app) {
        let (status, body) = app.send(reqwest::Method::GET, "/healthz", None, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ok");
        let (status, body) = app.send(reqwest::Method::GET, "/readyz", None, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "ready");
        let (status, _) = app.post("/api/v1/devices", json!({ "device_type": "t", "status": "active" })).await;
        assert_eq!(status, StatusCode::CREATED);
        let _ = app.get("/api/v1/devices/missing").await;
        let text = app.http.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(text.contains(r#"drover_devices{status="active"} 1"#), "{text}");
        assert!(text.contains(r#"drover_http_requests_total{method="GET",route="/api/v1/devices/{id}",status="404"} 1"#), "{text}");
        assert!(text.contains("drover_http_request_duration_seconds_bucket"), "{text}");
    }

    async fn openapi_document_describes_every_endpoint(app) {
        let (status, doc) = app.get("/api/v1/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let paths = doc["paths"].as_object().unwrap();
        for path in ["/api/v1/devices", "/api/v1/devices/{id}", "/api/v1/groups/{name}/members", "/api/v1/claims", "/api/v1/audit", "/api/device/v1/provision"] {
            assert!(paths.contains_key(path), "missing {path}");
        }
        assert!(doc["components"]["schemas"]["DeviceView"].is_object());
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        // Every $ref resolves, operation ids are unique and list filters are query parameters —
        // what generated clients and validators trip over first.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let text = doc.to_string();
        for reference in text.split("\"#/components/schemas/").skip(1) {
            let name = reference.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
        }
        let mut ids: Vec<&str> = paths.values().flat_map(|p| p.as_object().unwrap().values()).map(|op| op["operationId"].as_str().unwrap()).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate operation ids");
        let list = &doc["paths"]["/api/v1/devices"]["get"]["parameters"];
        assert!(list.as_array().unwrap().iter().all(|p| p["in"] == "query"), "{list}");
    }
}

/// A taken port must fail at once and write nothing: above all not the first admin token, which
/// is shown only once and would be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_before_the_first_admin_token_is_created() {
    let dir = drover_store::testing::TempDir::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = drover_server::ServerConfig::with_data_dir(&dir.path);
    config.listen = holder.local_addr().unwrap();
    config.mqtt = drover_server::mqtt::MqttConfig::Embedded {
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    let err = drover_server::start(config.clone(), std::future::pending())
        .await
        .err()
        .expect("port is taken");
    let message = format!("{err:#}");
    assert!(
        message.contains("cannot listen on") && message.contains("--listen"),
        "{message}"
    );
    config.listen = "127.0.0.1:0".parse().unwrap();
    let server = drover_server::start(config, std::future::pending())
        .await
        .unwrap();
    assert!(
        server.bootstrap_token.is_some(),
        "the first successful start still shows the token"
    );
    server.shutdown().await.unwrap();
}
