//! `runner`: `up` runs the pipeline until Ctrl-C, `demo` is the README's first command, `bench`
//! measures, `reset` empties the local topics, counters and archive.

use clap::{Parser, Subcommand};
use runner::{Options, Runner, bench, demo};

#[derive(Parser)]
#[command(
    name = "runner",
    about = "Plays Knative's part on one machine: runs the functions and the KafkaSources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    options: Options,
}

#[derive(Subcommand)]
enum Command {
    /// Run the functions and the KafkaSources until SIGTERM or Ctrl-C.
    Up,
    /// Reset, run a Locust burst through the pipeline and print the summary.
    Demo(demo::DemoArgs),
    /// Measure the raw Kafka producer, ingest → Kafka and the whole pipeline (`make bench`).
    Bench(bench::BenchArgs),
    /// Delete and re-create the topics, clear the counters and drop the archive.
    Reset,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = common::telemetry::init("runner");
    let cli = Cli::parse();
    match cli.command {
        Command::Up => {
            let runner = Runner::start(cli.options).await?;
            let mode = match runner.idle_period {
                Some(idle) => format!("{}, idle period {} ms", runner.options.mode, idle.as_millis()),
                None => runner.options.mode.to_string(),
            };
            println!(
                "Pipeline up ({mode}): POST tweets to {}/input; Ctrl-C stops it.",
                runner.functions.url("ingest")
            );
            common::server::shutdown_signal().await;
            runner.stop().await;
        }
        Command::Demo(args) => {
            if !demo::run(cli.options, args).await?.ok() {
                std::process::exit(1);
            }
        }
        Command::Bench(args) => {
            bench::run(cli.options, args).await?;
        }
        Command::Reset => demo::reset(&cli.options).await?,
    }
    Ok(())
}
