//! What the projection starts from, each figure with its source: the committed measured
//! figures (`tools/project/measured.json`), replaced by those of a newer `make bench`
//! (`target/bench/bench.json`) or `make energy` (`target/energy/report.json`) when given; the
//! functions' requests and scaling from the Knative manifests.

use super::{cluster::NodeShape, power::Curve};
use anyhow::Context;
use runner::{
    autoscaler::{Scaling, overlay_annotations},
    manifests::{Requests, services},
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// A figure and where it comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub value: f64,
    pub source: String,
}

impl Figure {
    fn from(value: f64, file: &Path, field: &str) -> Figure {
        Figure { value, source: format!("{}: {field}", file.display()) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionCost {
    pub cpu_us_per_tweet: Figure,
    /// How long a request is in flight at the function (Little's law: concurrency = rate × this).
    pub latency_ms: Figure,
    /// CPU an idle replica uses.
    pub idle_cpu_millis: Figure,
    /// CPU of the function's own start (exec → ready, one core busy).
    pub start_cpu_ms: Figure,
}

/// Always-on pods of the platform, shared by the tenants and the same in both modes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlatformPod {
    pub name: String,
    pub count: u32,
    pub cpu_millis: f64,
    pub memory_mib: f64,
    /// This part's CPU per tweet, spread over its pods.
    pub cpu_us_per_tweet: Figure,
    /// The process of the bench's `cpu_us_per_tweet` that stands for this part, if any.
    #[serde(default)]
    pub bench_part: Option<String>,
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    pub shape: NodeShape,
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurveFigure {
    pub value: [f64; 11],
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Power {
    pub max_w_per_vcpu: Figure,
    pub idle_ratio: Figure,
    pub pue: Figure,
    /// Shares of P_max at 0 %, 10 %, … 100 % load.
    pub curve: CurveFigure,
}

/// The measured figures, as the committed file holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub measured: String,
    pub functions: BTreeMap<String, FunctionCost>,
    pub platform: Vec<PlatformPod>,
    pub queue_proxy_cpu_millis: Figure,
    pub pod_start_cpu_s: Figure,
    pub cold_start_ms: Figure,
    pub node: Node,
    pub power: Power,
}

/// One function of a tenant's pipeline, as the projection runs it.
#[derive(Debug, Clone, Serialize)]
pub struct Function {
    pub name: String,
    /// The pod's requests: the container's and the queue-proxy's.
    pub requests: Requests,
    pub container_concurrency: u32,
    #[serde(skip)]
    pub always_on: Scaling,
    #[serde(skip)]
    pub scale_to_zero: Scaling,
    /// The annotations' figures, as read (both modes).
    pub scaling: serde_json::Value,
    pub cost: FunctionCost,
}

/// Everything the projection reads.
#[derive(Debug, Clone, Serialize)]
pub struct Inputs {
    /// Every file read.
    pub files: Vec<String>,
    pub measured: Measured,
    pub functions: Vec<Function>,
}

fn missing(path: &Path, target: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{} not found: `make {target}` writes it (or leave the option out to use the committed figures)",
        path.display()
    )
}

fn read_json(path: &Path, target: &str) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => missing(path, target),
        _ => anyhow::Error::new(e).context(format!("reading {}", path.display())),
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A number at `pointer` of `doc`, or an error naming the file and the field.
fn number(doc: &serde_json::Value, file: &Path, pointer: &str) -> anyhow::Result<f64> {
    doc.pointer(pointer)
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("{} has no number at {pointer}", file.display()))
}

/// Where the inputs come from.
#[derive(Debug, Clone, clap::Args)]
pub struct Sources {
    /// The committed measured figures.
    #[arg(long, default_value = "tools/project/measured.json")]
    pub measured: PathBuf,
    /// A bench report (`make bench` writes target/bench/bench.json): CPU per tweet per
    /// function and platform part, exec → ready.
    #[arg(long)]
    pub bench: Option<PathBuf>,
    /// An energy report (`make energy` writes target/energy/report.json): latency, idle CPU
    /// per replica, cold-start latency.
    #[arg(long)]
    pub energy: Option<PathBuf>,
    /// The Knative manifests: the Services' requests and annotations, and the overlays.
    #[arg(long, default_value = "knative")]
    pub knative: PathBuf,
}

impl Sources {
    pub fn read(&self) -> anyhow::Result<Inputs> {
        let text = std::fs::read_to_string(&self.measured)
            .with_context(|| format!("reading the committed figures {}", self.measured.display()))?;
        let mut measured: Measured =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", self.measured.display()))?;
        let mut files = vec![self.measured.display().to_string()];
        if let Some(path) = &self.bench {
            apply_bench(&mut measured, &read_json(path, "bench")?, path)?;
            files.push(path.display().to_string());
        }
        if let Some(path) = &self.energy {
            apply_energy(&mut measured, &read_json(path, "energy")?, path)?;
            files.push(path.display().to_string());
        }
        let base = self.knative.join("base");
        let overlay = |mode: &str| {
            overlay_annotations(&self.knative.join("overlays").join(mode).join("kustomization.yaml"))
        };
        let (on, zero) = (overlay("always-on")?, overlay("scale-to-zero")?);
        files.extend(
            ["base", "overlays/always-on", "overlays/scale-to-zero"]
                .map(|d| self.knative.join(d).display().to_string()),
        );
        let queue_proxy = measured.queue_proxy_cpu_millis.value;
        let functions = services(&base)?
            .into_iter()
            .map(|s| {
                let cost = measured
                    .functions
                    .get(&s.name)
                    .with_context(|| format!("{} has no figures for {}", self.measured.display(), s.name))?
                    .clone();
                let always_on = Scaling::from_annotations(&[&s.annotations, &on])?;
                let scale_to_zero = Scaling::from_annotations(&[&s.annotations, &zero])?;
                Ok(Function {
                    requests: Requests { cpu_millis: s.requests.cpu_millis + queue_proxy, ..s.requests },
                    container_concurrency: s.container_concurrency,
                    scaling: serde_json::json!({
                        "target": always_on.target,
                        "target_utilization": always_on.target_utilization,
                        "stable_window_s": always_on.stable_window.as_secs_f64(),
                        "max_scale": always_on.max_scale,
                        "min_scale": [always_on.min_scale, scale_to_zero.min_scale],
                        "retention_s": scale_to_zero.retention.map(|r| r.as_secs_f64()),
                    }),
                    always_on,
                    scale_to_zero,
                    cost,
                    name: s.name,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Inputs { files, measured, functions })
    }
}

/// The bench's CPU per tweet (end to end) and exec → ready.
fn apply_bench(m: &mut Measured, doc: &serde_json::Value, path: &Path) -> anyhow::Result<()> {
    for (name, cost) in &mut m.functions {
        let field = format!("/cpu_us_per_tweet/{name}");
        cost.cpu_us_per_tweet = Figure::from(number(doc, path, &field)?, path, &field);
        let field = format!("/starts/{name}/ready_p50_ms");
        cost.start_cpu_ms = Figure::from(number(doc, path, &field)?, path, &field);
    }
    for pod in &mut m.platform {
        if let Some(part) = &pod.bench_part {
            let field = format!("/cpu_us_per_tweet/{part}");
            pod.cpu_us_per_tweet = Figure::from(number(doc, path, &field)?, path, &field);
        }
    }
    Ok(())
}

/// The energy report's latency (Locust p50 of scale-to-zero, for the functions a request waits
/// in), idle CPU per replica and cold-start latency.
fn apply_energy(m: &mut Measured, doc: &serde_json::Value, path: &Path) -> anyhow::Result<()> {
    let modes = doc.get("modes").and_then(|m| m.as_array()).context("no modes")?;
    let find = |name: &str| {
        modes
            .iter()
            .position(|m| m.get("mode").and_then(|m| m.as_str()) == Some(name))
            .with_context(|| format!("{} has no {name} mode", path.display()))
    };
    let (on, zero) = (find("always-on")?, find("scale-to-zero")?);
    let per_vcpu_w = (number(doc, path, &format!("/modes/{on}/model/max_w"))?
        - number(doc, path, &format!("/modes/{on}/model/idle_w"))?)
        * number(doc, path, &format!("/modes/{on}/model/pue"))?;
    for (name, cost) in &mut m.functions {
        if matches!(name.as_str(), "ingest" | "producer") {
            let field = format!("/modes/{zero}/locust/p50_ms");
            cost.latency_ms = Figure::from(number(doc, path, &field)?, path, &field);
        }
        let field = format!("/modes/{on}/idle_component_w/{name}");
        let idle_w = number(doc, path, &field)?;
        cost.idle_cpu_millis = Figure {
            value: idle_w / per_vcpu_w * 1000.0,
            source: format!("{}: {field} ÷ {per_vcpu_w:.3} W per busy vCPU", path.display()),
        };
    }
    let field = format!("/modes/{zero}/cold_starts/latency_ms");
    let mut latencies: Vec<f64> = doc
        .pointer(&field)
        .and_then(|l| l.as_array())
        .map(|l| l.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    if !latencies.is_empty() {
        latencies.sort_by(f64::total_cmp);
        m.cold_start_ms = Figure::from(latencies[latencies.len() / 2], path, &format!("{field} (p50)"));
    }
    Ok(())
}

impl Inputs {
    /// The node power curve the figures describe, at P_idle/P_max `ratio` (the measured one if None).
    pub fn curve(&self, linear: bool, ratio: Option<f64>) -> Curve {
        let p = &self.measured.power;
        let max_w = p.max_w_per_vcpu.value * self.measured.node.shape.vcpus;
        let ratio = ratio.unwrap_or(p.idle_ratio.value);
        if linear {
            Curve::Linear { idle_w: ratio * max_w, max_w }
        } else {
            Curve::Points { watts: p.curve.value.map(|share| share * max_w) }.with_idle_ratio(ratio)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The committed measurements and the manifests of `knative/`.
    pub(crate) fn sources() -> Sources {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Sources {
            measured: root.join("tools/project/measured.json"),
            bench: None,
            energy: None,
            knative: root.join("knative"),
        }
    }

    #[test]
    fn reads_the_committed_figures_and_the_manifests() {
        let inputs = sources().read().unwrap();
        let names: Vec<_> = inputs.functions.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["ingest", "producer", "counter", "archiver"]);
        // 100m of the container and 25m of the queue-proxy.
        assert_eq!(inputs.functions[0].requests.cpu_millis, 125.0);
        assert!(
            inputs.functions.iter().all(|f| f.always_on.min_scale == 1 && f.scale_to_zero.min_scale == 0)
        );
        assert!(inputs.functions.iter().all(|f| !f.cost.latency_ms.source.is_empty()));
    }

    #[test]
    fn the_committed_energy_report_is_an_input() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let report = root.join("loadtest/results/2026-12-02-local/report.json");
        let inputs = Sources { energy: Some(report.clone()), ..sources() }.read().unwrap();
        let ingest = &inputs.functions[0].cost;
        assert_eq!(ingest.latency_ms.value, 35.0);
        assert!(ingest.latency_ms.source.contains("report.json"));
        assert!(inputs.files.contains(&report.display().to_string()));
    }

    #[test]
    fn a_missing_report_names_the_make_target_that_writes_it() {
        let bench =
            Sources { bench: Some("target/nowhere/bench.json".into()), ..sources() }.read().unwrap_err();
        assert!(bench.to_string().contains("`make bench` writes it"), "{bench}");
        let energy =
            Sources { energy: Some("target/nowhere/report.json".into()), ..sources() }.read().unwrap_err();
        assert!(energy.to_string().contains("`make energy` writes it"), "{energy}");
    }
}
