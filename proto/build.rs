//! Compiles `weather/v1/*.proto` with tonic/prost; `protoc` comes from Debian's protobuf-compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["weather/v1/producer.proto"], &["."])?;
    Ok(())
}
