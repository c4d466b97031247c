//! Which Kafka positions counter believes. An event's `knativekafkapartition` and
//! `knativekafkaoffset` name the dedup mark it sets, and anyone who can reach counter can send
//! an event: a position no record has yet would mark, ahead of time, the record that later
//! gets it (which would then be answered "duplicate" and never counted), and positions far
//! apart would each make Redis allocate a bitmap block. So a position is believed only when
//! Kafka says a record has it:
//!
//! - its topic (from `ce-source … #<topic>`, else `KAFKA_TOPIC`) is one counter consumes:
//!   `KAFKA_TOPIC` or `KAFKA_DEAD_LETTER_TOPIC`;
//! - its partition is one of that topic's partitions, and its offset is below the partition's
//!   high watermark. A record is written before it is delivered, so a look at Kafka that
//!   started after the event arrived covers it: a position that the last look does not cover
//!   waits for such a look, and if that one does not cover it either, no record has it and the
//!   event is refused (400) before Redis is asked anything. Partitions added to the topic are
//!   learnt the same way: the first record of a new partition brings a look.
//!
//! Looks are bounded: one at a time, at most one per [`LOOK_INTERVAL`], each shared by every
//! event waiting for it, so a record newer than the last look waits at most that long plus one
//! look, and a sender of forged positions costs Kafka at most one look per interval. A look
//! that failed answers 503 to the events that waited for it (Kafka unavailable: retried).
//!
//! The topic id of the look names the marks, so a topic deleted and created again under the
//! same name is a new topic to the dedup. The last look is trusted for [`MAX_AGE`]; after that,
//! any event brings a new one. A record of a re-created topic that arrives within that time is
//! taken for the old topic's: counted (its mark in the old topic's bitmap) if the old topic had
//! no mark there, and if it had, the "duplicate" is checked again against a look started after
//! the event arrived, so it is never dropped. What is left: such a record, counted in the first
//! second after its topic was re-created, counts again if it is redelivered later.
//!
//! What is not closed: a caller that can reach counter can still claim a position below the
//! watermark whose record has not been delivered yet. Only the KafkaSource dispatcher should
//! reach counter (it is cluster-local, and knative/base/network-policies.yaml admits only
//! Knative's data plane).

use crate::kafka::{Kafka, KafkaError, Topic};
use common::event::Position;
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The shortest time between the starts of two looks.
pub const LOOK_INTERVAL: Duration = Duration::from_millis(20);
/// How long a look is trusted for positions it covers.
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// What Kafka says of a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// A record of the topic with this id has it; `fresh`: by a look that started after the
    /// event arrived.
    Genuine { topic_id: uuid::Uuid, fresh: bool },
    /// No record has it: the reason, for the 400.
    Refused(String),
}

/// The positions of the topics counter consumes, as the last look at Kafka saw them.
pub struct Positions {
    /// `KAFKA_TOPIC`, then `KAFKA_DEAD_LETTER_TOPIC`.
    topics: [String; 2],
    last: Mutex<Arc<Look>>,
    looker: tokio::sync::Mutex<Looker>,
}

/// What one look saw, in the order of [`Positions::topics`] (`None`: Kafka has no such topic).
#[derive(Debug, Default)]
struct Look {
    started: Option<Instant>,
    topics: Vec<Option<Topic>>,
}

struct Looker {
    kafka: Kafka,
    /// When the last look started, and its error if it failed.
    last_attempt: Option<(Instant, Option<Arc<KafkaError>>)>,
}

impl Positions {
    pub fn new(kafka: Kafka, topic: &str, dead_letter_topic: &str) -> Positions {
        Positions {
            topics: [topic.to_owned(), dead_letter_topic.to_owned()],
            last: Mutex::new(Arc::new(Look::default())),
            looker: tokio::sync::Mutex::new(Looker { kafka, last_attempt: None }),
        }
    }

    /// What Kafka says of `position` in `topic`, for an event that arrived at `arrived`: from
    /// the last look when it is recent and covers the position, else from a new one.
    pub async fn check(
        &self,
        topic: &str,
        position: Position,
        arrived: Instant,
    ) -> Result<Checked, Arc<KafkaError>> {
        let Some(index) = self.topics.iter().position(|t| t == topic) else {
            return Ok(Checked::Refused(format!(
                "topic {:?} is not one counter consumes ({} or {})",
                topic.chars().take(64).collect::<String>(),
                self.topics[0],
                self.topics[1]
            )));
        };
        let last = self.last();
        if last.started.is_some_and(|s| s.elapsed() < MAX_AGE)
            && let checked @ Checked::Genuine { .. } =
                last.decide(index, &self.topics[index], position, arrived)
        {
            return Ok(checked);
        }
        self.look_after(index, position, arrived).await
    }

    /// [`Positions::check`] by a look that started after `arrived`.
    pub async fn recheck(
        &self,
        topic: &str,
        position: Position,
        arrived: Instant,
    ) -> Result<Checked, Arc<KafkaError>> {
        match self.topics.iter().position(|t| t == topic) {
            Some(index) => self.look_after(index, position, arrived).await,
            None => self.check(topic, position, arrived).await,
        }
    }

    /// Looks at Kafka now, for `main` to report a cluster it cannot reach before serving.
    pub async fn look(&self) -> Result<(), Arc<KafkaError>> {
        self.look_after(0, Position { partition: 0, offset: 0 }, Instant::now()).await.map(|_| ())
    }

    fn last(&self) -> Arc<Look> {
        self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    async fn look_after(
        &self,
        index: usize,
        position: Position,
        arrived: Instant,
    ) -> Result<Checked, Arc<KafkaError>> {
        let mut looker = self.looker.lock().await;
        if self.last().started.is_none_or(|s| s < arrived) {
            if let Some((started, failed)) = &looker.last_attempt {
                // The look this event waited for failed: so does the event.
                if *started >= arrived
                    && let Some(error) = failed
                {
                    return Err(error.clone());
                }
                tokio::time::sleep_until((*started + LOOK_INTERVAL).into()).await;
            }
            let started = Instant::now();
            let names = [self.topics[0].as_str(), self.topics[1].as_str()];
            match looker.kafka.describe(&names).await {
                Ok(topics) => {
                    looker.last_attempt = Some((started, None));
                    *self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                        Arc::new(Look { started: Some(started), topics });
                }
                Err(error) => {
                    let error = Arc::new(error);
                    looker.last_attempt = Some((started, Some(error.clone())));
                    return Err(error);
                }
            }
        }
        Ok(self.last().decide(index, &self.topics[index], position, arrived))
    }
}

impl Look {
    fn decide(&self, index: usize, name: &str, position: Position, arrived: Instant) -> Checked {
        let Position { partition, offset } = position;
        let Some(topic) = self.topics.get(index).and_then(Option::as_ref) else {
            return Checked::Refused(format!("topic {name} does not exist in Kafka"));
        };
        let partitions = topic.high_watermarks.len();
        match usize::try_from(partition).ok().and_then(|p| topic.high_watermarks.get(p)) {
            None => Checked::Refused(format!(
                "knativekafkapartition {partition} is not a partition of {name} (it has {partitions})"
            )),
            Some(&watermark) if offset >= watermark => Checked::Refused(format!(
                "knativekafkaoffset {offset} is not below the high watermark {watermark} of {name} partition \
                 {partition}: no record has it"
            )),
            Some(_) => {
                Checked::Genuine { topic_id: topic.id, fresh: self.started.is_some_and(|s| s >= arrived) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(started: Instant) -> Look {
        let id = uuid::Uuid::from_u128(7);
        Look { started: Some(started), topics: vec![Some(Topic { id, high_watermarks: vec![10, 0] }), None] }
    }

    #[test]
    fn a_position_is_genuine_only_below_its_partitions_watermark() {
        let now = Instant::now();
        let look = look(now);
        let at = |partition, offset| look.decide(0, "t", Position { partition, offset }, now);
        let genuine = Checked::Genuine { topic_id: uuid::Uuid::from_u128(7), fresh: true };
        assert_eq!(at(0, 0), genuine);
        assert_eq!(at(0, 9), genuine);
        assert!(matches!(at(0, 10), Checked::Refused(why) if why.contains("high watermark 10")));
        assert!(matches!(at(1, 0), Checked::Refused(_)), "an empty partition has no record");
        assert!(matches!(at(2, 0), Checked::Refused(why) if why.contains("it has 2")));
        assert!(matches!(look.decide(1, "dlq", Position { partition: 0, offset: 0 }, now),
            Checked::Refused(why) if why.contains("does not exist")));
    }

    #[test]
    fn a_look_is_fresh_for_events_that_arrived_before_it_started() {
        let before = Instant::now();
        let look = look(Instant::now());
        let position = Position { partition: 0, offset: 1 };
        assert!(matches!(look.decide(0, "t", position, before), Checked::Genuine { fresh: true, .. }));
        let after = Instant::now() + Duration::from_millis(1);
        assert!(matches!(look.decide(0, "t", position, after), Checked::Genuine { fresh: false, .. }));
    }

    #[tokio::test]
    async fn a_topic_not_consumed_is_refused_without_asking_kafka() {
        // Kafka at a closed port: any look would fail.
        let kafka = Kafka::new(&format!("127.0.0.1:{}", testkit::closed_port()), Duration::from_secs(1));
        let positions = Positions::new(kafka, "messages", "messages-dlq");
        let checked = positions.check("other", Position { partition: 0, offset: 0 }, Instant::now()).await;
        assert!(matches!(checked, Ok(Checked::Refused(why)) if why.contains("not one counter consumes")));
    }

    #[tokio::test]
    async fn a_failed_look_answers_every_event_that_waited_for_it_and_looks_are_spaced() {
        let kafka = Kafka::new(&format!("127.0.0.1:{}", testkit::closed_port()), Duration::from_secs(1));
        let positions = Positions::new(kafka, "messages", "messages-dlq");
        let arrived = Instant::now();
        let position = Position { partition: 0, offset: 0 };
        assert!(positions.check("messages", position, arrived).await.is_err());
        let first = positions.looker.lock().await.last_attempt.as_ref().unwrap().0;
        // Arrived before that look started: answered by it, no second look.
        assert!(positions.check("messages", position, arrived).await.is_err());
        assert_eq!(positions.looker.lock().await.last_attempt.as_ref().unwrap().0, first);
        // Arrived after: a new look, at least LOOK_INTERVAL after the first.
        assert!(positions.check("messages", position, Instant::now()).await.is_err());
        let second = positions.looker.lock().await.last_attempt.as_ref().unwrap().0;
        assert!(second >= first + LOOK_INTERVAL, "{:?}", second - first);
    }
}
