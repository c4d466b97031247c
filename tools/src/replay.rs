//! Dead letters back to their sink: every record of the dead-letter topic is delivered again to
//! the sink its `knativeerrordest` names, if that is one of the sinks the command was given
//! (`--sink NAME=URL`, the manifests' KafkaSources' sinks), as the CloudEvent it was — with its original id and
//! its original `knativekafkapartition`/`knativekafkaoffset`, so counter deduplicates it by the
//! record of `messages` it stands for and archiver by its id: a tweet counted before its letter
//! was written, or replayed twice, changes nothing. Knative's `knativeerror*` extensions are
//! dropped on the way. What was replayed, and each sink's answer, goes to
//! `<out>/replayed.jsonl`.
//!
//! Whoever can write to the dead-letter topic chooses what a letter names, so the letter only
//! picks among the given sinks: one naming any other URL is not posted (`forbidden`), lest the
//! replay carry a forged request to an address of the attacker's choosing from inside the
//! cluster. The command exits 1 when any letter was not applied (forbidden, refused, failed or
//! unreadable).
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
}

impl Replayed {
    /// Every letter was applied, now or before.
    pub fn ok(&self) -> bool {
        self.refused + self.failed + self.unreadable + self.forbidden == 0
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

#[derive(Serialize)]
struct Line<'a> {
    partition: i32,
    offset: i64,
    id: &'a str,
    dest: &'a str,
    /// The name of the sink `dest` is, if it is one.
    sink: Option<&'a str>,
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
    let sinks = Sinks::parse(&args.sinks)?;
    if let Some(to) = rewrites.values().find(|to| sinks.get(to).is_none()) {
        bail!("--rewrite sends letters to {to:?}, which is no --sink");
    }
    let marks = crate::state::kafka::watermarks(brokers, topic)?;
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
        let sink = sinks.get(&dest);
        let (status, outcome) = match sink {
            Some((url, _)) => deliver(&client, url, event, args.attempts).await,
            None => {
                tracing::warn!(%dest, %id, partition, offset, "A dead letter names no sink; not posted");
                (None, "forbidden")
            }
        };
        match outcome {
            "applied" => replayed.applied += 1,
            "duplicate" => replayed.duplicates += 1,
            "refused" => replayed.refused += 1,
            "forbidden" => replayed.forbidden += 1,
            _ => replayed.failed += 1,
        }
        let sink = sink.map(|(_, name)| name);
        let line = Line { partition, offset, id: &id, dest: &dest, sink, status, outcome };
        writeln!(log, "{}", serde_json::to_string(&line)?)?;
    }
    Ok(replayed)
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
