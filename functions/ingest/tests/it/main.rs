//! `ingest` integration tests: `POST /input` through `router` with `oneshot`, publishing through
//! a real `producer` on a loopback port into a fresh Kafka topic (`KAFKA_BROKERS`, default
//! `127.0.0.1:9092`) where the test needs Kafka; property tests of the contract in `props`; what
//! the gRPC call carries besides the tweet in `metadata`; what a failed call answers in
//! `outcome`; Idempotency-Keys against the local Redis in `keys`; slow and many clients against
//! a served ingest in `slow`.

mod kafka;
mod keys;
mod metadata;
mod outcome;
mod props;
mod publish;
mod slow;
mod validation;

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header::CONTENT_TYPE},
};
use http_body_util::BodyExt;
use ingest::{AppState, Config};
use serde_json::Value;
use tower::ServiceExt;

/// The default `MAX_BODY_BYTES`.
const BODY_LIMIT: usize = 16 * 1024;

/// The ingest router, publishing to the producer at `producer_url`, traced as `init` traces
/// without an exporter.
fn app(producer_url: &str, max_body_bytes: usize) -> Router {
    traced();
    ingest::router(AppState::new(&Config { max_body_bytes, ..config(producer_url) }).expect("a valid config"))
}

/// The settings of a test's ingest: producer at `producer_url` with a 10 s deadline, the local
/// Redis (`REDIS_URL`) under a prefix of its own, the defaults otherwise.
fn config(producer_url: &str) -> Config {
    Config {
        port: 0,
        host: "127.0.0.1".into(),
        producer_url: producer_url.into(),
        max_body_bytes: BODY_LIMIT,
        producer_timeout_ms: 10_000,
        header_read_timeout_ms: 10_000,
        body_read_timeout_ms: 10_000,
        max_connections: 2_048,
        redis_url: testkit::redis_url(),
        key_prefix: format!("{}:", testkit::unique("it-ingest-")),
        redis_timeout_ms: 2_000,
        idempotency_key_ttl_s: 3_600,
        idempotency_keys_per_hour: 10_000,
    }
}

/// `init`'s tracing without an exporter, as every test's global default: set before any test
/// sends a request, so no span of ingest or producer is first met without it (tracing caches a
/// callsite's interest, and a thread's own default loses to another thread that met it first).
fn traced() {
    static TRACED: std::sync::Once = std::sync::Once::new();
    TRACED.call_once(|| {
        tracing::subscriber::set_global_default(common::testing::subscriber_without_exporter())
            .expect("no other global subscriber");
    });
}

/// A loopback port nothing listens on: bound, then released.
fn closed_port_url() -> String {
    format!("http://127.0.0.1:{}", testkit::closed_port())
}

/// An ingest whose producer is unreachable: enough for requests that must fail validation first.
fn app_without_producer() -> Router {
    app(&closed_port_url(), BODY_LIMIT)
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.expect("the router is infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("a readable body").to_bytes();
    let json =
        if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    Reply { status: parts.status, headers: parts.headers, json }
}

fn request(method: Method, uri: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(ct) = content_type {
        builder = builder.header(CONTENT_TYPE, ct);
    }
    builder.body(body.into()).unwrap()
}

/// `POST /input` with `application/json`.
async fn post_json(app: &Router, body: impl Into<Body>) -> Reply {
    send(app, request(Method::POST, "/input", Some("application/json"), body)).await
}
