//! `ingest`: `POST /input` takes one tweet, validates and normalises it, publishes it through
//! `producer` over one shared gRPC channel and answers `202 {"id": …}` only once Kafka holds it.

mod config;
mod error;

pub use config::Config;
pub use error::IngestError;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header::CONTENT_TYPE},
    routing::post,
};
use common::tweet::Tweet;
use proto::v1::{PublishRequest, producer_client::ProducerClient};
use serde_json::{Value, json};
use std::{future::Future, time::Duration};
use tokio::net::TcpListener;
use tonic::{
    metadata::{MetadataKey, MetadataValue},
    transport::{Channel, Endpoint},
};
use tracing::Instrument;

/// What the handler needs: a client on the shared channel and the deadline for its answer.
#[derive(Clone)]
pub struct AppState {
    pub producer: ProducerClient<Channel>,
    pub timeout: Duration,
}

/// The service's routes, for `run` and for tests that call it with `oneshot`.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    common::server::app(
        Router::new()
            .route("/input", post(input))
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
    let state = AppState {
        producer: ProducerClient::new(producer_channel(&config.producer_url)?),
        timeout: config.producer_timeout(),
    };
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
    let mut request = tonic::Request::new(PublishRequest { tweet: Some(to_proto(tweet)), idempotency_key });
    request.set_timeout(state.timeout);
    for (key, value) in common::telemetry::headers(&span) {
        if let (Ok(key), Ok(value)) =
            (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value))
        {
            request.metadata_mut().insert(key, value);
        }
    }
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
    proto::v1::Tweet { texto: tweet.texto, pais: tweet.pais, clima: tweet.clima.as_str().to_owned() }
}
