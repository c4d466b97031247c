//! Each function started on its own, over and over: exec → readiness probe, and its resident
//! set idle.

use super::{
    BenchArgs, Starts,
    baselines::{free_port, wait_ready},
    percentile,
};
use crate::state::procfs::rss_mb;
use anyhow::Context;
use runner::Stack;
use std::{collections::BTreeMap, time::Duration};

/// Each function started `--starts` times on its own, with its local environment: exec →
/// readiness probe answered, and the resident set 300 ms later with no request served.
pub async fn starts(stack: &Stack, args: &BenchArgs) -> anyhow::Result<BTreeMap<String, Starts>> {
    let bin_dir = match &args.pipeline.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("the tools' folder")?.to_path_buf(),
    };
    let stack = Stack { run_id: Some(format!("bench-starts-{}", std::process::id())), ..stack.clone() };
    let log_dir = args.out.join("starts");
    std::fs::create_dir_all(&log_dir)?;
    let mut figures = BTreeMap::new();
    for service in stack.services()? {
        let env = stack.local_env(&service, |_| None)?;
        let (mut ready, mut rss) = (Vec::new(), Vec::new());
        for start in 1..=args.starts {
            let port = free_port()?;
            let log = std::fs::File::create(log_dir.join(format!("{}.log", service.name)))?;
            let mut child = tokio::process::Command::new(bin_dir.join(&service.name))
                .envs(env.iter().cloned())
                .env("PORT", port.to_string())
                .env("HOST", "127.0.0.1")
                .env("RUST_LOG", "warn")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", service.name))?;
            let url = format!("http://127.0.0.1:{port}{}", service.readiness_path);
            let took = wait_ready(&url, Duration::from_secs(10), &mut child).await.with_context(|| {
                format!(
                    "{} start {start} of {}: waiting for its readiness probe (log {})",
                    service.name,
                    args.starts,
                    log_dir.join(format!("{}.log", service.name)).display()
                )
            })?;
            ready.push(took.as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Some(pid) = child.id() {
                rss.push(rss_mb(pid).unwrap_or(0.0));
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        let max = ready.iter().copied().fold(0.0, f64::max);
        figures.insert(
            service.name.clone(),
            Starts {
                starts: ready.len(),
                ready_p50_ms: percentile(&mut ready, 0.5),
                ready_max_ms: max,
                idle_rss_mb: percentile(&mut rss, 0.5),
            },
        );
    }
    Ok(figures)
}
