//! `ingest`: `POST /input` takes one tweet, validates and normalises it, publishes it through
//! `producer` over one shared gRPC channel and answers `202 {"id": …}` only once Kafka holds it.
//!
//! Routes: the same endpoint answers at each of [`INPUT_PATHS`] — `/input` (the assignment's),
//! `/input/` (what its clients post to) and `/` (where a Knative function is invoked); another
//! method there is `405` with `Allow: POST`, any other path `404`, both with a JSON error body.
//! The probes and `GET /metrics` come from `common::server::app`.

mod config;
mod error;

pub use config::Config;
pub use error::IngestError;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header::CONTENT_TYPE},
    routing::post,
};
use common::tweet::Tweet;
use proto::v1::{PublishRequest, producer_client::ProducerClient};
use serde_json::{Value, json};
use std::{future::Future, time::Duration};
use tokio::net::TcpListener;
use tonic::{
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};
use tracing::Instrument;

/// What the handler needs: a client on the shared channel and the deadline for its answer.
#[derive(Clone)]
pub struct AppState {
    producer: ProducerClient<Channel>,
    /// The deadline as its `grpc-timeout` header, written once by tonic's own
    /// `Request::set_timeout` (it formatted the same value for every call).
    grpc_timeout: HeaderValue,
}

impl AppState {
    pub fn new(producer: ProducerClient<Channel>, timeout: Duration) -> AppState {
        let mut probe = tonic::Request::new(());
        probe.set_timeout(timeout);
        let grpc_timeout = probe
            .into_parts()
            .0
            .into_headers()
            .remove(GRPC_TIMEOUT)
            .expect("set_timeout writes grpc-timeout");
        AppState { producer, grpc_timeout }
    }
}

/// The header tonic's `Request::set_timeout` writes.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The paths of the one endpoint, `POST` only.
pub const INPUT_PATHS: [&str; 3] = ["/input", "/input/", "/"];

/// The service's routes, for `run` and for tests that call it with `oneshot`.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let routes = INPUT_PATHS.into_iter().fold(Router::new(), |routes, path| routes.route(path, post(input)));
    common::server::app(
        routes
            .method_not_allowed_fallback(|| async { IngestError::MethodNotAllowed })
            .fallback(|| async { IngestError::NotFound })
            .layer(DefaultBodyLimit::max(max_body_bytes))
            .with_state(state),
    )
}

/// A lazily connected channel: ingest starts (and answers 503) even while producer is down.
pub fn producer_channel(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| anyhow::anyhow!("PRODUCER_URL {url:?} is not a valid URL: {e}"))?;
    Ok(endpoint.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true).connect_lazy())
}

pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::new(
        ProducerClient::new(producer_channel(&config.producer_url)?),
        config.producer_timeout(),
    );
    common::server::serve(listener, router(state, config.max_body_bytes), shutdown).await?;
    Ok(())
}

async fn input(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), IngestError> {
    if !is_json(&headers) {
        return Err(IngestError::UnsupportedMediaType);
    }
    let idempotency_key = idempotency_key(&headers)?;
    let body = body.map_err(|e| IngestError::Body { status: e.status(), message: e.body_text() })?;
    let tweet = Tweet::from_json(&body)?;

    let span = tracing::info_span!(
        "publish",
        otel.name = "weather.v1.Producer/Publish",
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "weather.v1.Producer",
        rpc.method = "Publish",
    );
    let mut metadata = HeaderMap::with_capacity(4);
    metadata.insert(GRPC_TIMEOUT, state.grpc_timeout.clone());
    common::telemetry::inject_headers(&span, &mut metadata);
    let mut request = tonic::Request::new(PublishRequest { tweet: Some(to_proto(tweet)), idempotency_key });
    *request.metadata_mut() = MetadataMap::from_headers(metadata);
    match state.producer.clone().publish(request).instrument(span).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            Ok((StatusCode::ACCEPTED, Json(json!({ "id": reply.id }))))
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            // Our validation and producer's agree, so this means the two versions drifted.
            tracing::error!(%status, "Producer rejected a tweet that ingest accepted");
            Err(IngestError::Body { status: StatusCode::BAD_REQUEST, message: status.message().to_owned() })
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "Publishing failed");
            Err(IngestError::Unavailable)
        }
    }
}

/// The `Idempotency-Key` header (empty when absent): what makes a client's retry safe.
fn idempotency_key(headers: &HeaderMap) -> Result<String, IngestError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(String::new()) };
    let key = value.as_bytes();
    if key.is_empty()
        || key.len() > common::event::MAX_IDEMPOTENCY_KEY_BYTES
        || !key.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(IngestError::IdempotencyKey);
    }
    Ok(String::from_utf8_lossy(key).into_owned())
}

/// `application/json`, with or without parameters such as `charset=utf-8`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn to_proto(tweet: Tweet) -> proto::v1::Tweet {
    // `pais_codigo` is not sent: producer derives it from `pais` again, as every reader does.
    proto::v1::Tweet {
        texto: tweet.texto,
        pais: tweet.pais.to_owned(),
        clima: tweet.clima.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    //! The only test in this binary, so nothing else moves the process's metrics while it
    //! measures them (the integration tests live in `tests/it`).

    use super::*;
    use axum::{body::Body, http::Request};
    use http_body_util::BodyExt;
    use proto::v1::producer_client::ProducerClient;
    use tower::ServiceExt;

    async fn send(app: &Router, method: &str, path: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"texto":"x"}"#))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// `/metrics` reduced to what can grow: its line count and each series without its value.
    async fn metrics_shape(app: &Router) -> (usize, Vec<String>) {
        let (status, text) = send(app, "GET", "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').map_or(l, |(series, _value)| series).to_owned())
            .collect();
        (text.lines().count(), series)
    }

    #[tokio::test]
    async fn ten_thousand_distinct_methods_and_paths_leave_metrics_the_same_size() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let producer = ProducerClient::new(producer_channel(&url).unwrap());
        let app = router(AppState::new(producer, Duration::from_secs(5)), 16 * 1024);

        // One request of each kind first, so every series the flood can reach exists.
        let kinds = |i: usize| {
            let method = if i.is_multiple_of(7) { "POST".to_owned() } else { format!("M{i}") };
            let path = match i % 4 {
                0 => format!("/p{i}"),
                1 => format!("/input/{i}?q={i}"),
                2 => format!("/health/x{i}"),
                _ => INPUT_PATHS[i % 3].to_owned(),
            };
            (method, path)
        };
        for i in 0..84 {
            let (method, path) = kinds(i);
            send(&app, &method, &path).await;
        }
        let before = metrics_shape(&app).await;
        assert!(before.1.iter().any(|s| s.contains(r#"method="_OTHER""#) && s.contains(r#"route="/input""#)));

        for i in 1_000..11_000 {
            let (method, path) = kinds(i);
            let (status, body) = send(&app, &method, &path).await;
            assert!(status.is_client_error(), "{method} {path}: {status}");
            assert!(body.len() < 256 && !body.contains(&format!("{i}")), "{method} {path}: {body}");
        }
        let after = metrics_shape(&app).await;
        assert_eq!(after, before);
        assert!(!after.1.iter().any(|s| s.contains("M5000") || s.contains("/p5000")));
    }
}
