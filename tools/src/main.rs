//! `tools`: demo, bench, fault suite, dead-letter replay, reset and counts of the local pipeline
//! (`tools --help`).

use clap::{Parser, Subcommand};
use runner::Stack;
use tools::{anchor, bench, dashboard, demo, faults, load, profile, project, replay, state::State};

#[derive(Parser)]
#[command(name = "tools", about = "Drives and measures the Weather Tweets pipeline on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    stack: Stack,
}

#[derive(Subcommand)]
enum Command {
    /// Reset, run a Locust burst through the pipeline and print the audited summary.
    Demo(demo::DemoArgs),
    /// Serve the live dashboard and the trace view on loopback (`make dashboard`).
    Dashboard(dashboard::DashboardArgs),
    /// Measure the raw Kafka producer, ingest → Kafka and the whole pipeline (`make bench`).
    Bench(bench::BenchArgs),
    /// Profile the runner and the functions under load with callgrind: flame graphs and
    /// instructions per tweet (`make profile`).
    Profile(profile::ProfileArgs),
    /// Project what scale-to-zero saves on a cluster of N tenants from the measured costs:
    /// target/project/project.json (`make project`).
    Project(Box<project::ProjectArgs>),
    /// Run the fault suite against the real local stack and print its table (`make faults`).
    Faults(faults::FaultArgs),
    /// Deliver the dead letters again to the sinks they name, of those given, keeping their
    /// identity; exits 1 unless every letter was applied.
    Replay(replay::ReplayArgs),
    /// Delete and re-create the run's topics, clear its counters and drop its archive.
    Reset,
    /// Print the run's counts, archive size, records in Kafka and consumer lag as JSON.
    Counts,
    /// The bench's anchor: a minimal hyper server on 127.0.0.1 (`make bench` starts it).
    #[command(hide = true)]
    Anchor {
        #[arg(long)]
        port: u16,
    },
    /// Run Locust's burst shape against a URL, writing its statistics into a folder.
    Load {
        /// The ingest URL.
        #[arg(long)]
        host: String,
        /// Folder for locust.json, locust.log and (with --csv) the CSV files.
        #[arg(long)]
        out: std::path::PathBuf,
        #[command(flatten)]
        load: load::LoadArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo(args) => {
            if !demo::run(&cli.stack, args).await?.ok() {
                std::process::exit(1);
            }
        }
        Command::Dashboard(args) => dashboard::run(&cli.stack, args).await?,
        Command::Bench(args) => {
            bench::run(&cli.stack, args).await?;
        }
        Command::Anchor { port } => {
            anchor::serve(tokio::net::TcpListener::bind(("127.0.0.1", port)).await?).await?;
        }
        Command::Profile(args) => {
            profile::run(&cli.stack, args).await?;
        }
        Command::Project(args) => {
            let report = project::run(&args)?;
            project::write(&args, &report)?;
        }
        Command::Faults(args) => {
            let rows = faults::run(&cli.stack, &args).await?;
            if !rows.iter().all(faults::Row::ok) {
                eprintln!(
                    "FAILED: a scenario lost or double-counted tweets, or a check failed (see the table)"
                );
                std::process::exit(1);
            }
        }
        Command::Replay(args) => {
            let topic = match &args.dead_letter_topic {
                Some(topic) => topic.clone(),
                None => State::new(&cli.stack)?.dead_letters,
            };
            let replayed = replay::run(&cli.stack.kafka_brokers, &topic, &args).await?;
            println!("{}", serde_json::to_string(&replayed)?);
            if !replayed.ok() {
                eprintln!(
                    "FAILED: letters not applied (forbidden, refused, failed or unreadable; see --out)"
                );
                std::process::exit(1);
            }
        }
        Command::Reset => State::new(&cli.stack)?.reset().await?,
        Command::Counts => {
            let snapshot = State::new(&cli.stack)?.snapshot().await?;
            println!("{}", serde_json::to_string(&snapshot)?);
        }
        Command::Load { host, out, load } => {
            let (stats, _ledger) = load.spawn(&host, &out)?.finish().await?;
            println!("{}", serde_json::to_string(&stats)?);
        }
    }
    Ok(())
}
