//! What counter asks Kafka, and nothing more: for each topic it consumes, the topic's id
//! (KIP-516), its partitions and their high watermarks — Metadata v12 and ListOffsets v7 (Kafka
//! 3.1 or newer), over plaintext TCP, one request at a time per broker connection.
//!
//! Why not rdkafka, which the producer links: its Rust API exposes no topic id, and its
//! watermark query blocks a thread per partition; it would also add librdkafka to counter's
//! image for two requests. `kafka-protocol` (the encoders and decoders Kafka's own message
//! schemas generate, no I/O, here with its `client` feature only: no compression codecs) writes
//! and reads the messages; what is ours is the framing — a size, a request header, the body —
//! and finding each partition's leader.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::{
    ResponseError,
    messages::{
        ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
        RequestHeader, ResponseHeader, TopicName,
        list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
        metadata_request::MetadataRequestTopic,
    },
    protocol::{Decodable, Encodable, HeaderVersion, StrBytes},
};
use std::{collections::BTreeMap, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const METADATA_VERSION: i16 = 12;
const LIST_OFFSETS_VERSION: i16 = 7;
/// `ListOffsets` timestamp meaning "the latest offset", i.e. the high watermark.
const LATEST: i64 = -1;
/// The largest answer read; Metadata for two topics is a few KiB.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// A topic as Kafka describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// Changes when the topic is deleted and created again under the same name.
    pub id: uuid::Uuid,
    /// The high watermark of each partition (index = partition): every record of the partition
    /// has an offset below it.
    pub high_watermarks: Vec<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("no broker of {brokers} could be reached: {error}")]
    Unreachable { brokers: String, error: std::io::Error },
    #[error("broker {broker}: {error}")]
    Io { broker: String, error: std::io::Error },
    #[error("Kafka did not answer within {0} ms")]
    Timeout(u128),
    #[error("broker {broker} sent a {api} answer we cannot read: {error}")]
    Protocol { broker: String, api: &'static str, error: String },
    #[error("{api} of topic {topic}: {error}")]
    Refused { api: &'static str, topic: String, error: String },
}

/// A connection to the cluster at `brokers` (a comma-separated bootstrap list), kept open
/// between calls; any error closes every connection, and the next call connects again.
pub struct Kafka {
    bootstrap: Vec<String>,
    timeout: Duration,
    /// Open connections by `host:port`.
    connections: BTreeMap<String, TcpStream>,
    correlation_id: i32,
}

impl Kafka {
    pub fn new(brokers: &str, timeout: Duration) -> Kafka {
        Kafka {
            bootstrap: brokers
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
                .map(str::to_owned)
                .collect(),
            timeout,
            connections: BTreeMap::new(),
            correlation_id: 0,
        }
    }

    /// Describes `topics`, in their order: `None` for a topic Kafka does not have. Takes at most
    /// the timeout given to [`Kafka::new`].
    pub async fn describe(&mut self, topics: &[&str]) -> Result<Vec<Option<Topic>>, KafkaError> {
        let timeout = self.timeout;
        let described = tokio::time::timeout(timeout, async {
            let reused = !self.connections.is_empty();
            match self.describe_now(topics).await {
                // A broker closes idle connections (`connections.max.idle.ms`): once more on
                // new ones.
                Err(KafkaError::Io { .. }) if reused => {
                    self.connections.clear();
                    self.describe_now(topics).await
                }
                result => result,
            }
        })
        .await;
        let result = described.unwrap_or(Err(KafkaError::Timeout(timeout.as_millis())));
        if result.is_err() {
            self.connections.clear();
        }
        result
    }

    async fn describe_now(&mut self, topics: &[&str]) -> Result<Vec<Option<Topic>>, KafkaError> {
        let request = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| MetadataRequestTopic::default().with_name(Some(topic_name(t))))
                    .collect(),
            ))
            .with_allow_auto_topic_creation(false);
        let bootstrap = self.bootstrap_broker().await?;
        let metadata: MetadataResponse =
            self.call(&bootstrap, ApiKey::Metadata, "Metadata", METADATA_VERSION, &request).await?;
        let brokers: BTreeMap<BrokerId, String> =
            metadata.brokers.iter().map(|b| (b.node_id, format!("{}:{}", &*b.host, b.port))).collect();

        // Partitions by leader, and what each topic is so far.
        let mut by_leader: BTreeMap<String, Vec<(usize, i32)>> = BTreeMap::new();
        let mut described: Vec<Option<Topic>> = vec![None; topics.len()];
        for (index, &name) in topics.iter().enumerate() {
            let Some(topic) = metadata.topics.iter().find(|t| t.name.as_deref().map(|n| &**n) == Some(name))
            else {
                return Err(refused("Metadata", name, "the topic is missing from the answer"));
            };
            match ResponseError::try_from_code(topic.error_code) {
                None => {}
                Some(ResponseError::UnknownTopicOrPartition) => continue,
                Some(e) => return Err(refused("Metadata", name, e)),
            }
            for partition in &topic.partitions {
                // A partition's error (say, a replica offline) matters only when it has no leader.
                let leader = brokers.get(&partition.leader_id).ok_or_else(|| {
                    let why = ResponseError::try_from_code(partition.error_code)
                        .map_or_else(|| "no leader".to_owned(), |e| e.to_string());
                    refused("Metadata", name, format!("partition {}: {why}", partition.partition_index))
                })?;
                by_leader.entry(leader.clone()).or_default().push((index, partition.partition_index));
            }
            described[index] =
                Some(Topic { id: topic.topic_id, high_watermarks: vec![-1; topic.partitions.len()] });
        }

        for (leader, partitions) in by_leader {
            let request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(
                topics
                    .iter()
                    .enumerate()
                    .filter_map(|(index, name)| {
                        let mine: Vec<ListOffsetsPartition> = partitions
                            .iter()
                            .filter(|(i, _)| *i == index)
                            .map(|(_, p)| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(*p)
                                    .with_timestamp(LATEST)
                            })
                            .collect();
                        (!mine.is_empty()).then(|| {
                            ListOffsetsTopic::default().with_name(topic_name(name)).with_partitions(mine)
                        })
                    })
                    .collect(),
            );
            let offsets: ListOffsetsResponse = self
                .call(&leader, ApiKey::ListOffsets, "ListOffsets", LIST_OFFSETS_VERSION, &request)
                .await?;
            for answer in offsets.topics {
                let Some(index) = topics.iter().position(|t| *t == &**answer.name) else { continue };
                let Some(topic) = described[index].as_mut() else { continue };
                for p in answer.partitions {
                    if let Some(e) = ResponseError::try_from_code(p.error_code) {
                        return Err(refused(
                            "ListOffsets",
                            topics[index],
                            format!("partition {}: {e}", p.partition_index),
                        ));
                    }
                    if let Some(slot) =
                        usize::try_from(p.partition_index).ok().and_then(|i| topic.high_watermarks.get_mut(i))
                    {
                        *slot = p.offset;
                    }
                }
            }
        }
        for (topic, name) in described.iter().zip(topics) {
            if let Some(partition) =
                topic.as_ref().and_then(|t| t.high_watermarks.iter().position(|&h| h < 0))
            {
                return Err(refused(
                    "ListOffsets",
                    name,
                    format!("no high watermark for partition {partition}"),
                ));
            }
        }
        Ok(described)
    }

    /// The first bootstrap broker that accepts a connection (one already open, if any).
    async fn bootstrap_broker(&mut self) -> Result<String, KafkaError> {
        if let Some(open) = self.bootstrap.iter().find(|b| self.connections.contains_key(*b)) {
            return Ok(open.clone());
        }
        let mut last = std::io::Error::other("no broker address given");
        for broker in &self.bootstrap {
            match TcpStream::connect(broker).await {
                Ok(stream) => {
                    stream
                        .set_nodelay(true)
                        .map_err(|error| KafkaError::Io { broker: broker.clone(), error })?;
                    self.connections.insert(broker.clone(), stream);
                    return Ok(broker.clone());
                }
                Err(error) => last = error,
            }
        }
        Err(KafkaError::Unreachable { brokers: self.bootstrap.join(","), error: last })
    }

    /// Sends one request to `broker` and reads its answer.
    async fn call<Q, A>(
        &mut self,
        broker: &str,
        key: ApiKey,
        api: &'static str,
        version: i16,
        request: &Q,
    ) -> Result<A, KafkaError>
    where
        Q: Encodable + HeaderVersion,
        A: Decodable + HeaderVersion,
    {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("counter")));
        let bad = |error: String| KafkaError::Protocol { broker: broker.to_owned(), api, error };
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header.encode(&mut frame, Q::header_version(version)).map_err(|e| bad(e.to_string()))?;
        request.encode(&mut frame, version).map_err(|e| bad(e.to_string()))?;
        let size = i32::try_from(frame.len() - 4).map_err(|e| bad(e.to_string()))?;
        frame[..4].copy_from_slice(&size.to_be_bytes());

        let io = |error| KafkaError::Io { broker: broker.to_owned(), error };
        if !self.connections.contains_key(broker) {
            let stream = TcpStream::connect(broker).await.map_err(io)?;
            stream.set_nodelay(true).map_err(io)?;
            self.connections.insert(broker.to_owned(), stream);
        }
        let stream = self.connections.get_mut(broker).expect("inserted above");
        stream.write_all(&frame).await.map_err(io)?;
        let size = usize::try_from(stream.read_i32().await.map_err(io)?).map_err(|e| bad(e.to_string()))?;
        if size > MAX_RESPONSE_BYTES {
            return Err(bad(format!("an answer of {size} bytes")));
        }
        let mut answer = vec![0; size];
        stream.read_exact(&mut answer).await.map_err(io)?;
        let mut answer = Bytes::from(answer);
        let header = ResponseHeader::decode(&mut answer, A::header_version(version))
            .map_err(|e| bad(e.to_string()))?;
        if header.correlation_id != correlation_id {
            return Err(bad(format!(
                "correlation id {} for request {correlation_id}",
                header.correlation_id
            )));
        }
        let decoded = A::decode(&mut answer, version).map_err(|e| bad(e.to_string()))?;
        if answer.has_remaining() {
            return Err(bad(format!("{} bytes left over", answer.remaining())));
        }
        Ok(decoded)
    }
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

fn refused(api: &'static str, topic: &str, error: impl std::fmt::Display) -> KafkaError {
    KafkaError::Refused { api, topic: topic.to_owned(), error: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_are_a_comma_separated_list() {
        let kafka = Kafka::new(" a:9092, b:9093 ,,", Duration::from_secs(1));
        assert_eq!(kafka.bootstrap, ["a:9092", "b:9093"]);
    }

    #[tokio::test]
    async fn an_unreachable_cluster_is_an_error_naming_it() {
        let port = testkit::closed_port();
        let mut kafka = Kafka::new(&format!("127.0.0.1:{port}"), Duration::from_secs(2));
        let error = kafka.describe(&["messages"]).await.unwrap_err();
        assert!(error.to_string().contains(&format!("127.0.0.1:{port}")), "{error}");
    }

    #[tokio::test]
    async fn a_connection_the_broker_closed_is_opened_again() {
        // A "broker" that takes a connection and closes it at once: the reused connection and
        // the new one both fail, so the error is I/O, not a timeout or a hang.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = tokio::spawn(async move {
            let mut count = 0;
            while let Ok((connection, _)) = listener.accept().await {
                drop(connection);
                count += 1;
                if count == 2 {
                    break;
                }
            }
            count
        });
        let mut kafka = Kafka::new(&address, Duration::from_secs(2));
        let stale = TcpStream::connect(&address).await.unwrap();
        kafka.connections.insert(address.clone(), stale);
        assert!(matches!(kafka.describe(&["messages"]).await, Err(KafkaError::Io { .. })));
        assert_eq!(accepted.await.unwrap(), 2, "one stale connection, then one new one");
        assert!(kafka.connections.is_empty());
    }

    #[tokio::test]
    async fn a_silent_broker_is_a_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // Accepts, then holds the connection without a word.
        let held = tokio::spawn(async move {
            let _connection = listener.accept().await;
            std::future::pending::<()>().await
        });
        let mut kafka = Kafka::new(&address.to_string(), Duration::from_millis(200));
        assert!(matches!(kafka.describe(&["messages"]).await, Err(KafkaError::Timeout(200))));
        held.abort();
    }
}
