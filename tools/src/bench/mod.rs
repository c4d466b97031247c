//! `make bench`: the figures of the design's performance targets, measured in one run on this
//! machine, each against a baseline from the same run. Eight phases, one function each:
//!
//! 1. Raw producer ([`raw_producer_phase`]): tweet events written straight to Kafka with the
//!    producer's own settings (idempotent, acks=all, linger 5 ms), after an untimed warm-up.
//! 2. Raw consumer ([`raw_consumer_phase`]): those records read back with the runner's
//!    consumer settings.
//! 3. Anchor ([`anchor_phase`]): a minimal hyper server under the bench's load generator, the
//!    yardstick of every hop's CPU per tweet.
//! 4. ingest → Kafka ([`ingest_phase`]): tweets/s accepted (202) by ingest with producer
//!    behind it, the KafkaSources not running; its ratio to the raw producer.
//! 5. Starts ([`starts_phase`]): each function started on its own `--starts` times: exec →
//!    ready, and its resident set idle.
//! 6. End to end at each of `--sizes` ([`sizes_phase`]), tracing off: tweets/s from the first
//!    post to the moment Redis counted the last tweet, posted → counted and posted → archived
//!    latency, CPU-µs per tweet and peak RSS of every process (functions, runner, Kafka, Redis,
//!    FerretDB, the load generator), from /proc.
//! 7. Tracing ([`tracing_phase`]): the end-to-end phase with tracing on (every span exported
//!    over OTLP to the stack's Jaeger, 100 % sampling) and off, alternated over `--rounds`;
//!    the throughput tracing costs (1 − mean traced / mean untraced) and each hop's CPU over
//!    the anchor's.
//! 8. As deployed ([`deployed_phase`]): the end-to-end phase with the manifests' autoscaling
//!    and the most replicas each function had.
//!
//! Phases 4, 6 and 7 run one replica of each function (`runner up --max-scale 1`,
//! `--max-scale` here): they measure what a tweet costs, not what the autoscaler chooses on two
//! cores. Every end-to-end phase is audited tweet by tweet ([`crate::audit`]); the report sums
//! what went missing or extra.
//!
//! The runner runs as a child process (`runner up`), so its CPU time is its own. Every phase
//! has a deadline; when one passes, the error names the phase, what it waited for and the
//! counts so far.

mod baselines;
mod end_to_end;
mod starts;

use crate::{pipeline::PipelineArgs, state::procfs::cpu_times};
use anyhow::{Context, bail};
use end_to_end::{EndToEnd, per_tweet};
pub use end_to_end::{Load, closed_loop};
use runner::Stack;
use serde::Serialize;
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

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
    /// Tweets missing and extra over every end-to-end phase, from each phase's audit
    /// ([`crate::audit`]); both 0 when every tweet was counted and archived exactly once.
    pub missing: u64,
    pub extra: u64,
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
    pub missing: u64,
    pub extra: u64,
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
    pub missing: u64,
    pub extra: u64,
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
            missing: run.audit.missing(),
            extra: run.audit.extra(),
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

pub async fn run(stack: &Stack, args: BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(!args.sizes.is_empty(), "--sizes needs at least one size");
    std::fs::create_dir_all(&args.out)?;
    let machine = machine();
    println!(
        "Benchmark on {machine}; {} tweets per phase, sizes {:?}, {} connections",
        args.tweets, args.sizes, args.connections
    );
    let raw_topic = format!("bench-raw-{}", std::process::id());
    let raw = raw_producer_phase(stack, &args, &raw_topic).await?;
    let consumer = raw_consumer_phase(stack, &args, &raw_topic).await?;
    let anchor = anchor_phase(&args).await?;
    let ingest = ingest_phase(stack, &args, &raw).await?;
    let starts = starts_phase(stack, &args).await?;
    let sizes = sizes_phase(stack, &args).await?;
    let tracing = tracing_phase(stack, &args, &anchor).await?;
    let deployed = deployed_phase(stack, &args, &tracing.off[0]).await?;

    let e2e = &tracing.off[0];
    let runs = || tracing.off.iter().chain(&tracing.on).chain([&deployed]);
    let report = Report {
        machine,
        tweets_per_phase: args.tweets,
        connections: args.connections,
        raw_producer_per_s: raw.per_s,
        raw_producer_cpu_us_per_record: raw.cpu_us,
        raw_consumer_per_s: consumer.per_s,
        raw_consumer_cpu_us_per_record: consumer.cpu_us,
        hop_cpu_multiple_of_anchor: tracing.hops,
        anchor,
        ingest_to_kafka_per_s: ingest.per_s,
        ingest_ratio_to_raw: ingest.per_s / raw.per_s,
        ingest_p50_ms: ingest.p50_ms,
        ingest_p99_ms: ingest.p99_ms,
        ingest_phase_cpu_us_per_tweet: ingest.cpu,
        end_to_end_per_s: tracing.rate_off,
        end_to_end_p50_ms: e2e.p50,
        end_to_end_p99_ms: e2e.p99,
        archived_p50_ms: e2e.archived_p50,
        archived_p99_ms: e2e.archived_p99,
        missing: runs().map(|r| r.audit.missing()).sum::<u64>()
            + sizes.iter().map(|s| s.missing).sum::<u64>(),
        extra: runs().map(|r| r.audit.extra()).sum::<u64>() + sizes.iter().map(|s| s.extra).sum::<u64>(),
        end_to_end_traced_per_s: tracing.rate_on,
        end_to_end_traced_p99_ms: tracing.on[0].p99,
        tracing_cost: 1.0 - tracing.rate_on / tracing.rate_off,
        dropped_spans: tracing.on.iter().map(|r| r.dropped_spans).sum(),
        functions_cpu_us_per_tweet_untraced: tracing.cpu_off,
        functions_cpu_us_per_tweet_traced: tracing.cpu_on,
        jaeger_cpu_us_per_tweet: tracing.jaeger,
        cpu_us_per_tweet: e2e.cpu.clone(),
        cpu_us_per_tweet_traced: tracing.on[0].cpu.clone(),
        max_scale: args.max_scale,
        as_deployed: Deployed {
            per_s: deployed.rate,
            p99_ms: deployed.p99,
            functions_cpu_us_per_tweet: deployed.ours,
            cpu_us_per_tweet: deployed.cpu.clone(),
            max_replicas: deployed.max_replicas.clone(),
            missing: deployed.audit.missing(),
            extra: deployed.audit.extra(),
        },
        sizes,
        starts,
    };
    let path = args.out.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("Figures written to {}", path.display());
    Ok(report)
}

/// Phase 1: the raw producer, after an untimed warm-up run (a broker just started runs
/// interpreted Java for a while), into `topic`.
async fn raw_producer_phase(stack: &Stack, args: &BenchArgs, topic: &str) -> anyhow::Result<baselines::Rate> {
    println!("[1/8] raw rdkafka producer (baseline, the producer's own client settings)…");
    let timeout = args.phase_timeout(args.tweets);
    let warm_topic = format!("bench-raw-warm-{}", std::process::id());
    phase("1/8 raw producer, warm-up", timeout, baselines::raw_producer(stack, args, &warm_topic)).await?;
    let raw = phase("1/8 raw producer", timeout, baselines::raw_producer(stack, args, topic)).await?;
    println!("      {:.0} records/s, {:.1} CPU-µs per record", raw.per_s, raw.cpu_us);
    Ok(raw)
}

/// Phase 2: phase 1's records read back with the runner's consumer settings.
async fn raw_consumer_phase(stack: &Stack, args: &BenchArgs, topic: &str) -> anyhow::Result<baselines::Rate> {
    println!("[2/8] raw rdkafka consumer (the runner's consumer settings), reading those records…");
    let timeout = args.phase_timeout(args.tweets);
    let consumer =
        phase("2/8 raw consumer", timeout, baselines::raw_consumer(stack, topic, args.tweets)).await?;
    println!("      {:.0} records/s, {:.1} CPU-µs per record", consumer.per_s, consumer.cpu_us);
    Ok(consumer)
}

/// Phase 3: the anchor server under the load generator.
async fn anchor_phase(args: &BenchArgs) -> anyhow::Result<Anchor> {
    println!("[3/8] anchor: a minimal hyper server, driven by the same load generator…");
    let anchor = phase("3/8 anchor", args.phase_timeout(args.tweets), baselines::anchor(args)).await?;
    println!(
        "      {:.0} requests/s, p99 {:.1} ms; server {:.1} CPU-µs per request, client (load generator) {:.1}",
        anchor.per_s, anchor.p99_ms, anchor.server_cpu_us, anchor.client_cpu_us
    );
    Ok(anchor)
}

/// What phase 4 measured.
struct Ingest {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu: BTreeMap<String, f64>,
}

/// Phase 4: ingest → producer → Kafka, the KafkaSources off; against phase 1's rate.
async fn ingest_phase(stack: &Stack, args: &BenchArgs, raw: &baselines::Rate) -> anyhow::Result<Ingest> {
    println!("[4/8] ingest → producer → Kafka, sources off…");
    let run_id = format!("bench-ingest-{}", std::process::id());
    let pipeline = end_to_end::start(stack, args, &run_id, false, None, Some(args.max_scale)).await?;
    let pids = pipeline.processes();
    let before = cpu_times(&pids);
    let timeout = args.phase_timeout(args.tweets);
    let load = closed_loop(&pipeline.ingest_url(), args.tweets, args.connections, timeout).await;
    let accepted = load.as_ref().map_or(1, |l| l.accepted.len());
    let cpu = per_tweet(&before, &cpu_times(&pids), accepted);
    pipeline.stop().await;
    let load = load.context("phase 4/8 (ingest → Kafka)")?;
    let ingest = Ingest {
        per_s: load.accepted.len() as f64 / load.elapsed.as_secs_f64(),
        p50_ms: load.p(0.5),
        p99_ms: load.p(0.99),
        cpu,
    };
    println!(
        "      {:.0} tweets/s ({:.0} % of raw), p50 {:.1} ms, p99 {:.1} ms; CPU-µs per tweet: ingest {:.1}, producer {:.1}",
        ingest.per_s,
        100.0 * ingest.per_s / raw.per_s,
        ingest.p50_ms,
        ingest.p99_ms,
        ingest.cpu.get("ingest").copied().unwrap_or(0.0),
        ingest.cpu.get("producer").copied().unwrap_or(0.0),
    );
    Ok(ingest)
}

/// Phase 5: exec → ready and idle RSS of each function.
async fn starts_phase(stack: &Stack, args: &BenchArgs) -> anyhow::Result<BTreeMap<String, Starts>> {
    println!("[5/8] exec → ready and idle RSS of each function, {} starts each…", args.starts);
    let timeout = Duration::from_secs(args.phase_timeout_s);
    let starts = phase("5/8 starts", timeout, starts::starts(stack, args)).await?;
    for (name, s) in &starts {
        println!(
            "      {name:<9} exec → ready p50 {:.1} ms, max {:.1} ms; idle RSS {:.1} MB",
            s.ready_p50_ms, s.ready_max_ms, s.idle_rss_mb
        );
    }
    Ok(starts)
}

/// Phase 6: end to end at each size, tracing off.
async fn sizes_phase(stack: &Stack, args: &BenchArgs) -> anyhow::Result<Vec<Size>> {
    println!("[6/8] end to end at each size, tracing off…");
    let mut sizes = Vec::new();
    for &size in &args.sizes {
        let label = format!("size-{size}");
        let run = end_to_end::phase(stack, args, size, None, Some(args.max_scale), &label).await?;
        println!(
            "      {size:>6} tweets: {:.0} tweets/s, p50 {:.1} ms, p99 {:.1} ms; functions + runner {:.0} CPU-µs per tweet; \
             missing {}, extra {}",
            run.rate,
            run.p50,
            run.p99,
            run.ours,
            run.audit.missing(),
            run.audit.extra()
        );
        print_differences(&run);
        let per_process: Vec<String> = run
            .cpu
            .iter()
            .map(|(p, us)| format!("{p} {us:.0} µs/{:.0} MB", run.peak_rss_mb.get(p).copied().unwrap_or(0.0)))
            .collect();
        println!("        CPU per tweet/peak RSS: {}", per_process.join(", "));
        sizes.push(Size::from(size, &run));
    }
    Ok(sizes)
}

/// What phase 7 measured: the rounds with tracing off and on, and their means.
struct Tracing {
    off: Vec<EndToEnd>,
    on: Vec<EndToEnd>,
    rate_off: f64,
    rate_on: f64,
    /// CPU-µs per tweet of the functions and the runner, mean over the rounds.
    cpu_off: f64,
    cpu_on: f64,
    /// Jaeger's CPU-µs per tweet while tracing.
    jaeger: f64,
    /// Each hop's CPU per tweet (round 1, tracing off) over the anchor's per request.
    hops: BTreeMap<String, f64>,
}

/// Phase 7: end to end with tracing on and off, alternated over the rounds (so drift in the
/// machine hits both alike).
async fn tracing_phase(stack: &Stack, args: &BenchArgs, anchor: &Anchor) -> anyhow::Result<Tracing> {
    println!(
        "[7/8] end to end with tracing on (100 % sampling, OTLP to {}) and off, alternated over {} rounds of {} tweets…",
        args.otlp_endpoint, args.rounds, args.tweets
    );
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        for otlp in [None, Some(args.otlp_endpoint.as_str())] {
            let label = format!("round-{round}-{}", if otlp.is_some() { "on" } else { "off" });
            let run = end_to_end::phase(stack, args, args.tweets, otlp, Some(args.max_scale), &label).await?;
            println!(
                "      round {round}, tracing {:<3}: {:.0} tweets/s, posted → counted p50 {:.1} ms, p99 {:.1} ms; \
                 archived p50 {:.0} ms, p99 {:.0} ms; missing {}, extra {}{}",
                if otlp.is_some() { "on" } else { "off" },
                run.rate,
                run.p50,
                run.p99,
                run.archived_p50,
                run.archived_p99,
                run.audit.missing(),
                run.audit.extra(),
                if otlp.is_some() { format!("; spans dropped {}", run.dropped_spans) } else { String::new() }
            );
            print_differences(&run);
            if otlp.is_some() { on.push(run) } else { off.push(run) }
        }
    }
    let mean =
        |runs: &[EndToEnd], of: fn(&EndToEnd) -> f64| runs.iter().map(of).sum::<f64>() / runs.len() as f64;
    // CPU time varies less than throughput between runs: the functions' and runner's CPU per tweet.
    let (rate_off, rate_on) = (mean(&off, |r| r.rate), mean(&on, |r| r.rate));
    let (cpu_off, cpu_on) = (mean(&off, |r| r.ours), mean(&on, |r| r.ours));
    let jaeger = mean(&on, |r| r.cpu.get("jaeger").copied().unwrap_or(0.0));
    let dropped: u64 = on.iter().map(|r| r.dropped_spans).sum();
    println!(
        "      mean {rate_off:.0} tweets/s off, {rate_on:.0} on: tracing costs {:.1} % of the throughput; \
         functions + runner use {cpu_off:.0} CPU-µs per tweet off, {cpu_on:.0} on (+{:.1} %), \
         and Jaeger {jaeger:.0} on the same two cores; spans dropped: {dropped}",
        100.0 * (1.0 - rate_on / rate_off),
        100.0 * (cpu_on / cpu_off - 1.0)
    );
    // Each hop against the anchor: a process's CPU per tweet over the minimal server's CPU per
    // request (ingest, counter, archiver serve one request per tweet; producer one gRPC call and
    // one Kafka record; the runner two consumes and two requests as a client).
    let e2e = &off[0];
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
    Ok(Tracing { off, on, rate_off, rate_on, cpu_off, cpu_on, jaeger, hops })
}

/// Phase 8: end to end as deployed (the manifests' autoscaling), tracing off; against `pinned`,
/// phase 7's first untraced round.
async fn deployed_phase(stack: &Stack, args: &BenchArgs, pinned: &EndToEnd) -> anyhow::Result<EndToEnd> {
    println!(
        "[8/8] end to end as deployed (the manifests' autoscaling), tracing off, {} tweets…",
        args.tweets
    );
    let deployed = end_to_end::phase(stack, args, args.tweets, None, None, "as-deployed").await?;
    let replicas: Vec<String> = deployed.max_replicas.iter().map(|(f, n)| format!("{f} {n}")).collect();
    println!(
        "      {:.0} tweets/s, p99 {:.1} ms; functions + runner {:.0} CPU-µs per tweet ({:.1} × the pinned round 1); \
         most replicas at once: {}; missing {}, extra {}",
        deployed.rate,
        deployed.p99,
        deployed.ours,
        deployed.ours / pinned.ours.max(1e-9),
        replicas.join(", "),
        deployed.audit.missing(),
        deployed.audit.extra()
    );
    print_differences(&deployed);
    Ok(deployed)
}

/// The audit's differences of a phase, if any, with the first ids.
fn print_differences(run: &EndToEnd) {
    for line in run.audit.differences() {
        println!("        {line}");
    }
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

/// The nearest-rank percentile (`q` in 0..=1) of `values`; 0 when empty.
pub fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut v, 0.5), 50.0);
        assert_eq!(percentile(&mut v, 0.99), 99.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }
}
