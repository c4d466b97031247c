//! One mode of one scenario, second by second: each tenant's functions scale
//! ([`super::replicas`]), their pods are placed on nodes ([`super::cluster`]) beside the
//! platform's always-on pods, and every node draws power from its CPU use ([`super::power`]).
//! A pod's CPU is its replica's idle CPU plus its share of the function's tweets times the CPU
//! per tweet; a started pod adds its start CPU.

use super::{
    cluster::{Cluster, PodId, SCAN_INTERVAL_S, Strategy},
    inputs::Inputs,
    power::Curve,
    replicas::{Replicas, ZeroRule},
};
use runner::manifests::Requests;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    AlwaysOn,
    ScaleToZero,
}

/// What a mode cost over the scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Joules (× PUE), one per power curve asked for, the first the main one.
    pub energy_j: Vec<f64>,
    pub node_seconds: f64,
    /// Node-seconds with the node's CPU use over its cores (the power curve stops at 100 %).
    pub saturated_node_seconds: f64,
    pub max_nodes: usize,
    pub replica_seconds: f64,
    pub tweets: f64,
    /// CPU-seconds of the functions' tweets, of their idle replicas, of pod starts, of the platform.
    pub tweet_cpu_s: f64,
    pub idle_cpu_s: f64,
    pub start_cpu_s: f64,
    pub platform_cpu_s: f64,
    /// Pods started: scaling out, from zero, and moved by a node's removal.
    pub starts: u64,
    pub from_zero: u64,
    pub moved: u64,
    /// Requests that waited for a start from zero.
    pub cold_requests: f64,
    /// Per minute when asked for: mean nodes and mean watts (main curve, × PUE).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub minutes: Vec<[f64; 2]>,
}

/// How one scenario runs.
pub struct Run<'a> {
    pub inputs: &'a Inputs,
    pub strategy: Strategy,
    pub curves: &'a [Curve],
    /// Each tenant's tweets per second.
    pub tenants: &'a [Vec<f64>],
    /// Replaces Knative's scale-to-zero timers (the runner's idle rule, to check against it).
    pub zero_rule: Option<ZeroRule>,
    pub minutes: bool,
}

impl Run<'_> {
    pub fn simulate(&self, mode: Mode) -> anyhow::Result<Outcome> {
        let m = &self.inputs.measured;
        let shape = m.node.shape;
        let pue = m.power.pue.value;
        let cold_s = m.cold_start_ms.value / 1000.0;
        let functions = &self.inputs.functions;
        let seconds = self.tenants.first().map_or(0, Vec::len);
        let mut cluster = Cluster::new(shape, self.strategy);
        let mut out = Outcome { energy_j: vec![0.0; self.curves.len()], ..Outcome::default() };

        // The platform: placed first, the same in both modes; (pod, CPU-s per tweet) each.
        let mut platform = Vec::new();
        for p in &m.platform {
            for _ in 0..p.count {
                let pod =
                    cluster.place(Requests { cpu_millis: p.cpu_millis, memory_mib: p.memory_mib }, 0)?;
                platform.push((pod, p.cpu_us_per_tweet.value / 1e6 / f64::from(p.count)));
            }
        }
        let mut replicas: Vec<Replicas> = Vec::new();
        for _ in self.tenants {
            for f in functions {
                let (scaling, rule) = match mode {
                    Mode::AlwaysOn => (f.always_on, ZeroRule::Never),
                    Mode::ScaleToZero => {
                        (f.scale_to_zero, self.zero_rule.unwrap_or(ZeroRule::knative(&f.scale_to_zero)))
                    }
                };
                replicas.push(Replicas::new(
                    &scaling,
                    f.container_concurrency,
                    f.cost.latency_ms.value / 1000.0,
                    rule,
                ));
            }
        }
        let mut pods: Vec<Vec<PodId>> = vec![Vec::new(); replicas.len()];
        let mut started: Vec<(PodId, f64)> = Vec::new();
        let mut node_cpu: Vec<f64> = Vec::new();
        let mut minute = [0.0; 2];

        for t in 0..seconds {
            started.clear();
            let mut total_rate = 0.0;
            for (k, tenant) in self.tenants.iter().enumerate() {
                let rate = tenant[t];
                total_rate += rate;
                for (j, f) in functions.iter().enumerate() {
                    let i = k * functions.len() + j;
                    let second = replicas[i].step(rate);
                    while pods[i].len() > second.replicas as usize {
                        cluster.remove(pods[i].pop().expect("more pods than wanted"));
                    }
                    let start_cpu = f.cost.start_cpu_ms.value / 1000.0 + m.pod_start_cpu_s.value;
                    while pods[i].len() < second.replicas as usize {
                        let pod = cluster.place(f.requests, t as u64)?;
                        pods[i].push(pod);
                        started.push((pod, start_cpu));
                    }
                    out.starts += u64::from(second.starts);
                    if second.from_zero {
                        out.from_zero += 1;
                        out.cold_requests += (rate * cold_s).max(1.0).min(rate.max(1.0));
                    }
                }
            }
            if (t as u64).is_multiple_of(SCAN_INTERVAL_S) {
                let moved = cluster.moved;
                cluster.scan(t as u64);
                let moved = cluster.moved - moved;
                out.moved += moved;
                out.starts += moved;
                // Restarted elsewhere: counted on the first pod's node (the sum is what matters).
                if let Some(&(pod, _)) = platform.first() {
                    started.push((pod, moved as f64 * m.pod_start_cpu_s.value));
                }
            }
            node_cpu.clear();
            node_cpu.resize(cluster.node_slots(), 0.0);
            let mut add = |pod: PodId, cpu: f64| {
                if let Some(node) = cluster.node_of(pod) {
                    node_cpu[node] += cpu;
                }
            };
            for (i, pods) in pods.iter().enumerate() {
                if pods.is_empty() {
                    continue;
                }
                let (k, f) = (i / functions.len(), &functions[i % functions.len()]);
                let rate = self.tenants[k][t];
                let tweets_cpu = rate * f.cost.cpu_us_per_tweet.value / 1e6;
                let idle = f.cost.idle_cpu_millis.value / 1000.0;
                let each = idle + tweets_cpu / pods.len() as f64;
                for &pod in pods {
                    add(pod, each);
                }
                out.replica_seconds += pods.len() as f64;
                out.idle_cpu_s += idle * pods.len() as f64;
                out.tweet_cpu_s += tweets_cpu;
            }
            for &(pod, cpu) in &started {
                add(pod, cpu);
                out.start_cpu_s += cpu;
            }
            for &(pod, per_tweet) in &platform {
                add(pod, per_tweet * total_rate);
                out.platform_cpu_s += per_tweet * total_rate;
            }
            out.tweets += total_rate;
            let nodes = cluster.node_count();
            out.node_seconds += nodes as f64;
            out.max_nodes = out.max_nodes.max(nodes);
            let mut watts = vec![0.0; self.curves.len()];
            for (node, cpu) in node_cpu.iter().enumerate() {
                if cluster.alive(node) {
                    let u = cpu / shape.vcpus;
                    if u > 1.0 {
                        out.saturated_node_seconds += 1.0;
                    }
                    for (w, curve) in watts.iter_mut().zip(self.curves) {
                        *w += curve.watts(u) * pue;
                    }
                }
            }
            for (e, w) in out.energy_j.iter_mut().zip(&watts) {
                *e += w;
            }
            if self.minutes {
                minute[0] += nodes as f64 / 60.0;
                minute[1] += watts.first().copied().unwrap_or(0.0) / 60.0;
                if t % 60 == 59 {
                    out.minutes.push(minute);
                    minute = [0.0; 2];
                }
            }
        }
        Ok(out)
    }
}
