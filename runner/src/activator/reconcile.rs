//! The reconcile loop: every 250 ms each function's replicas are compared with the number
//! wanted ([`replicas_wanted`]) — the autoscaler's decision, within min-scale and max-scale —
//! and replicas are started or drained to match ([`step`]). In scale-to-zero every replica goes
//! once no request has been in flight for the idle period.
//!
//! On Knative the idle period is the `scale-to-zero-pod-retention-period` annotation, but the
//! autoscaler only decides to scale to zero after its stable window (60 s by default) without
//! traffic, so a real pod idles at least that long. Here the retention period (or
//! `--idle-period-ms`) alone decides, so short experiments can use a few seconds.

use super::{
    Gate,
    pool::{Replica, State},
    stopped,
};
use crate::autoscaler::TICK;
use std::{
    process::ExitStatus,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio::{sync::watch, time::Instant};

/// How often each function's replicas are checked (exits, the idle period, the wanted count).
const RECONCILE: Duration = Duration::from_millis(250);

/// What a round reads of one function's replicas and requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Snapshot {
    /// Requests at the activator, waiting for a replica or proxied.
    pub in_flight: usize,
    /// Processes alive: starting, ready and draining.
    pub alive: u32,
    pub ready: u32,
    pub starting: u32,
    /// Since the last request ended (or a replica got ready).
    pub idle_for: Duration,
}

/// How many replicas the function should have: the autoscaler's `desired` count, at least
/// `floor` (min-scale, and one in always-on) and at least one while a request waits or a replica
/// runs; only `floor` once the idle period (`idle`, scale-to-zero only) has passed with nothing
/// in flight.
pub(super) fn replicas_wanted(now: &Snapshot, desired: u32, floor: u32, idle: Option<Duration>) -> u32 {
    let idle_expired = idle.is_some_and(|idle| now.in_flight == 0 && now.idle_for >= idle);
    if idle_expired {
        floor
    } else if now.in_flight > 0 || now.alive > 0 {
        desired.max(floor).max(1)
    } else {
        desired.max(floor)
    }
}

/// What a round does about the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Hold,
    /// Start this many more.
    Start(u32),
    /// Take this many ready replicas out of the routing and drain them.
    Drain(u32),
}

/// The step from `now` to `wanted` replicas (ready and starting ones count). Nothing before the
/// first replicas are up (`armed`: the runner starts those in dependency order), no start while
/// a failed one backs off (`may_start`), and only ready replicas can be drained.
pub(super) fn step(wanted: u32, now: &Snapshot, armed: bool, may_start: bool) -> Step {
    let have = now.ready + now.starting;
    if !armed {
        Step::Hold
    } else if wanted > have {
        if may_start { Step::Start(wanted - have) } else { Step::Hold }
    } else {
        match (have - wanted).min(now.ready) {
            0 => Step::Hold,
            surplus => Step::Drain(surplus),
        }
    }
}

impl State {
    fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            in_flight: self.in_flight,
            alive: self.alive,
            ready: self.ready.len() as u32,
            starting: self.starting,
            idle_for: now.saturating_duration_since(self.idle_since),
        }
    }
}

impl Gate {
    /// Every 250 ms a [`Gate::round`]; then replicas that exited are recorded and the surplus
    /// drained.
    pub(super) async fn reconcile(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stopped(&mut shutdown) => return,
                _ = tokio::time::sleep(RECONCILE) => {}
            }
            let (exited, drain) = self.round();
            for (pid, status) in exited {
                self.exited(pid, Some(status));
            }
            if !drain.is_empty() {
                tracing::info!(function = %self.name, replicas = drain.len(), "Scaling down: draining replicas");
            }
            for replica in drain {
                tokio::spawn(self.clone().drain(replica));
            }
        }
    }

    /// Under the state's lock: takes the replicas that exited on their own out of the routing
    /// (they are replaced), samples the concurrency each second, asks the autoscaler each tick,
    /// and starts replicas or takes the surplus out of the routing as [`step`] says. Returns the
    /// replicas that exited and those to drain.
    fn round(self: &Arc<Self>) -> (Vec<(Option<u32>, ExitStatus)>, Vec<Replica>) {
        let mut state = self.state();
        let mut exited = Vec::new();
        let mut i = 0;
        while i < state.ready.len() {
            if let Some(status) = state.ready[i].process.exited() {
                let replica = state.ready.remove(i);
                tracing::warn!(function = %self.name, pid = replica.process.pid, %status, "Replica exited on its own; replacing it");
                exited.push((replica.process.pid, status));
            } else {
                i += 1;
            }
        }
        let now = Instant::now();
        self.sample(&mut state, now);
        self.decide(&mut state, now);
        let snapshot = state.snapshot(now);
        let wanted = replicas_wanted(&snapshot, state.desired, self.floor(), self.idle);
        let drain = match step(wanted, &snapshot, self.armed.load(Ordering::Relaxed), state.may_start(now)) {
            Step::Hold => Vec::new(),
            Step::Start(n) => {
                self.launch(&mut state, n);
                Vec::new()
            }
            Step::Drain(n) => {
                let keep = state.ready.len() - n as usize;
                state.ready.split_off(keep)
            }
        };
        (exited, drain)
    }

    /// Once a second: the average concurrency since the last sample, to the autoscaler.
    fn sample(&self, state: &mut State, now: Instant) {
        if now - state.sampled >= Duration::from_secs(1) {
            state.flush(now);
            let concurrency = state.area / (now - state.sampled).as_secs_f64();
            state.area = 0.0;
            state.sampled = now;
            self.decider.lock().expect("decider lock").record(concurrency);
        }
    }

    /// Once a tick: the autoscaler's decision; a change is logged, recorded and exported.
    fn decide(&self, state: &mut State, now: Instant) {
        if now - state.decided < TICK {
            return;
        }
        state.decided = now;
        let ready = state.ready.len() as u32;
        let decision = self.decider.lock().expect("decider lock").decide(ready, now.into_std());
        if decision.desired != state.desired {
            tracing::info!(function = %self.name, desired = decision.desired, replicas = state.alive, panic = decision.panic, stable = decision.stable, panic_value = decision.panic_value, "Autoscaler decision");
            self.events.scale(&self.name, state.alive, decision.desired, decision.panic);
            common::metrics::get()
                .desired_replicas
                .get_or_create(&self.labels)
                .set(i64::from(decision.desired));
            state.desired = decision.desired;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(in_flight: usize, alive: u32, ready: u32, starting: u32, idle_for_s: u64) -> Snapshot {
        Snapshot { in_flight, alive, ready, starting, idle_for: Duration::from_secs(idle_for_s) }
    }

    #[test]
    fn replicas_wanted_follow_the_autoscaler_within_the_floor_and_the_idle_rule() {
        let idle = Some(Duration::from_secs(30));
        // (snapshot, desired, floor, idle) → wanted
        let cases = [
            // Always-on (no idle period, floor ≥ 1): the autoscaler's count, never under the floor.
            (snapshot(0, 1, 1, 0, 600), 0, 1, None, 1),
            (snapshot(40, 2, 2, 0, 0), 5, 1, None, 5),
            (snapshot(0, 3, 3, 0, 600), 2, 2, None, 2),
            // Scale-to-zero: nothing running, nothing asked for: none.
            (snapshot(0, 0, 0, 0, 5), 0, 0, idle, 0),
            // A request waiting or a replica running keeps one at least…
            (snapshot(1, 0, 0, 0, 0), 0, 0, idle, 1),
            (snapshot(0, 1, 1, 0, 10), 0, 0, idle, 1),
            // …until the idle period has passed with nothing in flight: down to the floor.
            (snapshot(0, 1, 1, 0, 30), 3, 0, idle, 0),
            (snapshot(0, 4, 4, 0, 31), 4, 2, idle, 2),
            // A request in flight: the idle period does not count.
            (snapshot(2, 1, 1, 0, 300), 0, 0, idle, 1),
            (snapshot(20, 1, 1, 0, 300), 4, 0, idle, 4),
        ];
        for (now, desired, floor, idle, expected) in cases {
            assert_eq!(
                replicas_wanted(&now, desired, floor, idle),
                expected,
                "{now:?}, desired {desired}, floor {floor}, idle {idle:?}"
            );
        }
    }

    #[test]
    fn the_step_starts_the_missing_and_drains_the_surplus_ready_ones() {
        // (wanted, snapshot, armed, may_start) → step
        let cases = [
            (3, snapshot(0, 1, 1, 0, 0), false, true, Step::Hold),
            (3, snapshot(0, 1, 1, 0, 0), true, true, Step::Start(2)),
            (3, snapshot(0, 2, 1, 1, 0), true, true, Step::Start(1)),
            (3, snapshot(0, 1, 1, 0, 0), true, false, Step::Hold),
            (2, snapshot(0, 2, 1, 1, 0), true, true, Step::Hold),
            (1, snapshot(0, 4, 4, 0, 0), true, true, Step::Drain(3)),
            (0, snapshot(0, 4, 4, 0, 0), true, false, Step::Drain(4)),
            // Starting replicas cannot be drained: only the ready ones go.
            (1, snapshot(0, 3, 1, 2, 0), true, true, Step::Drain(1)),
            (0, snapshot(0, 2, 0, 2, 0), true, true, Step::Hold),
            (0, snapshot(0, 0, 0, 0, 0), true, true, Step::Hold),
        ];
        for (wanted, now, armed, may_start, expected) in cases {
            assert_eq!(
                step(wanted, &now, armed, may_start),
                expected,
                "wanted {wanted}, {now:?}, armed {armed}, may start {may_start}"
            );
        }
    }
}
