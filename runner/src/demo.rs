//! The README's first command: reset the local data, run the pipeline under a Locust burst, wait
//! until every record is delivered, then check the counts and print a summary (also written to
//! `target/demo/summary.json`).

use crate::{Options, Runner, create_topics, functions, manifests};
use anyhow::{Context, bail};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
};
use redis::AsyncCommands;
use serde::Serialize;
use std::{path::PathBuf, process::Stdio, time::Duration};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// The Locust executable (`make demo` installs it into .stack/venv).
    #[arg(long, env = "LOCUST", default_value = ".stack/venv/bin/locust")]
    pub locust: PathBuf,
    /// The Locust file.
    #[arg(long, default_value = "loadtest/locustfile.py")]
    pub locustfile: PathBuf,
    /// Where the summary and Locust's CSV files go.
    #[arg(long, default_value = "target/demo")]
    pub out: PathBuf,
    /// Locust users during a burst.
    #[arg(long, default_value_t = 40)]
    pub users: u32,
    /// Requests per second per user (0 = as fast as possible).
    #[arg(long, default_value_t = 25.0)]
    pub user_rps: f64,
    /// Length of each burst, in seconds.
    #[arg(long, default_value_t = 25)]
    pub burst_seconds: u32,
    /// Idle gap between bursts, in seconds.
    #[arg(long, default_value_t = 10)]
    pub gap_seconds: u32,
    /// Number of bursts.
    #[arg(long, default_value_t = 2)]
    pub bursts: u32,
}

/// What `make demo` prints and writes.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Tweets Locust saw answered 202.
    pub accepted: u64,
    /// Requests that were not answered 202.
    pub rejected: u64,
    /// Records in the topic.
    pub kafka_records: i64,
    pub counted: i64,
    pub archived: u64,
    pub dead_lettered: i64,
    /// Accepted but not counted.
    pub lost: i64,
    /// Counted more often than there are records.
    pub double_counted: i64,
    /// Accepted but not archived.
    pub not_archived: i64,
    /// Accepted tweets per second of burst.
    pub tweets_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub top_countries: Vec<(String, i64)>,
    pub top_climas: Vec<(String, i64)>,
    /// The trace id of one archived tweet, when the functions exported traces.
    pub trace_example: Option<String>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.double_counted == 0 && self.not_archived == 0 && self.accepted > 0
    }

    pub fn print(&self) {
        let line = |k: &str, v: String| println!("  {k:<16} {v}");
        println!("\nWeather Tweets demo summary");
        line("accepted", self.accepted.to_string());
        line("rejected", self.rejected.to_string());
        line("in Kafka", self.kafka_records.to_string());
        line("counted", self.counted.to_string());
        line("archived", self.archived.to_string());
        line("dead-lettered", self.dead_lettered.to_string());
        line("lost", self.lost.to_string());
        line("double-counted", self.double_counted.to_string());
        line("not archived", self.not_archived.to_string());
        line("throughput", format!("{:.0} tweets/s during bursts", self.tweets_per_s));
        line("latency", format!("p50 {} ms, p99 {} ms (POST /input, Locust)", self.p50_ms, self.p99_ms));
        let top =
            |v: &[(String, i64)]| v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
        line("top countries", top(&self.top_countries));
        line("top conditions", top(&self.top_climas));
        if let Some(trace) = &self.trace_example {
            line("a trace", format!("{}/api/traces/{trace}", jaeger()));
        }
        println!(
            "  {}",
            if self.ok() { "OK: nothing lost, nothing counted twice" } else { "FAILED: see above" }
        );
    }
}

/// Deletes and re-creates the topics, and clears the Redis keys and the MongoDB database of
/// this run. Offsets restart at 0 with a new topic, so the dedup bitmaps must go with it.
pub async fn reset(options: &Options) -> anyhow::Result<()> {
    let (messages, dead_letters) = topics(options)?;
    let topics = [messages, dead_letters];
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &options.kafka_brokers).create()?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let admin_options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    admin.delete_topics(&names, &admin_options).await.context("deleting topics — is Kafka running?")?;
    // Deletion is asynchronous: wait until the broker no longer lists the topics.
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &options.kafka_brokers).create()?;
    for _ in 0..100 {
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
        if !metadata.topics().iter().any(|t| topics.iter().any(|n| n == t.name())) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create_topics(&options.kafka_brokers, &topics).await?;

    let mut redis = redis_connection(options).await?;
    let keys: Vec<String> = redis.keys(format!("{}*", options.redis_prefix())).await?;
    if !keys.is_empty() {
        let _: () = redis.del(keys).await?;
    }
    mongo(options)
        .await?
        .drop()
        .await
        .context("dropping the MongoDB database — is the MongoDB-wire server running?")?;
    Ok(())
}

/// Runs the demo; the error says what went wrong, the summary says whether the counts held.
pub async fn run(options: Options, args: DemoArgs) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&args.out)?;
    println!("Resetting topics, counters and archive…");
    reset(&options).await?;
    println!("Starting the functions and the KafkaSources…");
    let runner = Runner::start(options.clone()).await?;
    let load = run_locust(&options, &args).await;
    println!("Waiting for every record to be delivered…");
    let drained = runner.drain(Duration::from_secs(120)).await;
    let dead_lettered = runner.dead_lettered();
    runner.stop().await;
    load?;
    drained?;

    let summary = summarise(&options, &args, dead_lettered).await?;
    std::fs::write(args.out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    summary.print();
    if let Some(trace) = &summary.trace_example {
        print_trace(trace).await;
    }
    println!("\nSummary written to {}", args.out.join("summary.json").display());
    Ok(summary)
}

async fn run_locust(options: &Options, args: &DemoArgs) -> anyhow::Result<()> {
    let total = args.bursts * args.burst_seconds + args.bursts.saturating_sub(1) * args.gap_seconds;
    println!(
        "Locust: {} burst(s) of {} s with {} users at {} req/s each, {} s apart (~{} s)…",
        args.bursts, args.burst_seconds, args.users, args.user_rps, args.gap_seconds, total
    );
    let status = tokio::process::Command::new(&args.locust)
        .arg("-f")
        .arg(&args.locustfile)
        .args([
            "--headless",
            "--host",
            &format!("http://127.0.0.1:{}", functions::port(options.base_port, "ingest")),
        ])
        .arg("--json-file")
        .arg(args.out.join("locust"))
        .args(["--burst-users", &args.users.to_string(), "--burst-spawn-rate", &args.users.to_string()])
        .args([
            "--burst-seconds",
            &args.burst_seconds.to_string(),
            "--gap-seconds",
            &args.gap_seconds.to_string(),
        ])
        .args(["--bursts", &args.bursts.to_string(), "--user-rps", &args.user_rps.to_string()])
        // Let requests in flight at the end finish, so Locust's statistics include them.
        .args(["--stop-timeout", "10"])
        .stdin(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {} (`make demo` installs it)", args.locust.display()))?;
    // Locust exits 1 when any request failed; the summary reports those as rejected.
    if !status.success() && status.code() != Some(1) {
        bail!("locust failed with {status}");
    }
    Ok(())
}

async fn summarise(options: &Options, args: &DemoArgs, dead_lettered: u64) -> anyhow::Result<Summary> {
    let path = args.out.join("locust.json");
    let stats: LocustStats =
        serde_json::from_str(&std::fs::read_to_string(&path).context("reading Locust's statistics")?)
            .with_context(|| format!("parsing {}", path.display()))?;
    let accepted = stats.requests - stats.failures;

    let mut redis = redis_connection(options).await?;
    let prefix = options.redis_prefix();
    let counted: Option<i64> = redis.get(format!("{prefix}total")).await?;
    let counted = counted.unwrap_or(0);
    let top = |mut v: Vec<(String, i64)>| {
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(5);
        v
    };
    let countries: Vec<(String, i64)> = redis.hgetall(format!("{prefix}countries")).await?;
    let climas: Vec<(String, i64)> = redis.hgetall(format!("{prefix}climas")).await?;
    let archive = mongo(options).await?.collection::<mongodb::bson::Document>("tweets");
    let archived = archive.count_documents(Default::default()).await?;
    let trace_example = archive
        .find_one(mongodb::bson::doc! { "trace_id": { "$exists": true } })
        .await?
        .and_then(|doc| doc.get_str("trace_id").ok().map(str::to_owned));

    let (messages, dead_letters) = topics(options)?;
    let messages = records(&options.kafka_brokers, &messages)?;
    let dead_letter_records = records(&options.kafka_brokers, &dead_letters)?;
    if dead_letter_records != dead_lettered as i64 {
        tracing::warn!(dead_letter_records, dead_lettered, "Dead-letter topic and runner disagree");
    }
    let burst_seconds = f64::from(args.bursts * args.burst_seconds).max(1.0);
    Ok(Summary {
        accepted,
        rejected: stats.failures,
        kafka_records: messages,
        counted,
        archived,
        dead_lettered: dead_letter_records,
        lost: (accepted as i64 - counted).max(0),
        double_counted: (counted - messages).max(0),
        not_archived: (accepted as i64 - archived as i64).max(0),
        tweets_per_s: accepted as f64 / burst_seconds,
        p50_ms: stats.percentile(0.50),
        p99_ms: stats.percentile(0.99),
        top_countries: top(countries),
        top_climas: top(climas),
        trace_example,
    })
}

/// The stack's Jaeger (its query API; `JAEGER_URL` to use another).
fn jaeger() -> String {
    std::env::var("JAEGER_URL").unwrap_or_else(|_| "http://127.0.0.1:16686".into())
}

/// Prints one tweet's trace from Jaeger as a tree of spans.
async fn print_trace(trace_id: &str) {
    let url = format!("{}/api/traces/{trace_id}", jaeger());
    let mut spans = Vec::new();
    for _ in 0..25 {
        if let Ok(body) = reqwest::get(&url).await.and_then(|r| r.error_for_status())
            && let Ok(json) = body.json::<serde_json::Value>().await
        {
            spans = trace_spans(&json);
            if spans.len() >= 12 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if spans.is_empty() {
        println!(
            "\n(no trace in Jaeger at {url}: were the functions exporting? `make demo` sets OTEL_EXPORTER_OTLP_ENDPOINT)"
        );
        return;
    }
    println!("\nOne tweet's trace ({url}):");
    fn walk(spans: &[TraceSpan], parent: Option<&str>, depth: usize) {
        for span in spans.iter().filter(|s| s.parent.as_deref() == parent || (depth == 0 && s.orphan)) {
            let (indent, width) = (depth * 2, 44 - depth * 2);
            println!("  {:indent$}{:<9} {:<width$} {:>8.2} ms", "", span.service, span.operation, span.ms);
            walk(spans, Some(&span.id), depth + 1);
        }
    }
    walk(&spans, None, 0);
}

struct TraceSpan {
    id: String,
    parent: Option<String>,
    /// Its parent is outside the trace (the caller's span).
    orphan: bool,
    service: String,
    operation: String,
    ms: f64,
}

/// The spans of a Jaeger `/api/traces/{id}` answer, in start order.
fn trace_spans(json: &serde_json::Value) -> Vec<TraceSpan> {
    let Some(trace) = json["data"].get(0) else { return Vec::new() };
    let mut spans: Vec<(i64, TraceSpan)> = trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let parent = s["references"].get(0).and_then(|r| r["spanID"].as_str()).map(str::to_owned);
            let service = s["processID"].as_str().and_then(|p| trace["processes"][p]["serviceName"].as_str());
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

/// The run's topic of tweets and its dead-letter topic, from the manifests.
fn topics(options: &Options) -> anyhow::Result<(String, String)> {
    let sources = manifests::kafka_sources(&options.manifests)?;
    let first = &sources[0];
    let dead_letters =
        first.delivery.dead_letter_topic.clone().context("the KafkaSources have no dead-letter sink")?;
    if sources
        .iter()
        .any(|s| s.topics != first.topics || s.delivery.dead_letter_topic.as_ref() != Some(&dead_letters))
        || first.topics.len() != 1
    {
        bail!("the demo expects every KafkaSource to read one topic and share one dead-letter sink");
    }
    Ok((options.topic(&first.topics[0]), options.topic(&dead_letters)))
}

/// Records in a topic (sum of high − low watermarks).
fn records(brokers: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
    let mut total = 0;
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(5))?;
        total += high - low;
    }
    Ok(total)
}

async fn redis_connection(options: &Options) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(options.redis_url.as_str())?;
    client.get_multiplexed_async_connection().await.context("connecting to Redis — is it running?")
}

async fn mongo(options: &Options) -> anyhow::Result<mongodb::Database> {
    let mut mongo_options = mongodb::options::ClientOptions::parse(&options.mongodb_uri).await?;
    mongo_options.server_selection_timeout = Some(Duration::from_secs(5));
    Ok(mongodb::Client::with_options(mongo_options)?.database(&options.mongodb_database()))
}

/// Locust's final statistics (`--json-file`), all endpoints together.
#[derive(Debug, Default)]
struct LocustStats {
    requests: u64,
    failures: u64,
    /// Response time in whole milliseconds (as Locust rounds it) → requests.
    response_times: std::collections::BTreeMap<u64, u64>,
}

impl<'de> serde::Deserialize<'de> for LocustStats {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Entry {
            num_requests: u64,
            num_failures: u64,
            response_times: std::collections::BTreeMap<String, u64>,
        }
        let mut stats = LocustStats::default();
        for entry in Vec::<Entry>::deserialize(d)? {
            stats.requests += entry.num_requests;
            stats.failures += entry.num_failures;
            for (ms, n) in entry.response_times {
                let ms: f64 = ms.parse().map_err(serde::de::Error::custom)?;
                *stats.response_times.entry(ms as u64).or_default() += n;
            }
        }
        Ok(stats)
    }
}

impl LocustStats {
    /// The smallest response time that at least `fraction` of the requests did not exceed.
    fn percentile(&self, fraction: f64) -> f64 {
        let total: u64 = self.response_times.values().sum();
        let wanted = (total as f64 * fraction).ceil() as u64;
        let mut seen = 0;
        for (ms, n) in &self.response_times {
            seen += n;
            if seen >= wanted {
                return *ms as f64;
            }
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let spans = trace_spans(&json);
        let read: Vec<_> =
            spans.iter().map(|s| (s.id.as_str(), s.service.as_str(), s.orphan, s.ms)).collect();
        assert_eq!(read, [("a", "ingest", true, 1.5), ("b", "producer", false, 0.5)]);
        assert!(trace_spans(&serde_json::json!({"data": []})).is_empty());
    }

    #[test]
    fn reads_locust_statistics() {
        let json = r#"[{"name":"/input","method":"POST","num_requests":10,"num_failures":1,
            "response_times":{"3":5,"4.0":3,"9":1,"250":1}}]"#;
        let stats: LocustStats = serde_json::from_str(json).unwrap();
        assert_eq!((stats.requests, stats.failures), (10, 1));
        assert_eq!(stats.percentile(0.5), 3.0);
        assert_eq!(stats.percentile(0.8), 4.0);
        assert_eq!(stats.percentile(0.9), 9.0);
        assert_eq!(stats.percentile(0.99), 250.0);
        assert_eq!(LocustStats::default().percentile(0.5), 0.0);
    }
}
