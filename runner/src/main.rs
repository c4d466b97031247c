//! `runner up`: Knative's part on one machine — the functions of the `knative/base` Services
//! and their KafkaSources — until SIGTERM or Ctrl-C. The tools that drive and measure the
//! pipeline (demo, bench, faults, reset) are the `tools` binary.

use clap::{Parser, Subcommand};
use runner::{Options, Runner};

#[derive(Parser)]
#[command(
    name = "runner",
    about = "Plays Knative's part on one machine: runs the functions and the KafkaSources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the functions and the KafkaSources until SIGTERM or Ctrl-C.
    Up(Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = common::telemetry::init("runner");
    common::metrics::init("runner");
    let cli = Cli::parse();
    let Command::Up(options) = cli.command;
    let runner = Runner::start(options).await?;
    let mut mode = runner.options.mode.to_string();
    if let Some(idle) = runner.policy.idle {
        mode += &format!(", idle period {} ms", idle.as_millis());
    }
    let urls: Vec<String> = runner
        .functions
        .all()
        .iter()
        .map(|f| {
            let name = &f.service.name;
            let s = runner.scaling(name).unwrap_or_default();
            let max = if s.max_scale == 0 { "∞".to_owned() } else { s.max_scale.to_string() };
            format!("{name} on :{} ({}…{max} replicas, target {})", f.port, s.min_scale, s.target)
        })
        .collect();
    println!("Pipeline up ({mode}): {}; Ctrl-C stops it.", urls.join(", "));
    common::server::shutdown_signal().await;
    runner.stop().await;
    Ok(())
}
