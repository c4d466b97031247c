//! `tools project` (`make project`): what scale-to-zero saves on a cluster of N tenants, each a
//! copy of the pipeline with bursty traffic, projected from the project's measured costs
//! ([`inputs`]). Per second, each tenant's functions scale as Knative's autoscaler decides
//! ([`replicas`], the runner's `Decider`), their pods are bin-packed on nodes that a cluster
//! autoscaler adds and removes ([`cluster`]), and every node draws power from its CPU use
//! ([`power`]). Writes `project.json` (read by `plot.py` beside the committed figures) with
//! every input's source, the main scenario of one day, a Monte Carlo over tenant phases, a
//! sweep of gap length × tenants, and the check against measured runs ([`validate`]).
//! docs/projection.md reads the result.

pub mod cluster;
pub mod inputs;
pub mod power;
pub mod replicas;
pub mod simulate;
pub mod traffic;
pub mod validate;

use cluster::Strategy;
use inputs::{Inputs, Sources};
use power::Curve;
use serde::Serialize;
use simulate::{Mode, Outcome, Run};
use std::{path::PathBuf, sync::Mutex};
use traffic::{Bursts, Gaps};

/// P_idle / P_max ratios every result is also given for.
pub const IDLE_RATIOS: [f64; 5] = [0.2, 0.3, 0.4, 0.5, 0.6];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GapKind {
    Fixed,
    Exponential,
    /// Heavy-tailed, shaped like the Azure Functions 2019 trace (see `traffic`).
    Lognormal,
}

#[derive(Debug, clap::Args)]
pub struct ProjectArgs {
    #[command(flatten)]
    pub sources: Sources,
    /// Tenants of the main scenario, each a copy of the pipeline.
    #[arg(long, default_value_t = 32)]
    pub tenants: usize,
    /// Length of the main scenario (the day plot), hours.
    #[arg(long, default_value_t = 24.0)]
    pub hours: f64,
    /// Seconds per burst.
    #[arg(long, default_value_t = 20.0)]
    pub burst_s: f64,
    /// Tweets per second per tenant during a burst.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How the gaps between a tenant's bursts are drawn.
    #[arg(long, value_enum, default_value_t = GapKind::Lognormal)]
    pub gaps: GapKind,
    /// Mean gap of the main scenario, seconds.
    #[arg(long, default_value_t = 600.0)]
    pub gap_s: f64,
    /// Coefficient of variation of lognormal gaps.
    #[arg(long, default_value_t = 2.0)]
    pub gap_cv: f64,
    /// How the scheduler places pods.
    #[arg(long, value_enum, default_value_t = Strategy::MostAllocated)]
    pub strategy: Strategy,
    /// Node power from the 11-point curve instead of the linear model.
    #[arg(long)]
    pub curve_points: bool,
    /// Monte Carlo runs over tenant phases and gaps (the 90 % band).
    #[arg(long, default_value_t = 20)]
    pub seeds: u64,
    /// Length of each Monte Carlo run and grid cell, hours.
    #[arg(long, default_value_t = 6.0)]
    pub sweep_hours: f64,
    /// Mean gaps of the sweep, seconds.
    #[arg(long, value_delimiter = ',', default_value = "30,60,120,300,600,1200,2400,3600")]
    pub grid_gaps_s: Vec<f64>,
    /// Tenant counts of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    pub grid_tenants: Vec<usize>,
    /// Runs per cell of the sweep (different phases).
    #[arg(long, default_value_t = 2)]
    pub grid_seeds: u64,
    /// A measured run (energy report) to check the projection against at one tenant.
    #[arg(long, default_value = "loadtest/results/2026-12-02-local/report.json")]
    pub check_report: PathBuf,
    /// Run N copies of the energy experiment side by side on this machine first (separate run
    /// ids, ports, folders) and check against each: the lead's benchmark, about 7 minutes with
    /// the stack up and nothing else running.
    #[arg(long)]
    pub validate: Option<usize>,
    /// Python of the energy experiment (`--validate`).
    #[arg(long, default_value = ".stack/venv/bin/python")]
    pub python: PathBuf,
    /// Folder for project.json.
    #[arg(long, default_value = "target/project")]
    pub out: PathBuf,
}

impl ProjectArgs {
    fn bursts(&self, mean_s: f64) -> Bursts {
        let gaps = match self.gaps {
            GapKind::Fixed => Gaps::Fixed { mean_s },
            GapKind::Exponential => Gaps::Exponential { mean_s },
            GapKind::Lognormal => Gaps::Lognormal { mean_s, cv: self.gap_cv },
        };
        Bursts { burst_s: self.burst_s, rate: self.rate, gaps }
    }
}

/// Both modes of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    pub always_on: Outcome,
    pub scale_to_zero: Outcome,
}

impl Pair {
    /// (E_stz − E_on) / E_on in %, for curve `i`: negative when scale-to-zero saves.
    pub fn delta_percent(&self, i: usize) -> f64 {
        (self.scale_to_zero.energy_j[i] / self.always_on.energy_j[i] - 1.0) * 100.0
    }
}

/// The tenants' loads of one scenario.
fn tenants(bursts: &Bursts, n: usize, seconds: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..n).map(|_| bursts.series(seconds, &mut rng)).collect()
}

fn pair(
    inputs: &Inputs,
    strategy: Strategy,
    curves: &[Curve],
    load: &[Vec<f64>],
    minutes: bool,
) -> anyhow::Result<Pair> {
    let run = Run { inputs, strategy, curves, tenants: load, zero_rule: None, minutes };
    Ok(Pair { always_on: run.simulate(Mode::AlwaysOn)?, scale_to_zero: run.simulate(Mode::ScaleToZero)? })
}

/// Runs `jobs` on every core, keeping their order.
fn parallel<T: Send, R: Send>(
    jobs: Vec<T>,
    f: impl Fn(T) -> anyhow::Result<R> + Sync,
) -> anyhow::Result<Vec<R>> {
    let n = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new((0..n).map(|_| None).collect::<Vec<Option<anyhow::Result<R>>>>());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let Some((i, job)) = queue.lock().expect("queue").pop() else { break };
                    let r = f(job);
                    results.lock().expect("results")[i] = Some(r);
                }
            });
        }
    });
    results.into_inner().expect("results").into_iter().map(|r| r.expect("every job ran")).collect()
}

/// The check ΔE ≈ Δnode-hours·P_idle − starts·e_start − ΔE_platform (+ the idle replicas'
/// CPU), each term in joules of saving (E_always-on − E_scale-to-zero).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub simulated_saving_j: f64,
    pub node_hours_saved: f64,
    pub p_idle_w: f64,
    pub nodes_j: f64,
    pub extra_starts: f64,
    pub e_start_j: f64,
    pub starts_j: f64,
    pub idle_replicas_j: f64,
    pub platform_j: f64,
    pub sum_j: f64,
}

impl Check {
    pub fn of(pair: &Pair, curve: &Curve, vcpus: f64, pue: f64) -> Check {
        let (on, zero) = (&pair.always_on, &pair.scale_to_zero);
        let p_idle_w = curve.idle_w();
        let per_cpu_s = curve.dynamic_w() / vcpus * pue;
        let node_hours_saved = (on.node_seconds - zero.node_seconds) / 3600.0;
        let nodes_j = (on.node_seconds - zero.node_seconds) * p_idle_w * pue;
        let extra_starts = zero.starts as f64 - on.starts as f64;
        let e_start_j = if zero.starts > 0 { zero.start_cpu_s / zero.starts as f64 * per_cpu_s } else { 0.0 };
        let starts_j = (on.start_cpu_s - zero.start_cpu_s) * per_cpu_s;
        let idle_replicas_j = (on.idle_cpu_s - zero.idle_cpu_s) * per_cpu_s;
        let platform_j =
            (on.platform_cpu_s + on.tweet_cpu_s - zero.platform_cpu_s - zero.tweet_cpu_s) * per_cpu_s;
        Check {
            simulated_saving_j: on.energy_j[0] - zero.energy_j[0],
            node_hours_saved,
            p_idle_w,
            nodes_j,
            extra_starts,
            e_start_j,
            starts_j,
            idle_replicas_j,
            platform_j,
            sum_j: nodes_j + starts_j + idle_replicas_j + platform_j,
        }
    }
}

/// The main scenario's figures per mode.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub energy_kwh: [f64; 2],
    pub delta_e_percent: f64,
    pub node_hours: [f64; 2],
    pub max_nodes: [usize; 2],
    pub replica_hours: [f64; 2],
    pub j_per_1000_tweets: [f64; 2],
    pub starts: [u64; 2],
    pub starts_from_zero: u64,
    pub cold_requests: f64,
    pub cold_share: f64,
    /// Latency a cold start adds (the measured one; a Kubernetes pod start is longer).
    pub cold_start_ms: f64,
    /// What cold starts add to the p99 latency: requests waiting up to a start's latency.
    pub p99_added_ms: f64,
    /// ΔE % at each P_idle / P_max of [`IDLE_RATIOS`].
    pub delta_e_percent_by_idle_ratio: Vec<(f64, f64)>,
}

fn summary(pair: &Pair, cold_start_ms: f64) -> Summary {
    let (on, zero) = (&pair.always_on, &pair.scale_to_zero);
    let cold_share = zero.cold_requests / zero.tweets.max(1.0);
    let p99_added_ms = if cold_share > 0.01 { cold_start_ms * (1.0 - 0.01 / cold_share) } else { 0.0 };
    Summary {
        energy_kwh: [on.energy_j[0] / 3.6e6, zero.energy_j[0] / 3.6e6],
        delta_e_percent: pair.delta_percent(0),
        node_hours: [on.node_seconds / 3600.0, zero.node_seconds / 3600.0],
        max_nodes: [on.max_nodes, zero.max_nodes],
        replica_hours: [on.replica_seconds / 3600.0, zero.replica_seconds / 3600.0],
        j_per_1000_tweets: [on.energy_j[0] / on.tweets * 1000.0, zero.energy_j[0] / zero.tweets * 1000.0],
        starts: [on.starts, zero.starts],
        starts_from_zero: zero.from_zero,
        cold_requests: zero.cold_requests,
        cold_share,
        cold_start_ms,
        p99_added_ms,
        delta_e_percent_by_idle_ratio: IDLE_RATIOS
            .iter()
            .enumerate()
            .map(|(i, r)| (*r, pair.delta_percent(i + 1)))
            .collect(),
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

#[derive(Debug, Clone, Serialize)]
pub struct Band {
    pub runs: usize,
    pub p5: f64,
    pub p50: f64,
    pub p95: f64,
}

impl Band {
    fn of(mut values: Vec<f64>) -> Band {
        values.sort_by(f64::total_cmp);
        Band {
            runs: values.len(),
            p5: percentile(&values, 0.05),
            p50: percentile(&values, 0.5),
            p95: percentile(&values, 0.95),
        }
    }
}

/// One cell of the sweep: ΔE % of each run at each idle ratio (index 0 the main curve).
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub gap_s: f64,
    pub tenants: usize,
    /// Mean over the runs, per curve: the main one, then [`IDLE_RATIOS`].
    pub delta_e_percent: Vec<f64>,
    /// Lowest and highest over the runs and the idle ratios.
    pub low: f64,
    pub high: f64,
    pub node_hours_saved_per_hour: f64,
}

/// Where ΔE % crosses zero along the gaps, for one tenant count (log-interpolated).
#[derive(Debug, Clone, Serialize)]
pub struct BreakEven {
    pub tenants: usize,
    /// The mean gap above which scale-to-zero saves (main curve), if within the sweep.
    pub gap_s: Option<f64>,
    /// The same from the most favourable and least favourable runs and idle ratios.
    pub gap_s_low: Option<f64>,
    pub gap_s_high: Option<f64>,
}

fn crossing(gaps: &[f64], values: &[f64]) -> Option<f64> {
    if values.first().is_some_and(|v| *v < 0.0) {
        return Some(gaps[0]);
    }
    gaps.windows(2).zip(values.windows(2)).find(|(_, v)| v[0] >= 0.0 && v[1] < 0.0).map(|(g, v)| {
        let f = v[0] / (v[0] - v[1]);
        (g[0].ln() + f * (g[1].ln() - g[0].ln())).exp()
    })
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub inputs: Inputs,
    pub scenario: serde_json::Value,
    pub summary: Summary,
    pub check: Check,
    pub least_allocated_delta_e_percent: f64,
    pub monte_carlo: Band,
    pub grid_idle_ratios: Vec<f64>,
    pub grid: Vec<Cell>,
    pub break_even: Vec<BreakEven>,
    pub validation: Vec<validate::Row>,
    pub main: Pair,
    pub elapsed_s: f64,
}

pub fn run(args: &ProjectArgs) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let inputs = args.sources.read()?;
    let m = &inputs.measured;
    let (vcpus, pue) = (m.node.shape.vcpus, m.power.pue.value);
    let mut curves = vec![inputs.curve(!args.curve_points, None)];
    curves.extend(IDLE_RATIOS.iter().map(|r| inputs.curve(!args.curve_points, Some(*r))));

    let mut reports = vec![args.check_report.clone()];
    if let Some(copies) = args.validate {
        println!("Running {copies} energy experiments side by side (about 7 minutes)…");
        reports = validate::side_by_side(copies, &args.python, &args.out.join("validate"), &[])?;
    }
    let mut validation = Vec::new();
    for report in &reports {
        validation.extend(validate::report(&inputs, report)?);
    }

    let bursts = args.bursts(args.gap_s);
    let day = (args.hours * 3600.0) as usize;
    let sweep = (args.sweep_hours * 3600.0) as usize;
    let load = tenants(&bursts, args.tenants, day, 0);
    let main = pair(&inputs, args.strategy, &curves, &load, true)?;
    let check = Check::of(&main, &curves[0], vcpus, pue);
    let summary = summary(&main, m.cold_start_ms.value);

    let other = match args.strategy {
        Strategy::MostAllocated => Strategy::LeastAllocated,
        Strategy::LeastAllocated => Strategy::MostAllocated,
    };
    let mc_jobs: Vec<(u64, Strategy)> =
        (1..=args.seeds).map(|s| (s, args.strategy)).chain([(0, other)]).collect();
    let mut mc = parallel(mc_jobs, |(seed, strategy)| {
        let load = tenants(&bursts, args.tenants, sweep, seed);
        Ok(pair(&inputs, strategy, &curves[..1], &load, false)?.delta_percent(0))
    })?;
    let least_allocated = mc.pop().expect("the other strategy's run");
    let monte_carlo = Band::of(mc);

    let mut grid_jobs = Vec::new();
    for &gap in &args.grid_gaps_s {
        for &n in &args.grid_tenants {
            grid_jobs.push((gap, n));
        }
    }
    let grid = parallel(grid_jobs, |(gap, n)| {
        let bursts = args.bursts(gap);
        let mut runs = Vec::new();
        for seed in 0..args.grid_seeds {
            let load = tenants(&bursts, n, sweep, 1000 + seed);
            runs.push(pair(&inputs, args.strategy, &curves, &load, false)?);
        }
        let mean = |i: usize| runs.iter().map(|p| p.delta_percent(i)).sum::<f64>() / runs.len() as f64;
        let all = runs.iter().flat_map(|p| (0..curves.len()).map(|i| p.delta_percent(i)));
        let (low, high) = all.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let saved = runs.iter().map(|p| p.always_on.node_seconds - p.scale_to_zero.node_seconds).sum::<f64>()
            / runs.len() as f64
            / sweep as f64;
        Ok(Cell {
            gap_s: gap,
            tenants: n,
            delta_e_percent: (0..curves.len()).map(mean).collect(),
            low,
            high,
            node_hours_saved_per_hour: saved,
        })
    })?;
    let break_even = args
        .grid_tenants
        .iter()
        .map(|&n| {
            let cells: Vec<&Cell> = grid.iter().filter(|c| c.tenants == n).collect();
            let gaps: Vec<f64> = cells.iter().map(|c| c.gap_s).collect();
            let series = |f: fn(&Cell) -> f64| cells.iter().map(|c| f(c)).collect::<Vec<f64>>();
            BreakEven {
                tenants: n,
                gap_s: crossing(&gaps, &series(|c| c.delta_e_percent[0])),
                gap_s_low: crossing(&gaps, &series(|c| c.low)),
                gap_s_high: crossing(&gaps, &series(|c| c.high)),
            }
        })
        .collect();

    let scenario = serde_json::json!({
        "tenants": args.tenants,
        "hours": args.hours,
        "bursts": bursts,
        "strategy": args.strategy,
        "curve": curves[0],
        "sweep_hours": args.sweep_hours,
        "seeds": args.seeds,
        "grid_seeds": args.grid_seeds,
    });
    Ok(Report {
        inputs,
        scenario,
        summary,
        check,
        least_allocated_delta_e_percent: least_allocated,
        monte_carlo,
        grid_idle_ratios: IDLE_RATIOS.to_vec(),
        grid,
        break_even,
        validation,
        main,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Writes project.json and prints the figures.
pub fn write(args: &ProjectArgs, report: &Report) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("project.json");
    std::fs::write(&path, serde_json::to_string_pretty(report)?)?;
    let s = &report.summary;
    let c = &report.check;
    println!("Inputs: {}", report.inputs.files.join(", "));
    println!(
        "{} tenants, {} h, bursts of {} s at {} tweets/s, gaps {}, {}",
        args.tenants,
        args.hours,
        args.burst_s,
        args.rate,
        report.scenario["bursts"]["gaps"],
        report.scenario["strategy"]
    );
    println!("                      always-on   scale-to-zero");
    println!("energy, kWh           {:>9.3}   {:>13.3}", s.energy_kwh[0], s.energy_kwh[1]);
    println!("node-hours            {:>9.1}   {:>13.1}", s.node_hours[0], s.node_hours[1]);
    println!("most nodes            {:>9}   {:>13}", s.max_nodes[0], s.max_nodes[1]);
    println!("replica-hours         {:>9.1}   {:>13.1}", s.replica_hours[0], s.replica_hours[1]);
    println!("J per 1,000 tweets    {:>9.1}   {:>13.1}", s.j_per_1000_tweets[0], s.j_per_1000_tweets[1]);
    println!("pod starts            {:>9}   {:>13}", s.starts[0], s.starts[1]);
    println!(
        "ΔE = {:+.1} % (90 % band over {} phase draws: {:+.1} … {:+.1} %; least-allocated {:+.1} %); by P_idle/P_max: {}",
        s.delta_e_percent,
        report.monte_carlo.runs,
        report.monte_carlo.p5,
        report.monte_carlo.p95,
        report.least_allocated_delta_e_percent,
        s.delta_e_percent_by_idle_ratio
            .iter()
            .map(|(r, d)| format!("{r}: {d:+.1} %"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "cold starts: {} from zero, {:.0} requests waited ({:.2} %), p99 +{:.0} ms at {:.0} ms a start",
        s.starts_from_zero,
        s.cold_requests,
        s.cold_share * 100.0,
        s.p99_added_ms,
        s.cold_start_ms
    );
    println!(
        "check: Δnode-h·P_idle {:.1} h × {:.1} W = {:.0} J; − starts·e_start {:+.0} starts × {:.2} J = {:.0} J; idle replicas {:.0} J; − ΔE_platform {:.0} J → {:.0} J; simulated {:.0} J",
        c.node_hours_saved,
        c.p_idle_w,
        c.nodes_j,
        c.extra_starts,
        c.e_start_j,
        c.starts_j,
        c.idle_replicas_j,
        c.platform_j,
        c.sum_j,
        c.simulated_saving_j
    );
    for b in &report.break_even {
        let g = |g: Option<f64>| g.map_or("beyond the sweep".to_owned(), |g| format!("{:.0} s", g));
        println!(
            "break-even at {:>3} tenants: mean gap {} (band {} … {})",
            b.tenants,
            g(b.gap_s),
            g(b.gap_s_low),
            g(b.gap_s_high)
        );
    }
    println!(
        "validation (replica-seconds ±{:.0} %, CPU-seconds ±{:.0} %):",
        validate::REPLICA_TOLERANCE * 100.0,
        validate::CPU_TOLERANCE * 100.0
    );
    for r in &report.validation {
        println!(
            "  {} {:<13} replica-s {:>7.1} projected vs {:>7.1} measured ({:+.1} %); CPU-s {:>6.2} vs {:>6.2} ({:+.1} %; {:.2} from the inputs' CPU per tweet) {}",
            r.report,
            r.mode,
            r.replica_seconds_projected,
            r.replica_seconds_measured,
            r.replica_error * 100.0,
            r.cpu_s_projected,
            r.cpu_s_measured,
            r.cpu_error * 100.0,
            r.cpu_s_from_inputs,
            if r.ok { "ok" } else { "OUTSIDE" }
        );
    }
    println!("Wrote {} in {:.0} s", path.display(), report.elapsed_s);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        inputs::tests::sources().read().unwrap()
    }

    #[test]
    fn the_check_identity_holds_within_half_a_percent_under_the_linear_model() {
        let inputs = inputs();
        let curves = [inputs.curve(true, None)];
        let bursts = Bursts { burst_s: 20.0, rate: 100.0, gaps: Gaps::Exponential { mean_s: 900.0 } };
        let load = tenants(&bursts, 24, 4 * 3600, 3);
        let pair = pair(&inputs, Strategy::MostAllocated, &curves, &load, false).unwrap();
        let m = &inputs.measured;
        let check = Check::of(&pair, &curves[0], m.node.shape.vcpus, m.power.pue.value);
        assert!(pair.scale_to_zero.starts > pair.always_on.starts, "{pair:?}");
        assert!(check.node_hours_saved > 0.0, "{check:?}");
        // Within 0.5 %: the terms should add up exactly under the linear model; a 0.06 % rest
        // is not yet explained (see docs/projection.md).
        assert!((check.sum_j / check.simulated_saving_j - 1.0).abs() < 0.005, "{check:?}");
        assert!(check.platform_j.abs() < 1e-6, "the same tweets in both modes: {check:?}");
    }

    #[test]
    fn break_even_is_interpolated_on_a_log_scale() {
        let gaps = [100.0, 1000.0];
        assert!((crossing(&gaps, &[1.0, -1.0]).unwrap() - 316.227).abs() < 0.01);
        assert_eq!(crossing(&gaps, &[-1.0, -2.0]), Some(100.0));
        assert_eq!(crossing(&gaps, &[1.0, 2.0]), None);
    }
}
