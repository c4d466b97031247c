//! The bench's load generator ([`closed_loop`]) and one end-to-end phase: the whole pipeline
//! under it, timed from the first post to the moment Redis counted the last tweet, every
//! process's CPU and resident set watched meanwhile, and the phase audited tweet by tweet.

use super::{BenchArgs, percentile};
use crate::{
    audit::{self, Audit, Ledger, Request},
    pipeline::Pipeline,
    state::{
        State,
        procfs::{cpu_seconds, processes_under, rss_mb},
    },
};
use anyhow::{Context, bail};
use futures::StreamExt;
use runner::Stack;
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

/// One tweet answered 202.
pub struct Accepted {
    pub id: String,
    /// Which tweet it was (`testkit::tweet(i)`).
    pub i: usize,
    /// When it was posted, from the start of the load.
    pub at: Duration,
    /// How long ingest took to answer.
    pub latency: Duration,
}

pub struct Load {
    pub accepted: Vec<Accepted>,
    pub elapsed: Duration,
    pub started: Instant,
}

impl Load {
    /// The `q` percentile of ingest's answer time, in ms.
    pub fn p(&self, q: f64) -> f64 {
        let mut latencies: Vec<f64> = self.accepted.iter().map(|a| a.latency.as_secs_f64() * 1e3).collect();
        percentile(&mut latencies, q)
    }

    /// The requests, for the audit: every one was answered 202 (else the load failed).
    pub fn ledger(&self) -> anyhow::Result<Ledger> {
        let ledger = Ledger::default();
        for a in &self.accepted {
            let country = audit::country(&testkit::tweet(a.i))?;
            ledger.push(Request { id: Some(a.id.clone()), key: None, country, status: 202 });
        }
        Ok(ledger)
    }
}

/// Closed-loop HTTP load: `connections` workers post tweets (`testkit::tweet`, no key) until
/// `tweets` are sent or the phase times out. Every answer must be 202.
pub async fn closed_loop(
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
                    let body = serde_json::to_vec(&testkit::tweet(i))?;
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
                    answered.fetch_add(1, Ordering::Relaxed);
                    accepted.push(Accepted {
                        id,
                        i,
                        at: sent.duration_since(started),
                        latency: sent.elapsed(),
                    });
                }
            })
        })
        .collect();
    let mut load = Load { accepted: Vec::new(), elapsed: Duration::ZERO, started };
    for worker in workers {
        load.accepted.extend(worker.await??);
    }
    load.elapsed = started.elapsed();
    Ok(load)
}

/// What one end-to-end phase measured.
pub struct EndToEnd {
    pub rate: f64,
    /// Posted → counted, ms.
    pub p50: f64,
    pub p99: f64,
    /// Posted → archived, ms.
    pub archived_p50: f64,
    pub archived_p99: f64,
    pub audit: Audit,
    /// CPU-µs per tweet of each process.
    pub cpu: BTreeMap<String, f64>,
    /// CPU-µs per tweet of the runner and the functions (its children) together.
    pub ours: f64,
    /// Most processes of each function alive at once.
    pub max_replicas: BTreeMap<String, usize>,
    pub peak_rss_mb: BTreeMap<String, f64>,
    pub dropped_spans: u64,
}

/// One end-to-end phase on its own pipeline (`label` names its run), stopped afterwards:
/// `otlp`, the trace endpoint (`None`: tracing off); `max_scale`, the runner's `--max-scale`.
/// With tracing, the spans the processes' batch processors dropped, from their shutdown logs.
pub async fn phase(
    stack: &Stack,
    args: &BenchArgs,
    tweets: usize,
    otlp: Option<&str>,
    max_scale: Option<u32>,
    label: &str,
) -> anyhow::Result<EndToEnd> {
    let run_id = format!("bench-e2e-{}-{label}", std::process::id());
    let name = format!(
        "end to end ({label}, {tweets} tweets, tracing {})",
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

/// The pipeline of one phase, isolated by `run_id`; `otlp`: the trace endpoint, or `None` for
/// tracing off (the runner passes its environment on to the functions).
pub async fn start(
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

async fn end_to_end(pipeline: &Pipeline, args: &BenchArgs, tweets: usize) -> anyhow::Result<EndToEnd> {
    let state = State::new(&pipeline.stack)?;
    let ours: Vec<String> = pipeline.processes().keys().cloned().collect();
    let watch = Watch::start(pipeline, &args.stack_dir);
    let timeout = args.phase_timeout(tweets);
    let wall = Instant::now();
    let (expected, sampler) = sample_total(&state, wall, tweets, timeout).await?;
    let load = match closed_loop(&pipeline.ingest_url(), tweets, args.connections, timeout).await {
        Ok(load) => load,
        Err(e) => {
            sampler.abort();
            watch.stop().await;
            return Err(e);
        }
    };
    let _ = expected.send(load.accepted.len() as i64);
    let samples = sampler.await?.context("waiting for every accepted tweet to be counted")?;
    let offset = load.started.duration_since(wall);
    let posted_at: Vec<Duration> = load.accepted.iter().map(|a| a.at + offset).collect();
    let mut latencies = count_latencies(posted_at, &samples);
    let (last_counted, counted) = samples.last().copied().unwrap_or_default();
    let rate = counted as f64 / last_counted.saturating_sub(offset).as_secs_f64().max(1e-3);

    let archived = archived_latencies(&state, &load, timeout).await;
    let (cpu_s, peak_rss_mb, mut max_replicas) = watch.stop().await;
    max_replicas.retain(|name, _| ours.contains(name) && name != "runner");
    let mut archived = archived.context("reading the archive")?;
    // Audited once the archive caught up too: a late duplicate shows here.
    let audit = Audit::of(&state, &load.ledger()?).await.context("auditing the phase")?;
    state.keys.clear(&mut state.redis().await?).await?;
    state.archive().await?.drop().await?;
    let cpu = per_tweet(&BTreeMap::new(), &cpu_s, load.accepted.len());
    Ok(EndToEnd {
        rate,
        p50: percentile(&mut latencies.clone(), 0.5),
        p99: percentile(&mut latencies, 0.99),
        archived_p50: percentile(&mut archived.clone(), 0.5),
        archived_p99: percentile(&mut archived, 0.99),
        audit,
        ours: ours.iter().filter_map(|p| cpu.get(p)).sum(),
        cpu,
        peak_rss_mb,
        max_replicas,
        dropped_spans: 0,
    })
}

/// Samples the Redis total every 2 ms from `wall`, until it reaches the count sent on the
/// returned channel (at first `tweets`): `(since wall, total)` at each change, to time when
/// each count was reached.
async fn sample_total(
    state: &State,
    wall: Instant,
    tweets: usize,
    timeout: Duration,
) -> anyhow::Result<(
    tokio::sync::watch::Sender<i64>,
    tokio::task::JoinHandle<anyhow::Result<Vec<(Duration, i64)>>>,
)> {
    let mut connection = state.redis().await?;
    let total_key = state.keys.total();
    let (expected_tx, mut expected_rx) = tokio::sync::watch::channel(tweets as i64);
    let sampler = tokio::spawn(async move {
        let mut samples: Vec<(Duration, i64)> = Vec::new();
        loop {
            let total: Option<i64> =
                redis::cmd("GET").arg(&total_key).query_async(&mut connection).await.with_context(|| {
                    let counted = samples.last().map_or(0, |(_, t)| *t);
                    format!("reading the Redis total {total_key} (counted {counted} so far)")
                })?;
            let total = total.unwrap_or(0);
            if samples.last().is_none_or(|(_, t)| *t != total) {
                samples.push((wall.elapsed(), total));
            }
            let expected = *expected_rx.borrow_and_update();
            if total >= expected {
                return Ok(samples);
            }
            if wall.elapsed() > timeout * 2 {
                bail!(
                    "waited {} s for Redis to count {expected} accepted tweets; counted {total}",
                    (timeout * 2).as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    Ok((expected_tx, sampler))
}

/// Posted → counted, ms: counter keeps no per-tweet time, so the k-th post (in time order)
/// pairs with the first sample where the total reached k. k tweets counted were all posted by
/// then, so it is never negative (pairing acceptances instead read 0 ms at p50: the load
/// generator sees a 202 later than the sinks see the record).
fn count_latencies(mut posted_at: Vec<Duration>, samples: &[(Duration, i64)]) -> Vec<f64> {
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
    latencies
}

/// Per tweet: `archived_at` minus the moment it was posted, in ms, once the archive holds
/// every accepted tweet.
async fn archived_latencies(state: &State, load: &Load, timeout: Duration) -> anyhow::Result<Vec<f64>> {
    let tweets = state.archive().await?;
    let deadline = Instant::now() + timeout;
    loop {
        let archived = tweets.count_documents(Default::default()).await?;
        if archived >= load.accepted.len() as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "waited {} s for MongoDB to archive {} accepted tweets; archived {archived}",
                timeout.as_secs(),
                load.accepted.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let posted_at: BTreeMap<&str, Duration> = load.accepted.iter().map(|a| (a.id.as_str(), a.at)).collect();
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
    Ok(latencies)
}

/// Every process's CPU and largest resident set while a phase runs, sampled every 100 ms with
/// the process tree scanned again each time: replicas the autoscaler starts meanwhile count
/// from their exec, one it stops counts up to its last sample (100 ms at most are missed).
struct Watch {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(BTreeMap<u32, Seen>, BTreeMap<String, usize>)>,
}

/// One process seen during a phase: its CPU seconds at the first and last sample, its largest
/// resident set (MB).
struct Seen {
    name: String,
    first: f64,
    last: f64,
    peak_rss: f64,
}

impl Watch {
    /// Watches the runner's process tree and the stack's services (their pids from
    /// `<stack_dir>/run`), and this process as the load generator.
    fn start(pipeline: &Pipeline, stack_dir: &std::path::Path) -> Watch {
        let mut fixed: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for service in ["kafka", "redis", "ferretdb", "jaeger"] {
            if let Some(pid) = std::fs::read_to_string(stack_dir.join("run").join(format!("{service}.pid")))
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                fixed.insert(service.to_owned(), vec![pid]);
            }
        }
        fixed.insert("load".to_owned(), vec![std::process::id()]);
        let runner = pipeline.pid();
        let mut seen: BTreeMap<u32, Seen> = BTreeMap::new();
        for (name, pids) in pipeline.processes().iter().chain(&fixed) {
            for pid in pids {
                let cpu = cpu_seconds(*pid).unwrap_or(0.0);
                seen.insert(*pid, Seen { name: name.clone(), first: cpu, last: cpu, peak_rss: 0.0 });
            }
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut replicas: BTreeMap<String, usize> = BTreeMap::new();
            loop {
                let mut now = runner.map(processes_under).unwrap_or_default();
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
        });
        Watch { stop, task }
    }

    /// CPU seconds and peak RSS (MB) per process name, and the most processes of each at once.
    async fn stop(self) -> (BTreeMap<String, f64>, BTreeMap<String, f64>, BTreeMap<String, usize>) {
        let _ = self.stop.send(());
        let (seen, replicas) = self.task.await.unwrap_or_default();
        let (mut cpu_s, mut peak_rss_mb) = (BTreeMap::<String, f64>::new(), BTreeMap::<String, f64>::new());
        for process in seen.values() {
            *cpu_s.entry(process.name.clone()).or_default() += process.last - process.first;
            let peak = peak_rss_mb.entry(process.name.clone()).or_default();
            *peak = peak.max(process.peak_rss);
        }
        (cpu_s, peak_rss_mb, replicas)
    }
}

/// CPU-µs per tweet of each process between two readings.
pub fn per_tweet(
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

/// The spans the OpenTelemetry SDK says it dropped (queue full), summed over the logs of a
/// run's processes: its batch processor logs the lifetime count at shutdown as
/// `BatchSpanProcessor.SpansDropped` with `dropped_span_count` (nothing when none was). The
/// SDK reports it nowhere else.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kth_post_pairs_with_the_first_sample_that_reached_k() {
        let ms = Duration::from_millis;
        let posted = vec![ms(10), ms(0), ms(20)];
        let samples = [(ms(5), 1), (ms(30), 3)];
        assert_eq!(count_latencies(posted, &samples), [5.0, 20.0, 10.0]);
        assert!(count_latencies(vec![ms(0)], &[]).is_empty(), "never counted: no latency");
    }
}
