//! The four functions as child processes on loopback ports, each with its log file, started in
//! dependency order and waited for on `/health/readiness`, stopped with SIGTERM (as Kubernetes
//! does) and SIGKILL only if draining overruns.

use anyhow::{Context, bail};
use nix::{sys::signal, unistd::Pid};
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

/// The functions; the first listens on the base port (8080), the others on the next ones.
pub const NAMES: [&str; 4] = ["ingest", "producer", "counter", "archiver"];
/// Start order: producer before ingest, which calls it.
const START_ORDER: [&str; 4] = ["producer", "ingest", "counter", "archiver"];
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
    running: BTreeMap<&'static str, Child>,
    http: reqwest::Client,
}

impl Functions {
    pub fn new(bin_dir: PathBuf, log_dir: PathBuf, base_port: u16, env: Vec<(String, String)>) -> Functions {
        Functions { bin_dir, log_dir, base_port, env, running: BTreeMap::new(), http: reqwest::Client::new() }
    }

    pub fn port(&self, name: &str) -> u16 {
        port(self.base_port, name)
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.port(name))
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Starts every function and waits until all are ready.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for name in START_ORDER {
            self.start(name).await?;
        }
        Ok(())
    }

    /// Starts one function and waits for its readiness probe.
    pub async fn start(&mut self, name: &str) -> anyhow::Result<Duration> {
        let name = NAMES.into_iter().find(|n| *n == name).with_context(|| format!("no function {name:?}"))?;
        let started = Instant::now();
        std::fs::create_dir_all(&self.log_dir)
            .with_context(|| format!("creating the log folder {}", self.log_dir.display()))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file(name))?;
        let binary = self.bin_dir.join(name);
        let child = Command::new(&binary)
            .envs(self.env.iter().cloned())
            .env("PORT", self.port(name).to_string())
            .env("HOST", "127.0.0.1")
            .env("PRODUCER_URL", self.url("producer"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (build it with `cargo build`)", binary.display()))?;
        self.running.insert(name, child);
        self.wait_ready(name, started).await?;
        let took = started.elapsed();
        tracing::info!(
            function = name,
            port = self.port(name),
            ready_ms = took.as_millis() as u64,
            "Function ready"
        );
        Ok(took)
    }

    async fn wait_ready(&mut self, name: &'static str, started: Instant) -> anyhow::Result<()> {
        let url = format!("{}/health/readiness", self.url(name));
        loop {
            if let Some(status) = self.running.get_mut(name).and_then(|c| c.try_wait().ok().flatten()) {
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
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let mut child = self.running.remove(name).with_context(|| format!("{name} is not running"))?;
        child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then waits for the process to drain and exit.
    pub async fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let Some(mut child) = self.running.remove(name) else { return Ok(()) };
        if let Some(pid) = child.id() {
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
        Ok(())
    }

    /// Stops the functions in reverse start order.
    pub async fn stop_all(&mut self) {
        for name in START_ORDER.iter().rev() {
            if let Err(e) = self.stop(name).await {
                tracing::warn!(function = name, error = %e, "Stopping failed");
            }
        }
    }
}
