//! The runner's events — where it listens, a function process started, became ready, exited,
//! stopped, the autoscaler changed its mind, and requests that waited for a start — kept in
//! memory (for tests) and appended as JSON lines to `--events`, one flushed line per event, so
//! scripts, the fault suite and the energy report can read them during or after a run.

use crate::Ports;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    fs::File,
    io::Write,
    net::SocketAddr,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// One line of the events file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    /// When the event was recorded, unix epoch milliseconds. For `cold_start` that is when the
    /// function's response headers went out, so the request arrived `latency_ms` earlier.
    pub t_ms: u64,
    pub event: EventKind,
    /// The function the event is about; empty (and absent from the line) for `listening`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub function: String,
    /// The function's process id (`start`, `ready`, `exit`, `stop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// `ready`: process exec → readiness probe answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<f64>,
    /// `cold_start`: request arrival at the runner → the function's response headers sent on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// `start`, `ready`, `stop`, `scale`: the function's processes alive right after the event
    /// (one that is starting counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// `scale`: the replicas the autoscaler wants from now on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<u32>,
    /// `scale`: whether the autoscaler is in panic mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic: Option<bool>,
    /// `exit`: the process's exit code, if it exited on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// `exit`: the signal that ended the process (15 after the runner's SIGTERM, 9 after a kill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `listening`: each function's public address (its activator's), by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<BTreeMap<String, SocketAddr>>,
    /// `listening`: the address of the runner's own `GET /metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Every public port and `/metrics` are bound (the first event, once per run).
    Listening,
    /// The process was executed.
    Start,
    /// Its readiness probe answered.
    Ready,
    /// The process exited (asked to or not), with its code or signal; `stop` follows.
    Exit,
    /// The process is gone: stopped, crashed, or failed to start; `replicas` counts the rest.
    Stop,
    /// A request that had to wait for a start (every request held while the process started).
    ColdStart,
    /// The autoscaler's desired replica count changed.
    Scale,
}

/// The recorder; clones share one log.
#[derive(Clone, Default)]
pub struct Events {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    events: Vec<ScaleEvent>,
    file: Option<(PathBuf, File)>,
    write_failed: bool,
}

impl Events {
    /// Records in memory and, with a path, to that file (created or truncated).
    pub fn new(path: Option<&Path>) -> anyhow::Result<Events> {
        let file = match path {
            None => None,
            Some(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
                Some((path.to_path_buf(), file))
            }
        };
        Ok(Events { inner: Arc::new(Mutex::new(Inner { file, ..Inner::default() })) })
    }

    pub fn listening(&self, ports: &Ports) {
        self.record(ScaleEvent {
            addresses: Some(ports.functions.clone()),
            metrics: Some(ports.metrics),
            ..event(EventKind::Listening, "")
        });
    }

    pub fn start(&self, function: &str, pid: Option<u32>, replicas: u32) {
        self.record(ScaleEvent { pid, replicas: Some(replicas), ..event(EventKind::Start, function) });
    }

    pub fn ready(&self, function: &str, pid: Option<u32>, took: Duration, replicas: u32) {
        self.record(ScaleEvent {
            pid,
            ready_ms: Some(ms(took)),
            replicas: Some(replicas),
            ..event(EventKind::Ready, function)
        });
    }

    /// `status` is `None` when the exit was seen but its status could not be read.
    pub fn exit(&self, function: &str, pid: Option<u32>, status: Option<ExitStatus>) {
        self.record(ScaleEvent {
            pid,
            code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            ..event(EventKind::Exit, function)
        });
    }

    pub fn stop(&self, function: &str, pid: Option<u32>, replicas: u32) {
        self.record(ScaleEvent { pid, replicas: Some(replicas), ..event(EventKind::Stop, function) });
    }

    pub fn scale(&self, function: &str, replicas: u32, desired: u32, panic: bool) {
        self.record(ScaleEvent {
            replicas: Some(replicas),
            desired: Some(desired),
            panic: Some(panic),
            ..event(EventKind::Scale, function)
        });
    }

    pub fn cold_start(&self, function: &str, latency: Duration) {
        self.record(ScaleEvent { latency_ms: Some(ms(latency)), ..event(EventKind::ColdStart, function) });
    }

    /// Every event so far, in order.
    pub fn all(&self) -> Vec<ScaleEvent> {
        self.inner.lock().expect("events lock").events.clone()
    }

    fn record(&self, event: ScaleEvent) {
        let mut guard = self.inner.lock().expect("events lock");
        let inner = &mut *guard;
        if let Some((path, file)) = &mut inner.file {
            let mut line = serde_json::to_vec(&event).expect("an event serialises");
            line.push(b'\n');
            // One write per line on an unbuffered file: a reader never sees half a line.
            if let Err(e) = file.write_all(&line).and_then(|()| file.flush()) {
                if !inner.write_failed {
                    tracing::warn!(path = %path.display(), error = %e, "Writing scaling events failed");
                }
                inner.write_failed = true;
            }
        }
        inner.events.push(event);
    }
}

fn event(event: EventKind, function: &str) -> ScaleEvent {
    let t_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    ScaleEvent {
        t_ms,
        event,
        function: function.to_owned(),
        pid: None,
        ready_ms: None,
        latency_ms: None,
        replicas: None,
        desired: None,
        panic: None,
        code: None,
        signal: None,
        addresses: None,
        metrics: None,
    }
}

/// Milliseconds with microsecond resolution.
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_json_lines_in_memory_and_on_disk() {
        let path = std::env::temp_dir().join(format!("events-{}/e.jsonl", uuid::Uuid::new_v4()));
        let events = Events::new(Some(&path)).unwrap();
        events.start("ingest", Some(42), 1);
        events.ready("ingest", Some(42), Duration::from_micros(12_345), 1);
        events.cold_start("ingest", Duration::from_millis(20));
        events.stop("ingest", Some(42), 0);
        events.scale("ingest", 0, 3, true);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 5);
        assert!(lines.iter().all(|l| l.get("code").is_none() && l.get("addresses").is_none()));
        assert_eq!(lines[0]["event"], "start");
        assert_eq!(lines[0]["pid"], 42);
        assert!(lines[0].get("ready_ms").is_none());
        assert_eq!(lines[1]["ready_ms"], 12.345);
        assert_eq!(lines[2]["event"], "cold_start");
        assert_eq!(lines[2]["latency_ms"], 20.0);
        assert!(lines[2].get("pid").is_none());
        assert_eq!(lines[3]["event"], "stop");
        assert_eq!((lines[0]["replicas"].as_u64(), lines[3]["replicas"].as_u64()), (Some(1), Some(0)));
        assert_eq!(lines[4]["event"], "scale");
        assert_eq!((lines[4]["desired"].as_u64(), lines[4]["panic"].as_bool()), (Some(3), Some(true)));
        assert!(
            lines
                .iter()
                .all(|l| l["function"] == "ingest" && l["t_ms"].as_u64().unwrap() > 1_600_000_000_000)
        );
        let parsed: Vec<ScaleEvent> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(parsed, events.all());
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn listening_and_exit_lines_are_what_scripts_read() {
        let events = Events::new(None).unwrap();
        let ports = Ports {
            functions: [("ingest".to_owned(), "127.0.0.1:41000".parse().unwrap())].into(),
            metrics: "127.0.0.1:41004".parse().unwrap(),
        };
        events.listening(&ports);
        events.exit("counter", Some(7), Some(ExitStatus::from_raw(3 << 8)));
        events.exit("counter", Some(8), Some(ExitStatus::from_raw(9)));
        events.exit("counter", Some(9), None);
        let lines: Vec<serde_json::Value> =
            events.all().iter().map(|e| serde_json::to_value(e).unwrap()).collect();
        let without_time = |mut line: serde_json::Value| {
            assert!(line["t_ms"].as_u64().unwrap() > 1_600_000_000_000);
            line.as_object_mut().unwrap().remove("t_ms");
            line
        };
        let lines: Vec<serde_json::Value> = lines.into_iter().map(without_time).collect();
        assert_eq!(
            lines,
            [
                serde_json::json!({"event": "listening", "addresses": {"ingest": "127.0.0.1:41000"}, "metrics": "127.0.0.1:41004"}),
                serde_json::json!({"event": "exit", "function": "counter", "pid": 7, "code": 3}),
                serde_json::json!({"event": "exit", "function": "counter", "pid": 8, "signal": 9}),
                serde_json::json!({"event": "exit", "function": "counter", "pid": 9}),
            ]
        );
        let parsed: Vec<ScaleEvent> = events
            .all()
            .iter()
            .map(|e| serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap())
            .collect();
        assert_eq!(parsed, events.all());
    }
}
