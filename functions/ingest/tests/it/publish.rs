//! 202 means the tweet is in Kafka, under the id ingest chose; 503 (with `Retry-After`) when it
//! was provably not stored (`outcome` has the cases where it cannot tell).

use crate::kafka::{self, RunningProducer, Topic};
use crate::{BODY_LIMIT, app, closed_port_url, post_json, send};
use axum::http::{StatusCode, header::RETRY_AFTER};
use cloudevents::{AttributesReader, binding::rdkafka::MessageExt};
use common::{country, event::TWEET_TYPE};
use futures::StreamExt;
use serde_json::json;
use std::collections::BTreeSet;
use unicode_normalization::UnicodeNormalization;

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
    assert_eq!(
        data,
        json!({"texto": "Hoy llueve en Lima", "pais": "Perú", "pais_codigo": "PE", "clima": "lluvioso"})
    );

    producer.stop().await;
    topic.delete().await;
}

/// Through `init`'s tracing without an exporter (`crate::traced`).
#[tokio::test(flavor = "multi_thread")]
async fn the_callers_trace_context_reaches_the_record_unchanged() {
    let topic = Topic::create().await;
    let producer = RunningProducer::start(&kafka::brokers(), &topic.name, 8_000).await;
    let app = app(&producer.url, BODY_LIMIT);

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = axum::http::Request::post("/input")
        .header("content-type", "application/json")
        .header("traceparent", traceparent)
        .body(r#"{"texto":"Hoy llueve en Lima","pais":"Perú"}"#.into())
        .unwrap();
    let reply = send(&app, request).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
    let records = topic.read(1).await;
    // Both as KafkaSource continues it and as the CloudEvent attribute the archive keeps.
    assert_eq!(kafka::header(&records[0], "traceparent"), Some(traceparent));
    assert_eq!(kafka::header(&records[0], "ce_traceparent"), Some(traceparent));

    producer.stop().await;
    topic.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_country_in_any_spelling_is_normalised_into_the_record_key() {
    let topic = Topic::create().await;
    let producer = RunningProducer::start(&kafka::brokers(), &topic.name, 8_000).await;
    let app = app(&producer.url, BODY_LIMIT);

    // Each of the 249 countries once, spelled as a client might: its English name in lower case
    // with a soft hyphen, its alpha-3 code, its Spanish name in fullwidth or decomposed upper
    // case; plus the limits that must still pass.
    let mut bodies: Vec<(serde_json::Value, String)> = country::all()
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let pais = match i % 4 {
                0 => format!("\u{a0} {}\u{ad}  ", c.en.to_lowercase()),
                1 => c.alpha3.to_owned(),
                2 => {
                    c.es.chars()
                        .map(|ch| {
                            if ch.is_ascii_alphabetic() {
                                char::from_u32(ch as u32 + 0xFEE0).unwrap()
                            } else {
                                ch
                            }
                        })
                        .collect()
                }
                _ => c.es.to_uppercase().nfd().collect(),
            };
            (json!({"texto": "sol\ty\nviento", "pais": pais}), c.es.to_owned())
        })
        .collect();
    bodies.push((json!({"texto": "ñ".repeat(280), "pais": "chile"}), "Chile".into()));
    bodies.push((json!({"texto": "x", "país": "peru\u{301}"}), "Perú".into()));
    bodies.push((json!({"texto": "x", "pais": "costa\trica\n"}), "Costa Rica".into()));
    bodies.push((json!({"texto": "x", "pais": "EE. UU."}), "Estados Unidos".into()));
    let count = bodies.len();

    let expected: BTreeSet<String> = bodies.iter().map(|(_, key)| key.clone()).collect();
    assert_eq!(expected.len(), 249, "the extra bodies reuse countries");
    let statuses: Vec<_> = futures::stream::iter(bodies)
        .map(|(body, _)| {
            let app = app.clone();
            async move { (post_json(&app, body.to_string()).await, body) }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (reply, body) in &statuses {
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{body}: {}", reply.json);
    }

    let records = topic.read(count).await;
    let keys: BTreeSet<String> = records.iter().map(|r| kafka::key(r).to_owned()).collect();
    assert_eq!(keys, expected);
    for record in &records {
        // The code travels with the name, derived from it.
        let event = record.to_event().expect("a binary-mode CloudEvent");
        let received = common::event::Received::from_event(&event).expect("a tweet event");
        assert_eq!(received.tweet.pais, kafka::key(record));
        assert_eq!(Some(received.tweet.country()), country::resolve(kafka::key(record)));
    }
    assert_eq!(topic.record_count().await, count as i64);

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
    assert_eq!(
        reply.json,
        json!({"error": "the tweet was not stored; try again", "field": null, "outcome": "not-stored"})
    );
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
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.json);
    assert!(reply.headers.contains_key(RETRY_AFTER));
    assert_eq!(topic.record_count().await, 1);
    topic.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_id_is_ingests_a_fresh_uuid_v7_per_tweet() {
    let topic = Topic::create().await;
    let producer = RunningProducer::start(&kafka::brokers(), &topic.name, 8_000).await;
    let app = app(&producer.url, BODY_LIMIT);
    let tweet = r#"{"texto":"Nublado","pais":"Chile"}"#;
    let ids: BTreeSet<String> = futures::stream::iter(0..20)
        .then(|_| post_json(&app, tweet))
        .map(|reply| {
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
            reply.json["id"].as_str().expect("an id").to_owned()
        })
        .collect()
        .await;
    assert_eq!(ids.len(), 20, "the same tweet without a key is a new tweet each time");
    for id in &ids {
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7, "{id}");
    }
    let written: BTreeSet<String> =
        topic.read(20).await.iter().map(|r| kafka::header(r, "ce_id").unwrap().to_owned()).collect();
    assert_eq!(written, ids);
    producer.stop().await;
    topic.delete().await;
}
