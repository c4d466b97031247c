//! The four functions as child processes on loopback ports, each with its log file, started in
//! dependency order and waited for on `/health/readiness`, stopped with SIGTERM (as Kubernetes
//! does) and SIGKILL only if draining overruns. Every start, ready and stop goes to [`Events`].
//! Behind the activator (scale-to-zero) a process listens on a private port of its own and the
//! public port belongs to the activator.

use crate::events::Events;
use anyhow::{Context, bail};
use nix::{sys::signal, unistd::Pid};
use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

/// The functions; the first listens on the base port (8080), the others on the next ones.
pub const NAMES: [&str; 4] = ["ingest", "producer", "counter", "archiver"];
/// Start order: producer before ingest, which calls it.
pub const START_ORDER: [&str; 4] = ["producer", "ingest", "counter", "archiver"];
/// How long a function may take to answer its readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longer than the functions' own drain timeout (20 s), shorter than Kubernetes' grace (30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(25);

/// The loopback port of a function.
pub fn port(base_port: u16, name: &str) -> u16 {
    let index = NAMES.iter().position(|n| *n == name).expect("a known function");
    base_port + index as u16
}

pub struct Functions {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    base_port: u16,
    /// Settings every function gets on top of the runner's own environment.
    env: Vec<(String, String)>,
    /// Whether processes listen on private ports (the activator owns the public ones).
    private_ports: bool,
    running: Mutex<BTreeMap<&'static str, Process>>,
    http: reqwest::Client,
    events: Events,
}

struct Process {
    child: Child,
    port: u16,
}

impl Functions {
    /// Functions on their public ports, as in always-on mode.
    pub fn new(bin_dir: PathBuf, log_dir: PathBuf, base_port: u16, env: Vec<(String, String)>) -> Functions {
        Functions {
            bin_dir,
            log_dir,
            base_port,
            env,
            private_ports: false,
            running: Mutex::new(BTreeMap::new()),
            http: reqwest::Client::new(),
            events: Events::default(),
        }
    }

    /// Each process on a free loopback port of its own, for the activator to proxy to.
    pub fn with_private_ports(self) -> Functions {
        Functions { private_ports: true, ..self }
    }

    pub fn with_events(self, events: Events) -> Functions {
        Functions { events, ..self }
    }

    /// The public port of a function: what callers and the KafkaSources use.
    pub fn port(&self, name: &str) -> u16 {
        port(self.base_port, name)
    }

    /// The public URL of a function.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(name))
    }

    /// The port the function's process listens on, while it runs.
    pub fn process_port(&self, name: &str) -> Option<u16> {
        self.lock().get(name).map(|p| p.port)
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Names of the function processes alive now, in start order.
    pub fn running(&self) -> Vec<&'static str> {
        let mut running = self.lock();
        START_ORDER
            .into_iter()
            .filter(|name| running.get_mut(name).is_some_and(|p| matches!(p.child.try_wait(), Ok(None))))
            .collect()
    }

    /// Whether the function's process is alive.
    pub fn is_running(&self, name: &str) -> bool {
        self.lock().get_mut(name).is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Process>> {
        self.running.lock().expect("functions lock")
    }

    /// Starts every function and waits until all are ready.
    pub async fn start_all(&self) -> anyhow::Result<()> {
        for name in START_ORDER {
            self.start(name).await?;
        }
        Ok(())
    }

    /// Starts one function and waits for its readiness probe; a function that does not get
    /// ready is killed.
    pub async fn start(&self, name: &str) -> anyhow::Result<Duration> {
        let name = NAMES.into_iter().find(|n| *n == name).with_context(|| format!("no function {name:?}"))?;
        let started = Instant::now();
        std::fs::create_dir_all(&self.log_dir)
            .with_context(|| format!("creating the log folder {}", self.log_dir.display()))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file(name))?;
        let port = if self.private_ports { free_port()? } else { self.port(name) };
        let binary = self.bin_dir.join(name);
        let child = Command::new(&binary)
            .envs(self.env.iter().cloned())
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            // Through the activator, so ingest's first call cold-starts producer as on Knative.
            .env("PRODUCER_URL", self.url("producer"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (build it with `cargo build`)", binary.display()))?;
        let pid = child.id();
        self.events.start(name, pid);
        self.lock().insert(name, Process { child, port });
        if let Err(e) = self.wait_ready(name, port, started).await {
            if let Some(mut process) = self.lock().remove(name) {
                let _ = process.child.start_kill();
            }
            return Err(e);
        }
        let took = started.elapsed();
        self.events.ready(name, pid, took);
        tracing::info!(function = name, port, ready_ms = took.as_millis() as u64, "Function ready");
        Ok(took)
    }

    async fn wait_ready(&self, name: &'static str, port: u16, started: Instant) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{port}/health/readiness");
        loop {
            let exited = self.lock().get_mut(name).and_then(|p| p.child.try_wait().ok().flatten());
            if let Some(status) = exited {
                bail!(
                    "{name} exited with {status} before it was ready; see {}",
                    self.log_file(name).display()
                );
            }
            if let Ok(r) = self.http.get(&url).timeout(Duration::from_secs(1)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("{name} was not ready within {READY_TIMEOUT:?}; see {}", self.log_file(name).display());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGKILL, for tests of crashes.
    pub async fn kill(&self, name: &str) -> anyhow::Result<()> {
        let mut process = self.lock().remove(name).with_context(|| format!("{name} is not running"))?;
        process.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then waits for the process to drain and exit.
    pub async fn stop(&self, name: &str) -> anyhow::Result<()> {
        let Some(Process { mut child, .. }) = self.lock().remove(name) else { return Ok(()) };
        let pid = child.id();
        if let Some(pid) = pid {
            let _ = signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    tracing::warn!(function = name, %status, "Function exited with an error");
                }
            }
            Err(_) => {
                tracing::warn!(function = name, "Function did not stop in time, killing it");
                child.kill().await?;
            }
        }
        self.events.stop(name, pid);
        Ok(())
    }

    /// Stops the functions in reverse start order.
    pub async fn stop_all(&self) {
        for name in START_ORDER.iter().rev() {
            if let Err(e) = self.stop(name).await {
                tracing::warn!(function = name, error = %e, "Stopping failed");
            }
        }
    }
}

/// A loopback port free now (the kernel's choice); the function binds it a moment later.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
