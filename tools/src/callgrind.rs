//! Reads a callgrind profile (`callgrind.out`, valgrind's format) and turns its call graph into
//! the folded stacks a flame graph is drawn from.
//!
//! Callgrind records a call *graph*, not stacks: each function's own (self) cost, and for every
//! caller → callee edge the cost spent under that call. The stacks are rebuilt by walking the
//! graph from the functions nobody calls (thread entry points), handing each callee the share
//! of the caller's flow that its edge carries. That is exact for a tree and an approximation
//! where a function is called from several places (its callees' shares are split in proportion
//! to its callers' flow, not by the path that really led there) — the usual caveat of every
//! callgrind-to-flame-graph conversion. Recursion is cut at the first repeat on a path, and
//! paths carrying less than 1/20,000 of the total are folded into their caller, so the graph
//! stays readable; the figures per function (self and inclusive) are exact.

use std::collections::HashMap;

/// One profile: every function's self cost and the calls between them, in the first event
/// (`Ir`, instructions executed).
#[derive(Debug, Default)]
pub struct Profile {
    pub names: Vec<String>,
    pub self_cost: Vec<u64>,
    /// caller → (callee → inclusive cost of those calls).
    pub calls: Vec<HashMap<usize, u64>>,
    /// The `totals:`/`summary:` line, else the sum of self costs.
    pub total: u64,
}

impl Profile {
    pub fn parse(text: &str) -> anyhow::Result<Profile> {
        let mut profile = Profile::default();
        let mut ids: HashMap<String, usize> = HashMap::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut current: Option<usize> = None;
        // The callee of the `calls=` line just read: the next cost line is that call's cost.
        let mut callee: Option<usize> = None;
        let mut pending_call = false;
        let mut declared_total = None;
        for line in text.lines() {
            let line = line.trim_end();
            if let Some(rest) = line.strip_prefix("fn=") {
                current = Some(profile.function(rest, &mut ids, &mut by_name));
            } else if let Some(rest) = line.strip_prefix("cfn=") {
                callee = Some(profile.function(rest, &mut ids, &mut by_name));
            } else if line.starts_with("calls=") {
                pending_call = true;
            } else if let Some(rest) = line.strip_prefix("totals:").or_else(|| line.strip_prefix("summary:"))
            {
                declared_total = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            } else if line.starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-' || c == '*') {
                // A cost line: the position (one column with `positions: line`), then the events.
                let cost: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
                let Some(f) = current else { continue };
                if pending_call {
                    if let Some(c) = callee {
                        *profile.calls[f].entry(c).or_default() += cost;
                    }
                    pending_call = false;
                } else {
                    profile.self_cost[f] += cost;
                }
            }
        }
        anyhow::ensure!(!profile.names.is_empty(), "no functions in the callgrind profile");
        profile.total = declared_total.unwrap_or_else(|| profile.self_cost.iter().sum());
        Ok(profile)
    }

    /// `(id) name` defines a compressed name, `(id)` refers to one, a bare name is itself.
    fn function(
        &mut self,
        spec: &str,
        ids: &mut HashMap<String, usize>,
        by_name: &mut HashMap<String, usize>,
    ) -> usize {
        let (id, name) = match spec.strip_prefix('(').and_then(|s| s.split_once(')')) {
            Some((id, name)) => (Some(id.to_owned()), name.trim()),
            None => (None, spec.trim()),
        };
        if name.is_empty()
            && let Some(&index) = id.as_ref().and_then(|id| ids.get(id))
        {
            return index;
        }
        let index = *by_name.entry(name.to_owned()).or_insert_with(|| {
            self.names.push(name.to_owned());
            self.self_cost.push(0);
            self.calls.push(HashMap::new());
            self.names.len() - 1
        });
        if let Some(id) = id {
            ids.insert(id, index);
        }
        index
    }

    /// Self plus every call's cost.
    pub fn inclusive(&self, f: usize) -> u64 {
        self.self_cost[f] + self.calls[f].values().sum::<u64>()
    }

    /// The `limit` functions with the highest self cost, as (name, self, inclusive).
    pub fn top_self(&self, limit: usize) -> Vec<(&str, u64, u64)> {
        let mut all: Vec<usize> = (0..self.names.len()).collect();
        all.sort_by_key(|&f| std::cmp::Reverse(self.self_cost[f]));
        all.into_iter()
            .take(limit)
            .map(|f| (self.names[f].as_str(), self.self_cost[f], self.inclusive(f)))
            .collect()
    }

    /// The functions whose name contains `needle`, summed inclusively without counting a
    /// matching function called under another one twice (its cost is within its caller's).
    pub fn inclusive_matching(&self, needle: &str) -> u64 {
        let matching: Vec<bool> = self.names.iter().map(|n| n.contains(needle)).collect();
        (0..self.names.len())
            .filter(|&f| matching[f])
            .map(|f| {
                let called_by_match: u64 = (0..self.names.len())
                    .filter(|&g| matching[g] && g != f)
                    .filter_map(|g| self.calls[g].get(&f))
                    .sum();
                self.inclusive(f).saturating_sub(called_by_match)
            })
            .sum::<u64>()
            .min(self.total)
    }

    /// Self cost summed by where the code comes from ([`origin`]), highest first.
    pub fn self_by_origin(&self) -> Vec<(String, u64)> {
        let mut by: HashMap<String, u64> = HashMap::new();
        for (name, cost) in self.names.iter().zip(&self.self_cost) {
            *by.entry(origin(name)).or_default() += cost;
        }
        let mut by: Vec<(String, u64)> = by.into_iter().collect();
        by.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        by
    }

    /// Folded stacks (`a;b;c cost`), one line per path, for inferno's flame graph.
    pub fn folded(&self) -> Vec<String> {
        // A root is where cost enters the graph: a function never called, and a thread's entry
        // (`start_thread`), which callgrind shows called by `clone3` with only the parent's
        // share — so a root's flow is its cost beyond what its callers hand it.
        let mut inbound = vec![0u64; self.names.len()];
        for calls in &self.calls {
            for (&c, &cost) in calls {
                inbound[c] += cost;
            }
        }
        let floor = (self.total / 20_000).max(1) as f64;
        let entry = (self.total / 200).max(1);
        let mut out: HashMap<String, f64> = HashMap::new();
        let mut path = Vec::new();
        for (root, &inbound) in inbound.iter().enumerate() {
            let beyond = self.inclusive(root).saturating_sub(inbound);
            let flow = if inbound == 0 || beyond >= entry { beyond } else { 0 } as f64;
            if flow >= floor {
                self.walk(root, flow, floor, &mut path, &mut out);
            }
        }
        let mut lines: Vec<String> = out
            .into_iter()
            .filter(|(_, cost)| *cost >= 1.0)
            .map(|(stack, cost)| format!("{stack} {}", cost.round() as u64))
            .collect();
        lines.sort();
        lines
    }

    fn walk(&self, f: usize, flow: f64, floor: f64, path: &mut Vec<usize>, out: &mut HashMap<String, f64>) {
        path.push(f);
        let inclusive = self.inclusive(f).max(1) as f64;
        let scale = flow / inclusive;
        let mut kept = self.self_cost[f] as f64 * scale;
        for (&callee, &cost) in &self.calls[f] {
            let share = cost as f64 * scale;
            if share < floor || path.contains(&callee) || path.len() > 120 {
                kept += share;
            } else {
                self.walk(callee, share, floor, path, out);
            }
        }
        if kept > 0.0 {
            let stack: Vec<String> = path.iter().map(|&g| self.names[g].replace(';', ":")).collect();
            *out.entry(stack.join(";")).or_default() += kept;
        }
        path.pop();
    }
}

/// The crate a demangled function comes from (the first path segment, also of `<A as B>::f`),
/// `malloc` for the allocator's functions (glibc's, mimalloc's and Rust's shims), `librdkafka`
/// for its C functions, else the bare C symbol's family (`libc`).
pub fn origin(name: &str) -> String {
    const ALLOCATOR: [&str; 12] = [
        "malloc",
        "free",
        "realloc",
        "calloc",
        "cfree",
        "_int_malloc",
        "_int_free",
        "_int_realloc",
        "malloc_consolidate",
        "unlink_chunk",
        "sysmalloc",
        "tcache",
    ];
    let bare = name.split(['.', '@']).next().unwrap_or(name);
    if ALLOCATOR.contains(&bare)
        || name.starts_with("mi_")
        || name.starts_with("_mi_")
        || name.starts_with("__rustc::__rd")
        || name.starts_with("__rustc::__rust_")
    {
        return "malloc".into();
    }
    if name.starts_with("rd_") {
        return "librdkafka".into();
    }
    if !name.contains("::") {
        return if name.starts_with("__mem") || name.starts_with("__str") {
            "libc (mem*, str*)"
        } else {
            "libc and other C"
        }
        .into();
    }
    let path = name.trim_start_matches(['<', '&', '*']).trim_start_matches("dyn ").trim_start_matches("mut ");
    path.split("::").next().unwrap_or(path).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
version: 1
positions: line
events: Ir
summary: 1000
fl=(1) a.rs
fn=(1) main
1 100
cfl=(1)
cfn=(2) work
calls=2 0
1 600
cfn=(3) log
calls=1 0
2 300
fn=(2)
3 400
cfn=(3)
calls=1 0
3 200
fn=(3)
4 500
totals: 1000
";

    #[test]
    fn reads_self_and_call_costs_and_folds_them_into_stacks() {
        let p = Profile::parse(SAMPLE).unwrap();
        assert_eq!(p.names, ["main", "work", "log"]);
        assert_eq!(p.self_cost, [100, 400, 500]);
        assert_eq!((p.total, p.inclusive(0), p.inclusive(1)), (1000, 1000, 600));
        // `log` under `work` is counted once, inside `work`.
        assert_eq!(p.inclusive_matching("o"), 900);
        assert_eq!(p.inclusive_matching("log"), 500);
        assert_eq!(p.folded(), ["main 100", "main;log 300", "main;work 400", "main;work;log 200"]);
        assert_eq!(p.top_self(1), [("log", 500, 500)]);
    }

    #[test]
    fn functions_are_grouped_by_their_crate() {
        assert_eq!(
            origin(
                "<tracing_opentelemetry::layer::OpenTelemetryLayer<S,T> as tracing_subscriber::layer::Layer<S>>::on_enter"
            ),
            "tracing_opentelemetry"
        );
        assert_eq!(origin("hyper::proto::h1::role::parse_headers"), "hyper");
        assert_eq!(origin("_int_free"), "malloc");
        assert_eq!(origin("mi_free"), "malloc");
        assert_eq!(origin("__rustc::__rdl_alloc"), "malloc");
        assert_eq!(origin("unlink_chunk.constprop.0"), "malloc");
        assert_eq!(origin("rd_kafka_broker_serve"), "librdkafka");
        assert_eq!(origin("__memcpy_avx_unaligned_erms"), "libc (mem*, str*)");
    }
}
