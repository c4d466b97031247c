//! The Prometheus metrics every function serves on `GET /metrics` (its one port, as Knative
//! allows), in the OpenMetrics text format. Names are listed for dashboards in
//! `grafana/metrics.yaml`; every series carries the constant label `function`.
//!
//! One registry per process, set up by [`init`] in `main` (tests that skip it get
//! `function="test"`). Health probes and `/metrics` itself are not counted as requests.
//! Every label value comes from a closed set ([`crate::http`]): 10,000 requests with made-up
//! methods and paths add no series.

use axum::{
    Router,
    extract::Request,
    http::header::CONTENT_TYPE,
    middleware::Next,
    response::{IntoResponse, Response},
    routing,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use std::{
    borrow::Cow,
    sync::{OnceLock, atomic::AtomicU64},
    time::Instant,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// A route template from code, or [`crate::http::UNMATCHED_ROUTE`].
    pub route: String,
    /// A known method or [`crate::http::OTHER_METHOD`].
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Dependency {
    pub dependency: &'static str,
}

/// The runner's per-function series: `service` is a Service of the manifests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

/// The runner's per-KafkaSource series: `source` is a KafkaSource of the manifests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

/// One partition a KafkaSource reads: `topic` is one of its topics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub source: String,
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceStatus {
    pub service: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub tweets_published: Counter,
    pub produce_duration: Histogram,
    pub events_applied: Counter,
    pub events_duplicate: Counter,
    pub events_rejected: Family<Reason, Counter>,
    pub dependency_errors: Family<Dependency, Counter>,
    pub start_to_ready: Gauge<f64, AtomicU64>,
    pub dead_letters_refused: Counter,
    pub replicas: Family<ServiceLabels, Gauge>,
    pub desired_replicas: Family<ServiceLabels, Gauge>,
    pub activator_requests: Family<ServiceStatus, Counter>,
    pub activator_duration: Family<ServiceLabels, Histogram>,
    pub deliveries_in_flight: Family<SourceLabels, Gauge>,
    pub partitions_paused: Family<SourceLabels, Gauge>,
    pub rebalances: Family<SourceLabels, Counter>,
    pub dead_letter_waiting: Family<PartitionLabels, Gauge>,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// Latency buckets from 0.5 ms to ~4 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Metrics {
    fn new(function: &str) -> Metrics {
        let mut registry =
            Registry::with_labels([(Cow::Borrowed("function"), Cow::Owned(function.to_owned()))].into_iter());
        let m = Metrics {
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(latency),
            tweets_published: Counter::default(),
            produce_duration: latency(),
            events_applied: Counter::default(),
            events_duplicate: Counter::default(),
            events_rejected: Family::default(),
            dependency_errors: Family::default(),
            start_to_ready: Gauge::default(),
            dead_letters_refused: Counter::default(),
            replicas: Family::default(),
            desired_replicas: Family::default(),
            activator_requests: Family::default(),
            activator_duration: Family::new_with_constructor(latency),
            deliveries_in_flight: Family::default(),
            partitions_paused: Family::default(),
            rebalances: Family::default(),
            dead_letter_waiting: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "weather_http_requests",
            "HTTP requests answered, by route and status",
            m.http_requests.clone(),
        );
        registry.register(
            "weather_http_request_duration_seconds",
            "Time to answer an HTTP request",
            m.http_duration.clone(),
        );
        registry.register(
            "weather_tweets_published",
            "Tweets Kafka acknowledged (producer)",
            m.tweets_published.clone(),
        );
        registry.register(
            "weather_kafka_produce_duration_seconds",
            "Time from send to Kafka's acknowledgement (producer)",
            m.produce_duration.clone(),
        );
        registry.register(
            "weather_events_applied",
            "Events that changed the store (sinks)",
            m.events_applied.clone(),
        );
        registry.register(
            "weather_events_duplicate",
            "Redelivered events skipped (sinks)",
            m.events_duplicate.clone(),
        );
        registry.register(
            "weather_events_rejected",
            "Requests rejected as invalid, by reason",
            m.events_rejected.clone(),
        );
        registry.register(
            "weather_dependency_errors",
            "Failed calls to a dependency (producer, kafka, redis, mongodb)",
            m.dependency_errors.clone(),
        );
        registry.register(
            "weather_process_start_to_ready_seconds",
            "Time from process start to serving",
            m.start_to_ready.clone(),
        );
        registry.register(
            "weather_dead_letters_refused",
            "Records skipped because Kafka refused even their letter without data (runner)",
            m.dead_letters_refused.clone(),
        );
        registry.register(
            "weather_runner_replicas",
            "Processes of a function alive, starting or draining (runner)",
            m.replicas.clone(),
        );
        registry.register(
            "weather_runner_desired_replicas",
            "Replicas of a function the autoscaler wants (runner)",
            m.desired_replicas.clone(),
        );
        registry.register(
            "weather_runner_requests",
            "Requests the activator answered, by function and status (runner)",
            m.activator_requests.clone(),
        );
        registry.register(
            "weather_runner_request_duration_seconds",
            "Time from a request's arrival at the activator to its response headers (runner)",
            m.activator_duration.clone(),
        );
        registry.register(
            "weather_runner_deliveries_in_flight",
            "Deliveries a KafkaSource is sending to its sink now, waiting for a replica included (runner)",
            m.deliveries_in_flight.clone(),
        );
        registry.register(
            "weather_runner_partitions_paused",
            "Partitions a KafkaSource paused because their deliveries are behind (runner)",
            m.partitions_paused.clone(),
        );
        registry.register(
            "weather_runner_rebalances",
            "Times a KafkaSource's consumer lost its partitions to a rebalance (runner)",
            m.rebalances.clone(),
        );
        registry.register(
            "weather_runner_dead_letter_waiting_offset",
            "Offset of a record whose dead letter Kafka refuses, so its partition waits (runner)",
            m.dead_letter_waiting.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn rejected(&self, reason: &'static str) {
        self.events_rejected.get_or_create(&Reason { reason }).inc();
    }

    pub fn dead_letter_refused(&self) {
        self.dead_letters_refused.inc();
    }

    /// A request the activator answered; `service` is a function of the manifests, `status`
    /// one a function (or the activator) gave.
    pub fn activator_request(&self, service: &str, status: u16) {
        self.activator_requests.get_or_create(&ServiceStatus { service: service.to_owned(), status }).inc();
    }

    pub fn dependency_error(&self, dependency: &'static str) {
        self.dependency_errors.get_or_create(&Dependency { dependency }).inc();
    }

    /// Records that the process serves, `started` being the first thing `main` noted.
    pub fn ready(&self, started: Instant) {
        self.start_to_ready.set(started.elapsed().as_secs_f64());
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Sets the `function` label; call once at the start of `main`.
pub fn init(function: &str) -> &'static Metrics {
    METRICS.get_or_init(|| Metrics::new(function))
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    init("test")
}

/// `GET /metrics`.
pub fn routes() -> Router {
    Router::new().route(
        crate::http::METRICS_PATH,
        routing::get(|| async {
            ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], get().encode())
                .into_response()
        }),
    )
}

/// Middleware counting and timing every request but the probes and `/metrics`, with bounded
/// labels.
pub async fn track(request: Request, next: Next) -> Response {
    if crate::http::is_probe(request.uri().path()) {
        return next.run(request).await;
    }
    let route = crate::http::route_label(&request).to_owned();
    let method = crate::http::method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = HttpLabels { route, method, status: response.status().as_u16() };
    get().http_requests.get_or_create(&labels).inc();
    get().http_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}
