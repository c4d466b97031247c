//! The README's first command: reset the local data, run the pipeline under a Locust burst with
//! a live line a second, wait until every record is delivered, then audit the counts and print
//! a summary (also written to `target/demo/summary.json`).

use crate::{
    load::LoadArgs,
    pipeline::{Pipeline, PipelineArgs},
    scrape::{Scrape, quantile},
    state::{Audit, State, jaeger},
};
use runner::{
    Stack,
    events::{EventKind, ScaleEvent},
};
use serde::Serialize;
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Where the summary and Locust's files go.
    #[arg(long, default_value = "target/demo")]
    pub out: PathBuf,
    /// The stack's Jaeger (its query API), where the functions export their traces.
    #[arg(long, env = "JAEGER_URL", default_value = "http://127.0.0.1:16686")]
    pub jaeger_url: String,
    /// How long to wait for the sinks to catch up after the burst, in seconds.
    #[arg(long, default_value_t = 120)]
    pub drain_timeout_s: u64,
}

/// What `make demo` prints and writes.
#[derive(Debug, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub audit: Audit,
    /// Requests that were not answered 202.
    pub rejected: u64,
    /// Accepted tweets per second of burst.
    pub tweets_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub top_countries: Vec<(String, i64)>,
    pub top_climas: Vec<(String, i64)>,
    /// The most processes each function had at once (the runner's scaling events).
    pub max_replicas: BTreeMap<String, u32>,
    /// Requests that waited for a function to start, per function.
    pub cold_starts: BTreeMap<String, usize>,
    /// The trace id of one archived tweet, when the functions exported traces.
    pub trace_example: Option<String>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.audit.exact() && self.audit.accepted > 0
    }

    pub fn print(&self, jaeger_url: &str) {
        let line = |k: &str, v: String| println!("  {k:<16} {v}");
        let a = &self.audit;
        println!("\nWeather Tweets demo summary");
        line("accepted", a.accepted.to_string());
        line("rejected", self.rejected.to_string());
        line("in Kafka", a.in_kafka.to_string());
        line("counted", a.counted.to_string());
        line("archived", a.archived.to_string());
        line("dead-lettered", a.dead_lettered.to_string());
        line("lost", a.lost.to_string());
        line("double-counted", a.double_counted.to_string());
        line("not archived", a.not_archived.to_string());
        line("archived twice", a.archived_extra.to_string());
        line("hashes agree", a.hashes_agree.to_string());
        line("throughput", format!("{:.0} tweets/s during bursts", self.tweets_per_s));
        line("latency", format!("p50 {} ms, p99 {} ms (POST /input, Locust)", self.p50_ms, self.p99_ms));
        let top =
            |v: &[(String, i64)]| v.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ");
        let per_function = |m: Vec<(&String, String)>| {
            m.into_iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        };
        line(
            "replicas (max)",
            per_function(self.max_replicas.iter().map(|(k, v)| (k, v.to_string())).collect()),
        );
        if self.max_replicas.get("ingest").is_some_and(|n| *n < 2) {
            line(
                "",
                "(ingest never needed a second replica: the burst kept fewer than its target × 70 % in \
                 flight; more `--users` or a lower autoscaling.knative.dev/target scale it out)"
                    .into(),
            );
        }
        line("cold starts", per_function(self.cold_starts.iter().map(|(k, v)| (k, v.to_string())).collect()));
        line("top countries", top(&self.top_countries));
        line("top conditions", top(&self.top_climas));
        if let Some(trace) = &self.trace_example {
            line("a trace", format!("{jaeger_url}/api/traces/{trace}"));
        }
        println!(
            "  {}",
            if self.ok() { "OK: nothing lost, nothing counted twice" } else { "FAILED: see above" }
        );
    }
}

/// Runs the demo; the error says what went wrong, the summary says whether the counts held.
pub async fn run(stack: &Stack, args: DemoArgs) -> anyhow::Result<Summary> {
    let state = State::new(stack)?;
    println!("Resetting topics, counters and archive…");
    state.reset().await?;
    println!("Starting the functions and the KafkaSources (logs in {})…", args.pipeline.log_dir.display());
    std::fs::create_dir_all(&args.out)?;
    let events = args.out.join("events.jsonl");
    let events_arg = events.to_string_lossy().into_owned();
    let pipeline = Pipeline::start(stack, &args.pipeline, &["--events", &events_arg]).await?;
    println!("Locust: {} (its output: {})…", args.load.describe(), args.out.join("locust.log").display());
    let result = burst(&state, &pipeline, &args).await;
    pipeline.stop().await;
    let stats = result?;
    let (max_replicas, cold_starts) = scaling(&events)?;

    let snapshot = state.snapshot().await?;
    let top = |map: &std::collections::BTreeMap<String, i64>| {
        let mut v: Vec<(String, i64)> = map.iter().map(|(k, n)| (k.clone(), *n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(5);
        v
    };
    let trace_example = state
        .archive()
        .await?
        .find_one(mongodb::bson::doc! { "trace_id": { "$exists": true } })
        .await?
        .and_then(|doc| doc.get_str("trace_id").ok().map(str::to_owned));
    let summary = Summary {
        audit: Audit::new(stats.accepted(), &snapshot),
        rejected: stats.failures,
        tweets_per_s: stats.accepted() as f64
            / f64::from(args.load.bursts * args.load.burst_seconds).max(1.0),
        p50_ms: stats.percentile(0.50),
        p99_ms: stats.percentile(0.99),
        top_countries: top(&snapshot.counted.countries),
        top_climas: top(&snapshot.counted.climas),
        max_replicas,
        cold_starts,
        trace_example,
    };
    std::fs::write(args.out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    summary.print(&args.jaeger_url);
    if let Some(trace) = &summary.trace_example {
        let spans = jaeger::trace(&args.jaeger_url, trace, 12).await;
        if spans.is_empty() {
            println!(
                "\n(no trace in Jaeger at {}: were the functions exporting? `make demo` sets OTEL_EXPORTER_OTLP_ENDPOINT)",
                args.jaeger_url
            );
        } else {
            println!("\nOne tweet's trace ({}/api/traces/{trace}):", args.jaeger_url);
            jaeger::print(&spans);
        }
    }
    println!("\nSummary written to {}", args.out.join("summary.json").display());
    Ok(summary)
}

/// The most replicas each function had and the cold starts per function, from the runner's
/// scaling events.
fn scaling(events: &std::path::Path) -> anyhow::Result<(BTreeMap<String, u32>, BTreeMap<String, usize>)> {
    let text = std::fs::read_to_string(events)?;
    let (mut max, mut cold) = (BTreeMap::new(), BTreeMap::new());
    for line in text.lines() {
        let event: ScaleEvent = serde_json::from_str(line)?;
        if let Some(n) = event.replicas {
            let most = max.entry(event.function.clone()).or_insert(0);
            *most = n.max(*most);
        }
        let cold = cold.entry(event.function).or_insert(0);
        if event.event == EventKind::ColdStart {
            *cold += 1;
        }
    }
    Ok((max, cold))
}

/// The Locust burst with a live line every second, then the wait for the sinks.
async fn burst(
    state: &State,
    pipeline: &Pipeline,
    args: &DemoArgs,
) -> anyhow::Result<crate::load::LocustStats> {
    let started = std::time::Instant::now();
    let client = reqwest::Client::new();
    let metrics_url = pipeline.metrics_url()?;
    let mut locust = args.load.spawn(&pipeline.ingest_url(), &args.out)?;
    let functions: Vec<String> = pipeline.stack.services()?.into_iter().map(|s| s.name).collect();
    let mut last = (Scrape::default(), started);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    let replicas_header = format!("replicas ({})", functions.join(" "));
    println!(
        "  {:>5} {:<10} {:<11} {:<10} {:<10} {:<8} {:<w$} p99",
        "time",
        "sent",
        "accepted/s",
        "counted",
        "archived",
        "lag",
        replicas_header,
        w = replicas_header.len()
    );
    while locust.running() {
        tick.tick().await;
        let (Ok(s), Ok(now)) = (state.snapshot().await, Scrape::get(&client, &metrics_url).await) else {
            continue;
        };
        let ingest = [("service", "ingest")];
        let accepted =
            |m: &Scrape| m.sum("weather_runner_requests_total", &[("service", "ingest"), ("status", "202")]);
        let replicas = now.by("weather_runner_replicas", "service", &[]);
        let replicas: Vec<String> =
            functions.iter().map(|f| replicas.get(f).map_or("0".into(), |n| n.to_string())).collect();
        let (before, at) = &last;
        let p99 = quantile(
            0.99,
            &before.buckets("weather_runner_request_duration_seconds", &ingest),
            &now.buckets("weather_runner_request_duration_seconds", &ingest),
        );
        let rate = (accepted(&now) - accepted(before)) / at.elapsed().as_secs_f64().max(0.001);
        println!(
            "  {:>4}s {:<10} {:<11.0} {:<10} {:<10} {:<8} {:<w$} {}",
            started.elapsed().as_secs(),
            now.sum("weather_runner_requests_total", &ingest),
            rate,
            s.counted.total,
            s.archived,
            s.lag,
            replicas.join(" "),
            p99.map_or("–".into(), |p| format!("{:.0} ms", p * 1000.0)),
            w = replicas_header.len(),
        );
        last = (now, std::time::Instant::now());
    }
    let stats = locust.finish().await?;
    println!(
        "Locust done: {} accepted, {} failed; waiting for every record to be delivered…",
        stats.accepted(),
        stats.failures
    );
    state.wait_delivered(Duration::from_secs(args.drain_timeout_s)).await?;
    Ok(stats)
}
