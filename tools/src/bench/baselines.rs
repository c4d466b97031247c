//! What the pipeline is measured against, from the same run: the raw rdkafka producer and
//! consumer with the pipeline's own client settings, and a minimal hyper server (the anchor)
//! under the bench's load generator.

use super::{Anchor, BenchArgs, end_to_end::closed_loop};
use crate::state::procfs::cpu_seconds;
use anyhow::{Context, bail};
use clap::Parser;
use cloudevents::binding::rdkafka::{FutureRecordExt, MessageRecord};
use common::tweet::Tweet;
use futures::{StreamExt, stream::FuturesUnordered};
use rdkafka::{
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use runner::Stack;
use std::time::{Duration, Instant};

/// Records per second and the bench process's CPU per record.
pub struct Rate {
    pub per_s: f64,
    pub cpu_us: f64,
}

/// `--tweets` tweet events written to `topic` with producer's own client settings, as many in
/// flight as 16 × the load generator's connections.
pub async fn raw_producer(stack: &Stack, args: &BenchArgs, topic: &str) -> anyhow::Result<Rate> {
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
        let tweet = Tweet::from_json(testkit::tweet(i).to_string().as_bytes())
            .map_err(|e| anyhow::anyhow!("tweet {i}: {e}"))?;
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
pub async fn raw_consumer(stack: &Stack, topic: &str, expected: usize) -> anyhow::Result<Rate> {
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
pub async fn anchor(args: &BenchArgs) -> anyhow::Result<Anchor> {
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
pub async fn wait_ready(
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

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
