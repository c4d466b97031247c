//! A real producer in front of a fresh Kafka topic, and reading the topic back.

use producer::{Config, Publisher};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{Consumer, StreamConsumer},
    message::OwnedMessage,
};
use std::time::Duration;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub const PARTITIONS: i32 = 3;

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A topic of its own for one test.
pub struct Topic {
    pub name: String,
    brokers: String,
    admin: AdminClient<DefaultClientContext>,
}

impl Topic {
    /// Creates the topic; panics (fails the test) when Kafka is unreachable.
    pub async fn create() -> Topic {
        Topic::create_on(&brokers(), &[]).await
    }

    /// Creates the topic on `brokers` with topic settings `config` (`max.message.bytes`, …).
    pub async fn create_on(brokers: &str, config: &[(&str, &str)]) -> Topic {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", brokers).create().expect("an admin client");
        let name = Topic::fresh_name();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let topic = config
            .iter()
            .fold(NewTopic::new(&name, PARTITIONS, TopicReplication::Fixed(1)), |topic, (key, value)| {
                topic.set(key, value)
            });
        let results = admin
            .create_topics(&[topic], &options)
            .await
            .unwrap_or_else(|e| panic!("Kafka at {brokers} is needed and unreachable: {e}"));
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("creating topic {topic}: {e}"));
        }
        Topic { name, brokers: brokers.to_owned(), admin }
    }

    pub fn fresh_name() -> String {
        format!("it-ingest-{}", uuid::Uuid::now_v7().simple())
    }

    /// A topic created otherwise (librdkafka's mock cluster has no admin API).
    pub fn existing(brokers: &str, name: String) -> Topic {
        let admin = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("an admin client");
        Topic { name, brokers: brokers.to_owned(), admin }
    }

    /// Records in the topic now: the sum of the high watermarks (no transactions, so offsets are
    /// contiguous).
    pub async fn record_count(&self) -> i64 {
        let consumer = self.consumer();
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            (0..PARTITIONS)
                .map(|p| consumer.fetch_watermarks(&name, p, Duration::from_secs(10)).expect("watermarks").1)
                .sum()
        })
        .await
        .unwrap()
    }

    /// Reads every record until `expected` were seen, failing after a deadline.
    pub async fn read(&self, expected: usize) -> Vec<OwnedMessage> {
        let consumer = self.consumer();
        let mut assignment = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            assignment.add_partition_offset(&self.name, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut records = Vec::with_capacity(expected);
        while records.len() < expected {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {expected} records within 30 s", records.len()))
                .expect("a record");
            records.push(message.detach());
        }
        records
    }

    /// Deletes the topic at the end of a test that passed (a failed one leaves it to look at).
    pub async fn delete(self) {
        let results = self.admin.delete_topics(&[&self.name], &AdminOptions::new()).await.expect("deleting");
        for result in results {
            result.unwrap_or_else(|(topic, e)| panic!("deleting topic {topic}: {e}"));
        }
    }

    fn consumer(&self) -> StreamConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", format!("{}-reader", self.name))
            .set("enable.auto.commit", "false")
            .create()
            .expect("a consumer")
    }
}

/// A producer serving gRPC on a loopback port; it stops when `stop` is called or it is dropped.
pub struct RunningProducer {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningProducer {
    pub async fn start(brokers: &str, topic: &str, message_timeout_ms: u64) -> RunningProducer {
        let config = Config {
            port: 0,
            host: "127.0.0.1".into(),
            kafka_brokers: brokers.into(),
            topic: topic.into(),
            linger_ms: 1,
            message_timeout_ms,
            queue_timeout_ms: 1_000,
            kafka_debug: None,
            event_source: "/it/producer".into(),
        };
        let publisher = Publisher::new(&config).expect("a Kafka producer");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            producer::run(publisher, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("producer serves");
        });
        RunningProducer { url, stop: Some(stop), task }
    }

    /// Shuts the server down and waits until its port is closed.
    pub async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        tokio::time::timeout(Duration::from_secs(25), &mut self.task)
            .await
            .expect("producer stops within its drain timeout")
            .unwrap();
    }
}

impl Drop for RunningProducer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The value of a record header.
pub fn header<'a>(record: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    use rdkafka::message::Headers;
    let headers = record.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| std::str::from_utf8(h.value?).ok())
}

pub fn key(record: &OwnedMessage) -> &str {
    std::str::from_utf8(record.key().expect("a keyed record")).expect("a UTF-8 key")
}
