//! The projection against runs of the energy experiment on this machine: the replicas the
//! [`Decider`](runner::autoscaler::Decider) gives for a run's own load against the replicas the
//! runner ran (replica-seconds, ±5 %), and the functions' CPU-seconds (±10 %) predicted with the
//! CPU per tweet of the other mode. `--validate N` first runs N copies of the experiment side by
//! side, each with its own run id, ports and folder.

use super::{
    inputs::{Function, Inputs},
    replicas::{Replicas, ZeroRule},
};
use anyhow::Context;
use serde::Serialize;
use serde_json::Value;
use std::{path::Path, path::PathBuf, time::Duration};

pub const REPLICA_TOLERANCE: f64 = 0.05;
pub const CPU_TOLERANCE: f64 = 0.10;

/// One mode of one run: projected against measured.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub report: String,
    pub mode: String,
    pub tweets: f64,
    pub replica_seconds_measured: f64,
    pub replica_seconds_projected: f64,
    pub replica_error: f64,
    pub starts_measured: f64,
    pub starts_projected: f64,
    pub cpu_s_measured: f64,
    /// With the CPU per tweet of the run's other mode (and the idle CPU and starts projected here).
    pub cpu_s_projected: f64,
    pub cpu_error: f64,
    /// With the committed or bench CPU per tweet instead.
    pub cpu_s_from_inputs: f64,
    pub ok: bool,
}

fn num(v: &Value, pointer: &str) -> anyhow::Result<f64> {
    v.pointer(pointer).and_then(Value::as_f64).with_context(|| format!("no number at {pointer}"))
}

/// The load the run offered, per second: its bursts at the rate its accepted tweets imply.
fn load(mode: &Value) -> anyhow::Result<Vec<f64>> {
    let s = |k: &str| num(mode, &format!("/settings/{k}"));
    let (pre, burst, gap, bursts) =
        (s("pre_idle_seconds")?, s("burst_seconds")?, s("gap_seconds")?, s("bursts")?);
    let seconds = num(mode, "/duration_s")?.round() as usize;
    let rate = num(mode, "/counts/accepted")? / (bursts * burst);
    Ok((0..seconds)
        .map(|t| {
            let since = t as f64 - pre;
            let in_burst = since >= 0.0 && since < bursts * (burst + gap) && since % (burst + gap) < burst;
            if in_burst { rate } else { 0.0 }
        })
        .collect())
}

/// Replica-seconds and starts of `f` under `load` (in the mode's scaling and the run's idle rule).
fn project(f: &Function, mode: &str, latency_s: f64, load: &[f64], idle: Duration) -> (f64, f64) {
    let (scaling, rule) = match mode {
        "always-on" => (f.always_on, ZeroRule::Never),
        _ => (f.scale_to_zero, ZeroRule::Idle(idle)),
    };
    let mut r = Replicas::new(&scaling, f.container_concurrency, latency_s, rule);
    let (mut seconds, mut starts) = (0.0, 0.0);
    for &rate in load {
        let second = r.step(rate);
        seconds += f64::from(second.replicas);
        starts += f64::from(second.starts);
    }
    (seconds, starts)
}

/// The rows of one energy report (both modes).
pub fn report(inputs: &Inputs, path: &Path) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!("{} not found: `make energy` writes it", path.display())
        }
        _ => anyhow::Error::new(e).context(format!("reading {}", path.display())),
    })?;
    let doc: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let modes = doc.get("modes").and_then(Value::as_array).context("no modes")?;
    anyhow::ensure!(modes.len() == 2, "{} needs both modes", path.display());
    let mut rows = Vec::new();
    for (i, mode) in modes.iter().enumerate() {
        let other = &modes[1 - i];
        let name = mode.get("mode").and_then(Value::as_str).context("a mode without a name")?;
        let load = load(mode).with_context(|| format!("{}: {name}", path.display()))?;
        let idle = Duration::from_millis(num(mode, "/settings/idle_period_ms")? as u64);
        let latency = num(mode, "/locust/p50_ms")? / 1000.0;
        let tweets = num(mode, "/counts/accepted")?;
        let other_tweets = num(other, "/counts/accepted")?;
        let mut row = Row {
            report: path.display().to_string(),
            mode: name.to_owned(),
            tweets,
            replica_seconds_measured: 0.0,
            replica_seconds_projected: 0.0,
            replica_error: 0.0,
            starts_measured: 0.0,
            starts_projected: 0.0,
            cpu_s_measured: 0.0,
            cpu_s_projected: 0.0,
            cpu_error: 0.0,
            cpu_s_from_inputs: 0.0,
            ok: false,
        };
        for f in &inputs.functions {
            let n = &f.name;
            // ingest and producer hold a request for its whole latency; the sinks their own.
            let latency_s = match n.as_str() {
                "ingest" | "producer" => latency,
                _ => f.cost.latency_ms.value / 1000.0,
            };
            let (replica_s, starts) = project(f, name, latency_s, &load, idle);
            let idle_cpu = f.cost.idle_cpu_millis.value / 1000.0;
            let start_cpu = f.cost.start_cpu_ms.value / 1000.0;
            let other_replica_s = num(other, &format!("/replicas/seconds/{n}"))?;
            let other_cpu = num(other, &format!("/cpu_s/{n}"))?;
            let per_tweet = (other_cpu - idle_cpu * other_replica_s).max(0.0) / other_tweets;
            row.replica_seconds_measured += num(mode, &format!("/replicas/seconds/{n}"))?;
            row.starts_measured += num(mode, &format!("/replicas/starts/{n}"))?;
            row.cpu_s_measured += num(mode, &format!("/cpu_s/{n}"))?;
            row.replica_seconds_projected += replica_s;
            row.starts_projected += starts;
            let fixed = idle_cpu * replica_s + start_cpu * starts;
            row.cpu_s_projected += per_tweet * tweets + fixed;
            row.cpu_s_from_inputs += f.cost.cpu_us_per_tweet.value / 1e6 * tweets + fixed;
        }
        row.replica_error = row.replica_seconds_projected / row.replica_seconds_measured - 1.0;
        row.cpu_error = row.cpu_s_projected / row.cpu_s_measured - 1.0;
        row.ok = row.replica_error.abs() <= REPLICA_TOLERANCE && row.cpu_error.abs() <= CPU_TOLERANCE;
        rows.push(row);
    }
    Ok(rows)
}

/// Runs `copies` energy experiments side by side (separate run ids, ports and folders under
/// `out`) and returns their reports. Each takes as long as one `make energy` (about 7 minutes
/// with its defaults), all at once.
pub fn side_by_side(
    copies: usize,
    python: &Path,
    out: &Path,
    extra: &[String],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut children = Vec::new();
    for k in 0..copies {
        let dir = out.join(format!("copy-{k}"));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("energy.log"))?;
        let child = std::process::Command::new(python)
            .args(["-m", "loadtest.energy", "run", "--run-id", &format!("project-{k}")])
            .args(["--base-port", &(18_180 + 200 * (k + 1)).to_string()])
            .arg("--out")
            .arg(&dir)
            .args(extra)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} -m loadtest.energy", python.display()))?;
        children.push((dir, child));
    }
    let mut reports = Vec::new();
    for (dir, mut child) in children {
        let status = child.wait()?;
        anyhow::ensure!(
            status.success(),
            "the energy run in {} failed ({status}); see its energy.log",
            dir.display()
        );
        reports.push(dir.join("report.json"));
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::inputs::Sources;

    #[test]
    fn the_committed_report_is_reproduced_at_one_tenant() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let sources = Sources {
            measured: root.join("tools/project/measured.json"),
            bench: None,
            energy: None,
            knative: root.join("knative"),
        };
        let rows =
            report(&sources.read().unwrap(), &root.join("loadtest/results/2026-12-02-local/report.json"))
                .unwrap();
        assert_eq!(rows.len(), 2);
        // The ±5 % target is not met (docs/projection.md says why); what holds: within 25 %,
        // and the share of replica-seconds scale-to-zero keeps within 3 points.
        for row in &rows {
            assert!(row.replica_error.abs() <= 0.25, "{row:?}");
        }
        let share = |r: fn(&Row) -> f64| r(&rows[1]) / r(&rows[0]);
        let (projected, measured) =
            (share(|r| r.replica_seconds_projected), share(|r| r.replica_seconds_measured));
        assert!((projected - measured).abs() < 0.03, "{projected} vs {measured}");
    }
}
