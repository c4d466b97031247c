//! `counter`: a KafkaSource sink. Each CloudEvent (binary or structured mode, our tweet events
//! or KafkaSource-wrapped records) updates the Redis counters exactly once, however often it is
//! delivered. 2xx only once Redis holds the update; 400/413 for events that can never succeed
//! (they go to the dead-letter sink); 503 while Redis is unavailable (they are retried).

mod config;
mod counts;

pub use config::Config;
pub use counts::{Applied, Counts};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use common::sink::{self, Rejected};
use serde_json::json;
use std::{future::Future, sync::Arc};
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error("redis is unavailable")]
    Redis(#[from] redis::RedisError),
}

impl IntoResponse for SinkError {
    fn into_response(self) -> Response {
        match self {
            SinkError::Rejected(r) => r.into_response(),
            SinkError::Redis(e) => {
                common::metrics::get().dependency_error("redis");
                tracing::error!(error = %e, "Redis update failed");
                sink::error_response(StatusCode::SERVICE_UNAVAILABLE, "redis is unavailable")
            }
        }
    }
}

pub fn router(counts: Arc<Counts>) -> Router {
    common::server::app(
        Router::new()
            .route("/", post(receive))
            .layer(DefaultBodyLimit::max(sink::MAX_EVENT_BYTES))
            .with_state(counts),
    )
}

pub async fn run(
    counts: Counts,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    common::server::serve(listener, router(Arc::new(counts)), shutdown).await?;
    Ok(())
}

async fn receive(
    State(counts): State<Arc<Counts>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, SinkError> {
    let received = sink::read(&headers, body)?;
    let applied = counts.apply(&received).await?;
    let metrics = common::metrics::get();
    match applied {
        Applied::Counted => metrics.events_applied.inc(),
        Applied::Duplicate => metrics.events_duplicate.inc(),
    };
    tracing::debug!(id = %received.id, ?applied, "Event applied");
    Ok(Json(json!({ "duplicate": applied == Applied::Duplicate })))
}
