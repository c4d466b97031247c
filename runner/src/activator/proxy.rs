//! The proxy: every function's public port, served as Knative's activator serves it. A request
//! goes to the least busy ready replica with room for it (never more than `containerConcurrency`
//! at once to one replica), waiting while none is ready and starting one if none is on its way,
//! as on a cold start. It proxies HTTP/1.1, and gRPC over h2c for producer, bodies streamed,
//! headers kept.
//!
//! The runner's own requests — the KafkaSources' deliveries — enter in process ([`Entrance`]),
//! not through the public port: the same choice of replica, cold start, concurrency (what the
//! autoscaler sees and drains wait for), metrics and answers on failure as a request on the port
//! gets ([`Gate::forward`] serves both), without a loopback HTTP hop to the runner itself.

use super::{Gate, pool::Load, stopped};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, combinators::UnsyncBoxBody};
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::{Body, Frame, Incoming, SizeHint},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::Poll,
    time::Duration,
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet, time::Instant};

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;
/// What goes to a replica: a request from a public port, streamed, or one of the runner's own,
/// in one piece.
pub(super) type Outbound = Either<Incoming, Full<Bytes>>;

/// How long, at shutdown, requests in flight at the activator may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A function's activator entered from inside the runner, without its public port: a request
/// sent here is routed, held for a cold start, counted and measured as one on the port is, and
/// gets the same [`Refusal`] status when no replica answers it.
#[derive(Clone)]
pub struct Entrance {
    pub(super) gate: Arc<Gate>,
}

impl Entrance {
    /// Sends `request` (its URI's path and its headers are kept; the authority becomes the
    /// replica's) to a ready replica. The request counts in flight until the response's body
    /// is dropped, so read it to its end or drop it.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<ReplicaBody>, Refusal> {
        self.gate.forward(request.map(Either::Right), Instant::now()).await
    }
}

/// Why no replica answered a request, and the answer the activator gives instead — on a public
/// port as the response, to an [`Entrance`] as this error — so a KafkaSource sees what it saw
/// when it delivered through the port (a 502 or 503 it retries, this text in a dead letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No replica got ready: its start failed, or none was ready within the ready timeout.
    NotStarted,
    /// The request cannot be addressed to a replica.
    Unproxiable,
    /// The replica's connection failed before its answer's headers came (it exited, say).
    Unreachable,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::NotStarted => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Unproxiable => StatusCode::BAD_REQUEST,
            Refusal::Unreachable => StatusCode::BAD_GATEWAY,
        }
    }

    /// The body of the answer.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::NotStarted => "function did not start",
            Refusal::Unproxiable => "cannot proxy this request",
            Refusal::Unreachable => "function unreachable",
        }
    }
}

/// A replica's response body, which keeps its request counted in flight until it is dropped: a
/// streamed answer keeps its replica busy until its last byte.
pub struct ReplicaBody {
    body: Incoming,
    _in_flight: InFlight,
}

impl Body for ReplicaBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request at the activator, counted until dropped: in the function's concurrency (what the
/// autoscaler samples and the idle period waits for) from its arrival, and in its replica's load
/// (what routing compares and a drain waits for) once [`Gate::lease`] chose one. It goes with the
/// response body ([`ReplicaBody`]).
pub(super) struct InFlight {
    gate: Arc<Gate>,
    load: Option<Arc<Load>>,
}

impl InFlight {
    fn new(gate: Arc<Gate>) -> InFlight {
        {
            let mut state = gate.state();
            state.flush(Instant::now());
            state.in_flight += 1;
        }
        InFlight { gate, load: None }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(load) = &self.load {
            load.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        {
            let mut state = self.gate.state();
            let now = Instant::now();
            state.flush(now);
            state.in_flight -= 1;
            if state.in_flight == 0 {
                state.idle_since = now;
            }
        }
        self.gate.changed.notify_waiters();
    }
}

impl Gate {
    /// Accepts connections (HTTP/1.1 or HTTP/2 prior knowledge) until shutdown.
    pub(super) async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let builder = auto::Builder::new(TokioExecutor::new());
        let mut connections = JoinSet::new();
        loop {
            let stream = tokio::select! {
                _ = stopped(&mut shutdown) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(function = %self.name, error = %e, "Accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let gate = self.clone();
            let builder = builder.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| gate.clone().handle(request));
                if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "Activator connection ended with an error");
                }
            });
            while connections.try_join_next().is_some() {}
        }
        // The connections open may finish what is in flight (ingest's calls to producer too:
        // producer's connections stay up until its own requests are done).
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state().in_flight == 0 || tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        connections.abort_all();
    }

    /// Proxies one request from the public port.
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        Ok(match self.forward(request.map(Either::Left), Instant::now()).await {
            Ok(response) => response.map(BodyExt::boxed_unsync),
            Err(refusal) => answer(refusal.status(), refusal.text()),
        })
    }

    /// Sends one request, from a public port or an [`Entrance`], to a ready replica (waiting for
    /// one, starting one if none is on its way: a cold start). Counted in flight from `arrived`
    /// until the response body is dropped, and in the runner's metrics once answered, by the
    /// replica or with a [`Refusal`].
    async fn forward(
        self: &Arc<Self>,
        request: Request<Outbound>,
        arrived: Instant,
    ) -> Result<Response<ReplicaBody>, Refusal> {
        let (in_flight, port, cold) = match self.lease(arrived).await {
            Ok(leased) => leased,
            Err(e) => {
                tracing::error!(function = %self.name, error = format!("{e:#}"), "No replica to serve the request");
                return Err(self.refused(arrived, Refusal::NotStarted));
            }
        };
        let request = match self.outgoing(request, port) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(function = %self.name, error = %e, "Cannot proxy the request");
                return Err(self.refused(arrived, Refusal::Unproxiable));
            }
        };
        match self.client.request(request).await {
            Ok(response) => {
                if cold {
                    self.events.cold_start(&self.name, arrived.elapsed());
                }
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                self.answered(arrived, parts.status);
                Ok(Response::from_parts(parts, ReplicaBody { body, _in_flight: in_flight }))
            }
            Err(e) => {
                tracing::warn!(function = %self.name, port, error = %e, "Proxying to the function failed");
                Err(self.refused(arrived, Refusal::Unreachable))
            }
        }
    }

    /// A request counted in flight from `arrived` and a replica for it (its port), counted in
    /// the replica's load too; `true` if it had to wait for a replica to start. Dropping the
    /// [`InFlight`] releases both.
    async fn lease(self: &Arc<Self>, arrived: Instant) -> anyhow::Result<(InFlight, u16, bool)> {
        let mut in_flight = InFlight::new(self.clone());
        let (load, cold) = self.replica(arrived).await?;
        let port = load.port;
        in_flight.load = Some(load);
        Ok((in_flight, port, cold))
    }

    fn refused(&self, arrived: Instant, refusal: Refusal) -> Refusal {
        self.answered(arrived, refusal.status());
        refusal
    }

    /// Counts and times an answer (to its headers) in the runner's metrics.
    fn answered(&self, arrived: Instant, status: StatusCode) {
        let metrics = common::metrics::get();
        metrics.activator_duration.get_or_create(&self.labels).observe(arrived.elapsed().as_secs_f64());
        metrics.activator_request(&self.name, status.as_u16());
    }

    /// The request for the replica's port, without hop-by-hop headers (`te: trailers` stays:
    /// gRPC needs it).
    fn outgoing(&self, request: Request<Outbound>, port: u16) -> anyhow::Result<Request<Outbound>> {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(format!("127.0.0.1:{port}"))
            .path_and_query(path)
            .build()?;
        parts.version = self.version;
        strip_hop_by_hop(&mut parts.headers);
        if self.version == Version::HTTP_2 {
            // HTTP/2 carries the authority in the URI; a Host header there is a protocol error.
            parts.headers.remove(header::HOST);
        }
        Ok(Request::from_parts(parts, body))
    }
}

/// Connection-specific headers (RFC 9110 §7.6.1), which a proxy must not forward.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|te| te != HeaderValue::from_static("trailers")) {
        headers.remove(header::TE);
    }
}

fn answer(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(text.as_bytes())).map_err(|e| match e {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stays() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["content-type", "te", "traceparent"]);

        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }
}
