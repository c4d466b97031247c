//! `archiver`: wires configuration, the MongoDB client and the listener, then serves.

use clap::Parser;

// One thread: the manifests give a function one CPU, and a second worker cost more CPU per
// request in wake-ups than it gave (docs/performance.md, "What the measurements decided").
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let _telemetry = common::telemetry::init("archiver");
    let metrics = common::metrics::init("archiver");
    let config = archiver::Config::parse();
    let archive = archiver::Archive::new(&config).await?;
    let listener = common::server::bind(&config.host, config.port).await?;
    metrics.ready(started);
    tracing::info!(port = config.port, database = %config.database, collection = %config.collection, "Archiver listening");
    common::sink::run(archive, listener, common::server::shutdown_signal()).await?;
    Ok(())
}
