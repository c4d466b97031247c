//! `make profile`: where the instructions of each of our processes go under load, as a flame
//! graph per process (`target/profile/<process>.svg`), its top functions
//! (`<process>.top.txt`) and the instructions per tweet (`profile.json`).
//!
//! Every process of the pipeline — the runner and the four functions — runs under valgrind's
//! callgrind (through wrapper scripts in `target/profile/bin`, which the runner takes as its
//! binaries), built with symbols (`cargo build --profile profiling`). Callgrind counts
//! instructions, so the figures hold on a machine shared with other work, where CPU time does
//! not; and it records the exact call graph without frame pointers. (`perf record` works here
//! too — `perf_event_paranoid` 2 allows one's own processes — but sampled CPU time on shared
//! cores varies run to run, and Rust release builds carry no frame pointers for its stacks.)
//!
//! The run: the pipeline starts, `--tweets` tweets go through it (closed loop, as the bench
//! drives it) until Redis counted and MongoDB archived every one, and the pipeline stops, so
//! each process writes its profile on exit. A second run with no load measures what starting
//! and stopping costs; instructions per tweet are the difference over the tweets. The flame
//! graphs include start and stop, which the idle run shows on its own.

use crate::{
    bench,
    callgrind::Profile,
    pipeline::{Pipeline, PipelineArgs},
    state::State,
};
use anyhow::{Context, bail};
use runner::Stack;
use serde::Serialize;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Our processes, each profiled.
pub const PROCESSES: [&str; 5] = ["runner", "ingest", "producer", "counter", "archiver"];

#[derive(Debug, Clone, clap::Args)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    /// Tweets sent through the profiled pipeline.
    #[arg(long, default_value_t = 2_000)]
    pub tweets: usize,
    /// Concurrent connections of the load generator.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// The binaries built with symbols (`cargo build --profile profiling`).
    #[arg(long, default_value = "target/profiling")]
    pub binaries: PathBuf,
    /// Where the profiles, flame graphs and profile.json go.
    #[arg(long, default_value = "target/profile")]
    pub out: PathBuf,
    /// Upper bound of each phase, in seconds (callgrind runs code ~50 times slower).
    #[arg(long, default_value_t = 600)]
    pub phase_timeout_s: u64,
    /// Skip the idle run (instructions per tweet then include starting and stopping).
    #[arg(long)]
    pub no_idle_run: bool,
}

#[derive(Debug, Serialize)]
pub struct ProcessProfile {
    /// Instructions executed during the loaded run (start, load, stop).
    pub instructions: u64,
    /// Instructions of the idle run (start and stop only).
    pub idle_instructions: u64,
    pub instructions_per_tweet: f64,
    /// Share of the loaded run's instructions executed in each crate's own code (self cost,
    /// `tools::callgrind::origin`), the largest first; `malloc` is the allocator.
    pub shares: Vec<(String, f64)>,
    pub flame_graph: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub tweets: usize,
    pub processes: BTreeMap<String, ProcessProfile>,
    pub instructions_per_tweet_total: f64,
}

pub async fn run(stack: &Stack, args: ProfileArgs) -> anyhow::Result<Report> {
    let out = std::fs::canonicalize(".")?.join(&args.out);
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin)?;
    let binaries = std::fs::canonicalize(&args.binaries).with_context(|| {
        format!("{} — build it with `cargo build --profile profiling`", args.binaries.display())
    })?;
    for name in PROCESSES {
        wrap(&bin, &binaries.join(name), name, &out)?;
    }

    let idle = if args.no_idle_run {
        BTreeMap::new()
    } else {
        println!("[1/2] idle run under callgrind (start and stop only)…");
        profiled_run(stack, &args, &bin, &out, "idle", 0).await?
    };
    println!("[2/2] {} tweets through the pipeline under callgrind…", args.tweets);
    let loaded = profiled_run(stack, &args, &bin, &out, "load", args.tweets).await?;

    let mut processes = BTreeMap::new();
    for name in PROCESSES {
        let profile = loaded.get(name).with_context(|| format!("no profile of {name}"))?;
        let idle_instructions = idle.get(name).map_or(0, |p| p.total);
        let folded = profile.folded();
        let svg = out.join(format!("{name}.svg"));
        flame_graph(&folded, name, args.tweets, &svg)?;
        let top: Vec<String> = profile
            .top_self(60)
            .into_iter()
            .map(|(f, own, incl)| {
                format!(
                    "{:>6.2} % self {:>6.2} % incl  {f}",
                    100.0 * own as f64 / profile.total as f64,
                    100.0 * incl as f64 / profile.total as f64
                )
            })
            .collect();
        std::fs::write(out.join(format!("{name}.top.txt")), top.join("\n") + "\n")?;
        let shares = profile
            .self_by_origin()
            .into_iter()
            .take(15)
            .map(|(origin, cost)| (origin, cost as f64 / profile.total as f64))
            .collect();
        processes.insert(
            name.to_owned(),
            ProcessProfile {
                instructions: profile.total,
                idle_instructions,
                instructions_per_tweet: profile.total.saturating_sub(idle_instructions) as f64
                    / args.tweets.max(1) as f64,
                shares,
                flame_graph: svg,
            },
        );
    }
    let total = processes.values().map(|p| p.instructions_per_tweet).sum();
    let report = Report { tweets: args.tweets, processes, instructions_per_tweet_total: total };
    println!("Instructions per tweet (loaded − idle run, over {} tweets):", args.tweets);
    for (name, p) in &report.processes {
        let shares: Vec<String> =
            p.shares.iter().take(6).map(|(l, s)| format!("{l} {:.0} %", 100.0 * s)).collect();
        println!("  {name:<9} {:>10.0}   {}", p.instructions_per_tweet, shares.join(", "));
    }
    println!("  {:<9} {total:>10.0}", "total");
    let path = out.join("profile.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("Flame graphs in {}/<process>.svg, figures in {}", out.display(), path.display());
    Ok(report)
}

/// A script that runs `binary` under callgrind, writing `<out>/<name>.<run>.callgrind`
/// (`PROFILE_RUN` names the run).
fn wrap(bin: &Path, binary: &Path, name: &str, out: &Path) -> anyhow::Result<()> {
    if !binary.exists() {
        bail!("{} is missing — build it with `cargo build --profile profiling`", binary.display());
    }
    let script = format!(
        "#!/bin/sh\n# Written by `tools profile`: {name} under callgrind.\n\
         exec valgrind --tool=callgrind --quiet --callgrind-out-file={out}/{name}.\"$PROFILE_RUN\".callgrind \
         --dump-line=no --compress-strings=yes --compress-pos=no {binary} \"$@\"\n",
        out = out.display(),
        binary = binary.display()
    );
    let path = bin.join(name);
    std::fs::write(&path, script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// One run of the pipeline under callgrind with `tweets` tweets; the profiles by process.
async fn profiled_run(
    stack: &Stack,
    args: &ProfileArgs,
    bin: &Path,
    out: &Path,
    run: &str,
    tweets: usize,
) -> anyhow::Result<BTreeMap<String, Profile>> {
    for name in PROCESSES {
        let _ = std::fs::remove_file(out.join(format!("{name}.{run}.callgrind")));
    }
    let run_id = format!("profile-{run}-{}", std::process::id());
    let stack = Stack { run_id: Some(run_id.clone()), ..stack.clone() };
    let pipeline_args = PipelineArgs { bin_dir: Some(bin.to_path_buf()), ..args.pipeline.clone() };
    let env: &[(&str, Option<&str>)] = &[
        ("PROFILE_RUN", Some(run)),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", None),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None),
        ("RUST_LOG", Some("warn")),
    ];
    let pipeline = Pipeline::start_with_env(&stack, &pipeline_args, &[], env)
        .await
        .with_context(|| format!("profile, {run} run: starting the pipeline under callgrind"))?;
    let result = drive(&pipeline, args, tweets).await;
    pipeline.stop().await;
    result.with_context(|| format!("profile, {run} run"))?;
    let mut profiles = BTreeMap::new();
    for name in PROCESSES {
        let path = out.join(format!("{name}.{run}.callgrind"));
        // Callgrind writes the file as the process exits, after the runner saw it go.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !path.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("profile, {run} run: reading {} (did {name} exit?)", path.display()))?;
        profiles.insert(name.to_owned(), Profile::parse(&text).with_context(|| path.display().to_string())?);
    }
    Ok(profiles)
}

/// Sends `tweets` through the pipeline and waits until every one is counted and archived.
async fn drive(pipeline: &Pipeline, args: &ProfileArgs, tweets: usize) -> anyhow::Result<()> {
    if tweets == 0 {
        return Ok(());
    }
    let state = State::new(&pipeline.stack)?;
    let load = bench::closed_loop(
        &pipeline.ingest_url(),
        tweets,
        args.connections,
        Duration::from_secs(args.phase_timeout_s),
    )
    .await
    .context("sending the tweets")?;
    let accepted = load.accepted.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(args.phase_timeout_s);
    loop {
        let counted = state.counted().await?.total;
        let archived = state.archived().await? as i64;
        if counted >= accepted && archived >= accepted {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "waited {} s for {accepted} accepted tweets to be counted and archived: {counted} counted, \
                 {archived} archived",
                args.phase_timeout_s
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut redis = state.redis().await?;
    state.keys.clear(&mut redis).await?;
    state.archive().await?.drop().await?;
    Ok(())
}

fn flame_graph(folded: &[String], name: &str, tweets: usize, svg: &Path) -> anyhow::Result<()> {
    let mut options = inferno::flamegraph::Options::default();
    options.title =
        format!("{name}: instructions under callgrind, {tweets} tweets (start and stop included)");
    options.count_name = "instructions".into();
    let file = std::fs::File::create(svg).with_context(|| format!("creating {}", svg.display()))?;
    inferno::flamegraph::from_lines(
        &mut options,
        folded.iter().map(String::as_str),
        std::io::BufWriter::new(file),
    )
    .with_context(|| format!("drawing {}", svg.display()))?;
    Ok(())
}
