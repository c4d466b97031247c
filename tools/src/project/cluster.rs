//! Nodes and the pods on them: pods placed by their requests as the scheduler's
//! `NodeResourcesFit` scores them (most-allocated or least-allocated), a node added when a pod
//! fits nowhere, and nodes removed as the cluster autoscaler's defaults remove them
//! (cluster-autoscaler FAQ, "What are the parameters to CA?"): every `--scan-interval` (10 s) a
//! node whose requested CPU and memory are both under `--scale-down-utilization-threshold`
//! (0.5) of its allocatable, and whose pods all fit on the other nodes, is unneeded; once
//! unneeded for `--scale-down-unneeded-time` (10 min), and not within
//! `--scale-down-delay-after-add` (10 min) of a scale-up, it is drained and removed — empty
//! nodes up to `--max-empty-bulk-delete` (10) at once, others one per scan. A removed node draws
//! nothing. Left out: the node's boot time (a pod that fits nowhere gets a new node at once) and
//! pod disruption budgets.

use runner::manifests::Requests;
use serde::Serialize;

/// The cluster autoscaler's defaults, in seconds or as a share.
pub const SCAN_INTERVAL_S: u64 = 10;
pub const UNNEEDED_S: u64 = 600;
pub const DELAY_AFTER_ADD_S: u64 = 600;
pub const UTILIZATION_THRESHOLD: f64 = 0.5;
const MAX_EMPTY_BULK_DELETE: usize = 10;

/// What a node offers to pods.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct NodeShape {
    pub vcpus: f64,
    pub allocatable_cpu_millis: f64,
    pub allocatable_memory_mib: f64,
    pub max_pods: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Fill the fullest node that fits (bin-packing).
    MostAllocated,
    /// Spread: the emptiest node that fits (the scheduler's default).
    LeastAllocated,
}

#[derive(Debug, Clone)]
struct Node {
    cpu: f64,
    memory: f64,
    pods: u32,
    unneeded_since: Option<u64>,
    alive: bool,
}

/// A pod's handle.
pub type PodId = usize;

#[derive(Debug)]
pub struct Cluster {
    shape: NodeShape,
    strategy: Strategy,
    nodes: Vec<Node>,
    /// Each pod's requests and node; `None` once deleted (the slot is reused).
    pods: Vec<Option<(Requests, usize)>>,
    free: Vec<PodId>,
    last_add: Option<u64>,
    /// Pods that a node's removal moved elsewhere (each one a pod start).
    pub moved: u64,
}

impl Cluster {
    pub fn new(shape: NodeShape, strategy: Strategy) -> Cluster {
        Cluster {
            shape,
            strategy,
            nodes: Vec::new(),
            pods: Vec::new(),
            free: Vec::new(),
            last_add: None,
            moved: 0,
        }
    }

    fn fits(&self, node: &Node, r: &Requests) -> bool {
        node.alive
            && node.pods < self.shape.max_pods
            && node.cpu + r.cpu_millis <= self.shape.allocatable_cpu_millis + 1e-9
            && node.memory + r.memory_mib <= self.shape.allocatable_memory_mib + 1e-9
    }

    /// The requested share of a node, CPU and memory averaged (the scheduler's score).
    fn score(&self, cpu: f64, memory: f64) -> f64 {
        (cpu / self.shape.allocatable_cpu_millis + memory / self.shape.allocatable_memory_mib) / 2.0
    }

    /// The node the scheduler picks for `r`, of those `allowed`.
    fn pick(&self, r: &Requests, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let candidates = self.nodes.iter().enumerate().filter(|(i, n)| allowed(*i) && self.fits(n, r));
        let scored = candidates.map(|(i, n)| (i, self.score(n.cpu + r.cpu_millis, n.memory + r.memory_mib)));
        let best = match self.strategy {
            Strategy::MostAllocated => scored.max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0))),
            Strategy::LeastAllocated => scored.min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0))),
        };
        best.map(|(i, _)| i)
    }

    fn put(&mut self, node: usize, r: &Requests) {
        let n = &mut self.nodes[node];
        n.cpu += r.cpu_millis;
        n.memory += r.memory_mib;
        n.pods += 1;
    }

    /// Schedules a pod, adding a node when it fits nowhere.
    pub fn place(&mut self, r: Requests, now: u64) -> anyhow::Result<PodId> {
        let node = match self.pick(&r, |_| true) {
            Some(node) => node,
            None => {
                let empty = Node { cpu: 0.0, memory: 0.0, pods: 0, unneeded_since: None, alive: true };
                anyhow::ensure!(
                    self.fits(&empty, &r),
                    "a pod requesting {} mCPU and {} MiB fits no node of this shape",
                    r.cpu_millis,
                    r.memory_mib
                );
                self.last_add = Some(now);
                match self.nodes.iter().position(|n| !n.alive) {
                    Some(i) => {
                        self.nodes[i] = empty;
                        i
                    }
                    None => {
                        self.nodes.push(empty);
                        self.nodes.len() - 1
                    }
                }
            }
        };
        self.put(node, &r);
        let id = self.free.pop().unwrap_or(self.pods.len());
        if id == self.pods.len() {
            self.pods.push(None);
        }
        self.pods[id] = Some((r, node));
        Ok(id)
    }

    /// Deletes a pod.
    pub fn remove(&mut self, pod: PodId) {
        if let Some((r, node)) = self.pods[pod].take() {
            let n = &mut self.nodes[node];
            n.cpu -= r.cpu_millis;
            n.memory -= r.memory_mib;
            n.pods -= 1;
            self.free.push(pod);
        }
    }

    /// The node a pod runs on.
    pub fn node_of(&self, pod: PodId) -> Option<usize> {
        self.pods[pod].map(|(_, node)| node)
    }

    /// Nodes in the cluster now.
    pub fn node_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.alive).count()
    }

    /// Slots of the nodes (alive or not): a node's index stays its own while it lives.
    pub fn node_slots(&self) -> usize {
        self.nodes.len()
    }

    pub fn alive(&self, node: usize) -> bool {
        self.nodes[node].alive
    }

    fn utilization(&self, n: &Node) -> f64 {
        (n.cpu / self.shape.allocatable_cpu_millis).max(n.memory / self.shape.allocatable_memory_mib)
    }

    /// Whether every pod of `node` fits on the alive nodes other than `node` and `leaving`.
    fn drainable(&self, node: usize, leaving: &[usize]) -> bool {
        let mut room: Vec<Node> = self.nodes.clone();
        let mut pods: Vec<Requests> =
            self.pods.iter().flatten().filter(|(_, n)| *n == node).map(|(r, _)| *r).collect();
        pods.sort_by(|a, b| b.cpu_millis.total_cmp(&a.cpu_millis));
        for r in pods {
            let target =
                (0..room.len()).find(|&i| i != node && !leaving.contains(&i) && self.fits(&room[i], &r));
            let Some(i) = target else { return false };
            room[i].cpu += r.cpu_millis;
            room[i].memory += r.memory_mib;
            room[i].pods += 1;
        }
        true
    }

    /// The cluster autoscaler's scale-down pass at `now` (call every [`SCAN_INTERVAL_S`]).
    /// Returns the nodes removed.
    pub fn scan(&mut self, now: u64) -> usize {
        let mut leaving = Vec::new();
        let mut moved_nodes = 0;
        let cool = self.last_add.is_none_or(|added| now >= added + DELAY_AFTER_ADD_S);
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if !n.alive {
                continue;
            }
            let unneeded = self.utilization(n) < UTILIZATION_THRESHOLD
                && self.node_count() - leaving.len() > 1
                && self.drainable(i, &leaving);
            if !unneeded {
                self.nodes[i].unneeded_since = None;
                continue;
            }
            let since = *self.nodes[i].unneeded_since.get_or_insert(now);
            let empty = self.nodes[i].pods == 0;
            let room = if empty { leaving.len() < MAX_EMPTY_BULK_DELETE } else { moved_nodes == 0 };
            if cool && now >= since + UNNEEDED_S && room {
                leaving.push(i);
                moved_nodes += usize::from(!empty);
            }
        }
        for &node in &leaving {
            self.nodes[node].alive = false;
            let pods: Vec<PodId> = (0..self.pods.len()).filter(|&p| self.node_of(p) == Some(node)).collect();
            for pod in pods {
                let (r, _) = self.pods[pod].expect("a pod of the node");
                let target = self.pick(&r, |i| i != node).expect("drainable checked that it fits");
                let old = &mut self.nodes[node];
                old.cpu -= r.cpu_millis;
                old.memory -= r.memory_mib;
                old.pods -= 1;
                self.put(target, &r);
                self.pods[pod] = Some((r, target));
                self.moved += 1;
            }
            self.nodes[node].unneeded_since = None;
        }
        leaving.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHAPE: NodeShape = NodeShape {
        vcpus: 4.0,
        allocatable_cpu_millis: 1000.0,
        allocatable_memory_mib: 1000.0,
        max_pods: 110,
    };
    const POD: Requests = Requests { cpu_millis: 250.0, memory_mib: 100.0 };

    #[test]
    fn most_allocated_packs_and_least_allocated_spreads() {
        for (strategy, expected) in
            [(Strategy::MostAllocated, [0, 0, 0]), (Strategy::LeastAllocated, [0, 1, 2])]
        {
            let mut c = Cluster::new(SHAPE, strategy);
            // Three nodes' worth of pods, then all freed: three empty nodes to choose from.
            let filler: Vec<_> = (0..12).map(|_| c.place(POD, 0).unwrap()).collect();
            assert_eq!(c.node_count(), 3);
            for pod in filler {
                c.remove(pod);
            }
            let placed: Vec<_> = (0..3)
                .map(|_| {
                    let pod = c.place(POD, 0).unwrap();
                    c.node_of(pod).unwrap()
                })
                .collect();
            assert_eq!(placed, expected, "{strategy:?}");
        }
    }

    #[test]
    fn a_pod_that_fits_nowhere_adds_a_node_and_one_too_big_is_an_error() {
        let mut c = Cluster::new(SHAPE, Strategy::MostAllocated);
        for _ in 0..4 {
            c.place(POD, 0).unwrap();
        }
        assert_eq!(c.node_count(), 1);
        c.place(POD, 0).unwrap();
        assert_eq!(c.node_count(), 2);
        let huge = Requests { cpu_millis: 2000.0, memory_mib: 1.0 };
        assert!(c.place(huge, 0).unwrap_err().to_string().contains("fits no node"));
    }

    /// Scans every 10 s from `from` to `to`; the node counts after each scan.
    fn scans(c: &mut Cluster, from: u64, to: u64) -> Vec<(u64, usize)> {
        let mut counts = Vec::new();
        for t in (from..=to).step_by(SCAN_INTERVAL_S as usize) {
            c.scan(t);
            counts.push((t, c.node_count()));
        }
        counts
    }

    #[test]
    fn an_underused_node_goes_after_ten_minutes_unneeded_and_not_within_ten_of_an_addition() {
        let mut c = Cluster::new(SHAPE, Strategy::MostAllocated);
        let pods: Vec<_> = (0..8).map(|_| c.place(POD, 0).unwrap()).collect();
        assert_eq!(c.node_count(), 2);
        // At 300 s the second node empties: both nodes' pods fit on one.
        for &pod in &pods[4..] {
            c.remove(pod);
        }
        let counts = scans(&mut c, 300, 1500);
        let removed_at = counts.iter().find(|(_, n)| *n == 1).map(|(t, _)| *t);
        // Unneeded from the 300 s scan; 10 min later, 900 s (the addition at 0 s is long past).
        assert_eq!(removed_at, Some(900));
    }

    #[test]
    fn a_recent_addition_holds_scale_down_back() {
        let mut c = Cluster::new(SHAPE, Strategy::MostAllocated);
        let pods: Vec<_> = (0..5).map(|_| c.place(POD, 0).unwrap()).collect();
        // A third node added at 800 s, emptied at once: nothing goes before 1400 s.
        let extra: Vec<_> = (0..4).map(|_| c.place(POD, 800).unwrap()).collect();
        assert_eq!(c.node_count(), 3);
        for pod in extra.into_iter().chain(pods.into_iter().skip(4)) {
            c.remove(pod);
        }
        let counts = scans(&mut c, 800, 2000);
        let first_removal = counts.iter().find(|(_, n)| *n < 3).map(|(t, _)| *t).unwrap();
        assert_eq!(first_removal, 1400, "{counts:?}");
    }

    #[test]
    fn a_node_above_half_requested_stays() {
        let mut c = Cluster::new(SHAPE, Strategy::LeastAllocated);
        for _ in 0..6 {
            c.place(POD, 0).unwrap();
        }
        // The first node full, the second at exactly half: neither is under the threshold.
        assert_eq!(c.node_count(), 2);
        assert!(scans(&mut c, 0, 2000).iter().all(|(_, n)| *n == 2));
    }

    #[test]
    fn draining_moves_the_pods_and_counts_them() {
        let mut c = Cluster::new(SHAPE, Strategy::LeastAllocated);
        let pods: Vec<_> = (0..5).map(|_| c.place(POD, 0).unwrap()).collect();
        assert_eq!(c.node_count(), 2);
        c.remove(pods[0]);
        c.remove(pods[1]);
        // The first node at half (stays), the second at a quarter: its pod fits on the first.
        scans(&mut c, 0, 1200);
        assert_eq!(c.node_count(), 1);
        assert!(c.moved >= 1);
        let nodes: Vec<_> = pods[2..].iter().map(|&p| c.node_of(p).unwrap()).collect();
        assert!(nodes.iter().all(|&n| n == nodes[0] && c.alive(n)), "{nodes:?}");
    }
}
