//! `archiver` integration tests: CloudEvents through `router` with `oneshot`, archived in the
//! local MongoDB-wire store (`MONGODB_URI`, default `mongodb://127.0.0.1:27017`) in a database of
//! the test's own, dropped at the end.

mod secrets;

use archiver::{Archive, Config, client_options};
use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use common::event::{KAFKA_EVENT_TYPE, TWEET_TYPE};
use futures::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};
use serde_json::json;
use std::time::Duration;
use testkit::{
    event::{binary, send},
    mongodb_uri,
};

fn config(uri: &str, database: &str, timeout_ms: u64) -> Config {
    Config {
        port: 0,
        host: "127.0.0.1".into(),
        mongodb_uri: uri.into(),
        database: database.into(),
        collection: "tweets".into(),
        timeout_ms,
    }
}

/// An archiver writing to a database of its own, and a client to read it back.
struct Fixture {
    app: Router,
    database: mongodb::Database,
}

impl Fixture {
    async fn new() -> Fixture {
        let name = format!("it_archiver_{}", uuid::Uuid::now_v7().simple());
        let archive = Archive::new(&config(&mongodb_uri(), &name, 5_000)).await.expect("a valid URI");
        let client = mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap();
        client
            .database("admin")
            .run_command(doc! {"ping": 1})
            .await
            .unwrap_or_else(|e| panic!("MongoDB at {} is needed and unreachable: {e}", mongodb_uri()));
        Fixture { app: common::sink::router(std::sync::Arc::new(archive)), database: client.database(&name) }
    }

    async fn documents(&self) -> Vec<Document> {
        let cursor = self.database.collection::<Document>("tweets").find(doc! {}).await.unwrap();
        cursor.try_collect().await.unwrap()
    }

    async fn drop_database(self) {
        self.database.drop().await.unwrap();
    }
}

const TRACEPARENT: &str = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";

/// What a KafkaSource delivers for partition 2, offset 41: our event, with its position.
fn delivered() -> Request<Body> {
    binary(
        "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        TWEET_TYPE,
        r#"{"texto":"Tormenta y granizo","pais":"el  SALVADOR","clima":"tormenta"}"#,
        &[
            ("ce-time", "2025-01-02T03:04:05.678Z"),
            ("ce-knativekafkapartition", "2"),
            ("ce-knativekafkaoffset", "41"),
            ("ce-traceparent", TRACEPARENT),
        ],
    )
}

#[tokio::test]
async fn an_event_becomes_exactly_one_document_however_often_it_is_delivered() {
    let f = Fixture::new().await;
    assert_eq!(send(&f.app, delivered()).await, (StatusCode::OK, json!({"duplicate": false})));
    assert_eq!(send(&f.app, delivered()).await, (StatusCode::OK, json!({"duplicate": true})));

    let documents = f.documents().await;
    assert_eq!(documents.len(), 1, "{documents:?}");
    let mut d = documents[0].clone();
    assert!(matches!(d.remove("archived_at"), Some(Bson::DateTime(_))), "{d:?}");
    let time = DateTime::parse_rfc3339_str("2025-01-02T03:04:05.678Z").unwrap();
    assert_eq!(
        d,
        doc! {
            "_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "texto": "Tormenta y granizo",
            "pais": "El Salvador",
            "pais_codigo": "SV",
            "clima": "tormenta",
            "time": time,
            "partition": 2_i32,
            "offset": 41_i64,
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        }
    );
    f.drop_database().await;
}

#[tokio::test]
async fn structured_and_wrapped_events_are_archived_with_what_they_carry() {
    let f = Fixture::new().await;
    let structured = json!({
        "specversion": "1.0",
        "id": "structured-1",
        "type": TWEET_TYPE,
        "source": "/it/archiver",
        "data": {"texto": "Mucho sol", "pais": "chile"},
    });
    let request = Request::post("/")
        .header("content-type", "application/cloudevents+json")
        .body(Body::from(structured.to_string()))
        .unwrap();
    assert_eq!(send(&f.app, request).await.0, StatusCode::OK);
    let wrapped = binary(
        "partition:0/offset:5",
        KAFKA_EVENT_TYPE,
        r#"{"texto":"Viento","país":"perú"}"#,
        &[("ce-knativekafkapartition", "0"), ("ce-knativekafkaoffset", "5"), ("ce-traceparent", "garbage")],
    );
    assert_eq!(send(&f.app, wrapped).await.0, StatusCode::OK);

    let mut documents = f.documents().await;
    documents.sort_by_key(|d| d.get_str("_id").unwrap().to_owned());
    let [wrapped, structured] = &documents[..] else { panic!("{documents:?}") };
    assert_eq!(wrapped.get_str("pais").unwrap(), "Perú");
    assert_eq!(wrapped.get_str("clima").unwrap(), "ventoso");
    assert_eq!((wrapped.get_i32("partition").unwrap(), wrapped.get_i64("offset").unwrap()), (0, 5));
    assert!(!wrapped.contains_key("trace_id") && !wrapped.contains_key("time"), "{wrapped:?}");
    assert_eq!(structured.get_str("clima").unwrap(), "soleado");
    assert!(!structured.contains_key("partition") && !structured.contains_key("offset"), "{structured:?}");
    f.drop_database().await;
}

#[tokio::test]
async fn events_that_can_never_be_archived_are_400_or_413_and_write_nothing() {
    let f = Fixture::new().await;
    let tweet = r#"{"texto":"x","pais":"Chile"}"#;
    let big = json!({"texto": "x", "pais": "Chile", "relleno": "x".repeat(64 * 1024)}).to_string();
    let cases = [
        (
            "not a CloudEvent",
            Request::post("/").header("content-type", "application/json").body(Body::from(tweet)).unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        ("wrong type", binary("a", "com.example.other", tweet, &[]), StatusCode::BAD_REQUEST),
        (
            "data not a tweet",
            binary("b", TWEET_TYPE, r#"{"texto":"","pais":"Chile"}"#, &[]),
            StatusCode::BAD_REQUEST,
        ),
        ("data not JSON", binary("c", TWEET_TYPE, "{", &[]), StatusCode::BAD_REQUEST),
        (
            "bad offset",
            binary(
                "d",
                KAFKA_EVENT_TYPE,
                tweet,
                &[("ce-knativekafkapartition", "0"), ("ce-knativekafkaoffset", "1.5")],
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad partition",
            binary(
                "e",
                KAFKA_EVENT_TYPE,
                tweet,
                &[("ce-knativekafkapartition", "-1"), ("ce-knativekafkaoffset", "1")],
            ),
            StatusCode::BAD_REQUEST,
        ),
        ("id over 128 bytes", binary(&"i".repeat(129), TWEET_TYPE, tweet, &[]), StatusCode::BAD_REQUEST),
        ("over 64 KiB", binary("f", TWEET_TYPE, &big, &[]), StatusCode::PAYLOAD_TOO_LARGE),
    ];
    for (case, request, expected) in cases {
        let (status, body) = send(&f.app, request).await;
        assert_eq!(status, expected, "{case}: {body}");
        assert!(body["error"].is_string(), "{case}: {body}");
    }
    assert_eq!(f.documents().await, Vec::<Document>::new());
    f.drop_database().await;
}

#[tokio::test]
async fn unreachable_mongodb_is_503() {
    let archive = Archive::new(&config("mongodb://127.0.0.1:1", "unreachable", 300)).await.unwrap();
    let app = common::sink::router(std::sync::Arc::new(archive));
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), send(&app, delivered()))
        .await
        .expect("an answer, not a hang");
    assert_eq!((status, body), (StatusCode::SERVICE_UNAVAILABLE, json!({"error": "mongodb is unavailable"})));
}

/// Concurrent requests are written in groups; each still gets its own answer, and a duplicate
/// inside a group is reported as one.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_events_are_archived_in_groups_each_exactly_once() {
    let fixture = Fixture::new().await;
    let tweet = r#"{"texto":"Llueve sin parar","pais":"Chile","clima":"lluvioso"}"#;
    // 300 deliveries of 200 distinct events: every event id below 100 comes twice.
    let ids: Vec<String> = (0..200).chain(0..100).map(|i| format!("group-{i}")).collect();
    let answers = futures::future::join_all(
        ids.iter().map(|id| send(&fixture.app, binary(id, TWEET_TYPE, tweet, &[]))),
    )
    .await;
    let mut duplicates = 0;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        duplicates += usize::from(body["duplicate"] == json!(true));
    }
    assert_eq!(duplicates, 100, "each repeated id is a duplicate exactly once");
    assert_eq!(fixture.documents().await.len(), 200);
    fixture.drop_database().await;
}

#[tokio::test]
async fn every_insert_asks_for_a_journaled_majority_and_the_server_takes_it() {
    // The insert commands archiver sends, as the driver saw them leave.
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Document>::new()));
    let name = format!("it_archiver_{}", uuid::Uuid::now_v7().simple());
    let config = config(&mongodb_uri(), &name, 5_000);
    let mut options = client_options(&config).await.expect("a valid URI");
    let seen = sent.clone();
    options.command_event_handler = Some(mongodb::event::EventHandler::callback(move |event| {
        if let mongodb::event::command::CommandEvent::Started(started) = event
            && started.command_name == "insert"
        {
            seen.lock().unwrap().push(started.command);
        }
    }));
    let app = common::sink::router(std::sync::Arc::new(Archive::with_options(options, &config).unwrap()));
    let f = Fixture {
        app,
        database: mongodb::Client::with_uri_str(mongodb_uri()).await.unwrap().database(&name),
    };

    // The server (FerretDB on the local stack) accepts the write concern: the tweet is archived.
    assert_eq!(send(&f.app, delivered()).await, (StatusCode::OK, json!({"duplicate": false})));
    assert_eq!(f.documents().await.len(), 1);
    let sent = sent.lock().unwrap().clone();
    assert!(!sent.is_empty(), "no insert command was seen");
    for command in &sent {
        let concern = command.get_document("writeConcern").unwrap_or_else(|_| panic!("{command:?}"));
        assert_eq!(concern.get_str("w"), Ok("majority"), "{concern:?}");
        assert_eq!(concern.get_bool("j"), Ok(true), "{concern:?}");
        assert!(concern.contains_key("wtimeout"), "{concern:?}");
    }
    f.drop_database().await;
}
