//! The bench's anchor: the smallest HTTP server worth the name — hyper's HTTP/1.1 server on
//! tokio, reading each request's body and answering `202 {"id":"anchor"}` as ingest does, with
//! no routing, logging, metrics or tracing. `make bench` runs it as its own process
//! (`tools anchor --port P`) under the same load generator as the pipeline, so each of our hops
//! can be read as a multiple of its CPU per request.

use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode,
    body::Bytes,
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Serves on `listener` until the process is stopped.
pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                let probe = request.uri().path().starts_with("/health/");
                request.into_body().collect().await?;
                let body: &'static [u8] = if probe { b"ok" } else { br#"{"id":"anchor"}"# };
                let mut response = Response::new(Full::new(Bytes::from_static(body)));
                *response.status_mut() = if probe { StatusCode::OK } else { StatusCode::ACCEPTED };
                response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok::<_, hyper::Error>(response)
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
