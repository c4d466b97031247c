//! `producer` integration tests: gRPC `Publish` and the health probes on one loopback port.
//! The contract is checked before Kafka is, so those tests need no Kafka; what a failure says of
//! the record (`producer::failure`) is shown against librdkafka's own mock cluster, which can
//! refuse a record, answer late or break the client for good without touching the shared Kafka
//! (ingest's tests cover publishing into a real topic).

mod mock;

use producer::{Config, Publisher};
use proto::v1::{PublishRequest, Tweet, producer_client::ProducerClient};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::Code;

fn config(kafka_brokers: &str, topic: &str, message_timeout_ms: u64) -> Config {
    Config {
        port: 0,
        host: "127.0.0.1".into(),
        kafka_brokers: kafka_brokers.into(),
        topic: topic.into(),
        linger_ms: 1,
        message_timeout_ms,
        queue_timeout_ms: 1_000,
        kafka_debug: None,
        event_source: "/it/producer".into(),
    }
}

/// Serves `producer::router` on a loopback port and returns its address.
async fn serve(kafka_brokers: &str, message_timeout_ms: u64) -> String {
    let topic = format!("it-producer-{}", uuid::Uuid::now_v7().simple());
    let config = config(kafka_brokers, &topic, message_timeout_ms);
    serve_publisher(Publisher::new(&config).expect("a Kafka producer")).await
}

/// Serves `config` with librdkafka settings `client` (the deployed ones plus a test's).
async fn serve_with_client(client: ClientConfig, config: &Config) -> String {
    serve_publisher(Publisher::with_client(client, config).expect("a Kafka producer")).await
}

async fn serve_publisher(publisher: Publisher) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(common::server::serve(listener, producer::router(publisher), std::future::pending()));
    address
}

fn request(tweet: Option<Tweet>, id: &str, idempotent: bool) -> PublishRequest {
    PublishRequest { tweet, id: id.into(), idempotent }
}

async fn client(address: &str) -> ProducerClient<tonic::transport::Channel> {
    ProducerClient::connect(format!("http://{address}")).await.expect("connecting to producer")
}

fn tweet(texto: &str, pais: &str, clima: &str) -> Option<Tweet> {
    Some(Tweet { texto: texto.into(), pais: pais.into(), clima: clima.into() })
}

#[tokio::test]
async fn a_tweet_that_breaks_the_contract_is_invalid_argument() {
    // Kafka is unreachable, so only validation can answer in time.
    let mut client = client(&serve("127.0.0.1:1", 1_500).await).await;
    let cases = [
        (None, "tweet"),
        (tweet("", "Chile", ""), "texto"),
        (tweet(&"x".repeat(281), "Chile", ""), "texto"),
        (tweet("x", "  ", ""), "pais"),
        (tweet("x", "Ch\u{7}ile", ""), "pais"),
        (tweet("x", "Chile", "caluroso"), "clima"),
    ];
    for (tweet, field) in cases {
        let status = client.publish(request(tweet, "", false)).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
}

#[tokio::test]
async fn an_id_that_is_not_a_uuid_is_invalid_argument() {
    let mut client = client(&serve("127.0.0.1:1", 1_500).await).await;
    for id in ["x", "0190c3e4-7d2a-7b8e-9f00", &"a".repeat(10_000), "../../etc"] {
        let status = client.publish(request(tweet("Sol", "Chile", ""), id, false)).await.expect_err(id);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), "id must be a UUID");
    }
}

/// librdkafka reports a record that timed out the same way whether or not it was in flight, so
/// even with nothing sent the outcome is "unknown".
#[tokio::test]
async fn unreachable_kafka_is_deadline_exceeded_unknown_within_the_message_timeout() {
    let mut client = client(&serve("127.0.0.1:1", 1_500).await).await;
    let started = Instant::now();
    let status = client
        .publish(request(tweet("Hoy llueve", "Chile", ""), "", false))
        .await
        .expect_err("Kafka is unreachable");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.metadata().get(proto::OUTCOME).unwrap(), proto::UNKNOWN);
    assert_eq!(status.message(), "the tweet may or may not be in Kafka");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_000) && elapsed < Duration::from_secs(8),
        "answered after {elapsed:?}"
    );
}

#[tokio::test]
async fn health_probes_answer_on_the_grpc_port() {
    let address = serve("127.0.0.1:1", 1_500).await;
    let http = reqwest::Client::new();
    for probe in ["/health/readiness", "/health/liveness"] {
        let response = http.get(format!("http://{address}{probe}")).send().await.expect(probe);
        assert_eq!(response.status(), reqwest::StatusCode::OK, "{probe}");
        assert_eq!(response.text().await.unwrap(), "ok");
    }
    // And gRPC is served there too.
    let status = client(&address).await.publish(request(None, "", false)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}
