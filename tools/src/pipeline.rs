//! The pipeline as the tools run it: `runner up` as a child process (so its CPU time is its own
//! and a fault can SIGKILL or SIGSTOP it), with the run's [`Stack`] passed down. Where it
//! listens and what it did (replicas started, exited, scaled) come from its events
//! (`--events`, one file per start), read back here: with `--base-port 0` the runner binds
//! ports the OS chooses and says which in its `listening` event, so no port is chosen free and
//! then found taken.

use crate::state::{kafka, procfs};
use anyhow::{Context, bail};
use nix::{sys::signal::Signal, unistd::Pid};
use runner::{
    Stack,
    events::{EventKind, ScaleEvent},
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant},
};
use tokio::{process::Command, sync::watch};

/// How the tools start the runner.
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Port of the first function (ingest); the others and the runner's `/metrics` take the next
    /// ones. 0: ports the OS chooses, read back from the runner's `listening` event.
    #[arg(long, env = "RUNNER_BASE_PORT", default_value_t = 0)]
    pub base_port: u16,
    /// Folder of the runner and function binaries; defaults to the tools' own folder.
    #[arg(long, env = "RUNNER_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Folder for the runner's and the functions' logs and the runner's events (a subfolder per
    /// run).
    #[arg(long, default_value = "target/runner")]
    pub log_dir: PathBuf,
}

/// A running `runner up`, started again as often as a fault needs: every method takes `&self`,
/// so clients keep posting while it restarts.
pub struct Pipeline {
    /// The run's names; `stack.run_id` isolates it.
    pub stack: Stack,
    pub log_dir: PathBuf,
    args: PipelineArgs,
    extra: Vec<String>,
    env: Vec<(String, Option<String>)>,
    current: Mutex<Started>,
}

/// One start of the runner.
#[derive(Clone)]
struct Started {
    /// 1 for the first start, 2 after the first restart…
    number: usize,
    pid: u32,
    /// How it exited (`None` while it runs).
    exited: watch::Receiver<Option<String>>,
    /// Each function's public address and the runner's `/metrics`, from its `listening` event.
    addresses: BTreeMap<String, SocketAddr>,
    metrics: Option<SocketAddr>,
}

impl Pipeline {
    /// Starts `runner up` with `extra` arguments (e.g. `--mode scale-to-zero`, `--no-sources`)
    /// and waits until it is ready ([`Pipeline::restart`] says what that means).
    pub async fn start(stack: &Stack, args: &PipelineArgs, extra: &[&str]) -> anyhow::Result<Pipeline> {
        Pipeline::start_with_env(stack, args, extra, &[]).await
    }

    /// [`Pipeline::start`] with environment variables set (`Some`) or removed (`None`) for the
    /// runner, which passes its environment on to the functions (e.g. `OTEL_*`).
    pub async fn start_with_env(
        stack: &Stack,
        args: &PipelineArgs,
        extra: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> anyhow::Result<Pipeline> {
        let log_dir = args.log_dir.join(stack.run_id.as_deref().unwrap_or("default"));
        let env: Vec<(String, Option<String>)> =
            env.iter().map(|(k, v)| (k.to_string(), v.map(str::to_owned))).collect();
        let pipeline = Pipeline {
            stack: stack.clone(),
            log_dir,
            args: args.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env,
            current: Mutex::new(Started {
                number: 0,
                pid: 0,
                exited: watch::channel(Some("not started".to_owned())).1,
                addresses: BTreeMap::new(),
                metrics: None,
            }),
        };
        pipeline.restart().await?;
        Ok(pipeline)
    }

    fn current(&self) -> Started {
        self.current.lock().expect("pipeline lock").clone()
    }

    /// The public URL of `function` (its activator's port).
    pub fn url(&self, function: &str) -> anyhow::Result<String> {
        let address = self.current().addresses.get(function).copied();
        let address = address.with_context(|| format!("the runner listens for no function {function}"))?;
        Ok(format!("http://{address}"))
    }

    /// `NAME=URL` for the sink of each KafkaSource, as `tools replay --sink` takes them: the
    /// addresses this runner names in its letters.
    pub fn sinks(&self) -> anyhow::Result<Vec<String>> {
        self.stack.kafka_sources()?.iter().map(|s| Ok(format!("{}={}", s.sink, self.url(&s.sink)?))).collect()
    }

    pub fn ingest_url(&self) -> String {
        self.url("ingest").expect("the manifests have an ingest")
    }

    /// The runner's own `/metrics` (replicas, the activator's requests, deliveries in flight).
    pub fn metrics_url(&self) -> anyhow::Result<String> {
        let metrics = self.current().metrics.context("the runner has not said where it serves /metrics")?;
        Ok(format!("http://{metrics}/metrics"))
    }

    pub fn log_file(&self) -> PathBuf {
        self.log_dir.join("runner.log")
    }

    fn events_file(&self, number: usize) -> PathBuf {
        self.log_dir.join(format!("events-{number}.jsonl"))
    }

    /// Every event of every start so far, in order.
    pub fn events(&self) -> anyhow::Result<Vec<ScaleEvent>> {
        let mut events = Vec::new();
        for number in 1..=self.current().number {
            events.extend(read_events(&self.events_file(number))?);
        }
        Ok(events)
    }

    /// The runner's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        let current = self.current();
        let running = current.exited.borrow().is_none();
        running.then_some(current.pid)
    }

    /// The runner (`runner`) and every process under it, by name: a function with several
    /// replicas has several.
    pub fn processes(&self) -> BTreeMap<String, Vec<u32>> {
        self.pid().map(procfs::processes_under).unwrap_or_default()
    }

    /// Sends `signal` to the runner itself (its functions are its children and go on running
    /// after a SIGKILL, as containers outlive a crashed dispatcher).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid().context("the runner has exited")?;
        nix::sys::signal::kill(Pid::from_raw(pid as i32), signal)?;
        Ok(())
    }

    /// Sends `signal` to every process (replica) of a function.
    pub fn signal_function(&self, name: &str, signal: Signal) -> anyhow::Result<()> {
        let pids = self.processes().remove(name).with_context(|| format!("{name} is not running"))?;
        for pid in pids {
            nix::sys::signal::kill(Pid::from_raw(pid as i32), signal)?;
        }
        Ok(())
    }

    /// Waits for the runner to exit (after a signal), at most `timeout`.
    pub async fn wait(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut exited = self.current().exited;
        tokio::time::timeout(timeout, exited.wait_for(Option::is_some))
            .await
            .with_context(|| format!("the runner did not exit within {} s", timeout.as_secs()))??;
        Ok(())
    }

    /// Starts the runner (again, after [`Pipeline::wait`]) with the same settings, and waits
    /// until it is ready: it said where it listens and serves `/metrics`; in always-on mode
    /// every function has a replica ready; and every KafkaSource's consumer group is stable
    /// with a member (unless `--no-sources`).
    pub async fn restart(&self) -> anyhow::Result<()> {
        let number = self.current().number + 1;
        let events = self.events_file(number);
        let events_arg = events.to_string_lossy().into_owned();
        let mut extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        extra.extend(["--events", &events_arg]);
        let mut child = spawn(&self.stack, &self.args, &self.log_dir, &extra, &self.env)?;
        let pid = child.id().context("the runner exited at once")?;
        let (tell, exited) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await.map_or_else(|e| e.to_string(), |s| s.to_string());
            let _ = tell.send(Some(status));
        });
        *self.current.lock().expect("pipeline lock") =
            Started { number, pid, exited, addresses: BTreeMap::new(), metrics: None };
        self.wait_ready(&events).await
    }

    async fn wait_ready(&self, events: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let exited = self.current().exited;
        let waiting = |what: &str| -> anyhow::Result<()> {
            if let Some(status) = exited.borrow().as_ref() {
                bail!("the runner exited with {status}; see {}", self.log_file().display());
            }
            if Instant::now() > deadline {
                bail!("the runner was not ready within 60 s ({what}); see {}", self.log_file().display());
            }
            Ok(())
        };
        let listening = loop {
            waiting("no listening event")?;
            let found =
                read_events(events).unwrap_or_default().into_iter().find(|e| e.event == EventKind::Listening);
            if let Some(listening) = found {
                break listening;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        {
            let mut current = self.current.lock().expect("pipeline lock");
            current.addresses = listening.addresses.unwrap_or_default();
            current.metrics = listening.metrics;
        }
        let client = reqwest::Client::new();
        let metrics = self.metrics_url()?;
        while !client
            .get(&metrics)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            waiting("its /metrics did not answer")?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.extra.iter().any(|a| a.ends_with("scale-to-zero")) {
            let functions: BTreeSet<String> = self.stack.services()?.into_iter().map(|s| s.name).collect();
            loop {
                let ready: BTreeSet<String> = read_events(events)?
                    .into_iter()
                    .filter(|e| e.event == EventKind::Ready)
                    .map(|e| e.function)
                    .collect();
                if functions.is_subset(&ready) {
                    break;
                }
                waiting(&format!("functions ready: {ready:?}"))?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if !self.extra.iter().any(|a| a == "--no-sources") {
            let groups: Vec<String> =
                self.stack.kafka_sources()?.into_iter().map(|s| s.consumer_group).collect();
            while !kafka::stable(&self.stack.kafka_brokers, &groups)? {
                waiting("the KafkaSources' consumer groups are not stable")?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// SIGTERM, then waits for the runner to stop its functions and exit (SIGKILL after 40 s).
    pub async fn stop(self) {
        if self.pid().is_some() {
            let _ = self.signal(Signal::SIGTERM);
            if self.wait(Duration::from_secs(40)).await.is_err() {
                let _ = self.signal(Signal::SIGKILL);
            }
        }
    }
}

/// A pipeline dropped without [`Pipeline::stop`] (a test that panicked, a tool that failed):
/// SIGTERM, so the runner still stops its functions instead of leaving them on their ports.
impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

/// The events of one start (a line being written is left for the next read).
fn read_events(path: &Path) -> anyhow::Result<Vec<ScaleEvent>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("an event of {}: {l}", path.display())))
        .collect()
}

fn spawn(
    stack: &Stack,
    args: &PipelineArgs,
    log_dir: &Path,
    extra: &[&str],
    env: &[(String, Option<String>)],
) -> anyhow::Result<tokio::process::Child> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("the tools' folder")?.to_path_buf(),
    };
    std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_dir.join("runner.log"))?;
    let runner = bin_dir.join("runner");
    let mut command = Command::new(&runner);
    command
        .env("RUNNER_MANIFESTS", &stack.manifests)
        .env("KAFKA_BROKERS", &stack.kafka_brokers)
        .env("REDIS_URL", stack.redis_url.expose_secret())
        .env("MONGODB_URI", stack.mongodb_uri.expose_secret())
        .env("RUNNER_BIN_DIR", &bin_dir)
        .env("RUNNER_LOG_DIR", log_dir)
        .env("RUNNER_BASE_PORT", args.base_port.to_string())
        .env_remove("RUNNER_RUN_ID")
        .env_remove("RUNNER_EVENTS");
    if let Some(id) = &stack.run_id {
        command.env("RUNNER_RUN_ID", id);
    }
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command
        .arg("up")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} (build it with `cargo build --release`)", runner.display()))
}
