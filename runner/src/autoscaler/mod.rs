//! How many replicas a function wants, decided as Knative's KPA decides it
//! (`pkg/autoscaler/scaling/autoscaler.go`, Knative 1.x), from the concurrency the activator
//! observes:
//!
//! - every second the activator records the time-weighted average number of requests in flight
//!   to the function (as queue-proxy reports it); the stable value is the average over the
//!   stable window, the panic value over the panic window (its percentage of the stable one);
//! - every tick (2 s) the desired count is `ceil(value / (target × utilization))` for both
//!   values, each kept within `[floor(ready / 2), ceil(ready × 1000)]` (the default scale-down
//!   and scale-up rates);
//! - when the panic count reaches the panic threshold times the ready replicas, the autoscaler
//!   panics: it follows the larger count and never scales down, until the panic count has stayed
//!   below the threshold for a whole stable window;
//! - min-scale and max-scale bound the result.
//!
//! Left out: the RPS metric, `target-burst-capacity` (the local activator is always in the
//! request path), `scale-down-delay`, `initial-scale` and `activation-scale` (a function starts
//! with one replica, or min-scale). Scaling to zero is the activator's idle rule, not this.
//! The settings come from the scaling annotations ([`annotations`]).

pub mod annotations;

pub use annotations::{Scaling, overlay_annotations};
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// Knative's `tick-interval`: how often the autoscaler decides.
pub const TICK: Duration = Duration::from_secs(2);
/// Knative's `max-scale-up-rate` and `max-scale-down-rate` defaults.
const MAX_SCALE_UP_RATE: f64 = 1000.0;
const MAX_SCALE_DOWN_RATE: f64 = 2.0;

/// One function's decider.
#[derive(Debug)]
pub struct Decider {
    /// Requests in flight per replica that the autoscaler aims for (target × utilization).
    target: f64,
    panic_threshold: f64,
    stable_window: Duration,
    stable_seconds: usize,
    panic_seconds: usize,
    min_scale: u32,
    max_scale: u32,
    /// The average concurrency of each second recorded, newest last, a stable window of them.
    seconds: VecDeque<f64>,
    /// When the panic count last was over the threshold, while panicking.
    panic_since: Option<Instant>,
    max_panic: u32,
}

/// What one tick decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Replicas wanted, within min-scale and max-scale (0 only when min-scale is 0).
    pub desired: u32,
    pub panic: bool,
    pub stable: f64,
    pub panic_value: f64,
}

impl Decider {
    /// `container_concurrency` (0: no limit) caps the target, as Knative does.
    pub fn new(scaling: &Scaling, container_concurrency: u32) -> Decider {
        let mut target = scaling.target;
        if container_concurrency > 0 {
            target = target.min(f64::from(container_concurrency));
        }
        let stable_seconds = scaling.stable_window.as_secs().max(1) as usize;
        let panic_window = scaling.stable_window.as_secs_f64() * scaling.panic_window_percentage / 100.0;
        Decider {
            target: (target * scaling.target_utilization / 100.0).max(0.01),
            panic_threshold: scaling.panic_threshold_percentage / 100.0,
            stable_window: scaling.stable_window,
            stable_seconds,
            panic_seconds: (panic_window.round() as usize).clamp(1, stable_seconds),
            min_scale: scaling.min_scale,
            max_scale: scaling.max_scale,
            seconds: VecDeque::new(),
            panic_since: None,
            max_panic: 0,
        }
    }

    /// Records the average number of requests in flight over the second that just ended.
    pub fn record(&mut self, concurrency: f64) {
        if self.seconds.len() == self.stable_seconds {
            self.seconds.pop_front();
        }
        self.seconds.push_back(concurrency);
    }

    /// The average of the last `n` seconds recorded (of fewer, while fewer were).
    fn average(&self, n: usize) -> f64 {
        let n = n.min(self.seconds.len());
        if n == 0 {
            return 0.0;
        }
        self.seconds.iter().rev().take(n).sum::<f64>() / n as f64
    }

    /// The replicas wanted now, `ready` replicas serving.
    pub fn decide(&mut self, ready: u32, now: Instant) -> Decision {
        let ready_count = f64::from(ready.max(1));
        let stable = self.average(self.stable_seconds);
        let panic_value = self.average(self.panic_seconds);
        let max_up = (MAX_SCALE_UP_RATE * ready_count).ceil();
        let max_down = (ready_count / MAX_SCALE_DOWN_RATE).floor();
        let stable_count = (stable / self.target).ceil();
        let panic_count = (panic_value / self.target).ceil();
        let desired_stable = stable_count.max(max_down).min(max_up) as u32;
        let desired_panic = panic_count.max(max_down).min(max_up) as u32;

        let over_threshold = panic_count / ready_count >= self.panic_threshold;
        if over_threshold {
            self.panic_since = Some(now);
        } else if self.panic_since.is_some_and(|since| since + self.stable_window < now) {
            self.panic_since = None;
            self.max_panic = 0;
        }
        let mut desired = desired_stable;
        if self.panic_since.is_some() {
            // Never down while panicking.
            self.max_panic = self.max_panic.max(desired_stable.max(desired_panic));
            desired = self.max_panic;
        }
        if self.max_scale > 0 {
            desired = desired.min(self.max_scale);
        }
        Decision {
            desired: desired.max(self.min_scale),
            panic: self.panic_since.is_some(),
            stable,
            panic_value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaling(target: f64, stable_window_s: u64) -> Scaling {
        Scaling {
            target,
            stable_window: Duration::from_secs(stable_window_s),
            max_scale: 10,
            ..Scaling::default()
        }
    }

    /// Records `seconds` seconds of `concurrency`, deciding every tick as the activator does.
    fn run(
        decider: &mut Decider,
        ready: &mut u32,
        now: &mut Instant,
        seconds: u64,
        concurrency: f64,
    ) -> Decision {
        let mut last = decider.decide(*ready, *now);
        for s in 1..=seconds {
            decider.record(concurrency);
            *now += Duration::from_secs(1);
            if s % TICK.as_secs() == 0 {
                last = decider.decide(*ready, *now);
                *ready = last.desired;
            }
        }
        last
    }

    #[test]
    fn steady_load_asks_for_concurrency_over_target_times_utilization() {
        // target 10 at 70 %: 7 in flight per replica; 30 in flight → ceil(30 / 7) = 5.
        let mut d = Decider::new(&scaling(10.0, 60), 0);
        let (mut ready, mut now) = (5, Instant::now());
        let decision = run(&mut d, &mut ready, &mut now, 60, 30.0);
        assert_eq!(decision, Decision { desired: 5, panic: false, stable: 30.0, panic_value: 30.0 });
    }

    #[test]
    fn a_burst_panics_within_the_panic_window_and_scales_up_at_once() {
        let mut d = Decider::new(&scaling(10.0, 60), 0);
        let (mut ready, mut now) = (1, Instant::now());
        // Two seconds of 35 in flight: the 6 s panic window sees 35, the stable one 35 too (only
        // two seconds recorded) — 5 replicas at once, over the threshold of 2 × 1 ready.
        let decision = run(&mut d, &mut ready, &mut now, 2, 35.0);
        assert!(decision.panic, "{decision:?}");
        assert_eq!(decision.desired, 5);
    }

    #[test]
    fn panic_never_scales_down_and_ends_a_stable_window_after_the_surge() {
        let mut d = Decider::new(&scaling(10.0, 20), 0);
        let (mut ready, mut now) = (1, Instant::now());
        assert_eq!(run(&mut d, &mut ready, &mut now, 4, 35.0).desired, 5);
        // The load drops to 7 in flight (one replica's worth): still 5 while panicking…
        let during = run(&mut d, &mut ready, &mut now, 10, 7.0);
        assert_eq!((during.desired, during.panic), (5, true));
        // …and a stable window after the panic count fell under the threshold, back down
        // (at most halving per tick).
        let after = run(&mut d, &mut ready, &mut now, 40, 7.0);
        assert_eq!((after.desired, after.panic), (1, false), "{after:?}");
    }

    #[test]
    fn no_load_goes_to_min_scale_and_bounds_hold() {
        let mut d = Decider::new(&Scaling { min_scale: 1, ..scaling(10.0, 6) }, 0);
        let (mut ready, mut now) = (1, Instant::now());
        assert_eq!(run(&mut d, &mut ready, &mut now, 6, 1000.0).desired, 10, "max-scale");
        assert_eq!(run(&mut d, &mut ready, &mut now, 60, 0.0).desired, 1, "min-scale");
        let mut zero = Decider::new(&scaling(10.0, 6), 0);
        assert_eq!(run(&mut zero, &mut 1, &mut now, 6, 0.0).desired, 0);
    }

    #[test]
    fn scale_down_is_at_most_half_per_tick() {
        let mut d = Decider::new(&scaling(1.0, 6), 0);
        d.record(0.0);
        assert_eq!(d.decide(8, Instant::now()).desired, 4);
    }

    #[test]
    fn container_concurrency_caps_the_target() {
        // target 100 but 2 requests per replica at most: 2 × 70 % = 1.4 per replica.
        let mut d = Decider::new(&scaling(100.0, 60), 2);
        d.record(13.0);
        assert_eq!(d.decide(10, Instant::now()).desired, 10);
    }
}
