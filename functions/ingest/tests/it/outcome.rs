//! What ingest answers when a tweet was not acknowledged: 503 only when Kafka provably does not
//! hold it (producer unreachable, Kafka's refusal), 504 `{"outcome": "unknown", "id": …}` when
//! it may (a delivery timed out in flight, ingest's own deadline, a connection broken mid-call,
//! a proxy's answer). The mapping itself is [`ingest::Outcome::of`]; the cases here go through
//! a real producer, real Kafka where it can show the case, and librdkafka's mock cluster where
//! only a broker that answers late can (the shared Kafka is never frozen).

use crate::kafka::{self, RunningProducer, Topic};
use crate::{BODY_LIMIT, Reply, app, config, post_json, send};
use axum::http::{Request, StatusCode, header::RETRY_AFTER};
use ingest::Outcome;
use rdkafka::mocking::MockCluster;
use serde_json::json;
use std::time::{Duration, Instant};
use tonic::{Code, Status, metadata::MetadataValue};

fn from_producer(code: Code, outcome: &'static str) -> Status {
    let mut status = Status::new(code, "from producer");
    status.metadata_mut().insert(proto::OUTCOME, MetadataValue::from_static(outcome));
    status
}

#[test]
fn the_mapping_from_producers_status() {
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let never_connected = Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
    assert_eq!(never_connected.code(), Code::Unavailable);
    let reset = Status::from_error(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)));
    let table = [
        (Status::invalid_argument("texto"), Outcome::Invalid),
        (from_producer(Code::Unavailable, proto::NOT_STORED), Outcome::NotStored),
        (from_producer(Code::FailedPrecondition, proto::NOT_STORED), Outcome::NotStored),
        (from_producer(Code::Internal, proto::NOT_STORED), Outcome::NotStored),
        (never_connected, Outcome::NotStored),
        (from_producer(Code::DeadlineExceeded, proto::UNKNOWN), Outcome::Unknown),
        (from_producer(Code::Unknown, proto::UNKNOWN), Outcome::Unknown),
        // A code that says "nothing stored" needs producer's word for it.
        (from_producer(Code::Unavailable, proto::UNKNOWN), Outcome::Unknown),
        (Status::unavailable("a proxy's 503, a keep-alive timeout"), Outcome::Unknown),
        (Status::failed_precondition("not producer's"), Outcome::Unknown),
        (from_producer(Code::DeadlineExceeded, proto::NOT_STORED), Outcome::Unknown),
        // ingest's own deadline, a connection reset mid-call, an HTTP/2 error.
        (Status::cancelled("Timeout expired"), Outcome::Unknown),
        (reset, Outcome::Unknown),
        (Status::internal("h2 protocol error"), Outcome::Unknown),
    ];
    for (status, expected) in table {
        assert_eq!(Outcome::of(&status), expected, "{status:?}");
    }
}

#[track_caller]
fn assert_unknown(reply: &Reply, keyed: bool) -> uuid::Uuid {
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.json);
    assert_eq!(reply.json["outcome"], "unknown", "{}", reply.json);
    assert!(reply.headers.get(RETRY_AFTER).is_none(), "no invitation to retry blindly");
    let error = reply.json["error"].as_str().unwrap();
    assert!(error.contains("Idempotency-Key"), "{error}");
    assert_eq!(error.contains("may store it twice"), !keyed, "{error}");
    uuid::Uuid::parse_str(reply.json["id"].as_str().expect("an id")).expect("a UUID")
}

/// What the shared Kafka can show: a refusal (the topic's `max.message.bytes`) is 503, and the
/// same producer then takes a tweet that fits.
#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_kafka_sent_is_503_and_nothing_is_written() {
    let topic = Topic::create_on(&kafka::brokers(), &[("max.message.bytes", "700")]).await;
    let producer = RunningProducer::start(&kafka::brokers(), &topic.name, 8_000).await;
    let app = app(&producer.url, BODY_LIMIT);
    // 280 different CJK characters (840 bytes) that lz4 cannot shrink below the limit.
    let texto: String = (0..280u32).map(|i| char::from_u32(0x4E00 + (i * 7919) % 20_000).unwrap()).collect();
    let reply = post_json(&app, json!({"texto": texto, "pais": "Chile"}).to_string()).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.json);
    assert_eq!(reply.json["outcome"], "not-stored");
    assert!(reply.json.get("id").is_none(), "{}", reply.json);
    assert_eq!(topic.record_count().await, 0);

    let reply = post_json(&app, r#"{"texto":"Sol","pais":"Chile"}"#).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);
    assert_eq!(topic.record_count().await, 1);
    producer.stop().await;
    topic.delete().await;
}

/// Nothing was sent, but librdkafka reports a timed-out record the same way whether or not it
/// was in flight, so the honest answer is "unknown".
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_kafka_behind_the_producer_is_504_with_the_id() {
    let producer = RunningProducer::start("127.0.0.1:1", "unreachable", 1_500).await;
    let app = app(&producer.url, BODY_LIMIT);
    let started = Instant::now();
    let reply = post_json(&app, r#"{"texto":"Hoy llueve","pais":"Chile"}"#).await;
    let id = assert_unknown(&reply, false);
    assert_eq!(id.get_version_num(), 7);
    assert!(started.elapsed() < Duration::from_secs(8), "answered after {:?}", started.elapsed());
    producer.stop().await;
}

/// The case the old 503 lied about: the broker wrote the record and answered after the message
/// timeout. ingest says "unknown", names the id, and the record is there under it.
#[tokio::test(flavor = "multi_thread")]
async fn a_tweet_kafka_wrote_but_acknowledged_too_late_is_504_and_is_in_kafka_under_its_id() {
    let mock = MockCluster::new(1).expect("librdkafka's mock cluster");
    let brokers = mock.bootstrap_servers();
    let name = Topic::fresh_name();
    mock.create_topic(&name, kafka::PARTITIONS, 1).expect("a mock topic");
    let topic = Topic::existing(&brokers, name);
    let producer = RunningProducer::start(&brokers, &topic.name, 1_500).await;
    let app = app(&producer.url, BODY_LIMIT);
    // Warm: metadata and the producer id are fetched before the broker slows down.
    assert_eq!(post_json(&app, r#"{"texto":"Sol","pais":"Chile"}"#).await.status, StatusCode::ACCEPTED);

    mock.broker_round_trip_time(1, Duration::from_secs(3)).unwrap();
    let request = Request::post("/input")
        .header("content-type", "application/json")
        .header("idempotency-key", "late-1")
        .body(r#"{"texto":"Tarde","pais":"Perú"}"#.into())
        .unwrap();
    let reply = send(&app, request).await;
    let id = assert_unknown(&reply, true);
    assert_eq!(id.get_version_num(), 5);
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();

    let ids: Vec<String> =
        topic.read(2).await.iter().map(|r| kafka::header(r, "ce_id").unwrap().to_owned()).collect();
    assert!(ids.contains(&id.to_string()), "{id} not among {ids:?}");
    producer.stop().await;
}

/// A producer that takes the call and never answers: ingest's own deadline (the gRPC deadline it
/// sends, enforced by its channel) is "unknown" too.
#[tokio::test(flavor = "multi_thread")]
async fn ingests_own_deadline_is_504() {
    let url = serve_grpc(
        axum::Router::new()
            .route("/weather.v1.Producer/Publish", axum::routing::post(std::future::pending::<StatusCode>)),
    )
    .await;
    let app = ingest::router(
        ingest::AppState::new(&ingest::Config { producer_timeout_ms: 300, ..config(&url) }).unwrap(),
    );
    let started = Instant::now();
    assert_unknown(&post_json(&app, r#"{"texto":"Sol","pais":"Chile"}"#).await, false);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3), "{elapsed:?}");
}

/// A 503 from something between ingest and producer (an activator, a gateway) comes without
/// producer's word, so it proves nothing: 504.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxys_503_is_504() {
    let url = serve_grpc(axum::Router::new().route(
        "/weather.v1.Producer/Publish",
        axum::routing::post(|| async { StatusCode::SERVICE_UNAVAILABLE }),
    ))
    .await;
    assert_unknown(&post_json(&app(&url, BODY_LIMIT), r#"{"texto":"Sol","pais":"Chile"}"#).await, false);
}

/// A producer whose connection breaks after the request was sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_broken_mid_call_is_504() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        // Bounded: a few connections, each read until the request's bytes are in, then dropped.
        for _ in 0..4 {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut buffer = vec![0u8; 4096];
            let mut read = 0;
            while read < 200 {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await {
                    Ok(Ok(n)) if n > 0 => read += n,
                    _ => break,
                }
            }
        }
    });
    assert_unknown(&post_json(&app(&url, BODY_LIMIT), r#"{"texto":"Sol","pais":"Chile"}"#).await, false);
}

/// Serves `routes` (HTTP/1.1 and h2c) on a loopback port for the rest of the test.
async fn serve_grpc(routes: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, routes).await });
    url
}
