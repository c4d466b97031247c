//! One KafkaSource, played locally: consume its topics with its consumer group, hand each record
//! to `dispatch` (delivery to the sink, [`retry`], `dead_letter`) — in order per partition,
//! or up to [`UNORDERED_IN_FLIGHT`] at once for `ordering: unordered` — and store a partition's
//! offset only once every record before it has an [`Outcome`] other than stopped (librdkafka
//! then commits stored offsets every second).
//!
//! A partition whose deliveries fall behind by more than the read-ahead ([`Settings`]) is
//! paused, not waited for: the consumer goes on polling, so a sink down for longer than
//! `max.poll.interval.ms` (a delivery may wait out an 11-minute retry budget) does not make
//! librdkafka leave the group — which would hand the partitions to a rebalance and redeliver
//! everything in flight — and the other partitions flow on.

mod dead_letter;
mod dispatch;
pub mod retry;

pub use dead_letter::{DATA_DROPPED_EXTENSION, Refusal, letter, refusal};

use crate::activator::Entrance;
use crate::manifests::{KafkaSource, Ordering};
use anyhow::Context;
use common::metrics::SourceLabels;
use futures::{StreamExt, stream::FuturesOrdered};
use hyper::{
    Uri,
    header::{self, HeaderMap, HeaderName, HeaderValue},
};
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer},
    message::OwnedMessage,
    producer::FutureProducer,
};
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::{
    sync::{mpsc, mpsc::error::TrySendError, watch},
    task::JoinHandle,
};

/// Events in flight per partition for `ordering: unordered` (Knative's `max.poll.records`).
pub const UNORDERED_IN_FLIGHT: usize = 50;
const PREFER: HeaderName = HeaderName::from_static("prefer");
const PREFER_REPLY: HeaderValue = HeaderValue::from_static("reply");
const KN_NAMESPACE: HeaderName = HeaderName::from_static("kn-namespace");

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The sink took it (each of the `--deliveries` times).
    Delivered,
    /// A delivery failed for good and the dead letter is written.
    DeadLettered,
    /// A delivery failed for good and no dead letter could be written: there is no dead-letter
    /// sink, Kafka refuses even the letter without its data, or it cannot be encoded. Logged;
    /// the partition flows on, as on Knative.
    Dropped,
    /// Shutdown came first: the record is read again after a restart.
    Stopped,
}

/// How a source reads, beyond its manifest.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Deliver every event this many times (`--deliveries`).
    pub deliveries: u32,
    /// Records read ahead of a partition's deliveries; one more pauses the partition.
    pub read_ahead: usize,
    /// librdkafka's `max.poll.interval.ms` (its default, 300 s, when none).
    pub max_poll_interval: Option<Duration>,
}

/// The consumer's own context: counts the partitions it loses to rebalances.
pub struct SourceContext {
    rebalances: prometheus_client::metrics::counter::Counter,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance
            && partitions.count() > 0
        {
            tracing::warn!(partitions = partitions.count(), "Partitions revoked (a rebalance)");
            self.rebalances.inc();
        }
    }
}

type Kafka = StreamConsumer<SourceContext>;
type Partition = (String, i32);

/// A running source.
pub struct Source {
    pub name: String,
    consumer: Arc<Kafka>,
    topics: Vec<String>,
    progress: Arc<Progress>,
    task: JoinHandle<()>,
}

/// What the source has done, for draining and the summary.
#[derive(Default)]
pub struct Progress {
    /// Next offset to deliver, per (topic, partition): everything before it is done.
    next: Mutex<HashMap<Partition, i64>>,
    pub dead_lettered: AtomicU64,
    /// Records skipped because Kafka refused even their letter without data.
    pub refused: AtomicU64,
    /// Deliveries being sent to the sink now (also `weather_runner_deliveries_in_flight`).
    pub in_flight: AtomicU64,
}

/// One delivery counted in flight, in the source's [`Progress`] and its gauge, until dropped.
struct Sending<'a> {
    progress: &'a Progress,
    gauge: Gauge,
}

impl<'a> Sending<'a> {
    fn new(progress: &'a Progress, gauge: &Gauge) -> Sending<'a> {
        progress.in_flight.fetch_add(1, Relaxed);
        gauge.inc();
        Sending { progress, gauge: gauge.clone() }
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.progress.in_flight.fetch_sub(1, Relaxed);
        self.gauge.dec();
    }
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
    consumer: Arc<Kafka>,
    progress: Arc<Progress>,
    /// `weather_runner_deliveries_in_flight` and `weather_runner_partitions_paused` of this source.
    in_flight: Gauge,
    paused: Gauge,
    waiting: dead_letter::Waiting,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
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
        settings: Settings,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Source> {
        let metrics = common::metrics::get();
        let labels = SourceLabels { source: source.name.clone() };
        let mut config = consumer_config(brokers, &source.consumer_group, &source.initial_offset);
        if let Some(interval) = settings.max_poll_interval {
            config.set("max.poll.interval.ms", interval.as_millis().to_string());
        }
        let context = SourceContext { rebalances: metrics.rebalances.get_or_create(&labels).clone() };
        let consumer: Arc<Kafka> =
            Arc::new(config.create_with_context(context).context("creating the Kafka consumer")?);
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
            in_flight: metrics.deliveries_in_flight.get_or_create(&labels).clone(),
            paused: metrics.partitions_paused.get_or_create(&labels).clone(),
            waiting: dead_letter::Waiting::default(),
            settings,
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
    /// Reads records and hands each to its partition's worker, which keeps the partition's
    /// order. A worker whose read-ahead is full gets no more: its partition is paused, and the
    /// record that did not fit is held here (with any that librdkafka had already fetched) until
    /// half the read-ahead is free; then the partition resumes from the record after the last
    /// one read (librdkafka keeps an application's pause across a rebalance; a partition
    /// assigned again starts from its committed offset, and the sinks' dedup takes what comes
    /// twice).
    async fn poll(self: Arc<Self>) {
        let mut workers: HashMap<Partition, (mpsc::Sender<OwnedMessage>, JoinHandle<()>)> = HashMap::new();
        let mut held: HashMap<Partition, VecDeque<OwnedMessage>> = HashMap::new();
        let mut shutdown = self.shutdown.clone();
        let mut hand_over = tokio::time::interval(Duration::from_millis(50));
        // Not polled while nothing is held: the ticks missed meanwhile are not made up at once.
        hand_over.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                m = self.consumer.recv() => m,
                _ = hand_over.tick(), if !held.is_empty() => {
                    held.retain(|partition, records| {
                        let (tx, _) = &workers[partition];
                        !self.hand_over(partition, tx, records)
                    });
                    continue;
                }
            };
            let message = match message {
                Ok(m) => m.detach(),
                Err(e) => {
                    tracing::warn!(source = %self.source.name, error = %e, "Kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let partition = (message.topic().to_owned(), message.partition());
            let (tx, _) = workers.entry(partition.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(self.settings.read_ahead);
                (tx, tokio::spawn(self.clone().work(rx)))
            });
            if let Some(records) = held.get_mut(&partition) {
                // Not expected (a pause drops what was fetched before it, and outlasts a
                // rebalance), but kept in order if it comes: behind the held ones, and paused again.
                records.push_back(message);
                self.pause(&partition, false);
                continue;
            }
            match tx.try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => {
                    self.pause(&partition, true);
                    held.insert(partition, VecDeque::from([message]));
                }
                Err(TrySendError::Closed(_)) => break,
            }
        }
        for records in held.values() {
            tracing::info!(source = %self.source.name, records = records.len(), "Held records left unread; they are read again after a restart");
        }
        for (_, (tx, handle)) in workers {
            drop(tx);
            let _ = handle.await;
        }
    }

    /// Hands `records`, held while `partition` was paused, to its worker once half its
    /// read-ahead is free (so a slow partition is not paused and resumed for every record) and
    /// resumes the partition when all are handed over: whether it was.
    fn hand_over(
        &self,
        partition: &Partition,
        tx: &mpsc::Sender<OwnedMessage>,
        records: &mut VecDeque<OwnedMessage>,
    ) -> bool {
        if tx.capacity() < tx.max_capacity().div_ceil(2) {
            return false;
        }
        while let Some(record) = records.pop_front() {
            match tx.try_send(record) {
                Ok(()) => {}
                Err(TrySendError::Full(record)) => {
                    records.push_front(record);
                    return false;
                }
                // The worker ended (shutdown): the records are read again after a restart.
                Err(TrySendError::Closed(_)) => return true,
            }
        }
        let (topic, number) = partition;
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, *number);
        if let Err(e) = self.consumer.resume(&list) {
            tracing::warn!(source = %self.source.name, %topic, partition = number, error = %e, "Resuming the partition failed");
        }
        tracing::debug!(source = %self.source.name, %topic, partition = number, "Partition resumed");
        self.paused.dec();
        true
    }

    /// Pauses `partition` (counted in `weather_runner_partitions_paused` when `first`).
    fn pause(&self, (topic, number): &Partition, first: bool) {
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, *number);
        if let Err(e) = self.consumer.pause(&list) {
            tracing::warn!(source = %self.source.name, %topic, partition = number, error = %e, "Pausing the partition failed");
        }
        if first {
            tracing::debug!(source = %self.source.name, %topic, partition = number, "Deliveries behind: partition paused");
            self.paused.inc();
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
                Some(((topic, partition, offset), outcome)) = in_flight.next(), if !in_flight.is_empty() => match outcome {
                    Outcome::Stopped => return,
                    Outcome::Delivered | Outcome::DeadLettered | Outcome::Dropped => self.done(topic, partition, offset),
                },
                record = records.recv(), if open && in_flight.len() < window => match record {
                    Some(r) => {
                        let position = (r.topic().to_owned(), r.partition(), r.offset());
                        let dispatcher = self.clone();
                        in_flight.push_back(async move { (position, dispatcher.dispatch(r).await) });
                    }
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

    /// Sleeps; false if shutdown came first.
    pub(super) async fn wait(&self, duration: Duration) -> bool {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(duration) => true,
            _ = shutdown.wait_for(|stop| *stop) => false,
        }
    }
}
