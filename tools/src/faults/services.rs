//! The stack's services as a fault reaches them: signalled through their pid files in
//! `.stack/run`, started again with `dev/stack up <service>`.

use anyhow::{Context, bail};
use nix::{sys::signal::Signal, unistd::Pid};
use std::path::PathBuf;

/// A service of the stack that a scenario stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Redis,
    /// The MongoDB-wire server.
    Ferretdb,
    Kafka,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Redis, Service::Ferretdb, Service::Kafka];

    /// Its name in `dev/stack` and its pid file.
    pub fn name(self) -> &'static str {
        match self {
            Service::Redis => "redis",
            Service::Ferretdb => "ferretdb",
            Service::Kafka => "kafka",
        }
    }
}

/// Where the stack's script and pid files are.
#[derive(Debug, Clone)]
pub struct Services {
    pub script: PathBuf,
    pub dir: PathBuf,
}

impl Services {
    fn pid(&self, service: Service) -> anyhow::Result<Pid> {
        let path = self.dir.join("run").join(format!("{}.pid", service.name()));
        let pid = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} — is the stack up (`dev/stack up`)?", path.display()))?;
        Ok(Pid::from_raw(pid.trim().parse().with_context(|| format!("{} holds no pid", path.display()))?))
    }

    pub fn signal(&self, service: Service, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid(service)?;
        nix::sys::signal::kill(pid, signal).with_context(|| format!("{signal} to {} ({pid})", service.name()))
    }

    /// `dev/stack up <service>`: starts it again and waits until it serves.
    pub async fn start(&self, service: Service) -> anyhow::Result<()> {
        let output = tokio::process::Command::new(&self.script)
            .args(["up", service.name()])
            .env("STACK_DIR", &self.dir)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {} up {}", self.script.display(), service.name()))?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = said.lines().rev().take(20).collect();
            bail!(
                "{} up {} failed with {}:\n{}",
                self.script.display(),
                service.name(),
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// After a failed scenario: every service running and none stopped.
    pub async fn heal(&self) {
        for service in Service::ALL {
            let _ = self.signal(service, Signal::SIGCONT);
            let _ = self.start(service).await;
        }
    }
}
