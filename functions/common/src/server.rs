//! Serving a function the way Knative expects: `PORT`, `GET /health/readiness` and
//! `/health/liveness`, and SIGTERM/SIGINT handled in one place with draining bounded by a
//! timeout shorter than Kubernetes' 30 s grace period; and bounded against slow or many
//! clients ([`Limits`]): a connection must send each request's head within a timeout and at
//! most so many connections are open at once.

use axum::{Json, Router, extract::Request, http::StatusCode, response::IntoResponse, routing::get};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{net::TcpListener, sync::Semaphore};

/// How long in-flight requests may take to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// What one client may hold of a server: time to send a request's head, and a share of the
/// connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection may take to send a request's head (request line and headers),
    /// counted from when it opened or from its previous answer; then it is closed without an
    /// answer. An idle keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    /// 10 s for a head (a client on a slow network sends its ~300 bytes in well under a
    /// second) and 2,048 connections: a connection holding an almost complete 16 KiB body took
    /// ~42 KB of ingest's memory (measured with 2,000 of them), so 2,048 stay under 100 MB, within
    /// a function's 128 MiB limit; a Knative replica serves tens at once.
    fn default() -> Limits {
        Limits { header_read_timeout: Duration::from_secs(10), max_connections: 2_048 }
    }
}

/// A function's routes plus what every function serves: request metrics on them, the probes
/// (ready as soon as the process serves) and `GET /metrics`.
pub fn app(routes: Router) -> Router {
    app_with_readiness(routes, || async { Ok(()) })
}

/// [`app`] whose readiness probe first asks `ready`: `Err(why)` answers 503 `{"error": why}`, so
/// the platform sends the replica nothing until it can keep its promises.
pub fn app_with_readiness<F, R>(routes: Router, ready: F) -> Router
where
    F: Fn() -> R + Clone + Send + Sync + 'static,
    R: Future<Output = Result<(), String>> + Send + 'static,
{
    with_probes(routes, ready, || Ok(()))
}

/// [`app`], with both probes failing while `check` does: for a state only a restart cures (a
/// Kafka client's fatal error), so readiness takes the replica out of service and liveness has
/// it restarted.
pub fn app_with_health(
    routes: Router,
    check: impl Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
) -> Router {
    let ready = check.clone();
    with_probes(routes, move || std::future::ready(ready()), check)
}

fn with_probes<F, R>(
    routes: Router,
    ready: F,
    alive: impl Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
) -> Router
where
    F: Fn() -> R + Clone + Send + Sync + 'static,
    R: Future<Output = Result<(), String>> + Send + 'static,
{
    // `layer`, not `route_layer`: unmatched requests (404, 405) are counted and traced too,
    // under the fixed route `unmatched` (`common::http`); the probes and /metrics are skipped.
    routes
        .merge(probes(ready, alive))
        .merge(crate::metrics::routes())
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::from_fn(crate::telemetry::server_span))
}

/// The platform's probe routes: readiness answers once `ready` says so, liveness while `alive`
/// does; a refusal is 503 `{"error": why}`.
fn probes<F, R>(ready: F, alive: impl Fn() -> Result<(), String> + Clone + Send + Sync + 'static) -> Router
where
    F: Fn() -> R + Clone + Send + Sync + 'static,
    R: Future<Output = Result<(), String>> + Send + 'static,
{
    let readiness = move || {
        let ready = ready.clone();
        async move { answer(ready().await) }
    };
    let liveness = move || {
        let alive = alive.clone();
        async move { answer(alive()) }
    };
    Router::new().route("/health/readiness", get(readiness)).route("/health/liveness", get(liveness))
}

fn answer(probe: Result<(), String>) -> axum::response::Response {
    match probe {
        Ok(()) => "ok".into_response(),
        Err(why) => {
            tracing::warn!(%why, "Failing a health probe");
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "error": why }))).into_response()
        }
    }
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("Shutdown signal received, draining");
}

/// [`serve_with`] the default [`Limits`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, Limits::default()).await
}

/// Serves `app` (HTTP/1.1 and h2c) within `limits` until `shutdown` resolves, then lets
/// in-flight requests finish for at most [`DRAIN_TIMEOUT`].
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was accepted:
                    // the listener still works, so wait a moment rather than spin.
                    tracing::warn!(error = %e, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the cap the connection is closed at once: an answer the client sees now, where
        // leaving it in the listen queue would hold it for as long as the slowest client.
        let Ok(permit) = connections.clone().try_acquire_owned() else { continue };
        let _ = stream.set_nodelay(true);
        let started = Arc::new(AtomicBool::new(false));
        let service = {
            let (app, started) = (app.clone(), started.clone());
            hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                started.store(true, Ordering::Relaxed);
                tower::ServiceExt::oneshot(app.clone(), request)
            })
        };
        let connection = graceful
            .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
        tokio::spawn(async move {
            let _permit = permit;
            let mut connection = std::pin::pin!(connection);
            // hyper times out a request's head only once it knows the protocol; until the first
            // request, a connection that sends nothing (or a few bytes) is bounded here.
            tokio::select! {
                _ = connection.as_mut() => return,
                () = tokio::time::sleep(limits.header_read_timeout) => {}
            }
            if started.load(Ordering::Relaxed) {
                let _ = connection.await;
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => Ok(()),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!(timeout_s = DRAIN_TIMEOUT.as_secs(), "Drain timed out, exiting with requests in flight");
            Ok(())
        }
    }
}

/// Binds `127.0.0.1`/`0.0.0.0` `PORT` with a clear error instead of a panic.
pub async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((host, port))
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {host}:{port}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::net::SocketAddr;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };
    use tower::ServiceExt;

    async fn probe(app: &Router, path: &str) -> (StatusCode, String) {
        let request = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_probes_fail_while_the_check_does() {
        let broken = Arc::new(AtomicBool::new(false));
        let checked = app_with_health(Router::new(), {
            let broken = broken.clone();
            move || {
                if broken.load(Ordering::Relaxed) { Err("the client failed for good".into()) } else { Ok(()) }
            }
        });
        for path in ["/health/readiness", "/health/liveness"] {
            assert_eq!(probe(&checked, path).await, (StatusCode::OK, "ok".into()), "{path}");
        }
        broken.store(true, Ordering::Relaxed);
        for path in ["/health/readiness", "/health/liveness"] {
            let expected =
                (StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"the client failed for good"}"#.into());
            assert_eq!(probe(&checked, path).await, expected, "{path}");
        }
        // Without a check they always answer.
        assert_eq!(probe(&app(Router::new()), "/health/readiness").await.0, StatusCode::OK);
    }

    async fn serving(limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let routes = Router::new().route("/", get(|| async { "hello" }));
        tokio::spawn(serve_with(listener, app(routes), std::future::pending(), limits));
        address
    }

    /// Reads until the server closes the connection or `within` passes; `None` if still open.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<String> {
        let mut answer = Vec::new();
        match tokio::time::timeout(within, stream.read_to_end(&mut answer)).await {
            Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
            Err(_) => None,
        }
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_at_once_and_the_cap_frees_with_the_timeout() {
        let timeout = Duration::from_millis(800);
        let address = serving(Limits { header_read_timeout: timeout, max_connections: 3 }).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(TcpStream::connect(address).await.unwrap());
        }
        // Let the server accept the three before the fourth arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut over = TcpStream::connect(address).await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(closed_within(&mut over, Duration::from_millis(500)).await.as_deref(), Some(""));
        assert!(started.elapsed() < Duration::from_millis(500));

        // The idle ones sent nothing, so they are closed after the timeout, without an answer.
        for stream in &mut idle {
            assert_eq!(closed_within(stream, timeout * 2).await.as_deref(), Some(""));
        }
        let mut next = TcpStream::connect(address).await.unwrap();
        next.write_all(REQUEST).await.unwrap();
        let answer = closed_within(&mut next, Duration::from_secs(2)).await.expect("an answer");
        assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("hello"), "{answer}");
    }

    #[tokio::test]
    async fn a_head_that_does_not_arrive_in_time_is_closed_and_a_prompt_one_is_served() {
        let timeout = Duration::from_millis(600);
        let address = serving(Limits { header_read_timeout: timeout, max_connections: 100 }).await;
        // Half a head, then nothing: closed without an answer.
        let mut slow = TcpStream::connect(address).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(closed_within(&mut slow, timeout * 3).await.as_deref(), Some(""));
        assert!(started.elapsed() >= timeout / 2, "{:?}", started.elapsed());
        // A keep-alive connection serves a second request, then is closed once idle too long.
        let mut kept = TcpStream::connect(address).await.unwrap();
        for _ in 0..2 {
            kept.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            let mut buffer = [0u8; 256];
            let n = kept.read(&mut buffer).await.unwrap();
            assert!(buffer[..n].starts_with(b"HTTP/1.1 200 OK"), "{}", String::from_utf8_lossy(&buffer[..n]));
        }
        assert_eq!(closed_within(&mut kept, timeout * 3).await.as_deref(), Some(""));
    }

    #[tokio::test]
    async fn readiness_answers_what_the_check_says_and_liveness_stays_ok() {
        let ready = app(Router::new());
        assert_eq!(probe(&ready, "/health/readiness").await, (StatusCode::OK, "ok".into()));
        let refused = app_with_readiness(Router::new(), || async { Err("setting x is y".to_owned()) });
        assert_eq!(
            probe(&refused, "/health/readiness").await,
            (StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"setting x is y"}"#.into())
        );
        assert_eq!(probe(&refused, "/health/liveness").await, (StatusCode::OK, "ok".into()));
    }
}
