//! Kafka: records and binary-mode CloudEvents round-trip through a fresh topic on the real broker.

use crate::{closed_port, env_or, unique, with_cleanup};
use cloudevents::binding::rdkafka::{FutureRecordExt, MessageExt, MessageRecord};
use cloudevents::{AttributesReader, Data};
use common::event::{Received, TWEET_TYPE, tweet_event};
use common::tweet::Tweet;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

type Admin = AdminClient<DefaultClientContext>;

/// How long the broker may take to answer a metadata request before we call it down.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on producing, topic administration and waiting for records to come back.
const OP_TIMEOUT: Duration = Duration::from_secs(20);

fn brokers() -> String {
    env_or("KAFKA_BROKERS", "127.0.0.1:9092")
}

/// An admin client to `brokers`, once the cluster has answered a metadata request.
async fn kafka_ready(brokers: &str) -> Result<Admin, String> {
    let down = |err: String| format!("Kafka is down at {brokers}: {err} — start it with `dev/stack up`");
    let admin: Admin =
        ClientConfig::new().set("bootstrap.servers", brokers).create().map_err(|e| down(e.to_string()))?;
    // fetch_metadata blocks the calling thread for up to its timeout.
    tokio::task::spawn_blocking(move || {
        admin.inner().fetch_metadata(None, READY_TIMEOUT).map(|_| ()).map_err(|e| e.to_string())?;
        Ok(admin)
    })
    .await
    .map_err(|e| down(format!("metadata task failed: {e}")))?
    .map_err(down)
}

async fn kafka() -> Admin {
    kafka_ready(&brokers()).await.unwrap_or_else(|msg| panic!("{msg}"))
}

async fn create_topic(admin: &Admin) -> String {
    let topic = unique("it-");
    let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(OP_TIMEOUT)));
    let results = admin
        .create_topics(&[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))], &opts)
        .await
        .expect("create_topics request");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
    }
    topic
}

async fn delete_topic(admin: &Admin, topic: &str) {
    let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(OP_TIMEOUT)));
    // Best effort: a leftover random topic harms no other test.
    let _ = admin.delete_topics(&[topic], &opts).await;
}

fn producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", OP_TIMEOUT.as_millis().to_string())
        .create()
        .expect("producer config is valid")
}

/// A consumer in a group of its own, subscribed to `topic` from its first record.
fn consumer(topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("it-group-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer config is valid");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// The first `n` records of the subscription, or a panic once `OP_TIMEOUT` has passed.
async fn receive(consumer: &StreamConsumer, n: usize) -> Vec<OwnedMessage> {
    let read = async {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(consumer.recv().await.expect("consume a record").detach());
        }
        out
    };
    tokio::time::timeout(OP_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| panic!("{n} record(s) did not come back within {OP_TIMEOUT:?}"))
}

#[tokio::test]
async fn records_round_trip_through_a_fresh_topic() {
    let admin = kafka().await;
    let topic = create_topic(&admin).await;
    let body = async {
        let producer = producer();
        let sent: Vec<(String, String)> =
            (0..3).map(|i| (format!("key-{i}"), format!(r#"{{"n":{i}}}"#))).collect();
        for (key, payload) in &sent {
            producer
                .send(FutureRecord::to(&topic).key(key).payload(payload), OP_TIMEOUT)
                .await
                .unwrap_or_else(|(err, _)| panic!("produce {key}: {err}"));
        }

        let got: Vec<(String, String)> = receive(&consumer(&topic), sent.len())
            .await
            .iter()
            .map(|m| {
                let text = |b: Option<&[u8]>| String::from_utf8(b.expect("present").to_vec()).expect("UTF-8");
                (text(m.key()), text(m.payload()))
            })
            .collect();
        // One partition: the order we wrote is the order we read.
        assert_eq!(got, sent);
    };
    with_cleanup(body, delete_topic(&admin, &topic)).await;
}

#[tokio::test]
async fn a_tweet_event_round_trips_in_binary_mode() {
    let admin = kafka().await;
    let topic = create_topic(&admin).await;
    let body = async {
        let tweet = Tweet::new("Tormenta sobre la ciudad", "Perú", Some("tormenta")).unwrap();
        let event = tweet_event("tweet-42", "/weather/producer", &tweet);
        let record = MessageRecord::from_event(event.clone()).expect("event to Kafka record");
        producer()
            .send(FutureRecord::to(&topic).key("Perú").message_record(&record), OP_TIMEOUT)
            .await
            .unwrap_or_else(|(err, _)| panic!("produce the event: {err}"));

        let message = receive(&consumer(&topic), 1).await.remove(0);
        let headers = message.headers().expect("a binary-mode record has headers");
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        for expected in ["ce_specversion", "ce_id", "ce_type", "ce_source", "content-type"] {
            assert!(names.contains(&expected), "header {expected} missing from {names:?}");
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("ce_id").as_deref(), Some("tweet-42"));
        assert_eq!(header("ce_type").as_deref(), Some(TWEET_TYPE));
        assert_eq!(header("ce_specversion").as_deref(), Some("1.0"));
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        // Binary mode: the payload is the tweet itself, not an event envelope.
        let payload: serde_json::Value =
            serde_json::from_slice(message.payload().expect("payload")).expect("JSON");
        assert_eq!(payload, serde_json::to_value(&tweet).unwrap());

        let back = message.to_event().expect("record to event");
        assert_eq!((back.id(), back.ty(), back.source()), (event.id(), event.ty(), event.source()));
        assert_eq!(json(back.data()), json(event.data()));
        let received = Received::from_event(&back).expect("a sink reads it");
        assert_eq!((received.id.as_str(), received.tweet), ("tweet-42", tweet));
    };
    with_cleanup(body, delete_topic(&admin, &topic)).await;
}

/// Event data as JSON: we write `Data::Json`, Kafka gives back `Data::Binary` of the same JSON.
fn json(data: Option<&Data>) -> serde_json::Value {
    match data.expect("event has data") {
        Data::Json(v) => v.clone(),
        Data::Binary(b) => serde_json::from_slice(b).expect("binary data is JSON"),
        Data::String(s) => serde_json::from_str(s).expect("string data is JSON"),
    }
}

#[tokio::test]
async fn a_down_broker_is_reported_by_name() {
    let brokers = format!("127.0.0.1:{}", closed_port());
    let Err(err) = kafka_ready(&brokers).await else {
        panic!("nothing listens on a released port, yet it answered")
    };
    assert!(err.starts_with(&format!("Kafka is down at {brokers}: ")), "{err}");
    assert!(err.contains("dev/stack up"), "{err}");
}
