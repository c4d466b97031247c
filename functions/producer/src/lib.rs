//! `producer`: the gRPC `Publish` call writes one tweet to Kafka as a CloudEvent in binary
//! content mode (key = country, so each country keeps its order) and answers after the delivery
//! report. gRPC and the health probes share one port, because a Knative Service exposes one.

mod config;

pub use config::Config;

use cloudevents::binding::rdkafka::{FutureRecordExt, MessageRecord};
use common::tweet::{Tweet, TweetError};
use proto::v1::{
    PublishRequest, PublishResponse,
    producer_server::{Producer, ProducerServer},
};
use rdkafka::message::Header;
use rdkafka::{
    ClientConfig,
    error::KafkaError,
    producer::{FutureProducer, FutureRecord, Producer as _},
    util::Timeout,
};
use std::{future::Future, time::Duration};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tracing::{Instrument, field::Empty};

/// Writes tweet events to one topic.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    /// `send <topic>`, the `send` span's name, built once.
    send_name: String,
    source: String,
    /// How long `send` waits for room in a full local queue (backing off, never dropping).
    queue_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Invalid(#[from] TweetError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("encoding the CloudEvent: {0}")]
    Encode(#[from] cloudevents::message::Error),
}

impl From<PublishError> for Status {
    fn from(e: PublishError) -> Status {
        match e {
            PublishError::Invalid(e) => Status::invalid_argument(e.to_string()),
            PublishError::Kafka(_) | PublishError::Encode(_) => {
                tracing::error!(error = %e, "Publishing to Kafka failed");
                common::metrics::get().dependency_error("kafka");
                Status::unavailable("kafka is unavailable")
            }
        }
    }
}

/// The librdkafka settings of the producer, the one place they are written (`make bench`'s raw
/// producer baseline uses them too).
pub fn client_config(config: &Config) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", config.linger_ms.to_string())
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("compression.type", "lz4");
    client
}

impl Publisher {
    pub fn new(config: &Config) -> Result<Publisher, KafkaError> {
        let producer = client_config(config).create()?;
        Ok(Publisher {
            producer,
            topic: config.topic.clone(),
            send_name: format!("send {}", config.topic),
            source: config.event_source.clone(),
            queue_timeout: Duration::from_millis(config.queue_timeout_ms),
        })
    }

    /// Writes the tweet and returns where Kafka put it; with an `idempotency_key` (non-empty)
    /// the event id is derived from it and marked, so the sinks take retries for one tweet.
    pub async fn publish(
        &self,
        tweet: &Tweet,
        idempotency_key: &str,
    ) -> Result<PublishResponse, PublishError> {
        let id = common::event::event_id(idempotency_key);
        let span = tracing::info_span!(
            "send",
            otel.name = %self.send_name,
            otel.kind = "producer",
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = %self.topic,
            messaging.kafka.message.key = %tweet.pais,
            messaging.message.id = %id,
            messaging.destination.partition.id = Empty,
            messaging.kafka.offset = Empty,
        );
        // The trace travels twice, as Knative reads it: the plain `traceparent` header (which
        // KafkaSource continues) and the CloudEvents attribute `ce_traceparent`.
        let mut trace = RecordTrace::default();
        common::telemetry::inject(&span, &mut trace);
        let mut event = common::event::tweet_event(&id, &self.source, tweet);
        if !idempotency_key.is_empty() {
            event.set_extension(common::event::IDEMPOTENT_EXTENSION, true);
        }
        if let Some((_, traceparent)) = trace.0.iter().find(|(key, _)| key == "traceparent") {
            event.set_extension("traceparent", traceparent.clone());
        }
        let message = MessageRecord::from_event(event)?;
        let mut record = FutureRecord::to(&self.topic).key(tweet.pais.as_bytes()).message_record(&message);
        let mut headers = record.headers.take().unwrap_or_default();
        for (key, value) in &trace.0 {
            headers = headers.insert(Header { key, value: Some(value) });
        }
        let record = record.headers(headers);
        let sent = std::time::Instant::now();
        let delivery = self
            .producer
            .send(record, Timeout::After(self.queue_timeout))
            .instrument(span.clone())
            .await
            .map_err(|(e, _message)| PublishError::Kafka(e))?;
        span.record("messaging.destination.partition.id", delivery.partition.to_string());
        span.record("messaging.kafka.offset", delivery.offset);
        let metrics = common::metrics::get();
        metrics.produce_duration.observe(sent.elapsed().as_secs_f64());
        metrics.tweets_published.inc();
        Ok(PublishResponse { id, partition: delivery.partition, offset: delivery.offset })
    }

    /// Waits for queued records to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(error = %e, "Records still queued at shutdown");
        }
    }
}

/// The W3C headers of the `send` span's context, in the order the propagator writes them.
#[derive(Default)]
struct RecordTrace(Vec<(String, String)>);

impl opentelemetry::propagation::Injector for RecordTrace {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

#[tonic::async_trait]
impl Producer for Publisher {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishResponse>, Status> {
        let request = request.into_inner();
        let key = request.idempotency_key;
        if key.len() > common::event::MAX_IDEMPOTENCY_KEY_BYTES || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Status::invalid_argument(
                "idempotency_key must be at most 128 visible ASCII characters",
            ));
        }
        let tweet = request.tweet.ok_or_else(|| Status::invalid_argument("tweet is required"))?;
        // Callers other than ingest are possible, so the contract is checked again here; an
        // empty `clima` means "not given" (proto3 has no absent strings).
        let clima = (!tweet.clima.is_empty()).then_some(tweet.clima.as_str());
        let tweet = Tweet::new(&tweet.texto, &tweet.pais, clima).map_err(PublishError::from)?;
        Ok(Response::new(Publisher::publish(self, &tweet, &key).await?))
    }
}

/// gRPC `weather.v1.Producer` plus the health probes, on one router.
pub fn router(publisher: Publisher) -> axum::Router {
    common::server::app(tonic::service::Routes::new(ProducerServer::new(publisher)).into_axum_router())
}

pub async fn run(
    publisher: Publisher,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    common::server::serve(listener, router(publisher.clone()), shutdown).await?;
    publisher.flush(Duration::from_secs(5));
    Ok(())
}
