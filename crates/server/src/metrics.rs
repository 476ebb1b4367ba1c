//! Prometheus metrics: HTTP requests by route and status, latency histograms, devices by status,
//! MQTT traffic and connections, SQLite memory.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    transport: &'static str,
    code: &'static str,
}

/// The error code of an API error response, for metrics (set by `ApiError::into_response`).
#[derive(Clone, Copy, Debug)]
pub struct ErrorCode(pub &'static str);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The server's metric registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    devices: Family<StatusLabels, Gauge>,
    /// Devices the offline detector marked offline.
    pub went_offline: Counter,
    rejections: Family<RejectionLabels, Counter>,
    /// MQTT messages devices published, and answers the server published to them.
    pub mqtt_received: Counter,
    pub mqtt_sent: Counter,
    /// Devices connected to the embedded broker.
    pub mqtt_connections: Gauge,
    /// Heap memory SQLite holds, read at each scrape.
    sqlite_memory: Gauge,
    /// When the device gauges were last refreshed: counting a large fleet on every scrape would let
    /// a scraper load the database, so counts are at most this old.
    devices_refreshed: Mutex<Option<Instant>>,
}

/// How stale the devices-by-status gauges may be.
const DEVICE_COUNT_MAX_AGE: Duration = Duration::from_secs(10);

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("drover");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        let devices = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route",
            latency.clone(),
        );
        registry.register("devices", "Devices by lifecycle status", devices.clone());
        let went_offline = Counter::default();
        registry.register(
            "devices_went_offline",
            "Devices marked offline after missing their heartbeats",
            went_offline.clone(),
        );
        let rejections = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "device_rejections",
            "Device requests and messages refused, by transport and error code",
            rejections.clone(),
        );
        let mqtt_received = Counter::default();
        registry.register(
            "mqtt_messages_received",
            "MQTT messages devices published to Drover",
            mqtt_received.clone(),
        );
        let mqtt_sent = Counter::default();
        registry.register(
            "mqtt_messages_sent",
            "MQTT messages Drover published to devices",
            mqtt_sent.clone(),
        );
        let mqtt_connections = Gauge::default();
        registry.register(
            "mqtt_connections",
            "Devices connected to the embedded MQTT broker",
            mqtt_connections.clone(),
        );
        let sqlite_memory = Gauge::default();
        registry.register(
            "sqlite_memory_bytes",
            "Heap memory SQLite holds (page caches, statements) across the store's connections; 0 on PostgreSQL",
            sqlite_memory.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            devices,
            went_offline,
            rejections,
            mqtt_received,
            mqtt_sent,
            mqtt_connections,
            sqlite_memory,
            devices_refreshed: Mutex::new(None),
        }
    }

    /// Counts a refused device request or message.
    pub fn rejected(&self, transport: &'static str, code: &'static str) {
        self.rejections
            .get_or_create(&RejectionLabels { transport, code })
            .inc();
    }

    /// The OpenMetrics text exposition, refreshing device gauges if they are stale.
    pub async fn render(&self, state: &AppState) -> String {
        let due = self
            .devices_refreshed
            .lock()
            .map(|at| at.is_none_or(|at| at.elapsed() >= DEVICE_COUNT_MAX_AGE))
            .unwrap_or(true);
        if due {
            match state.store.count_devices_by_status().await {
                Ok(counts) => {
                    for status in drover_core::DeviceStatus::ALL {
                        let n = counts
                            .iter()
                            .find(|(s, _)| s == status.as_str())
                            .map_or(0, |(_, n)| *n);
                        self.devices
                            .get_or_create(&StatusLabels {
                                status: status.as_str().into(),
                            })
                            .set(n as i64);
                    }
                    if let Ok(mut at) = self.devices_refreshed.lock() {
                        *at = Some(Instant::now());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot count devices for metrics"),
            }
        }
        self.sqlite_memory
            .set(i64::try_from(drover_store::sqlite_memory_used()).unwrap_or(i64::MAX));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Middleware recording each request's route, status and latency. Routes are the matched
/// templates (`/api/v1/devices/{id}`), so label cardinality stays bounded.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let metrics = &state.metrics;
    if route.starts_with("/api/device/") {
        if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
            metrics.rejected("http", code);
        }
    }
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .latency
        .get_or_create(&RouteLabels { method, route })
        .observe(started.elapsed().as_secs_f64());
    response
}
