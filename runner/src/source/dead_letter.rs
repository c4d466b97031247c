//! Dead letters: a record whose delivery failed for good goes to the KafkaSource's dead-letter
//! KafkaSink topic, with Knative's error extensions. Knative commits a record whose dead-letter
//! write failed; here no record is committed past while its letter can still be written:
//!
//! - a letter Kafka cannot take for now (a broker down, a timeout, a full queue) is tried again
//!   every second;
//! - a letter Kafka refuses because of its topic (unknown, not authorised) waits the same way —
//!   the partition stops there, with an error log and `weather_runner_dead_letter_waiting_offset`
//!   naming topic, partition and offset — until the topic can be written again;
//! - a letter too large for Kafka is written again without the event's data (the extension
//!   `weatherdatadropped` gives its size), so the record's place and error are kept. Only when
//!   even that is refused is the record skipped (`weather_dead_letters_refused_total`); a tweet
//!   ingest accepted is far too small for that.

use super::{Dispatcher, Outcome, dispatch::Failure};
use crate::{manifests::KafkaSource, record};
use base64::Engine;
use cloudevents::{
    Event,
    binding::rdkafka::{FutureRecordExt, MessageRecord},
};
use common::metrics::PartitionLabels;
use rdkafka::{Message, error::KafkaError, message::OwnedMessage, producer::FutureRecord, util::Timeout};
use std::{
    collections::{BTreeSet, HashMap},
    sync::{Mutex, atomic::Ordering::Relaxed},
    time::Duration,
};

/// Knative keeps at most this much of a failed response in `knativeerrordata`.
const ERROR_DATA_BYTES: usize = 1024;
/// The size of the data a letter too large for Kafka was written without.
pub const DATA_DROPPED_EXTENSION: &str = "weatherdatadropped";

/// Why Kafka will not take a letter however long it is retried as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too large for the producer or the broker, or not a valid record.
    TooLarge,
    /// The topic does not exist or may not be written: it may be created or allowed later.
    Topic,
}

impl Dispatcher {
    /// Writes the event, with Knative's error extensions, to the dead-letter topic, as the
    /// module says: the outcome is `DeadLettered` once Kafka took it, `Dropped` only without a
    /// dead-letter sink or when even the letter without data is refused.
    pub(super) async fn dead_letter(&self, message: &OwnedMessage, failure: Failure) -> Outcome {
        tracing::warn!(source = %self.source.name, partition = message.partition(), offset = message.offset(),
            code = ?failure.code, error = %failure.error, "Delivery failed, dead-lettering");
        let Some(topic) = &self.source.delivery.dead_letter_topic else {
            tracing::error!(source = %self.source.name, "No dead-letter sink: the record is dropped, as Knative does");
            return Outcome::Dropped;
        };
        let mut letter = letter(message, &self.source, &self.sink_url, failure.code, &failure.body);
        let waiting = PartitionLabels {
            source: self.source.name.clone(),
            topic: message.topic().to_owned(),
            partition: message.partition(),
        };
        let outcome = loop {
            let record = match MessageRecord::from_event(letter.clone()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(source = %self.source.name, error = %e, "Cannot encode the dead letter; the record is dropped");
                    break Outcome::Dropped;
                }
            };
            let refusal = match self.write_letter(topic, &record, message.key()).await {
                Ok(()) => {
                    self.progress.dead_lettered.fetch_add(1, Relaxed);
                    break Outcome::DeadLettered;
                }
                Err(e) => (refusal(&e), e),
            };
            match refusal {
                (Some(Refusal::TooLarge), e) if letter.data().is_some() => {
                    tracing::warn!(source = %self.source.name, partition = message.partition(), offset = message.offset(),
                        error = %e, "The dead letter is too large for Kafka; writing it without the event's data");
                    without_data(&mut letter);
                    continue;
                }
                (Some(Refusal::TooLarge), e) => {
                    tracing::error!(source = %self.source.name, topic = message.topic(), partition = message.partition(),
                        offset = message.offset(), dead_letter_topic = %topic, error = %e,
                        "Kafka refuses even the dead letter without data; the record is skipped");
                    common::metrics::get().dead_letter_refused();
                    self.progress.refused.fetch_add(1, Relaxed);
                    break Outcome::Dropped;
                }
                (Some(Refusal::Topic), e) => {
                    tracing::error!(source = %self.source.name, topic = message.topic(), partition = message.partition(),
                        offset = message.offset(), dead_letter_topic = %topic, error = %e,
                        "Kafka refuses the dead-letter topic; the partition waits here until it can be written");
                    self.waiting.add(&waiting, message.offset());
                }
                (None, e) => tracing::error!(%topic, error = %e, "Writing the dead letter failed, retrying"),
            }
            if !self.wait(Duration::from_secs(1)).await {
                break Outcome::Stopped;
            }
        };
        if self.waiting.remove(&waiting, message.offset()) && outcome == Outcome::DeadLettered {
            tracing::info!(source = %self.source.name, topic = message.topic(), partition = message.partition(),
                "The dead letters are written; the partition flows on");
        }
        outcome
    }

    /// One write of the letter `record` to `topic`, keyed as the record was.
    async fn write_letter(
        &self,
        topic: &str,
        record: &MessageRecord,
        key: Option<&[u8]>,
    ) -> Result<(), KafkaError> {
        let mut out = FutureRecord::to(topic).message_record(record);
        if let Some(key) = key {
            out = out.key(key);
        }
        self.producer.send(out, Timeout::After(Duration::from_secs(10))).await.map(|_| ()).map_err(|(e, _)| e)
    }
}

/// The records whose letter waits for its topic, per partition (several at once in an
/// unordered source); `weather_runner_dead_letter_waiting_offset` shows each partition's lowest.
#[derive(Default)]
pub(super) struct Waiting(Mutex<HashMap<PartitionLabels, BTreeSet<i64>>>);

impl Waiting {
    fn add(&self, partition: &PartitionLabels, offset: i64) {
        let mut waiting = self.0.lock().expect("waiting lock");
        let offsets = waiting.entry(partition.clone()).or_default();
        offsets.insert(offset);
        let lowest = offsets.first().copied().unwrap_or(offset);
        common::metrics::get().dead_letter_waiting.get_or_create(partition).set(lowest);
    }

    /// Takes `offset` off its partition's list: whether that partition waits for no letter now.
    fn remove(&self, partition: &PartitionLabels, offset: i64) -> bool {
        let mut waiting = self.0.lock().expect("waiting lock");
        let Some(offsets) = waiting.get_mut(partition) else { return false };
        if !offsets.remove(&offset) {
            return false;
        }
        let gauge = &common::metrics::get().dead_letter_waiting;
        match offsets.first() {
            Some(lowest) => {
                gauge.get_or_create(partition).set(*lowest);
                false
            }
            None => {
                waiting.remove(partition);
                gauge.remove(partition);
                true
            }
        }
    }
}

/// The dead letter of `message`, read by `source`, whose delivery to `sink_url` failed with
/// `code` (none: no answer) and `body`: the event as the Event path makes it (whether the
/// deliveries were forwarded or not) with Knative's `knativeerror*` extensions.
pub fn letter(
    message: &OwnedMessage,
    source: &KafkaSource,
    sink_url: &str,
    code: Option<u16>,
    body: &[u8],
) -> Event {
    let mut letter = record::to_event(message, &source.namespace, &source.name);
    letter.set_extension("knativeerrordest", sink_url.to_owned());
    if let Some(code) = code {
        letter.set_extension("knativeerrorcode", code.to_string());
        let data = &body[..body.len().min(ERROR_DATA_BYTES)];
        letter.set_extension("knativeerrordata", base64::engine::general_purpose::STANDARD.encode(data));
    }
    letter
}

/// `letter` without its data, the size of what was dropped in [`DATA_DROPPED_EXTENSION`].
fn without_data(letter: &mut Event) {
    let (_, _, data) = letter.take_data();
    let bytes = match data {
        Some(cloudevents::Data::Binary(b)) => b.len(),
        Some(cloudevents::Data::String(s)) => s.len(),
        Some(cloudevents::Data::Json(j)) => j.to_string().len(),
        None => 0,
    };
    letter.set_extension(DATA_DROPPED_EXTENSION, bytes as i64);
}

/// Why Kafka will never take a letter as it is, whatever the wait; `None` for passing trouble
/// (a broker down, a timeout, a full queue), which is retried as it is.
pub fn refusal(error: &KafkaError) -> Option<Refusal> {
    use rdkafka::types::RDKafkaErrorCode::*;
    match error.rdkafka_error_code()? {
        MessageSizeTooLarge | MessageBatchTooLarge | InvalidRecord => Some(Refusal::TooLarge),
        TopicAuthorizationFailed
        | ClusterAuthorizationFailed
        | UnknownTopic
        | UnknownTopicOrPartition
        | InvalidTopic => Some(Refusal::Topic),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::EventBuilder;
    use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};

    #[test]
    fn dead_letters_kafka_never_takes_are_told_from_passing_trouble() {
        let produce = |code| KafkaError::MessageProduction(code);
        // error → what follows: written without data, waited for at the partition, or retried
        let cases = [
            (RDKafkaErrorCode::MessageSizeTooLarge, Some(Refusal::TooLarge)),
            (RDKafkaErrorCode::MessageBatchTooLarge, Some(Refusal::TooLarge)),
            (RDKafkaErrorCode::InvalidRecord, Some(Refusal::TooLarge)),
            (RDKafkaErrorCode::TopicAuthorizationFailed, Some(Refusal::Topic)),
            (RDKafkaErrorCode::UnknownTopicOrPartition, Some(Refusal::Topic)),
            (RDKafkaErrorCode::UnknownTopic, Some(Refusal::Topic)),
            (RDKafkaErrorCode::InvalidTopic, Some(Refusal::Topic)),
        ];
        for (code, expected) in cases {
            assert_eq!(refusal(&produce(code)), expected, "{code:?}");
        }
        for passing in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert_eq!(refusal(&produce(passing)), None, "{passing:?}");
        }
        assert_eq!(refusal(&KafkaError::Canceled), None, "no error code");
    }

    #[test]
    fn a_letter_without_data_says_how_much_was_dropped() {
        let mut letter = cloudevents::EventBuilderV10::new()
            .id("1")
            .source("/s")
            .ty("t")
            .data("application/json", vec![b'x'; 2048])
            .build()
            .unwrap();
        without_data(&mut letter);
        assert!(letter.data().is_none());
        let dropped = letter.extension(DATA_DROPPED_EXTENSION).map(ToString::to_string);
        assert_eq!(dropped.as_deref(), Some("2048"));
    }
}
