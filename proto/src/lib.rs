//! Generated gRPC types for the `weather.v1` package: the `Producer` service that `ingest` calls.

/// `weather.v1`: tweets and the `Producer` service.
pub mod v1 {
    tonic::include_proto!("weather.v1");
}
