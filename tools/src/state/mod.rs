//! Reads the pipeline's state, the one place that does: the counts in Redis through counter's
//! public [`Keyspace`], the archive in MongoDB, and what Kafka holds ([`kafka`]: watermarks,
//! records, the KafkaSources' lag); and resets a run. Names come from the manifests through
//! [`Stack`], as the runner uses them. Beside it, what the tools read about processes
//! ([`procfs`]) and traces ([`jaeger`]).

pub mod jaeger;
pub mod kafka;
pub mod procfs;

use anyhow::{Context, bail};
use counter::{Counted, Keyspace};
use futures::TryStreamExt;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    consumer::Consumer,
};
use runner::Stack;
use serde::Serialize;
use std::{collections::BTreeSet, time::Duration};

/// Where one run's state lives, from the manifests.
pub struct State {
    pub stack: Stack,
    pub keys: Keyspace,
    /// The topic of tweets, its dead-letter topic and the KafkaSources' consumer groups.
    pub topic: String,
    pub dead_letters: String,
    pub groups: Vec<String>,
    database: String,
    collection: String,
}

/// The totals of a run, as `tools counts` prints them and the demo's live line shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub counted: Counted,
    pub archived: u64,
    /// Records in the topic of tweets and in the dead-letter topic.
    pub in_kafka: i64,
    pub dead_lettered: i64,
    /// Records not yet committed by every KafkaSource (summed over sources and partitions).
    pub lag: i64,
}

impl State {
    pub fn new(stack: &Stack) -> anyhow::Result<State> {
        let sources = stack.kafka_sources()?;
        let first = &sources[0];
        let dead_letters =
            first.delivery.dead_letter_topic.clone().context("the KafkaSources have no dead-letter sink")?;
        if first.topics.len() != 1
            || sources.iter().any(|s| {
                s.topics != first.topics || s.delivery.dead_letter_topic.as_ref() != Some(&dead_letters)
            })
        {
            bail!("the tools expect every KafkaSource to read one topic and share one dead-letter sink");
        }
        Ok(State {
            keys: Keyspace::new(&stack.env_of("counter", "REDIS_KEY_PREFIX")?),
            database: stack.env_of("archiver", "MONGODB_DATABASE")?,
            collection: stack.env_of("archiver", "MONGODB_COLLECTION")?,
            topic: first.topics[0].clone(),
            dead_letters,
            groups: sources.iter().map(|s| s.consumer_group.clone()).collect(),
            stack: stack.clone(),
        })
    }

    pub async fn redis(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        let client = redis::Client::open(self.stack.redis_url.expose_secret()).context("REDIS_URL")?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        redis::aio::ConnectionManager::new_with_config(client, config).await.with_context(|| {
            format!("connecting to Redis at {} — is it running? (`dev/stack up`)", self.stack.redis_url)
        })
    }

    pub async fn archive(&self) -> anyhow::Result<mongodb::Collection<mongodb::bson::Document>> {
        let mut options =
            mongodb::options::ClientOptions::parse(self.stack.mongodb_uri.expose_secret()).await?;
        options.server_selection_timeout = Some(Duration::from_secs(5));
        Ok(mongodb::Client::with_options(options)?.database(&self.database).collection(&self.collection))
    }

    pub async fn counted(&self) -> anyhow::Result<Counted> {
        Ok(self.keys.read(&mut self.redis().await?).await?)
    }

    pub async fn archived(&self) -> anyhow::Result<u64> {
        self.archive()
            .await?
            .count_documents(Default::default())
            .await
            .context("counting the archive — is the MongoDB-wire server running?")
    }

    /// The `_id` of every archived tweet (its event id).
    pub async fn archived_ids(&self) -> anyhow::Result<BTreeSet<String>> {
        let documents = self
            .archive()
            .await?
            .find(Default::default())
            .projection(mongodb::bson::doc! { "_id": 1 })
            .await
            .context("reading the archive — is the MongoDB-wire server running?")?;
        let documents: Vec<mongodb::bson::Document> = documents.try_collect().await?;
        documents
            .iter()
            .map(|d| d.get_str("_id").map(str::to_owned).with_context(|| format!("an archived _id: {d}")))
            .collect()
    }

    /// Records of the topic of tweets that a KafkaSource has not committed yet ([`kafka::lag`]).
    pub fn lag(&self) -> anyhow::Result<i64> {
        kafka::lag(&self.stack.kafka_brokers, &self.topic, &self.groups)
    }

    pub async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let brokers = &self.stack.kafka_brokers;
        Ok(Snapshot {
            counted: self.counted().await?,
            archived: self.archived().await?,
            in_kafka: kafka::records(brokers, &self.topic)?,
            dead_lettered: kafka::records(brokers, &self.dead_letters)?,
            lag: self.lag()?,
        })
    }

    /// Until every source has committed every record (lag 0), or `timeout`; the error gives the
    /// lag left. Kafka failing to answer counts as not yet (it may be coming back from a
    /// fault), up to the deadline.
    pub async fn wait_delivered(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let lag = self.lag();
            if matches!(lag, Ok(0)) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let lag = lag?;
                bail!("{lag} records of {} still undelivered after {} s", self.topic, timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Deletes and re-creates the topics, and clears the run's Redis keys and MongoDB database.
    /// Offsets restart at 0 with a new topic, so the dedup bitmaps must go with it.
    pub async fn reset(&self) -> anyhow::Result<()> {
        let topics = [self.topic.clone(), self.dead_letters.clone()];
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.stack.kafka_brokers).create()?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        admin.delete_topics(&names, &options).await.context("deleting topics — is Kafka running?")?;
        // Deletion is asynchronous: wait until the broker no longer lists the topics.
        let consumer = kafka::consumer(&self.stack.kafka_brokers, None)?;
        for _ in 0..100 {
            let metadata = consumer.fetch_metadata(None, Duration::from_secs(5))?;
            if !metadata.topics().iter().any(|t| topics.iter().any(|n| n == t.name())) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        runner::create_topics(&self.stack.kafka_brokers, &topics).await?;
        self.keys.clear(&mut self.redis().await?).await?;
        let archive = self.archive().await?;
        mongodb::Client::with_uri_str(self.stack.mongodb_uri.expose_secret())
            .await?
            .database(&self.database)
            .drop()
            .await
            .with_context(|| {
                format!("dropping {} — is the MongoDB-wire server running?", archive.namespace())
            })?;
        Ok(())
    }
}
