//! `ingest`: wires configuration, the producer channel and the listener, then serves.

use clap::Parser;

// One thread: the manifests give a function one CPU, and a second worker cost more CPU per
// request in wake-ups than it gave (docs/performance.md, "What the measurements decided").
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let _telemetry = common::telemetry::init("ingest");
    let metrics = common::metrics::init("ingest");
    let config = ingest::Config::parse();
    let listener = common::server::bind(&config.host, config.port).await?;
    metrics.ready(started);
    tracing::info!(port = config.port, producer = %config.producer_url, "Ingest listening");
    ingest::run(config, listener, common::server::shutdown_signal()).await
}
