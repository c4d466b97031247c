//! Positions against the real Kafka: forged ones are refused before Redis is asked, a
//! re-created topic is a new topic to the dedup, added partitions are learnt.

use crate::{Fixture, Kafka, delivered, record_of, wrapped};
use axum::http::StatusCode;
use counter::{Keyspace, kafka};
use serde_json::json;
use std::{collections::HashMap, time::Duration};
use testkit::{event::send, kafka_brokers, unique};

const PERU: &str = r#"{"texto":"Llovizna","pais":"Perú","clima":"lluvioso"}"#;
const CHILE: &str = r#"{"texto":"Sol","pais":"Chile","clima":"soleado"}"#;

#[tokio::test]
async fn kafka_describes_a_topic_by_id_and_high_watermarks() {
    let f = Fixture::new().await;
    f.records(0, 3, CHILE).await;
    f.records(2, 1, CHILE).await;
    let mut client = kafka::Kafka::new(&kafka_brokers(), Duration::from_secs(5));
    let missing = unique("it-missing-");
    let described = client.describe(&[&f.topic, &missing]).await.unwrap();
    let topic = described[0].as_ref().expect("the topic exists");
    assert_eq!(topic.high_watermarks, [3, 0, 1]);
    assert!(!topic.id.is_nil());
    assert_eq!(described[1], None, "a topic Kafka does not have (and was not created by asking)");
    assert_eq!(client.describe(&[&missing]).await.unwrap(), [None]);
    f.clean().await;
}

#[tokio::test]
async fn forged_future_positions_are_refused_and_swallow_no_genuine_tweet() {
    // The forgery as reported: events claiming the next offsets of a partition (its high
    // watermark + k), then genuine tweets that land on those offsets.
    let mut f = Fixture::new().await;
    let watermark = f.records(0, 5, CHILE).await.last().unwrap() + 1;
    for k in 0..20 {
        let (status, body) = send(&f.app, delivered(&f, 0, watermark + k, CHILE)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "forged offset {}: {body}", watermark + k);
        assert!(body["error"].as_str().unwrap().contains("high watermark"), "{body}");
    }
    assert_eq!(f.key_names().await, Vec::<String>::new(), "a forged position wrote to Redis");

    let genuine = f.records(0, 60, PERU).await;
    assert_eq!(genuine.first(), Some(&watermark), "the genuine tweets take the forged offsets");
    let mut answers = HashMap::<String, usize>::new();
    for offset in &genuine {
        let (status, body) = deliver(&f, 0, *offset, PERU).await;
        *answers.entry(format!("{status} {body}")).or_default() += 1;
    }
    println!("forged 20 at offsets {watermark}..{}: 20 × 400; then 60 genuine: {answers:?}", watermark + 19);
    assert_eq!(answers, HashMap::from([(r#"200 OK {"duplicate":false}"#.to_owned(), 60)]));
    assert_eq!(f.hash(Keyspace::countries).await, HashMap::from([("Perú".into(), 60)]));
    assert_eq!(f.total().await, Some(60));
    f.clean().await;
}

/// [`send`], again after a 503 (at most 25 times, 200 ms apart), as the KafkaSource retries: a
/// look at a topic Kafka has just created can fail while its partitions get a leader.
async fn deliver(f: &Fixture, partition: u32, offset: u64, tweet: &str) -> (StatusCode, serde_json::Value) {
    for _ in 0..25 {
        let answer = send(&f.app, delivered(f, partition, offset, tweet)).await;
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    send(&f.app, delivered(f, partition, offset, tweet)).await
}

#[tokio::test]
async fn a_re_created_topic_is_a_new_topic_to_the_dedup() {
    let mut f = Fixture::new().await;
    let first = f.records(0, 20, PERU).await;
    for &offset in &first {
        assert_eq!(deliver(&f, 0, offset, PERU).await.1, json!({"duplicate": false}));
    }
    // Deleted and created again under the same name: offsets restart at 0.
    f.kafka.delete(&[&f.topic]).await;
    f.kafka.create(&f.topic, 3).await;
    let second = f.records(0, 20, CHILE).await;
    assert_eq!(second, first, "the second topic's records have the first one's offsets");
    let mut answers = HashMap::<String, usize>::new();
    for &offset in &second {
        let (status, body) = deliver(&f, 0, offset, CHILE).await;
        *answers.entry(format!("{status} {body}")).or_default() += 1;
    }
    println!("after re-creating the topic, 20 records at offsets 0..19 again: {answers:?}");
    assert_eq!(answers, HashMap::from([(r#"200 OK {"duplicate":false}"#.to_owned(), 20)]));
    // And their redeliveries are duplicates of the new topic's records.
    for &offset in &second {
        assert_eq!(send(&f.app, delivered(&f, 0, offset, CHILE)).await.1, json!({"duplicate": true}));
    }
    assert_eq!(f.hash(Keyspace::countries).await, HashMap::from([("Perú".into(), 20), ("Chile".into(), 20)]));
    let blocks = f.key_names().await.into_iter().filter(|k| k.contains(":seen:")).collect::<Vec<_>>();
    assert_eq!(blocks.len(), 2, "one block per topic id: {blocks:?}");
    f.clean().await;
}

#[tokio::test]
async fn partitions_added_mid_run_are_learnt_and_nothing_is_refused() {
    let mut f = Fixture::new().await;
    // Deliveries into the first three partitions go on while the topic grows to six.
    let before: Vec<(i32, u64)> = futures::future::join_all((0..3).map(|p| f.records(p, 10, PERU)))
        .await
        .into_iter()
        .enumerate()
        .flat_map(|(p, offsets)| offsets.into_iter().map(move |o| (p as i32, o)))
        .collect();
    let deliver = |positions: Vec<(i32, u64)>, tweet: &'static str| {
        let (app, topic) = (f.app.clone(), f.topic.clone());
        tokio::spawn(async move {
            let mut answers = HashMap::<String, usize>::new();
            for (p, o) in positions {
                let (status, body) =
                    send(&app, wrapped(&topic, p as u32, o, &format!("{p}/{o}"), tweet, &[])).await;
                *answers.entry(format!("{status} {body}")).or_default() += 1;
            }
            answers
        })
    };
    let first = deliver(before, PERU);
    f.kafka.add_partitions(&f.topic, 6).await;
    let after: Vec<(i32, u64)> = futures::future::join_all((3..6).map(|p| f.records(p, 10, CHILE)))
        .await
        .into_iter()
        .enumerate()
        .flat_map(|(i, offsets)| offsets.into_iter().map(move |o| (i as i32 + 3, o)))
        .collect();
    let second = deliver(after, CHILE);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    println!("3 → 6 partitions: partitions 0–2 {first:?}; partitions 3–5 {second:?}");
    let all_new = HashMap::from([(r#"200 OK {"duplicate":false}"#.to_owned(), 30)]);
    assert_eq!((first, second), (all_new.clone(), all_new));
    assert_eq!(f.hash(Keyspace::countries).await, HashMap::from([("Perú".into(), 30), ("Chile".into(), 30)]));
    // A partition the topic still does not have is refused.
    assert_eq!(send(&f.app, record_of(&f.topic, 6, 0, "x", &[])).await.0, StatusCode::BAD_REQUEST);
    f.clean().await;
}

#[tokio::test]
async fn a_down_kafka_is_503_for_positions_and_nothing_is_counted() {
    let mut f = Fixture::new().await;
    f.records(0, 1, CHILE).await;
    let mut config = crate::config(&testkit::redis_url(), &f.prefix, &f.topic, 2_000, 600);
    config.kafka_brokers = format!("127.0.0.1:{}", testkit::closed_port());
    let app = crate::app(&config);
    let (status, body) = send(&app, delivered(&f, 0, 0, CHILE)).await;
    assert_eq!((status, body), (StatusCode::SERVICE_UNAVAILABLE, json!({"error": "kafka is unavailable"})));
    assert_eq!(f.key_names().await, Vec::<String>::new());
    f.clean().await;
}

/// For [`crate::durability`]: a topic with one record per partition, and a Kafka client that
/// the caller deletes it with.
pub async fn topic_with_records() -> (Kafka, String) {
    let kafka = Kafka::new();
    let topic = unique("it-counter-");
    kafka.create(&topic, 3).await;
    for p in 0..3 {
        kafka.produce(&topic, p, 1, CHILE).await;
    }
    (kafka, topic)
}
