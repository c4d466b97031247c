//! Every way a request to ingest can fail, mapped to a status code in one place.

use axum::{
    Json,
    http::{
        HeaderValue, StatusCode,
        header::{ALLOW, RETRY_AFTER},
    },
    response::{IntoResponse, Response},
};
use common::tweet::TweetError;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Invalid(#[from] TweetError),
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    #[error(
        "Idempotency-Key must be 1 to {} visible ASCII characters",
        common::event::MAX_IDEMPOTENCY_KEY_BYTES
    )]
    IdempotencyKey,
    #[error("{message}")]
    Body { status: StatusCode, message: String },
    /// A path other than the endpoint's (the path is not echoed: it is the client's text).
    #[error("no such endpoint; post tweets to /input")]
    NotFound,
    /// Another method than POST on the endpoint.
    #[error("only POST is allowed here")]
    MethodNotAllowed,
    /// Producer or Kafka is unavailable; the client should retry.
    #[error("the tweet could not be stored, try again")]
    Unavailable,
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let (status, field) = match &self {
            IngestError::Invalid(e) => (StatusCode::BAD_REQUEST, e.field),
            IngestError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
            IngestError::IdempotencyKey => (StatusCode::BAD_REQUEST, Some("Idempotency-Key")),
            IngestError::Body { status, .. } => (*status, None),
            IngestError::NotFound => (StatusCode::NOT_FOUND, None),
            IngestError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, None),
            IngestError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
        };
        let message = match &self {
            IngestError::Invalid(e) => e.message.clone(),
            other => other.to_string(),
        };
        let metrics = common::metrics::get();
        match &self {
            IngestError::Invalid(e) => metrics.rejected(e.field.unwrap_or("json")),
            IngestError::UnsupportedMediaType => metrics.rejected("media_type"),
            IngestError::IdempotencyKey => metrics.rejected("idempotency_key"),
            IngestError::Body { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                metrics.rejected("too_large")
            }
            IngestError::Body { .. } => metrics.rejected("body"),
            IngestError::NotFound => metrics.rejected("not_found"),
            IngestError::MethodNotAllowed => metrics.rejected("method"),
            IngestError::Unavailable => metrics.dependency_error("producer"),
        }
        let mut response = (status, Json(json!({ "error": message, "field": field }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            response.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
        }
        response
    }
}
