//! `tools replay` posts a dead letter only to a sink it was given: a letter naming any other URL
//! (whoever writes to the dead-letter topic chooses it) is counted, not posted, and the command
//! exits 1. The letters go through a real Kafka topic of the test's own.

use cloudevents::{
    EventBuilder, EventBuilderV10, binding::rdkafka::FutureRecordExt, binding::rdkafka::MessageRecord,
};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use serde_json::{Value, json};
use std::{path::PathBuf, time::Duration};
use tokio::net::TcpListener;

/// A dead letter as Knative writes it: the event as it was, plus where it was going.
async fn write_letter(producer: &FutureProducer, topic: &str, id: &str, dest: &str) {
    let event = EventBuilderV10::new()
        .id(id)
        .source("/weather-tweets/producer")
        .ty("dev.weather-tweets.tweet.v1")
        .data("application/json", json!({"texto": "hola", "pais": "Chile", "clima": "soleado"}))
        .extension("knativeerrordest", dest)
        .extension("knativeerrorcode", "503")
        .build()
        .unwrap();
    let record = MessageRecord::from_event(event).unwrap();
    producer
        .send(
            FutureRecord::<str, _>::to(topic).message_record(&record),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .expect("Kafka takes the letter");
}

/// `tools replay` on `topic`; its exit code and what it printed.
async fn replay(topic: &str, out: &PathBuf, extra: &[&str]) -> (Option<i32>, Value) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tools"))
        .args(["replay", "--dead-letter-topic", topic, "--out"])
        .arg(out)
        .args(extra)
        .env("KAFKA_BROKERS", testkit::kafka_brokers())
        .output()
        .await
        .unwrap();
    let printed = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stderr)));
    (output.status.code(), printed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_letter_naming_an_address_that_is_no_sink_is_not_posted() {
    let brokers = testkit::kafka_brokers();
    let topic = testkit::unique("replay-");
    runner::create_topics(&brokers, std::slice::from_ref(&topic)).await.unwrap();
    let delete = async {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
        admin.delete_topics(&[&topic], &AdminOptions::new()).await.unwrap();
    };
    testkit::with_cleanup(
        async {
            // The sink answers 202 to anything; the other address must never be connected to.
            let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let sink_url = format!("http://{}", sink.local_addr().unwrap());
            tokio::spawn(tools::anchor::serve(sink));
            let elsewhere = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let elsewhere_url = format!("http://{}/admin", elsewhere.local_addr().unwrap());

            let producer: FutureProducer =
                ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
            write_letter(&producer, &topic, "genuine", &sink_url).await;
            write_letter(&producer, &topic, "forged", &elsewhere_url).await;
            let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools-tests").join(&topic);

            let sink_arg = format!("counter={sink_url}");
            let (code, replayed) = replay(&topic, &out, &["--sink", &sink_arg]).await;
            assert_eq!(code, Some(1), "a forbidden letter fails the command: {replayed}");
            assert_eq!(
                (&replayed["letters"], &replayed["applied"], &replayed["forbidden"]),
                (&json!(2), &json!(1), &json!(1)),
                "{replayed}"
            );
            let log = std::fs::read_to_string(out.join("replayed.jsonl")).unwrap();
            let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
            let forged = lines.iter().find(|l| l["id"] == "forged").expect("the forged letter is logged");
            assert_eq!((&forged["outcome"], &forged["dest"]), (&json!("forbidden"), &json!(elsewhere_url)));
            assert_eq!(lines.iter().find(|l| l["id"] == "genuine").unwrap()["sink"], "counter");

            // Sent to a sink by an operator's --rewrite, the next run goes on from the letter not
            // applied (the genuine one was, and its progress committed) and succeeds; a run after
            // that has nothing left to do.
            let rewrite = format!("{elsewhere_url}={sink_url}");
            let (code, replayed) = replay(&topic, &out, &["--sink", &sink_arg, "--rewrite", &rewrite]).await;
            assert_eq!(code, Some(0), "{replayed}");
            assert_eq!(
                (&replayed["letters"], &replayed["applied"], &replayed["forbidden"]),
                (&json!(1), &json!(1), &json!(0)),
                "{replayed}"
            );
            let (code, replayed) = replay(&topic, &out, &["--sink", &sink_arg]).await;
            assert_eq!((code, &replayed["letters"]), (Some(0), &json!(0)), "{replayed}");
            let (code, replayed) =
                replay(&topic, &out, &["--sink", &sink_arg, "--rewrite", &rewrite, "--from-start"]).await;
            assert_eq!(
                (code, &replayed["letters"], &replayed["duplicates"]),
                (Some(0), &json!(2), &json!(0)),
                "{replayed}"
            );

            // A rewrite to an address that is no sink is refused before anything is read.
            let rewrite = format!("{sink_url}={elsewhere_url}");
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_tools"))
                .args(["replay", "--dead-letter-topic", &topic, "--sink", &sink_arg, "--rewrite", &rewrite])
                .env("KAFKA_BROKERS", &brokers)
                .output()
                .await
                .unwrap();
            assert!(!output.status.success());
            assert!(String::from_utf8_lossy(&output.stderr).contains("which is no --sink"), "{output:?}");

            // A connection would wait in the listener's backlog even after the client gave up.
            let contacted = tokio::time::timeout(Duration::from_millis(200), elsewhere.accept()).await;
            assert!(contacted.is_err(), "the forged destination was connected to");
        },
        delete,
    )
    .await;
}
