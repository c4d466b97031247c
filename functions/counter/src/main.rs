//! `counter`: wires configuration, the Redis client and the listener, then serves.

use clap::Parser;

// One thread: the manifests give a function one CPU, and a second worker cost more CPU per
// request in wake-ups than it gave (docs/performance.md, "What the measurements decided").
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let _telemetry = common::telemetry::init("counter");
    let metrics = common::metrics::init("counter");
    let config = counter::Config::parse();
    let store = counter::Counts::new(&config)?;
    // A Redis too old for the script is a configuration error: exit before serving.
    store.check().await?;
    let listener = common::server::bind(&config.host, config.port).await?;
    metrics.ready(started);
    tracing::info!(port = config.port, redis = %config.redis_url, "Counter listening");
    common::sink::run(store, listener, common::server::shutdown_signal()).await?;
    Ok(())
}
