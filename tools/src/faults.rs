//! `make faults`: "nothing lost, nothing counted twice", shown by faults of the real processes.
//! Each scenario runs the pipeline (`runner up` as a child) on a run of its own (topics,
//! consumer groups, keys, database), posts tweets — each with an `Idempotency-Key`, retried on
//! 503 and connection errors as a careful client would — injects its fault mid-burst (SIGKILL,
//! SIGSTOP, SIGTERM of the runner, a function, Redis, the MongoDB-wire server or Kafka), lets
//! the pipeline recover, waits until every record is committed by both KafkaSources and
//! audits every count without clamping ([`Audit`]). The table goes to the terminal and to
//! `<out>/faults.json`; any loss or double count fails the command.
//!
//! The stack's services are stopped through their pid files in `.stack/run` and started again
//! with `dev/stack up <service>`; the suite must run alone on the stack (nothing else may use
//! Redis, FerretDB or Kafka meanwhile). `--short` is the version `make test` runs: fewer tweets,
//! outages just longer than one delivery attempt's timeout (10 s).

use crate::{
    pipeline::{Pipeline, PipelineArgs},
    replay::{self, ReplayArgs},
    state::{Audit, State},
};
use anyhow::{Context, bail};
use cloudevents::binding::rdkafka::{FutureRecordExt, MessageRecord};
use futures::{StreamExt, stream};
use nix::sys::signal::Signal;
use rdkafka::{
    ClientConfig,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use runner::Stack;
use serde::Serialize;
use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The short version (for `make test`): fewer tweets, shorter outages.
    #[arg(long)]
    pub short: bool,
    /// Run only the scenarios whose name contains one of these (all when none is given).
    #[arg(long = "only", value_name = "NAME")]
    pub only: Vec<String>,
    /// Where faults.json goes.
    #[arg(long, default_value = "target/faults")]
    pub out: PathBuf,
    /// The stack script, to start a service again after a fault.
    #[arg(long, env = "STACK_SCRIPT", default_value = "dev/stack")]
    pub stack_script: PathBuf,
    /// The stack's folder, for the services' pid files.
    #[arg(long, env = "STACK_DIR", default_value = ".stack")]
    pub stack_dir: PathBuf,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub sent: u64,
    #[serde(flatten)]
    pub audit: Audit,
    pub replayed: u64,
    pub seconds: f64,
    /// Scenario-specific checks that failed (empty when all held).
    pub failed_checks: Vec<String>,
}

impl Row {
    pub fn ok(&self) -> bool {
        self.audit.exact() && self.failed_checks.is_empty() && self.audit.accepted > 0
    }
}

/// The scenarios, in the order they run.
pub const SCENARIOS: [&str; 17] = [
    "runner-sigterm-mid-burst",
    "runner-sigkill-mid-burst",
    "runner-down-while-written",
    "counter-sigkill-mid-burst",
    "archiver-sigkill-mid-burst",
    "redis-sigkill",
    "redis-sigstop",
    "mongodb-sigkill",
    "mongodb-sigstop",
    "kafka-sigkill-restart",
    "every-event-twice",
    "poison-garbage",
    "poison-invalid-tweets",
    "poison-oversized",
    "outage-past-budget-then-replay",
    "idempotency-key-retries",
    "idempotency-key-after-503",
];

pub async fn run(stack: &Stack, args: &FaultArgs) -> anyhow::Result<Vec<Row>> {
    std::fs::create_dir_all(&args.out)?;
    let chosen: Vec<&str> = SCENARIOS
        .into_iter()
        .filter(|s| args.only.is_empty() || args.only.iter().any(|o| s.contains(o.as_str())))
        .collect();
    if chosen.is_empty() {
        bail!("no scenario matches {:?}; scenarios: {}", args.only, SCENARIOS.join(", "));
    }
    let started = Instant::now();
    let mut rows = Vec::new();
    for (i, name) in chosen.iter().enumerate() {
        println!("[{}/{}] {name}…", i + 1, chosen.len());
        let began = Instant::now();
        let row = match scenario(stack, args, name).await {
            Ok(mut row) => {
                row.seconds = began.elapsed().as_secs_f64();
                row
            }
            Err(e) => {
                // The stack must be whole again for the next scenario.
                heal(args).await;
                return Err(e.context(format!("scenario {name}")));
            }
        };
        println!(
            "      {} — accepted {}, counted {}, archived {}, lost {}, double-counted {}{} ({:.0} s)",
            if row.ok() { "ok" } else { "FAILED" },
            row.audit.accepted,
            row.audit.counted,
            row.audit.archived,
            row.audit.lost,
            row.audit.double_counted,
            if row.failed_checks.is_empty() {
                String::new()
            } else {
                format!("; {}", row.failed_checks.join("; "))
            },
            row.seconds
        );
        rows.push(row);
    }
    print_table(&rows);
    let path = args.out.join("faults.json");
    std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
    println!(
        "{} scenarios in {:.0} s; table written to {}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(rows)
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<32} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}  result",
        "scenario",
        "sent",
        "accepted",
        "in Kafka",
        "counted",
        "archived",
        "dead-let",
        "replayed",
        "lost",
        "double"
    );
    for r in rows {
        let a = &r.audit;
        println!(
            "{:<32} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6}  {}",
            r.scenario,
            r.sent,
            a.accepted,
            a.in_kafka,
            a.counted,
            a.archived,
            a.dead_lettered,
            r.replayed,
            a.lost,
            a.double_counted,
            if r.ok() { "ok" } else { "FAILED" }
        );
    }
}

/// How long the stores stay down: longer than one delivery attempt's timeout (10 s).
fn outage(args: &FaultArgs) -> Duration {
    Duration::from_secs(if args.short { 12 } else { 30 })
}

fn tweets(args: &FaultArgs) -> usize {
    if args.short { 120 } else { 1_000 }
}

async fn scenario(stack: &Stack, args: &FaultArgs, name: &str) -> anyhow::Result<Row> {
    let n = tweets(args);
    let (a, b) = (n / 3, 2 * n / 3);
    match name {
        "runner-sigterm-mid-burst" | "runner-sigkill-mid-burst" => {
            let signal = if name.contains("sigterm") { Signal::SIGTERM } else { Signal::SIGKILL };
            let mut t = Trial::start(stack, args, name, &[]).await?;
            t.post(0..a).await?;
            let functions = t.pipeline.processes();
            t.pipeline.signal(signal)?;
            t.pipeline.wait(Duration::from_secs(40)).await?;
            // A killed runner leaves its functions behind (they are its children, not bound to
            // it): they go with it, as a node crash takes every container.
            for (function, pid) in functions
                .iter()
                .filter(|(f, _)| *f != "runner")
                .flat_map(|(f, pids)| pids.iter().map(move |p| (f, p)))
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid as i32), Signal::SIGKILL);
                tracing::debug!(function, pid, "Killed a function left behind");
            }
            t.pipeline.restart().await?;
            t.post(a..n).await?;
            t.finish(0, vec![]).await
        }
        "runner-down-while-written" => {
            let mut t = Trial::start(stack, args, name, &[]).await?;
            t.post(0..a).await?;
            t.pipeline.signal(Signal::SIGTERM)?;
            t.pipeline.wait(Duration::from_secs(40)).await?;
            t.write_to_kafka(a..b).await?;
            t.pipeline.restart().await?;
            t.post(b..n).await?;
            t.finish(0, vec![]).await
        }
        "counter-sigkill-mid-burst" | "archiver-sigkill-mid-burst" => {
            let function = name.split('-').next().expect("a function name");
            let t = Trial::start(stack, args, name, &[]).await?;
            let kill = async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                t.pipeline.signal_function(function, Signal::SIGKILL)
            };
            let (posted, killed) = tokio::join!(t.post(0..n), kill);
            posted?;
            killed?;
            // Every record delivered means the sink came back; the runner's log says who restarted it.
            let (row, pipeline) = t.finish_keeping_pipeline(0).await?;
            let log = std::fs::read_to_string(pipeline.log_file()).unwrap_or_default();
            pipeline.stop().await;
            let restarted = log.lines().any(|l| {
                l.contains("exited on its own; replacing it")
                    && l.contains(&format!("\"function\":\"{function}\""))
            });
            let failed = [
                row.failed_checks.clone(),
                check(restarted, &format!("the runner never replaced {function}")),
            ];
            Ok(Row { failed_checks: failed.concat(), ..row })
        }
        "redis-sigkill" | "redis-sigstop" | "mongodb-sigkill" | "mongodb-sigstop" => {
            let service = if name.starts_with("redis") { "redis" } else { "ferretdb" };
            let t = Trial::start(stack, args, name, &[]).await?;
            t.post(0..a).await?;
            if name.ends_with("sigkill") {
                signal_service(args, service, Signal::SIGKILL)?;
                let during = t.post(a..b);
                let (posted, ()) = tokio::join!(during, tokio::time::sleep(outage(args)));
                posted?;
                start_service(args, service).await?;
            } else {
                signal_service(args, service, Signal::SIGSTOP)?;
                let during = t.post(a..b);
                let (posted, ()) = tokio::join!(during, tokio::time::sleep(outage(args)));
                signal_service(args, service, Signal::SIGCONT)?;
                posted?;
            }
            t.post(b..n).await?;
            let log = t.function_log(if service == "redis" { "counter" } else { "archiver" });
            let saw = log.contains("Store update failed");
            t.finish(0, check(saw, "the sink never answered 503, so the outage was not felt")).await
        }
        "kafka-sigkill-restart" => {
            let t = Trial::start(stack, args, name, &[]).await?;
            t.post(0..a).await?;
            signal_service(args, "kafka", Signal::SIGKILL)?;
            let restart = async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                start_service(args, "kafka").await
            };
            let (posted, restarted) = tokio::join!(t.post(a..b), restart);
            restarted?;
            posted?;
            t.post(b..n).await?;
            t.finish(0, vec![]).await
        }
        "every-event-twice" => {
            let t = Trial::start(stack, args, name, &["--deliveries", "2"]).await?;
            t.post(0..n).await?;
            t.finish(0, vec![]).await
        }
        "poison-garbage" | "poison-invalid-tweets" | "poison-oversized" => {
            let t = Trial::start(stack, args, name, &[]).await?;
            let poison: Vec<Vec<u8>> = match name {
                "poison-garbage" => vec![b"\xff\x00 not a tweet".to_vec(), b"{\"texto\":".to_vec()],
                "poison-invalid-tweets" => vec![
                    br#"{"texto":"sin pais"}"#.to_vec(),
                    br#"{"texto":"","pais":"Chile"}"#.to_vec(),
                    br#"{"texto":"x","pais":"Chile","clima":"volcanico"}"#.to_vec(),
                ],
                _ => vec![vec![b'x'; 1_000_200]],
            };
            t.post(0..a).await?;
            t.write_raw(&poison).await?;
            t.post(a..n).await?;
            let oversized = name == "poison-oversized";
            let row = t.finish_keeping_pipeline(0).await?;
            let (row, pipeline) = row;
            let mut failed = row.failed_checks.clone();
            // Each of the two KafkaSources dead-letters each poison record — unless Kafka refuses
            // the letter for good (too large), which the runner must log, count and skip.
            let letters = if oversized { 0 } else { 2 * poison.len() as i64 };
            if row.audit.dead_lettered != letters {
                failed.push(format!("{} dead letters, expected {letters}", row.audit.dead_lettered));
            }
            if oversized {
                let refused = runner_metric(&pipeline, "weather_dead_letters_refused_total").await?;
                if refused != 2.0 {
                    failed.push(format!("weather_dead_letters_refused_total is {refused}, expected 2"));
                }
                let log = std::fs::read_to_string(pipeline.log_file()).unwrap_or_default();
                if !log.contains("Kafka refuses the dead letter for good") {
                    failed.push("the runner logged no error for the refused letter".into());
                }
            }
            pipeline.stop().await;
            Ok(Row { failed_checks: failed, ..row })
        }
        "outage-past-budget-then-replay" => {
            // A retry budget of seconds (50 ms linear backoff) so the outage outlasts it.
            let t = Trial::start(stack, args, name, &["--backoff-delay-ms", "50"]).await?;
            t.post(0..a).await?;
            signal_service(args, "redis", Signal::SIGKILL)?;
            t.post(a..b).await?;
            // Every record of the burst is past its budget once the topic is committed.
            t.state.wait_delivered(Duration::from_secs(120)).await?;
            start_service(args, "redis").await?;
            t.post(b..n).await?;
            t.state.wait_delivered(Duration::from_secs(120)).await?;
            let dead = t.state.snapshot().await?.dead_lettered;
            let replay = ReplayArgs {
                out: args.out.join(name),
                rewrite: vec![],
                attempts: 5,
                dead_letter_topic: None,
            };
            let brokers = &t.pipeline.stack.kafka_brokers;
            let first = replay::run(brokers, &t.state.dead_letters, &replay).await?;
            let counted = t.state.counted().await?;
            let second = replay::run(brokers, &t.state.dead_letters, &replay).await?;
            let mut failed =
                check(dead > 0, "nothing was dead-lettered: the outage did not outlast the budget");
            failed
                .extend(check(first.failed == 0 && first.refused == 0, &format!("first replay: {first:?}")));
            failed.extend(check(
                second.applied == 0,
                &format!("a second replay applied {} letters", second.applied),
            ));
            failed.extend(check(t.state.counted().await? == counted, "a second replay changed the counts"));
            t.finish(first.applied, failed).await
        }
        "idempotency-key-retries" | "idempotency-key-after-503" => {
            let t = Trial::start(stack, args, name, &[]).await?;
            let mut failed = Vec::new();
            let key = format!("{}-once", t.run_id());
            let first = t.post_once(0, &key).await?;
            if name.ends_with("after-503") {
                // producer gone: ingest answers 503; the client retries with the same key.
                t.pipeline.signal_function("producer", Signal::SIGSTOP)?;
                let during = t.post_once(0, &key).await?;
                failed.extend(check(
                    during.0 == 503,
                    &format!("with producer stopped ingest answered {}", during.0),
                ));
                t.pipeline.signal_function("producer", Signal::SIGCONT)?;
            }
            let ids: Vec<(u16, String)> =
                vec![first, t.post_once(0, &key).await?, t.post_once(0, &key).await?];
            failed.extend(check(ids.iter().all(|(s, _)| *s == 202), &format!("answers {ids:?}")));
            failed.extend(check(ids.iter().all(|(_, id)| *id == ids[0].1), &format!("ids differ: {ids:?}")));
            t.sent.fetch_add(3, Ordering::Relaxed);
            t.accepted.fetch_add(1, Ordering::Relaxed);
            t.post(1..a.max(2)).await?;
            t.finish(0, failed).await
        }
        other => bail!("no scenario {other:?}"),
    }
}

fn check(holds: bool, otherwise: &str) -> Vec<String> {
    if holds { vec![] } else { vec![otherwise.to_owned()] }
}

/// One scenario's pipeline, its state and what its client did.
struct Trial {
    state: State,
    pipeline: Pipeline,
    client: reqwest::Client,
    sent: AtomicU64,
    accepted: AtomicU64,
    started: Instant,
    name: String,
}

impl Trial {
    async fn start(stack: &Stack, args: &FaultArgs, name: &str, extra: &[&str]) -> anyhow::Result<Trial> {
        let run_id = format!("f{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let stack = Stack { run_id: Some(run_id), ..stack.clone() };
        let state = State::new(&stack)?;
        state.reset().await?;
        let pipeline = Pipeline::start(&stack, &args.pipeline, extra).await?;
        Ok(Trial {
            state,
            pipeline,
            client: reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?,
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            started: Instant::now(),
            name: name.to_owned(),
        })
    }

    fn run_id(&self) -> &str {
        self.pipeline.stack.run_id.as_deref().unwrap_or_default()
    }

    fn function_log(&self, function: &str) -> String {
        std::fs::read_to_string(self.pipeline.log_dir.join(format!("{function}.log"))).unwrap_or_default()
    }

    /// Posts tweets `range`, 16 at a time, each with its own Idempotency-Key, each retried on
    /// 503 and connection errors for up to 3 minutes; every one must end in 202.
    async fn post(&self, range: std::ops::Range<usize>) -> anyhow::Result<()> {
        let results: Vec<anyhow::Result<()>> = stream::iter(range)
            .map(|i| async move {
                let key = format!("{}-{i}", self.run_id());
                let deadline = Instant::now() + Duration::from_secs(180);
                loop {
                    let (status, _) = self.post_once(i, &key).await?;
                    if status == 202 {
                        self.accepted.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                    if status != 503 && status != 0 {
                        bail!("tweet {i}: ingest answered {status}");
                    }
                    if Instant::now() > deadline {
                        bail!("tweet {i}: not accepted within 180 s (last answer {status})");
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// One POST of tweet `i` with `key`: the status (0 for a connection error) and the id.
    async fn post_once(&self, i: usize, key: &str) -> anyhow::Result<(u16, String)> {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let response = self
            .client
            .post(format!("{}/input", self.pipeline.ingest_url()))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(tweet(i).to_string())
            .send()
            .await;
        let Ok(response) = response else { return Ok((0, String::new())) };
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        Ok((status, body["id"].as_str().unwrap_or_default().to_owned()))
    }

    /// Tweets written straight to the topic, as producer writes them (its settings and event),
    /// while the runner is down; each acknowledged write counts as accepted.
    async fn write_to_kafka(&self, range: std::ops::Range<usize>) -> anyhow::Result<()> {
        let stack = &self.pipeline.stack;
        let config = <producer::Config as clap::Parser>::parse_from([
            "producer",
            "--kafka-brokers",
            &stack.kafka_brokers,
        ]);
        let producer: FutureProducer = producer::client_config(&config).create()?;
        for i in range {
            let tweet = common::tweet::Tweet::from_json(tweet(i).to_string().as_bytes())
                .map_err(|e| anyhow::anyhow!("tweet {i}: {e}"))?;
            let id = common::event::event_id(&format!("{}-{i}", self.run_id()));
            let mut event = common::event::tweet_event(&id, "/weather-tweets/faults", &tweet);
            event.set_extension(common::event::IDEMPOTENT_EXTENSION, true);
            let record = MessageRecord::from_event(event)?;
            let out = FutureRecord::to(&self.state.topic).key(tweet.pais.as_bytes()).message_record(&record);
            producer.send(out, Timeout::After(Duration::from_secs(10))).await.map_err(|(e, _)| e)?;
            self.sent.fetch_add(1, Ordering::Relaxed);
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Records that are not tweets, written straight to the topic (keyed, as a client might).
    async fn write_raw(&self, values: &[Vec<u8>]) -> anyhow::Result<()> {
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

    async fn finish(self, replayed: u64, failed_checks: Vec<String>) -> anyhow::Result<Row> {
        let (row, pipeline) = self.finish_keeping_pipeline(replayed).await?;
        pipeline.stop().await;
        Ok(Row { failed_checks: [row.failed_checks.clone(), failed_checks].concat(), ..row })
    }

    /// Waits until both KafkaSources committed every record, then audits.
    async fn finish_keeping_pipeline(self, replayed: u64) -> anyhow::Result<(Row, Pipeline)> {
        let delivered = self.state.wait_delivered(Duration::from_secs(180)).await;
        let snapshot = self.state.snapshot().await.context("reading the counts")?;
        let accepted = self.accepted.load(Ordering::Relaxed);
        let mut failed_checks = Vec::new();
        if let Err(e) = delivered {
            failed_checks.push(format!("{e:#}"));
        }
        // The archive is written by its own source; it may trail the counter by a moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut snapshot = snapshot;
        while snapshot.archived < accepted && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            snapshot = self.state.snapshot().await?;
        }
        let row = Row {
            scenario: self.name.clone(),
            sent: self.sent.load(Ordering::Relaxed),
            audit: Audit::new(accepted, &snapshot),
            replayed,
            seconds: self.started.elapsed().as_secs_f64(),
            failed_checks,
        };
        Ok((row, self.pipeline))
    }
}

/// The `i`-th tweet of a scenario (and of the tools' tests): countries and conditions in rotation.
pub fn tweet(i: usize) -> serde_json::Value {
    const COUNTRIES: [&str; 5] = ["Guatemala", "México", "El Salvador", "Perú", "Chile"];
    const CLIMAS: [&str; 4] = ["soleado", "lluvioso", "nublado", "tormenta"];
    serde_json::json!({
        "texto": format!("Reporte de fallas número {i}"),
        "pais": COUNTRIES[i % COUNTRIES.len()],
        "clima": CLIMAS[i % CLIMAS.len()],
    })
}

/// A sample of the runner's own `/metrics` (on the port after the functions').
async fn runner_metric(pipeline: &Pipeline, series: &str) -> anyhow::Result<f64> {
    let functions = pipeline.stack.services()?.len() as u16;
    let text = reqwest::get(format!("{}/metrics", pipeline.url(functions))).await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

fn service_pid(args: &FaultArgs, service: &str) -> anyhow::Result<i32> {
    let path = args.stack_dir.join("run").join(format!("{service}.pid"));
    let pid = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} — is the stack up (`dev/stack up`)?", path.display()))?;
    pid.trim().parse().with_context(|| format!("{} holds no pid", path.display()))
}

fn signal_service(args: &FaultArgs, service: &str, signal: Signal) -> anyhow::Result<()> {
    let pid = service_pid(args, service)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
        .with_context(|| format!("{signal} to {service} ({pid})"))
}

async fn start_service(args: &FaultArgs, service: &str) -> anyhow::Result<()> {
    let output = tokio::process::Command::new(&args.stack_script)
        .args(["up", service])
        .env("STACK_DIR", &args.stack_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {} up {service}", args.stack_script.display()))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = said.lines().rev().take(20).collect();
        bail!(
            "{} up {service} failed with {}:\n{}",
            args.stack_script.display(),
            output.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

/// After a failed scenario: every service running and none stopped.
async fn heal(args: &FaultArgs) {
    for service in ["redis", "ferretdb", "kafka"] {
        if let Ok(pid) = service_pid(args, service) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGCONT);
        }
        let _ = start_service(args, service).await;
    }
}
