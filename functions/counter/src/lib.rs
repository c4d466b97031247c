//! `counter`: a KafkaSource sink. Each CloudEvent (binary or structured mode, our tweet events
//! or KafkaSource-wrapped records) updates the Redis counters exactly once, however often it is
//! delivered ([`Counts`], a [`common::sink::Store`]). 2xx only once Redis holds the update;
//! 400/413 for events that can never succeed (they go to the dead-letter sink); 503 while Redis
//! is unavailable (they are retried). [`Keyspace`] is the one description of the keys, which
//! the tools read too.

mod config;
mod counts;

pub use config::Config;
pub use counts::{Counted, Counts, Keyspace};
