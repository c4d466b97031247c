//! The functions of the `knative/base` Services as child processes on loopback ports, each with
//! its log file and its manifest's environment made local ([`Stack::local_env`]), started in
//! dependency order and waited for on `/health/readiness`, stopped with SIGTERM (as Kubernetes
//! does) and SIGKILL only if draining overruns. Every start, ready and stop goes to [`Events`].
//! Behind the activator (scale-to-zero) a process listens on a private port of its own and the
//! public port belongs to the activator.

use crate::{Stack, events::Events, manifests::Service};
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

/// How long a function may take to answer its readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longer than the functions' own drain timeout (20 s), shorter than Kubernetes' grace (30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(25);

/// One function: its Service, public port and local environment.
pub struct Function {
    pub service: Service,
    /// What callers and the KafkaSources use (the activator's, in scale-to-zero).
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
    /// Whether processes listen on private ports (the activator owns the public ones).
    private_ports: bool,
    running: Mutex<BTreeMap<String, Process>>,
    http: reqwest::Client,
    events: Events,
}

struct Process {
    child: Child,
    port: u16,
}

impl Functions {
    /// The Services of `stack`'s manifests, on loopback ports from `base_port`; with
    /// `private_ports` each process gets a free port of its own, for the activator to proxy to.
    pub fn new(
        stack: &Stack,
        bin_dir: PathBuf,
        log_dir: PathBuf,
        base_port: u16,
        private_ports: bool,
        events: Events,
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
        Ok(Functions {
            functions,
            start_order,
            bin_dir,
            log_dir,
            private_ports,
            running: Mutex::new(BTreeMap::new()),
            http: reqwest::Client::new(),
            events,
        })
    }

    /// The functions, in the manifests' order.
    pub fn all(&self) -> &[Function] {
        &self.functions
    }

    fn get(&self, name: &str) -> anyhow::Result<&Function> {
        self.functions
            .iter()
            .find(|f| f.service.name == name)
            .with_context(|| format!("no function {name:?}"))
    }

    /// The public port of a function: what callers and the KafkaSources use.
    pub fn port(&self, name: &str) -> anyhow::Result<u16> {
        Ok(self.get(name)?.port)
    }

    /// The public URL of a function.
    pub fn url(&self, name: &str) -> anyhow::Result<String> {
        Ok(format!("http://127.0.0.1:{}", self.port(name)?))
    }

    /// The port the function's process listens on, while it runs.
    pub fn process_port(&self, name: &str) -> Option<u16> {
        self.lock().get(name).map(|p| p.port)
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Names of the function processes alive now, in start order.
    pub fn running(&self) -> Vec<String> {
        let mut running = self.lock();
        self.start_order
            .iter()
            .filter(|name| running.get_mut(*name).is_some_and(|p| matches!(p.child.try_wait(), Ok(None))))
            .cloned()
            .collect()
    }

    /// Whether the function's process is alive.
    pub fn is_running(&self, name: &str) -> bool {
        self.lock().get_mut(name).is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Process>> {
        self.running.lock().expect("functions lock")
    }

    /// Starts every function and waits until all are ready.
    pub async fn start_all(&self) -> anyhow::Result<()> {
        for name in &self.start_order {
            self.start(name).await?;
        }
        Ok(())
    }

    /// Starts one function and waits for its readiness probe; a function that does not get
    /// ready is killed.
    pub async fn start(&self, name: &str) -> anyhow::Result<Duration> {
        let function = self.get(name)?;
        let started = Instant::now();
        std::fs::create_dir_all(&self.log_dir)
            .with_context(|| format!("creating the log folder {}", self.log_dir.display()))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file(name))?;
        let port = if self.private_ports { free_port()? } else { function.port };
        // Another process on the port would answer the readiness probe in the function's stead.
        TcpListener::bind(("127.0.0.1", port)).with_context(|| {
            format!("port {port} of {name} is taken — by a function an earlier runner left behind? (`ss -ltnp 'sport = :{port}'`)")
        })?;
        let binary = self.bin_dir.join(name);
        // Calls between functions go to public ports: through the activator in scale-to-zero,
        // so ingest's first call cold-starts producer as on Knative.
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
        let pid = child.id();
        self.events.start(name, pid);
        self.lock().insert(name.to_owned(), Process { child, port });
        if let Err(e) = self.wait_ready(function, port, started).await {
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

    async fn wait_ready(&self, function: &Function, port: u16, started: Instant) -> anyhow::Result<()> {
        let name = function.service.name.as_str();
        let url = format!("http://127.0.0.1:{port}{}", function.service.readiness_path);
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

    /// Restarts every function whose process exited on its own (it is still registered as
    /// running), as the kubelet restarts a crashed container, until `stop` turns true. A
    /// function stopped through [`Functions::stop`] or [`Functions::kill`] is not restarted.
    pub async fn supervise(self: std::sync::Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let exited: Vec<(String, std::process::ExitStatus)> = self
                .lock()
                .iter_mut()
                .filter_map(|(name, p)| Some((name.clone(), p.child.try_wait().ok().flatten()?)))
                .collect();
            for (name, status) in exited {
                tracing::warn!(function = %name, %status, "Function exited on its own; restarting it");
                let pid = self.lock().remove(&name).and_then(|p| p.child.id());
                self.events.stop(&name, pid);
                if let Err(e) = self.start(&name).await {
                    tracing::error!(function = %name, error = format!("{e:#}"), "Restart failed; retrying");
                }
            }
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
        for name in self.start_order.iter().rev() {
            if let Err(e) = self.stop(name).await {
                tracing::warn!(function = name, error = %e, "Stopping failed");
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

/// A loopback port free now (the kernel's choice); the function binds it a moment later.
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
        let functions =
            Functions::new(&stack, "bin".into(), "log".into(), 9000, false, Events::default()).unwrap();
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
