//! What both KafkaSource sinks (`counter`, `archiver`) do before touching their store: read a
//! CloudEvent (binary or structured mode) from an HTTP request and turn it into a [`Received`]
//! tweet, rejecting with a status KafkaSource will not retry (400, 413) what can never succeed.

use crate::event::{EventError, Received};
use axum::{
    Json,
    body::Bytes,
    extract::rejection::BytesRejection,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::json;

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
