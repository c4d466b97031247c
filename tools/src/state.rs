//! Reads the pipeline's state, the one place that does: the counts through counter's public
//! [`Keyspace`], the archive, the topics' watermarks and the KafkaSources' committed offsets
//! (their lag), and resets a run. Names come from the manifests through [`Stack`], as the
//! runner uses them. Also the figures every tool computes the same way: percentiles, CPU time
//! of a process from /proc, and a trace from Jaeger.

use anyhow::{Context, bail};
use counter::{Counted, Keyspace};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
};
use runner::Stack;
use serde::Serialize;
use std::time::Duration;

/// Kafka metadata and offset requests give up after this long.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

/// Where one run's state lives, from the manifests.
pub struct State {
    pub stack: Stack,
    pub keys: Keyspace,
    /// The topic of tweets, its dead-letter topic and the KafkaSources' consumer groups.
    pub topic: String,
    pub dead_letters: String,
    pub groups: Vec<String>,
    database: String,
    collection: String,
}

/// Everything a tool reports about a run, also `tools counts`' output.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub counted: Counted,
    pub archived: u64,
    /// Records in the topic of tweets and in the dead-letter topic.
    pub in_kafka: i64,
    pub dead_lettered: i64,
    /// Records not yet committed by every KafkaSource (summed over sources and partitions).
    pub lag: i64,
}

impl State {
    pub fn new(stack: &Stack) -> anyhow::Result<State> {
        let sources = stack.kafka_sources()?;
        let first = &sources[0];
        let dead_letters =
            first.delivery.dead_letter_topic.clone().context("the KafkaSources have no dead-letter sink")?;
        if first.topics.len() != 1
            || sources.iter().any(|s| {
                s.topics != first.topics || s.delivery.dead_letter_topic.as_ref() != Some(&dead_letters)
            })
        {
            bail!("the tools expect every KafkaSource to read one topic and share one dead-letter sink");
        }
        Ok(State {
            keys: Keyspace::new(&stack.env_of("counter", "REDIS_KEY_PREFIX")?),
            database: stack.env_of("archiver", "MONGODB_DATABASE")?,
            collection: stack.env_of("archiver", "MONGODB_COLLECTION")?,
            topic: first.topics[0].clone(),
            dead_letters,
            groups: sources.iter().map(|s| s.consumer_group.clone()).collect(),
            stack: stack.clone(),
        })
    }

    pub async fn redis(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        let client = redis::Client::open(self.stack.redis_url.as_str()).context("REDIS_URL")?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        redis::aio::ConnectionManager::new_with_config(client, config).await.with_context(|| {
            format!("connecting to Redis at {} — is it running? (`dev/stack up`)", self.stack.redis_url)
        })
    }

    pub async fn archive(&self) -> anyhow::Result<mongodb::Collection<mongodb::bson::Document>> {
        let mut options = mongodb::options::ClientOptions::parse(&self.stack.mongodb_uri).await?;
        options.server_selection_timeout = Some(Duration::from_secs(5));
        Ok(mongodb::Client::with_options(options)?.database(&self.database).collection(&self.collection))
    }

    pub async fn counted(&self) -> anyhow::Result<Counted> {
        Ok(self.keys.read(&mut self.redis().await?).await?)
    }

    pub async fn archived(&self) -> anyhow::Result<u64> {
        self.archive()
            .await?
            .count_documents(Default::default())
            .await
            .context("counting the archive — is the MongoDB-wire server running?")
    }

    fn consumer(&self, group: Option<&str>) -> anyhow::Result<BaseConsumer> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.stack.kafka_brokers);
        if let Some(group) = group {
            config.set("group.id", group);
        }
        config.create().context("creating a Kafka client")
    }

    /// `(partition, low, high)` watermarks of a topic.
    pub fn watermarks(&self, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let consumer = self.consumer(None)?;
        let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT).with_context(|| {
            format!("reading topic {topic} — is Kafka running at {}?", self.stack.kafka_brokers)
        })?;
        let mut marks = Vec::new();
        for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), KAFKA_TIMEOUT)?;
            marks.push((p.id(), low, high));
        }
        Ok(marks)
    }

    /// Records in a topic (sum of high − low watermarks).
    pub fn records(&self, topic: &str) -> anyhow::Result<i64> {
        Ok(self.watermarks(topic)?.iter().map(|(_, low, high)| high - low).sum())
    }

    /// Records of the topic that a KafkaSource has not committed yet, over every source: zero
    /// once every record was delivered or dead-lettered and its offset committed. A committed
    /// offset past the log end is an error — it means records would be skipped.
    pub fn lag(&self) -> anyhow::Result<i64> {
        let marks = self.watermarks(&self.topic)?;
        let mut lag = 0;
        for group in &self.groups {
            let consumer = self.consumer(Some(group))?;
            let mut partitions = TopicPartitionList::new();
            for (p, _, _) in &marks {
                partitions.add_partition(&self.topic, *p);
            }
            let committed = consumer.committed_offsets(partitions, KAFKA_TIMEOUT)?;
            for (p, low, high) in &marks {
                let next = match committed.find_partition(&self.topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => *low,
                };
                if next > *high {
                    bail!("group {group} committed offset {next} of {}/{p}, past its end {high}", self.topic);
                }
                lag += high - next;
            }
        }
        Ok(lag)
    }

    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            counted: self.counted().await?,
            archived: self.archived().await?,
            in_kafka: self.records(&self.topic)?,
            dead_lettered: self.records(&self.dead_letters)?,
            lag: self.lag()?,
        })
    }

    /// Until every source has committed every record (lag 0), or `timeout`; the error gives the
    /// lag left.
    pub async fn wait_delivered(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let lag = self.lag()?;
            if lag == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{lag} records of {} still undelivered after {} s", self.topic, timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deletes and re-creates the topics, and clears the run's Redis keys and MongoDB database.
    /// Offsets restart at 0 with a new topic, so the dedup bitmaps must go with it.
    pub async fn reset(&self) -> anyhow::Result<()> {
        let topics = [self.topic.clone(), self.dead_letters.clone()];
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.stack.kafka_brokers).create()?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        admin.delete_topics(&names, &options).await.context("deleting topics — is Kafka running?")?;
        // Deletion is asynchronous: wait until the broker no longer lists the topics.
        let consumer = self.consumer(None)?;
        for _ in 0..100 {
            let metadata = consumer.fetch_metadata(None, KAFKA_TIMEOUT)?;
            if !metadata.topics().iter().any(|t| topics.iter().any(|n| n == t.name())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        runner::create_topics(&self.stack.kafka_brokers, &topics).await?;
        self.keys.clear(&mut self.redis().await?).await?;
        let archive = self.archive().await?;
        mongodb::Client::with_uri_str(&self.stack.mongodb_uri)
            .await?
            .database(&self.database)
            .drop()
            .await
            .with_context(|| format!("dropping {} — is the MongoDB-wire server running?", archive.namespace()))?;
        Ok(())
    }
}

/// `(partition, low, high)` watermarks of `topic` on the Kafka at `brokers`.
pub fn watermarks(brokers: &str, topic: &str) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).create().context("creating a Kafka client")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .with_context(|| format!("reading topic {topic} — is Kafka running at {brokers}?"))?;
    let mut marks = Vec::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), KAFKA_TIMEOUT)?;
        marks.push((p.id(), low, high));
    }
    Ok(marks)
}

/// The accepted tweets against what the pipeline holds, every difference reported in its own
/// direction (nothing clamped): a deficit is a tweet lost, a surplus one counted or archived
/// twice (or a tweet Kafka took although the client was told it failed).
#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    /// Tweets answered 202.
    pub accepted: u64,
    pub in_kafka: i64,
    pub counted: i64,
    pub archived: u64,
    pub dead_lettered: i64,
    /// Accepted but not counted.
    pub lost: i64,
    /// Counted beyond the accepted tweets.
    pub double_counted: i64,
    /// Accepted but not archived.
    pub not_archived: i64,
    /// Archived beyond the accepted tweets.
    pub archived_extra: i64,
    /// The per-country, per-condition and per-pair counts each add up to the total.
    pub hashes_agree: bool,
}

impl Audit {
    pub fn new(accepted: u64, snapshot: &Snapshot) -> Audit {
        let c = &snapshot.counted;
        let sum = |h: &std::collections::BTreeMap<String, i64>| h.values().sum::<i64>();
        let (accepted_i, archived_i) = (accepted as i64, snapshot.archived as i64);
        Audit {
            accepted,
            in_kafka: snapshot.in_kafka,
            counted: c.total,
            archived: snapshot.archived,
            dead_lettered: snapshot.dead_lettered,
            lost: (accepted_i - c.total).max(0),
            double_counted: (c.total - accepted_i).max(0),
            not_archived: (accepted_i - archived_i).max(0),
            archived_extra: (archived_i - accepted_i).max(0),
            hashes_agree: [sum(&c.countries), sum(&c.climas), sum(&c.country_clima)]
                .iter()
                .all(|s| *s == c.total),
        }
    }

    /// Nothing lost, nothing counted or archived twice.
    pub fn exact(&self) -> bool {
        self.lost == 0
            && self.double_counted == 0
            && self.not_archived == 0
            && self.archived_extra == 0
            && self.hashes_agree
    }
}

/// The nearest-rank percentile (`q` in 0..=1) of `values`; 0 when empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// CPU seconds (user + system) of a process so far, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((utime + stime) / ticks)
}

/// Reading traces back from Jaeger's query API.
pub mod jaeger {
    use std::time::Duration;

    pub struct TraceSpan {
        pub id: String,
        pub parent: Option<String>,
        /// Its parent is outside the trace (the caller's span).
        pub orphan: bool,
        pub service: String,
        pub operation: String,
        pub ms: f64,
    }

    /// The spans of trace `id` once at least `expected` arrived (or what arrived in 5 s).
    pub async fn trace(jaeger: &str, id: &str, expected: usize) -> Vec<TraceSpan> {
        let url = format!("{jaeger}/api/traces/{id}");
        let mut spans = Vec::new();
        for _ in 0..25 {
            if let Ok(body) = reqwest::get(&url).await.and_then(|r| r.error_for_status())
                && let Ok(json) = body.json::<serde_json::Value>().await
            {
                spans = spans_of(&json);
                if spans.len() >= expected {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        spans
    }

    /// Prints spans as a tree, children under their parent.
    pub fn print(spans: &[TraceSpan]) {
        fn walk(spans: &[TraceSpan], parent: Option<&str>, depth: usize) {
            for span in spans.iter().filter(|s| s.parent.as_deref() == parent || (depth == 0 && s.orphan)) {
                let (indent, width) = (depth * 2, 44usize.saturating_sub(depth * 2));
                println!(
                    "  {:indent$}{:<9} {:<width$} {:>8.2} ms",
                    "", span.service, span.operation, span.ms
                );
                walk(spans, Some(&span.id), depth + 1);
            }
        }
        walk(spans, None, 0);
    }

    /// The spans of a Jaeger `/api/traces/{id}` answer, in start order.
    pub fn spans_of(json: &serde_json::Value) -> Vec<TraceSpan> {
        let Some(trace) = json["data"].get(0) else { return Vec::new() };
        let mut spans: Vec<(i64, TraceSpan)> = trace["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let parent = s["references"].get(0).and_then(|r| r["spanID"].as_str()).map(str::to_owned);
                let service =
                    s["processID"].as_str().and_then(|p| trace["processes"][p]["serviceName"].as_str());
                (
                    s["startTime"].as_i64().unwrap_or(0),
                    TraceSpan {
                        id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                        parent,
                        orphan: false,
                        service: service.unwrap_or("?").to_owned(),
                        operation: s["operationName"].as_str().unwrap_or_default().to_owned(),
                        ms: s["duration"].as_f64().unwrap_or(0.0) / 1000.0,
                    },
                )
            })
            .collect();
        spans.sort_by_key(|(start, _)| *start);
        let ids: Vec<String> = spans.iter().map(|(_, s)| s.id.clone()).collect();
        spans
            .into_iter()
            .map(|(_, mut s)| {
                s.orphan = s.parent.as_ref().is_some_and(|p| !ids.contains(p));
                s
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }

    #[test]
    fn reads_our_own_cpu_time() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        let busy = Instant::now();
        let mut x = 0u64;
        while busy.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(cpu_seconds(me).unwrap() > before, "100 ms of work shows in /proc");
    }

    #[test]
    fn reads_a_jaeger_trace() {
        let json = serde_json::json!({"data": [{
            "processes": {"p1": {"serviceName": "ingest"}, "p2": {"serviceName": "producer"}},
            "spans": [
                {"spanID": "b", "startTime": 2, "duration": 500, "operationName": "send", "processID": "p2",
                 "references": [{"refType": "CHILD_OF", "spanID": "a"}]},
                {"spanID": "a", "startTime": 1, "duration": 1500, "operationName": "POST /input", "processID": "p1",
                 "references": [{"refType": "CHILD_OF", "spanID": "caller"}]}
            ]
        }]});
        let spans = jaeger::spans_of(&json);
        let read: Vec<_> =
            spans.iter().map(|s| (s.id.as_str(), s.service.as_str(), s.orphan, s.ms)).collect();
        assert_eq!(read, [("a", "ingest", true, 1.5), ("b", "producer", false, 0.5)]);
        assert!(jaeger::spans_of(&serde_json::json!({"data": []})).is_empty());
    }
}
