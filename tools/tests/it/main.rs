//! The tools against the real stack: the runner as a child process
//! ([`tools::pipeline::Pipeline`]), its state read back ([`tools::state::State`]). `audit.rs`
//! audits a run tweet by tweet; `traces.rs` follows tweets' traces through Jaeger.

mod audit;
mod replay;
mod secrets;
mod traces;

use runner::Stack;
use std::path::PathBuf;
use tools::pipeline::PipelineArgs;

pub use testkit::tweet;

/// A fresh run of the pipeline's state: its own topics, consumer groups, keys and database.
pub fn stack() -> Stack {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    Stack {
        manifests: root.join("knative/base"),
        kafka_brokers: testkit::kafka_brokers(),
        redis_url: testkit::redis_url().into(),
        mongodb_uri: testkit::mongodb_uri().into(),
        run_id: Some(testkit::unique("t")),
    }
}

/// The runner and functions of this build, on ports the OS chooses, logging under
/// target/tools-tests.
pub fn pipeline_args() -> PipelineArgs {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    PipelineArgs {
        base_port: 0,
        bin_dir: Some(PathBuf::from(env!("CARGO_BIN_EXE_tools")).parent().unwrap().to_path_buf()),
        log_dir: root.join("target/tools-tests"),
    }
}
