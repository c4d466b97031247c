//! Settings, from the environment only (`counter --help` lists them).

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "counter", about = "Receives tweet CloudEvents and counts them in Redis exactly once")]
pub struct Config {
    /// Port to serve HTTP on; Knative sets it.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Redis URL; put a password in it from a secret (redis://:PASSWORD@host:6379/0).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/0")]
    pub redis_url: String,
    /// Prefix of every key counter writes.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "weather:")]
    pub key_prefix: String,
    /// Kafka topic the events come from; it names the bitmaps of seen offsets.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "messages")]
    pub topic: String,
    /// Partitions of that topic (as strimzi/topics.yaml creates it): an event naming another
    /// partition cannot come from the KafkaSource and is refused with 400, so a forged position
    /// cannot make Redis allocate a bitmap for it.
    #[arg(long, env = "KAFKA_TOPIC_PARTITIONS", default_value_t = 3)]
    pub topic_partitions: i32,
    /// How long a record is remembered as counted, in seconds; keep it at least Kafka's
    /// retention (7 days by default), since a record cannot be redelivered after that.
    #[arg(long, env = "DEDUP_TTL_S", default_value_t = 7 * 24 * 3600)]
    pub dedup_ttl_s: u64,
    /// How long one Redis command may take, in milliseconds, before the event gets 503.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,
}

impl Config {
    /// The URL without its password, for logs.
    pub fn redacted_redis_url(&self) -> String {
        match self.redis_url.split_once('@') {
            Some((_, host)) => format!("redis://***@{host}"),
            None => self.redis_url.clone(),
        }
    }
}
