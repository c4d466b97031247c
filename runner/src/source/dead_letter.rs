//! Dead letters: a record whose delivery failed for good goes to the KafkaSource's dead-letter
//! KafkaSink topic, with Knative's error extensions. Knative commits a record whose dead-letter
//! write failed; here the write is retried until Kafka takes it — unless Kafka refuses it for
//! good ([`refused_for_good`]) — so a record is not dropped while Kafka is only unavailable.

use super::{Dispatcher, Outcome, dispatch::Failure};
use crate::record;
use base64::Engine;
use cloudevents::binding::rdkafka::{FutureRecordExt, MessageRecord};
use rdkafka::{Message, message::OwnedMessage, producer::FutureRecord, util::Timeout};
use std::{sync::atomic::Ordering::Relaxed, time::Duration};

/// Knative keeps at most this much of a failed response in `knativeerrordata`.
const ERROR_DATA_BYTES: usize = 1024;

impl Dispatcher {
    /// Writes the event, with Knative's error extensions, to the dead-letter topic; retries until
    /// Kafka takes it, unless Kafka refuses it for good ([`refused_for_good`]): then the record
    /// is logged at error with its position, counted in `weather_dead_letters_refused_total` and
    /// dropped, as Knative does, so the partition flows on.
    pub(super) async fn dead_letter(&self, message: &OwnedMessage, failure: Failure) -> Outcome {
        tracing::warn!(source = %self.source.name, partition = message.partition(), offset = message.offset(),
            code = ?failure.code, error = %failure.error, "Delivery failed, dead-lettering");
        let Some(topic) = &self.source.delivery.dead_letter_topic else {
            tracing::error!(source = %self.source.name, "No dead-letter sink: the record is dropped, as Knative does");
            return Outcome::Dropped;
        };
        // The event as the Event path makes it, whether the deliveries were forwarded or not.
        let mut event = record::to_event(message, &self.source.namespace, &self.source.name);
        event.set_extension("knativeerrordest", self.sink_url.clone());
        if let Some(code) = failure.code {
            event.set_extension("knativeerrorcode", code.to_string());
            let data = &failure.body[..failure.body.len().min(ERROR_DATA_BYTES)];
            event.set_extension("knativeerrordata", base64::engine::general_purpose::STANDARD.encode(data));
        }
        let record = match MessageRecord::from_event(event) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "Cannot encode the dead letter");
                return Outcome::Dropped;
            }
        };
        loop {
            let mut out = FutureRecord::to(topic).message_record(&record);
            if let Some(key) = message.key() {
                out = out.key(key);
            }
            match self.producer.send(out, Timeout::After(Duration::from_secs(10))).await {
                Ok(_) => {
                    self.progress.dead_lettered.fetch_add(1, Relaxed);
                    return Outcome::DeadLettered;
                }
                Err((e, _)) if refused_for_good(&e) => {
                    tracing::error!(source = %self.source.name, topic = message.topic(), partition = message.partition(),
                        offset = message.offset(), dead_letter_topic = %topic, error = %e,
                        "Kafka refuses the dead letter for good; the record is skipped");
                    common::metrics::get().dead_letter_refused();
                    self.progress.refused.fetch_add(1, Relaxed);
                    return Outcome::Dropped;
                }
                Err((e, _)) => {
                    tracing::error!(%topic, error = %e, "Writing the dead letter failed, retrying")
                }
            }
            if !self.wait(Duration::from_secs(1)).await {
                return Outcome::Stopped;
            }
        }
    }
}

/// Whether Kafka will never take a dead letter, whatever the wait: too large for the producer
/// or the broker, not authorised, or the topic does not exist. Anything else (a broker down, a
/// timeout, a full queue) is retried for ever, because dropping it would lose the record.
pub fn refused_for_good(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge
                | MessageBatchTooLarge
                | InvalidRecord
                | TopicAuthorizationFailed
                | ClusterAuthorizationFailed
                | UnknownTopic
                | UnknownTopicOrPartition
                | InvalidTopic
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::{error::KafkaError, types::RDKafkaErrorCode};

    #[test]
    fn dead_letters_kafka_never_takes_are_told_from_passing_trouble() {
        let produce = |code| KafkaError::MessageProduction(code);
        for permanent in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
        ] {
            assert!(refused_for_good(&produce(permanent)), "{permanent:?}");
        }
        for passing in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
        ] {
            assert!(!refused_for_good(&produce(passing)), "{passing:?}");
        }
    }
}
