//! `archiver`: a KafkaSource sink. Each CloudEvent (binary or structured mode, our tweet events
//! or KafkaSource-wrapped records) becomes one document in MongoDB, however often it is
//! delivered ([`Archive`], a [`common::sink::Store`]). 2xx only once MongoDB acknowledged the
//! insert, journaled on a majority (or already had it); 400/413 for events that can never
//! succeed; 503 while MongoDB is unavailable.

mod archive;
mod config;

pub use archive::{Archive, client_options, document, journaled};
pub use config::Config;
