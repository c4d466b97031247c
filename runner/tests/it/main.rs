//! End-to-end tests through the local runner on the real stack (Kafka, Redis, FerretDB): tweets
//! posted to ingest must be counted and archived exactly once, whatever happens on the way.
//! Each test isolates itself with its own run id (topics, consumer groups, key prefix,
//! database) and its own ports; the function binaries come from `cargo build --workspace`.
//! `scale.rs` runs the same pipeline behind the scale-to-zero activator.

mod scale;
mod secrets;

use counter::Keyspace;
use futures::{StreamExt, stream};
use nix::{sys::signal, unistd::Pid};
use rdkafka::{
    ClientConfig, Message,
    consumer::{BaseConsumer, Consumer},
    message::Headers,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use redis::AsyncCommands;
use runner::{
    Options, Runner, Stack,
    events::{EventKind, ScaleEvent},
};
use std::{collections::BTreeMap, path::PathBuf, time::Duration};
use testkit::{CLIMAS, COUNTRIES, tweet};

fn options() -> Options {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_runner")).parent().unwrap().to_path_buf();
    let run_id = testkit::unique("t");
    Options {
        stack: Stack {
            manifests: root.join("knative/base"),
            kafka_brokers: testkit::kafka_brokers(),
            redis_url: testkit::redis_url().into(),
            mongodb_uri: testkit::mongodb_uri().into(),
            run_id: Some(run_id.clone()),
        },
        bin_dir: Some(bin_dir),
        log_dir: root.join("target/runner-tests").join(&run_id),
        base_port: 0, // every port the OS's choice: `Runner::ports` says which
        deliveries: 1,
        no_sources: false,
        mode: runner::Mode::AlwaysOn,
        overlays: None,
        idle_period_ms: None,
        stable_window_ms: None,
        events: None,
        backoff_delay_ms: None,
        max_scale: None,
        read_ahead: 1024,
        max_poll_interval_ms: None,
    }
}

/// Posts tweets `range` to ingest, 16 at a time; every one must be accepted.
async fn post(runner: &Runner, range: std::ops::Range<usize>) {
    let client = reqwest::Client::new();
    let url = format!("{}/input", runner.functions.url("ingest").unwrap());
    let statuses: Vec<_> = stream::iter(range)
        .map(|i| {
            let request = client
                .post(&url)
                .header("content-type", "application/json")
                .body(tweet(i).to_string())
                .timeout(Duration::from_secs(20));
            async move { (i, request.send().await.map(|r| r.status().as_u16())) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (i, status) in statuses {
        assert_eq!(status.as_ref().ok(), Some(&202), "tweet {i}: {status:?}");
    }
}

/// The counts `n` tweets must leave, per country, condition and pair.
fn expected(n: usize) -> (BTreeMap<String, i64>, BTreeMap<String, i64>, BTreeMap<String, i64>) {
    let (mut countries, mut climas, mut pairs) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for i in 0..n {
        let (pais, clima) = (COUNTRIES[i % COUNTRIES.len()], CLIMAS[i % CLIMAS.len()]);
        *countries.entry(pais.to_owned()).or_default() += 1;
        *climas.entry(clima.to_owned()).or_default() += 1;
        *pairs.entry(format!("{pais}/{clima}")).or_default() += 1;
    }
    (countries, climas, pairs)
}

/// Waits for delivery, then checks Redis and MongoDB hold exactly `n` tweets.
async fn assert_exact(runner: &Runner, n: usize) {
    runner.drain(Duration::from_secs(90)).await.expect("every record delivered");
    let options = &runner.options;
    let mut redis = redis::Client::open(options.stack.redis_url.expose_secret())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is down — start it with `dev/stack up`");
    let counted = keyspace(options).read(&mut redis).await.unwrap();
    assert_eq!(counted.total, n as i64, "total");
    assert_eq!((counted.countries, counted.climas, counted.country_clima), expected(n));

    let db = mongodb::Client::with_uri_str(options.stack.mongodb_uri.expose_secret())
        .await
        .unwrap()
        .database(&database(options));
    let tweets = db.collection::<mongodb::bson::Document>("tweets");
    assert_eq!(tweets.count_documents(Default::default()).await.unwrap(), n as u64, "archived");
}

/// Removes what a test left in Redis and MongoDB (topics stay; they are small and unique).
async fn clean(options: &Options) {
    let mut redis = redis::Client::open(options.stack.redis_url.expose_secret())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis.keys(keyspace(options).pattern()).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis.del(keys).await.unwrap();
    }
    let client = mongodb::Client::with_uri_str(options.stack.mongodb_uri.expose_secret()).await.unwrap();
    client.database(&database(options)).drop().await.unwrap();
}

/// counter's keys in this run, as the manifests and the run id make them.
fn keyspace(options: &Options) -> Keyspace {
    Keyspace::new(&options.stack.env_of("counter", "REDIS_KEY_PREFIX").unwrap())
}

/// archiver's database in this run.
fn database(options: &Options) -> String {
    options.stack.env_of("archiver", "MONGODB_DATABASE").unwrap()
}

/// The value of the first sample of `/metrics` whose line starts with `series`, summed over
/// every replica of `function`.
async fn metric(runner: &Runner, function: &str, series: &str) -> f64 {
    let urls = runner.replica_urls(function);
    assert!(!urls.is_empty(), "{function} has no replica");
    let mut sum = 0.0;
    for url in urls {
        let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("{function}: no {series}\n{text}"));
        sum += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
    }
    sum
}

/// The sum of the runner's own series starting with `series` for the Service `service`.
async fn runner_metric(runner: &Runner, series: &str, service: &str) -> f64 {
    let text = reqwest::get(format!("http://{}/metrics", runner.ports().metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let label = format!("service=\"{service}\"");
    text.lines()
        .filter(|l| l.starts_with(series) && l.contains(&label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn tweets_are_counted_and_archived_exactly_once() {
    let runner = Runner::start(options()).await.expect("runner starts");
    post(&runner, 0..200).await;
    assert_exact(&runner, 200).await;
    let accepted =
        r#"weather_http_requests_total{function="ingest",route="/input",method="POST",status="202"}"#;
    assert_eq!(metric(&runner, "ingest", accepted).await, 200.0);
    assert_eq!(metric(&runner, "producer", "weather_tweets_published_total").await, 200.0);
    assert_eq!(metric(&runner, "producer", "weather_kafka_produce_duration_seconds_count").await, 200.0);
    for sink in ["counter", "archiver"] {
        assert_eq!(metric(&runner, sink, "weather_events_applied_total").await, 200.0, "{sink}");
        assert_eq!(metric(&runner, sink, "weather_events_duplicate_total").await, 0.0, "{sink}");
        assert!(metric(&runner, sink, "weather_process_start_to_ready_seconds").await > 0.0, "{sink}");
        // The deliveries enter the sinks' activators in process and are counted there as
        // requests on their ports would be. (One registry serves every runner of this test
        // binary, and other tests deliver at the same time: at least this test's 200.)
        let answered = runner_metric(&runner, "weather_runner_requests_total{", sink).await;
        assert!(answered >= 200.0, "{sink}: {answered} deliveries counted by the activator");
        let timed = runner_metric(&runner, "weather_runner_request_duration_seconds_count{", sink).await;
        assert!(timed >= 200.0, "{sink}: {timed} deliveries timed by the activator");
    }
    clean(&runner.options).await;
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_delivered_twice_still_counts_once() {
    let runner = Runner::start(Options { deliveries: 2, ..options() }).await.expect("runner starts");
    post(&runner, 0..150).await;
    assert_exact(&runner, 150).await;
    for sink in ["counter", "archiver"] {
        assert_eq!(metric(&runner, sink, "weather_events_applied_total").await, 150.0, "{sink}");
        assert_eq!(metric(&runner, sink, "weather_events_duplicate_total").await, 150.0, "{sink}");
    }
    clean(&runner.options).await;
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn counter_killed_mid_burst_loses_and_doubles_nothing() {
    let runner = Runner::start(options()).await.expect("runner starts");
    post(&runner, 0..100).await;
    runner.kill("counter").unwrap();
    post(&runner, 100..200).await;
    // The activator replaced it, as the kubelet would.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while runner.replica_urls("counter").is_empty() {
        assert!(std::time::Instant::now() < deadline, "counter was not replaced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    post(&runner, 200..300).await;
    assert_exact(&runner, 300).await;
    // The kill is an `exit` event with its signal, for the process the runner had started.
    let events = runner.events();
    let started: Vec<Option<u32>> = events
        .iter()
        .filter(|e| e.event == EventKind::Start && e.function == "counter")
        .map(|e| e.pid)
        .collect();
    let killed: Vec<&ScaleEvent> =
        events.iter().filter(|e| e.event == EventKind::Exit && e.function == "counter").collect();
    assert_eq!(killed.len(), 1, "{events:#?}");
    assert_eq!((killed[0].signal, killed[0].code), (Some(9), None));
    assert_eq!(killed[0].pid, started[0]);
    clean(&runner.options).await;
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn base_port_0_binds_what_the_os_chooses_and_says_where() {
    let options = options();
    let path = options.log_dir.join("events.jsonl");
    let runner =
        Runner::start(Options { events: Some(path.clone()), ..options }).await.expect("runner starts");
    let ports = runner.ports().clone();
    assert_eq!(ports.functions.keys().collect::<Vec<_>>(), ["archiver", "counter", "ingest", "producer"]);
    // The first line of the events file, as a script reads it.
    let text = std::fs::read_to_string(&path).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["event"], "listening");
    for (name, address) in &ports.functions {
        assert_ne!(address.port(), 0);
        assert_eq!(first["addresses"][name], address.to_string(), "{name}");
        assert_eq!(runner.functions.url(name).unwrap(), format!("http://{address}"));
        let path = &runner.functions.get(name).unwrap().service.readiness_path;
        let ready = reqwest::get(format!("http://{address}{path}")).await.unwrap();
        assert!(ready.status().is_success(), "{name} through its public address: {}", ready.status());
    }
    assert_eq!(first["metrics"], ports.metrics.to_string());
    let metrics =
        reqwest::get(format!("http://{}/metrics", ports.metrics)).await.unwrap().text().await.unwrap();
    for source in ["counter", "archiver"] {
        let label = format!("source=\"{source}\"");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("weather_runner_deliveries_in_flight{") && l.contains(&label)),
            "no deliveries-in-flight gauge for {source} in\n{metrics}"
        );
    }
    runner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_port_another_program_took_is_told_apart() {
    let options = options();
    let (numbered, _) = runner::functions::numbered_ports(&options.stack, 0).unwrap();
    let functions = runner::functions::Functions::new(
        &options.stack,
        options.bin_dir.clone().unwrap(),
        options.log_dir.clone(),
        &numbered.into_iter().collect(),
    )
    .unwrap();
    let counter = functions.get("counter").unwrap();
    // On a free port counter gets ready (so its environment is fine)…
    let mut process = functions.exec(counter, runner::functions::free_port().unwrap()).unwrap();
    functions.wait_ready(counter, &mut process).await.expect("counter gets ready on a free port");
    process.stop("counter").await.unwrap();
    // …and on a port another program listens on it exits, and the runner says why.
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut process = functions.exec(counter, port).unwrap();
    match functions.wait_ready(counter, &mut process).await {
        Err(runner::functions::StartError::PortTaken { function, port: p }) => {
            assert_eq!((function.as_str(), p), ("counter", port))
        }
        other => panic!("expected PortTaken, got {other:?}"),
    }
}

/// A Redis of the test's own (so stopping it disturbs no other test), persisting every write.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    process: tokio::process::Child,
}

impl OwnRedis {
    async fn start(port: u16, dir: PathBuf) -> OwnRedis {
        std::fs::create_dir_all(&dir).unwrap();
        let process = tokio::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (`dev/stack install`)");
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while client.get_multiplexed_async_connection().await.is_err() {
            assert!(std::time::Instant::now() < deadline, "the test's redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        OwnRedis { port, dir, process }
    }

    /// SIGTERM: Redis writes its append-only file and exits.
    async fn stop(mut self) -> (u16, PathBuf) {
        signal::kill(Pid::from_raw(self.process.id().unwrap() as i32), signal::Signal::SIGTERM).unwrap();
        self.process.wait().await.unwrap();
        (self.port, self.dir)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_stopped_mid_burst_is_retried_not_lost() {
    let dir = std::env::temp_dir().join(format!("redis-{}", uuid::Uuid::new_v4()));
    let redis = OwnRedis::start(testkit::free_ports(1), dir).await;
    let mut options = options();
    options.stack.redis_url = format!("redis://127.0.0.1:{}/0", redis.port).into();
    let runner = Runner::start(options).await.expect("runner starts");
    post(&runner, 0..100).await;
    let (port, dir) = redis.stop().await;
    post(&runner, 100..200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let redis = OwnRedis::start(port, dir).await;
    post(&runner, 200..250).await;
    assert_exact(&runner, 250).await;
    let log = std::fs::read_to_string(runner.functions.log_file("counter")).unwrap();
    assert!(log.contains("Store update failed"), "counter never saw Redis down, so nothing was retried");
    runner.stop().await;
    let (_, dir) = redis.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_garbage_record_is_dead_lettered_and_the_pipeline_keeps_flowing() {
    let runner = Runner::start(options()).await.expect("runner starts");
    let options = runner.options.clone();
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &options.stack.kafka_brokers).create().unwrap();
    let topic = options.stack.topic("messages");
    producer
        .send(
            FutureRecord::to(&topic).key("Chile").payload(&b"\xff not a tweet"[..]),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .expect("Kafka is down — start it with `dev/stack up`");
    post(&runner, 0..50).await;
    assert_exact(&runner, 50).await;
    assert_eq!(runner.dead_lettered(), 2, "one dead letter per KafkaSource");

    let dlq = options.stack.topic("messages-dlq");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &options.stack.kafka_brokers)
        .set("group.id", format!("{dlq}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&dlq]).unwrap();
    let mut letters = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while letters.len() < 2 && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers: BTreeMap<String, String> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into())
                        })
                        .collect()
                })
                .unwrap_or_default();
            letters.push((headers, m.payload().map(<[u8]>::to_vec)));
        }
    }
    assert_eq!(letters.len(), 2, "two dead letters");
    let mut destinations = Vec::new();
    for (headers, payload) in letters {
        assert_eq!(headers.get("ce_type").map(String::as_str), Some("dev.knative.kafka.event"));
        assert_eq!(headers.get("ce_knativeerrorcode").map(String::as_str), Some("400"));
        assert_eq!(headers.get("ce_key").map(String::as_str), Some("Chile"));
        assert_eq!(payload.as_deref(), Some(&b"\xff not a tweet"[..]), "the record is kept as it was");
        destinations.extend(headers.get("ce_knativeerrordest").cloned());
    }
    // Each sink's public URL, where `tools replay` sends, though deliveries enter in process.
    destinations.sort();
    let mut sinks = ["counter", "archiver"].map(|sink| runner.functions.url(sink).unwrap());
    sinks.sort();
    assert_eq!(destinations, sinks);
    clean(&options).await;
    runner.stop().await;
}

/// The bug this guards against: offsets committed one past what was delivered, so the first
/// record written to each partition while the runner was down was never delivered.
#[tokio::test(flavor = "multi_thread")]
async fn records_written_while_the_runner_was_down_are_all_delivered() {
    let options = options();
    let runner = Runner::start(options.clone()).await.expect("runner starts");
    post(&runner, 0..30).await;
    runner.drain(Duration::from_secs(60)).await.expect("delivered");
    runner.stop().await;

    // Nine keyed tweets, three per partition at least once, straight into the topic.
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", &options.stack.kafka_brokers).create().unwrap();
    let topic = options.stack.topic("messages");
    for i in 30..39 {
        let pais = COUNTRIES[i % COUNTRIES.len()];
        producer
            .send(
                FutureRecord::to(&topic).key(pais).payload(&tweet(i).to_string()),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .expect("Kafka takes the record");
    }
    let runner = Runner::start(options).await.expect("runner starts again");
    assert_exact(&runner, 39).await;
    clean(&runner.options).await;
    runner.stop().await;
}
