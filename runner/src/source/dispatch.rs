//! One record to the sink, as eventing-kafka-broker's dispatcher delivers it: a CloudEvent in
//! binary mode ([`record::to_binary`]) POSTed each of the `--deliveries` times, each delivery
//! retried as [`retry::after_failure`] says, and a failure for good sent to the
//! [`dead_letter`](super::dead_letter) topic.
//!
//! A delivery enters the sink's activator in process ([`Entrance`](crate::activator::Entrance))
//! rather than through the sink's public port, which Knative's dispatcher would call: the request
//! a replica gets is the one the port would have passed on (the public URL's `Host`,
//! `Accept: */*`, the same CloudEvent headers and body), and when no replica answers the source
//! gets the status the port would have answered ([`Refusal`]: 503 while nothing starts, 502 when
//! the replica's connection fails), so retries and dead letters are as they were.
//! `knativeerrordest` still names the public URL, where `tools replay` sends.

use super::{
    Dispatcher, Outcome, Sending,
    retry::{self, AfterFailure},
};
use crate::activator::Refusal;
use crate::record::{self, Binary};
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request,
    header::{HeaderName, HeaderValue},
};
use rdkafka::message::{Headers, Message, OwnedMessage};
use std::sync::Arc;
use tracing::{Instrument, Span, field::Empty};

/// A delivery that failed: the sink's status (none without an answer), body and the error.
pub(super) struct Failure {
    pub code: Option<u16>,
    pub body: Vec<u8>,
    pub error: String,
}

impl From<Refusal> for Failure {
    /// The activator's answer in a replica's place, as the source got it from the public port.
    fn from(refusal: Refusal) -> Failure {
        let code = refusal.status().as_u16();
        Failure { code: Some(code), body: refusal.text().as_bytes().to_vec(), error: format!("HTTP {code}") }
    }
}

/// How one delivery, retries included, ended.
enum Sent {
    Delivered,
    Failed(Failure),
    Stopped,
}

impl Dispatcher {
    /// `receive <topic>`, built once for a source's one topic.
    fn receive_name(&self, topic: &str) -> std::borrow::Cow<'_, str> {
        match self.source.topics.as_slice() {
            [only] if only == topic => std::borrow::Cow::Borrowed(self.receive_name.as_str()),
            _ => std::borrow::Cow::Owned(format!("receive {topic}")),
        }
    }

    /// A consumer span continuing the record's trace, as Knative's dispatcher makes one; none
    /// when the record carries no valid `traceparent`.
    fn receive_span(&self, message: &OwnedMessage) -> Span {
        let headers = message.headers().into_iter().flat_map(|h| h.iter().map(|h| (h.key, h.value)));
        let Some(parent) = common::telemetry::from_record_headers(headers) else { return Span::none() };
        let span = tracing::info_span!(
            "kafka_receive",
            otel.name = %self.receive_name(message.topic()),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "receive",
            messaging.destination.name = %message.topic(),
            messaging.consumer.group.name = %self.source.consumer_group,
            messaging.destination.partition.id = %message.partition(),
            messaging.kafka.offset = message.offset(),
            trace_id = Empty,
            span_id = Empty,
        );
        common::telemetry::continue_trace(&span, parent);
        span
    }

    /// Delivers (or dead-letters) one record.
    pub(super) async fn dispatch(self: Arc<Self>, message: OwnedMessage) -> Outcome {
        // Built once for every attempt; an event HTTP cannot carry fails each attempt as it did
        // when reqwest refused to build its request.
        let request = record::to_binary(&message, &self.source.namespace, &self.source.name)
            .map(|binary| self.with_source_headers(binary))
            .map_err(|e| e.to_string());
        let span = self.receive_span(&message);
        for _ in 0..self.settings.deliveries {
            match self.deliver(&request, &span).instrument(span.clone()).await {
                Sent::Delivered => {}
                Sent::Failed(failure) => return self.dead_letter(&message, failure).await,
                Sent::Stopped => return Outcome::Stopped,
            }
        }
        Outcome::Delivered
    }

    /// The event's headers with the ones every delivery of this source carries.
    fn with_source_headers(&self, mut binary: Binary) -> Binary {
        for (name, value) in &self.headers {
            binary.headers.append(name, value.clone());
        }
        binary
    }

    /// One delivery with the source's retries.
    async fn deliver(&self, request: &Result<Binary, String>, trace: &Span) -> Sent {
        let mut retries = 0;
        loop {
            let failure = match self.send(request, trace).await {
                Ok(()) => return Sent::Delivered,
                Err(f) => f,
            };
            let wait = match retry::after_failure(failure.code, retries, &self.source.delivery) {
                AfterFailure::Retry(wait) => wait,
                AfterFailure::Permanent | AfterFailure::Exhausted => return Sent::Failed(failure),
            };
            retries += 1;
            tracing::debug!(sink = %self.sink_url, code = ?failure.code, error = %failure.error, retries, "Retrying delivery");
            if !self.wait(wait).await {
                return Sent::Stopped;
            }
        }
    }

    /// One attempt, bounded by the source's `timeout` from the start to the answer's last byte
    /// (as reqwest's total timeout was).
    async fn send(&self, binary: &Result<Binary, String>, trace: &Span) -> Result<(), Failure> {
        let binary =
            binary.as_ref().map_err(|e| Failure { code: None, body: Vec::new(), error: e.clone() })?;
        let span = if trace.is_none() {
            Span::none()
        } else {
            tracing::info_span!(
                parent: trace,
                "send",
                otel.name = %self.send_name,
                otel.kind = "client",
                http.request.method = "POST",
                url.full = %self.sink_url,
                http.response.status_code = Empty,
            )
        };
        let mut request = Request::new(Full::new(binary.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.sink.clone();
        *request.headers_mut() = binary.headers.clone();
        for (key, value) in common::telemetry::headers(&span) {
            if let (Ok(key), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
                request.headers_mut().append(key, value);
            }
        }
        let deadline = tokio::time::Instant::now() + self.source.delivery.timeout;
        let _sending = Sending::new(&self.progress, &self.in_flight);
        let answer =
            tokio::time::timeout_at(deadline, self.entrance.send(request)).instrument(span.clone()).await;
        let response = match answer {
            Err(_) => {
                let error = format!("no answer within {:?}", self.source.delivery.timeout);
                return Err(Failure { code: None, body: Vec::new(), error });
            }
            Ok(Err(refusal)) => {
                span.record("http.response.status_code", refusal.status().as_u16());
                return Err(Failure::from(refusal));
            }
            Ok(Ok(response)) => response,
        };
        let code = response.status().as_u16();
        span.record("http.response.status_code", code);
        // Read to its end, so the connection to the replica is used again, and the request stops
        // counting in flight.
        let body = tokio::time::timeout_at(deadline, response.into_body().collect()).await;
        if code < 300 {
            return Ok(());
        }
        let body = match body {
            Ok(Ok(collected)) => collected.to_bytes().to_vec(),
            _ => Vec::new(),
        };
        Err(Failure { code: Some(code), error: format!("HTTP {code}"), body })
    }
}
