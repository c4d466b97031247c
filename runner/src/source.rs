//! One KafkaSource, played locally: consume its topics with its consumer group and deliver each
//! record to its sink as eventing-kafka-broker's dispatcher does — retries with the source's
//! backoff on 5xx, 404, 408, 409, 429 and network errors, other failures straight to the
//! dead-letter sink — and store a partition's offset only once every record before it was
//! delivered or dead-lettered (librdkafka then commits stored offsets every second).
//!
//! One difference, on purpose: Knative commits a record whose dead-letter send failed; we keep
//! retrying the dead-letter topic instead, so a record is never dropped.
//!
//! A delivery enters the sink's activator in process ([`Entrance`]) rather than through the
//! sink's public port, which Knative's dispatcher would call: the request a replica gets is the
//! one the port would have passed on (the public URL's `Host`, `Accept: */*`, the same
//! CloudEvent headers and body, [`record::to_binary`]), the activator routes, cold-starts,
//! counts and measures it as it does a request on the port, and when no replica answers the
//! source gets the status the port would have answered ([`Refusal`]: 503 while nothing starts,
//! 502 when the replica's connection fails, say it died mid-request), so retries and dead letters
//! are as they were. `knativeerrordest` still names the public URL, where `tools replay` sends.

use crate::activator::{Entrance, Refusal};
use crate::manifests::{KafkaSource, Ordering};
use crate::record::{self, Binary};
use anyhow::Context;
use base64::Engine;
use cloudevents::{binding::rdkafka::FutureRecordExt, binding::rdkafka::MessageRecord};
use futures::{StreamExt, stream::FuturesOrdered};
use http_body_util::{BodyExt, Full};
use hyper::{
    Method, Request, Uri,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
    message::{Headers, OwnedMessage},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::{sync::mpsc, sync::watch, task::JoinHandle};
use tracing::{Instrument, Span, field::Empty};

/// Events in flight per partition for `ordering: unordered` (Knative's `max.poll.records`).
pub const UNORDERED_IN_FLIGHT: usize = 50;
const PREFER: HeaderName = HeaderName::from_static("prefer");
const PREFER_REPLY: HeaderValue = HeaderValue::from_static("reply");
const KN_NAMESPACE: HeaderName = HeaderName::from_static("kn-namespace");
/// Knative keeps at most this much of a failed response in `knativeerrordata`.
const ERROR_DATA_BYTES: usize = 1024;

/// A running source.
pub struct Source {
    pub name: String,
    consumer: Arc<StreamConsumer>,
    topics: Vec<String>,
    progress: Arc<Progress>,
    task: JoinHandle<()>,
}

/// What the source has done, for draining and the summary.
#[derive(Default)]
pub struct Progress {
    /// Next offset to deliver, per (topic, partition): everything before it is done.
    next: Mutex<HashMap<(String, i32), i64>>,
    pub dead_lettered: AtomicU64,
    /// Dead letters Kafka refused for good (skipped).
    pub refused: AtomicU64,
}

struct Dispatcher {
    source: KafkaSource,
    /// The sink's public URL (`knativeerrordest`, the spans' `url.full`).
    sink_url: String,
    /// `sink_url` parsed once, and the headers every delivery carries besides the event's:
    /// `Prefer`, `Kn-Namespace`, and what a client of the public URL would send (`Host`,
    /// reqwest's `Accept: */*`).
    sink: Uri,
    headers: HeaderMap,
    /// Span names, built once.
    receive_name: String,
    send_name: String,
    entrance: Entrance,
    producer: FutureProducer,
    consumer: Arc<StreamConsumer>,
    progress: Arc<Progress>,
    deliveries: u32,
    shutdown: watch::Receiver<bool>,
}

struct Failure {
    code: Option<u16>,
    body: Vec<u8>,
    error: String,
}

impl From<Refusal> for Failure {
    /// The activator's answer in a replica's place, as the source got it from the public port.
    fn from(refusal: Refusal) -> Failure {
        let code = refusal.status().as_u16();
        Failure { code: Some(code), body: refusal.text().as_bytes().to_vec(), error: format!("HTTP {code}") }
    }
}

/// The librdkafka settings of a source's consumer, the one place they are written (`make
/// bench`'s raw consumer baseline uses them too).
pub fn consumer_config(brokers: &str, group: &str, initial_offset: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", initial_offset)
        .set("isolation.level", "read_committed")
        // A fetch waits for 16 KiB or 10 ms, whichever comes first: librdkafka's defaults (1 byte,
        // 500 ms) answer each fetch with the one or two records written since the last, and at a
        // few thousand tweets/s the broker and the runner then spend their time on fetches.
        // The 10 ms are the latency this adds at worst, against a 100 ms p99 target.
        .set("fetch.min.bytes", "16384")
        .set("fetch.wait.max.ms", "10")
        // A runner killed without leaving its group holds its partitions until the session
        // times out; the broker's minimum (6 s) lets a restart resume soon.
        .set("session.timeout.ms", "6000");
    config
}

impl Source {
    /// Subscribes and starts delivering, through `entrance` to the sink whose public URL is
    /// `sink_url`, until `shutdown` turns true.
    pub fn start(
        source: KafkaSource,
        brokers: &str,
        sink_url: String,
        entrance: Entrance,
        producer: FutureProducer,
        deliveries: u32,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Source> {
        let consumer: Arc<StreamConsumer> = Arc::new(
            consumer_config(brokers, &source.consumer_group, &source.initial_offset)
                .create()
                .context("creating the Kafka consumer")?,
        );
        let topics: Vec<&str> = source.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).context("subscribing")?;
        let progress = Arc::new(Progress::default());
        let sink: Uri = sink_url.parse().with_context(|| format!("the sink URL {sink_url:?}"))?;
        let authority = sink.authority().with_context(|| format!("the sink URL {sink_url:?} has no host"))?;
        let namespace = HeaderValue::from_str(&source.namespace)
            .with_context(|| format!("the namespace {:?} as a header", source.namespace))?;
        let mut headers = HeaderMap::new();
        headers.insert(PREFER, PREFER_REPLY);
        headers.insert(KN_NAMESPACE, namespace);
        headers.insert(header::HOST, HeaderValue::from_str(authority.as_str())?);
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        let receive_name = format!("receive {}", source.topics.first().map_or("", String::as_str));
        let send_name = format!("POST {}", source.sink);
        let dispatcher = Arc::new(Dispatcher {
            sink,
            headers,
            receive_name,
            send_name,
            entrance,
            sink_url,
            producer,
            consumer: consumer.clone(),
            progress: progress.clone(),
            deliveries,
            shutdown,
            source: source.clone(),
        });
        tracing::info!(source = %source.name, group = %source.consumer_group, sink = %dispatcher.sink_url, "Source started");
        Ok(Source {
            name: source.name.clone(),
            topics: source.topics.clone(),
            consumer,
            progress,
            task: tokio::spawn(dispatcher.poll()),
        })
    }

    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Records in the source's topics not yet delivered or dead-lettered.
    pub fn lag(&self) -> anyhow::Result<i64> {
        let next = self.progress.next.lock().expect("progress lock").clone();
        let mut lag = 0;
        for topic in &self.topics {
            let metadata = self.consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let (low, high) =
                    self.consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(5))?;
                let done = next.get(&(topic.clone(), partition.id())).copied().unwrap_or(low);
                lag += (high - done).max(0);
            }
        }
        Ok(lag)
    }

    /// Waits for the delivery loop (already told to stop) and commits what was stored.
    pub async fn stop(self) {
        let _ = self.task.await;
        let mut stored = TopicPartitionList::new();
        for ((topic, partition), next) in self.progress.next.lock().expect("progress lock").iter() {
            let _ = stored.add_partition_offset(topic, *partition, Offset::Offset(*next));
        }
        if stored.count() > 0
            && let Err(e) = self.consumer.commit(&stored, CommitMode::Sync)
        {
            tracing::warn!(source = %self.name, error = %e, "Final commit failed; records will be delivered again");
        }
    }
}

impl Dispatcher {
    /// Reads records and hands each to its partition's worker, which keeps the partition's order.
    async fn poll(self: Arc<Self>) {
        let mut workers: HashMap<(String, i32), (mpsc::Sender<OwnedMessage>, JoinHandle<()>)> =
            HashMap::new();
        let mut shutdown = self.shutdown.clone();
        loop {
            let message = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                m = self.consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m.detach(),
                Err(e) => {
                    tracing::warn!(source = %self.source.name, error = %e, "Kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let key = (message.topic().to_owned(), message.partition());
            let (tx, _) = workers.entry(key).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(1024);
                (tx, tokio::spawn(self.clone().work(rx)))
            });
            if tx.send(message).await.is_err() {
                break;
            }
        }
        for (_, (tx, handle)) in workers {
            drop(tx);
            let _ = handle.await;
        }
    }

    /// Delivers one partition's records; results are taken in offset order, so a stored offset
    /// never passes a record still in flight.
    async fn work(self: Arc<Self>, mut records: mpsc::Receiver<OwnedMessage>) {
        let window = match self.source.ordering {
            Ordering::Ordered => 1,
            Ordering::Unordered => UNORDERED_IN_FLIGHT,
        };
        let mut in_flight = FuturesOrdered::new();
        let mut open = true;
        while open || !in_flight.is_empty() {
            tokio::select! {
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => match done {
                    Some((topic, partition, offset)) => self.done(topic, partition, offset),
                    None => return,
                },
                record = records.recv(), if open && in_flight.len() < window => match record {
                    Some(r) => in_flight.push_back(self.clone().dispatch(r)),
                    None => open = false,
                },
            }
        }
    }

    /// Record `offset` and every one before it are delivered: store `offset + 1`, the next
    /// offset to read, which is what Kafka means by a committed offset. (`store_offsets` stores
    /// the value as given; the older `store_offset` would add 1 itself.)
    fn done(&self, topic: String, partition: i32, offset: i64) {
        let mut next = TopicPartitionList::new();
        let stored = next
            .add_partition_offset(&topic, partition, Offset::Offset(offset + 1))
            .and_then(|()| self.consumer.store_offsets(&next));
        if let Err(e) = stored {
            // A partition revoked meanwhile: its new owner reads on from the last commit.
            tracing::warn!(%topic, partition, error = %e, "Storing the offset failed");
        }
        self.progress.next.lock().expect("progress lock").insert((topic, partition), offset + 1);
    }

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

    /// Delivers (or dead-letters) one record; `None` if shutdown interrupted it.
    async fn dispatch(self: Arc<Self>, message: OwnedMessage) -> Option<(String, i32, i64)> {
        // Built once for every attempt; an event HTTP cannot carry fails each attempt as it did
        // when reqwest refused to build its request.
        let request = record::to_binary(&message, &self.source.namespace, &self.source.name)
            .map(|binary| self.with_source_headers(binary))
            .map_err(|e| e.to_string());
        let span = self.receive_span(&message);
        for _ in 0..self.deliveries {
            match self.deliver(&request, &span).instrument(span.clone()).await? {
                Ok(()) => {}
                Err(failure) => {
                    self.dead_letter(&message, failure).await?;
                    return Some((message.topic().to_owned(), message.partition(), message.offset()));
                }
            }
        }
        Some((message.topic().to_owned(), message.partition(), message.offset()))
    }

    /// The event's headers with the ones every delivery of this source carries.
    fn with_source_headers(&self, mut binary: Binary) -> Binary {
        for (name, value) in &self.headers {
            binary.headers.append(name, value.clone());
        }
        binary
    }

    /// One delivery with the source's retries; `None` if shutdown interrupted the retries.
    async fn deliver(&self, request: &Result<Binary, String>, trace: &Span) -> Option<Result<(), Failure>> {
        let delivery = &self.source.delivery;
        let mut retries = 0;
        loop {
            let failure = match self.send(request, trace).await {
                Ok(()) => return Some(Ok(())),
                Err(f) => f,
            };
            let retryable = failure.code.is_none_or(|c| c >= 500 || [404, 408, 409, 429].contains(&c));
            if !retryable || retries >= delivery.retry {
                return Some(Err(failure));
            }
            retries += 1;
            tracing::debug!(sink = %self.sink_url, code = ?failure.code, error = %failure.error, retries, "Retrying delivery");
            if !self.wait(delivery.wait_before_retry(retries)).await {
                return None;
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

    /// Writes the event, with Knative's error extensions, to the dead-letter topic; retries until
    /// Kafka takes it, unless Kafka refuses it for good ([`refused_for_good`]): then the record
    /// is logged at error with its position, counted in `weather_dead_letters_refused_total` and
    /// committed, as Knative does, so the partition flows on. `None` if shutdown interrupted it.
    async fn dead_letter(&self, message: &OwnedMessage, failure: Failure) -> Option<()> {
        tracing::warn!(source = %self.source.name, partition = message.partition(), offset = message.offset(),
            code = ?failure.code, error = %failure.error, "Delivery failed, dead-lettering");
        let Some(topic) = &self.source.delivery.dead_letter_topic else {
            tracing::error!(source = %self.source.name, "No dead-letter sink: the record is dropped, as Knative does");
            return Some(());
        };
        // The event as the Event path makes it, whether the deliveries were forwarded or not.
        let mut event = record::to_event(message, &self.source.namespace, &self.source.name);
        event.set_extension("knativeerrordest", self.sink_url.clone());
        if let Some(code) = failure.code {
            event.set_extension("knativeerrorcode", code.to_string());
            let data = &failure.body[..failure.body.len().min(ERROR_DATA_BYTES)];
            event.set_extension("knativeerrordata", base64::engine::general_purpose::STANDARD.encode(data));
        }
        let record = match MessageRecord::from_event(event) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "Cannot encode the dead letter");
                return Some(());
            }
        };
        loop {
            let mut out = FutureRecord::to(topic).message_record(&record);
            if let Some(key) = message.key() {
                out = out.key(key);
            }
            match self.producer.send(out, Timeout::After(Duration::from_secs(10))).await {
                Ok(_) => {
                    self.progress.dead_lettered.fetch_add(1, Relaxed);
                    return Some(());
                }
                Err((e, _)) if refused_for_good(&e) => {
                    tracing::error!(source = %self.source.name, topic = message.topic(), partition = message.partition(),
                        offset = message.offset(), dead_letter_topic = %topic, error = %e,
                        "Kafka refuses the dead letter for good; the record is skipped");
                    common::metrics::get().dead_letter_refused();
                    self.progress.refused.fetch_add(1, Relaxed);
                    return Some(());
                }
                Err((e, _)) => {
                    tracing::error!(%topic, error = %e, "Writing the dead letter failed, retrying")
                }
            }
            if !self.wait(Duration::from_secs(1)).await {
                return None;
            }
        }
    }

    /// Sleeps; false if shutdown came first.
    async fn wait(&self, duration: Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(duration) => true,
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }
}

/// Whether Kafka will never take a dead letter, whatever the wait: too large for the producer
/// or the broker, not authorised, or the topic does not exist. Anything else (a broker down, a
/// timeout, a full queue) is retried for ever, because dropping it would lose the record.
pub fn refused_for_good(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | MessageBatchTooLarge
                | InvalidRecord
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | UnknownTopic
                | UnknownTopicOrPartition
                | InvalidTopic
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};

    #[test]
    fn dead_letters_kafka_never_takes_are_told_from_passing_trouble() {
        let produce = |code| KafkaError::MessageProduction(code);
        for permanent in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
        ] {
            assert!(refused_for_good(&produce(permanent)), "{permanent:?}");
        }
        for passing in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert!(!refused_for_good(&produce(passing)), "{passing:?}");
        }
    }
}
