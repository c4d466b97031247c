//! One row's run: its own pipeline and state, a client that posts as Locust does (or with an
//! `Idempotency-Key`, in keyed rows) and keeps every request in a [`Ledger`], faults injected
//! while deliveries are in flight, and the audit at the end.

use super::{FaultArgs, Row, Variant, services::Services};
use crate::{
    audit::{self, Audit, Ledger, Outcome, Request},
    pipeline::Pipeline,
    scrape::Scrape,
    state::State,
};
use anyhow::{Context, bail};
use cloudevents::binding::rdkafka::{FutureRecordExt, MessageRecord};
use common::tweet::Tweet;
use futures::{StreamExt, stream};
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use runner::Stack;
use std::{
    future::Future,
    ops::Range,
    path::PathBuf,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// How long a tweet is retried before the scenario gives up on it.
const GIVE_UP: Duration = Duration::from_secs(180);

/// The first tweet number of the traffic a burst goes on with until its fault fires (far
/// from the scenario's own numbers, so keyed rows never reuse a key), and how many rounds of
/// 16 it may add.
const EXTRA: usize = 1_000_000;
const EXTRA_ROUNDS: usize = 40;

/// One row's pipeline, its state and what its clients did.
pub struct Trial {
    pub state: State,
    pub pipeline: Pipeline,
    pub services: Services,
    pub ledger: Ledger,
    pub variant: Variant,
    /// Tweets a scenario posts, and how long a store stays down.
    pub tweets: usize,
    pub outage: Duration,
    /// The short version (`--short`).
    pub short: bool,
    /// Tweets a second when the scenario posts at a steady rate (else as fast as 16 clients go).
    pace: Option<u32>,
    /// Where the row's own files go (a replay's log).
    pub out: PathBuf,
    client: reqwest::Client,
    replayed: AtomicU64,
    failed: Mutex<Vec<String>>,
    /// Deliveries in flight (to the sinks the fault aims at) when it landed.
    in_flight: Mutex<Option<u64>>,
}

impl Trial {
    pub async fn start(
        stack: &Stack,
        args: &FaultArgs,
        services: Services,
        variant: Variant,
        out: PathBuf,
    ) -> anyhow::Result<Trial> {
        let (tweets, outage) = args.size();
        let run_id = format!("f{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let stack = Stack { run_id: Some(run_id), ..stack.clone() };
        let state = State::new(&stack)?;
        state.reset().await?;
        let mode = variant.mode.to_string();
        let mut runner_args = vec!["--mode", mode.as_str()];
        runner_args.extend(variant.scenario.runner_args(args.short));
        let pipeline = Pipeline::start(&stack, &args.pipeline, &runner_args).await?;
        Ok(Trial {
            state,
            pipeline,
            services,
            ledger: Ledger::default(),
            variant,
            tweets,
            outage,
            short: args.short,
            pace: variant.scenario.pace(args.short),
            out,
            client: reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?,
            replayed: AtomicU64::new(0),
            failed: Mutex::new(Vec::new()),
            in_flight: Mutex::new(None),
        })
    }

    fn run_id(&self) -> &str {
        self.pipeline.stack.run_id.as_deref().unwrap_or_default()
    }

    /// Records a check that failed unless `holds`.
    pub fn check(&self, holds: bool, otherwise: impl FnOnce() -> String) {
        if !holds {
            self.failed.lock().expect("checks lock").push(otherwise());
        }
    }

    pub fn replayed(&self, letters: u64) {
        self.replayed.fetch_add(letters, Ordering::Relaxed);
    }

    /// The `Idempotency-Key` of tweet `i` in keyed rows.
    pub fn key(&self, i: usize) -> Option<String> {
        self.variant.keyed.then(|| format!("{}-{i}", self.run_id()))
    }

    /// Posts tweets `range`, 16 at a time (or at the scenario's steady rate), each until it is
    /// accepted (for up to 3 minutes): after a 503 or 429 (not stored), a 504 or other 5xx
    /// (outcome unknown) or no answer it is sent again — a new request in keyless rows, the
    /// same key in keyed ones; any other 4xx fails the row.
    pub async fn post(&self, range: Range<usize>) -> anyhow::Result<()> {
        let (began, first) = (tokio::time::Instant::now(), range.start);
        let clients = if self.pace.is_some() { 1024 } else { 16 };
        let results: Vec<anyhow::Result<()>> = stream::iter(range)
            .map(|i| async move {
                if let Some(rate) = self.pace {
                    let at = Duration::from_secs_f64((i - first) as f64 / f64::from(rate));
                    tokio::time::sleep_until(began + at).await;
                }
                let key = self.key(i);
                let deadline = Instant::now() + GIVE_UP;
                loop {
                    let status = self.post_once(i, key.as_deref()).await?.0;
                    match (Outcome::of(status), status) {
                        (Outcome::Accepted, _) => return Ok(()),
                        // Not stored, and not worth another try (429 and 503 are).
                        (Outcome::NotSent, s) if s != 503 && s != 429 => {
                            bail!("tweet {i}: ingest answered {s}")
                        }
                        _ if Instant::now() > deadline => bail!(
                            "tweet {i}: not accepted within {} s (last answer {status})",
                            GIVE_UP.as_secs()
                        ),
                        _ => tokio::time::sleep(Duration::from_millis(250)).await,
                    }
                }
            })
            .buffer_unordered(clients)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// One POST of tweet `i`, with `key` if given, kept in the ledger: the status (0 when no
    /// answer came) and the id the answer gave. A request that never reached a listening
    /// socket (the runner is down) is no request: it is tried again without a ledger entry.
    pub async fn post_once(&self, i: usize, key: Option<&str>) -> anyhow::Result<(u16, Option<String>)> {
        let tweet = testkit::tweet(i);
        let country = audit::country(&tweet)?;
        let deadline = Instant::now() + GIVE_UP;
        let response = loop {
            let url = self.pipeline.url("ingest");
            if let Ok(url) = &url {
                let mut request = self
                    .client
                    .post(format!("{url}/input"))
                    .header("content-type", "application/json")
                    .body(tweet.to_string());
                if let Some(key) = key {
                    request = request.header("idempotency-key", key);
                }
                match request.send().await {
                    Err(e) if e.is_connect() => {}
                    response => break response,
                }
            }
            if Instant::now() > deadline {
                bail!("tweet {i}: ingest not reachable for {} s ({url:?})", GIVE_UP.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (status, answered_id) = match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                (status, body["id"].as_str().map(str::to_owned))
            }
            Err(_) => (0, None),
        };
        let (id, key) = (answered_id.clone(), key.map(str::to_owned));
        self.ledger.push(Request { id, key, country, status });
        Ok((status, answered_id))
    }

    /// Tweets written straight to the topic, as producer writes them (its settings and event,
    /// marked idempotent in keyed rows), 256 at a time, while the runner is down or its sources
    /// off; each acknowledged write is an accepted request.
    pub async fn write_to_kafka(&self, range: Range<usize>) -> anyhow::Result<()> {
        let brokers = &self.pipeline.stack.kafka_brokers;
        let config = <producer::Config as clap::Parser>::parse_from(["producer", "--kafka-brokers", brokers]);
        let producer: FutureProducer = producer::client_config(&config).create()?;
        let written: Vec<anyhow::Result<()>> = stream::iter(range)
            .map(|i| {
                let producer = &producer;
                async move {
                    let tweet = Tweet::from_json(testkit::tweet(i).to_string().as_bytes())
                        .map_err(|e| anyhow::anyhow!("tweet {i}: {e}"))?;
                    let key = self.key(i);
                    let id = common::event::event_id(key.as_deref().unwrap_or_default());
                    let mut event = common::event::tweet_event(&id, "/weather-tweets/faults", &tweet);
                    if key.is_some() {
                        event.set_extension(common::event::IDEMPOTENT_EXTENSION, true);
                    }
                    let record = MessageRecord::from_event(event)?;
                    let out = FutureRecord::to(&self.state.topic)
                        .key(tweet.pais.as_bytes())
                        .message_record(&record);
                    producer.send(out, Timeout::After(Duration::from_secs(10))).await.map_err(|(e, _)| e)?;
                    let country = tweet.pais.to_owned();
                    self.ledger.push(Request { id: Some(id), key, country, status: 202 });
                    Ok(())
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        written.into_iter().collect()
    }

    /// Records that are not tweets, written straight to the topic (keyed, as a client might).
    pub async fn write_raw(&self, values: &[Vec<u8>]) -> anyhow::Result<()> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.pipeline.stack.kafka_brokers)
            .set("message.max.bytes", "2000000")
            .create()?;
        for value in values {
            let out = FutureRecord::to(&self.state.topic).key("Chile").payload(value);
            producer.send(out, Timeout::After(Duration::from_secs(10))).await.map_err(|(e, _)| e)?;
        }
        Ok(())
    }

    /// A sample of the runner's own metrics (`None` while it does not answer).
    pub async fn metrics(&self) -> Option<Scrape> {
        Scrape::get(&self.client, &self.pipeline.metrics_url().ok()?).await.ok()
    }

    /// Deliveries in flight now to `sinks` (every sink when empty), from the runner's
    /// `weather_runner_deliveries_in_flight`.
    async fn deliveries_in_flight(&self, sinks: &[&str]) -> anyhow::Result<Option<u64>> {
        let Some(scrape) = self.metrics().await else { return Ok(None) };
        let sources = self.pipeline.stack.kafka_sources()?;
        let aimed = sources.iter().filter(|s| sinks.is_empty() || sinks.contains(&s.sink.as_str()));
        let n: f64 = aimed
            .map(|s| scrape.sum("weather_runner_deliveries_in_flight", &[("source", s.name.as_str())]))
            .sum();
        Ok(Some(n as u64))
    }

    /// Posts tweets `range` and, the first moment the runner reports a delivery in flight to
    /// one of `sinks` (any sink when empty), runs `fault` while the burst goes on. Until the
    /// fault fired the burst goes on past `range` too, 16 tweets at a time (numbered from
    /// [`EXTRA`], at most [`EXTRA_ROUNDS`] times), so a short burst cannot end between two
    /// looks at the gauge. When the burst and its deliveries end with none seen in flight, the
    /// fault is not injected and the row fails as "fault missed". Whether the fault ran.
    pub async fn fault_mid_burst<F: Future<Output = anyhow::Result<()>>>(
        &self,
        range: Range<usize>,
        sinks: &[&str],
        fault: impl FnOnce() -> F,
    ) -> anyhow::Result<bool> {
        let (seen, posted) = (AtomicBool::new(false), AtomicBool::new(false));
        let burst = async {
            let mut result = self.post(range).await;
            for round in 0..EXTRA_ROUNDS {
                if result.is_err() || seen.load(Ordering::Relaxed) {
                    break;
                }
                result = self.post(EXTRA + 16 * round..EXTRA + 16 * (round + 1)).await;
            }
            posted.store(true, Ordering::Relaxed);
            result
        };
        let watch = async {
            loop {
                if let Some(n) = self.deliveries_in_flight(sinks).await?.filter(|n| *n > 0) {
                    seen.store(true, Ordering::Relaxed);
                    *self.in_flight.lock().expect("in-flight lock") = Some(n);
                    fault().await?;
                    return Ok(true);
                }
                if posted.load(Ordering::Relaxed) && self.state.lag().is_ok_and(|lag| lag == 0) {
                    return Ok(false);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let (burst, fired): (anyhow::Result<()>, anyhow::Result<bool>) = tokio::join!(burst, watch);
        let fired = fired.context("injecting the fault")?;
        burst?;
        self.check(fired, || {
            format!("fault missed: no delivery to {sinks:?} was in flight during the burst, so the fault was not injected")
        });
        Ok(fired)
    }

    /// Waits until both KafkaSources committed every record and the archive holds every
    /// accepted tweet, audits, and stops the pipeline.
    pub async fn finish(self) -> anyhow::Result<Row> {
        if let Err(e) = self.state.wait_delivered(GIVE_UP).await {
            self.check(false, || format!("{e:#}"));
        }
        // The archive's own source commits after its writes; give it a moment beyond the lag.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.state.archived().await? < self.ledger.accepted() as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let audit = Audit::of(&self.state, &self.ledger).await.context("auditing")?;
        let Trial { pipeline, variant, replayed, failed, in_flight, .. } = self;
        pipeline.stop().await;
        Ok(Row {
            scenario: variant.scenario,
            mode: variant.mode.to_string(),
            keyed: variant.keyed,
            audit,
            replayed: replayed.into_inner(),
            in_flight_at_fault: in_flight.into_inner().expect("in-flight lock"),
            seconds: 0.0,
            failed_checks: failed.into_inner().expect("checks lock"),
        })
    }
}
