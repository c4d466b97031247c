//! `make bench`: the figures of the design's performance targets, measured in one run on this
//! machine, each against a baseline from the same run.
//!
//! 1. Baseline: the raw rdkafka producer rate — tweet events written straight to Kafka with the
//!    producer's own settings (idempotent, acks=all, linger 5 ms), after an untimed warm-up run.
//! 2. ingest → Kafka: tweets/s accepted (202) by ingest with producer behind it, the
//!    KafkaSources not running; and its ratio to the baseline.
//! 3. End to end: the whole pipeline under the same load; tweets/s from the first acceptance to
//!    the moment Redis counted the last tweet, and the accepted → counted latency. Counter keeps
//!    no per-tweet time, so that latency pairs the k-th acceptance with the moment the Redis total
//!    reached k (sampled every 2 ms); the exact per-tweet accepted → archived latency comes from
//!    the archive's `archived_at`.
//! 4. CPU-µs per tweet of every process (functions, runner, Kafka, Redis, FerretDB, the load
//!    generator), from /proc during the end-to-end phase.
//! 5. The end-to-end phase again with tracing on (every span exported over OTLP to the stack's
//!    Jaeger, 100 % sampling), alternating with the untraced one over `--rounds`, and the
//!    throughput it costs (1 − mean traced / mean untraced).
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
    /// Tweets per phase.
    #[arg(long, default_value_t = 20_000)]
    pub tweets: usize,
    /// Concurrent HTTP connections of the load generator.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Upper bound of each phase, in seconds.
    #[arg(long, default_value_t = 60)]
    pub phase_timeout_s: u64,
    /// Where bench.json goes.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// Rounds of the end-to-end phase, each once with tracing off and once on (alternated, so
    /// drift in the machine hits both alike).
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// OTLP endpoint for the traced phase (the stack's Jaeger).
    #[arg(long, env = "BENCH_OTLP_ENDPOINT", default_value = "http://127.0.0.1:4317")]
    pub otlp_endpoint: String,
    /// The stack's folder, for the pids of Kafka, Redis, FerretDB and Jaeger.
    #[arg(long, env = "STACK_DIR", default_value = ".stack")]
    pub stack_dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub tweets_per_phase: usize,
    pub connections: usize,
    pub raw_producer_per_s: f64,
    pub ingest_to_kafka_per_s: f64,
    pub ingest_ratio_to_raw: f64,
    pub ingest_p50_ms: f64,
    pub ingest_p99_ms: f64,
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
    /// CPU-µs per tweet of the four functions and the runner together, mean over the rounds.
    pub functions_cpu_us_per_tweet_untraced: f64,
    pub functions_cpu_us_per_tweet_traced: f64,
    /// The trace backend's CPU-µs per tweet while tracing, on the same machine.
    pub jaeger_cpu_us_per_tweet: f64,
    /// Process → CPU microseconds per tweet during the end-to-end phase.
    pub cpu_us_per_tweet: BTreeMap<String, f64>,
}

pub async fn run(stack: &Stack, args: BenchArgs) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&args.out)?;
    let machine = machine();
    println!("Benchmark on {machine}; {} tweets per phase, {} connections", args.tweets, args.connections);

    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    println!("[1/4] raw rdkafka producer (baseline)…");
    // A broker just started runs interpreted Java for a while: warm it up, untimed, first.
    raw_producer(stack, &args).await?;
    let raw = raw_producer(stack, &args).await?;
    println!("      {raw:.0} records/s");

    println!("[2/4] ingest → producer → Kafka, sources off…");
    let run_id = format!("bench-ingest-{}", std::process::id());
    let ingest_only = start(stack, &args, &run_id, false, None).await?;
    let load = load(&ingest_only.ingest_url(), &args).await.context("phase 2 (ingest → Kafka)");
    ingest_only.stop().await;
    let load = load?;
    let ingest_rate = load.accepted.len() as f64 / load.elapsed.as_secs_f64();
    println!(
        "      {ingest_rate:.0} tweets/s ({:.0} % of raw), p50 {:.1} ms, p99 {:.1} ms",
        100.0 * ingest_rate / raw,
        load.p(0.5),
        load.p(0.99)
    );

    println!(
        "[3/4] end to end: ingest → Kafka → counter (Redis) + archiver (MongoDB), tracing off, and\n\
         [4/4] the same with tracing on (100 % sampling, OTLP to {}), alternated over {} rounds…",
        args.otlp_endpoint, args.rounds
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        for otlp in [None, Some(args.otlp_endpoint.as_str())] {
            let run_id = format!(
                "bench-e2e-{}-{round}-{}",
                std::process::id(),
                if otlp.is_some() { "on" } else { "off" }
            );
            let pipeline = start(stack, &args, &run_id, true, otlp).await?;
            let run = end_to_end(&pipeline, &args).await.with_context(|| {
                format!(
                    "phase 3/4 (end to end, round {round}, tracing {})",
                    if otlp.is_some() { "on" } else { "off" }
                )
            });
            pipeline.stop().await;
            let run = run?;
            println!(
                "      round {round}, tracing {:<3}: {:.0} tweets/s accepted → counted, p50 {:.1} ms, p99 {:.1} ms; \
                 archived p50 {:.0} ms, p99 {:.0} ms; lost {}, double-counted {}",
                if otlp.is_some() { "on" } else { "off" },
                run.rate,
                run.p50,
                run.p99,
                run.archived_p50,
                run.archived_p99,
                run.lost,
                run.double_counted
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
    println!(
        "      mean {rate_off:.0} tweets/s off, {rate_on:.0} on: tracing costs {:.1} % of the throughput; \
         functions + runner use {cpu_off:.0} CPU-µs per tweet off, {cpu_on:.0} on (+{:.1} %), \
         and Jaeger {jaeger:.0} on the same two cores",
        100.0 * tracing_cost,
        100.0 * (cpu_on / cpu_off - 1.0)
    );
    let e2e = &off[0];
    println!("      CPU-µs per tweet (round 1, tracing off):");
    for (process, us) in &e2e.cpu {
        println!("        {process:<10} {us:>8.1}");
    }

    let report = Report {
        machine,
        tweets_per_phase: args.tweets,
        connections: args.connections,
        raw_producer_per_s: raw,
        ingest_to_kafka_per_s: ingest_rate,
        ingest_ratio_to_raw: ingest_rate / raw,
        ingest_p50_ms: load.p(0.5),
        ingest_p99_ms: load.p(0.99),
        end_to_end_per_s: rate_off,
        end_to_end_p50_ms: e2e.p50,
        end_to_end_p99_ms: e2e.p99,
        archived_p50_ms: e2e.archived_p50,
        archived_p99_ms: e2e.archived_p99,
        lost: off.iter().chain(&on).map(|r| r.lost).sum(),
        double_counted: off.iter().chain(&on).map(|r| r.double_counted).sum(),
        end_to_end_traced_per_s: rate_on,
        end_to_end_traced_p99_ms: on[0].p99,
        tracing_cost,
        functions_cpu_us_per_tweet_untraced: cpu_off,
        functions_cpu_us_per_tweet_traced: cpu_on,
        jaeger_cpu_us_per_tweet: jaeger,
        cpu_us_per_tweet: e2e.cpu.clone(),
    };
    let path = args.out.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("Figures written to {}", path.display());
    Ok(report)
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

async fn raw_producer(stack: &Stack, args: &BenchArgs) -> anyhow::Result<f64> {
    let topic = format!("bench-raw-{}", std::process::id());
    runner::create_topics(&stack.kafka_brokers, std::slice::from_ref(&topic)).await?;
    // The producer's own settings, from its own code and defaults.
    let config = producer::Config::parse_from(["producer", "--kafka-brokers", &stack.kafka_brokers]);
    let producer: FutureProducer = producer::client_config(&config).create()?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.phase_timeout_s);
    let mut in_flight = FuturesUnordered::new();
    let mut done = 0;
    for i in 0..args.tweets {
        let tweet = sample_tweet(i);
        let event = common::event::tweet_event(&uuid::Uuid::now_v7().to_string(), "/bench", &tweet);
        let record = MessageRecord::from_event(event)?;
        let producer = producer.clone();
        let topic = topic.clone();
        in_flight.push(async move {
            let r = FutureRecord::to(&topic).key(tweet.pais.as_bytes()).message_record(&record);
            producer.send(r, Timeout::After(Duration::from_secs(10))).await.map(|_| ()).map_err(|(e, _)| e)
        });
        // Keep as many records in flight as the load generator keeps requests (times 16, since
        // a raw producer is not limited by request round trips).
        while in_flight.len() >= args.connections * 16 {
            in_flight.next().await.context("in flight")?.context("phase 1 (raw producer): a send failed")?;
            done += 1;
        }
        if Instant::now() > deadline {
            bail!(
                "phase 1 (raw producer): {done} of {} records acknowledged within {} s",
                args.tweets,
                args.phase_timeout_s
            );
        }
    }
    while let Some(r) = in_flight.next().await {
        r.context("phase 1 (raw producer): a send failed")?;
        done += 1;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// The pipeline of one phase, isolated by `run_id`; `otlp`: the trace endpoint, or `None` for
/// tracing off (the runner passes its environment on to the functions).
async fn start(
    stack: &Stack,
    args: &BenchArgs,
    run_id: &str,
    sources: bool,
    otlp: Option<&str>,
) -> anyhow::Result<Pipeline> {
    let stack = Stack { run_id: Some(run_id.to_owned()), ..stack.clone() };
    let mut extra = Vec::new();
    if !sources {
        extra.push("--no-sources");
    }
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

struct Load {
    /// (when ingest answered 202, relative to the start; how long the request took)
    accepted: Vec<(Duration, Duration)>,
    ids: Vec<(String, Duration)>,
    elapsed: Duration,
    started: Instant,
}

impl Load {
    fn p(&self, q: f64) -> f64 {
        let mut latencies: Vec<f64> = self.accepted.iter().map(|(_, l)| l.as_secs_f64() * 1e3).collect();
        percentile(&mut latencies, q)
    }
}

/// Closed-loop HTTP load: `connections` workers post tweets until `tweets` are sent or the
/// phase times out. Every answer must be 202.
async fn load(ingest_url: &str, args: &BenchArgs) -> anyhow::Result<Load> {
    let client =
        reqwest::Client::builder().pool_max_idle_per_host(args.connections).tcp_nodelay(true).build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.phase_timeout_s);
    let url = format!("{ingest_url}/input");
    let workers: Vec<_> = (0..args.connections)
        .map(|_| {
            let (client, next, url, total) = (client.clone(), next.clone(), url.clone(), args.tweets);
            tokio::spawn(async move {
                let mut accepted = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || Instant::now() > deadline {
                        return Ok::<_, anyhow::Error>(accepted);
                    }
                    let body = serde_json::to_vec(&sample_tweet(i))?;
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await?;
                    let status = response.status();
                    let reply: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
                    if status != 202 {
                        bail!("ingest answered {status}: {reply}");
                    }
                    let id = reply["id"].as_str().context("202 without an id")?.to_owned();
                    let latency = sent.elapsed();
                    accepted.push((id, latency, sent.duration_since(started) + latency));
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
}

async fn end_to_end(pipeline: &Pipeline, args: &BenchArgs) -> anyhow::Result<EndToEnd> {
    let state = State::new(&pipeline.stack)?;
    let mut pids = pipeline.pids();
    let ours: Vec<String> = pids.keys().cloned().collect();
    for service in ["kafka", "redis", "ferretdb", "jaeger"] {
        if let Some(pid) = std::fs::read_to_string(args.stack_dir.join("run").join(format!("{service}.pid")))
            .ok()
            .and_then(|p| p.trim().parse().ok())
        {
            pids.insert(service.to_owned(), pid);
        }
    }
    pids.insert("load".to_owned(), std::process::id());
    let cpu_before = cpu_times(&pids);

    // Sample the Redis total while the load runs, to time when each count was reached.
    let mut connection = state.redis().await?;
    let total_key = state.keys.total();
    let wall = Instant::now();
    let sampler = {
        let mut connection = connection.clone();
        let (total_key, expected, timeout) =
            (total_key.clone(), args.tweets as i64, args.phase_timeout_s * 2);
        tokio::spawn(async move {
            let mut samples: Vec<(Duration, i64)> = Vec::new();
            loop {
                let total: Option<i64> =
                    redis::cmd("GET").arg(&total_key).query_async(&mut connection).await?;
                let total = total.unwrap_or(0);
                if samples.last().is_none_or(|(_, t)| *t != total) {
                    samples.push((wall.elapsed(), total));
                }
                if total >= expected {
                    return Ok::<_, anyhow::Error>(samples);
                }
                if wall.elapsed() > Duration::from_secs(timeout) {
                    bail!("waited {timeout} s for Redis to count {expected} tweets; counted {total}");
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let load = load(&pipeline.ingest_url(), args).await?;
    let offset = load.started.duration_since(wall);
    let samples = sampler.await?.context("waiting for every accepted tweet to be counted")?;
    let cpu_after = cpu_times(&pids);
    let counted = samples.last().map_or(0, |(_, t)| *t);
    let accepted = load.accepted.len() as i64;

    // The k-th acceptance (in time order) pairs with the first sample where total ≥ k.
    let mut accepted_at: Vec<Duration> = load.accepted.iter().map(|(at, _)| *at + offset).collect();
    accepted_at.sort();
    let mut latencies = Vec::new();
    let mut s = 0;
    for (k, at) in accepted_at.iter().enumerate() {
        while s < samples.len() && samples[s].1 < (k + 1) as i64 {
            s += 1;
        }
        if let Some((reached, _)) = samples.get(s) {
            latencies.push(reached.saturating_sub(*at).as_secs_f64() * 1e3);
        }
    }
    let last_counted = samples.last().map_or(Duration::ZERO, |(t, _)| *t);
    let rate = counted as f64 / last_counted.saturating_sub(offset).as_secs_f64().max(1e-3);

    let mut archived = archived_latencies(&state, &load).await?;
    state.keys.clear(&mut connection).await?;
    let cpu: BTreeMap<String, f64> = cpu_after
        .iter()
        .map(|(name, after)| {
            let before = cpu_before.get(name).copied().unwrap_or(0.0);
            (name.clone(), (after - before) * 1e6 / accepted.max(1) as f64)
        })
        .collect();
    Ok(EndToEnd {
        rate,
        p50: percentile(&mut latencies.clone(), 0.5),
        p99: percentile(&mut latencies, 0.99),
        archived_p50: percentile(&mut archived.clone(), 0.5),
        archived_p99: percentile(&mut archived, 0.99),
        lost: (accepted - counted).max(0),
        double_counted: (counted - accepted).max(0),
        ours: ours.iter().filter_map(|p| cpu.get(p)).sum(),
        cpu,
    })
}

/// Per tweet: `archived_at` minus the moment ingest accepted it, in ms.
async fn archived_latencies(state: &State, load: &Load) -> anyhow::Result<Vec<f64>> {
    let tweets = state.archive().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let archived = tweets.count_documents(Default::default()).await?;
        if archived >= load.ids.len() as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("waited 60 s for MongoDB to archive {} tweets; archived {archived}", load.ids.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let accepted_at: BTreeMap<&str, Duration> = load.ids.iter().map(|(id, at)| (id.as_str(), *at)).collect();
    let started_ms = chrono::Utc::now().timestamp_millis() - load.started.elapsed().as_millis() as i64;
    let mut cursor = tweets.find(Default::default()).await?;
    let mut latencies = Vec::new();
    while let Some(doc) = cursor.next().await {
        let doc = doc?;
        if let (Ok(id), Ok(at)) = (doc.get_str("_id"), doc.get_datetime("archived_at"))
            && let Some(accepted) = accepted_at.get(id)
        {
            latencies.push((at.timestamp_millis() - started_ms - accepted.as_millis() as i64).max(0) as f64);
        }
    }
    tweets.drop().await?;
    Ok(latencies)
}

/// CPU seconds of each process now.
fn cpu_times(pids: &BTreeMap<String, u32>) -> BTreeMap<String, f64> {
    pids.iter().filter_map(|(name, pid)| Some((name.clone(), cpu_seconds(*pid)?))).collect()
}
