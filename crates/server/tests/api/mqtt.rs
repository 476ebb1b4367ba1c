//! The embedded MQTT broker: devices connect with their credential, may use only their own
//! topics, get a heartbeat acknowledged once it is stored, get every refusal with the HTTP API's
//! code, and receive shadow answers and deltas. Devices are rumqttc clients (MQTT 3.1.1).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Outgoing,
    Packet, QoS, SubscribeReasonCode,
};
use serde_json::{json, Value};

use crate::api_tests;
#[allow(unused_imports)]
use crate::helpers::*;

/// How long any one expected event may take.
const WAIT: Duration = Duration::from_secs(10);

/// Registers an active device and returns its credential.
async fn provision(app: &TestApp, id: &str) -> String {
    let (status, created) = app
        .post(
            "/api/v1/devices",
            json!({ "id": id, "device_type": "sensor", "issue_credential": true }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["credential"].as_str().unwrap().to_owned()
}

/// Connects to the app's broker as `client_id`; a refused CONNACK is the error.
async fn connect(
    app: &TestApp,
    client_id: &str,
    credentials: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), ConnectReturnCode> {
    let addr = app.mqtt_addr.expect("the embedded broker runs");
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(2 << 20, 2 << 20);
    if let Some((user, password)) = credentials {
        options.set_credentials(user, password);
    }
    // Room for a burst of publishes queued before the event loop is polled.
    let (client, mut events) = AsyncClient::new(options, 64);
    loop {
        match tokio::time::timeout(WAIT, events.poll())
            .await
            .expect("a CONNACK in time")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((client, events)),
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("{client_id}: cannot connect: {e}"),
        }
    }
}

/// A connected device and the messages it received that no test step has taken yet.
struct Device {
    id: String,
    client: AsyncClient,
    events: EventLoop,
    inbox: VecDeque<(String, Value)>,
}

impl Device {
    /// Connects as device `id` with its credential and subscribes to all its topics.
    async fn connect(app: &TestApp, id: &str, credential: &str) -> Device {
        let (client, events) = connect(app, id, Some((id, credential)))
            .await
            .unwrap_or_else(|code| panic!("{id} refused: {code:?}"));
        let mut device = Device {
            id: id.to_owned(),
            client,
            events,
            inbox: VecDeque::new(),
        };
        let granted = device.subscribe(&format!("drover/{id}/#")).await;
        assert_eq!(granted, SubscribeReasonCode::Success(QoS::AtLeastOnce));
        device
    }

    /// Subscribes to `filter` and returns the SUBACK's answer.
    async fn subscribe(&mut self, filter: &str) -> SubscribeReasonCode {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = self.step("a SUBACK", deadline).await {
                return ack.return_codes[0];
            }
        }
    }

    /// Publishes `payload` with QoS 1 and returns once its PUBACK arrived.
    async fn publish(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let pkid = loop {
            if let Event::Outgoing(Outgoing::Publish(pkid)) =
                self.step("the PUBLISH out", deadline).await
            {
                break pkid;
            }
        };
        loop {
            if let Event::Incoming(Packet::PubAck(ack)) = self.step("a PUBACK", deadline).await {
                if ack.pkid == pkid {
                    return;
                }
            }
        }
    }

    /// Publishes `body` as JSON with QoS 1 and returns once its PUBACK arrived.
    async fn publish_json(&mut self, topic: &str, body: Value) {
        self.publish(topic, serde_json::to_vec(&body).unwrap())
            .await;
    }

    /// The first message on `topic`, received before or within [`WAIT`].
    async fn expect(&mut self, topic: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(idx) = self.inbox.iter().position(|(t, _)| t == topic) {
                return self
                    .inbox
                    .remove(idx)
                    .map(|(_, payload)| payload)
                    .unwrap_or_default();
            }
            self.step(&format!("a message on {topic}"), deadline).await;
        }
    }

    /// Drives the connection by one event, keeping received messages in the inbox.
    async fn step(&mut self, what: &str, deadline: Instant) -> Event {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match tokio::time::timeout(left, self.events.poll()).await {
            Ok(Ok(event)) => event,
            Ok(Err(e)) => panic!("{}: connection lost waiting for {what}: {e}", self.id),
            Err(_) => panic!("{}: no {what} within {WAIT:?}", self.id),
        };
        if let Event::Incoming(Packet::Publish(publish)) = &event {
            let payload = serde_json::from_slice(&publish.payload).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&publish.payload).into_owned())
            });
            self.inbox.push_back((publish.topic.clone(), payload));
        }
        event
    }

    /// Drives the connection until the broker closes it.
    async fn closed(&mut self) -> ConnectionError {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.poll()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return e,
                Err(_) => panic!("{}: still connected after {WAIT:?}", self.id),
            }
        }
    }
}

/// The Prometheus exposition text.
async fn metrics(app: &TestApp) -> String {
    let (status, body) = app.send(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    body.as_str().unwrap_or_default().to_owned()
}

fn code(rejection: &Value) -> &str {
    rejection["error"]["code"].as_str().unwrap_or_default()
}

api_tests! {
    // Heartbeats a device has in flight together (more than the broker's in-flight window of 8)
    // are all stored and acknowledged, in the order they were published; a shadow report among
    // them is handled after the heartbeats before it, and the newest observation wins.
    async fn heartbeats_in_flight_together_are_all_stored_and_acknowledged_in_order(app) {
        let credential = provision(app, "mq-burst").await;
        let mut device = Device::connect(app, "mq-burst", &credential).await;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        // Observed a second apart, oldest first, all in the recent past.
        let sent_at = |k: u64| {
            drover_core::Timestamp::from_millis(((now - 60 + k) * 1000) as i64).to_rfc3339()
        };
        for k in 0..20u64 {
            let body = json!({ "sent_at": sent_at(k), "metrics": { "n": k as f64 } });
            device.client.publish("drover/mq-burst/heartbeat", QoS::AtLeastOnce, false, serde_json::to_vec(&body).unwrap()).await.unwrap();
        }
        let report = json!({ "state": { "reported": { "burst": "done" } } });
        device.client.publish("drover/mq-burst/shadow/update", QoS::AtLeastOnce, false, serde_json::to_vec(&report).unwrap()).await.unwrap();
        let body = json!({ "sent_at": sent_at(20), "metrics": { "n": 20.0 } });
        device.client.publish("drover/mq-burst/heartbeat", QoS::AtLeastOnce, false, serde_json::to_vec(&body).unwrap()).await.unwrap();

        let (mut published, mut acked) = (Vec::new(), Vec::new());
        let deadline = Instant::now() + WAIT;
        while acked.len() < 22 {
            match device.step("22 PUBACKs", deadline).await {
                Event::Outgoing(Outgoing::Publish(pkid)) => published.push(pkid),
                Event::Incoming(Packet::PubAck(ack)) => acked.push(ack.pkid),
                _ => {}
            }
        }
        assert_eq!(acked, published, "PUBACKs in publish order");
        device.expect("drover/mq-burst/shadow/update/accepted").await;
        assert!(device.inbox.iter().all(|(topic, _)| !topic.ends_with("/rejected")), "{:?}", device.inbox);

        let (_, samples) = app.get("/api/v1/devices/mq-burst/health/samples?since=1h").await;
        let mut values: Vec<f64> = samples.as_array().unwrap().iter().map(|s| s["metrics"]["n"].as_f64().unwrap()).collect();
        assert_eq!(values.len(), 21, "{samples}");
        assert!(values.windows(2).all(|w| w[0] < w[1]), "oldest first: {values:?}");
        values.dedup();
        assert_eq!(values.len(), 21);
        let (_, health) = app.get("/api/v1/devices/mq-burst/health").await;
        assert_eq!(health["metrics"]["n"], 20.0, "{health}");
        let (_, shadow) = app.get("/api/v1/devices/mq-burst/shadow").await;
        assert_eq!(shadow["state"]["reported"]["burst"], "done", "{shadow}");
    }

    async fn offers_reach_devices_over_mqtt_and_reports_come_back(app) {
        crate::artifacts::upload(app, "sensor-fw", "1.1.0", crate::artifacts::image(2000, 1)).await;
        let credential = provision(app, "mq-ota").await;
        let (status, _) = app.patch("/api/v1/devices/mq-ota", json!({"firmware": "1.0.0"})).await;
        assert_eq!(status, StatusCode::OK);
        let mut device = Device::connect(app, "mq-ota", &credential).await;

        // Nothing yet: an empty payload.
        device.publish("drover/mq-ota/deployments/get", Vec::new()).await;
        assert_eq!(device.expect("drover/mq-ota/deployments/next").await, json!(""));

        // An operator deploys: the offer is pushed at once.
        let (status, deployment) = app
            .post("/api/v1/devices/mq-ota/deployments", json!({"artifact": "sensor-fw", "version": "1.1.0"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{deployment}");
        let offer = device.expect("drover/mq-ota/deployments/next").await;
        assert_eq!(offer["deployment"], deployment["id"]);
        assert_eq!(offer["image"]["target"], "sensor-fw/1.1.0/sensor-fw-1.1.0.img");
        device.publish("drover/mq-ota/deployments/get", Vec::new()).await;
        assert_eq!(device.expect("drover/mq-ota/deployments/next").await, offer);

        // Reports over MQTT move the deployment, with the HTTP API's checks.
        let id = deployment["id"].clone();
        device.publish_json("drover/mq-ota/deployments/status", json!({"deployment": id, "state": "downloading", "bytes_done": 10})).await;
        let accepted = device.expect("drover/mq-ota/deployments/status/accepted").await;
        assert_eq!(accepted, json!({"deployment": id, "state": "downloading"}));
        device.publish_json("drover/mq-ota/deployments/status", json!({"deployment": id, "state": "succeeded", "firmware": "1.0.0"})).await;
        let rejected = device.expect("drover/mq-ota/deployments/status/rejected").await;
        assert_eq!(code(&rejected), "invalid_request", "{rejected}");
        device.publish_json("drover/mq-ota/deployments/status", json!({"deployment": 999, "state": "failed", "reason": "x"})).await;
        let rejected = device.expect("drover/mq-ota/deployments/status/rejected").await;
        assert_eq!(code(&rejected), "not_found", "{rejected}");
        device.publish("drover/mq-ota/deployments/status", b"{not json".to_vec()).await;
        let rejected = device.expect("drover/mq-ota/deployments/status/rejected").await;
        assert_eq!(code(&rejected), "invalid_json", "{rejected}");
        device.publish_json("drover/mq-ota/deployments/status", json!({"deployment": id, "state": "failed", "reason": "no space", "failure": "install_failed"})).await;
        device.expect("drover/mq-ota/deployments/status/accepted").await;
        device.publish_json("drover/mq-ota/deployments/status", json!({"deployment": id, "state": "downloading"})).await;
        let rejected = device.expect("drover/mq-ota/deployments/status/rejected").await;
        assert_eq!(code(&rejected), "conflict", "{rejected}");
        let (_, list) = app.get("/api/v1/devices/mq-ota/deployments").await;
        assert_eq!(list[0]["state"], "failed");
        assert_eq!(list[0]["failure"], "install_failed");
    }

    async fn a_heartbeat_is_stored_by_the_time_its_puback_arrives(app) {
        let credential = provision(app, "mq-hb").await;
        let mut device = Device::connect(app, "mq-hb", &credential).await;
        assert!(metrics(app).await.contains("drover_mqtt_connections 1\n"));

        device.publish_json("drover/mq-hb/heartbeat", json!({ "metrics": { "battery_v": 3.61 } })).await;
        // No polling: the PUBACK is the promise that the heartbeat is stored.
        let (status, health) = app.get("/api/v1/devices/mq-hb/health").await;
        assert_eq!(status, StatusCode::OK, "{health}");
        assert_eq!(health["metrics"]["battery_v"], 3.61);
        let (_, listed) = app.get("/api/v1/devices/mq-hb").await;
        assert!(listed["last_seen"].is_string(), "{listed}");
        assert!(device.inbox.is_empty(), "an accepted heartbeat has no answer: {:?}", device.inbox);
        let text = metrics(app).await;
        assert!(text.contains("drover_mqtt_messages_received_total 1\n"), "{text}");

        // rmqtt leaves closing the socket after a DISCONNECT to the client, as MQTT asks of it.
        device.client.disconnect().await.unwrap();
        let deadline = Instant::now() + WAIT;
        while !matches!(device.step("the DISCONNECT out", deadline).await, Event::Outgoing(Outgoing::Disconnect)) {}
        drop(device);
        let deadline = Instant::now() + WAIT;
        while !metrics(app).await.contains("drover_mqtt_connections 0\n") {
            assert!(Instant::now() < deadline, "the gauge still counts the device");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn only_a_device_own_credential_user_name_and_client_id_connect(app) {
        let first = provision(app, "mq-a").await;
        let second = provision(app, "mq-b").await;
        let cases = [
            ("wrong password", "mq-a", Some(("mq-a", "drv_dev_wrong")), ConnectReturnCode::BadUserNamePassword),
            ("unknown device", "ghost", Some(("ghost", "drv_dev_nope")), ConnectReturnCode::BadUserNamePassword),
            ("another device's user name", "mq-b", Some(("mq-b", first.as_str())), ConnectReturnCode::BadUserNamePassword),
            ("client id is not the device id", "mq-a-2", Some(("mq-a", first.as_str())), ConnectReturnCode::NotAuthorized),
            ("no credentials", "mq-a", None, ConnectReturnCode::BadUserNamePassword),
        ];
        for (case, client_id, credentials, expected) in cases {
            let refused = connect(app, client_id, credentials).await.err();
            assert_eq!(refused, Some(expected), "{case}");
        }
        let text = metrics(app).await;
        assert!(
            text.contains("drover_device_rejections_total{transport=\"mqtt\",code=\"unauthorized\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("drover_mqtt_connections 0\n"), "{text}");

        // The right pair connects; a second connection with the same client id takes over.
        let mut older = Device::connect(app, "mq-b", &second).await;
        let mut newer = Device::connect(app, "mq-b", &second).await;
        older.closed().await;
        newer.publish_json("drover/mq-b/heartbeat", json!({ "metrics": { "uptime_s": 5 } })).await;
        let (status, _) = app.get("/api/v1/devices/mq-b/health").await;
        assert_eq!(status, StatusCode::OK);
    }

    async fn revoking_or_decommissioning_closes_the_device_connection(app) {
        let credential = provision(app, "mq-rev").await;
        let mut device = Device::connect(app, "mq-rev", &credential).await;
        let (status, body) = app.delete("/api/v1/devices/mq-rev/credentials").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        device.closed().await;
        assert_eq!(
            connect(app, "mq-rev", Some(("mq-rev", credential.as_str()))).await.err(),
            Some(ConnectReturnCode::BadUserNamePassword),
            "the revoked credential cannot log in again"
        );

        let credential = provision(app, "mq-dec").await;
        let mut device = Device::connect(app, "mq-dec", &credential).await;
        let (status, body) = app.post("/api/v1/devices/mq-dec/decommission", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        device.closed().await;
    }

    async fn devices_subscribe_and_publish_only_under_their_own_id(app) {
        let own = provision(app, "mq-own").await;
        let other = provision(app, "mq-other").await;
        let mut device = Device::connect(app, "mq-own", &own).await;
        let mut victim = Device::connect(app, "mq-other", &other).await;

        for filter in ["drover/mq-other/#", "drover/#", "#", "drover/+/heartbeat", "$share/g/drover/mq-own/#"] {
            assert_eq!(device.subscribe(filter).await, SubscribeReasonCode::Failure, "{filter}");
        }
        assert_eq!(
            device.subscribe("drover/mq-own/shadow/+/accepted").await,
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        );

        device.publish_json("drover/mq-other/heartbeat", json!({ "metrics": { "battery_v": 1.0 } })).await;
        let rejection = device.expect("drover/mq-own/rejected").await;
        assert_eq!(code(&rejection), "forbidden", "{rejection}");
        assert!(rejection["error"]["message"].as_str().unwrap().contains("drover/mq-other/heartbeat"), "{rejection}");
        let (status, _) = app.get("/api/v1/devices/mq-other/health").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "nothing stored for the other device");
        // Had the forbidden message been routed, it would reach the victim before the answer to
        // its own request: one session's messages arrive in order.
        victim.publish("drover/mq-other/shadow/get", "").await;
        let answer = victim.expect("drover/mq-other/shadow/get/rejected").await;
        assert_eq!(code(&answer), "not_found", "{answer}");
        assert!(victim.inbox.is_empty(), "the victim got {:?}", victim.inbox);

        // The refusal did not cost the device its connection.
        device.publish_json("drover/mq-own/heartbeat", json!({ "metrics": { "battery_v": 3.3 } })).await;
        let (status, _) = app.get("/api/v1/devices/mq-own/health").await;
        assert_eq!(status, StatusCode::OK);
        let text = metrics(app).await;
        assert!(
            text.contains("drover_device_rejections_total{transport=\"mqtt\",code=\"forbidden\"} 6\n"),
            "5 subscriptions and 1 publish: {text}"
        );
    }

    async fn bad_messages_are_rejected_with_the_http_codes_and_store_nothing(app) {
        let credential = provision(app, "mq-bad").await;
        let mut device = Device::connect(app, "mq-bad", &credential).await;
        let heartbeats = [
            (json!({ "metrics": { "cpu_pct": 250 } }), "invalid_metric_value"),
            (json!({ "sent_at": "2999-01-01T00:00:00Z", "metrics": { "battery_v": 3.7 } }), "timestamp_in_future"),
            (json!({ "metrics": { "Battery": 3.7 } }), "invalid_request"),
        ];
        for (body, expected) in heartbeats {
            device.publish_json("drover/mq-bad/heartbeat", body.clone()).await;
            let rejection = device.expect("drover/mq-bad/heartbeat/rejected").await;
            assert_eq!(code(&rejection), expected, "{body}: {rejection}");
        }
        let (status, _) = app.get("/api/v1/devices/mq-bad/health").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "no heartbeat stored");

        let (status, _) = app.patch("/api/v1/devices/mq-bad/shadow", json!({ "state": { "desired": { "led": "on" } } })).await;
        assert_eq!(status, StatusCode::OK);
        let delta = device.expect("drover/mq-bad/shadow/update/delta").await;
        assert_eq!(delta["version"], 1, "{delta}");
        let updates = [
            (json!({ "state": { "reported": { "blob": "x".repeat(18 * 1024) } }, "clientToken": "big" }), "payload_too_large"),
            (json!({ "state": { "desired": { "led": "off" } }, "clientToken": "desired" }), "invalid_request"),
            (json!({ "state": { "reported": { "led": "on" } }, "version": 0, "clientToken": "stale" }), "version_conflict"),
        ];
        for (body, expected) in updates {
            device.publish_json("drover/mq-bad/shadow/update", body.clone()).await;
            let rejection = device.expect("drover/mq-bad/shadow/update/rejected").await;
            assert_eq!(code(&rejection), expected, "{rejection}");
            assert_eq!(rejection["clientToken"], body["clientToken"], "the token is echoed: {rejection}");
        }
        let (_, shadow) = app.get("/api/v1/devices/mq-bad/shadow").await;
        assert_eq!((shadow["version"].as_u64(), &shadow["state"]["reported"]), (Some(1), &json!({})), "{shadow}");

        device.publish_json("drover/mq-bad/nonsense", json!({})).await;
        let rejection = device.expect("drover/mq-bad/rejected").await;
        assert_eq!(code(&rejection), "invalid_request", "{rejection}");
        assert!(rejection["error"]["message"].as_str().unwrap().contains("nonsense"), "{rejection}");
        assert!(device.inbox.is_empty(), "one answer each: {:?}", device.inbox);
    }

    async fn malformed_json_gets_the_same_code_over_mqtt_as_over_http(app) {
        let credential = provision(app, "mq-json").await;
        let mut device = Device::connect(app, "mq-json", &credential).await;
        for (path, topic) in [
            ("/api/device/v1/heartbeat", "drover/mq-json/heartbeat"),
            ("/api/device/v1/shadow", "drover/mq-json/shadow/update"),
        ] {
            let response = app
                .http
                .post(app.url(path))
                .bearer_auth(&credential)
                .header("content-type", "application/json")
                .body("{\"metrics\": ")
                .send()
                .await
                .unwrap();
            let over_http: Value = response.json().await.unwrap();
            device.publish(topic, "{\"metrics\": ").await;
            let over_mqtt = device.expect(&format!("{topic}/rejected")).await;
            assert_eq!(code(&over_mqtt), code(&over_http), "{topic}: {over_mqtt} vs {over_http}");
        }
    }

    async fn shadow_answers_and_deltas_reach_the_device(app) {
        let credential = provision(app, "mq-lamp").await;
        let mut device = Device::connect(app, "mq-lamp", &credential).await;
        for name in [None, Some("config")] {
            let (query, prefix) = match name {
                None => (String::new(), "drover/mq-lamp/shadow".to_owned()),
                Some(name) => (format!("?name={name}"), format!("drover/mq-lamp/shadow/name/{name}")),
            };
            let (status, body) = app
                .patch(&format!("/api/v1/devices/mq-lamp/shadow{query}"), json!({ "state": { "desired": { "led": "on" } } }))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let delta = device.expect(&format!("{prefix}/update/delta")).await;
            assert_eq!((delta["state"].clone(), delta["version"].as_u64()), (json!({ "led": "on" }), Some(1)), "{delta}");

            device
                .publish_json(&format!("{prefix}/update"), json!({ "state": { "reported": { "led": "on" } }, "clientToken": "t-1" }))
                .await;
            let accepted = device.expect(&format!("{prefix}/update/accepted")).await;
            assert_eq!((accepted["clientToken"].as_str(), accepted["version"].as_u64()), (Some("t-1"), Some(2)), "{accepted}");

            device.publish_json(&format!("{prefix}/get"), json!({ "clientToken": "g-1" })).await;
            let document = device.expect(&format!("{prefix}/get/accepted")).await;
            assert_eq!(document["state"]["reported"], json!({ "led": "on" }), "{document}");
            assert_eq!(document["version"], 2, "{document}");
            let (_, shadow) = app.get(&format!("/api/v1/devices/mq-lamp/shadow{query}")).await;
            assert!(shadow["state"].get("delta").is_none(), "converged: {shadow}");
        }
        assert!(device.inbox.is_empty(), "nothing else: {:?}", device.inbox);
        assert!(metrics(app).await.contains("drover_mqtt_messages_sent_total 6\n"), "a delta, an accepted and a document per shadow");
    }

    async fn a_packet_over_the_body_limit_and_its_framing_closes_the_connection(app)
        with AppOptions { max_body_bytes: Some(4096), ..AppOptions::default() };
    {
        let credential = provision(app, "mq-big").await;
        let mut device = Device::connect(app, "mq-big", &credential).await;
        // Within the packet limit but over the body limit: the handler refuses it.
        let padded = json!({ "metrics": { "battery_v": 3.7 }, "pad": "x".repeat(4200) });
        device.publish_json("drover/mq-big/heartbeat", padded).await;
        let rejection = device.expect("drover/mq-big/heartbeat/rejected").await;
        assert_eq!(code(&rejection), "payload_too_large", "{rejection}");
        // Over max_body_bytes + 1024: MQTT 3.1.1 has no way to refuse a packet but to disconnect.
        let huge = serde_json::to_vec(&json!({ "metrics": {}, "pad": "x".repeat(6000) })).unwrap();
        device.client.publish("drover/mq-big/heartbeat", QoS::AtLeastOnce, false, huge).await.unwrap();
        device.closed().await;
        let (status, _) = app.get("/api/v1/devices/mq-big/health").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "nothing stored");
    }

    async fn an_mqtt5_device_learns_outcomes_from_puback_reason_codes(app) {
        use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason};
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};

        async fn next(events: &mut EventLoop) -> Result<Event, ConnectionError> {
            tokio::time::timeout(WAIT, events.poll()).await.expect("an event in time")
        }
        async fn publish(client: &AsyncClient, events: &mut EventLoop, topic: &str, body: Value) -> PubAckReason {
            client.publish(topic, QoS::AtLeastOnce, false, serde_json::to_vec(&body).unwrap()).await.unwrap();
            loop {
                if let Event::Incoming(Packet::PubAck(ack)) = next(events).await.expect("connected") {
                    return ack.reason;
                }
            }
        }

        let credential = provision(app, "mq-five").await;
        let addr = app.mqtt_addr.unwrap();
        let options = |password: &str| {
            let mut options = MqttOptions::new("mq-five", addr.ip().to_string(), addr.port());
            options.set_credentials("mq-five", password);
            options
        };
        let (_, mut refused) = AsyncClient::new(options("drv_dev_wrong"), 8);
        match next(&mut refused).await {
            Err(ConnectionError::ConnectionRefused(code)) => assert_eq!(code, ConnectReturnCode::BadUserNamePassword),
            other => panic!("a wrong password connected: {other:?}"),
        }

        let (client, mut events) = AsyncClient::new(options(&credential), 8);
        let ok = publish(&client, &mut events, "drover/mq-five/heartbeat", json!({ "metrics": { "battery_v": 3.5 } })).await;
        assert_eq!(ok, PubAckReason::NoMatchingSubscribers, "handled, and not routed");
        let (status, _) = app.get("/api/v1/devices/mq-five/health").await;
        assert_eq!(status, StatusCode::OK);
        let forbidden = publish(&client, &mut events, "drover/someone-else/heartbeat", json!({ "metrics": {} })).await;
        assert_eq!(forbidden, PubAckReason::NotAuthorized);
        let again = publish(&client, &mut events, "drover/mq-five/heartbeat", json!({ "metrics": { "battery_v": 3.4 } })).await;
        assert_eq!(again, PubAckReason::NoMatchingSubscribers, "still connected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_mqtt_port_fails_the_start_before_anything_is_created() {
    let dir = drover_store::testing::TempDir::new();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let mut config = drover_server::ServerConfig::with_data_dir(&dir.path);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.mqtt = drover_server::mqtt::MqttConfig::Embedded { listen: taken };
    let err = drover_server::start(config.clone(), std::future::pending())
        .await
        .err()
        .expect("the MQTT port is taken");
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!("cannot listen for MQTT on {taken}"))
            && message.contains("--mqtt-listen"),
        "{message}"
    );
    let created: Vec<_> = std::fs::read_dir(&dir.path).unwrap().collect();
    assert!(created.is_empty(), "nothing written: {created:?}");

    config.mqtt = drover_server::mqtt::MqttConfig::Embedded {
        listen: "127.0.0.1:0".parse().unwrap(),
    };
    let server = drover_server::start(config, std::future::pending())
        .await
        .unwrap();
    assert!(
        server.bootstrap_token.is_some(),
        "the first successful start still shows the token"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_disconnects_devices_and_closes_the_port() {
    let app = spawn_app_with(Backend::Sqlite, AppOptions::default())
        .await
        .unwrap();
    let addr = app.mqtt_addr.unwrap();
    let credential = provision(&app, "mq-stop").await;
    let mut device = Device::connect(&app, "mq-stop", &credential).await;
    app.stop().await;
    device.closed().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens on {addr} any more"
    );
}

api_tests! {
    async fn jobs_and_diagnostics_reach_devices_over_mqtt(app) with AppOptions {
        rollout_tick: Some(Duration::from_millis(100)),
        ..AppOptions::default()
    }; {
        let credential = provision(app, "mq-job").await;
        let mut device = Device::connect(app, "mq-job", &credential).await;
        device.publish("drover/mq-job/jobs/get", Vec::new()).await;
        assert_eq!(device.expect("drover/mq-job/jobs/notify").await, json!(""));

        // A job's execution is pushed when it starts; reports come back over MQTT.
        let (status, job) = app
            .post("/api/v1/jobs", json!({"kind": "command", "target": {"devices": ["mq-job"]}, "payload": {"name": "blink"}}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{job}");
        let offer = device.expect("drover/mq-job/jobs/notify").await;
        assert_eq!(offer["job_id"], job["id"]);
        assert_eq!(offer["payload"]["name"], "blink");
        device.publish_json("drover/mq-job/jobs/status", json!({"state": "succeeded"})).await;
        let rejected = device.expect("drover/mq-job/jobs/status/rejected").await;
        assert!(rejected["error"]["message"].as_str().unwrap().contains("execution_id"), "{rejected}");
        device.publish("drover/mq-job/jobs/status", b"{not json".to_vec()).await;
        assert_eq!(code(&device.expect("drover/mq-job/jobs/status/rejected").await), "invalid_json");
        device
            .publish_json("drover/mq-job/jobs/status", json!({"execution_id": offer["execution_id"], "state": "succeeded", "result": {"ok": true}}))
            .await;
        let accepted = device.expect("drover/mq-job/jobs/status/accepted").await;
        assert_eq!(accepted["state"], "succeeded");

        // A diagnostics request is pushed, and the answer published back ends the operator's wait.
        let (http, url) = (app.http.clone(), app.url("/api/v1/devices/mq-job/diagnostics"));
        let operator = tokio::spawn(async move {
            let response = http.post(url).bearer_auth(ADMIN_TOKEN).json(&json!({"action": "ping"})).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        });
        let request = device.expect("drover/mq-job/diag/request").await;
        assert_eq!(request["action"], "ping");
        device.publish_json("drover/mq-job/diag/response", json!({"result": "pong"})).await;
        assert_eq!(code(&device.expect("drover/mq-job/diag/response/rejected").await), "invalid_request");
        device
            .publish_json("drover/mq-job/diag/response", json!({"request_id": request["request_id"], "result": {"pong": true}}))
            .await;
        device.expect("drover/mq-job/diag/response/accepted").await;
        let (status, answer) = operator.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["result"], json!({"pong": true}));
    }
}
