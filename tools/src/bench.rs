//! `make bench`: the figures of the design's performance targets, measured in one run on this
//! machine, each against a baseline from the same run.
//!
//! 1. Baseline: the raw rdkafka producer rate — tweet events written straight to Kafka with the
//!    producer's own settings (idempotent, acks=all, linger 5 ms), after an untimed warm-up run.
//! 2. ingest → Kafka: tweets/s accepted (202) by ingest with producer behind it, the
//!    KafkaSources not running; and its ratio to the baseline.
//! 3. End to end: the whole pipeline under the same load; tweets/s from the first acceptance to
//!    the moment Redis counted the last tweet, and the posted → counted latency. Counter keeps
//!    no per-tweet time, so that latency pairs the k-th post with the moment the Redis total
//!    reached k (sampled every 2 ms): k tweets counted were all posted by then, so it is never
//!    negative (pairing acceptances instead read 0 ms at p50: the load generator sees a 202 later
//!    than the sinks see the record). The exact per-tweet posted → archived latency comes from
//!    the archive's `archived_at`.
//! 4. CPU-µs per tweet of every process (functions, runner, Kafka, Redis, FerretDB, the load
//!    generator), from /proc during the end-to-end phase.
//! 5. The end-to-end phase again with tracing on (every span exported over OTLP to the stack's
//!    Jaeger, 100 % sampling), alternating with the untraced one over `--rounds`, and the
//!    throughput it costs (1 − mean traced / mean untraced).
//!
//! The cost phases run one replica of each function (`runner up --max-scale 1`, `--max-scale`
//! here): they measure what a tweet costs, not what the autoscaler chooses on two cores. A last
//! phase runs the pipeline as deployed, autoscaling, and reports its replicas.
//!
//! The runner runs as a child process (`runner up`), so its CPU time is its own. Every phase
//! has a deadline; when one passes, the error names the phase, what it waited for and the
//! counts so far.

use crate::{
    pipeline::{Pipeline, PipelineArgs},
    state::{State, cpu_seconds, percentile},
};
use anyhow::{Context, bail};
use clap::Parser;
use cloudevents::binding::rdkafka::{FutureRecordExt, MessageRecord};
use common::tweet::{Clima, Tweet};
use futures::{StreamExt, stream::FuturesUnordered};
use rdkafka::{
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use runner::Stack;
use serde::Serialize;
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Tweets per phase of the baselines, ingest → Kafka and the tracing rounds.
    #[arg(long, default_value_t = 20_000)]
    pub tweets: usize,
    /// Sizes of the end-to-end phase (tracing off), comma separated: cost per tweet and memory
    /// should stay flat as it grows.
    #[arg(long, value_delimiter = ',', default_value = "5000,20000,80000")]
    pub sizes: Vec<usize>,
    /// Starts of each function for exec → ready and idle RSS.
    #[arg(long, default_value_t = 20)]
    pub starts: usize,
    /// Concurrent HTTP connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Upper bound of each phase of 20,000 tweets, in seconds (scaled with a phase's size).
    #[arg(long, default_value_t = 90)]
    pub phase_timeout_s: u64,
    /// Where bench.json goes.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Rounds of the end-to-end phase, each once with tracing off and once on (alternated, so
    /// drift in the machine hits both alike).
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Replicas of each function at most in the cost phases (the runner's `--max-scale`); the
    /// last phase runs without it, as the manifests scale.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_scale: u32,
    /// OTLP endpoint for the traced phase (the stack's Jaeger).
    #[arg(long, env = "BENCH_OTLP_ENDPOINT", default_value = "http://127.0.0.1:4317")]
    pub otlp_endpoint: String,
    /// The stack's folder, for the pids of Kafka, Redis, FerretDB and Jaeger.
    #[arg(long, env = "STACK_DIR", default_value = ".stack")]
    pub stack_dir: PathBuf,
}

impl BenchArgs {
    /// The deadline of a phase of `tweets` tweets.
    pub fn phase_timeout(&self, tweets: usize) -> Duration {
        Duration::from_secs(self.phase_timeout_s) * (tweets.div_ceil(20_000).max(1) as u32)
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub tweets_per_phase: usize,
    pub connections: usize,
    pub raw_producer_per_s: f64,
    /// The bench process's CPU per record while producing (librdkafka's threads included).
    pub raw_producer_cpu_us_per_record: f64,
    /// The runner's consumer settings, reading the baseline's records as fast as it can.
    pub raw_consumer_per_s: f64,
    pub raw_consumer_cpu_us_per_record: f64,
    /// A minimal hyper server under the same load generator.
    pub anchor: Anchor,
    /// Each of our processes' CPU per tweet over the anchor server's CPU per request.
    pub hop_cpu_multiple_of_anchor: BTreeMap<String, f64>,
    pub ingest_to_kafka_per_s: f64,
    pub ingest_ratio_to_raw: f64,
    pub ingest_p50_ms: f64,
    pub ingest_p99_ms: f64,
    /// CPU-µs per tweet of every process of the runner during ingest → Kafka.
    pub ingest_phase_cpu_us_per_tweet: BTreeMap<String, f64>,
    pub end_to_end_per_s: f64,
    pub end_to_end_p50_ms: f64,
    pub end_to_end_p99_ms: f64,
    pub archived_p50_ms: f64,
    pub archived_p99_ms: f64,
    pub lost: i64,
    pub double_counted: i64,
    pub end_to_end_traced_per_s: f64,
    pub end_to_end_traced_p99_ms: f64,
    /// 1 − traced / untraced end-to-end throughput.
    pub tracing_cost: f64,
    /// Spans the batch span processors dropped over the traced rounds (SDK's own count).
    pub dropped_spans: u64,
    /// CPU-µs per tweet of the four functions and the runner together, mean over the rounds.
    pub functions_cpu_us_per_tweet_untraced: f64,
    pub functions_cpu_us_per_tweet_traced: f64,
    /// The trace backend's CPU-µs per tweet while tracing, on the same machine.
    pub jaeger_cpu_us_per_tweet: f64,
    /// Process → CPU microseconds per tweet during the end-to-end phase.
    pub cpu_us_per_tweet: BTreeMap<String, f64>,
    pub cpu_us_per_tweet_traced: BTreeMap<String, f64>,
    /// The end-to-end phase at each size, tracing off.
    pub sizes: Vec<Size>,
    /// Per function: exec → ready over `--starts` starts, and idle RSS.
    pub starts: BTreeMap<String, Starts>,
    /// The cost phases' replicas per function at most (`--max-scale`).
    pub max_scale: u32,
    /// End to end as deployed: the manifests' autoscaling, tracing off, `tweets_per_phase`.
    pub as_deployed: Deployed,
}

#[derive(Debug, Serialize)]
pub struct Deployed {
    pub per_s: f64,
    pub p99_ms: f64,
    pub functions_cpu_us_per_tweet: f64,
    pub cpu_us_per_tweet: BTreeMap<String, f64>,
    /// Most processes of each function alive at once (sampled every 100 ms).
    pub max_replicas: BTreeMap<String, usize>,
    pub lost: i64,
    pub double_counted: i64,
}

#[derive(Debug, Serialize)]
pub struct Anchor {
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The anchor server process's CPU per request.
    pub server_cpu_us: f64,
    /// The load generator's (a reqwest/hyper client) CPU per request.
    pub client_cpu_us: f64,
}

#[derive(Debug, Serialize)]
pub struct Size {
    pub tweets: usize,
    pub per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub functions_cpu_us_per_tweet: f64,
    pub cpu_us_per_tweet: BTreeMap<String, f64>,
    /// Largest resident set seen during the phase (sampled every 100 ms), per process.
    pub peak_rss_mb: BTreeMap<String, f64>,
    pub lost: i64,
    pub double_counted: i64,
}

impl Size {
    fn from(tweets: usize, run: &EndToEnd) -> Size {
        Size {
            tweets,
            per_s: run.rate,
            p50_ms: run.p50,
            p99_ms: run.p99,
            functions_cpu_us_per_tweet: run.ours,
            cpu_us_per_tweet: run.cpu.clone(),
            peak_rss_mb: run.peak_rss_mb.clone(),
            lost: run.lost,
            double_counted: run.double_counted,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Starts {
    pub starts: usize,
    pub ready_p50_ms: f64,
    pub ready_max_ms: f64,
    /// Median resident set 300 ms after ready, no request served.
    pub idle_rss_mb: f64,
}

/// Records per second and the bench process's CPU per record.
struct Rate {
    per_s: f64,
    cpu_us: f64,
}

pub async fn run(stack: &Stack, args: BenchArgs) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&args.out)?;
    let machine = machine();
    println!(
        "Benchmark on {machine}; {} tweets per phase, sizes {:?}, {} connections",
        args.tweets, args.sizes, args.connections
    );
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(!args.sizes.is_empty(), "--sizes needs at least one size");

    println!("[1/8] raw rdkafka producer (baseline, the producer's own client settings)…");
    // A broker just started runs interpreted Java for a while: warm it up, untimed, first.
    let warm_topic = format!("bench-raw-warm-{}", std::process::id());
    phase(
        "1/8 raw producer, warm-up",
        args.phase_timeout(args.tweets),
        raw_producer(stack, &args, &warm_topic),
    )
    .await?;
    let raw_topic = format!("bench-raw-{}", std::process::id());
    let raw =
        phase("1/8 raw producer", args.phase_timeout(args.tweets), raw_producer(stack, &args, &raw_topic))
            .await?;
    println!("      {:.0} records/s, {:.1} CPU-µs per record", raw.per_s, raw.cpu_us);

    println!("[2/8] raw rdkafka consumer (the runner's consumer settings), reading those records…");
    let consumer = phase(
        "2/8 raw consumer",
        args.phase_timeout(args.tweets),
        raw_consumer(stack, &raw_topic, args.tweets),
    )
    .await?;
    println!("      {:.0} records/s, {:.1} CPU-µs per record", consumer.per_s, consumer.cpu_us);

    println!("[3/8] anchor: a minimal hyper server, driven by the same load generator…");
    let anchor = phase("3/8 anchor", args.phase_timeout(args.tweets), anchor(&args)).await?;
    println!(
        "      {:.0} requests/s, p99 {:.1} ms; server {:.1} CPU-µs per request, client (load generator) {:.1}",
        anchor.per_s, anchor.p99_ms, anchor.server_cpu_us, anchor.client_cpu_us
    );

    println!("[4/8] ingest → producer → Kafka, sources off…");
    let run_id = format!("bench-ingest-{}", std::process::id());
    let ingest_only = start(stack, &args, &run_id, false, None, Some(args.max_scale)).await?;
    let ingest_pids = ingest_only.processes();
    let before = cpu_times(&ingest_pids);
    let load = closed_loop(
        &ingest_only.ingest_url(),
        args.tweets,
        args.connections,
        args.phase_timeout(args.tweets),
    )
    .await
    .context("phase 4/8 (ingest → Kafka)");
    let ingest_cpu =
        per_tweet(&before, &cpu_times(&ingest_pids), load.as_ref().map_or(1, |l| l.accepted.len()));
    ingest_only.stop().await;
    let load = load?;
    let ingest_rate = load.accepted.len() as f64 / load.elapsed.as_secs_f64();
    println!(
        "      {ingest_rate:.0} tweets/s ({:.0} % of raw), p50 {:.1} ms, p99 {:.1} ms; CPU-µs per tweet: ingest {:.1}, producer {:.1}",
        100.0 * ingest_rate / raw.per_s,
        load.p(0.5),
        load.p(0.99),
        ingest_cpu.get("ingest").copied().unwrap_or(0.0),
        ingest_cpu.get("producer").copied().unwrap_or(0.0),
    );

    println!("[5/8] exec → ready and idle RSS of each function, {} starts each…", args.starts);
    let starts = phase("5/8 starts", Duration::from_secs(args.phase_timeout_s), starts(stack, &args)).await?;
    for (name, s) in &starts {
        println!(
            "      {name:<9} exec → ready p50 {:.1} ms, max {:.1} ms; idle RSS {:.1} MB",
            s.ready_p50_ms, s.ready_max_ms, s.idle_rss_mb
        );
    }

    println!("[6/8] end to end at each size, tracing off…");
    let mut sizes = Vec::new();
    for &size in &args.sizes {
        let run =
            end_to_end_phase(stack, &args, size, None, Some(args.max_scale), &format!("size-{size}")).await?;
        println!(
            "      {size:>6} tweets: {:.0} tweets/s, p50 {:.1} ms, p99 {:.1} ms; functions + runner {:.0} CPU-µs per tweet; \
             lost {}, double-counted {}",
            run.rate, run.p50, run.p99, run.ours, run.lost, run.double_counted
        );
        let per_process: Vec<String> = run
            .cpu
            .iter()
            .map(|(p, us)| format!("{p} {us:.0} µs/{:.0} MB", run.peak_rss_mb.get(p).copied().unwrap_or(0.0)))
            .collect();
        println!("        CPU per tweet/peak RSS: {}", per_process.join(", "));
        sizes.push(Size::from(size, &run));
    }

    println!(
        "[7/8] end to end with tracing on (100 % sampling, OTLP to {}) and off, alternated over {} rounds of {} tweets…",
        args.otlp_endpoint, args.rounds, args.tweets
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        for otlp in [None, Some(args.otlp_endpoint.as_str())] {
            let label = format!("round-{round}-{}", if otlp.is_some() { "on" } else { "off" });
            let run = end_to_end_phase(stack, &args, args.tweets, otlp, Some(args.max_scale), &label).await?;
            println!(
                "      round {round}, tracing {:<3}: {:.0} tweets/s, posted → counted p50 {:.1} ms, p99 {:.1} ms; \
                 archived p50 {:.0} ms, p99 {:.0} ms; lost {}, double-counted {}{}",
                if otlp.is_some() { "on" } else { "off" },
                run.rate,
                run.p50,
                run.p99,
                run.archived_p50,
                run.archived_p99,
                run.lost,
                run.double_counted,
                if otlp.is_some() { format!("; spans dropped {}", run.dropped_spans) } else { String::new() }
            );
            if otlp.is_some() { on.push(run) } else { off.push(run) }
        }
    }
    let mean = |runs: &[EndToEnd]| runs.iter().map(|r| r.rate).sum::<f64>() / runs.len() as f64;
    let (rate_off, rate_on) = (mean(&off), mean(&on));
    let tracing_cost = 1.0 - rate_on / rate_off;
    // CPU time varies less than throughput between runs: the functions' and runner's CPU per tweet.
    let ours = |runs: &[EndToEnd]| runs.iter().map(|r| r.ours).sum::<f64>() / runs.len() as f64;
    let (cpu_off, cpu_on) = (ours(&off), ours(&on));
    let jaeger = on.iter().filter_map(|r| r.cpu.get("jaeger")).sum::<f64>() / on.len() as f64;
    let dropped_spans: u64 = on.iter().map(|r| r.dropped_spans).sum();
    println!(
        "      mean {rate_off:.0} tweets/s off, {rate_on:.0} on: tracing costs {:.1} % of the throughput; \
         functions + runner use {cpu_off:.0} CPU-µs per tweet off, {cpu_on:.0} on (+{:.1} %), \
         and Jaeger {jaeger:.0} on the same two cores; spans dropped: {dropped_spans}",
        100.0 * tracing_cost,
        100.0 * (cpu_on / cpu_off - 1.0)
    );
    let e2e = &off[0];
    // Each hop against the anchor: a process's CPU per tweet over the minimal server's CPU per
    // request (ingest, counter, archiver serve one request per tweet; producer one gRPC call and
    // one Kafka record; the runner two consumes and two requests as a client).
    let hops: BTreeMap<String, f64> = ["ingest", "producer", "counter", "archiver", "runner"]
        .into_iter()
        .filter_map(|p| Some((p.to_owned(), e2e.cpu.get(p)? / anchor.server_cpu_us.max(1e-9))))
        .collect();
    println!(
        "      CPU-µs per tweet (round 1, tracing off), peak RSS, and × the anchor's {:.1} µs:",
        anchor.server_cpu_us
    );
    for (process, us) in &e2e.cpu {
        let rss = e2e.peak_rss_mb.get(process).copied().unwrap_or(0.0);
        match hops.get(process) {
            Some(x) => println!("        {process:<10} {us:>8.1}  {rss:>7.1} MB  {x:>5.1} ×"),
            None => println!("        {process:<10} {us:>8.1}  {rss:>7.1} MB"),
        }
    }

    println!(
        "[8/8] end to end as deployed (the manifests' autoscaling), tracing off, {} tweets…",
        args.tweets
    );
    let deployed = end_to_end_phase(stack, &args, args.tweets, None, None, "as-deployed").await?;
    let replicas: Vec<String> = deployed.max_replicas.iter().map(|(f, n)| format!("{f} {n}")).collect();
    println!(
        "      {:.0} tweets/s, p99 {:.1} ms; functions + runner {:.0} CPU-µs per tweet ({:.1} × the pinned round 1); \
         most replicas at once: {}; lost {}, double-counted {}",
        deployed.rate,
        deployed.p99,
        deployed.ours,
        deployed.ours / e2e.ours.max(1e-9),
        replicas.join(", "),
        deployed.lost,
        deployed.double_counted
    );

    let report = Report {
        machine,
        tweets_per_phase: args.tweets,
        connections: args.connections,
        raw_producer_per_s: raw.per_s,
        raw_producer_cpu_us_per_record: raw.cpu_us,
        raw_consumer_per_s: consumer.per_s,
        raw_consumer_cpu_us_per_record: consumer.cpu_us,
        anchor,
        hop_cpu_multiple_of_anchor: hops,
        ingest_to_kafka_per_s: ingest_rate,
        ingest_ratio_to_raw: ingest_rate / raw.per_s,
        ingest_p50_ms: load.p(0.5),
        ingest_p99_ms: load.p(0.99),
        ingest_phase_cpu_us_per_tweet: ingest_cpu,
        end_to_end_per_s: rate_off,
        end_to_end_p50_ms: e2e.p50,
        end_to_end_p99_ms: e2e.p99,
        archived_p50_ms: e2e.archived_p50,
        archived_p99_ms: e2e.archived_p99,
        lost: off.iter().chain(&on).chain([&deployed]).map(|r| r.lost).sum::<i64>()
            + sizes.iter().map(|s| s.lost).sum::<i64>(),
        double_counted: off.iter().chain(&on).chain([&deployed]).map(|r| r.double_counted).sum::<i64>()
            + sizes.iter().map(|s| s.double_counted).sum::<i64>(),
        end_to_end_traced_per_s: rate_on,
        end_to_end_traced_p99_ms: on[0].p99,
        tracing_cost,
        dropped_spans,
        functions_cpu_us_per_tweet_untraced: cpu_off,
        functions_cpu_us_per_tweet_traced: cpu_on,
        jaeger_cpu_us_per_tweet: jaeger,
        cpu_us_per_tweet: e2e.cpu.clone(),
        cpu_us_per_tweet_traced: on[0].cpu.clone(),
        max_scale: args.max_scale,
        as_deployed: Deployed {
            per_s: deployed.rate,
            p99_ms: deployed.p99,
            functions_cpu_us_per_tweet: deployed.ours,
            cpu_us_per_tweet: deployed.cpu.clone(),
            max_replicas: deployed.max_replicas.clone(),
            lost: deployed.lost,
            double_counted: deployed.double_counted,
        },
        sizes,
        starts,
    };
    let path = args.out.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("Figures written to {}", path.display());
    Ok(report)
}

/// `what` within `deadline`, else an error naming the phase (the phase's own errors say what
/// it waited for and the counts so far).
async fn phase<T>(
    name: &str,
    deadline: Duration,
    what: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(deadline, what).await {
        Ok(result) => result.with_context(|| format!("phase {name}")),
        Err(_) => bail!("phase {name}: not done within {} s", deadline.as_secs()),
    }
}

/// One end-to-end phase on its own pipeline, stopped afterwards; with `otlp`, the spans the
/// processes' batch processors dropped, from their shutdown logs.
async fn end_to_end_phase(
    stack: &Stack,
    args: &BenchArgs,
    tweets: usize,
    otlp: Option<&str>,
    max_scale: Option<u32>,
    label: &str,
) -> anyhow::Result<EndToEnd> {
    let run_id = format!("bench-e2e-{}-{label}", std::process::id());
    let name = format!(
        "6–8/8 end to end ({label}, {tweets} tweets, tracing {})",
        if otlp.is_some() { "on" } else { "off" }
    );
    let pipeline =
        start(stack, args, &run_id, true, otlp, max_scale).await.with_context(|| format!("phase {name}"))?;
    let run = end_to_end(&pipeline, args, tweets).await.with_context(|| format!("phase {name}"));
    let log_dir = pipeline.log_dir.clone();
    pipeline.stop().await;
    let mut run = run?;
    run.dropped_spans = dropped_spans(&log_dir);
    Ok(run)
}

/// The spans the OpenTelemetry SDK says it dropped (queue full), summed over the logs of a
/// run's processes: its batch processor logs the lifetime count at shutdown as
/// `BatchSpanProcessor.SpansDropped` with `dropped_span_count` (nothing when none was).
pub fn dropped_spans(log_dir: &std::path::Path) -> u64 {
    let mut dropped = 0;
    for entry in std::fs::read_dir(log_dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        for line in text.lines().filter(|l| l.contains("dropped_span_count")) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
                dropped += json["dropped_span_count"].as_u64().unwrap_or(0);
            }
        }
    }
    dropped
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cores} × {cpu}")
}

fn sample_tweet(i: usize) -> Tweet {
    const COUNTRIES: [&str; 8] =
        ["Guatemala", "México", "El Salvador", "Honduras", "Perú", "Chile", "Colombia", "España"];
    let texto = format!("Reporte {i}: cielo cambiante con viento moderado durante la tarde");
    Tweet::new(&texto, COUNTRIES[i % COUNTRIES.len()], Some(Clima::ALL[i % 7].as_str()))
        .expect("a valid tweet")
}

async fn raw_producer(stack: &Stack, args: &BenchArgs, topic: &str) -> anyhow::Result<Rate> {
    runner::create_topics(&stack.kafka_brokers, &[topic.to_owned()])
        .await
        .with_context(|| format!("creating the topic {topic} on {}", stack.kafka_brokers))?;
    // The producer's own settings, from its own code and defaults.
    let config = producer::Config::parse_from(["producer", "--kafka-brokers", &stack.kafka_brokers]);
    let producer: FutureProducer = producer::client_config(&config).create()?;
    let me = std::process::id();
    let cpu_before = cpu_seconds(me).unwrap_or(0.0);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let mut done = 0;
    for i in 0..args.tweets {
        let tweet = sample_tweet(i);
        let event = common::event::tweet_event(&uuid::Uuid::now_v7().to_string(), "/bench", &tweet);
        let record = MessageRecord::from_event(event)?;
        let producer = producer.clone();
        let topic = topic.to_owned();
        in_flight.push(async move {
            let r = FutureRecord::to(&topic).key(tweet.pais.as_bytes()).message_record(&record);
            producer.send(r, Timeout::After(Duration::from_secs(10))).await.map(|_| ()).map_err(|(e, _)| e)
        });
        // Keep as many records in flight as the load generator keeps requests (times 16, since
        // a raw producer is not limited by request round trips).
        while in_flight.len() >= args.connections * 16 {
            in_flight
                .next()
                .await
                .context("in flight")?
                .with_context(|| format!("a send failed after {done} of {} acknowledged", args.tweets))?;
            done += 1;
        }
    }
    while let Some(r) = in_flight.next().await {
        r.with_context(|| format!("a send failed after {done} of {} acknowledged", args.tweets))?;
        done += 1;
    }
    let per_s = done as f64 / started.elapsed().as_secs_f64();
    let cpu_us = (cpu_seconds(me).unwrap_or(0.0) - cpu_before) * 1e6 / done.max(1) as f64;
    Ok(Rate { per_s, cpu_us })
}

/// Reads `expected` records of `topic` from the start with the runner's consumer settings
/// (`runner::source::consumer_config`), in a fresh group.
async fn raw_consumer(stack: &Stack, topic: &str, expected: usize) -> anyhow::Result<Rate> {
    use rdkafka::{
        Message,
        consumer::{Consumer, StreamConsumer},
    };
    let group = format!("{topic}-raw-consumer");
    let consumer: StreamConsumer =
        runner::source::consumer_config(&stack.kafka_brokers, &group, "earliest").create()?;
    consumer.subscribe(&[topic])?;
    let me = std::process::id();
    // The clock starts at the first record, so the group's join is not counted.
    let first = consumer.recv().await?.detach();
    let (started, cpu_before) = (Instant::now(), cpu_seconds(me).unwrap_or(0.0));
    let mut read = 1usize;
    let mut bytes = first.payload().map_or(0, <[u8]>::len);
    while read < expected {
        let message = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .with_context(|| format!("waited 10 s for a record; read {read} of {expected}"))??
            .detach();
        bytes += message.payload().map_or(0, <[u8]>::len);
        read += 1;
    }
    std::hint::black_box(bytes);
    let per_s = (read - 1) as f64 / started.elapsed().as_secs_f64().max(1e-6);
    let cpu_us = (cpu_seconds(me).unwrap_or(0.0) - cpu_before) * 1e6 / (read - 1).max(1) as f64;
    Ok(Rate { per_s, cpu_us })
}

/// The anchor: `tools anchor` (a minimal hyper server, [`crate::anchor`]) as its own process,
/// under the bench's load generator.
async fn anchor(args: &BenchArgs) -> anyhow::Result<Anchor> {
    let port = free_port()?;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(&exe)
        .args(["anchor", "--port", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} anchor", exe.display()))?;
    let pid = child.id().context("the anchor exited")?;
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{url}/health/readiness"), Duration::from_secs(10), &mut child)
        .await
        .context("waiting for the anchor server")?;
    let me = std::process::id();
    let (server_before, client_before) = (cpu_seconds(pid).unwrap_or(0.0), cpu_seconds(me).unwrap_or(0.0));
    let load = closed_loop(&url, args.tweets, args.connections, args.phase_timeout(args.tweets)).await;
    let (server_after, client_after) = (cpu_seconds(pid).unwrap_or(0.0), cpu_seconds(me).unwrap_or(0.0));
    let _ = child.kill().await;
    let load = load?;
    let n = load.accepted.len().max(1) as f64;
    Ok(Anchor {
        per_s: load.accepted.len() as f64 / load.elapsed.as_secs_f64(),
        p50_ms: load.p(0.5),
        p99_ms: load.p(0.99),
        server_cpu_us: (server_after - server_before) * 1e6 / n,
        client_cpu_us: (client_after - client_before) * 1e6 / n,
    })
}

/// Polls `url` until it answers 2xx, the child exits, or `timeout`.
async fn wait_ready(
    url: &str,
    timeout: Duration,
    child: &mut tokio::process::Child,
) -> anyhow::Result<Duration> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(1)).build()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("the process exited with {status} before answering {url}");
        }
        if client.get(url).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("{url} did not answer 2xx within {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Each function started `--starts` times on its own, with its local environment: exec →
/// readiness probe answered, and the resident set 300 ms later with no request served.
async fn starts(stack: &Stack, args: &BenchArgs) -> anyhow::Result<BTreeMap<String, Starts>> {
    let bin_dir = match &args.pipeline.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("the tools' folder")?.to_path_buf(),
    };
    let stack = Stack { run_id: Some(format!("bench-starts-{}", std::process::id())), ..stack.clone() };
    let log_dir = args.out.join("starts");
    std::fs::create_dir_all(&log_dir)?;
    let mut figures = BTreeMap::new();
    for service in stack.services()? {
        let env = stack.local_env(&service, |_| None)?;
        let (mut ready, mut rss) = (Vec::new(), Vec::new());
        for start in 1..=args.starts {
            let port = free_port()?;
            let log = std::fs::File::create(log_dir.join(format!("{}.log", service.name)))?;
            let mut child = tokio::process::Command::new(bin_dir.join(&service.name))
                .envs(env.iter().cloned())
                .env("PORT", port.to_string())
                .env("HOST", "127.0.0.1")
                .env("RUST_LOG", "warn")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", service.name))?;
            let url = format!("http://127.0.0.1:{port}{}", service.readiness_path);
            let took = wait_ready(&url, Duration::from_secs(10), &mut child).await.with_context(|| {
                format!(
                    "{} start {start} of {}: waiting for its readiness probe (log {})",
                    service.name,
                    args.starts,
                    log_dir.join(format!("{}.log", service.name)).display()
                )
            })?;
            ready.push(took.as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(pid) = child.id() {
                rss.push(rss_mb(pid).unwrap_or(0.0));
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        let max = ready.iter().copied().fold(0.0, f64::max);
        figures.insert(
            service.name.clone(),
            Starts {
                starts: ready.len(),
                ready_p50_ms: percentile(&mut ready, 0.5),
                ready_max_ms: max,
                idle_rss_mb: percentile(&mut rss, 0.5),
            },
        );
    }
    Ok(figures)
}

/// Resident set of a process now, in MB (VmRSS of /proc/<pid>/status).
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// One process seen during a phase: its CPU seconds at the first and last sample, its largest
/// resident set (MB).
struct Seen {
    name: String,
    first: f64,
    last: f64,
    peak_rss: f64,
}

/// CPU-µs per tweet of each process between two readings.
fn per_tweet(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    tweets: usize,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, after)| {
            let before = before.get(name).copied().unwrap_or(0.0);
            (name.clone(), (after - before) * 1e6 / tweets.max(1) as f64)
        })
        .collect()
}

/// The pipeline of one phase, isolated by `run_id`; `otlp`: the trace endpoint, or `None` for
/// tracing off (the runner passes its environment on to the functions).
async fn start(
    stack: &Stack,
    args: &BenchArgs,
    run_id: &str,
    sources: bool,
    otlp: Option<&str>,
    max_scale: Option<u32>,
) -> anyhow::Result<Pipeline> {
    let stack = Stack { run_id: Some(run_id.to_owned()), ..stack.clone() };
    let mut extra = Vec::new();
    if !sources {
        extra.push("--no-sources".to_owned());
    }
    if let Some(n) = max_scale {
        extra.extend(["--max-scale".to_owned(), n.to_string()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let env: &[(&str, Option<&str>)] = match otlp {
        Some(endpoint) => &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(endpoint)),
            ("OTEL_TRACES_SAMPLER", Some("always_on")),
            ("OTEL_SDK_DISABLED", None),
            ("RUST_LOG", Some("warn")),
        ],
        None => &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None),
            ("RUST_LOG", Some("warn")),
        ],
    };
    Pipeline::start_with_env(&stack, &args.pipeline, &extra, env)
        .await
        .with_context(|| format!("starting the pipeline of {run_id}"))
}

pub(crate) struct Load {
    /// (when the accepted tweet was posted, relative to the start; how long ingest took to
    /// answer 202)
    pub accepted: Vec<(Duration, Duration)>,
    /// (tweet id, when it was posted)
    pub ids: Vec<(String, Duration)>,
    pub elapsed: Duration,
    pub started: Instant,
}

impl Load {
    fn p(&self, q: f64) -> f64 {
        let mut latencies: Vec<f64> = self.accepted.iter().map(|(_, l)| l.as_secs_f64() * 1e3).collect();
        percentile(&mut latencies, q)
    }
}

/// Closed-loop HTTP load: `connections` workers post tweets until `tweets` are sent or the
/// phase times out. Every answer must be 202.
pub(crate) async fn closed_loop(
    ingest_url: &str,
    tweets: usize,
    connections: usize,
    timeout: Duration,
) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + timeout;
    let url = format!("{ingest_url}/input");
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (client, next, url, total) = (client.clone(), next.clone(), url.clone(), tweets);
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok::<_, anyhow::Error>(accepted);
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "load generator: {} of {total} tweets answered 202 within {} s",
                            answered.load(Ordering::Relaxed),
                            timeout.as_secs()
                        );
                    }
                    let body = serde_json::to_vec(&sample_tweet(i))?;
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .with_context(|| format!("POST {url} (tweet {i} of {total})"))?;
                    let status = response.status();
                    let reply: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
                    if status != 202 {
                        bail!("ingest answered {status}: {reply}");
                    }
                    let id = reply["id"].as_str().context("202 without an id")?.to_owned();
                    let latency = sent.elapsed();
                    answered.fetch_add(1, Ordering::Relaxed);
                    accepted.push((id, latency, sent.duration_since(started)));
                }
            })
        })
        .collect();
    let mut load = Load { accepted: Vec::new(), ids: Vec::new(), elapsed: Duration::ZERO, started };
    for worker in workers {
        for (id, latency, at) in worker.await?? {
            load.accepted.push((at, latency));
            load.ids.push((id, at));
        }
    }
    load.elapsed = started.elapsed();
    Ok(load)
}

struct EndToEnd {
    rate: f64,
    p50: f64,
    p99: f64,
    archived_p50: f64,
    archived_p99: f64,
    lost: i64,
    double_counted: i64,
    cpu: BTreeMap<String, f64>,
    /// CPU-µs per tweet of the runner and the functions (its children) together.
    ours: f64,
    /// Most processes of each function alive at once.
    max_replicas: BTreeMap<String, usize>,
    peak_rss_mb: BTreeMap<String, f64>,
    dropped_spans: u64,
}

async fn end_to_end(pipeline: &Pipeline, args: &BenchArgs, tweets: usize) -> anyhow::Result<EndToEnd> {
    let state = State::new(&pipeline.stack)?;
    let mut pids = pipeline.processes();
    let ours: Vec<String> = pids.keys().cloned().collect();
    for service in ["kafka", "redis", "ferretdb", "jaeger"] {
        if let Some(pid) = std::fs::read_to_string(args.stack_dir.join("run").join(format!("{service}.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            pids.insert(service.to_owned(), vec![pid]);
        }
    }
    pids.insert("load".to_owned(), vec![std::process::id()]);
    let timeout = args.phase_timeout(tweets);

    // Every process's CPU and largest resident set while the phase runs, the process tree
    // scanned again each time: replicas the autoscaler starts meanwhile count from their exec,
    // one it stops counts up to its last sample (100 ms at most are missed).
    let (stop_rss, stopped) = tokio::sync::oneshot::channel::<()>();
    let rss = {
        let fixed: BTreeMap<String, Vec<u32>> = pids
            .iter()
            .filter(|(name, _)| !ours.contains(name))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let runner = pipeline.pid();
        let mut seen: BTreeMap<u32, Seen> = BTreeMap::new();
        for (name, pids) in &pids {
            for pid in pids {
                let cpu = cpu_seconds(*pid).unwrap_or(0.0);
                seen.insert(*pid, Seen { name: name.clone(), first: cpu, last: cpu, peak_rss: 0.0 });
            }
        }
        tokio::spawn(async move {
            let mut stopped = stopped;
            let mut replicas: BTreeMap<String, usize> = BTreeMap::new();
            loop {
                let mut now = runner.map(crate::pipeline::processes_under).unwrap_or_default();
                now.extend(fixed.clone());
                for (name, pids) in &now {
                    let most = replicas.entry(name.clone()).or_default();
                    *most = (*most).max(pids.len());
                    for pid in pids {
                        let Some(cpu) = cpu_seconds(*pid) else { continue };
                        let entry = seen.entry(*pid).or_insert_with(|| Seen {
                            name: name.clone(),
                            first: 0.0,
                            last: 0.0,
                            peak_rss: 0.0,
                        });
                        entry.last = cpu;
                        entry.peak_rss = entry.peak_rss.max(rss_mb(*pid).unwrap_or(0.0));
                    }
                }
                tokio::select! {
                    _ = &mut stopped => return (seen, replicas),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        })
    };

    // Sample the Redis total while the load runs, to time when each count was reached.
    let mut connection = state.redis().await?;
    let total_key = state.keys.total();
    let wall = Instant::now();
    let (expected_tx, mut expected_rx) = tokio::sync::watch::channel(tweets as i64);
    let sampler = {
        let mut connection = connection.clone();
        let total_key = total_key.clone();
        tokio::spawn(async move {
            let mut samples: Vec<(Duration, i64)> = Vec::new();
            loop {
                let total: Option<i64> =
                    redis::cmd("GET").arg(&total_key).query_async(&mut connection).await.with_context(
                        || {
                            let counted = samples.last().map_or(0, |(_, t)| *t);
                            format!("reading the Redis total {total_key} (counted {counted} so far)")
                        },
                    )?;
                let total = total.unwrap_or(0);
                if samples.last().is_none_or(|(_, t)| *t != total) {
                    samples.push((wall.elapsed(), total));
                }
                let expected = *expected_rx.borrow_and_update();
                if total >= expected {
                    return Ok::<_, anyhow::Error>(samples);
                }
                if wall.elapsed() > timeout * 2 {
                    bail!(
                        "waited {} s for Redis to count {expected} accepted tweets; counted {total}",
                        (timeout * 2).as_secs()
                    );
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let load = closed_loop(&pipeline.ingest_url(), tweets, args.connections, timeout).await;
    let load = match load {
        Ok(load) => load,
        Err(e) => {
            sampler.abort();
            let _ = stop_rss.send(());
            return Err(e);
        }
    };
    let _ = expected_tx.send(load.accepted.len() as i64);
    let offset = load.started.duration_since(wall);
    let samples = sampler.await?.context("waiting for every accepted tweet to be counted")?;
    let counted = samples.last().map_or(0, |(_, t)| *t);
    let accepted = load.accepted.len() as i64;

    // The k-th post (in time order) pairs with the first sample where total ≥ k.
    let mut posted_at: Vec<Duration> = load.accepted.iter().map(|(at, _)| *at + offset).collect();
    posted_at.sort();
    let mut latencies = Vec::new();
    let mut s = 0;
    for (k, at) in posted_at.iter().enumerate() {
        while s < samples.len() && samples[s].1 < (k + 1) as i64 {
            s += 1;
        }
        if let Some((reached, _)) = samples.get(s) {
            latencies.push(reached.saturating_sub(*at).as_secs_f64() * 1e3);
        }
    }
    let last_counted = samples.last().map_or(Duration::ZERO, |(t, _)| *t);
    let rate = counted as f64 / last_counted.saturating_sub(offset).as_secs_f64().max(1e-3);

    let archived = archived_latencies(&state, &load, timeout).await;
    let _ = stop_rss.send(());
    let (seen, mut max_replicas) = rss.await.unwrap_or_default();
    max_replicas.retain(|name, _| ours.contains(name) && name != "runner");
    let (mut cpu_s, mut peak_rss_mb) = (BTreeMap::<String, f64>::new(), BTreeMap::<String, f64>::new());
    for process in seen.values() {
        *cpu_s.entry(process.name.clone()).or_default() += process.last - process.first;
        let peak = peak_rss_mb.entry(process.name.clone()).or_default();
        *peak = peak.max(process.peak_rss);
    }
    let mut archived = archived.context("reading the archive")?;
    // Redis counts are exact only after the archive caught up too: a late duplicate shows here.
    let counted_now = state.counted().await.context("reading the counts after the archive caught up")?.total;
    state.keys.clear(&mut connection).await?;
    let cpu = per_tweet(&BTreeMap::new(), &cpu_s, accepted.max(1) as usize);
    Ok(EndToEnd {
        rate,
        p50: percentile(&mut latencies.clone(), 0.5),
        p99: percentile(&mut latencies, 0.99),
        archived_p50: percentile(&mut archived.clone(), 0.5),
        archived_p99: percentile(&mut archived, 0.99),
        lost: (accepted - counted_now).max(0),
        double_counted: (counted_now - accepted).max(0),
        ours: ours.iter().filter_map(|p| cpu.get(p)).sum(),
        cpu,
        peak_rss_mb,
        max_replicas,
        dropped_spans: 0,
    })
}

/// Per tweet: `archived_at` minus the moment it was posted, in ms.
async fn archived_latencies(state: &State, load: &Load, timeout: Duration) -> anyhow::Result<Vec<f64>> {
    let tweets = state.archive().await?;
    let deadline = Instant::now() + timeout;
    loop {
        let archived = tweets.count_documents(Default::default()).await?;
        if archived >= load.ids.len() as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "waited {} s for MongoDB to archive {} accepted tweets; archived {archived}",
                timeout.as_secs(),
                load.ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let posted_at: BTreeMap<&str, Duration> = load.ids.iter().map(|(id, at)| (id.as_str(), *at)).collect();
    let started_ms = chrono::Utc::now().timestamp_millis() - load.started.elapsed().as_millis() as i64;
    let mut cursor = tweets.find(Default::default()).await?;
    let mut latencies = Vec::new();
    while let Some(doc) = cursor.next().await {
        let doc = doc?;
        if let (Ok(id), Ok(at)) = (doc.get_str("_id"), doc.get_datetime("archived_at"))
            && let Some(posted) = posted_at.get(id)
        {
            // max(0): both clocks are read to the millisecond.
            latencies.push((at.timestamp_millis() - started_ms - posted.as_millis() as i64).max(0) as f64);
        }
    }
    tweets.drop().await?;
    Ok(latencies)
}

/// CPU seconds of each process now (summed over its replicas).
fn cpu_times(pids: &BTreeMap<String, Vec<u32>>) -> BTreeMap<String, f64> {
    pids.iter()
        .filter_map(|(name, pids)| {
            let seconds: Vec<f64> = pids.iter().filter_map(|p| cpu_seconds(*p)).collect();
            (!seconds.is_empty()).then(|| (name.clone(), seconds.iter().sum()))
        })
        .collect()
}
