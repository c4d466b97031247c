//! `producer` integration tests: gRPC `Publish` and the health probes on one loopback port.
//! None needs Kafka: the contract is checked before Kafka is, and Kafka's absence is the point
//! of the UNAVAILABLE test (ingest's tests cover publishing into a real topic).

use producer::{Config, Publisher};
use proto::v1::{PublishRequest, Tweet, producer_client::ProducerClient};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tonic::Code;

/// Serves `producer::router` on a loopback port and returns its address.
async fn serve(kafka_brokers: &str, message_timeout_ms: u64) -> String {
    let config = Config {
        port: 0,
        host: "127.0.0.1".into(),
        kafka_brokers: kafka_brokers.into(),
        topic: format!("it-producer-{}", uuid::Uuid::now_v7().simple()),
        linger_ms: 1,
        message_timeout_ms,
        queue_timeout_ms: 1_000,
        event_source: "/it/producer".into(),
    };
    let publisher = Publisher::new(&config).expect("a Kafka producer");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(common::server::serve(listener, producer::router(publisher), std::future::pending()));
    address
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
        let status =
            client.publish(PublishRequest { tweet, idempotency_key: String::new() }).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
}

#[tokio::test]
async fn unreachable_kafka_is_unavailable_within_the_message_timeout() {
    let mut client = client(&serve("127.0.0.1:1", 1_500).await).await;
    let started = Instant::now();
    let status = client
        .publish(PublishRequest { tweet: tweet("Hoy llueve", "Chile", ""), idempotency_key: String::new() })
        .await
        .expect_err("Kafka is unreachable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "kafka is unavailable");
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
    let status = client(&address)
        .await
        .publish(PublishRequest { tweet: None, idempotency_key: String::new() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}
