//! `counter` integration tests: CloudEvents through `router` with `oneshot`, counted in the
//! local Redis (`REDIS_URL`, default `redis://127.0.0.1:6379/0`) under a random key prefix.

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use common::event::{KAFKA_EVENT_TYPE, TWEET_TYPE};
use counter::{Config, Counts, Keyspace};
use redis::AsyncCommands;
use serde_json::json;
use std::{collections::HashMap, sync::Arc, time::Duration};
use testkit::{
    event::{binary, kafka_record, send, structured, tweet as tweet_event},
    redis_url,
};

/// A counter with keys of its own, and a connection to read them.
struct Fixture {
    app: Router,
    prefix: String,
    redis: redis::aio::MultiplexedConnection,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture::with_ttl(600).await
    }

    /// A counter whose dedup marks live `ttl_s` seconds.
    async fn with_ttl(ttl_s: u64) -> Fixture {
        let prefix = format!("it:{}:", uuid::Uuid::now_v7().simple());
        let redis = redis::Client::open(redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis at {} is needed and unreachable: {e}", redis_url()));
        Fixture { app: app(&redis_url(), &prefix, 2_000, ttl_s), prefix, redis }
    }

    async fn total(&mut self) -> Option<i64> {
        self.redis.get(Keyspace::new(&self.prefix).total()).await.unwrap()
    }

    async fn hash(&mut self, key: fn(&Keyspace) -> String) -> HashMap<String, i64> {
        self.redis.hgetall(key(&Keyspace::new(&self.prefix))).await.unwrap()
    }

    /// Removes every key of this test.
    async fn clean(mut self) {
        let keys: Vec<String> = self.redis.keys(Keyspace::new(&self.prefix).pattern()).await.unwrap();
        if !keys.is_empty() {
            let _: () = self.redis.del(keys).await.unwrap();
        }
    }
}

fn app(redis_url: &str, prefix: &str, redis_timeout_ms: u64, dedup_ttl_s: u64) -> Router {
    let config = Config {
        port: 0,
        host: "127.0.0.1".into(),
        redis_url: redis_url.into(),
        key_prefix: prefix.into(),
        topic: "messages".into(),
        topic_partitions: 3,
        dedup_ttl_s,
        redis_timeout_ms,
    };
    common::sink::router(Arc::new(Counts::new(&config).expect("a valid Redis URL")))
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
    let (status, body) = send(&f.app, kafka_record(0, 5, tweet)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"duplicate": false})));
    let (status, body) = send(&f.app, kafka_record(0, 5, tweet)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"duplicate": true})));

    // Concurrent redeliveries race on the same bit; exactly one may win, and it already did.
    let mut deliveries = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let app = f.app.clone();
        deliveries.spawn(async move { send(&app, kafka_record(0, 5, tweet)).await });
    }
    while let Some(reply) = deliveries.join_next().await {
        assert_eq!(reply.unwrap(), (StatusCode::OK, json!({"duplicate": true})));
    }

    // The position decides, not the id: another offset is another record.
    assert_eq!(send(&f.app, kafka_record(0, 6, tweet)).await.1, json!({"duplicate": false}));
    assert_eq!(send(&f.app, kafka_record(1, 5, tweet)).await.1, json!({"duplicate": false}));
    // Far offsets land in another bitmap block.
    assert_eq!(send(&f.app, kafka_record(0, 5 + (1 << 20), tweet)).await.1, json!({"duplicate": false}));

    assert_eq!(f.total().await, Some(4));
    assert_eq!(f.hash(Keyspace::countries).await, HashMap::from([("Guatemala".into(), 4)]));
    assert_eq!(f.hash(Keyspace::climas).await, HashMap::from([("niebla".into(), 4)]));
    assert_eq!(f.hash(Keyspace::country_clima).await, HashMap::from([("Guatemala/niebla".into(), 4)]));
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
                &[("ce-knativekafkapartition", "3"), ("ce-knativekafkaoffset", "1")],
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
    ];
    for (case, request) in cases {
        let (status, body) = send(&f.app, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {body}");
        assert!(body["error"].is_string(), "{case}: {body}");
    }
    assert_eq!(f.total().await, None, "a rejected event was counted");

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
    let app = app("redis://127.0.0.1:1", "it:unreachable:", 500, 600);
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), send(&app, tweet_event("x")))
        .await
        .expect("an answer, not a hang");
    assert_eq!((status, body), (StatusCode::SERVICE_UNAVAILABLE, json!({"error": "redis is unavailable"})));
}

/// A record of `topic` at `partition`/`offset`, wrapped as Knative wraps a plain record (the
/// source names the topic), with `extra` headers.
fn record_of(topic: &str, partition: u32, offset: u64, id: &str, extra: &[(&str, &str)]) -> Request<Body> {
    let source = format!("/apis/v1/namespaces/weather/kafkasources/counter#{topic}");
    let (p, o) = (partition.to_string(), offset.to_string());
    let mut headers = vec![
        ("ce-source", source.as_str()),
        ("ce-knativekafkapartition", p.as_str()),
        ("ce-knativekafkaoffset", o.as_str()),
    ];
    headers.extend_from_slice(extra);
    binary(id, KAFKA_EVENT_TYPE, r#"{"texto":"Sol","pais":"Chile"}"#, &headers)
}

#[tokio::test]
async fn the_same_position_in_another_topic_is_another_record() {
    let mut f = Fixture::new().await;
    let counted =
        |reply: (StatusCode, serde_json::Value)| reply == (StatusCode::OK, json!({"duplicate": false}));
    assert!(counted(send(&f.app, record_of("messages", 0, 5, "a", &[])).await));
    assert!(
        counted(send(&f.app, record_of("messages-dlq", 0, 5, "b", &[])).await),
        "a dead letter's own position"
    );
    assert!(!counted(send(&f.app, record_of("messages", 0, 5, "a", &[])).await));
    assert_eq!(f.total().await, Some(2));
    f.clean().await;
}

#[tokio::test]
async fn every_mark_lives_the_ttl_after_its_own_record_was_counted() {
    // Marks live 2 s. Record 1 is counted 1.5 s after record 0, in the same bitmap block; its
    // redelivery 1 s later (2.5 s after the block was created) must still be a duplicate.
    let mut f = Fixture::with_ttl(2).await;
    assert_eq!(
        send(&f.app, kafka_record(0, 0, r#"{"texto":"a","pais":"Chile"}"#)).await.1,
        json!({"duplicate": false})
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        send(&f.app, kafka_record(0, 1, r#"{"texto":"b","pais":"Chile"}"#)).await.1,
        json!({"duplicate": false})
    );
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        send(&f.app, kafka_record(0, 1, r#"{"texto":"b","pais":"Chile"}"#)).await.1,
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
    let marked = [("ce-weatheridempotent", "true")];
    let id = "0f0e0d0c-0b0a-5909-8807-060504030201";
    let replies = [
        send(&f.app, record_of("messages", 1, 10, id, &marked)).await.1,
        send(&f.app, record_of("messages", 1, 11, id, &marked)).await.1,
        send(&f.app, record_of("messages", 2, 3, id, &marked)).await.1,
        send(&f.app, record_of("messages", 1, 10, id, &marked)).await.1,
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
    assert_eq!(send(&f.app, record_of("messages", 1, 12, id, &[])).await.1, json!({"duplicate": false}));
    assert_eq!(f.total().await, Some(2));
    assert_eq!(f.hash(Keyspace::country_codes).await, HashMap::from([("CL".into(), 2)]));
    f.clean().await;
}
