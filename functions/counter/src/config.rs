//! Settings, from the environment only (`counter --help` lists them).

use common::secret::SecretUrl;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "counter", about = "Receives tweet CloudEvents and counts them in Redis exactly once")]
pub struct Config {
    /// Port to serve HTTP on; Knative sets it.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Redis URL; put a password in it from a secret (redis://:PASSWORD@host:6379/0). Logs
    /// and `--help` show it without its credentials.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/0", hide_env_values = true)]
    pub redis_url: SecretUrl,
    /// Prefix of every key counter writes.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "weather:")]
    pub key_prefix: String,
    /// Kafka brokers (host:port, comma-separated, plaintext), asked for the partitions, high
    /// watermarks and id of the topics below: an event's position is believed only below its
    /// partition's high watermark.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Kafka topic the events come from; it names the bitmaps of seen offsets.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "messages")]
    pub topic: String,
    /// The dead-letter topic of that topic's KafkaSource, the one other topic whose positions
    /// counter accepts.
    #[arg(long, env = "KAFKA_DEAD_LETTER_TOPIC", default_value = "messages-dlq")]
    pub dead_letter_topic: String,
    /// How long one look at Kafka may take, in milliseconds, before the events waiting for it
    /// get 503.
    #[arg(long, env = "KAFKA_TIMEOUT_MS", default_value_t = 2_000)]
    pub kafka_timeout_ms: u64,
    /// How long a record is remembered as counted, in seconds; keep it at least Kafka's
    /// retention (7 days by default), since a record cannot be redelivered after that.
    #[arg(long, env = "DEDUP_TTL_S", default_value_t = 7 * 24 * 3600)]
    pub dedup_ttl_s: u64,
    /// How long one Redis command may take, in milliseconds, before the event gets 503.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,
}
