//! Scale to zero on one machine, as Knative's activator and autoscaler do it: the runner listens
//! on every function's public port, starts the function's process on the first request and holds
//! that request until the readiness probe answers, proxies requests (HTTP/1.1, and gRPC over h2c
//! for producer, bodies streamed, headers kept), and stops the process with SIGTERM once no
//! request has been in flight for the idle period.
//!
//! On Knative the idle period is the `scale-to-zero-pod-retention-period` annotation, but the
//! autoscaler only decides to scale to zero after its stable window (60 s by default) without
//! traffic, so a real pod idles at least that long (plus the scale-to-zero grace period). Here
//! the retention period (or `--idle-period-ms`) alone decides, so short experiments can use a
//! few seconds.

use crate::{events::Events, functions::Functions};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::Incoming,
    header::{self, HeaderMap, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
    task::{JoinHandle, JoinSet},
    time::Instant,
};

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// The activator of every function, running.
pub struct Activator {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Activator {
    /// Binds every function's public port; no process is started until a request comes.
    pub async fn start(
        functions: Arc<Functions>,
        events: Events,
        idle: Duration,
    ) -> anyhow::Result<Activator> {
        let (shutdown, stop) = watch::channel(false);
        let mut tasks = Vec::new();
        for function in functions.all() {
            let (name, port, http2) = (function.service.name.clone(), function.port, function.service.http2);
            let listener = match TcpListener::bind(("127.0.0.1", port)).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = shutdown.send(true);
                    for task in tasks {
                        let _ = task.await;
                    }
                    return Err(e).with_context(|| format!("binding {name}'s port 127.0.0.1:{port}"));
                }
            };
            let gate = Arc::new(Gate::new(name, http2, functions.clone(), events.clone(), idle));
            tasks.push(tokio::spawn(gate.clone().serve(listener, stop.clone())));
            tasks.push(tokio::spawn(gate.reap(stop.clone())));
        }
        tracing::info!(idle_ms = idle.as_millis() as u64, "Activator listening; functions start on demand");
        Ok(Activator { shutdown, tasks })
    }

    /// Stops accepting and lets a stop in progress finish; the caller then stops the processes.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// One function's activator: its process (if any) and the requests in flight to it.
struct Gate {
    name: String,
    functions: Arc<Functions>,
    events: Events,
    idle: Duration,
    /// The running process; held while starting or stopping it, so requests wait for either.
    backend: tokio::sync::Mutex<Option<Backend>>,
    activity: Mutex<Activity>,
    /// Wakes the reaper when the function goes idle or starts.
    changed: Notify,
    client: Client<HttpConnector, Incoming>,
    version: Version,
}

struct Backend {
    port: u16,
    ready_at: Instant,
}

struct Activity {
    in_flight: usize,
    /// When `in_flight` last dropped to zero (or the process got ready).
    idle_since: Instant,
    running: bool,
}

/// Counts a request as in flight until dropped — with the response body, so a streamed answer
/// keeps the function alive until its last byte.
struct InFlight(Arc<Gate>);

impl InFlight {
    fn new(gate: Arc<Gate>) -> InFlight {
        gate.activity().in_flight += 1;
        InFlight(gate)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut activity = self.0.activity();
        activity.in_flight -= 1;
        if activity.in_flight == 0 {
            activity.idle_since = Instant::now();
            self.0.changed.notify_one();
        }
    }
}

impl Gate {
    /// `http2`: the function speaks HTTP/2 with prior knowledge (its port is named `h2c`).
    fn new(name: String, http2: bool, functions: Arc<Functions>, events: Events, idle: Duration) -> Gate {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).http2_only(http2).build(connector);
        Gate {
            name,
            functions,
            events,
            idle,
            backend: tokio::sync::Mutex::new(None),
            activity: Mutex::new(Activity { in_flight: 0, idle_since: Instant::now(), running: false }),
            changed: Notify::new(),
            client,
            version: if http2 { Version::HTTP_2 } else { Version::HTTP_11 },
        }
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().expect("activity lock")
    }

    /// Accepts connections (HTTP/1.1 or HTTP/2 prior knowledge) until shutdown.
    async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
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
        connections.abort_all();
    }

    /// Proxies one request, starting the process first if there is none.
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        let arrived = Instant::now();
        let in_flight = InFlight::new(self.clone());
        let (port, cold) = match self.backend(arrived).await {
            Ok(backend) => backend,
            Err(e) => {
                tracing::error!(function = %self.name, error = format!("{e:#}"), "Cold start failed");
                return Ok(answer(StatusCode::SERVICE_UNAVAILABLE, "function did not start"));
            }
        };
        let request = match self.outgoing(request, port) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(function = %self.name, error = %e, "Cannot proxy the request");
                return Ok(answer(StatusCode::BAD_REQUEST, "cannot proxy this request"));
            }
        };
        match self.client.request(request).await {
            Ok(response) => {
                if cold {
                    self.events.cold_start(&self.name, arrived.elapsed());
                }
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = body
                    .map_err(move |e| {
                        let _ = &in_flight;
                        e
                    })
                    .boxed_unsync();
                Ok(Response::from_parts(parts, body))
            }
            Err(e) => {
                tracing::warn!(function = %self.name, port, error = %e, "Proxying to the function failed");
                Ok(answer(StatusCode::BAD_GATEWAY, "function unreachable"))
            }
        }
    }

    /// The process's port, starting it if needed; `true` if the request had to wait for a start.
    async fn backend(&self, arrived: Instant) -> anyhow::Result<(u16, bool)> {
        let mut backend = self.backend.lock().await;
        if backend.is_some() && !self.functions.is_running(&self.name) {
            tracing::warn!(function = %self.name, "Function exited on its own; starting it again");
            *backend = None;
            self.functions.stop(&self.name).await?;
        }
        if backend.is_none() {
            self.functions.start(&self.name).await?;
            let port = self.functions.process_port(&self.name).context("the function's port")?;
            let mut activity = self.activity();
            activity.running = true;
            activity.idle_since = Instant::now();
            *backend = Some(Backend { port, ready_at: Instant::now() });
            self.changed.notify_one();
        }
        let backend = backend.as_ref().expect("a backend");
        // Also true for requests queued behind the one that started it, or behind a stop.
        Ok((backend.port, arrived < backend.ready_at))
    }

    /// The request for the process's port, without hop-by-hop headers (`te: trailers` stays:
    /// gRPC needs it).
    fn outgoing(&self, request: Request<Incoming>, port: u16) -> anyhow::Result<Request<Incoming>> {
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

    /// Stops the process once it has been idle long enough; wakes on every change of activity.
    async fn reap(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let far = Duration::from_secs(24 * 3600);
        loop {
            let deadline = {
                let activity = self.activity();
                if activity.running && activity.in_flight == 0 {
                    activity.idle_since + self.idle
                } else {
                    Instant::now() + far
                }
            };
            tokio::select! {
                _ = stopped(&mut shutdown) => return,
                _ = self.changed.notified() => continue,
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let mut backend = self.backend.lock().await;
            {
                // A request that arrived since is counted already (it waits for this lock).
                let mut activity = self.activity();
                if backend.is_none() || activity.in_flight > 0 || activity.idle_since.elapsed() < self.idle {
                    continue;
                }
                activity.running = false;
            }
            *backend = None;
            tracing::info!(
                function = %self.name,
                idle_ms = self.idle.as_millis() as u64,
                "Idle, scaling to zero"
            );
            if let Err(e) = self.functions.stop(&self.name).await {
                tracing::warn!(function = %self.name, error = %e, "Stopping failed");
            }
        }
    }
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
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
