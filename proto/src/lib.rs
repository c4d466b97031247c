//! Generated gRPC types for the `weather.v1` package: the `Producer` service that `ingest` calls,
//! and the metadata a failed `Publish` carries ([`OUTCOME`]).

/// `weather.v1`: tweets and the `Producer` service.
pub mod v1 {
    tonic::include_proto!("weather.v1");
}

/// The metadata key of a failed `Publish`: what is known of the record (see the service's
/// comment in `weather/v1/producer.proto`). Only producer writes it, so a status without it did
/// not come from producer.
pub const OUTCOME: &str = "weather-outcome";
/// [`OUTCOME`]'s value when Kafka does not hold the record.
pub const NOT_STORED: &str = "not-stored";
/// [`OUTCOME`]'s value when the record may be in Kafka.
pub const UNKNOWN: &str = "unknown";
