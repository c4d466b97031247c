//! What every Weather Tweets function shares: the tweet contract ([`tweet`]) and its closed list
//! of countries ([`country`]), the CloudEvent that carries a tweet through Kafka ([`event`]),
//! reading it in a sink ([`sink`]), serving with health probes, metrics ([`metrics`]), bounded
//! draining on SIGTERM and limits on slow or many clients ([`server`]), the bounded HTTP labels of
//! metrics and spans ([`http`]), logging ([`telemetry`]) and connection URLs that keep their
//! credentials out of logs ([`secret`]).

/// The allocator of every binary that links this crate (the functions, the runner, the tools):
/// `make profile` found glibc's malloc and free at ~29 % of the instructions of each process
/// (many small, short-lived allocations per request on several threads); mimalloc's
/// thread-local free lists cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod country;
pub mod event;
pub mod http;
pub mod metrics;
pub mod secret;
pub mod server;
pub mod sink;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tweet;

#[cfg(test)]
mod proptests;
