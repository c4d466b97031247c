//! What every Weather Tweets function shares: the tweet contract ([`tweet`]) and its closed list
//! of countries ([`country`]), the CloudEvent that carries a tweet through Kafka ([`event`]),
//! reading it in a sink ([`sink`]), serving with health probes, metrics ([`metrics`]) and bounded
//! draining on SIGTERM ([`server`]), the bounded HTTP labels of metrics and spans ([`http`]) and
//! logging ([`telemetry`]).

pub mod country;
pub mod event;
pub mod http;
pub mod metrics;
pub mod server;
pub mod sink;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tweet;

#[cfg(test)]
mod proptests;
