//! Dead letters back to their sink: every record of the dead-letter topic is delivered again to
//! the sink its `knativeerrordest` names, if that is one of the sinks the command was given
//! (`--sink NAME=URL`, the manifests' KafkaSources' sinks), as the CloudEvent it was — with its original id and
//! its original `knativekafkapartition`/`knativekafkaoffset`, so counter deduplicates it by the
//! record of `messages` it stands for and archiver by its id: a tweet counted before its letter
//! was written, or replayed twice, changes nothing. Knative's `knativeerror*` extensions are
//! dropped on the way. What was replayed, and each sink's answer, is appended to
//! `<out>/replayed.jsonl`.
//!
//! Whoever can write to the dead-letter topic chooses what a letter names, so the letter only
//! picks among the given sinks: one naming any other URL is not posted (`forbidden`), lest the
//! replay carry a forged request to an address of the attacker's choosing from inside the
//! cluster. The command exits 1 when any letter was not applied (forbidden, refused, failed or
//! unreadable).
//!
//! The replay commits its progress in a consumer group of its own (`weather-replay-<topic>`, or
//! `--group`), so a run stopped or failed part-way resumes where it left off, and a backlog of
//! a long outage (an 11-minute outage at 1,000 tweets/s leaves ~660,000 letters per sink) is
//! replayed once. In each partition the committed offset never passes a letter that was not
//! applied (its sink unreachable, refused, unreadable, naming no given sink): once the cause is
//! mended (the sink back, a `--rewrite`), the next run starts there, and the letters after it
//! that were applied are only duplicates to the sinks' dedup. `--from-start` reads the whole
//! topic again, which that dedup makes harmless too. Up to `--concurrency` letters are posted at
//! once; progress goes to stderr.
//!
//! On Kubernetes a KafkaSource on the dead-letter topic would not do: its dispatcher overwrites
//! the position extensions with the letter's own place in the dead-letter topic, and counter
//! would take the letter for a new record. The Job in `knative/replay/` runs this command.

use anyhow::{Context, bail};
use cloudevents::{
    AttributesReader, binding::rdkafka::MessageExt, binding::reqwest::RequestBuilderExt,
    event::ExtensionValue,
};
use futures::{StreamExt, stream};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, CommitMode, Consumer},
    message::OwnedMessage,
};
use reqwest::Url;

use serde::Serialize;
use std::{collections::BTreeMap, io::Write, path::PathBuf, time::Duration};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Where `replayed.jsonl` goes.
    #[arg(long, default_value = "target/replay")]
    pub out: PathBuf,
    /// A sink the letters may go to: NAME, the sink of one of the manifests' KafkaSources, and
    /// URL, its address as its letters name it in `knativeerrordest` (on Kubernetes
    /// `http://<service>.<namespace>.svc.cluster.local`); once per sink. A letter naming any
    /// other URL is not posted.
    #[arg(long = "sink", value_name = "NAME=URL", required = true)]
    pub sinks: Vec<String>,
    /// Sends letters addressed to URL `FROM` to `TO` instead (`FROM=TO`), e.g. when the sink
    /// now listens elsewhere; TO must be a `--sink`. May be given several times.
    #[arg(long, value_name = "FROM=TO")]
    pub rewrite: Vec<String>,
    /// Attempts per letter while its sink answers 5xx or cannot be reached.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// The dead-letter topic; by default the KafkaSink of the manifests' KafkaSources (with the
    /// run id's suffix).
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// Letters posted at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Reads the topic from its beginning, not from the progress committed by earlier runs.
    #[arg(long)]
    pub from_start: bool,
    /// The consumer group the progress is committed in (default `weather-replay-<topic>`).
    #[arg(long)]
    pub group: Option<String>,
    /// Stops once this many letters are replayed (and their progress committed); the next run
    /// goes on from there.
    #[arg(long)]
    pub limit: Option<u64>,
}

impl ReplayArgs {
    /// The arguments a test gives: every letter from the topic's start, to `sinks`.
    pub fn new(out: PathBuf, sinks: Vec<String>) -> ReplayArgs {
        ReplayArgs {
            out,
            sinks,
            rewrite: vec![],
            attempts: 5,
            dead_letter_topic: None,
            concurrency: 32,
            from_start: true,
            group: None,
            limit: None,
        }
    }
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
    /// Letters naming a URL that is none of the sinks: not posted.
    pub forbidden: u64,
    /// How long the run took.
    pub seconds: f64,
}

impl Replayed {
    /// Every letter was applied, now or before.
    pub fn ok(&self) -> bool {
        self.refused + self.failed + self.unreadable + self.forbidden == 0
    }

    fn add(&mut self, outcome: &str) {
        match outcome {
            "applied" => self.applied += 1,
            "duplicate" => self.duplicates += 1,
            "refused" => self.refused += 1,
            "forbidden" => self.forbidden += 1,
            "unreadable" => self.unreadable += 1,
            _ => self.failed += 1,
        }
    }

    fn progress(&self, total: u64) -> String {
        format!(
            "replay: {} of {total} letters in {:.0} s ({:.0}/s): {} applied, {} duplicates, {} failed, {} refused, {} unreadable, {} forbidden",
            self.letters,
            self.seconds,
            self.letters as f64 / self.seconds.max(1e-3),
            self.applied,
            self.duplicates,
            self.failed,
            self.refused,
            self.unreadable,
            self.forbidden
        )
    }
}

/// The sinks a letter may name, by URL (parsed, so `http://counter.weather.svc.cluster.local`
/// and `http://counter.weather.svc.cluster.local:80/` are one), with their names.
struct Sinks(BTreeMap<Url, String>);

impl Sinks {
    fn parse(sinks: &[String]) -> anyhow::Result<Sinks> {
        let mut by_url = BTreeMap::new();
        for sink in sinks {
            let (name, url) =
                sink.split_once('=').with_context(|| format!("--sink {sink:?} is not NAME=URL"))?;
            let url = Url::parse(url).with_context(|| format!("--sink {sink:?}: {url:?} is not a URL"))?;
            if !["http", "https"].contains(&url.scheme()) || !url.has_host() {
                bail!("--sink {sink:?}: a sink is an http(s) URL with a host");
            }
            by_url.insert(url, name.to_owned());
        }
        if by_url.is_empty() {
            bail!("no sink given: --sink NAME=URL for each sink of the KafkaSources");
        }
        Ok(Sinks(by_url))
    }

    /// The sink named `dest`, if it is one.
    fn get(&self, dest: &str) -> Option<(&Url, &str)> {
        let dest = Url::parse(dest).ok()?;
        self.0.get_key_value(&dest).map(|(url, name)| (url, name.as_str()))
    }
}

/// What became of one letter (a line of `replayed.jsonl`).
#[derive(Serialize)]
struct Line {
    partition: i32,
    offset: i64,
    id: Option<String>,
    dest: Option<String>,
    /// The name of the sink `dest` is, if it is one.
    sink: Option<String>,
    status: Option<u16>,
    outcome: &'static str,
}

/// Per partition with letters to read: the offset it is read from and its end.
type Left = BTreeMap<i32, (i64, i64)>;

/// Letters read before the ones read are posted and the progress committed.
const CHUNK: usize = 2_000;
/// A partition that gives nothing for this long before its end fails the run.
const IDLE: Duration = Duration::from_secs(30);

/// Replays the letters of `topic` on the Kafka at `brokers` not yet replayed (every one with
/// `--from-start`).
pub async fn run(brokers: &str, topic: &str, args: &ReplayArgs) -> anyhow::Result<Replayed> {
    let rewrites: BTreeMap<&str, &str> = args
        .rewrite
        .iter()
        .map(|r| r.split_once('=').with_context(|| format!("--rewrite {r:?} is not FROM=TO")))
        .collect::<anyhow::Result<_>>()?;
    let sinks = Sinks::parse(&args.sinks)?;
    if let Some(to) = rewrites.values().find(|to| sinks.get(to).is_none()) {
        bail!("--rewrite sends letters to {to:?}, which is no --sink");
    }
    let started = std::time::Instant::now();
    let group = args.group.clone().unwrap_or_else(|| format!("weather-replay-{topic}"));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        // A start below the log's beginning (retention took letters): from the oldest kept.
        .set("auto.offset.reset", "earliest")
        .create()
        .context("creating the Kafka consumer")?;
    let (assignment, mut left) = start_positions(&consumer, brokers, topic, args.from_start)?;
    let total: u64 = left.values().map(|(start, high)| (high - start) as u64).sum();
    std::fs::create_dir_all(&args.out)?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(args.out.join("replayed.jsonl"))?;
    let mut log = std::io::BufWriter::new(log);
    let mut replayed = Replayed::default();
    if left.is_empty() {
        return Ok(replayed);
    }
    consumer.assign(&assignment)?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?;
    // Per partition: the offset to commit, and whether a letter not applied stopped it.
    let mut committed: BTreeMap<i32, (i64, bool)> =
        left.iter().map(|(partition, (start, _))| (*partition, (*start, false))).collect();
    let mut shown = std::time::Instant::now();
    while !left.is_empty() && args.limit.is_none_or(|limit| replayed.letters < limit) {
        let most = args.limit.map_or(CHUNK, |limit| CHUNK.min((limit - replayed.letters) as usize));
        let chunk = read_chunk(&consumer, topic, &mut left, most)?;
        let lines: Vec<Line> = stream::iter(chunk)
            .map(|message| letter(&client, &sinks, &rewrites, message, args.attempts))
            .buffered(usize::from(args.concurrency))
            .collect()
            .await;
        let mut progress = TopicPartitionList::new();
        for line in &lines {
            replayed.letters += 1;
            replayed.add(line.outcome);
            writeln!(log, "{}", serde_json::to_string(line)?)?;
            let (next, stopped) = committed.get_mut(&line.partition).expect("an assigned partition");
            *stopped |= !matches!(line.outcome, "applied" | "duplicate");
            if !*stopped {
                *next = line.offset + 1;
            }
        }
        for (partition, (next, _)) in &committed {
            progress.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
        }
        consumer.commit(&progress, CommitMode::Sync).context("committing the replay's progress")?;
        replayed.seconds = started.elapsed().as_secs_f64();
        if shown.elapsed() > Duration::from_secs(5) {
            eprintln!("{}", replayed.progress(total));
            shown = std::time::Instant::now();
        }
    }
    eprintln!("{}", replayed.progress(total));
    log.flush()?;
    Ok(replayed)
}

/// Where each partition of `topic` is read from — the group's committed offset, or the low
/// watermark (from the start, or when the commit is not within the topic: a topic deleted and
/// created again) — and `(start, end)` of every partition with letters to read.
fn start_positions(
    consumer: &BaseConsumer,
    brokers: &str,
    topic: &str,
    from_start: bool,
) -> anyhow::Result<(TopicPartitionList, Left)> {
    let marks = crate::state::kafka::watermarks(brokers, topic)?;
    let mut partitions = TopicPartitionList::new();
    for (partition, _, _) in &marks {
        partitions.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(partitions, Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    let mut left = BTreeMap::new();
    for (partition, low, high) in &marks {
        let start = match committed.find_partition(topic, *partition).map(|p| p.offset()) {
            Some(Offset::Offset(o)) if !from_start && (*low..=*high).contains(&o) => o,
            _ => *low,
        };
        if *high > start {
            assignment.add_partition_offset(topic, *partition, Offset::Offset(start))?;
            left.insert(*partition, (start, *high));
        }
    }
    Ok((assignment, left))
}

/// Up to `most` letters, in offset order per partition; partitions read to their end leave
/// `left`.
fn read_chunk(
    consumer: &BaseConsumer,
    topic: &str,
    left: &mut Left,
    most: usize,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let mut chunk = Vec::new();
    let mut idle = std::time::Instant::now();
    while chunk.len() < most && !left.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            if !chunk.is_empty() {
                break;
            }
            if idle.elapsed() > IDLE {
                bail!(
                    "reading {topic}: nothing for {} s, {} partitions not read to their end",
                    IDLE.as_secs(),
                    left.len()
                );
            }
            continue;
        };
        idle = std::time::Instant::now();
        let message = message.with_context(|| format!("reading {topic}"))?.detach();
        if left.get(&message.partition()).is_some_and(|(_, high)| message.offset() + 1 >= *high) {
            left.remove(&message.partition());
        }
        chunk.push(message);
    }
    Ok(chunk)
}

/// One letter to the sink it names, if that is one of `sinks`.
async fn letter(
    client: &reqwest::Client,
    sinks: &Sinks,
    rewrites: &BTreeMap<&str, &str>,
    message: OwnedMessage,
    attempts: u32,
) -> Line {
    let (partition, offset) = (message.partition(), message.offset());
    let mut line =
        Line { partition, offset, id: None, dest: None, sink: None, status: None, outcome: "unreadable" };
    let Ok(mut event) = message.to_event() else { return line };
    let Some(ExtensionValue::String(dest)) = event.extension("knativeerrordest") else { return line };
    let dest = rewrites.get(dest.as_str()).map_or(dest.clone(), |to| to.to_string());
    for name in ["knativeerrordest", "knativeerrorcode", "knativeerrordata"] {
        event.remove_extension(name);
    }
    let id = event.id().to_owned();
    let sink = sinks.get(&dest);
    (line.status, line.outcome) = match sink {
        Some((url, _)) => deliver(client, url, event, attempts).await,
        None => {
            tracing::warn!(%dest, %id, partition, offset, "A dead letter names no sink; not posted");
            (None, "forbidden")
        }
    };
    line.sink = sink.map(|(_, name)| name.to_owned());
    (line.id, line.dest) = (Some(id), Some(dest));
    line
}

/// One letter to its sink, retried on 5xx and network errors; the last status and the outcome
/// (`applied`, `duplicate`, `refused` or `failed`).
async fn deliver(
    client: &reqwest::Client,
    dest: &Url,
    event: cloudevents::Event,
    attempts: u32,
) -> (Option<u16>, &'static str) {
    let mut status = None;
    for attempt in 0..attempts.max(1) {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        let Ok(request) = client.post(dest.clone()).event(event.clone()) else { return (None, "failed") };
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

#[cfg(test)]
mod tests {
    use super::Sinks;
    use std::path::Path;

    #[test]
    fn a_letter_names_a_sink_only_by_its_address() {
        let sinks = Sinks::parse(&["counter=http://counter.weather.svc.cluster.local".into()]).unwrap();
        for same in [
            "http://counter.weather.svc.cluster.local",
            "http://counter.weather.svc.cluster.local/",
            "HTTP://Counter.Weather.svc.cluster.local:80/",
        ] {
            assert_eq!(sinks.get(same).map(|(_, name)| name), Some("counter"), "{same}");
        }
        for other in [
            "http://counter.weather.svc.cluster.local.example.net/",
            "http://counter.weather.svc.cluster.local/admin",
            "http://counter.weather.svc.cluster.local:8080/",
            "https://counter.weather.svc.cluster.local/",
            "http://user@counter.weather.svc.cluster.local/",
            "http://counter.weather.svc.cluster.local/?to=elsewhere",
            "http://169.254.169.254/latest/meta-data/",
            "counter",
            "",
        ] {
            assert!(sinks.get(other).is_none(), "{other:?} passed for the sink");
        }
    }

    #[test]
    fn a_sink_is_a_named_http_url() {
        let cases: [&[&str]; 5] = [
            &[],
            &["http://counter.weather.svc.cluster.local"],
            &["counter=file:///etc/passwd"],
            &["counter=not a url"],
            &["counter=http://"],
        ];
        for sinks in cases {
            let sinks: Vec<String> = sinks.iter().map(|s| s.to_string()).collect();
            assert!(Sinks::parse(&sinks).is_err(), "{sinks:?} was taken");
        }
    }

    /// The Job of knative/replay/ names the sinks of the manifests' KafkaSources, each at the
    /// address Knative gives a Service in the cluster, and no other.
    #[test]
    fn the_replay_job_names_the_sinks_of_the_kafka_sources() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("knative/replay/job.yaml")).unwrap();
        let job: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let args: Vec<String> =
            serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone())
                .expect("the Job's container has args");
        let mut given: Vec<String> =
            args.windows(2).filter(|pair| pair[0] == "--sink").map(|pair| pair[1].clone()).collect();
        given.sort();
        let mut expected: Vec<String> = runner::manifests::kafka_sources(&root.join("knative/base"))
            .unwrap()
            .iter()
            .map(|s| format!("{0}=http://{0}.{1}.svc.cluster.local", s.sink, s.namespace))
            .collect();
        expected.sort();
        assert_eq!(given, expected);
        Sinks::parse(&given).unwrap();
    }
}
