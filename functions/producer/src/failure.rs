//! Why a tweet was not published, classified in one place: does Kafka provably not hold the
//! record, or may it hold it? That decides whether ingest may say "not stored" (503: a retry
//! cannot double it) or must say "unknown" (504: only a retry with the same Idempotency-Key is
//! safe). librdkafka never retries a record whose delivery timed out, and a record timed out in
//! flight may have been written, so a timeout is never "not stored".
//!
//! The rule: a record that was never handed to librdkafka (its queue stayed full, the client is
//! broken, the record cannot be produced) is not stored; after the hand-off only a refusal that
//! Kafka sent for the record itself, or for its topic, is — every other error, and any error not
//! listed here, is unknown.

use proto::{NOT_STORED, OUTCOME, UNKNOWN};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tonic::{Code, Status, metadata::MetadataValue};

/// What is known of a record that was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Kafka does not hold it: the caller may answer so, and a retry cannot double it.
    NotStored,
    /// It may be in Kafka.
    Unknown,
}

/// Where the error was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Handing the record to librdkafka (`produce`): it never entered the client's queue.
    Enqueue,
    /// The delivery report, after the hand-off.
    Delivery,
}

/// A classified failure: the outcome and the gRPC code producer answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub outcome: Outcome,
    pub code: Code,
}

impl Failure {
    /// Nothing was handed to Kafka for a reason of producer's own (encoding the event failed).
    pub const INTERNAL: Failure = Failure { outcome: Outcome::NotStored, code: Code::Internal };

    /// The one classification of a Kafka error met at `stage`.
    pub fn of(stage: Stage, error: &KafkaError) -> Failure {
        use RDKafkaErrorCode as K;
        let code = match error {
            KafkaError::MessageProduction(code) => Some(*code),
            _ => None,
        };
        let refused = matches!(
            code,
            // The record itself: too large, malformed, or not valid for the topic.
            Some(
                K::MessageSizeTooLarge
                | K::InvalidMessageSize
                | K::InvalidMessage
                | K::InvalidRecord
                | K::InvalidDifferentRecord
                | K::MessageBatchTooLarge
                | K::InvalidTimestamp
                | K::UnsupportedForMessageFormat
                | K::PolicyViolation
                // Its topic or partition: unknown, invalid or not ours to write.
                | K::UnknownTopic
                | K::UnknownPartition
                | K::UnknownTopicOrPartition
                | K::InvalidTopic
                | K::TopicAuthorizationFailed
                | K::ClusterAuthorizationFailed
                // librdkafka removed it from its queue before sending it.
                | K::PurgeQueue
            )
        );
        let (outcome, code) = match stage {
            _ if refused => (Outcome::NotStored, Code::FailedPrecondition),
            Stage::Enqueue => (Outcome::NotStored, Code::Unavailable),
            Stage::Delivery if code == Some(K::MessageTimedOut) => (Outcome::Unknown, Code::DeadlineExceeded),
            Stage::Delivery => (Outcome::Unknown, Code::Unknown),
        };
        Failure { outcome, code }
    }

    /// The status producer answers with: the code, a message that names the outcome but not the
    /// cause (logged instead), and the outcome as metadata for ingest.
    pub fn status(self) -> Status {
        let (message, outcome) = match self.outcome {
            Outcome::NotStored => ("the tweet was not stored in Kafka", NOT_STORED),
            Outcome::Unknown => ("the tweet may or may not be in Kafka", UNKNOWN),
        };
        let mut status = Status::new(self.code, message);
        status.metadata_mut().insert(OUTCOME, MetadataValue::from_static(outcome));
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RDKafkaErrorCode as K;

    fn produce(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageProduction(code)
    }

    #[test]
    fn the_classification_table() {
        let not_stored = |code| Failure { outcome: Outcome::NotStored, code };
        let unknown = |code| Failure { outcome: Outcome::Unknown, code };
        let table = [
            // Never handed over: not stored, whatever the reason.
            (Stage::Enqueue, produce(K::QueueFull), not_stored(Code::Unavailable)),
            (Stage::Enqueue, produce(K::Fatal), not_stored(Code::Unavailable)),
            (Stage::Enqueue, produce(K::MessageTimedOut), not_stored(Code::Unavailable)),
            (Stage::Enqueue, produce(K::MessageSizeTooLarge), not_stored(Code::FailedPrecondition)),
            (Stage::Enqueue, produce(K::UnknownTopic), not_stored(Code::FailedPrecondition)),
            (Stage::Enqueue, KafkaError::Canceled, not_stored(Code::Unavailable)),
            // Refused by Kafka after the hand-off: not stored.
            (Stage::Delivery, produce(K::MessageSizeTooLarge), not_stored(Code::FailedPrecondition)),
            (Stage::Delivery, produce(K::InvalidRecord), not_stored(Code::FailedPrecondition)),
            (Stage::Delivery, produce(K::InvalidDifferentRecord), not_stored(Code::FailedPrecondition)),
            (Stage::Delivery, produce(K::TopicAuthorizationFailed), not_stored(Code::FailedPrecondition)),
            (Stage::Delivery, produce(K::UnknownTopicOrPartition), not_stored(Code::FailedPrecondition)),
            (Stage::Delivery, produce(K::UnknownTopic), not_stored(Code::FailedPrecondition)),
            (Stage::Delivery, produce(K::PurgeQueue), not_stored(Code::FailedPrecondition)),
            // Timed out after the hand-off, possibly in flight: unknown.
            (Stage::Delivery, produce(K::MessageTimedOut), unknown(Code::DeadlineExceeded)),
            // Any other error after the hand-off: unknown.
            (Stage::Delivery, produce(K::PurgeInflight), unknown(Code::Unknown)),
            (Stage::Delivery, produce(K::Fatal), unknown(Code::Unknown)),
            (Stage::Delivery, produce(K::NotEnoughReplicasAfterAppend), unknown(Code::Unknown)),
            (Stage::Delivery, produce(K::NotEnoughReplicas), unknown(Code::Unknown)),
            (Stage::Delivery, produce(K::RequestTimedOut), unknown(Code::Unknown)),
            (Stage::Delivery, produce(K::BrokerTransportFailure), unknown(Code::Unknown)),
            (Stage::Delivery, produce(K::AllBrokersDown), unknown(Code::Unknown)),
            (Stage::Delivery, KafkaError::Canceled, unknown(Code::Unknown)),
            (Stage::Delivery, KafkaError::Global(K::MessageSizeTooLarge), unknown(Code::Unknown)),
        ];
        for (stage, error, expected) in table {
            assert_eq!(Failure::of(stage, &error), expected, "{stage:?} {error:?}");
        }
    }

    #[test]
    fn the_status_carries_the_outcome_and_no_cause() {
        let status = Failure::of(Stage::Delivery, &produce(K::MessageTimedOut)).status();
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(status.metadata().get(OUTCOME).unwrap(), UNKNOWN);
        assert_eq!(status.message(), "the tweet may or may not be in Kafka");
        let status = Failure::of(Stage::Enqueue, &produce(K::QueueFull)).status();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.metadata().get(OUTCOME).unwrap(), NOT_STORED);
        assert_eq!(Failure::INTERNAL.status().metadata().get(OUTCOME).unwrap(), NOT_STORED);
    }
}
