//! The README's first command: reset the local data, run the pipeline under a Locust burst with
//! a live line a second ([`Live`]) and the [`dashboard`](crate::dashboard) on loopback, wait
//! until every record is delivered, then audit tweet by tweet what Locust's ledger says was
//! accepted ([`Audit`]) and print a summary (also written to `target/demo/summary.json`) with a
//! link to one tweet's trace.

use crate::{
    audit::Audit,
    dashboard::{self, DashboardAddr},
    live::Live,
    load::LoadArgs,
    pipeline::{Pipeline, PipelineArgs},
    state::{State, jaeger},
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
    #[command(flatten)]
    pub dashboard: DashboardAddr,
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

    /// Prints the summary; `trace_url` + `/<id>` opens a trace.
    pub fn print(&self, trace_url: &str) {
        let line = |k: &str, v: String| println!("  {k:<16} {v}");
        let a = &self.audit;
        println!("\nWeather Tweets demo summary");
        line("accepted", a.accepted.to_string());
        line("rejected", self.rejected.to_string());
        line("unknown outcome", a.unknown.to_string());
        line("in Kafka", a.in_kafka.to_string());
        line("counted", a.counted.to_string());
        line("archived", a.archived.to_string());
        line("dead-lettered", a.dead_lettered.to_string());
        line("missing", a.missing().to_string());
        line("extra", a.extra().to_string());
        for difference in a.differences() {
            line("", difference);
        }
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
            line("a trace", format!("{trace_url}/{trace}"));
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
    let dashboard = dashboard::start_for_demo(
        &args.dashboard,
        stack,
        args.pipeline.base_port,
        &args.jaeger_url,
        &args.out.join("dashboard.log"),
    )
    .await;
    let trace_url = match &dashboard {
        Some(url) => format!("{url}/trace"),
        None => format!("{}/api/traces", args.jaeger_url),
    };
    println!("Resetting topics, counters and archive…");
    state.reset().await?;
    println!("Starting the functions and the KafkaSources (logs in {})…", args.pipeline.log_dir.display());
    std::fs::create_dir_all(&args.out)?;
    let pipeline = Pipeline::start(stack, &args.pipeline, &[]).await?;
    println!("Locust: {} (its output: {})…", args.load.describe(), args.out.join("locust.log").display());
    let result = burst(&state, &pipeline, &args).await;
    let events = pipeline.events();
    pipeline.stop().await;
    let (stats, ledger) = result?;
    let (max_replicas, cold_starts) = scaling(&events?);
    let audit = Audit::of(&state, &ledger).await?;

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
        audit,
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
    summary.print(&trace_url);
    if let Some(trace) = &summary.trace_example {
        let spans = jaeger::trace(&args.jaeger_url, trace, 12).await;
        if spans.is_empty() {
            println!(
                "\n(no trace in Jaeger at {}: were the functions exporting? `make demo` sets OTEL_EXPORTER_OTLP_ENDPOINT)",
                args.jaeger_url
            );
        } else {
            println!("\nOne tweet's trace ({trace_url}/{trace}):");
            jaeger::print(&spans);
        }
    }
    println!("\nSummary written to {}", args.out.join("summary.json").display());
    Ok(summary)
}

/// The most replicas each function had and the cold starts per function, from the runner's
/// events.
fn scaling(events: &[ScaleEvent]) -> (BTreeMap<String, u32>, BTreeMap<String, usize>) {
    let (mut max, mut cold) = (BTreeMap::new(), BTreeMap::new());
    for event in events.iter().filter(|e| !e.function.is_empty()) {
        if let Some(n) = event.replicas {
            let most = max.entry(event.function.clone()).or_insert(0);
            *most = n.max(*most);
        }
        let cold = cold.entry(event.function.clone()).or_insert(0);
        if event.event == EventKind::ColdStart {
            *cold += 1;
        }
    }
    (max, cold)
}

/// The Locust burst with a live line every second, then the wait for the sinks.
async fn burst(
    state: &State,
    pipeline: &Pipeline,
    args: &DemoArgs,
) -> anyhow::Result<(crate::load::LocustStats, crate::audit::Ledger)> {
    let started = std::time::Instant::now();
    let mut live = Live::new(State::new(&pipeline.stack)?, pipeline.metrics_url()?)?;
    // The first reading is the baseline of the first line's rate.
    let _ = live.read().await;
    let mut locust = args.load.spawn(&pipeline.ingest_url(), &args.out)?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tick.tick().await;
    println!("{}", live.header());
    while locust.running() {
        tick.tick().await;
        if let Ok(reading) = live.read().await
            && let Some(line) = live.line(started.elapsed().as_secs(), &reading)
        {
            println!("{line}");
        }
    }
    let (stats, ledger) = locust.finish().await?;
    println!(
        "Locust done: {} accepted, {} failed; waiting for every record to be delivered…",
        stats.accepted(),
        stats.failures
    );
    state.wait_delivered(Duration::from_secs(args.drain_timeout_s)).await?;
    Ok((stats, ledger))
}
