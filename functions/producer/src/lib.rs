//! `producer`: the gRPC `Publish` call writes one tweet to Kafka as a CloudEvent in binary
//! content mode (key = country, so each country keeps its order) and answers after the delivery
//! report; a failure says whether Kafka provably does not hold the record ([`failure`]). gRPC and
//! the health probes share one port, because a Knative Service exposes one; both probes fail once
//! librdkafka reports a fatal error, since that client can publish nothing more.

mod config;
pub mod failure;

pub use config::Config;
pub use failure::{Failure, Outcome, Stage};

use cloudevents::binding::rdkafka::{FutureRecordExt, MessageRecord};
use common::tweet::{Tweet, TweetError};
use proto::v1::{
    PublishRequest, PublishResponse,
    producer_server::{Producer, ProducerServer},
};
use rdkafka::message::Header;
use rdkafka::{
    ClientConfig,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureProducer, FutureRecord, Producer as _, future_producer::Delivery},
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
    /// How long a record waits for room in a full local queue (backing off, never dropping).
    queue_timeout: Duration,
}

/// How often a record waiting for room in librdkafka's full queue tries again.
const QUEUE_RETRY: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Invalid(#[from] TweetError),
    #[error("id must be a UUID")]
    InvalidId,
    #[error("kafka: {error}")]
    Kafka { error: KafkaError, failure: Failure },
    #[error("encoding the CloudEvent: {0}")]
    Encode(#[from] cloudevents::message::Error),
}

impl From<PublishError> for Status {
    fn from(e: PublishError) -> Status {
        let failure = match &e {
            PublishError::Invalid(e) => return Status::invalid_argument(e.to_string()),
            PublishError::InvalidId => return Status::invalid_argument(e.to_string()),
            PublishError::Kafka { failure, .. } => *failure,
            PublishError::Encode(_) => Failure::INTERNAL,
        };
        tracing::error!(error = %e, outcome = ?failure.outcome, "Publishing to Kafka failed");
        common::metrics::get().dependency_error("kafka");
        failure.status()
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
    if let Some(contexts) = &config.kafka_debug {
        client.set("debug", contexts);
    }
    client
}

impl Publisher {
    pub fn new(config: &Config) -> Result<Publisher, KafkaError> {
        Publisher::with_client(client_config(config), config)
    }

    /// A publisher on `client`'s librdkafka settings rather than [`client_config`]'s (a test's
    /// mock cluster or tighter queue).
    pub fn with_client(client: ClientConfig, config: &Config) -> Result<Publisher, KafkaError> {
        Ok(Publisher {
            producer: client.create()?,
            topic: config.topic.clone(),
            send_name: format!("send {}", config.topic),
            source: config.event_source.clone(),
            queue_timeout: Duration::from_millis(config.queue_timeout_ms),
        })
    }

    /// The fatal error librdkafka reported, if any: this client can publish nothing more, so
    /// both probes fail and Kubernetes restarts producer with a new one.
    pub fn fatal_error(&self) -> Option<String> {
        self.producer.client().fatal_error().map(|(code, reason)| format!("{code}: {reason}"))
    }

    /// Writes the tweet under `id` and returns where Kafka put it; `idempotent` marks the event
    /// so that the sinks take every record of that id as one tweet.
    pub async fn publish(
        &self,
        tweet: &Tweet,
        id: &str,
        idempotent: bool,
    ) -> Result<PublishResponse, PublishError> {
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
        let mut event = common::event::tweet_event(id, &self.source, tweet);
        if idempotent {
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
        let delivery = self.deliver(record).instrument(span.clone()).await?;
        span.record("messaging.destination.partition.id", delivery.partition.to_string());
        span.record("messaging.kafka.offset", delivery.offset);
        let metrics = common::metrics::get();
        metrics.produce_duration.observe(sent.elapsed().as_secs_f64());
        metrics.tweets_published.inc();
        Ok(PublishResponse { id: id.to_owned(), partition: delivery.partition, offset: delivery.offset })
    }

    /// Hands the record to librdkafka — waiting up to the queue timeout for room in its full
    /// queue, never dropping — and awaits its delivery report. `FutureProducer::send` would do
    /// both in one call, but then an error could not tell whether the record was handed over,
    /// which is what decides between "not stored" and "unknown".
    async fn deliver(&self, mut record: FutureRecord<'_, [u8], Vec<u8>>) -> Result<Delivery, PublishError> {
        let failed = |stage, error| PublishError::Kafka { failure: Failure::of(stage, &error), error };
        let deadline = tokio::time::Instant::now() + self.queue_timeout;
        let delivery = loop {
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if tokio::time::Instant::now() < deadline =>
                {
                    record = back;
                    tokio::time::sleep(QUEUE_RETRY).await;
                }
                Err((error, _)) => return Err(failed(Stage::Enqueue, error)),
            }
        };
        match delivery.await {
            Ok(Ok(delivery)) => Ok(delivery),
            Ok(Err((error, _))) => Err(failed(Stage::Delivery, error)),
            Err(_canceled) => Err(failed(Stage::Delivery, KafkaError::Canceled)),
        }
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
        // A UUID, as the sinks expect of an id; written back in its hyphenated form.
        let id = match request.id.as_str() {
            "" => uuid::Uuid::now_v7(),
            id => uuid::Uuid::try_parse(id).map_err(|_| PublishError::InvalidId)?,
        };
        let tweet = request.tweet.ok_or_else(|| Status::invalid_argument("tweet is required"))?;
        // Callers other than ingest are possible, so the contract is checked again here; an
        // empty `clima` means "not given" (proto3 has no absent strings).
        let clima = (!tweet.clima.is_empty()).then_some(tweet.clima.as_str());
        let tweet = Tweet::new(&tweet.texto, &tweet.pais, clima).map_err(PublishError::from)?;
        let published = Publisher::publish(self, &tweet, &id.to_string(), request.idempotent).await?;
        Ok(Response::new(published))
    }
}

/// gRPC `weather.v1.Producer` plus the health probes, on one router; the probes fail once
/// librdkafka reported a fatal error.
pub fn router(publisher: Publisher) -> axum::Router {
    let kafka = publisher.clone();
    let grpc = tonic::service::Routes::new(ProducerServer::new(publisher)).into_axum_router();
    common::server::app_with_health(grpc, move || match kafka.fatal_error() {
        None => Ok(()),
        Some(error) => Err(format!("the Kafka client failed for good: {error}")),
    })
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
