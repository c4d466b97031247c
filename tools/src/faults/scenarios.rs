//! The scenarios: what each one does to the pipeline, one function each, and the rows it runs
//! as (modes, keyless or keyed). What every row checks besides — the audit — is in
//! [`super::trial::Trial::finish`].

use super::{Variant, services::Service, trial::Trial};
use crate::replay::{self, ReplayArgs};
use cloudevents::binding::rdkafka::{FutureRecordExt, MessageRecord};
use futures::StreamExt;
use nix::{sys::signal::Signal, unistd::Pid};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use runner::{
    Mode,
    events::{EventKind, ScaleEvent},
};
use serde::Serialize;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// A fault scenario, named as `tools faults <scenario>` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// The runner SIGTERMed while deliveries are in flight, then started again.
    RunnerSigtermMidBurst,
    /// The runner and its functions SIGKILLed while deliveries are in flight (a node crash).
    RunnerSigkillMidBurst,
    /// Tweets written to Kafka while the runner is stopped.
    RunnerDownWhileWritten,
    /// Every counter replica SIGKILLed while deliveries to it are in flight.
    CounterSigkillMidBurst,
    /// Every archiver replica SIGKILLed while deliveries to it are in flight.
    ArchiverSigkillMidBurst,
    /// Redis SIGKILLed mid-burst, started again after the outage.
    RedisSigkill,
    /// Redis frozen (SIGSTOP) mid-burst for the outage.
    RedisSigstop,
    /// The MongoDB-wire server SIGKILLed mid-burst, started again after the outage.
    MongodbSigkill,
    /// The MongoDB-wire server frozen mid-burst for the outage.
    MongodbSigstop,
    /// Kafka SIGKILLed mid-burst, started again 3 s later.
    KafkaSigkillRestart,
    /// Kafka frozen mid-burst for the outage: answers whose outcome is unknown.
    KafkaSigstop,
    /// Every event delivered twice (`--deliveries 2`).
    EveryEventTwice,
    /// Records that are not JSON in the topic.
    PoisonGarbage,
    /// Records that are JSON but not valid tweets.
    PoisonInvalidTweets,
    /// A record too large for the dead-letter topic.
    PoisonOversized,
    /// Redis down past the retry budget: tweets dead-lettered, then replayed exactly once.
    OutagePastBudgetThenReplay,
    /// The same with the dead-letter topic deleted: the partitions wait until it is back.
    DeadLetterTopicMissing,
    /// Redis frozen past the consumer's `max.poll.interval.ms`, tweets at a steady rate.
    RedisSigstopPastPollInterval,
    /// A backlog of dead letters (100,000 tweets, two sinks) replayed in two runs.
    ReplayBacklog,
    /// One tweet posted three times with one `Idempotency-Key`.
    IdempotencyKeyRetries,
    /// The key retried after producer was frozen and ingest could not answer 202.
    IdempotencyKeyProducerStopped,
}

impl Scenario {
    /// The rows this scenario runs as. Outages run in both modes; keyed rows where a retry
    /// after an unknown outcome can send a tweet twice.
    pub fn variants(self) -> Vec<Variant> {
        use Scenario::*;
        let (on, zero) = (Mode::AlwaysOn, Mode::ScaleToZero);
        let rows: &[(Mode, bool)] = match self {
            RunnerSigtermMidBurst
            | RunnerDownWhileWritten
            | CounterSigkillMidBurst
            | ArchiverSigkillMidBurst => &[(on, false)],
            PoisonGarbage | PoisonInvalidTweets | PoisonOversized => &[(on, false)],
            RunnerSigkillMidBurst | EveryEventTwice => &[(on, false), (on, true)],
            RedisSigkill | RedisSigstop | MongodbSigkill | MongodbSigstop | OutagePastBudgetThenReplay => {
                &[(on, false), (zero, false)]
            }
            DeadLetterTopicMissing | RedisSigstopPastPollInterval | ReplayBacklog => &[(on, false)],
            KafkaSigkillRestart | KafkaSigstop => &[(on, false), (zero, false), (on, true)],
            IdempotencyKeyRetries | IdempotencyKeyProducerStopped => &[(on, true)],
        };
        rows.iter().map(|&(mode, keyed)| Variant { scenario: self, mode, keyed }).collect()
    }

    /// The runner's arguments besides `--mode`, in the short version or the full one.
    pub fn runner_args(self, short: bool) -> &'static [&'static str] {
        match self {
            Scenario::EveryEventTwice => &["--deliveries", "2"],
            // A retry budget of seconds (50 ms linear backoff), so the outage outlasts it.
            Scenario::OutagePastBudgetThenReplay | Scenario::DeadLetterTopicMissing => {
                &["--backoff-delay-ms", "50"]
            }
            // Short: a poll interval of 10 s (librdkafka's minimum is the 6 s session) and a
            // read-ahead of 16, so 22 s of freeze at 40 tweets/s outgrow both. Full: the
            // defaults, 300 s and 1,024.
            Scenario::RedisSigstopPastPollInterval if short => {
                &["--max-poll-interval-ms", "10000", "--read-ahead", "16"]
            }
            // The letters are written by the scenario, standing in for the sources.
            Scenario::ReplayBacklog => &["--no-sources"],
            _ => &[],
        }
    }

    /// Tweets a second when the scenario posts at a steady rate.
    pub fn pace(self, short: bool) -> Option<u32> {
        match self {
            Scenario::RedisSigstopPastPollInterval => Some(if short { 40 } else { 25 }),
            _ => None,
        }
    }

    /// Runs the scenario on `t`; its checks go to `t`, the audit follows.
    pub async fn run(self, t: &Trial) -> anyhow::Result<()> {
        use Scenario::*;
        match self {
            RunnerSigtermMidBurst => runner_stopped_mid_burst(t, Signal::SIGTERM).await,
            RunnerSigkillMidBurst => runner_stopped_mid_burst(t, Signal::SIGKILL).await,
            RunnerDownWhileWritten => runner_down_while_written(t).await,
            CounterSigkillMidBurst => sink_killed_mid_burst(t, "counter").await,
            ArchiverSigkillMidBurst => sink_killed_mid_burst(t, "archiver").await,
            RedisSigkill => store_down(t, Service::Redis, "counter", Signal::SIGKILL).await,
            RedisSigstop => store_down(t, Service::Redis, "counter", Signal::SIGSTOP).await,
            MongodbSigkill => store_down(t, Service::Ferretdb, "archiver", Signal::SIGKILL).await,
            MongodbSigstop => store_down(t, Service::Ferretdb, "archiver", Signal::SIGSTOP).await,
            KafkaSigkillRestart => kafka_down(t, Signal::SIGKILL, Duration::from_secs(3)).await,
            KafkaSigstop => kafka_down(t, Signal::SIGSTOP, t.outage).await,
            EveryEventTwice => t.post(0..t.tweets).await,
            PoisonGarbage => poison(t, &[b"\xff\x00 not a tweet".to_vec(), b"{\"texto\":".to_vec()]).await,
            PoisonInvalidTweets => {
                let records = [
                    br#"{"texto":"sin pais"}"#.to_vec(),
                    br#"{"texto":"","pais":"Chile"}"#.to_vec(),
                    br#"{"texto":"x","pais":"Chile","clima":"volcanico"}"#.to_vec(),
                ];
                poison(t, &records).await
            }
            PoisonOversized => poison(t, &[vec![b'x'; 1_000_200]]).await,
            OutagePastBudgetThenReplay => outage_past_budget_then_replay(t).await,
            DeadLetterTopicMissing => dead_letter_topic_missing(t).await,
            RedisSigstopPastPollInterval => redis_frozen_past_poll_interval(t).await,
            ReplayBacklog => replay_backlog(t).await,
            IdempotencyKeyRetries => idempotency_key(t, false).await,
            IdempotencyKeyProducerStopped => idempotency_key(t, true).await,
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = clap::ValueEnum::to_possible_value(self).expect("no scenario is skipped");
        f.write_str(value.get_name())
    }
}

/// A third and two thirds of a scenario's tweets.
fn thirds(t: &Trial) -> (usize, usize) {
    (t.tweets / 3, 2 * t.tweets / 3)
}

/// The runner stopped by `signal` while deliveries are in flight, and started again; the burst
/// goes on, its requests failing meanwhile. A killed runner leaves its functions behind (they
/// are its children, not bound to it): they go with it, as a node crash takes every container.
async fn runner_stopped_mid_burst(t: &Trial, signal: Signal) -> anyhow::Result<()> {
    t.fault_mid_burst(0..t.tweets, &[], || async move {
        let left_behind = t.pipeline.processes();
        t.pipeline.signal(signal)?;
        t.pipeline.wait(Duration::from_secs(40)).await?;
        if signal == Signal::SIGKILL {
            for (function, pids) in left_behind.iter().filter(|(f, _)| *f != "runner") {
                for pid in pids {
                    let _ = nix::sys::signal::kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
                    tracing::debug!(function, pid, "Killed a function left behind");
                }
            }
        }
        t.pipeline.restart().await
    })
    .await?;
    Ok(())
}

async fn runner_down_while_written(t: &Trial) -> anyhow::Result<()> {
    let (a, b) = thirds(t);
    t.post(0..a).await?;
    t.pipeline.signal(Signal::SIGTERM)?;
    t.pipeline.wait(Duration::from_secs(40)).await?;
    t.write_to_kafka(a..b).await?;
    t.pipeline.restart().await?;
    t.post(b..t.tweets).await
}

/// Every replica of `sink` SIGKILLed while deliveries to it are in flight; the runner must
/// replace them (its `exit` event for each, then a replica ready that is none of them).
async fn sink_killed_mid_burst(t: &Trial, sink: &str) -> anyhow::Result<()> {
    let killed = std::sync::Mutex::new(Vec::new());
    let record = &killed;
    let fired = t
        .fault_mid_burst(0..t.tweets, &[sink], || async move {
            record
                .lock()
                .expect("killed lock")
                .extend(t.pipeline.processes().remove(sink).unwrap_or_default());
            t.pipeline.signal_function(sink, Signal::SIGKILL)
        })
        .await?;
    if fired {
        t.state.wait_delivered(Duration::from_secs(180)).await?;
        let killed = killed.into_inner().expect("killed lock");
        t.check(replaced(&t.pipeline.events()?, sink, &killed), || {
            format!(
                "the runner's events show no exit of {sink} {killed:?} (signal 9) and a new replica ready"
            )
        });
    }
    Ok(())
}

/// Whether `events` show each of `killed` exit by SIGKILL and, after, a replica of `function`
/// ready that is none of them.
fn replaced(events: &[ScaleEvent], function: &str, killed: &[u32]) -> bool {
    let ours = |e: &&ScaleEvent| e.function == function;
    let exits: Vec<usize> = killed
        .iter()
        .filter_map(|pid| {
            events.iter().position(|e| {
                ours(&e) && e.event == EventKind::Exit && e.pid == Some(*pid) && e.signal == Some(9)
            })
        })
        .collect();
    let Some(last_exit) = exits.iter().max() else { return false };
    exits.len() == killed.len()
        && events[*last_exit..]
            .iter()
            .filter(ours)
            .any(|e| e.event == EventKind::Ready && e.pid.is_some_and(|pid| !killed.contains(&pid)))
}

/// A store SIGKILLed (then started again) or frozen (then SIGCONT) while deliveries to its
/// `sink` are in flight, for the outage; in always-on the sink must have felt it (answered 503, in the
/// runner's metrics).
async fn store_down(t: &Trial, service: Service, sink: &str, signal: Signal) -> anyhow::Result<()> {
    let (_, b) = thirds(t);
    t.fault_mid_burst(0..b, &[sink], || async move {
        t.services.signal(service, signal)?;
        tokio::time::sleep(t.outage).await;
        match signal {
            Signal::SIGSTOP => t.services.signal(service, Signal::SIGCONT),
            _ => t.services.start(service).await,
        }
    })
    .await?;
    t.post(b..t.tweets).await?;
    let refused = match t.metrics().await {
        Some(m) => m.sum("weather_runner_requests_total", &[("service", sink), ("status", "503")]),
        None => 0.0,
    };
    // Scale-to-zero: a replica started while the store is frozen is not ready until it can reach
    // the store, so the outage may show only as deliveries held at the activator, not as 503s.
    // The audit still checks that nothing was lost or counted twice.
    if t.variant.mode == Mode::AlwaysOn {
        t.check(refused > 0.0, || format!("{sink} never answered 503, so the outage was not felt"));
    }
    Ok(())
}

/// Kafka SIGKILLed (started again after `down`) or frozen for `down`, mid-burst: ingest cannot
/// write meanwhile and answers 503 (not stored) or 504 (outcome unknown); the client retries.
async fn kafka_down(t: &Trial, signal: Signal, down: Duration) -> anyhow::Result<()> {
    let (_, b) = thirds(t);
    t.fault_mid_burst(0..b, &[], || async move {
        t.services.signal(Service::Kafka, signal)?;
        tokio::time::sleep(down).await;
        match signal {
            Signal::SIGSTOP => t.services.signal(Service::Kafka, Signal::SIGCONT),
            _ => t.services.start(Service::Kafka).await,
        }
    })
    .await?;
    t.post(b..t.tweets).await
}

/// Records that are not tweets between two bursts: each of the two KafkaSources dead-letters
/// each — a letter too large for Kafka without its data, none skipped.
async fn poison(t: &Trial, records: &[Vec<u8>]) -> anyhow::Result<()> {
    let (a, _) = thirds(t);
    t.post(0..a).await?;
    t.write_raw(records).await?;
    t.post(a..t.tweets).await?;
    t.state.wait_delivered(Duration::from_secs(180)).await?;
    let letters = 2 * records.len() as i64;
    let dead = t.state.snapshot().await?.dead_lettered;
    t.check(dead == letters, || format!("{dead} dead letters, expected {letters}"));
    let refused = match t.metrics().await {
        Some(m) => m.sum("weather_dead_letters_refused_total", &[]),
        None => f64::NAN,
    };
    t.check(refused == 0.0, || format!("weather_dead_letters_refused_total is {refused}, expected 0"));
    Ok(())
}

/// Redis down past the retry budget: every delivery of the burst is dead-lettered; Redis back,
/// the letters replayed once apply, replayed again change nothing.
async fn outage_past_budget_then_replay(t: &Trial) -> anyhow::Result<()> {
    let (_, b) = thirds(t);
    let fired =
        t.fault_mid_burst(0..b, &["counter"], || async move {
            t.services.signal(Service::Redis, Signal::SIGKILL)
        })
        .await?;
    // Every record of the burst is past its budget once the topic is committed.
    t.state.wait_delivered(past_budget(t)).await?;
    if fired {
        t.services.start(Service::Redis).await?;
    }
    t.post(b..t.tweets).await?;
    replay_letters(t).await
}

/// The dead-letter topic deleted, then Redis SIGKILLed mid-burst with a retry budget of
/// seconds: counter's deliveries fail for good while Kafka refuses their letters (unknown
/// topic). Each partition must wait at its first such record — the runner's
/// `weather_runner_dead_letter_waiting_offset` names it — and commit nothing past it; the topic
/// re-created and Redis back, the letters are written and replayed, and every tweet is
/// counted once.
async fn dead_letter_topic_missing(t: &Trial) -> anyhow::Result<()> {
    let (a, b) = thirds(t);
    let brokers = &t.pipeline.stack.kafka_brokers;
    let topic = t.state.dead_letters.clone();
    t.post(0..a).await?;
    crate::state::kafka::delete_topic(brokers, &topic).await?;
    let fired =
        t.fault_mid_burst(a..b, &["counter"], || async move {
            t.services.signal(Service::Redis, Signal::SIGKILL)
        })
        .await?;
    let mut waiting = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while fired && waiting.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(m) = t.metrics().await {
            waiting = m.by("weather_runner_dead_letter_waiting_offset", "partition", &[]);
        }
    }
    t.check(!fired || !waiting.is_empty(), || {
        "no partition waited for its dead letter while the dead-letter topic was missing".into()
    });
    runner::create_topics(brokers, std::slice::from_ref(&topic)).await?;
    if fired {
        t.services.start(Service::Redis).await?;
    }
    t.post(b..t.tweets).await?;
    replay_letters(t).await
}

/// How long the records of an outage past the budget take to be dead-lettered. Each attempt
/// on a counter whose Redis is dead takes about its `REDIS_TIMEOUT_MS` (2 s), so a window of 50
/// deliveries per partition spends its 12 attempts in 30–70 s (measured); the full row's 666
/// tweets put up to ~250 records in one partition, five windows.
fn past_budget(t: &Trial) -> Duration {
    Duration::from_secs(if t.short { 120 } else { 480 })
}

/// Waits until every record is delivered or dead-lettered, replays the letters (they must all
/// apply, and some must exist), then replays again: that changes nothing.
async fn replay_letters(t: &Trial) -> anyhow::Result<()> {
    t.state.wait_delivered(past_budget(t)).await?;
    let dead = t.state.snapshot().await?.dead_lettered;
    let replay = ReplayArgs::new(t.out.clone(), t.pipeline.sinks()?);
    let brokers = &t.pipeline.stack.kafka_brokers;
    let first = replay::run(brokers, &t.state.dead_letters, &replay).await?;
    t.replayed(first.applied);
    let counted = t.state.counted().await?;
    let second = replay::run(brokers, &t.state.dead_letters, &replay).await?;
    t.check(dead > 0, || "nothing was dead-lettered: the outage did not outlast the budget".into());
    t.check(first.ok(), || format!("first replay: {first:?}"));
    t.check(second.applied == 0, || format!("a second replay applied {} letters", second.applied));
    t.check(t.state.counted().await? == counted, || "a second replay changed the counts".into());
    Ok(())
}

/// Redis frozen for longer than the consumer's `max.poll.interval.ms` (plus the outage) while
/// tweets arrive at a steady rate: counter's partitions fall further behind than the
/// read-ahead, and the source must pause them and go on polling. Checked: partitions paused
/// during the freeze, no rebalance (`weather_runner_rebalances_total` 0), every record
/// delivered within 2 minutes of the burst's end; the audit, nothing lost or doubled.
async fn redis_frozen_past_poll_interval(t: &Trial) -> anyhow::Result<()> {
    let poll_interval = Duration::from_secs(if t.short { 10 } else { 300 });
    let freeze = poll_interval + t.outage;
    let rate = t.variant.scenario.pace(t.short).expect("a paced scenario");
    // The burst goes on for 10 s after Redis is back.
    let tweets = (freeze + Duration::from_secs(10)).as_secs() as usize * rate as usize;
    let paused = std::sync::Mutex::new(0.0);
    let record = &paused;
    let fired = t
        .fault_mid_burst(0..tweets, &["counter"], || async move {
            t.services.signal(Service::Redis, Signal::SIGSTOP)?;
            tokio::time::sleep(freeze).await;
            if let Some(m) = t.metrics().await {
                *record.lock().expect("paused lock") = m.sum("weather_runner_partitions_paused", &[]);
            }
            t.services.signal(Service::Redis, Signal::SIGCONT)
        })
        .await?;
    let delivered = t.state.wait_delivered(Duration::from_secs(120)).await;
    t.check(delivered.is_ok(), || {
        format!("not delivered within 2 minutes of the burst's end: {delivered:?}")
    });
    let rebalances = match t.metrics().await {
        Some(m) => m.sum("weather_runner_rebalances_total", &[]),
        None => f64::NAN,
    };
    let paused = paused.into_inner().expect("paused lock");
    t.check(!fired || paused > 0.0, || {
        format!("no partition was paused at the end of the freeze ({paused})")
    });
    t.check(rebalances == 0.0, || format!("the consumers lost their partitions {rebalances} times"));
    Ok(())
}

/// A backlog of dead letters such as a long outage leaves: tweets written to Kafka while the
/// runner's sources are off, and for each tweet a letter to each sink written as the runner
/// writes one (the sources' offsets committed past them, as the runner would). The replay is
/// stopped after a third of the letters and run again: the second run must go on from the
/// progress the first committed — together they read every letter once and apply each once.
async fn replay_backlog(t: &Trial) -> anyhow::Result<()> {
    let tweets = if t.short { 2_000 } else { 100_000 };
    t.write_to_kafka(0..tweets).await?;
    let letters = write_letters(t).await?;
    let brokers = &t.pipeline.stack.kafka_brokers;
    let args = ReplayArgs { from_start: false, ..ReplayArgs::new(t.out.clone(), t.pipeline.sinks()?) };
    let first =
        replay::run(brokers, &t.state.dead_letters, &ReplayArgs { limit: Some(letters / 3), ..args.clone() })
            .await?;
    let second = replay::run(brokers, &t.state.dead_letters, &args).await?;
    t.replayed(first.applied + second.applied);
    let seconds = first.seconds + second.seconds;
    println!(
        "      replayed {letters} letters in {seconds:.0} s ({:.0} letters/s) in two runs",
        letters as f64 / seconds
    );
    t.check(first.ok() && second.ok(), || format!("replays: {first:?}, {second:?}"));
    t.check(first.letters < letters, || format!("the first run, limited, read all {letters} letters"));
    t.check(first.letters + second.letters == letters, || {
        format!(
            "the runs read {} + {} letters of {letters}: not resumed where committed",
            first.letters, second.letters
        )
    });
    t.check(first.applied + second.applied == letters, || {
        format!("{} + {} letters applied of {letters}", first.applied, second.applied)
    });
    Ok(())
}

/// A letter for every record of the run's topic to the sink of each KafkaSource, as the runner
/// writes one after a delivery failed for good (503), and each source's group committed past
/// the records: how many letters.
async fn write_letters(t: &Trial) -> anyhow::Result<u64> {
    let brokers = &t.pipeline.stack.kafka_brokers;
    let sources = t.pipeline.stack.kafka_sources()?;
    let records = crate::state::kafka::messages(brokers, &t.state.topic, Duration::from_secs(300)).await?;
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let mut letters = Vec::new();
    for source in &sources {
        let sink_url = t.pipeline.url(&source.sink)?;
        for record in &records {
            let letter = runner::source::letter(record, source, &sink_url, Some(503), b"outage");
            letters.push((MessageRecord::from_event(letter)?, record.key().map(<[u8]>::to_vec)));
        }
    }
    let written: Vec<anyhow::Result<()>> = futures::stream::iter(&letters)
        .map(|(letter, key)| {
            let mut out = FutureRecord::to(&t.state.dead_letters).message_record(letter);
            if let Some(key) = key {
                out = out.key(key);
            }
            let producer = &producer;
            async move {
                producer
                    .send(out, Timeout::After(Duration::from_secs(10)))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e.into())
            }
        })
        .buffer_unordered(1024)
        .collect()
        .await;
    written.into_iter().collect::<anyhow::Result<()>>()?;
    let mut end = TopicPartitionList::new();
    for (partition, _, high) in crate::state::kafka::watermarks(brokers, &t.state.topic)? {
        end.add_partition_offset(&t.state.topic, partition, Offset::Offset(high))?;
    }
    for source in &sources {
        crate::state::kafka::consumer(brokers, Some(&source.consumer_group))?
            .commit(&end, CommitMode::Sync)?;
    }
    Ok(letters.len() as u64)
}

/// One tweet posted three times with one key (with producer frozen before the second when
/// `producer_stopped`: that answer is not a 202, and the key's next tries are); every 202
/// carries the same id, and the audit finds it counted and archived once.
async fn idempotency_key(t: &Trial, producer_stopped: bool) -> anyhow::Result<()> {
    let key = t.key(0).expect("a keyed row");
    let first = t.post_once(0, Some(&key)).await?;
    if producer_stopped {
        t.pipeline.signal_function("producer", Signal::SIGSTOP)?;
        let during = t.post_once(0, Some(&key)).await;
        t.pipeline.signal_function("producer", Signal::SIGCONT)?;
        let during = during?;
        t.check(during.0 != 202, || format!("with producer stopped ingest answered {}", during.0));
    }
    let answers = [first, t.post_once(0, Some(&key)).await?, t.post_once(0, Some(&key)).await?];
    t.check(answers.iter().all(|(s, _)| *s == 202), || format!("answers {answers:?}"));
    t.check(answers.iter().all(|(_, id)| *id == answers[0].1), || format!("ids differ: {answers:?}"));
    t.post(1..(t.tweets / 3).max(2)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event: EventKind, function: &str, pid: u32, signal: Option<i32>) -> ScaleEvent {
        let json = serde_json::json!({"t_ms": 1, "event": event, "function": function, "pid": pid});
        ScaleEvent { signal, ..serde_json::from_value(json).unwrap() }
    }

    #[test]
    fn a_killed_replica_is_replaced_when_the_events_say_so() {
        let exit = |pid| event(EventKind::Exit, "counter", pid, Some(9));
        let ready = |pid| event(EventKind::Ready, "counter", pid, None);
        let cases: [(&str, Vec<ScaleEvent>, bool); 5] = [
            ("exit then a new replica", vec![ready(1), exit(1), ready(2)], true),
            ("no exit event", vec![ready(1), ready(2)], false),
            ("exited, never replaced", vec![ready(1), exit(1)], false),
            ("replaced before it exited", vec![ready(1), ready(2), exit(1)], false),
            (
                "exited on its own, not killed",
                vec![ready(1), event(EventKind::Exit, "counter", 1, None), ready(2)],
                false,
            ),
        ];
        for (case, events, expected) in cases {
            assert_eq!(replaced(&events, "counter", &[1]), expected, "{case}");
        }
        let other = vec![exit(1), event(EventKind::Ready, "archiver", 2, None)];
        assert!(!replaced(&other, "counter", &[1]), "another function's replica");
        assert!(!replaced(&[], "counter", &[]), "nothing killed");
    }

    #[test]
    fn every_scenario_has_rows_and_outages_run_in_both_modes() {
        use clap::ValueEnum;
        for scenario in Scenario::value_variants() {
            let rows = scenario.variants();
            assert!(!rows.is_empty(), "{scenario}");
            assert!(rows.iter().all(|r| r.scenario == *scenario));
        }
        for outage in [Scenario::RedisSigkill, Scenario::MongodbSigstop, Scenario::KafkaSigstop] {
            let modes: Vec<Mode> = outage.variants().iter().map(|r| r.mode).collect();
            assert!(modes.contains(&Mode::AlwaysOn) && modes.contains(&Mode::ScaleToZero), "{outage}");
        }
        assert_eq!(Scenario::RedisSigkill.to_string(), "redis-sigkill");
        assert_eq!(
            serde_json::to_value(Scenario::OutagePastBudgetThenReplay).unwrap(),
            "outage-past-budget-then-replay"
        );
    }
}
