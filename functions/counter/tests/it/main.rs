//! `counter` integration tests: CloudEvents through `router` with `oneshot`, counted in the
//! local Redis (`REDIS_URL`, default `redis://127.0.0.1:6379/0`) under a random key prefix, with
//! positions of real records in a topic of the test's own on the local Kafka (`KAFKA_BROKERS`,
//! default `127.0.0.1:9092`); a test that must change Redis's configuration starts a Redis of
//! its own ([`durability`]).

mod durability;
mod positions;

mod secrets;

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use common::event::{KAFKA_EVENT_TYPE, TWEET_TYPE};
use counter::{Config, Counts, Keyspace};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord, Producer},
    util::Timeout,
};
use redis::AsyncCommands;
use serde_json::json;
use std::{collections::HashMap, sync::Arc, time::Duration};
use testkit::{
    event::{binary, send, structured, tweet as tweet_event},
    kafka_brokers, redis_url, unique,
};

/// Bound on producing and on topic administration.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(20);

/// A counter with keys and a topic of its own, and connections to read the one and write the
/// other.
struct Fixture {
    app: Router,
    prefix: String,
    redis: redis::aio::MultiplexedConnection,
    kafka: Kafka,
    /// The topic counter consumes; its dead-letter topic is `{topic}-dlq`, created only by the
    /// tests that need it.
    topic: String,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with_ttl(600).await
    }

    /// A counter whose dedup marks live `ttl_s` seconds, on a fresh topic of 3 partitions.
    async fn with_ttl(ttl_s: u64) -> Fixture {
        let prefix = format!("it:{}:", uuid::Uuid::now_v7().simple());
        let redis = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {} is needed and unreachable: {e}", redis_url()));
        let kafka = Kafka::new();
        let topic = unique("it-counter-");
        kafka.create(&topic, 3).await;
        let app = app(&config(&redis_url(), &prefix, &topic, 2_000, ttl_s));
        Fixture { app, prefix, redis, kafka, topic }
    }

    fn keys(&self) -> Keyspace {
        Keyspace::new(&self.prefix)
    }

    async fn total(&mut self) -> Option<i64> {
        self.redis.get(self.keys().total()).await.unwrap()
    }

    async fn hash(&mut self, key: fn(&Keyspace) -> String) -> HashMap<String, i64> {
        self.redis.hgetall(key(&self.keys())).await.unwrap()
    }

    /// Every key of this test.
    async fn key_names(&mut self) -> Vec<String> {
        let mut keys: Vec<String> = self.redis.keys(self.keys().pattern()).await.unwrap();
        keys.sort();
        keys
    }

    /// Writes `n` records of `tweet` to `partition` of the test's topic; their offsets.
    async fn records(&self, partition: i32, n: usize, tweet: &str) -> Vec<u64> {
        self.kafka.produce(&self.topic, partition, n, tweet).await
    }

    /// Removes every key and topic of this test.
    async fn clean(mut self) {
        let keys = self.key_names().await;
        if !keys.is_empty() {
            let _: () = self.redis.del(keys).await.unwrap();
        }
        self.kafka.delete(&[&self.topic, &format!("{}-dlq", self.topic)]).await;
    }
}

fn config(redis_url: &str, prefix: &str, topic: &str, redis_timeout_ms: u64, dedup_ttl_s: u64) -> Config {
    Config {
        port: 0,
        host: "127.0.0.1".into(),
        redis_url: redis_url.into(),
        key_prefix: prefix.into(),
        kafka_brokers: kafka_brokers(),
        topic: topic.into(),
        dead_letter_topic: format!("{topic}-dlq"),
        kafka_timeout_ms: 5_000,
        dedup_ttl_s,
        redis_timeout_ms,
    }
}

fn app(config: &Config) -> Router {
    common::sink::router(Arc::new(Counts::new(config).expect("a valid Redis URL")))
}

/// The local Kafka: topics of the tests' own, and records in them.
struct Kafka {
    admin: AdminClient<DefaultClientContext>,
    producer: FutureProducer,
}

impl Kafka {
    fn new() -> Kafka {
        let config = || {
            let mut config = ClientConfig::new();
            config.set("bootstrap.servers", kafka_brokers());
            config
        };
        Kafka {
            admin: config().create().expect("admin config is valid"),
            producer: config()
                .set("acks", "all")
                .set("message.timeout.ms", KAFKA_TIMEOUT.as_millis().to_string())
                .create()
                .expect("producer config is valid"),
        }
    }

    fn options() -> AdminOptions {
        AdminOptions::new().operation_timeout(Some(Timeout::After(KAFKA_TIMEOUT)))
    }

    /// Creates `topic`; a topic of that name still being deleted is waited for.
    async fn create(&self, topic: &str, partitions: i32) {
        let deadline = tokio::time::Instant::now() + KAFKA_TIMEOUT;
        loop {
            let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
            let results =
                self.admin.create_topics(&[new], &Kafka::options()).await.unwrap_or_else(|e| {
                    panic!("Kafka at {} is needed and unreachable: {e}", kafka_brokers())
                });
            match results.into_iter().next().expect("one result per topic") {
                Ok(_) => return,
                Err((_, code)) if tokio::time::Instant::now() < deadline => {
                    // TopicAlreadyExists while the deletion of the same name completes.
                    eprintln!("creating {topic}: {code}, again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err((_, code)) => panic!("creating topic {topic}: {code}"),
            }
        }
    }

    async fn delete(&self, topics: &[&str]) {
        // Best effort: a leftover random topic harms no other test.
        let _ = self.admin.delete_topics(topics, &Kafka::options()).await;
    }

    /// Grows `topic` to `total` partitions, and waits until the producer knows them.
    async fn add_partitions(&self, topic: &str, total: usize) {
        let results = self
            .admin
            .create_partitions(&[NewPartitions::new(topic, total)], &Kafka::options())
            .await
            .unwrap();
        for result in results {
            result.unwrap_or_else(|(name, code)| panic!("adding partitions to {name}: {code}"));
        }
        let deadline = tokio::time::Instant::now() + KAFKA_TIMEOUT;
        loop {
            // A metadata request for the topic updates the producer's view of it (blocking call).
            let (producer, name) = (self.producer.clone(), topic.to_owned());
            let known = tokio::task::spawn_blocking(move || {
                let metadata = producer.client().fetch_metadata(Some(&name), Duration::from_secs(5));
                metadata.map(|m| m.topics().first().map_or(0, |t| t.partitions().len())).unwrap_or(0)
            })
            .await
            .unwrap();
            if known == total {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{topic} still shows {known} partitions");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes `n` records of `tweet` to `partition` of `topic`; their offsets.
    async fn produce(&self, topic: &str, partition: i32, n: usize, tweet: &str) -> Vec<u64> {
        let sends = (0..n).map(|_| {
            self.producer
                .send(FutureRecord::<(), _>::to(topic).partition(partition).payload(tweet), KAFKA_TIMEOUT)
        });
        let mut offsets = Vec::with_capacity(n);
        for delivery in futures::future::join_all(sends).await {
            let delivery = delivery.unwrap_or_else(|(e, _)| panic!("producing to {topic}/{partition}: {e}"));
            assert_eq!(delivery.partition, partition);
            offsets.push(u64::try_from(delivery.offset).unwrap());
        }
        offsets.sort_unstable();
        offsets
    }
}

/// A record of `topic` at `partition`/`offset`, wrapped as Knative wraps a plain record (the
/// source names the topic), with `extra` headers.
fn record_of(topic: &str, partition: u32, offset: u64, id: &str, extra: &[(&str, &str)]) -> Request<Body> {
    wrapped(topic, partition, offset, id, r#"{"texto":"Sol","pais":"Chile"}"#, extra)
}

/// [`record_of`] with `tweet` as its data.
fn wrapped(
    topic: &str,
    partition: u32,
    offset: u64,
    id: &str,
    tweet: &str,
    extra: &[(&str, &str)],
) -> Request<Body> {
    let source = format!("/apis/v1/namespaces/weather/kafkasources/counter#{topic}");
    let (p, o) = (partition.to_string(), offset.to_string());
    let mut headers = vec![
        ("ce-source", source.as_str()),
        ("ce-knativekafkapartition", p.as_str()),
        ("ce-knativekafkaoffset", o.as_str()),
    ];
    headers.extend_from_slice(extra);
    binary(id, KAFKA_EVENT_TYPE, tweet, &headers)
}

/// The record at `partition`/`offset` of the fixture's topic, as KafkaSource delivers it.
fn delivered(f: &Fixture, partition: u32, offset: u64, tweet: &str) -> Request<Body> {
    wrapped(&f.topic, partition, offset, &format!("partition:{partition}/offset:{offset}"), tweet, &[])
}

#[tokio::test]
async fn binary_and_structured_events_are_counted() {
    let mut f = Fixture::new().await;
    let (status, body) = send(&f.app, tweet_event("binary-1")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"duplicate": false})));

    let event = json!({
        "specversion": "1.0",
        "id": "structured-1",
        "type": TWEET_TYPE,
        "source": "/it/counter",
        "datacontenttype": "application/json",
        "data": {"texto": "Mucho sol", "pais": "  chile "},
    });
    let (status, body) = send(&f.app, structured(&event)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"duplicate": false})));

    assert_eq!(f.total().await, Some(2));
    assert_eq!(f.hash(Keyspace::countries).await, HashMap::from([("Perú".into(), 1), ("Chile".into(), 1)]));
    assert_eq!(
        f.hash(Keyspace::climas).await,
        HashMap::from([("lluvioso".into(), 1), ("soleado".into(), 1)])
    );
    assert_eq!(
        f.hash(Keyspace::country_clima).await,
        HashMap::from([("Perú/lluvioso".into(), 1), ("Chile/soleado".into(), 1)])
    );
    f.clean().await;
}

#[tokio::test]
async fn a_kafka_record_is_counted_once_however_often_it_is_delivered() {
    let mut f = Fixture::new().await;
    let tweet = r#"{"texto":"Niebla densa","país":"GUATEMALA"}"#;
    let on_0 = f.records(0, 2, tweet).await;
    let on_1 = f.records(1, 1, tweet).await;
    let (status, body) = send(&f.app, delivered(&f, 0, on_0[0], tweet)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"duplicate": false})));
    let (status, body) = send(&f.app, delivered(&f, 0, on_0[0], tweet)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"duplicate": true})));

    // Concurrent redeliveries race on the same bit; exactly one may win, and it already did.
    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (app, request) = (f.app.clone(), delivered(&f, 0, on_0[0], tweet));
        deliveries.spawn(async move { send(&app, request).await });
    }
    while let Some(reply) = deliveries.join_next().await {
        assert_eq!(reply.unwrap(), (StatusCode::OK, json!({"duplicate": true})));
    }

    // The position decides, not the id: another offset is another record.
    assert_eq!(send(&f.app, delivered(&f, 0, on_0[1], tweet)).await.1, json!({"duplicate": false}));
    assert_eq!(send(&f.app, delivered(&f, 1, on_1[0], tweet)).await.1, json!({"duplicate": false}));

    assert_eq!(f.total().await, Some(3));
    assert_eq!(f.hash(Keyspace::countries).await, HashMap::from([("Guatemala".into(), 3)]));
    assert_eq!(f.hash(Keyspace::climas).await, HashMap::from([("niebla".into(), 3)]));
    assert_eq!(f.hash(Keyspace::country_clima).await, HashMap::from([("Guatemala/niebla".into(), 3)]));
    f.clean().await;
}

#[tokio::test]
async fn an_event_without_a_position_is_deduplicated_by_id() {
    let mut f = Fixture::new().await;
    assert_eq!(send(&f.app, tweet_event("same-id")).await, (StatusCode::OK, json!({"duplicate": false})));
    assert_eq!(send(&f.app, tweet_event("same-id")).await, (StatusCode::OK, json!({"duplicate": true})));
    assert_eq!(send(&f.app, tweet_event("other-id")).await, (StatusCode::OK, json!({"duplicate": false})));
    assert_eq!(f.total().await, Some(2));
    assert_eq!(f.hash(Keyspace::countries).await, HashMap::from([("Perú".into(), 2)]));
    f.clean().await;
}

#[tokio::test]
async fn events_that_can_never_be_counted_are_400_and_change_nothing() {
    let mut f = Fixture::new().await;
    let tweet = r#"{"texto":"x","pais":"Chile"}"#;
    // Partition 0 holds one record (offset 0); 1 and 2 none.
    assert_eq!(f.records(0, 1, tweet).await, [0]);
    let not_cloudevent =
        Request::post("/").header("content-type", "application/json").body(Body::from(tweet)).unwrap();
    let bad_structured = Request::post("/")
        .header("content-type", "application/cloudevents+json")
        .body(Body::from("{\"specversion\":\"1.0\",\"id\":"))
        .unwrap();
    let cases = [
        ("not a CloudEvent", not_cloudevent),
        ("malformed structured event", bad_structured),
        (
            "no ce-id",
            Request::post("/")
                .header("ce-specversion", "1.0")
                .header("ce-type", TWEET_TYPE)
                .header("ce-source", "s")
                .body(Body::from(tweet))
                .unwrap(),
        ),
        ("wrong type", binary("a", "com.example.other", tweet, &[])),
        ("no data", binary("b", TWEET_TYPE, "", &[])),
        ("data not JSON", binary("c", TWEET_TYPE, "texto=x", &[])),
        ("data not a tweet", binary("d", TWEET_TYPE, r#"{"texto":"x"}"#, &[])),
        (
            "data invalid UTF-8",
            Request::post("/")
                .header("ce-specversion", "1.0")
                .header("ce-id", "e")
                .header("ce-type", TWEET_TYPE)
                .header("ce-source", "s")
                .header("content-type", "application/json")
                .body(Body::from(&b"{\"texto\":\"\xff\",\"pais\":\"Chile\"}"[..]))
                .unwrap(),
        ),
        (
            "negative offset",
            binary(
                "f",
                KAFKA_EVENT_TYPE,
                tweet,
                &[("ce-knativekafkapartition", "0"), ("ce-knativekafkaoffset", "-1")],
            ),
        ),
        (
            "offset not a number",
            binary(
                "g",
                KAFKA_EVENT_TYPE,
                tweet,
                &[("ce-knativekafkapartition", "0"), ("ce-knativekafkaoffset", "five")],
            ),
        ),
        (
            "partition over i32",
            binary(
                "h",
                KAFKA_EVENT_TYPE,
                tweet,
                &[("ce-knativekafkapartition", "4294967296"), ("ce-knativekafkaoffset", "1")],
            ),
        ),
        ("id over 128 bytes", tweet_event(&"i".repeat(129))),
        (
            "partition outside the topic",
            binary(
                "j",
                KAFKA_EVENT_TYPE,
                tweet,
                &[("ce-knativekafkapartition", "3"), ("ce-knativekafkaoffset", "0")],
            ),
        ),
        (
            "partition near 2^31, offset 2^20 - 1",
            binary(
                "k",
                KAFKA_EVENT_TYPE,
                tweet,
                &[("ce-knativekafkapartition", "2147483647"), ("ce-knativekafkaoffset", "1048575")],
            ),
        ),
        ("offset at the high watermark", record_of(&f.topic, 0, 1, "l", &[])),
        ("offset of an empty partition", record_of(&f.topic, 1, 0, "m", &[])),
        ("a topic counter does not consume", record_of("other", 0, 0, "n", &[])),
        (
            "the dead-letter topic, which does not exist",
            record_of(&format!("{}-dlq", f.topic), 0, 0, "o", &[]),
        ),
    ];
    for (case, request) in cases {
        let (status, body) = send(&f.app, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
        assert!(body["error"].is_string(), "{case}: {body}");
    }
    assert_eq!(f.key_names().await, Vec::<String>::new(), "a rejected event wrote to Redis");

    // The limit is inclusive.
    assert_eq!(send(&f.app, tweet_event(&"i".repeat(128))).await.0, StatusCode::OK);
    assert_eq!(f.total().await, Some(1));
    f.clean().await;
}

#[tokio::test]
async fn an_event_over_64_kib_is_413() {
    let mut f = Fixture::new().await;
    let data = json!({"texto": "x", "pais": "Chile", "relleno": "x".repeat(64 * 1024)}).to_string();
    let (status, body) = send(&f.app, binary("big", TWEET_TYPE, &data, &[])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(f.total().await, None);
    f.clean().await;
}

#[tokio::test]
async fn unreachable_redis_is_503() {
    let app = app(&config("redis://127.0.0.1:1", "it:unreachable:", "messages", 500, 600));
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), send(&app, tweet_event("x")))
        .await
        .expect("an answer, not a hang");
    assert_eq!((status, body), (StatusCode::SERVICE_UNAVAILABLE, json!({"error": "redis is unavailable"})));
}

#[tokio::test]
async fn the_same_position_in_another_topic_is_another_record() {
    let mut f = Fixture::new().await;
    let dead_letters = format!("{}-dlq", f.topic);
    f.kafka.create(&dead_letters, 1).await;
    let tweet = r#"{"texto":"Sol","pais":"Chile"}"#;
    assert_eq!(f.records(0, 1, tweet).await, [0]);
    assert_eq!(f.kafka.produce(&dead_letters, 0, 1, tweet).await, [0]);
    let counted =
        |reply: (StatusCode, serde_json::Value)| reply == (StatusCode::OK, json!({"duplicate": false}));
    assert!(counted(send(&f.app, record_of(&f.topic, 0, 0, "a", &[])).await));
    assert!(
        counted(send(&f.app, record_of(&dead_letters, 0, 0, "b", &[])).await),
        "a dead letter's own position"
    );
    assert!(!counted(send(&f.app, record_of(&f.topic, 0, 0, "a", &[])).await));
    assert_eq!(f.total().await, Some(2));
    f.clean().await;
}

#[tokio::test]
async fn every_mark_lives_the_ttl_after_its_own_record_was_counted() {
    // Marks live 2 s. Record 1 is counted 1.5 s after record 0, in the same bitmap block; its
    // redelivery 1 s later (2.5 s after the block was created) must still be a duplicate.
    let mut f = Fixture::with_ttl(2).await;
    let tweet = r#"{"texto":"a","pais":"Chile"}"#;
    assert_eq!(f.records(0, 2, tweet).await, [0, 1]);
    assert_eq!(send(&f.app, delivered(&f, 0, 0, tweet)).await.1, json!({"duplicate": false}));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(send(&f.app, delivered(&f, 0, 1, tweet)).await.1, json!({"duplicate": false}));
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        send(&f.app, delivered(&f, 0, 1, tweet)).await.1,
        json!({"duplicate": true}),
        "record 1's mark expired with its block"
    );
    // And a mark does expire: the bound on memory holds.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let blocks: Vec<String> =
        f.redis.keys(format!("{{{}}}:seen:*", f.prefix.trim_end_matches(':'))).await.unwrap();
    assert!(blocks.is_empty(), "{blocks:?} outlived the TTL");
    f.clean().await;
}

#[tokio::test]
async fn records_of_one_idempotency_key_count_once() {
    let mut f = Fixture::new().await;
    let tweet = r#"{"texto":"Sol","pais":"Chile"}"#;
    f.records(1, 13, tweet).await;
    f.records(2, 4, tweet).await;
    let (topic, marked) = (f.topic.as_str(), [("ce-weatheridempotent", "true")]);
    let id = "0f0e0d0c-0b0a-5909-8807-060504030201";
    let replies = [
        send(&f.app, record_of(topic, 1, 10, id, &marked)).await.1,
        send(&f.app, record_of(topic, 1, 11, id, &marked)).await.1,
        send(&f.app, record_of(topic, 2, 3, id, &marked)).await.1,
        send(&f.app, record_of(topic, 1, 10, id, &marked)).await.1,
    ];
    assert_eq!(
        replies,
        [
            json!({"duplicate": false}),
            json!({"duplicate": true}),
            json!({"duplicate": true}),
            json!({"duplicate": true})
        ]
    );
    // Without the mark, the same id at another offset is another record (ids of wrapped records
    // repeat across topics).
    assert_eq!(send(&f.app, record_of(&f.topic, 1, 12, id, &[])).await.1, json!({"duplicate": false}));
    assert_eq!(f.total().await, Some(2));
    assert_eq!(f.hash(Keyspace::country_codes).await, HashMap::from([("CL".into(), 2)]));
    f.clean().await;
}
