//! The tools against the real stack: the runner as a child process ([`Pipeline`]), audited by
//! [`State`]. `traces.rs` follows tweets' traces through Jaeger.

mod traces;

use runner::Stack;
use std::path::PathBuf;
use tools::pipeline::PipelineArgs;

pub use tools::faults::tweet;

/// A fresh run of the pipeline's state: its own topics, consumer groups, keys and database.
pub fn stack() -> Stack {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    Stack {
        manifests: root.join("knative/base"),
        kafka_brokers: testkit::kafka_brokers(),
        redis_url: testkit::redis_url(),
        mongodb_uri: testkit::mongodb_uri(),
        run_id: Some(testkit::unique("t")),
    }
}

/// The runner and functions of this build, on free ports, logging under target/tools-tests.
pub fn pipeline_args() -> PipelineArgs {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    PipelineArgs {
        base_port: testkit::free_ports(5), // four functions and the runner's /metrics
        bin_dir: Some(PathBuf::from(env!("CARGO_BIN_EXE_tools")).parent().unwrap().to_path_buf()),
        log_dir: root.join("target/tools-tests"),
    }
}
