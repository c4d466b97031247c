//! Settings, from the environment only (`ingest --help` lists them).

use std::time::Duration;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "ingest", about = "Accepts tweets on POST /input and publishes them through producer")]
pub struct Config {
    /// Port to serve HTTP on; Knative sets it.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// gRPC URL of the producer function (h2c).
    #[arg(long, env = "PRODUCER_URL", default_value = "http://127.0.0.1:8081")]
    pub producer_url: String,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: usize,
    /// How long to wait for producer (and so Kafka) to confirm a tweet, in milliseconds. Keep it
    /// above producer's worst case (KAFKA_QUEUE_TIMEOUT_MS + KAFKA_MESSAGE_TIMEOUT_MS), so that a
    /// 503 means Kafka did not take the tweet.
    #[arg(long, env = "PRODUCER_TIMEOUT_MS", default_value_t = 12_000)]
    pub producer_timeout_ms: u64,
}

impl Config {
    pub fn producer_timeout(&self) -> Duration {
        Duration::from_millis(self.producer_timeout_ms)
    }
}
