//! `make faults`: "nothing lost, nothing counted twice", shown by faults of the real processes.
//! Each row — a [`Scenario`] in one mode of the runner, keyless or keyed — runs the pipeline
//! (`runner up` as a child) on a run of its own (topics, consumer groups, keys, database),
//! posts tweets as Locust does (no `Idempotency-Key`; a retry after a 503 or an unknown outcome
//! is a new request) or, in keyed rows, with one key per tweet; injects its fault the moment
//! the runner reports deliveries in flight (else the row fails as "fault missed"); lets the
//! pipeline recover, waits until both KafkaSources committed every record and audits tweet by
//! tweet ([`crate::audit`]). Checks read the runner's events and metrics, never a log. The
//! table goes to the terminal and to `<out>/faults.json`; any difference fails the command.
//!
//! The stack's services are stopped through their pid files ([`services`]); the suite must
//! run alone on the stack (nothing else may use Redis, FerretDB or Kafka meanwhile).
//! `--short` is the version `make test` runs: fewer tweets, outages just longer than one
//! delivery attempt's timeout (10 s).

mod scenarios;
mod services;
mod trial;

use crate::{audit::Audit, pipeline::PipelineArgs};
use runner::{Mode, Stack};
pub use scenarios::Scenario;
use serde::Serialize;
use services::Services;
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};
use trial::Trial;

#[derive(Debug, Clone, clap::Args)]
pub struct FaultArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// The scenarios to run, each in all its rows (every scenario when none is given).
    #[arg(value_enum)]
    pub scenarios: Vec<Scenario>,
    /// Only the rows in this mode of the runner.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// The short version (for `make test`): fewer tweets, shorter outages.
    #[arg(long)]
    pub short: bool,
    /// Where faults.json (and the replays' logs) go.
    #[arg(long, default_value = "target/faults")]
    pub out: PathBuf,
    /// The stack script, to start a service again after a fault.
    #[arg(long, env = "STACK_SCRIPT", default_value = "dev/stack")]
    pub stack_script: PathBuf,
    /// The stack's folder, for the services' pid files.
    #[arg(long, env = "STACK_DIR", default_value = ".stack")]
    pub stack_dir: PathBuf,
}

impl FaultArgs {
    /// Tweets per row, and how long a store stays down: longer than one delivery attempt's
    /// timeout (10 s).
    fn size(&self) -> (usize, Duration) {
        if self.short { (120, Duration::from_secs(12)) } else { (1_000, Duration::from_secs(30)) }
    }

    /// The rows to run, in order.
    pub fn rows(&self) -> Vec<Variant> {
        let chosen: Vec<Scenario> = if self.scenarios.is_empty() {
            <Scenario as clap::ValueEnum>::value_variants().to_vec()
        } else {
            self.scenarios.clone()
        };
        let rows = chosen.into_iter().flat_map(Scenario::variants);
        rows.filter(|v| self.mode.is_none_or(|m| m == v.mode)).collect()
    }
}

/// A row of the table: a scenario, the runner's mode, and whether the client sends keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub scenario: Scenario,
    pub mode: Mode,
    /// Every tweet carries an `Idempotency-Key`, kept across its retries.
    pub keyed: bool,
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = if self.keyed { "keyed" } else { "keyless" };
        write!(f, "{}-{}-{keys}", self.scenario, self.mode)
    }
}

/// One row's result.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: Scenario,
    pub mode: String,
    pub keyed: bool,
    #[serde(flatten)]
    pub audit: Audit,
    /// Dead letters the scenario replayed.
    pub replayed: u64,
    /// Deliveries in flight to the sinks the fault aimed at when it landed (no fault: none).
    pub in_flight_at_fault: Option<u64>,
    pub seconds: f64,
    /// Scenario-specific checks that failed (empty when all held).
    pub failed_checks: Vec<String>,
}

impl Row {
    /// A row that could not be audited: `error` says why.
    fn broken(variant: Variant, error: String) -> Row {
        Row {
            scenario: variant.scenario,
            mode: variant.mode.to_string(),
            keyed: variant.keyed,
            audit: Audit::default(),
            replayed: 0,
            in_flight_at_fault: None,
            seconds: 0.0,
            failed_checks: vec![error],
        }
    }

    pub fn ok(&self) -> bool {
        self.audit.exact() && self.failed_checks.is_empty() && self.audit.accepted > 0
    }
}

pub async fn run(stack: &Stack, args: &FaultArgs) -> anyhow::Result<Vec<Row>> {
    std::fs::create_dir_all(&args.out)?;
    let variants = args.rows();
    anyhow::ensure!(!variants.is_empty(), "no row of {:?} runs in mode {:?}", args.scenarios, args.mode);
    let services = Services { script: args.stack_script.clone(), dir: args.stack_dir.clone() };
    let started = Instant::now();
    let mut rows = Vec::new();
    for (i, variant) in variants.iter().enumerate() {
        println!("[{}/{}] {variant}…", i + 1, variants.len());
        let began = Instant::now();
        let row = match row(stack, args, &services, *variant).await {
            Ok(row) => row,
            Err(e) => {
                // The row failed to run (a service that did not come back, a timeout): it is a
                // failed row, and the stack is made whole again for the next one.
                services.heal().await;
                Row::broken(*variant, format!("the row did not run to its end: {e:#}"))
            }
        };
        let row = Row { seconds: began.elapsed().as_secs_f64(), ..row };
        print_row(&row);
        rows.push(row);
    }
    print_table(&rows);
    let path = args.out.join("faults.json");
    std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
    println!(
        "{} rows in {:.0} s; table written to {}",
        rows.len(),
        started.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(rows)
}

async fn row(stack: &Stack, args: &FaultArgs, services: &Services, variant: Variant) -> anyhow::Result<Row> {
    let out = args.out.join(variant.to_string());
    let t = Trial::start(stack, args, services.clone(), variant, out).await?;
    variant.scenario.run(&t).await?;
    t.finish().await
}

fn print_row(row: &Row) {
    let a = &row.audit;
    println!(
        "      {} — accepted {}, unknown {}, in Kafka {}, counted {}, archived {}, missing {}, extra {}{} ({:.0} s)",
        if row.ok() { "ok" } else { "FAILED" },
        a.accepted,
        a.unknown,
        a.in_kafka,
        a.counted,
        a.archived,
        a.missing(),
        a.extra(),
        row.in_flight_at_fault
            .map_or(String::new(), |n| format!("; fault landed with {n} deliveries in flight")),
        row.seconds
    );
    for line in a.differences().iter().chain(&row.failed_checks) {
        println!("        {line}");
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<33} {:<13} {:<7} {:>6} {:>8} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>5}  result",
        "scenario",
        "mode",
        "keys",
        "sent",
        "accepted",
        "unknown",
        "in Kafka",
        "counted",
        "archived",
        "dead-let",
        "replayed",
        "missing",
        "extra",
    );
    for r in rows {
        let a = &r.audit;
        println!(
            "{:<33} {:<13} {:<7} {:>6} {:>8} {:>7} {:>8} {:>7} {:>8} {:>8} {:>8} {:>7} {:>5}  {}",
            r.scenario.to_string(),
            r.mode,
            if r.keyed { "keyed" } else { "keyless" },
            a.requests,
            a.accepted,
            a.unknown,
            a.in_kafka,
            a.counted,
            a.archived,
            a.dead_lettered,
            r.replayed,
            a.missing(),
            a.extra(),
            if r.ok() { "ok" } else { "FAILED" }
        );
    }
}
