//! Replicas of one function of one tenant, second by second: the runner's [`Decider`] (Knative's
//! KPA) fed with concurrency = arrival rate × latency (Little's law), and the rule that takes the
//! last replica away ([`ZeroRule`]) — the one place that knows Knative's scale-to-zero timers.

use runner::autoscaler::{Decider, Scaling, TICK};
use std::time::{Duration, Instant};

/// When the last replica of a scale-to-zero function goes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ZeroRule {
    /// Always-on: never (min-scale ≥ 1 keeps it anyway).
    Never,
    /// The local runner as it runs now: once no request arrived for `idle`, whatever the
    /// autoscaler wants (`runner::activator::reconcile`).
    Idle(Duration),
    /// Knative: the autoscaler wants zero only after a stable window without requests; the last
    /// pod then stays the longer of the grace period (`scale-to-zero-grace-period`, 30 s by
    /// default) and the overlay's `scale-to-zero-pod-retention-period`.
    Knative { grace: Duration, retention: Duration },
}

/// Knative's `scale-to-zero-grace-period` default (config-autoscaler).
pub const GRACE: Duration = Duration::from_secs(30);

impl ZeroRule {
    /// Knative's rule for an overlay's scaling (always-on when min-scale ≥ 1).
    pub fn knative(scaling: &Scaling) -> ZeroRule {
        if scaling.min_scale > 0 {
            ZeroRule::Never
        } else {
            ZeroRule::Knative { grace: GRACE, retention: scaling.retention.unwrap_or(Duration::ZERO) }
        }
    }
}

/// One function of one tenant.
#[derive(Debug)]
pub struct Replicas {
    decider: Decider,
    rule: ZeroRule,
    /// Requests in flight per request per second: the function's latency in seconds.
    latency_s: f64,
    start: Instant,
    now: u64,
    replicas: u32,
    desired: u32,
    /// Seconds since the last request arrived.
    idle_s: u64,
    /// Since when the autoscaler has wanted zero (Knative rule).
    zero_since: Option<u64>,
}

/// What one second did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Second {
    /// Replicas running through the second.
    pub replicas: u32,
    /// Replicas started.
    pub starts: u32,
    /// Whether a request found no replica (a start from zero the activator held it for).
    pub from_zero: bool,
}

impl Replicas {
    pub fn new(scaling: &Scaling, container_concurrency: u32, latency_s: f64, rule: ZeroRule) -> Replicas {
        let replicas = scaling.min_scale;
        Replicas {
            decider: Decider::new(scaling, container_concurrency),
            rule,
            latency_s,
            start: Instant::now(),
            now: 0,
            replicas,
            desired: replicas,
            idle_s: u64::MAX / 2,
            zero_since: None,
        }
    }

    /// One second with `rate` requests per second arriving.
    pub fn step(&mut self, rate: f64) -> Second {
        let before = self.replicas;
        if rate > 0.0 {
            self.idle_s = 0;
        } else {
            self.idle_s = self.idle_s.saturating_add(1);
        }
        // A request that finds no replica makes the activator ask for one at once.
        let from_zero = before == 0 && rate > 0.0;
        if self.now.is_multiple_of(TICK.as_secs()) {
            let now = self.start + Duration::from_secs(self.now);
            self.desired = self.decider.decide(self.replicas, now).desired;
        }
        self.decider.record(rate * self.latency_s);
        self.now += 1;
        self.replicas = self.wanted(rate);
        Second { replicas: self.replicas, starts: self.replicas.saturating_sub(before), from_zero }
    }

    fn wanted(&mut self, rate: f64) -> u32 {
        let busy = rate > 0.0;
        match self.rule {
            ZeroRule::Never => self.desired.max(1),
            ZeroRule::Idle(idle) => {
                if !busy && self.idle_s >= idle.as_secs() {
                    0
                } else if busy || self.replicas > 0 {
                    self.desired.max(1)
                } else {
                    0
                }
            }
            ZeroRule::Knative { grace, retention } => {
                if self.desired > 0 || busy {
                    self.zero_since = None;
                    return self.desired.max(1);
                }
                let since = *self.zero_since.get_or_insert(self.now);
                let hold = grace.max(retention).as_secs();
                if self.replicas > 0 && self.now - since < hold { 1 } else { 0 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(min_scale: u32) -> Scaling {
        Scaling { min_scale, target: 10.0, max_scale: 10, ..Scaling::default() }
    }

    /// Seconds of `rate` then seconds of nothing; the replicas of each second.
    fn run(r: &mut Replicas, busy: u64, idle: u64, rate: f64) -> Vec<Second> {
        let mut seconds: Vec<Second> = (0..busy).map(|_| r.step(rate)).collect();
        seconds.extend((0..idle).map(|_| r.step(0.0)));
        seconds
    }

    #[test]
    fn a_burst_scales_out_by_littles_law() {
        // 700 requests/s × 50 ms = 35 in flight; target 10 at 70 % → ceil(35 / 7) = 5.
        let mut r = Replicas::new(&scaling(1), 0, 0.05, ZeroRule::Never);
        let seconds = run(&mut r, 30, 0, 700.0);
        assert_eq!(seconds.last().unwrap().replicas, 5);
        assert_eq!(seconds.iter().map(|s| s.starts).sum::<u32>(), 4, "from one to five");
    }

    #[test]
    fn knative_zero_comes_a_stable_window_and_the_grace_period_after_the_last_request() {
        let scaling = Scaling { retention: Some(Duration::from_secs(10)), ..scaling(0) };
        let mut r = Replicas::new(&scaling, 0, 0.05, ZeroRule::knative(&scaling));
        let seconds = run(&mut r, 10, 200, 100.0);
        assert!(seconds[0].from_zero && seconds[0].replicas == 1);
        let last_up = seconds.iter().rposition(|s| s.replicas > 0).unwrap();
        // 10 s busy, the 60 s stable window to empty, the 30 s grace (over 10 s retention),
        // within a 2 s tick.
        assert!((98..=102).contains(&last_up), "{last_up}");
    }

    #[test]
    fn the_runners_idle_rule_ignores_the_stable_window() {
        let mut r = Replicas::new(&scaling(0), 0, 0.05, ZeroRule::Idle(Duration::from_secs(10)));
        let seconds = run(&mut r, 10, 60, 100.0);
        assert_eq!(seconds.iter().rposition(|s| s.replicas > 0), Some(18), "idle 10 s after second 9");
        // Comes back from zero on the next request.
        assert!(r.step(100.0).from_zero);
    }

    #[test]
    fn always_on_keeps_one_replica() {
        let mut r = Replicas::new(&scaling(1), 0, 0.05, ZeroRule::Never);
        assert!(run(&mut r, 0, 300, 0.0).iter().all(|s| s.replicas == 1 && s.starts == 0));
    }
}
