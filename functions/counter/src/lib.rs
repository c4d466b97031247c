//! `counter`: a KafkaSource sink. Each CloudEvent (binary or structured mode, our tweet events
//! or KafkaSource-wrapped records) updates the Redis counters exactly once, however often it is
//! delivered ([`Counts`], a [`common::sink::Store`]). 2xx only once Redis holds the update;
//! 400/413 for events that can never succeed (they go to the dead-letter sink), among them
//! positions no Kafka record has ([`positions`]); 503 while Redis or Kafka is unavailable, or
//! Redis may evict counter's keys (they are retried). [`Keyspace`] is the one description of the
//! keys, which the tools read too.

mod config;
mod counts;
pub mod kafka;
pub mod positions;

pub use config::Config;
pub use counts::{CountError, Counted, Counts, Keyspace};
