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
    io,
    net::TcpListener,
    path::{Path, PathBuf},
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
    /// In the manifests' order.
    functions: Vec<Function>,
    /// Names in dependency order: a function after every function it calls.
    start_order: Vec<String>,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    http: reqwest::Client,
}

/// Why a replica did not get ready.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The process could not be executed.
    #[error("starting {binary}: {error}")]
    Exec { binary: String, error: io::Error },
    /// Another program bound the replica's port between the runner's choice and the replica's
    /// own bind: the replica exited, and the port is still taken.
    #[error("{function}'s port {port} was taken by another program before it could listen")]
    PortTaken { function: String, port: u16 },
    #[error("{function} exited with {status} before it was ready; see {log}")]
    Exited { function: String, status: ExitStatus, log: String },
    #[error("{function} was not ready within {READY_TIMEOUT:?}; see {log}")]
    NotReady { function: String, log: String },
}

/// One replica's process.
pub struct Process {
    child: Child,
    pub port: u16,
    pub pid: Option<u32>,
    started: Instant,
}

/// The ports the runner binds from `base_port`: each Service's, in the manifests' order
/// (ingest on `base_port`), and the runner's `/metrics` on the one after the last. With
/// `base_port` 0 every one is 0: the OS chooses each, and the runner reports what it bound
/// ([`crate::Runner::ports`], the `listening` event).
pub fn numbered_ports(stack: &Stack, base_port: u16) -> anyhow::Result<(Vec<(String, u16)>, u16)> {
    let services = stack.services()?;
    let port = |i: usize| -> anyhow::Result<u16> {
        if base_port == 0 {
            return Ok(0);
        }
        u16::try_from(i).ok().and_then(|i| base_port.checked_add(i)).with_context(|| {
            format!("base port {base_port}: {} ports from it do not fit", services.len() + 1)
        })
    };
    let functions = services.iter().enumerate().map(|(i, s)| Ok((s.name.clone(), port(i)?)));
    Ok((functions.collect::<anyhow::Result<_>>()?, port(services.len())?))
}

/// Fails unless every Service of `stack` has its binary in `bin_dir`, before anything binds or
/// starts.
pub fn check_binaries(stack: &Stack, bin_dir: &Path) -> anyhow::Result<()> {
    for service in stack.services()? {
        let binary = bin_dir.join(&service.name);
        if !binary.is_file() {
            bail!(
                "no binary {} (build it with `cargo build --release --workspace --bins`)",
                binary.display()
            );
        }
    }
    Ok(())
}

impl Functions {
    /// The Services of `stack`'s manifests, whose public ports (the activator's, which callers
    /// use) are `ports`, by name.
    pub fn new(
        stack: &Stack,
        bin_dir: PathBuf,
        log_dir: PathBuf,
        ports: &BTreeMap<String, u16>,
    ) -> anyhow::Result<Functions> {
        let services = stack.services()?;
        let url_of = |name: &str| ports.get(name).map(|port| format!("http://127.0.0.1:{port}"));
        let start_order = start_order(&services)?;
        let functions = services
            .into_iter()
            .map(|service| {
                let port =
                    *ports.get(&service.name).with_context(|| format!("no port for {}", service.name))?;
                let env = stack.local_env(&service, url_of)?;
                Ok(Function { port, service, env })
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

    /// Executes one replica of `function` on loopback `port` ([`free_port`]);
    /// [`Functions::wait_ready`] waits for it to serve.
    pub fn exec(&self, function: &Function, port: u16) -> Result<Process, StartError> {
        let name = &function.service.name;
        let binary = self.bin_dir.join(name);
        let exec_error = |error| StartError::Exec { binary: binary.display().to_string(), error };
        let started = Instant::now();
        std::fs::create_dir_all(&self.log_dir).map_err(exec_error)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file(name));
        let log = log.map_err(exec_error)?;
        // Calls between functions go to public ports, through the activator, so ingest's first
        // call cold-starts producer as on Knative.
        let child = Command::new(&binary)
            .envs(function.env.iter().cloned())
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(exec_error)?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(exec_error)?;
        Ok(Process { pid: child.id(), child, port, started })
    }

    /// Waits for the replica's readiness probe and returns exec → ready. A replica that does not
    /// get ready in time is killed; one that exits first is told apart by its port: still taken
    /// (by another program, since the replica is gone) is [`StartError::PortTaken`].
    pub async fn wait_ready(
        &self,
        function: &Function,
        process: &mut Process,
    ) -> Result<Duration, StartError> {
        let name = &function.service.name;
        let url = format!("http://127.0.0.1:{}{}", process.port, function.service.readiness_path);
        let log = || self.log_file(name).display().to_string();
        loop {
            if let Some(status) = process.exited() {
                if port_taken(process.port) {
                    return Err(StartError::PortTaken { function: name.clone(), port: process.port });
                }
                return Err(StartError::Exited { function: name.clone(), status, log: log() });
            }
            if let Ok(r) = self.http.get(&url).timeout(Duration::from_secs(1)).send().await
                && r.status().is_success()
            {
                return Ok(process.started.elapsed());
            }
            if process.started.elapsed() > READY_TIMEOUT {
                process.kill();
                return Err(StartError::NotReady { function: name.clone(), log: log() });
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

    /// SIGKILL unless it has exited, then its exit status.
    pub async fn reap(mut self) -> io::Result<ExitStatus> {
        self.kill();
        self.child.wait().await
    }

    /// SIGTERM, then waits for the process to drain and exit (SIGKILL if it overruns); its exit
    /// status.
    pub async fn stop(mut self, name: &str) -> io::Result<ExitStatus> {
        if let Some(pid) = self.pid {
            let _ = signal::kill(Pid::from_raw(pid as i32), signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    tracing::warn!(function = name, %status, "Function exited with an error");
                }
                Ok(status)
            }
            Err(_) => {
                tracing::warn!(function = name, "Function did not stop in time, killing it");
                self.reap().await
            }
        }
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

/// A loopback port free now (the kernel's choice) for a replica, which binds it a moment later:
/// a program that takes it in between makes the replica exit ([`StartError::PortTaken`]).
pub fn free_port() -> io::Result<u16> {
    TcpListener::bind(("127.0.0.1", 0))?.local_addr().map(|a| a.port())
}

/// Whether another program listens on loopback `port`.
fn port_taken(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_err_and(|e| e.kind() == io::ErrorKind::AddrInUse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack() -> Stack {
        Stack {
            manifests: Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative/base"),
            kafka_brokers: "127.0.0.1:19092".into(),
            redis_url: "redis://127.0.0.1:16379/0".into(),
            mongodb_uri: "mongodb://127.0.0.1:37017".into(),
            run_id: Some("r1".into()),
        }
    }

    #[test]
    fn ports_are_numbered_from_the_base_or_all_left_to_the_os() {
        let named =
            |ports: &[(String, u16)]| ports.iter().map(|(n, p)| format!("{n}:{p}")).collect::<Vec<_>>();
        let (ports, metrics) = numbered_ports(&stack(), 8080).unwrap();
        assert_eq!(named(&ports), ["ingest:8080", "producer:8081", "counter:8082", "archiver:8083"]);
        assert_eq!(metrics, 8084);
        let (ports, metrics) = numbered_ports(&stack(), 0).unwrap();
        assert_eq!(named(&ports), ["ingest:0", "producer:0", "counter:0", "archiver:0"]);
        assert_eq!(metrics, 0);
        assert_eq!(numbered_ports(&stack(), 65_531).unwrap().1, 65_535);
        assert!(numbered_ports(&stack(), 65_532).is_err(), "five ports from 65532 do not fit");
    }

    #[test]
    fn a_port_another_program_listens_on_is_taken() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(port_taken(port));
        drop(listener);
        assert!(!port_taken(port));
    }

    #[test]
    fn functions_start_after_what_they_call() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative/base");
        let services = crate::manifests::services(&dir).unwrap();
        assert_eq!(start_order(&services).unwrap(), ["producer", "ingest", "counter", "archiver"]);
    }

    #[test]
    fn the_local_environment_points_at_loopback_and_the_run() {
        let stack = stack();
        let (ports, metrics) = numbered_ports(&stack, 9000).unwrap();
        assert_eq!(metrics, 9004);
        let functions =
            Functions::new(&stack, "bin".into(), "log".into(), &ports.into_iter().collect()).unwrap();
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
