//! `archiver`: a KafkaSource sink. Each CloudEvent (binary or structured mode, our tweet events
//! or KafkaSource-wrapped records) becomes one document in MongoDB, however often it is
//! delivered. 2xx only once MongoDB acknowledged the insert (or already had it); 400/413 for
//! events that can never succeed; 503 while MongoDB is unavailable.

mod archive;
mod config;

pub use archive::{Archive, Archived, document};
pub use config::Config;

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
use std::future::Future;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Rejected(#[from] Rejected),
    #[error("mongodb is unavailable")]
    Mongo(#[from] mongodb::error::Error),
}

impl IntoResponse for SinkError {
    fn into_response(self) -> Response {
        match self {
            SinkError::Rejected(r) => r.into_response(),
            SinkError::Mongo(e) => {
                common::metrics::get().dependency_error("mongodb");
                tracing::error!(error = %e, "MongoDB insert failed");
                sink::error_response(StatusCode::SERVICE_UNAVAILABLE, "mongodb is unavailable")
            }
        }
    }
}

pub fn router(archive: Archive) -> Router {
    common::server::app(
        Router::new()
            .route("/", post(receive))
            .layer(DefaultBodyLimit::max(sink::MAX_EVENT_BYTES))
            .with_state(archive),
    )
}

pub async fn run(
    archive: Archive,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    common::server::serve(listener, router(archive), shutdown).await?;
    Ok(())
}

async fn receive(
    State(archive): State<Archive>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, SinkError> {
    let received = sink::read(&headers, body)?;
    let archived = archive.insert(&received).await?;
    let metrics = common::metrics::get();
    match archived {
        Archived::Inserted => metrics.events_applied.inc(),
        Archived::Duplicate => metrics.events_duplicate.inc(),
    };
    tracing::debug!(id = %received.id, ?archived, "Event archived");
    Ok(Json(json!({ "duplicate": archived == Archived::Duplicate })))
}
