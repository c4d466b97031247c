//! What Kafka holds for a run: a topic's watermarks, its records (read back as the sinks read
//! them, for the audit) and how far each consumer group committed.

use anyhow::{Context, bail};
use cloudevents::binding::rdkafka::MessageExt;
use common::event::Received;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::OwnedMessage,
};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// Kafka metadata and offset requests give up after this long.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the Kafka at `brokers`, in consumer group `group` when one is given.
pub fn consumer(brokers: &str, group: Option<&str>) -> anyhow::Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set("enable.auto.commit", "false");
    if let Some(group) = group {
        config.set("group.id", group);
    }
    config.create().context("creating a Kafka client")
}

/// `(partition, low, high)` watermarks of every partition of `topic`.
pub fn watermarks(brokers: &str, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let consumer = consumer(brokers, None)?;
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("reading topic {topic} — is Kafka running at {brokers}?"))?;
    let mut marks = Vec::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), TIMEOUT)?;
        marks.push((p.id(), low, high));
    }
    Ok(marks)
}

/// Deletes `topic` (a fault: the runner's writes to it then fail as "unknown topic").
pub async fn delete_topic(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating a Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT)).request_timeout(Some(TIMEOUT));
    for result in
        admin.delete_topics(&[topic], &options).await.with_context(|| format!("deleting {topic}"))?
    {
        result.map_err(|(topic, code)| anyhow::anyhow!("deleting topic {topic}: {code}"))?;
    }
    Ok(())
}

/// Records in `topic` (sum of high − low watermarks).
pub fn records(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    Ok(watermarks(brokers, topic)?.iter().map(|(_, low, high)| high - low).sum())
}

/// Records of `topic` that the consumer `groups` have not committed yet, summed: zero once every
/// record was delivered or dead-lettered and its offset committed. A committed offset past the
/// log end is an error — it means records would be skipped.
pub fn lag(brokers: &str, topic: &str, groups: &[String]) -> anyhow::Result<i64> {
    let marks = watermarks(brokers, topic)?;
    let mut lag = 0;
    for group in groups {
        let consumer = consumer(brokers, Some(group))?;
        let mut partitions = TopicPartitionList::new();
        for (p, _, _) in &marks {
            partitions.add_partition(topic, *p);
        }
        let committed = consumer.committed_offsets(partitions, TIMEOUT)?;
        for (p, low, high) in &marks {
            let next = match committed.find_partition(topic, *p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => *low,
            };
            if next > *high {
                bail!("group {group} committed offset {next} of {topic}/{p}, past its end {high}");
            }
            lag += high - next;
        }
    }
    Ok(lag)
}

/// Whether every consumer group of `groups` is stable with a member: its partitions are
/// assigned, so its records are being consumed.
pub fn stable(brokers: &str, groups: &[String]) -> anyhow::Result<bool> {
    let consumer = consumer(brokers, None)?;
    for group in groups {
        let list = match consumer.fetch_group_list(Some(group), TIMEOUT) {
            Ok(list) => list,
            // A coordinator still loading its groups (Kafka just started): not stable yet.
            Err(KafkaError::GroupListFetch(RDKafkaErrorCode::CoordinatorLoadInProgress)) => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("describing group {group}")),
        };
        if !list.groups().iter().any(|g| g.state() == "Stable" && !g.members().is_empty()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// One record of the topic of tweets, read as a sink reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A tweet event: its id and its country as counted (the canonical name).
    Tweet { id: String, country: String },
    /// Anything else (a poison record): the sinks dead-letter it.
    NotATweet,
}

/// Every record of `topic`, from each partition's low watermark to its high watermark as they
/// were when called, within `timeout`, read as a sink reads it.
pub async fn read(brokers: &str, topic: &str, timeout: Duration) -> anyhow::Result<Vec<Record>> {
    Ok(messages(brokers, topic, timeout).await?.iter().map(record).collect())
}

/// Every record of `topic` as [`read`] reads them, as they are.
pub async fn messages(brokers: &str, topic: &str, timeout: Duration) -> anyhow::Result<Vec<OwnedMessage>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    // librdkafka's poll blocks: off the async workers.
    tokio::task::spawn_blocking(move || read_blocking(&brokers, &topic, timeout)).await?
}

fn read_blocking(brokers: &str, topic: &str, timeout: Duration) -> anyhow::Result<Vec<OwnedMessage>> {
    let marks = watermarks(brokers, topic)?;
    // librdkafka wants a group even for assigned partitions; it is never committed to.
    let group = format!("weather-audit-{}", uuid::Uuid::new_v4().simple());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        // Offsets may skip (an aborted batch's): the end of a partition is told, not inferred.
        .set("enable.partition.eof", "true")
        .create()
        .context("creating a Kafka consumer")?;
    let mut assignment = TopicPartitionList::new();
    let mut left: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, low, high) in &marks {
        if high > low {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(*low))?;
            left.insert(*partition, *high);
        }
    }
    let mut records = Vec::new();
    if left.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + timeout;
    while !left.is_empty() {
        if Instant::now() > deadline {
            bail!(
                "reading {topic} took longer than {} s; read {} records, {} partitions not to their end",
                timeout.as_secs(),
                records.len(),
                left.len()
            );
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                left.remove(&partition);
                continue;
            }
            Some(message) => message.with_context(|| format!("reading {topic}"))?,
        };
        let (partition, offset) = (message.partition(), message.offset());
        if left.get(&partition).is_some_and(|end| offset < *end) {
            records.push(message.detach());
        }
        if left.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            left.remove(&partition);
        }
    }
    Ok(records)
}

fn record(message: &OwnedMessage) -> Record {
    let Ok(event) = message.to_event() else { return Record::NotATweet };
    match Received::from_event(&event) {
        Ok(received) => Record::Tweet { id: received.id, country: received.tweet.pais.to_owned() },
        Err(_) => Record::NotATweet,
    }
}
