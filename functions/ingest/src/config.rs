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
    /// How long to wait for producer (and so Kafka) to confirm a tweet, in milliseconds, before
    /// answering 504 (outcome unknown). Keep it above producer's worst case
    /// (KAFKA_QUEUE_TIMEOUT_MS + KAFKA_MESSAGE_TIMEOUT_MS), so that producer, which knows more,
    /// answers first.
    #[arg(long, env = "PRODUCER_TIMEOUT_MS", default_value_t = 12_000)]
    pub producer_timeout_ms: u64,
    /// How long a client may take to send a request's head, in milliseconds; then the
    /// connection is closed. Idle keep-alive connections are closed after it too.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// How long a client may take to send a request's body once its head arrived, in
    /// milliseconds; then it gets 408 and the connection is closed.
    #[arg(long, env = "BODY_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub body_read_timeout_ms: u64,
    /// Connections open at once; one more is closed as soon as it is accepted. Each slow client
    /// may hold up to ~42 KB (a 16 KiB body), so keep it × 42 KB under the memory limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 2_048)]
    pub max_connections: usize,
    /// Redis URL, for what ingest remembers of Idempotency-Keys; put a password in it from a
    /// secret (redis://:PASSWORD@host:6379/0). Requests without the header never use it.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/0")]
    pub redis_url: String,
    /// Prefix of every key ingest writes.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "weather:")]
    pub key_prefix: String,
    /// How long one Redis command may take, in milliseconds, before a keyed tweet gets 503.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,
    /// How long an Idempotency-Key is bound to its first body, in seconds: within it the same
    /// key with another body is 422. After it the key is free again (another body is another
    /// tweet; the same body keeps its id, so the sinks still count it once).
    #[arg(long, env = "IDEMPOTENCY_KEY_TTL_S", default_value_t = 24 * 3600)]
    pub idempotency_key_ttl_s: u64,
    /// New Idempotency-Keys ingest takes per clock hour, from all clients together; past it a
    /// request with a new key gets 429 until the hour ends (known keys still work). It bounds
    /// what ingest and counter remember of keys.
    #[arg(long, env = "IDEMPOTENCY_KEYS_PER_HOUR", default_value_t = 10_000)]
    pub idempotency_keys_per_hour: u64,
}

impl Config {
    pub fn producer_timeout(&self) -> Duration {
        Duration::from_millis(self.producer_timeout_ms)
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }

    /// What one client may hold of the server.
    pub fn limits(&self) -> common::server::Limits {
        common::server::Limits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            max_connections: self.max_connections,
        }
    }
}
