//! `ingest` integration tests: `POST /input` through `router` with `oneshot`, publishing through
//! a real `producer` on a loopback port into a fresh Kafka topic (`KAFKA_BROKERS`, default
//! `127.0.0.1:9092`) where the test needs Kafka; property tests of the contract in `props`; what
//! the gRPC call carries besides the tweet in `metadata`.

mod kafka;
mod metadata;
mod props;
mod publish;
mod validation;

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Method, Request, StatusCode, header::CONTENT_TYPE},
};
use http_body_util::BodyExt;
use ingest::AppState;
use proto::v1::producer_client::ProducerClient;
use serde_json::Value;
use std::time::Duration;
use tower::ServiceExt;

/// The default `MAX_BODY_BYTES`.
const BODY_LIMIT: usize = 16 * 1024;

/// The ingest router, publishing to the producer at `producer_url`, traced as `init` traces
/// without an exporter.
fn app(producer_url: &str, max_body_bytes: usize) -> Router {
    traced();
    let channel = ingest::producer_channel(producer_url).expect("a valid producer URL");
    let state = AppState::new(ProducerClient::new(channel), Duration::from_secs(10));
    ingest::router(state, max_body_bytes)
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
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
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
