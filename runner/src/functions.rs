//! The functions of the `knative/base` Services and their processes: each replica a child
//! process on a loopback port of its own, with its manifest's environment made local
//! ([`Stack::local_env`]) and the function's log file, waited for on its readiness path, stopped
//! with SIGTERM (as Kubernetes does) and SIGKILL only if draining overruns. The public ports
//! belong to the [`crate::activator`], which decides how many replicas run.

use crate::{Stack, manifests::Service};
use anyhow::{Context, bail};
use nix::{sys::signal, unistd::Pid};
use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

/// How long a function may take to answer its readiness probe.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longer than the functions' own drain timeout (20 s), shorter than Kubernetes' grace (30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(25);

/// One function: its Service, public port and local environment.
pub struct Function {
    pub service: Service,
    /// What callers and the KafkaSources use: the activator's.
    pub port: u16,
    env: Vec<(String, String)>,
}

pub struct Functions {
    /// In the manifests' order; the first listens on the base port, the others on the next ones.
    functions: Vec<Function>,
    /// Names in dependency order: a function after every function it calls.
    start_order: Vec<String>,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    http: reqwest::Client,
}

/// One replica's process.
pub struct Process {
    child: Child,
    pub port: u16,
    pub pid: Option<u32>,
    started: Instant,
}

impl Functions {
    /// The Services of `stack`'s manifests, on loopback ports from `base_port`.
    pub fn new(
        stack: &Stack,
        bin_dir: PathBuf,
        log_dir: PathBuf,
        base_port: u16,
    ) -> anyhow::Result<Functions> {
        let services = stack.services()?;
        let ports: BTreeMap<String, u16> =
            services.iter().zip(base_port..).map(|(s, port)| (s.name.clone(), port)).collect();
        let url_of = |name: &str| ports.get(name).map(|port| format!("http://127.0.0.1:{port}"));
        let start_order = start_order(&services)?;
        let functions = services
            .into_iter()
            .map(|service| {
                let env = stack.local_env(&service, url_of)?;
                Ok(Function { port: ports[&service.name], service, env })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Functions { functions, start_order, bin_dir, log_dir, http: reqwest::Client::new() })
    }

    /// The functions, in the manifests' order.
    pub fn all(&self) -> &[Function] {
        &self.functions
    }

    /// The functions' names, each after the functions it calls.
    pub fn start_order(&self) -> &[String] {
        &self.start_order
    }

    pub fn get(&self, name: &str) -> anyhow::Result<&Function> {
        self.functions
            .iter()
            .find(|f| f.service.name == name)
            .with_context(|| format!("no function {name:?}"))
    }

    /// The public port of a function: what callers use (the KafkaSources enter the activator in
    /// process, `activator::Entrance`, and name their sink by its URL).
    pub fn port(&self, name: &str) -> anyhow::Result<u16> {
        Ok(self.get(name)?.port)
    }

    /// The public URL of a function.
    pub fn url(&self, name: &str) -> anyhow::Result<String> {
        Ok(format!("http://127.0.0.1:{}", self.port(name)?))
    }

    /// The log file every replica of the function appends to.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Fails unless every function's binary is there, before anything binds or starts.
    pub fn check_binaries(&self) -> anyhow::Result<()> {
        for function in &self.functions {
            let binary = self.bin_dir.join(&function.service.name);
            if !binary.is_file() {
                bail!(
                    "no binary {} (build it with `cargo build --release --workspace --bins`)",
                    binary.display()
                );
            }
        }
        Ok(())
    }

    /// Executes one replica of `name` on a free loopback port; [`Functions::wait_ready`] waits
    /// for it to serve.
    pub fn exec(&self, name: &str) -> anyhow::Result<Process> {
        let function = self.get(name)?;
        let started = Instant::now();
        std::fs::create_dir_all(&self.log_dir)
            .with_context(|| format!("creating the log folder {}", self.log_dir.display()))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file(name))?;
        let port = free_port()?;
        let binary = self.bin_dir.join(name);
        // Calls between functions go to public ports, through the activator, so ingest's first
        // call cold-starts producer as on Knative.
        let child = Command::new(&binary)
            .envs(function.env.iter().cloned())
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (build it with `cargo build`)", binary.display()))?;
        Ok(Process { pid: child.id(), child, port, started })
    }

    /// Waits for the replica's readiness probe and returns exec → ready; a replica that exits or
    /// does not get ready in time is killed and the error says where its log is.
    pub async fn wait_ready(&self, name: &str, process: &mut Process) -> anyhow::Result<Duration> {
        let function = self.get(name)?;
        let url = format!("http://127.0.0.1:{}{}", process.port, function.service.readiness_path);
        loop {
            if let Some(status) = process.exited() {
                bail!(
                    "{name} exited with {status} before it was ready; see {}",
                    self.log_file(name).display()
                );
            }
            if let Ok(r) = self.http.get(&url).timeout(Duration::from_secs(1)).send().await
                && r.status().is_success()
            {
                return Ok(process.started.elapsed());
            }
            if process.started.elapsed() > READY_TIMEOUT {
                process.kill();
                bail!("{name} was not ready within {READY_TIMEOUT:?}; see {}", self.log_file(name).display());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Process {
    /// The exit status, once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, without waiting.
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// SIGTERM, then waits for the process to drain and exit (SIGKILL if it overruns).
    pub async fn stop(mut self, name: &str) -> anyhow::Result<()> {
        if let Some(pid) = self.pid {
            let _ = signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    tracing::warn!(function = name, %status, "Function exited with an error");
                }
            }
            Err(_) => {
                tracing::warn!(function = name, "Function did not stop in time, killing it");
                self.child.kill().await?;
            }
        }
        Ok(())
    }
}

/// The Services in an order that starts each after the ones it calls (manifest order among
/// equals); a cycle is an error.
fn start_order(services: &[Service]) -> anyhow::Result<Vec<String>> {
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let mut order: Vec<String> = Vec::new();
    while order.len() < services.len() {
        let next = services.iter().find(|s| {
            !order.contains(&s.name) && s.calls(names.iter().copied()).iter().all(|c| order.contains(c))
        });
        match next {
            Some(s) => order.push(s.name.clone()),
            None => bail!("the Services call each other in a cycle; cannot choose a start order"),
        }
    }
    Ok(order)
}

/// A loopback port free now (the kernel's choice); the function binds it a moment later (and a
/// process of another run that takes it first fails its readiness probe or its bind).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn functions_start_after_what_they_call() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative/base");
        let services = crate::manifests::services(&dir).unwrap();
        assert_eq!(start_order(&services).unwrap(), ["producer", "ingest", "counter", "archiver"]);
    }

    #[test]
    fn the_local_environment_points_at_loopback_and_the_run() {
        let stack = Stack {
            manifests: Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative/base"),
            kafka_brokers: "127.0.0.1:19092".into(),
            redis_url: "redis://127.0.0.1:16379/0".into(),
            mongodb_uri: "mongodb://127.0.0.1:37017".into(),
            run_id: Some("r1".into()),
        };
        let functions = Functions::new(&stack, "bin".into(), "log".into(), 9000).unwrap();
        let env = |name: &str| functions.get(name).unwrap().env.iter().cloned().collect::<BTreeMap<_, _>>();
        assert_eq!(functions.port("counter").unwrap(), 9002);
        assert_eq!(env("ingest")["PRODUCER_URL"], "http://127.0.0.1:9001");
        assert_eq!(env("producer")["KAFKA_BROKERS"], "127.0.0.1:19092");
        assert_eq!(env("producer")["KAFKA_TOPIC"], "messages-r1");
        assert_eq!(env("counter")["REDIS_URL"], "redis://127.0.0.1:16379/0");
        assert_eq!(env("counter")["REDIS_KEY_PREFIX"], "weather:r1:");
        assert_eq!(env("archiver")["MONGODB_DATABASE"], "weather_r1");
        assert_eq!(stack.env_of("counter", "REDIS_KEY_PREFIX").unwrap(), "weather:r1:");
    }
}
