//! A KafkaSource sink (`counter`, `archiver`) is a [`Store`] behind one generic [`router`]: it
//! reads a CloudEvent (binary or structured mode) from the request, turns it into a
//! [`Received`] tweet — rejecting with a status KafkaSource will not retry (400, 413) what can
//! never succeed — and answers 2xx only once the store has applied it (or had it already), 503
//! while the store is unavailable so KafkaSource retries. What a store's error means is the
//! store's one [`Store::failure`]; its readiness probe asks [`Store::ready`].

use crate::event::{EventError, Received};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::json;
use std::{future::Future, sync::Arc};
use tokio::net::TcpListener;

/// Where a sink writes. `apply` must be idempotent per event: a redelivered event changes
/// nothing and answers [`Applied::Duplicate`].
pub trait Store: Send + Sync + 'static {
    type Error: std::fmt::Display + Send;

    fn apply(&self, event: &Received) -> impl Future<Output = Result<Applied, Self::Error>> + Send;

    /// What an error of `apply` means for the sender: the one place a store's errors are
    /// classified.
    fn failure(error: &Self::Error) -> Failure;

    /// Whether the store can keep its promises; `Err(why)` makes the readiness probe answer 503
    /// with `why`. Called on every probe: keep it cheap.
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

/// How a sink answers an error of [`Store::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The event names a Kafka position that no record has: 400 with the error's text, so it
    /// goes to the dead-letter sink and is never retried; nothing was stored.
    Position,
    /// A dependency (`redis`, `kafka`, `mongodb`) is unavailable: 503, retried; the error is
    /// logged, not echoed.
    Unavailable(&'static str),
}

/// Whether an event changed the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    New,
    Duplicate,
}

/// The sink's routes: `POST /` (where KafkaSource delivers) plus what every function serves.
pub fn router<S: Store>(store: Arc<S>) -> Router {
    let routes = Router::new()
        .route("/", post(receive::<S>))
        .layer(DefaultBodyLimit::max(MAX_EVENT_BYTES))
        .with_state(store.clone());
    crate::server::app_with_readiness(routes, move || {
        let store = store.clone();
        async move { store.ready().await }
    })
}

/// Serves `store` on `listener` until `shutdown`, then drains.
pub async fn run<S: Store>(
    store: S,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::server::serve(listener, router(Arc::new(store)), shutdown).await
}

async fn receive<S: Store>(
    State(store): State<Arc<S>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let received = match read(&headers, body) {
        Ok(r) => r,
        Err(rejected) => return rejected.into_response(),
    };
    let metrics = crate::metrics::get();
    match store.apply(&received).await {
        Ok(applied) => {
            match applied {
                Applied::New => metrics.events_applied.inc(),
                Applied::Duplicate => metrics.events_duplicate.inc(),
            };
            tracing::debug!(id = %received.id, ?applied, "Event applied");
            Json(json!({ "duplicate": applied == Applied::Duplicate })).into_response()
        }
        Err(e) => match S::failure(&e) {
            Failure::Position => Rejected::Position(e.to_string()).into_response(),
            Failure::Unavailable(dependency) => {
                metrics.dependency_error(dependency);
                tracing::error!(dependency, error = %e, "Store update failed");
                error_response(StatusCode::SERVICE_UNAVAILABLE, &format!("{dependency} is unavailable"))
            }
        },
    }
}

/// Largest event accepted; a tweet event is well under 2 KiB.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Longest event id accepted (it becomes part of a Redis key and a MongoDB `_id`).
pub const MAX_ID_BYTES: usize = 128;

/// An event that can never be applied; KafkaSource sends it to the dead-letter sink.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error("{message}")]
    Body { status: StatusCode, message: String },
    #[error("not a CloudEvent: {0}")]
    NotCloudEvent(#[from] cloudevents::message::Error),
    #[error(transparent)]
    Event(#[from] EventError),
    #[error("event id is longer than {MAX_ID_BYTES} bytes")]
    IdTooLong,
    #[error("{0}")]
    Position(String),
}

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        let (status, reason) = match &self {
            Rejected::Body { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                (*status, "too_large")
            }
            Rejected::Body { status, .. } => (*status, "body"),
            Rejected::NotCloudEvent(_) => (StatusCode::BAD_REQUEST, "not_cloudevent"),
            Rejected::Event(_) => (StatusCode::BAD_REQUEST, "bad_event"),
            Rejected::IdTooLong => (StatusCode::BAD_REQUEST, "id_too_long"),
            Rejected::Position(_) => (StatusCode::BAD_REQUEST, "position"),
        };
        crate::metrics::get().rejected(reason);
        error_response(status, &self.to_string())
    }
}

/// The JSON error body every sink answers with.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Reads the tweet out of a delivered request; the body limit is the router's
/// `DefaultBodyLimit::max(MAX_EVENT_BYTES)`.
pub fn read(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Received, Rejected> {
    let body = body.map_err(|e| Rejected::Body { status: e.status(), message: e.body_text() })?;
    let event = cloudevents::binding::http::to_event(headers, body.to_vec())?;
    let received = Received::from_event(&event)?;
    if received.id.len() > MAX_ID_BYTES {
        return Err(Rejected::IdTooLong);
    }
    Ok(received)
}
