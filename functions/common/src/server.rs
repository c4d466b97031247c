//! Serving a function the way Knative expects: `PORT`, `GET /health/readiness` and
//! `/health/liveness`, and SIGTERM/SIGINT handled in one place with draining bounded by a
//! timeout shorter than Kubernetes' 30 s grace period.

use axum::{Router, routing::get};
use std::{future::Future, time::Duration};
use tokio::net::TcpListener;

/// How long in-flight requests may take to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// A function's routes plus what every function serves: request metrics on them, the probes
/// and `GET /metrics`.
pub fn app(routes: Router) -> Router {
    // `layer`, not `route_layer`: unmatched requests (404, 405) are counted and traced too,
    // under the fixed route `unmatched` (`common::http`); the probes and /metrics are skipped.
    routes
        .merge(health())
        .merge(crate::metrics::routes())
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .layer(axum::middleware::from_fn(crate::telemetry::server_span))
}

/// The platform's probe routes; they answer as soon as the process serves.
pub fn health() -> Router {
    Router::new()
        .route("/health/readiness", get(|| async { "ok" }))
        .route("/health/liveness", get(|| async { "ok" }))
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

/// Serves `app` (HTTP/1.1 and h2c) until `shutdown` resolves, then lets in-flight requests
/// finish for at most [`DRAIN_TIMEOUT`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        let _ = drain_tx.send(());
    });
    let deadline = async {
        if drain_rx.await.is_ok() {
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result,
        _ = deadline => {
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
