//! Integration tests of the real local stack (`dev/stack up`): Kafka, Redis and MongoDB (FerretDB).
//!
//! One test binary, as zero-to-production does, so the crate links once. Every test isolates
//! itself (a fresh topic, key prefix or database) and fails, never skips, when its service is down.

mod kafka_stack;
mod mongo_stack;
mod redis_stack;

pub use testkit::{closed_port, env_or, unique, with_cleanup};
