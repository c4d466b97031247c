//! What a failed `Publish` says of the record, against librdkafka's mock cluster (a broker inside
//! the test process): a record Kafka refused or that never entered the client's queue is
//! "not stored" and is not in the topic; a record that timed out in flight is "unknown" and is in
//! the topic; a fatal client error fails the probes. The deployed librdkafka settings
//! (`producer::client_config`) throughout, plus what a case needs.

use crate::{client, config, request, serve_with_client, tweet};
use producer::Config;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    mocking::MockCluster,
    producer::DefaultProducerContext,
    types::{RDKafkaApiKey, RDKafkaRespErr},
};
use std::time::{Duration, Instant};
use tonic::{Code, Status};

struct Mock {
    cluster: MockCluster<'static, DefaultProducerContext>,
    config: Config,
}

/// A one-broker mock cluster with a one-partition topic, and producer's settings for it.
fn mock(message_timeout_ms: u64) -> Mock {
    let cluster = MockCluster::new(1).expect("librdkafka's mock cluster");
    let topic = format!("it-producer-{}", uuid::Uuid::now_v7().simple());
    cluster.create_topic(&topic, 1, 1).expect("a mock topic");
    let config = config(&cluster.bootstrap_servers(), &topic, message_timeout_ms);
    Mock { cluster, config }
}

impl Mock {
    /// The records in the topic: `(ce_id, ce_weatheridempotent)` of each, read from the start.
    fn records(&self) -> Vec<(String, Option<String>)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.config.kafka_brokers.as_str())
            .set("group.id", "it-producer-reader")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (_, high) =
            consumer.fetch_watermarks(&self.config.topic, 0, Duration::from_secs(10)).expect("watermarks");
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.config.topic, 0, Offset::Beginning).unwrap();
        consumer.assign(&assignment).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut records = Vec::new();
        while (records.len() as i64) < high {
            assert!(Instant::now() < deadline, "read {} of {high} records", records.len());
            let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
            let message = message.expect("a record");
            let header = |name: &str| {
                use rdkafka::message::Headers;
                let headers = message.headers()?;
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| Some(String::from_utf8_lossy(h.value?).into_owned()))
            };
            records.push((header("ce_id").expect("an id"), header("ce_weatheridempotent")));
        }
        records
    }
}

#[track_caller]
fn assert_outcome(status: &Status, code: Code, outcome: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.metadata().get(proto::OUTCOME).expect("an outcome"), outcome, "{status:?}");
}

const ID: &str = "0190c3e4-7d2a-7b8e-9f00-1234567890ab";

#[tokio::test(flavor = "multi_thread")]
async fn the_callers_id_is_the_records_and_idempotent_marks_it() {
    let mock = mock(5_000);
    let mut client =
        client(&serve_with_client(producer::client_config(&mock.config), &mock.config).await).await;
    let reply = client.publish(request(tweet("Sol", "Chile", ""), ID, true)).await.expect("published");
    assert_eq!(reply.get_ref().id, ID);
    let reply = client.publish(request(tweet("Sol", "Chile", ""), "", false)).await.expect("published");
    let picked = reply.get_ref().id.clone();
    assert_eq!(uuid::Uuid::parse_str(&picked).unwrap().get_version_num(), 7);
    assert_eq!(mock.records(), [(ID.to_owned(), Some("true".to_owned())), (picked, None)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_kafka_refused_is_failed_precondition_not_stored_and_not_in_the_topic() {
    let mock = mock(5_000);
    let mut client =
        client(&serve_with_client(producer::client_config(&mock.config), &mock.config).await).await;
    client.publish(request(tweet("Sol", "Chile", ""), "", false)).await.expect("the first is written");
    mock.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let status = client.publish(request(tweet("Lluvia", "Chile", ""), ID, false)).await.expect_err("refused");
    assert_outcome(&status, Code::FailedPrecondition, proto::NOT_STORED);
    assert_eq!(status.message(), "the tweet was not stored in Kafka");
    let records = mock.records();
    assert_eq!(records.len(), 1);
    assert_ne!(records[0].0, ID);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_timed_out_in_flight_is_deadline_exceeded_unknown_and_is_in_the_topic() {
    let mock = mock(1_500);
    let mut client =
        client(&serve_with_client(producer::client_config(&mock.config), &mock.config).await).await;
    client.publish(request(tweet("Sol", "Chile", ""), "", false)).await.expect("the first is written");
    mock.cluster.broker_round_trip_time(1, Duration::from_secs(3)).unwrap();
    let status = client.publish(request(tweet("Tarde", "Chile", ""), ID, false)).await.expect_err("too late");
    assert_outcome(&status, Code::DeadlineExceeded, proto::UNKNOWN);
    mock.cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    // Written after all: answering "not stored" would have invited a second copy.
    assert!(mock.records().iter().any(|(id, _)| id == ID), "{:?}", mock.records());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_that_never_found_room_in_the_queue_is_unavailable_not_stored() {
    let mock = mock(10_000);
    let mut client_config = producer::client_config(&mock.config);
    client_config.set("queue.buffering.max.messages", "1");
    let address = serve_with_client(client_config, &mock.config).await;
    let mut first = client(&address).await;
    let mut second = client(&address).await;
    first.publish(request(tweet("Sol", "Chile", ""), "", false)).await.expect("the first is written");
    mock.cluster.broker_round_trip_time(1, Duration::from_secs(3)).unwrap();
    // One record awaits the slow broker and holds the only place in the queue.
    let held =
        tokio::spawn(async move { first.publish(request(tweet("Lento", "Chile", ""), "", false)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status =
        second.publish(request(tweet("Sin sitio", "Chile", ""), ID, false)).await.expect_err("no room");
    assert_outcome(&status, Code::Unavailable, proto::NOT_STORED);
    // It waited for room for the queue timeout (`KAFKA_QUEUE_TIMEOUT_MS`, 1 s here), not less.
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    mock.cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    held.await.unwrap().expect("the held record is written");
    let records = mock.records();
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|(id, _)| id != ID));
}

/// A client that cannot guarantee order and once-ness any more (librdkafka's fatal error) can
/// publish nothing: both probes fail with the reason, and a publish is "not stored".
#[tokio::test(flavor = "multi_thread")]
async fn a_fatal_kafka_error_fails_the_probes() {
    let mock = mock(5_000);
    let mut client_config = producer::client_config(&mock.config);
    // A permanent error for one record breaks the gap-less guarantee: fatal, as the way to get
    // librdkafka to declare one.
    client_config.set("enable.gapless.guarantee", "true");
    let address = serve_with_client(client_config, &mock.config).await;
    let mut client = client(&address).await;
    let http = reqwest::Client::new();
    let probe = |path: &'static str| {
        let (http, address) = (http.clone(), address.clone());
        async move {
            let response = http.get(format!("http://{address}{path}")).send().await.expect(path);
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    client.publish(request(tweet("Sol", "Chile", ""), "", false)).await.expect("the first is written");
    assert_eq!(probe("/health/readiness").await, (200, "ok".to_owned()));

    mock.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    client.publish(request(tweet("Lluvia", "Chile", ""), "", false)).await.expect_err("refused");
    for path in ["/health/readiness", "/health/liveness"] {
        let (status, reason) = probe(path).await;
        assert_eq!(status, 503, "{path}: {reason}");
        let error: serde_json::Value = serde_json::from_str(&reason).expect("a JSON refusal");
        let error = error["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("the Kafka client failed for good: "), "{path}: {reason}");
    }
    let status = client.publish(request(tweet("Sol", "Chile", ""), "", false)).await.expect_err("broken");
    assert_outcome(&status, Code::Unavailable, proto::NOT_STORED);
}
