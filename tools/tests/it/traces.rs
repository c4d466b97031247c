//! One trace per tweet across all four functions (and the runner, which plays KafkaSource),
//! read back from the stack's Jaeger: every span present once, every parent link right, an
//! incoming `traceparent` continued.

use crate::{pipeline_args, stack, tweet};
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};
use testkit::env_or;
use tools::{
    pipeline::Pipeline,
    state::{State, jaeger},
};

/// A span as Jaeger's HTTP API returns it, reduced to what the test checks.
#[derive(Debug, Clone)]
struct SpanInfo {
    service: String,
    operation: String,
    parent: Option<String>,
}

/// The spans of one trace by id, once `expected` of them arrived (the exporters batch).
async fn trace(trace_id: &str, expected: usize) -> BTreeMap<String, SpanInfo> {
    let jaeger_url = format!("http://127.0.0.1:{}", env_or("JAEGER_UI_PORT", "16686"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let spans = jaeger::trace(&jaeger_url, trace_id, expected).await;
        if spans.len() >= expected || Instant::now() > deadline {
            return spans
                .into_iter()
                .map(|s| (s.id, SpanInfo { service: s.service, operation: s.operation, parent: s.parent }))
                .collect();
        }
    }
}

/// Checks the whole tree of one tweet's trace; returns the span id of ingest's server span's
/// parent (the caller's span, when it sent a `traceparent`).
fn check_tree(spans: &BTreeMap<String, SpanInfo>, topic: &str) -> Option<String> {
    let find = |service: &str, operation: &str| -> Vec<(&String, &SpanInfo)> {
        spans.iter().filter(|(_, s)| s.service == service && s.operation == operation).collect()
    };
    let one = |service: &str, operation: &str| {
        let found = find(service, operation);
        assert_eq!(found.len(), 1, "one {service} span {operation:?} in {spans:#?}");
        (found[0].0.clone(), found[0].1.clone())
    };
    let parent_is = |child: &SpanInfo, parent: &str| {
        assert_eq!(child.parent.as_deref(), Some(parent), "parent of {child:?}");
    };
    let (ingest_id, ingest) = one("ingest", "POST /input");
    let (publish_id, publish) = one("ingest", "weather.v1.Producer/Publish");
    parent_is(&publish, &ingest_id);
    // Named from the route template (bounded), which tonic registers per service.
    let (server_id, server) = one("producer", "POST /weather.v1.Producer/{*rest}");
    parent_is(&server, &publish_id);
    let (send_id, send) = one("producer", &format!("send {topic}"));
    parent_is(&send, &server_id);
    let receives = find("runner", &format!("receive {topic}"));
    assert_eq!(receives.len(), 2, "one receive per KafkaSource");
    for (_, receive) in &receives {
        parent_is(receive, &send_id);
    }
    for (sink, client) in [("counter", "EVALSHA"), ("archiver", "insert tweets")] {
        let (post_id, post) = one("runner", &format!("POST {sink}"));
        assert!(
            receives.iter().any(|(id, _)| post.parent.as_ref() == Some(*id)),
            "POST {sink} under a receive"
        );
        let (sink_id, sink_span) = one(sink, "POST /");
        parent_is(&sink_span, &post_id);
        let (_, store) = one(sink, client);
        parent_is(&store, &sink_id);
    }
    assert_eq!(spans.len(), 12, "no other span in the trace: {spans:#?}");
    let services: BTreeSet<&str> = spans.values().map(|s| s.service.as_str()).collect();
    assert_eq!(services, BTreeSet::from(["archiver", "counter", "ingest", "producer", "runner"]));
    ingest.parent
}

#[tokio::test(flavor = "multi_thread")]
async fn every_tweet_is_one_trace_through_all_four_functions() {
    let stack = stack();
    let topic = stack.topic("messages");
    let otlp = format!("http://127.0.0.1:{}", env_or("JAEGER_OTLP_PORT", "4317"));
    // Log levels must not thin out traces.
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", Some(otlp.as_str())),
        ("OTEL_BSP_SCHEDULE_DELAY", Some("100")),
        ("RUST_LOG", Some("warn")),
    ];
    let runner =
        Pipeline::start_with_env(&stack, &pipeline_args(), &[], &env).await.expect("the runner starts");
    let client = reqwest::Client::new();

    // Three tweets continue a caller's trace; three start their own.
    let mut incoming = Vec::new();
    let mut accepted = Vec::new();
    for i in 0..6 {
        let mut request = client
            .post(format!("{}/input", runner.ingest_url()))
            .header("content-type", "application/json")
            .body(tweet(i).to_string());
        if i < 3 {
            let trace_id = format!("{:032x}", uuid::Uuid::new_v4().as_u128());
            let span_id = format!("{:016x}", uuid::Uuid::new_v4().as_u128() as u64 | 1);
            request = request.header("traceparent", format!("00-{trace_id}-{span_id}-01"));
            incoming.push((trace_id, span_id));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 202);
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        accepted.push(body["id"].as_str().unwrap().to_owned());
    }

    // The archive records each tweet's trace id; wait until all six are there.
    let tweets = State::new(&stack).unwrap().archive().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tweets.count_documents(Default::default()).await.unwrap() < 6 {
        assert!(Instant::now() < deadline, "tweets not archived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut trace_ids = Vec::new();
    for id in &accepted {
        let doc = tweets.find_one(mongodb::bson::doc! { "_id": id }).await.unwrap().unwrap();
        trace_ids.push(doc.get_str("trace_id").expect("the archive has the trace id").to_owned());
    }
    for (i, (trace_id, span_id)) in incoming.iter().enumerate() {
        assert_eq!(&trace_ids[i], trace_id, "the incoming trace id is continued");
        let spans = trace(trace_id, 12).await;
        assert_eq!(
            check_tree(&spans, &topic).as_deref(),
            Some(span_id.as_str()),
            "ingest's parent is the caller's span"
        );
    }
    for trace_id in &trace_ids[3..] {
        let spans = trace(trace_id, 12).await;
        assert_eq!(check_tree(&spans, &topic), None, "a trace started by ingest has no parent");
    }
    let distinct: BTreeSet<&String> = trace_ids.iter().collect();
    assert_eq!(distinct.len(), 6, "one trace per tweet");

    // Probes and /metrics make no spans (the runner polled every function's readiness).
    for service in ["ingest", "producer", "counter", "archiver"] {
        let url = format!(
            "http://127.0.0.1:{}/api/services/{service}/operations",
            env_or("JAEGER_UI_PORT", "16686")
        );
        let body: serde_json::Value =
            serde_json::from_slice(&reqwest::get(url).await.unwrap().bytes().await.unwrap()).unwrap();
        let operations: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o.as_str().or(o["name"].as_str()))
            .collect();
        assert!(!operations.is_empty(), "{service} exported spans");
        assert!(
            !operations.iter().any(|o| o.contains("/health") || o.contains("/metrics")),
            "{service}: {operations:?}"
        );
    }

    // SIGTERM, so every process flushes its spans.
    runner.stop().await;
    tweets.drop().await.unwrap();
}
