//! `ingest`: wires configuration, the producer channel and the listener, then serves.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let config = ingest::Config::parse();
    let listener = common::server::bind(&config.host, config.port).await?;
    tracing::info!(port = config.port, producer = %config.producer_url, "Ingest listening");
    ingest::run(config, listener, common::server::shutdown_signal()).await
}
