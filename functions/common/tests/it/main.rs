//! Integration tests of the real local stack (`dev/stack up`): Kafka, Redis and MongoDB (FerretDB).
//!
//! One test binary, as zero-to-production does, so the crate links once. Every test isolates
//! itself (a fresh topic, key prefix or database) and fails, never skips, when its service is down.

mod kafka_stack;
mod mongo_stack;
mod redis_stack;

use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;

/// An address from the environment, or the loopback default the local stack listens on.
fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned())
}

/// A unique name for this test's topic, key prefix or database.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// A loopback port nothing listens on: bound by us, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("a bound listener has an address").port()
}

/// Runs `body`, then `cleanup` even when `body` panicked, so a failing assertion leaves no topic,
/// key or database behind; the panic is then resumed.
async fn with_cleanup<T>(body: impl Future<Output = T>, cleanup: impl Future<Output = ()>) -> T {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    cleanup.await;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
