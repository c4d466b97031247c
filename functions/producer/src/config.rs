//! Settings, from the environment only (`producer --help` lists them).

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "producer", about = "Serves gRPC Publish (h2c) and writes tweets to Kafka as CloudEvents")]
pub struct Config {
    /// Port to serve gRPC and the health probes on; Knative sets it.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Kafka bootstrap servers, comma separated.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Topic the tweets go to.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "messages")]
    pub topic: String,
    /// How long the producer may wait to fill a batch, in milliseconds (librdkafka linger.ms).
    #[arg(long, env = "KAFKA_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u64,
    /// How long a tweet may take to reach Kafka, retries included, before the caller gets
    /// UNAVAILABLE, in milliseconds (librdkafka message.timeout.ms).
    #[arg(long, env = "KAFKA_MESSAGE_TIMEOUT_MS", default_value_t = 8_000)]
    pub message_timeout_ms: u64,
    /// How long a tweet may wait for room in librdkafka's full local queue, in milliseconds,
    /// before the caller gets UNAVAILABLE. A Publish call takes at most this plus
    /// `KAFKA_MESSAGE_TIMEOUT_MS`; ingest's `PRODUCER_TIMEOUT_MS` must exceed the sum, so that
    /// ingest never answers 503 for a tweet Kafka may still take.
    #[arg(long, env = "KAFKA_QUEUE_TIMEOUT_MS", default_value_t = 2_000)]
    pub queue_timeout_ms: u64,
    /// librdkafka's debug contexts (`eos,msg,broker`…), logged under the `rdkafka` target at
    /// debug level (`RUST_LOG=info,rdkafka=debug`): to see why Kafka is not taking tweets.
    #[arg(long, env = "KAFKA_DEBUG")]
    pub kafka_debug: Option<String>,
    /// The CloudEvents `source` attribute of every tweet event.
    #[arg(long, env = "EVENT_SOURCE", default_value = "/weather-tweets/producer")]
    pub event_source: String,
}
