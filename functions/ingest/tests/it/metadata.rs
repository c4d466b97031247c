//! What ingest sends producer besides the tweet: the id it chose, the call's deadline and the
//! caller's trace context, read back by a producer that only records them.

use crate::{BODY_LIMIT, app, send};
use axum::http::{Method, Request, StatusCode, header::CONTENT_TYPE};
use proto::v1::{
    PublishRequest, PublishResponse,
    producer_server::{Producer, ProducerServer},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tonic::metadata::MetadataMap;

/// Answers every call, keeping the metadata and the message of the last one.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Option<(MetadataMap, PublishRequest)>>>);

#[tonic::async_trait]
impl Producer for Recorder {
    async fn publish(
        &self,
        request: tonic::Request<PublishRequest>,
    ) -> Result<tonic::Response<PublishResponse>, tonic::Status> {
        let metadata = request.metadata().clone();
        let request = request.into_inner();
        let id = request.id.clone();
        *self.0.lock().unwrap() = Some((metadata, request));
        Ok(tonic::Response::new(PublishResponse { id, partition: 0, offset: 0 }))
    }
}

#[tokio::test]
async fn producer_gets_the_deadline_and_the_callers_trace_context_unchanged() {
    let recorder = Recorder::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let routes = tonic::service::Routes::new(ProducerServer::new(recorder.clone())).into_axum_router();
    tokio::spawn(async move { axum::serve(listener, routes).await });

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = Request::builder()
        .method(Method::POST)
        .uri("/input")
        .header(CONTENT_TYPE, "application/json")
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=opaque")
        .body(r#"{"texto":"Hoy llueve","pais":"Chile"}"#.into())
        .unwrap();
    let reply = send(&app(&url, BODY_LIMIT), request).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.json);

    let (metadata, message) = recorder.0.lock().unwrap().take().expect("producer was called");
    // The id ingest chose before the call, and answered with.
    assert_eq!(reply.json["id"], message.id.as_str());
    assert_eq!(uuid::Uuid::parse_str(&message.id).unwrap().get_version_num(), 7);
    assert!(!message.idempotent);
    assert_eq!(metadata.get("traceparent").unwrap(), traceparent);
    assert_eq!(metadata.get("tracestate").unwrap(), "vendor=opaque");
    // `app` gives producer 10 s; tonic writes the header its own way.
    let mut expected = tonic::Request::new(());
    expected.set_timeout(Duration::from_secs(10));
    assert_eq!(metadata.get("grpc-timeout"), expected.metadata().get("grpc-timeout"));
    assert!(metadata.get("grpc-timeout").is_some());
}
