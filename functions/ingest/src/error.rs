//! Every way a request to ingest can fail, mapped to a status code in one place; and what a
//! failed call to producer tells of the tweet ([`Outcome::of`]), the other half of that mapping.

use axum::{
    Json,
    http::{
        HeaderValue, StatusCode,
        header::{ALLOW, CONNECTION, RETRY_AFTER},
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
    /// A body that could not be read: cut off, or producer refused what ingest accepted.
    #[error("{0}")]
    Body(String),
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body did not arrive within `BODY_READ_TIMEOUT_MS`.
    #[error("the body did not arrive within {0} ms")]
    Timeout(u128),
    /// The key is bound to another tweet.
    #[error("Idempotency-Key was already used with another body; use a new key for a new tweet")]
    KeyReused,
    /// This hour's budget of new keys is spent.
    #[error(
        "too many new Idempotency-Keys this hour; retry in {retry_after_s} s, or send the tweet without the header"
    )]
    KeyBudget { retry_after_s: u64 },
    /// A path other than the endpoint's (the path is not echoed: it is the client's text).
    #[error("no such endpoint; post tweets to /input")]
    NotFound,
    /// Another method than POST on the endpoint.
    #[error("only POST is allowed here")]
    MethodNotAllowed,
    /// Kafka does not hold the tweet (producer or Kafka unavailable, or Kafka refused it); a
    /// retry cannot double it.
    #[error("the tweet was not stored; try again")]
    NotStored,
    /// Redis, which keeps the Idempotency-Keys, is unavailable; nothing was published.
    #[error("the Idempotency-Key could not be checked, so the tweet was not stored; try again")]
    KeysUnavailable,
    /// The tweet may or may not be in Kafka.
    #[error("{}", unknown_message(*.keyed))]
    Unknown { id: String, keyed: bool },
}

fn unknown_message(keyed: bool) -> &'static str {
    if keyed {
        "the tweet may or may not have been stored; retrying with the same Idempotency-Key and body is safe: it is counted once"
    } else {
        "the tweet may or may not have been stored, and a retry may store it twice; send an Idempotency-Key to make retries safe"
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let metrics = common::metrics::get();
        let (status, field) = match &self {
            IngestError::Invalid(e) => {
                metrics.rejected(e.field.unwrap_or("json"));
                (StatusCode::BAD_REQUEST, e.field)
            }
            IngestError::UnsupportedMediaType => {
                metrics.rejected("media_type");
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, None)
            }
            IngestError::IdempotencyKey => {
                metrics.rejected("idempotency_key");
                (StatusCode::BAD_REQUEST, Some("Idempotency-Key"))
            }
            IngestError::Body(_) => {
                metrics.rejected("body");
                (StatusCode::BAD_REQUEST, None)
            }
            IngestError::TooLarge(_) => {
                metrics.rejected("too_large");
                (StatusCode::PAYLOAD_TOO_LARGE, None)
            }
            IngestError::Timeout(_) => {
                metrics.rejected("timeout");
                (StatusCode::REQUEST_TIMEOUT, None)
            }
            IngestError::KeyReused => {
                metrics.rejected("idempotency_key_reused");
                (StatusCode::UNPROCESSABLE_ENTITY, Some("Idempotency-Key"))
            }
            IngestError::KeyBudget { .. } => {
                metrics.rejected("idempotency_key_budget");
                (StatusCode::TOO_MANY_REQUESTS, Some("Idempotency-Key"))
            }
            IngestError::NotFound => {
                metrics.rejected("not_found");
                (StatusCode::NOT_FOUND, None)
            }
            IngestError::MethodNotAllowed => {
                metrics.rejected("method");
                (StatusCode::METHOD_NOT_ALLOWED, None)
            }
            IngestError::NotStored | IngestError::Unknown { .. } => {
                metrics.dependency_error("producer");
                let status = match self {
                    IngestError::NotStored => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::GATEWAY_TIMEOUT,
                };
                (status, None)
            }
            IngestError::KeysUnavailable => {
                metrics.dependency_error("redis");
                (StatusCode::SERVICE_UNAVAILABLE, None)
            }
        };
        let message = match &self {
            IngestError::Invalid(e) => e.message.clone(),
            other => other.to_string(),
        };
        let mut body = json!({ "error": message, "field": field });
        match &self {
            IngestError::NotStored | IngestError::KeysUnavailable => body["outcome"] = json!("not-stored"),
            IngestError::Unknown { id, .. } => {
                body["outcome"] = json!("unknown");
                body["id"] = json!(id);
            }
            _ => {}
        }
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        match &self {
            IngestError::NotStored | IngestError::KeysUnavailable => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            IngestError::KeyBudget { retry_after_s } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_s));
            }
            // The rest of the body may still be on its way: the connection cannot serve another
            // request.
            IngestError::Timeout(_) | IngestError::TooLarge(_) => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            IngestError::MethodNotAllowed => {
                headers.insert(ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        response
    }
}

/// What a failed `Publish` call tells of the tweet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Producer refused the tweet as invalid: ingest's and producer's validation drifted.
    Invalid,
    /// Kafka does not hold it: 503.
    NotStored,
    /// It may be in Kafka: 504.
    Unknown,
}

impl Outcome {
    /// The one mapping. "Not stored" needs proof: producer's own answer saying so (UNAVAILABLE,
    /// FAILED_PRECONDITION or INTERNAL with `weather-outcome: not-stored`), or a connection to
    /// producer that never opened, so nothing was sent. Anything else — DEADLINE_EXCEEDED or
    /// UNKNOWN from producer, ingest's own deadline (CANCELLED), a connection that broke
    /// mid-call, or a proxy's 502/503/504, which tonic also reports as UNAVAILABLE but without
    /// the metadata — is unknown.
    pub fn of(status: &tonic::Status) -> Outcome {
        use tonic::Code;
        let says_not_stored =
            status.metadata().get(proto::OUTCOME).is_some_and(|outcome| outcome == proto::NOT_STORED);
        match status.code() {
            Code::InvalidArgument => Outcome::Invalid,
            Code::Unavailable | Code::FailedPrecondition | Code::Internal if says_not_stored => {
                Outcome::NotStored
            }
            _ if never_connected(status) => Outcome::NotStored,
            _ => Outcome::Unknown,
        }
    }
}

/// The call failed while connecting to producer (refused, unresolvable, timed out), before any
/// byte of the request was sent.
fn never_connected(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}
