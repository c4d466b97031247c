//! Dead letters back to their sink: every record of the dead-letter topic is delivered again to
//! the sink its `knativeerrordest` names, as the CloudEvent it was — with its original id and
//! its original `knativekafkapartition`/`knativekafkaoffset`, so counter deduplicates it by the
//! record of `messages` it stands for and archiver by its id: a tweet counted before its letter
//! was written, or replayed twice, changes nothing. Knative's `knativeerror*` extensions are
//! dropped on the way. What was replayed, and each sink's answer, goes to
//! `<out>/replayed.jsonl`.
//!
//! The replay reads the whole topic each time (no consumer group): it is idempotent by the
//! sinks' dedup, and a letter the sink refuses again (a poison record) stays where it is.
//!
//! On Kubernetes a KafkaSource on the dead-letter topic would not do: its dispatcher overwrites
//! the position extensions with the letter's own place in the dead-letter topic, and counter
//! would take the letter for a new record. The Job in `knative/replay/` runs this command.

use anyhow::{Context, bail};
use cloudevents::{
    AttributesReader, binding::rdkafka::MessageExt, binding::reqwest::RequestBuilderExt,
    event::ExtensionValue,
};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use serde::Serialize;
use std::{collections::BTreeMap, io::Write, path::PathBuf, time::Duration};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Where `replayed.jsonl` goes.
    #[arg(long, default_value = "target/replay")]
    pub out: PathBuf,
    /// Sends letters addressed to URL `FROM` to `TO` instead (`FROM=TO`), e.g. when the sink
    /// now listens elsewhere; may be given several times.
    #[arg(long, value_name = "FROM=TO")]
    pub rewrite: Vec<String>,
    /// Attempts per letter while its sink answers 5xx or cannot be reached.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// The dead-letter topic; by default the KafkaSink of the manifests' KafkaSources (with the
    /// run id's suffix).
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
}

/// What one replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Replayed {
    /// Letters read from the dead-letter topic.
    pub letters: u64,
    /// Applied by their sink as new.
    pub applied: u64,
    /// Answered as already applied.
    pub duplicates: u64,
    /// Refused again with a 4xx (poison records): they stay in the topic.
    pub refused: u64,
    /// Not delivered after every attempt (the sink is down): replay again later.
    pub failed: u64,
    /// Letters without a `knativeerrordest` or not a CloudEvent.
    pub unreadable: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    partition: i32,
    offset: i64,
    id: &'a str,
    dest: &'a str,
    status: Option<u16>,
    outcome: &'a str,
}

/// Replays every letter of `topic` on the Kafka at `brokers`.
pub async fn run(brokers: &str, topic: &str, args: &ReplayArgs) -> anyhow::Result<Replayed> {
    let rewrites: BTreeMap<&str, &str> = args
        .rewrite
        .iter()
        .map(|r| r.split_once('=').with_context(|| format!("--rewrite {r:?} is not FROM=TO")))
        .collect::<anyhow::Result<_>>()?;
    let marks = crate::state::watermarks(brokers, topic)?;
    // librdkafka wants a group even for assigned partitions; it is never committed to.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("weather-replay-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the Kafka consumer")?;
    let mut assignment = TopicPartitionList::new();
    let mut left: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, low, high) in &marks {
        if high > low {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(*low))?;
            left.insert(*partition, *high);
        }
    }
    std::fs::create_dir_all(&args.out)?;
    let mut log = std::fs::File::create(args.out.join("replayed.jsonl"))?;
    let mut replayed = Replayed::default();
    if left.is_empty() {
        return Ok(replayed);
    }
    consumer.assign(&assignment)?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !left.is_empty() {
        if tokio::time::Instant::now() > deadline {
            bail!("reading {topic} took longer than 300 s; {} partitions not read to their end", left.len());
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else { continue };
        let message = message.with_context(|| format!("reading {topic}"))?.detach();
        if left.get(&message.partition()).is_some_and(|high| message.offset() + 1 >= *high) {
            left.remove(&message.partition());
        }
        replayed.letters += 1;
        let (partition, offset) = (message.partition(), message.offset());
        let Ok(mut event) = message.to_event() else {
            replayed.unreadable += 1;
            continue;
        };
        let dest = match event.extension("knativeerrordest") {
            Some(ExtensionValue::String(dest)) => dest.clone(),
            _ => {
                replayed.unreadable += 1;
                continue;
            }
        };
        let dest = rewrites.get(dest.as_str()).map_or(dest.clone(), |to| to.to_string());
        for name in ["knativeerrordest", "knativeerrorcode", "knativeerrordata"] {
            event.remove_extension(name);
        }
        let id = event.id().to_owned();
        let (status, outcome) = deliver(&client, &dest, event, args.attempts).await;
        match outcome {
            "applied" => replayed.applied += 1,
            "duplicate" => replayed.duplicates += 1,
            "refused" => replayed.refused += 1,
            _ => replayed.failed += 1,
        }
        let line = Line { partition, offset, id: &id, dest: &dest, status, outcome };
        writeln!(log, "{}", serde_json::to_string(&line)?)?;
    }
    Ok(replayed)
}

/// One letter to its sink, retried on 5xx and network errors; the last status and the outcome
/// (`applied`, `duplicate`, `refused` or `failed`).
async fn deliver(
    client: &reqwest::Client,
    dest: &str,
    event: cloudevents::Event,
    attempts: u32,
) -> (Option<u16>, &'static str) {
    let mut status = None;
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        let Ok(request) = client.post(dest).event(event.clone()) else { return (None, "failed") };
        match request.send().await {
            Ok(response) => {
                let code = response.status();
                status = Some(code.as_u16());
                if code.is_success() {
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    return (status, if body["duplicate"] == true { "duplicate" } else { "applied" });
                }
                if code.is_client_error() && ![404, 408, 409, 429].contains(&code.as_u16()) {
                    return (status, "refused");
                }
            }
            Err(e) => tracing::warn!(%dest, error = %e, "Replaying a dead letter failed"),
        }
    }
    (status, "failed")
}
