//! `Idempotency-Key` bound to its request, against the local Redis (`REDIS_URL`): the same key
//! and tweet are the same 202 and id, another tweet under the key is 422 naming the header, new
//! keys beyond the hour's budget are 429, and what one key costs Redis is measured.

use crate::kafka::{self, RunningProducer, Topic};
use crate::{Reply, closed_port_url, config, send, traced};
use axum::{
    Router,
    http::{Request, StatusCode, header::RETRY_AFTER},
};
use ingest::{AppState, Config, Keys, Remembered, keys::BYTES_PER_KEY};

async fn post_keyed(app: &Router, key: &str, body: &str) -> Reply {
    let request = Request::post("/input")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned().into())
        .unwrap();
    send(app, request).await
}

fn app_with(config: &Config) -> Router {
    traced();
    ingest::router(AppState::new(config).expect("a valid config"))
}

/// Deletes every key under `prefix` (as written: `{prefix without its colon}:…`).
async fn clear(prefix: &str) {
    let client = redis::Client::open(testkit::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.expect("the local Redis");
    let pattern = format!("{{{}}}:*", prefix.trim_end_matches(':'));
    let mut keys: Vec<String> = Vec::new();
    {
        use redis::AsyncCommands;
        let mut scan = redis.scan_match::<_, String>(pattern).await.unwrap();
        while let Some(key) = scan.next_item().await {
            keys.push(key.unwrap());
        }
    }
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut redis).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_and_tweet_are_one_id_and_another_tweet_under_it_is_422() {
    let topic = Topic::create().await;
    let producer = RunningProducer::start(&kafka::brokers(), &topic.name, 8_000).await;
    let config = config(&producer.url);
    let app = app_with(&config);
    testkit::with_cleanup(
        async {
            let first = post_keyed(&app, "order-1", r#"{"texto":"Hoy llueve","pais":"Perú"}"#).await;
            assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.json);
            let id = first.json["id"].as_str().unwrap().to_owned();
            assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 5);

            // The same tweet, spelled another way (what is stored is the same), is a retry.
            let again = post_keyed(
                &app,
                "order-1",
                r#"{ "país": "peru", "texto": " Hoy llueve ", "origen": "app" }"#,
            )
            .await;
            assert_eq!((again.status, again.json["id"].as_str()), (StatusCode::ACCEPTED, Some(id.as_str())));

            // Another tweet under the key: refused, naming the header; nothing more written.
            let other = post_keyed(&app, "order-1", r#"{"texto":"Hoy hace sol","pais":"Perú"}"#).await;
            assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", other.json);
            assert_eq!(other.json["field"], "Idempotency-Key");
            assert!(other.json["error"].as_str().unwrap().starts_with("Idempotency-Key was already used"));
            assert_eq!(topic.record_count().await, 2);

            // Both records carry the one id, marked, so the sinks count it once.
            for record in topic.read(2).await {
                assert_eq!(kafka::header(&record, "ce_id"), Some(id.as_str()));
                assert_eq!(kafka::header(&record, "ce_weatheridempotent"), Some("true"));
            }
            // Another key with the first tweet is another tweet.
            let second = post_keyed(&app, "order-2", r#"{"texto":"Hoy llueve","pais":"Perú"}"#).await;
            assert_eq!(second.status, StatusCode::ACCEPTED);
            assert_ne!(second.json["id"].as_str(), Some(id.as_str()));
        },
        clear(&config.key_prefix),
    )
    .await;
    producer.stop().await;
    topic.delete().await;
}

/// New keys past the budget are 429 until the hour ends; keys already taken and requests
/// without a key are not affected. (The producer is unreachable: keys are taken before
/// publishing, so each new key spends budget whatever Kafka does.)
#[tokio::test]
async fn new_keys_past_the_hours_budget_are_429() {
    let config = Config { idempotency_keys_per_hour: 5, ..config(&closed_port_url()) };
    let app = app_with(&config);
    testkit::with_cleanup(
        async {
            let tweet = r#"{"texto":"Sol","pais":"Chile"}"#;
            for i in 0..5 {
                let reply = post_keyed(&app, &format!("k{i}"), tweet).await;
                assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "key {i}: {}", reply.json);
            }
            let over = post_keyed(&app, "k5", tweet).await;
            assert_eq!(over.status, StatusCode::TOO_MANY_REQUESTS, "{}", over.json);
            assert_eq!(over.json["field"], "Idempotency-Key");
            let retry_after: u64 = over.headers[RETRY_AFTER].to_str().unwrap().parse().unwrap();
            assert!((1..=3600).contains(&retry_after), "{retry_after}");
            assert!(over.json["error"].as_str().unwrap().contains(&format!("retry in {retry_after} s")));
            // A known key is a retry, not a new key.
            assert_eq!(post_keyed(&app, "k3", tweet).await.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(crate::post_json(&app, tweet).await.status, StatusCode::SERVICE_UNAVAILABLE);
        },
        clear(&config.key_prefix),
    )
    .await;
}

#[tokio::test]
async fn without_redis_a_keyed_tweet_is_503_and_a_keyless_one_goes_on() {
    let config = Config {
        redis_url: format!("redis://127.0.0.1:{}/0", testkit::closed_port()),
        ..config(&closed_port_url())
    };
    let app = app_with(&config);
    let keyed = post_keyed(&app, "k", r#"{"texto":"Sol","pais":"Chile"}"#).await;
    assert_eq!(keyed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(keyed.json["outcome"], "not-stored");
    assert!(keyed.json["error"].as_str().unwrap().starts_with("the Idempotency-Key could not be checked"));
    assert!(keyed.headers.contains_key(RETRY_AFTER));
    let keyless = crate::post_json(&app, r#"{"texto":"Sol","pais":"Chile"}"#).await;
    assert_eq!(
        keyless.json["error"], "the tweet was not stored; try again",
        "it reached the (missing) producer"
    );
    // A bad key is still a 400 before anything else.
    let bad = post_keyed(&app, "a b", r#"{"texto":"Sol","pais":"Chile"}"#).await;
    assert_eq!((bad.status, bad.json["field"].as_str()), (StatusCode::BAD_REQUEST, Some("Idempotency-Key")));
}

/// The stated bound, measured: every remembered key within [`BYTES_PER_KEY`] (`MEMORY USAGE`,
/// with a prefix as long as the deployed `weather:`), expiring within its TTL; the hour's
/// counter expires too; and the longest keys cost no more, since only their hash is stored.
#[tokio::test]
async fn a_remembered_key_costs_redis_a_bounded_number_of_bytes_and_expires() {
    let prefix = format!("t{}:", &testkit::unique("")[26..]);
    assert_eq!(prefix.len(), "weather:".len());
    let config =
        Config { key_prefix: prefix.clone(), idempotency_key_ttl_s: 600, ..config(&closed_port_url()) };
    let keys = Keys::new(&config).unwrap();
    let client = redis::Client::open(testkit::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.expect("the local Redis");
    testkit::with_cleanup(
        async {
            let tweet = common::tweet::Tweet::new("Sol", "Chile", None).unwrap();
            let mut largest = 0;
            for i in 0..1_000 {
                let key = if i % 2 == 0 { format!("k{i}") } else { format!("{i:~<128}") };
                let id = common::event::tweet_id(Some(&key), &tweet);
                assert_eq!(keys.remember(&key, id).await.unwrap(), Remembered::First);
                assert_eq!(keys.remember(&key, id).await.unwrap(), Remembered::Same);
                let bytes: u64 = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(keys.record(&key))
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                largest = largest.max(bytes);
                let ttl: i64 =
                    redis::cmd("TTL").arg(keys.record(&key)).query_async(&mut redis).await.unwrap();
                assert!((1..=600).contains(&ttl), "{ttl}");
            }
            assert!(largest <= BYTES_PER_KEY, "a key took {largest} bytes, over the stated {BYTES_PER_KEY}");
            assert!(
                largest + 16 > BYTES_PER_KEY,
                "the stated bound ({BYTES_PER_KEY}) is far above {largest}"
            );
            let hour =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 3600;
            let ttl: i64 = redis::cmd("TTL").arg(keys.budget(hour)).query_async(&mut redis).await.unwrap();
            assert!((3600..=7200).contains(&ttl), "{ttl}");
            let taken: u64 = redis::cmd("GET").arg(keys.budget(hour)).query_async(&mut redis).await.unwrap();
            assert_eq!(taken, 1_000);
        },
        clear(&prefix),
    )
    .await;
}

/// Two requests with one key and two tweets at once: exactly one is first.
#[tokio::test(flavor = "multi_thread")]
async fn racing_bodies_under_one_key_have_one_winner() {
    let config = config(&closed_port_url());
    let keys = std::sync::Arc::new(Keys::new(&config).unwrap());
    testkit::with_cleanup(
        async {
            for round in 0..20 {
                let key = format!("race-{round}");
                let answers = futures::future::join_all((0..8).map(|i| {
                    let (keys, key) = (keys.clone(), key.clone());
                    let tweet = common::tweet::Tweet::new(&format!("tweet {i}"), "Chile", None).unwrap();
                    tokio::spawn(async move {
                        keys.remember(&key, common::event::tweet_id(Some(&key), &tweet)).await
                    })
                }))
                .await;
                let answers: Vec<Remembered> = answers.into_iter().map(|a| a.unwrap().unwrap()).collect();
                assert_eq!(answers.iter().filter(|a| **a == Remembered::First).count(), 1, "{answers:?}");
                assert_eq!(answers.iter().filter(|a| **a == Remembered::Reused).count(), 7, "{answers:?}");
            }
        },
        clear(&config.key_prefix),
    )
    .await;
}
