//! The replica pool: a function's processes, each on a loopback port of its own. A replica
//! starts on a free port (on another if a program takes it first, three ports at most), joins
//! the routing once its readiness probe answers, and leaves it when it exits on its own (it is
//! replaced) or is no longer wanted: then it drains its requests in flight and gets SIGTERM.
//! A failed start is retried after a [`backoff`].

use super::Gate;
use crate::{
    events::Events,
    functions::{self, Process, READY_TIMEOUT, StartError},
};
use anyhow::Context;
use std::{
    process::ExitStatus,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;

/// How long a replica that is no longer wanted may take to finish its requests in flight: the
/// Services' `timeoutSeconds`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The backoff after a failed start, doubling per failure in a row up to the maximum.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How many ports a replica start tries when another program takes the one chosen before the
/// replica binds it.
const PORT_TRIES: u32 = 3;

pub(super) struct State {
    /// Ready replicas, in start order; requests go only to these.
    pub(super) ready: Vec<Replica>,
    /// Replicas asked for and not yet ready (or failed).
    pub(super) starting: u32,
    /// Processes alive: starting, ready and draining.
    pub(super) alive: u32,
    /// Requests at the activator, waiting for a replica or proxied.
    pub(super) in_flight: usize,
    /// ∫ in_flight dt since `sampled`.
    pub(super) area: f64,
    pub(super) last_change: Instant,
    pub(super) sampled: Instant,
    pub(super) decided: Instant,
    /// When `in_flight` last dropped to zero (or a replica got ready).
    pub(super) idle_since: Instant,
    /// The autoscaler's last decision.
    pub(super) desired: u32,
    /// Starts that failed so far: a request waiting for a start gives up when one fails and
    /// nothing else is on its way.
    pub(super) failed_starts: u64,
    /// Starts that failed since the last replica got ready, the last one's error, and when the
    /// next may be tried (a backoff as for a crash-looping container: 1 s doubling to 1 min).
    pub(super) failures_in_a_row: u32,
    pub(super) last_error: Option<String>,
    pub(super) retry_at: Option<Instant>,
    pub(super) stopping: bool,
}

pub(super) struct Replica {
    pub(super) load: Arc<Load>,
    pub(super) process: Process,
}

/// What requests need of a replica: where it listens and how busy it is.
pub(super) struct Load {
    pub(super) port: u16,
    pub(super) in_flight: AtomicUsize,
}

impl State {
    pub(super) fn new(now: Instant) -> State {
        State {
            ready: Vec::new(),
            starting: 0,
            alive: 0,
            in_flight: 0,
            area: 0.0,
            last_change: now,
            sampled: now,
            decided: now,
            idle_since: now,
            desired: 0,
            failed_starts: 0,
            failures_in_a_row: 0,
            last_error: None,
            retry_at: None,
            stopping: false,
        }
    }

    /// Whether a new replica may be started now.
    pub(super) fn may_start(&self, now: Instant) -> bool {
        !self.stopping && self.retry_at.is_none_or(|at| now >= at)
    }

    /// Why the function cannot serve, for the error a request gets.
    pub(super) fn failing(&self, name: &str) -> String {
        format!(
            "{name} failed to start {} time(s) in a row: {}",
            self.failures_in_a_row,
            self.last_error.as_deref().unwrap_or("no error recorded")
        )
    }

    /// Adds the time since the last change to the concurrency integral.
    pub(super) fn flush(&mut self, now: Instant) {
        self.area += self.in_flight as f64 * (now - self.last_change).as_secs_f64();
        self.last_change = now;
    }
}

/// The replica a request goes to, given each ready replica's requests in flight: the least busy
/// of those with room for one more (`limit` each, 0: no limit), the first of equals; `None` when
/// none has room.
pub(super) fn least_busy(in_flight: impl Iterator<Item = usize>, limit: usize) -> Option<usize> {
    in_flight.enumerate().filter(|(_, n)| limit == 0 || *n < limit).min_by_key(|(_, n)| *n).map(|(i, _)| i)
}

/// The wait before the next start after `failures` failed starts in a row, as for a
/// crash-looping container: 1 s, doubling per failure, at most 1 min.
pub(super) fn backoff(failures: u32) -> Duration {
    BACKOFF_FIRST.saturating_mul(1 << failures.min(16).saturating_sub(1)).min(BACKOFF_MAX)
}

/// Whether a replica start tries again after one try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Restart {
    /// Another program took the port: try a new one at once.
    OnAnotherPort,
    /// The start failed; the next waits for the [`backoff`].
    No,
}

/// What follows try number `tries` (from 1) of a replica start failing with `error`.
pub(super) fn after_start_failure(error: &StartError, tries: u32) -> Restart {
    match error {
        StartError::PortTaken { .. } if tries < PORT_TRIES => Restart::OnAnotherPort,
        _ => Restart::No,
    }
}

impl Gate {
    /// The least busy ready replica with room for one more request, marked busier; `true` if
    /// the request had to wait for a replica to start.
    pub(super) async fn replica(self: &Arc<Self>, arrived: Instant) -> anyhow::Result<(Arc<Load>, bool)> {
        let deadline = arrived + READY_TIMEOUT + Duration::from_secs(5);
        let mut cold = false;
        let mut failures = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state();
                let loads = state.ready.iter().map(|r| r.load.in_flight.load(Ordering::Relaxed));
                if let Some(i) = least_busy(loads, self.container_concurrency) {
                    let load = &state.ready[i].load;
                    load.in_flight.fetch_add(1, Ordering::Relaxed);
                    return Ok((load.clone(), cold));
                }
                let failed = *failures.get_or_insert(state.failed_starts);
                let nothing_coming = state.ready.is_empty() && state.starting == 0;
                if nothing_coming && (state.failed_starts > failed || !state.may_start(Instant::now())) {
                    anyhow::bail!(
                        "{}; see {}",
                        state.failing(&self.name),
                        self.functions.log_file(&self.name).display()
                    );
                }
                if state.ready.is_empty() {
                    cold = true;
                    if state.starting == 0 {
                        self.launch(&mut state, 1);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!("no replica of {} was ready within {:?}", self.name, deadline - arrived);
            }
        }
    }

    /// Starts `n` more replicas in the background.
    pub(super) fn launch(self: &Arc<Self>, state: &mut State, n: u32) {
        state.starting += n;
        for _ in 0..n {
            tokio::spawn(self.clone().start_replica());
        }
    }

    /// Executes one replica and waits for it to get ready, on a new port if another program
    /// took the first one chosen (at most [`PORT_TRIES`] ports).
    async fn ready_replica(self: &Arc<Self>) -> anyhow::Result<(Process, Duration)> {
        let function = self.functions.get(&self.name)?;
        let mut tries = 0;
        loop {
            tries += 1;
            let port = functions::free_port().context("finding a free loopback port")?;
            let mut process = self.functions.exec(function, port)?;
            {
                let mut state = self.state();
                state.alive += 1;
                self.recorded(&state, |events, alive| events.start(&self.name, process.pid, alive));
            }
            let error = match self.functions.wait_ready(function, &mut process).await {
                Ok(took) => return Ok((process, took)),
                Err(e) => e,
            };
            let pid = process.pid;
            self.exited(pid, process.reap().await.ok());
            match after_start_failure(&error, tries) {
                Restart::OnAnotherPort => {
                    tracing::warn!(function = %self.name, port, tries, "A replica's port was taken before it listened; trying another")
                }
                Restart::No => return Err(error.into()),
            }
        }
    }

    async fn start_replica(self: Arc<Self>) {
        let started = self.ready_replica().await;
        {
            let mut state = self.state();
            state.starting -= 1;
            match started {
                Ok((process, took)) => {
                    let pid = process.pid;
                    tracing::info!(function = %self.name, port = process.port, pid, ready_ms = took.as_millis() as u64, replicas = state.alive, "Replica ready");
                    self.recorded(&state, |events, alive| events.ready(&self.name, pid, took, alive));
                    let load = Arc::new(Load { port: process.port, in_flight: AtomicUsize::new(0) });
                    state.ready.push(Replica { load, process });
                    state.idle_since = Instant::now();
                    (state.failures_in_a_row, state.last_error, state.retry_at) = (0, None, None);
                }
                Err(e) => {
                    state.failed_starts += 1;
                    state.failures_in_a_row += 1;
                    let backoff = backoff(state.failures_in_a_row);
                    state.retry_at = Some(Instant::now() + backoff);
                    state.last_error = Some(format!("{e:#}"));
                    tracing::error!(function = %self.name, error = format!("{e:#}"), failures_in_a_row = state.failures_in_a_row, retry_in_ms = backoff.as_millis() as u64, "Starting a replica failed");
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Records that a process of this function is gone, with its exit status if known.
    pub(super) fn exited(&self, pid: Option<u32>, status: Option<ExitStatus>) {
        {
            let mut state = self.state();
            state.alive -= 1;
            self.events.exit(&self.name, pid, status);
            self.recorded(&state, |events, alive| events.stop(&self.name, pid, alive));
        }
        self.changed.notify_waiters();
    }

    /// Writes an event and the replica gauge with the count `state` holds, under its lock, so
    /// both follow the starts and stops in order.
    fn recorded(&self, state: &State, record: impl FnOnce(&Events, u32)) {
        common::metrics::get().replicas.get_or_create(&self.labels).set(i64::from(state.alive));
        record(&self.events, state.alive);
    }

    /// Waits until `n` replicas are ready (starting what is missing).
    pub(super) async fn wait_replicas(self: &Arc<Self>, n: u32, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let failed = self.state().failed_starts;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state();
                if state.ready.len() as u32 >= n {
                    return Ok(());
                }
                if state.failed_starts > failed {
                    anyhow::bail!(
                        "{}; see {}",
                        state.failing(&self.name),
                        self.functions.log_file(&self.name).display()
                    );
                }
                let missing = n.saturating_sub(state.ready.len() as u32 + state.starting);
                if missing > 0 {
                    self.launch(&mut state, missing);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!("{} had no {n} ready replicas within {timeout:?}", self.name);
            }
        }
    }

    /// Waits for the replica's requests in flight to end, then stops its process.
    pub(super) async fn drain(self: Arc<Self>, replica: Replica) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while replica.load.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if replica.load.in_flight.load(Ordering::Relaxed) == 0 {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
        let pid = replica.process.pid;
        let status = replica.process.stop(&self.name).await;
        if let Err(e) = &status {
            tracing::warn!(function = %self.name, error = %e, "Stopping a replica failed");
        }
        self.exited(pid, status.ok());
    }

    /// At shutdown: no more starts; every replica — ready, starting or already draining — is
    /// drained and stopped before this returns.
    pub(super) async fn stop_all(self: &Arc<Self>) {
        self.state().stopping = true;
        let deadline = Instant::now() + READY_TIMEOUT + DRAIN_TIMEOUT + Duration::from_secs(30);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (ready, gone) = {
                let mut state = self.state();
                (std::mem::take(&mut state.ready), state.alive == 0 && state.starting == 0)
            };
            if gone {
                return;
            }
            for replica in ready {
                tokio::spawn(self.clone().drain(replica));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(function = %self.name, "Replicas still alive at the end of the shutdown");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_request_goes_to_the_least_busy_replica_with_room() {
        let cases: [(&[usize], usize, Option<usize>); 8] = [
            (&[], 0, None),
            (&[0], 0, Some(0)),
            (&[7], 0, Some(0)),
            (&[3, 1, 1], 0, Some(1)),
            (&[5, 0], 0, Some(1)),
            (&[2, 2], 2, None),
            (&[2, 1], 2, Some(1)),
            (&[1, 0, 0], 1, Some(1)),
        ];
        for (in_flight, limit, expected) in cases {
            assert_eq!(
                least_busy(in_flight.iter().copied(), limit),
                expected,
                "{in_flight:?}, limit {limit}"
            );
        }
    }

    #[test]
    fn the_start_backoff_doubles_from_a_second_to_a_minute() {
        let s = Duration::from_secs;
        let cases = [
            (0, s(1)),
            (1, s(1)),
            (2, s(2)),
            (3, s(4)),
            (6, s(32)),
            (7, s(60)),
            (16, s(60)),
            (u32::MAX, s(60)),
        ];
        for (failures, expected) in cases {
            assert_eq!(backoff(failures), expected, "{failures} failures");
        }
    }

    #[test]
    fn only_a_taken_port_is_retried_at_once_and_only_so_often() {
        let taken = StartError::PortTaken { function: "counter".into(), port: 8082 };
        let exited = StartError::Exited {
            function: "counter".into(),
            status: ExitStatus::from_raw(3 << 8),
            log: "counter.log".into(),
        };
        let slow = StartError::NotReady { function: "counter".into(), log: "counter.log".into() };
        let missing = StartError::Exec {
            binary: "bin/counter".into(),
            error: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let cases = [
            (&taken, 1, Restart::OnAnotherPort),
            (&taken, 2, Restart::OnAnotherPort),
            (&taken, 3, Restart::No),
            (&exited, 1, Restart::No),
            (&slow, 1, Restart::No),
            (&missing, 1, Restart::No),
        ];
        for (error, tries, expected) in cases {
            assert_eq!(after_start_failure(error, tries), expected, "{error} after {tries} tries");
        }
    }
}
