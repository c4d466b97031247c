//! 202 means the tweet is in Kafka; 503 (with `Retry-After`) when it could not be stored.

use crate::kafka::{self, RunningProducer, Topic};
use crate::{BODY_LIMIT, app, closed_port_url, post_json};
use axum::http::{StatusCode, header::RETRY_AFTER};
use cloudevents::{AttributesReader, binding::rdkafka::MessageExt};
use common::event::TWEET_TYPE;
use futures::StreamExt;
use serde_json::json;
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_tweet_is_202_and_already_in_kafka_as_a_binary_cloudevent() {
    let topic = Topic::create().await;
    let producer = RunningProducer::start(&kafka::brokers(), &topic.name, 8_000).await;
    let app = app(&producer.url, BODY_LIMIT);

    let reply = post_json(&app, r#"{"texto":"Hoy llueve en Lima","país":"  perú ","origen":"app"}"#).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
    let id = reply.json["id"].as_str().expect("an id").to_owned();
    // No waiting: acks=all means the broker holds the record before ingest answers.
    assert_eq!(topic.record_count().await, 1);

    let records = topic.read(1).await;
    let record = &records[0];
    assert_eq!(kafka::key(record), "Perú");
    assert_eq!(kafka::header(record, "ce_id"), Some(id.as_str()));
    assert_eq!(kafka::header(record, "ce_type"), Some(TWEET_TYPE));
    assert_eq!(kafka::header(record, "ce_specversion"), Some("1.0"));
    assert_eq!(kafka::header(record, "content-type"), Some("application/json"));
    let event = record.to_event().expect("a binary-mode CloudEvent");
    assert_eq!(event.id(), id);
    assert!(event.time().is_some());
    let data: serde_json::Value = match event.data().expect("data") {
        cloudevents::Data::Binary(bytes) => serde_json::from_slice(bytes).unwrap(),
        cloudevents::Data::Json(value) => value.clone(),
        cloudevents::Data::String(s) => serde_json::from_str(s).unwrap(),
    };
    assert_eq!(data, json!({"texto": "Hoy llueve en Lima", "pais": "Perú", "clima": "lluvioso"}));

    producer.stop().await;
    topic.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn distinct_valid_countries_are_each_normalised_into_the_record_key() {
    const COUNT: usize = 300;
    let topic = Topic::create().await;
    let producer = RunningProducer::start(&kafka::brokers(), &topic.name, 8_000).await;
    let app = app(&producer.url, BODY_LIMIT);

    // Messy spellings of distinct countries, plus the limits that must still pass.
    let mut bodies: Vec<(serde_json::Value, String)> = (0..COUNT - 4)
        .map(|i| {
            let body =
                json!({"texto": "sol\ty\nviento", "pais": format!("\u{a0} pAÍS{i}   DE  la   prueba ")});
            (body, format!("País{i} de la Prueba"))
        })
        .collect();
    bodies.push((json!({"texto": "ñ".repeat(280), "pais": "chile"}), "Chile".into()));
    bodies.push((json!({"texto": "x", "pais": "a".repeat(56)}), format!("A{}", "a".repeat(55))));
    bodies.push((json!({"texto": "x", "pais": "peru\u{301}"}), "Perú".into()));
    bodies.push((json!({"texto": "x", "pais": "costa\trica\n"}), "Costa Rica".into()));

    let expected: BTreeSet<String> = bodies.iter().map(|(_, key)| key.clone()).collect();
    let statuses: Vec<_> = futures::stream::iter(bodies)
        .map(|(body, _)| {
            let app = app.clone();
            async move { post_json(&app, body.to_string()).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for reply in &statuses {
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
    }

    let keys: BTreeSet<String> = topic.read(COUNT).await.iter().map(|r| kafka::key(r).to_owned()).collect();
    assert_eq!(keys, expected);
    assert_eq!(topic.record_count().await, COUNT as i64);

    producer.stop().await;
    topic.delete().await;
}

#[tokio::test]
async fn an_unreachable_producer_is_503_with_retry_after() {
    let app = app(&closed_port_url(), BODY_LIMIT);
    let reply = post_json(&app, r#"{"texto":"Hoy llueve","pais":"Chile"}"#).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers.get(RETRY_AFTER).map(|v| v.to_str().unwrap()), Some("1"));
    // The cause is logged, not echoed.
    assert_eq!(reply.json, json!({"error": "the tweet could not be stored, try again", "field": null}));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_that_went_away_is_503_and_nothing_more_is_written() {
    let topic = Topic::create().await;
    let producer = RunningProducer::start(&kafka::brokers(), &topic.name, 8_000).await;
    let app = app(&producer.url, BODY_LIMIT);
    let tweet = r#"{"texto":"Nublado","pais":"Chile"}"#;
    assert_eq!(post_json(&app, tweet).await.status, StatusCode::ACCEPTED);

    producer.stop().await;
    let reply = post_json(&app, tweet).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.headers.contains_key(RETRY_AFTER));
    assert_eq!(topic.record_count().await, 1);
    topic.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_kafka_behind_the_producer_is_503_with_retry_after() {
    let producer = RunningProducer::start("127.0.0.1:1", "unreachable", 1_500).await;
    let app = app(&producer.url, BODY_LIMIT);
    let started = std::time::Instant::now();
    let reply = post_json(&app, r#"{"texto":"Hoy llueve","pais":"Chile"}"#).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.json);
    assert!(reply.headers.contains_key(RETRY_AFTER));
    assert!(started.elapsed() < std::time::Duration::from_secs(8), "answered after {:?}", started.elapsed());
    producer.stop().await;
}
