//! The pipeline as the tools run it: `runner up` as a child process (so its CPU time is its own
//! and a fault can SIGKILL or SIGSTOP it), with the run's [`Stack`] passed down, and the URLs of
//! its functions.

use anyhow::{Context, bail};
use nix::{sys::signal::Signal, unistd::Pid};
use runner::Stack;
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

/// How the tools start the runner.
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Port of the first function (ingest); the others take the next ones.
    #[arg(long, env = "RUNNER_BASE_PORT", default_value_t = 8080)]
    pub base_port: u16,
    /// Folder of the runner and function binaries; defaults to the tools' own folder.
    #[arg(long, env = "RUNNER_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Folder for the runner's and the functions' logs (a subfolder per run).
    #[arg(long, default_value = "target/runner")]
    pub log_dir: PathBuf,
}

/// A running `runner up`.
pub struct Pipeline {
    child: Child,
    /// The run's names; `stack.run_id` isolates it.
    pub stack: Stack,
    pub base_port: u16,
    pub log_dir: PathBuf,
    args: PipelineArgs,
    extra: Vec<String>,
    env: Vec<(String, Option<String>)>,
}

impl Pipeline {
    /// Starts `runner up` with `extra` arguments (e.g. `--mode scale-to-zero`, `--no-sources`)
    /// and waits until the runner serves its metrics and the sources have their partitions.
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
        let mut pipeline = Pipeline {
            child: spawn(stack, args, &log_dir, extra, &env)?,
            stack: stack.clone(),
            base_port: args.base_port,
            log_dir,
            args: args.clone(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env,
        };
        pipeline.wait_ready().await?;
        Ok(pipeline)
    }

    /// The public URL of the function listening on `base_port + index` (ingest is 0).
    pub fn url(&self, index: u16) -> String {
        format!("http://127.0.0.1:{}", self.base_port + index)
    }

    pub fn ingest_url(&self) -> String {
        self.url(0)
    }

    /// The runner's own `/metrics` (replicas, the activator's requests), on the port after the
    /// functions'.
    pub fn metrics_url(&self) -> anyhow::Result<String> {
        let functions = self.stack.services()?.len() as u16;
        Ok(format!("{}/metrics", self.url(functions)))
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        // The runner's own /metrics is bound once its first replicas are ready; a probe of
        // ingest's port would be a request the activator holds (a cold start) until then.
        let url = self.metrics_url()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the runner exited with {status}; see {}", self.log_file().display());
            }
            if client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("the runner was not ready within 60 s; see {}", self.log_file().display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Readiness of ingest comes before the sources are assigned their partitions.
        if !self.extra.iter().any(|a| a == "--no-sources") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok(())
    }

    pub fn log_file(&self) -> PathBuf {
        self.log_dir.join("runner.log")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The runner (`runner`) and every process under it, by name: a function with several
    /// replicas has several.
    pub fn processes(&self) -> BTreeMap<String, Vec<u32>> {
        self.child.id().map(processes_under).unwrap_or_default()
    }

    /// Sends `signal` to the runner itself (its functions are its children and go on running
    /// after a SIGKILL, as containers outlive a crashed dispatcher).
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self.child.id().context("the runner has exited")?;
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
    pub async fn wait(&mut self, timeout: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .with_context(|| format!("the runner did not exit within {} s", timeout.as_secs()))??;
        Ok(())
    }

    /// Starts the runner again with the same settings (after [`Pipeline::wait`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = spawn(&self.stack, &self.args, &self.log_dir, &extra, &self.env)?;
        self.wait_ready().await
    }

    /// SIGTERM, then waits for the runner to stop its functions and exit (SIGKILL after 40 s).
    pub async fn stop(mut self) {
        if self.child.id().is_some() {
            let _ = self.signal(Signal::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await.is_err() {
                let _ = self.child.kill().await;
            }
        }
    }
}

/// A pipeline dropped without [`Pipeline::stop`] (a test that panicked, a tool that failed):
/// SIGTERM, so the runner still stops its functions instead of leaving them on their ports.
impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
}

fn spawn(
    stack: &Stack,
    args: &PipelineArgs,
    log_dir: &std::path::Path,
    extra: &[&str],
    env: &[(String, Option<String>)],
) -> anyhow::Result<Child> {
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
        .env("REDIS_URL", &stack.redis_url)
        .env("MONGODB_URI", &stack.mongodb_uri)
        .env("RUNNER_BIN_DIR", &bin_dir)
        .env("RUNNER_LOG_DIR", log_dir)
        .env("RUNNER_BASE_PORT", args.base_port.to_string())
        .env_remove("RUNNER_RUN_ID");
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

/// `root` and every process under it, by name (`/proc/<pid>/comm`). Each thread lists its own
/// children: a replica started by a worker thread is not the main thread's child.
pub fn processes_under(root: u32) -> BTreeMap<String, Vec<u32>> {
    let mut found: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        if let Ok(name) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            found.entry(name.trim().to_owned()).or_default().push(pid);
        }
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                queue.extend(children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    found
}
