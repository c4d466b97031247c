//! `producer`: wires configuration, the Kafka producer and the listener, then serves.

use clap::Parser;

// One thread: the manifests give a function one CPU, and a second worker cost more CPU per
// request in wake-ups than it gave (docs/performance.md, "What the measurements decided").
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let _telemetry = common::telemetry::init("producer");
    let metrics = common::metrics::init("producer");
    let config = producer::Config::parse();
    let publisher = producer::Publisher::new(&config)?;
    let listener = common::server::bind(&config.host, config.port).await?;
    metrics.ready(started);
    tracing::info!(port = config.port, brokers = %config.kafka_brokers, topic = %config.topic, "Producer listening");
    producer::run(publisher, listener, common::server::shutdown_signal()).await
}
