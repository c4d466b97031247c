//! `ingest`: `POST /input` takes one tweet, validates and normalises it, gives it an id,
//! publishes it through `producer` over one shared gRPC channel and answers `202 {"id": …}` only
//! once Kafka holds it; `503` only when Kafka provably does not, `504 {"outcome": "unknown",
//! "id": …}` when it cannot tell ([`Outcome`]). With an `Idempotency-Key` the id is the key's and
//! the tweet's, and the key is bound to its first tweet ([`keys`]).
//!
//! Routes: the same endpoint answers at each of [`INPUT_PATHS`] — `/input` (the assignment's),
//! `/input/` (what its clients post to) and `/` (where a Knative function is invoked); another
//! method there is `405` with `Allow: POST`, any other path `404`, both with a JSON error body.
//! The probes and `GET /metrics` come from `common::server::app`.

mod config;
mod error;
pub mod keys;

pub use config::Config;
pub use error::{IngestError, Outcome};
pub use keys::{Keys, Remembered};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{
        HeaderMap, HeaderValue, StatusCode,
        header::{CONTENT_LENGTH, CONTENT_TYPE},
    },
    routing::post,
};
use common::tweet::Tweet;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use proto::v1::{PublishRequest, producer_client::ProducerClient};
use serde_json::{Value, json};
use std::{future::Future, sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tonic::{
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};
use tracing::Instrument;

/// What the handler needs: a client on the shared channel, the deadline for its answer, the
/// keys it remembers and the limits of a body.
#[derive(Clone)]
pub struct AppState {
    producer: ProducerClient<Channel>,
    /// The deadline as its `grpc-timeout` header, written once by tonic's own
    /// `Request::set_timeout` (it formatted the same value for every call).
    grpc_timeout: HeaderValue,
    keys: Arc<Keys>,
    max_body_bytes: usize,
    body_read_timeout: Duration,
}

impl AppState {
    /// The state `config` describes; nothing connects yet (producer and Redis on first use).
    pub fn new(config: &Config) -> anyhow::Result<AppState> {
        let mut probe = tonic::Request::new(());
        probe.set_timeout(config.producer_timeout());
        let grpc_timeout = probe
            .into_parts()
            .0
            .into_headers()
            .remove(GRPC_TIMEOUT)
            .expect("set_timeout writes grpc-timeout");
        Ok(AppState {
            producer: ProducerClient::new(producer_channel(&config.producer_url)?),
            grpc_timeout,
            keys: Arc::new(Keys::new(config)?),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout(),
        })
    }
}

/// The header tonic's `Request::set_timeout` writes.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The paths of the one endpoint, `POST` only.
pub const INPUT_PATHS: [&str; 3] = ["/input", "/input/", "/"];

/// The service's routes, for `run` and for tests that call it with `oneshot`.
pub fn router(state: AppState) -> Router {
    let routes = INPUT_PATHS.into_iter().fold(Router::new(), |routes, path| routes.route(path, post(input)));
    common::server::app(
        routes
            .method_not_allowed_fallback(|| async { IngestError::MethodNotAllowed })
            .fallback(|| async { IngestError::NotFound })
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
    let app = router(AppState::new(&config)?);
    common::server::serve_with(listener, app, shutdown, config.limits()).await?;
    Ok(())
}

async fn input(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), IngestError> {
    if !is_json(&headers) {
        return Err(IngestError::UnsupportedMediaType);
    }
    let idempotency_key = idempotency_key(&headers)?;
    let body = read_body(&headers, body, state.max_body_bytes, state.body_read_timeout).await?;
    let tweet = Tweet::from_json(&body)?;
    // Chosen before the call, so that even an answer of unknown outcome names the tweet.
    let id = common::event::tweet_id(idempotency_key, &tweet);
    if let Some(key) = idempotency_key {
        match state.keys.remember(key, id).await {
            Ok(Remembered::First | Remembered::Same) => {}
            Ok(Remembered::Reused) => return Err(IngestError::KeyReused),
            Ok(Remembered::OverBudget { retry_after_s }) => {
                return Err(IngestError::KeyBudget { retry_after_s });
            }
            Err(e) => {
                tracing::warn!(error = %e, "Remembering an Idempotency-Key failed");
                return Err(IngestError::KeysUnavailable);
            }
        }
    }

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
    let id = id.to_string();
    let mut request = tonic::Request::new(PublishRequest {
        tweet: Some(to_proto(tweet)),
        id: id.clone(),
        idempotent: idempotency_key.is_some(),
    });
    *request.metadata_mut() = MetadataMap::from_headers(metadata);
    let status = match state.producer.clone().publish(request).instrument(span).await {
        Ok(_) => return Ok((StatusCode::ACCEPTED, Json(json!({ "id": id })))),
        Err(status) => status,
    };
    match Outcome::of(&status) {
        Outcome::Invalid => {
            // Our validation and producer's agree, so this means the two versions drifted.
            tracing::error!(%status, "Producer rejected a tweet that ingest accepted");
            Err(IngestError::Body(status.message().to_owned()))
        }
        Outcome::NotStored => {
            tracing::warn!(code = ?status.code(), message = status.message(), "Publishing failed; not stored");
            Err(IngestError::NotStored)
        }
        Outcome::Unknown => {
            tracing::warn!(code = ?status.code(), message = status.message(), %id, "Publishing failed; outcome unknown");
            Err(IngestError::Unknown { id, keyed: idempotency_key.is_some() })
        }
    }
}

/// The `Idempotency-Key` header, if sent: what makes a client's retry safe.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, IngestError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value.as_bytes();
    if key.is_empty()
        || key.len() > common::event::MAX_IDEMPOTENCY_KEY_BYTES
        || !key.iter().all(|b| b.is_ascii_graphic())
    {
        return Err(IngestError::IdempotencyKey);
    }
    // Visible ASCII is UTF-8.
    Ok(value.to_str().ok())
}

/// The whole body, within `limit` bytes (a larger declared length is refused before reading)
/// and `timeout` from now: a client that sends its body a byte at a time is answered 408 rather
/// than held.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, IngestError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(IngestError::TooLarge(limit));
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(IngestError::TooLarge(limit)),
        Ok(Err(_)) => Err(IngestError::Body("the body could not be read to its end".into())),
        Err(_) => Err(IngestError::Timeout(timeout.as_millis())),
    }
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
        let config = <Config as clap::Parser>::parse_from(["ingest", "--producer-url", &url]);
        let app = router(AppState::new(&config).unwrap());

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
