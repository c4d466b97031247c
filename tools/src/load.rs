//! Locust, driven the one way every tool drives it: headless, with the burst shape of
//! `loadtest/locustfile.py`, its own output in `<out>/locust.log`, its final statistics in
//! `<out>/locust.json` (and with `--csv`, its CSV files), which [`LocustStats`] reads, and one
//! line per request in `<out>/ledger.jsonl` ([`Locust::ledger`]), which the audit reads.

use crate::audit::Ledger;
use anyhow::{Context, bail};
use std::{collections::BTreeMap, path::PathBuf, process::Stdio};

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The Locust executable (`make demo` installs it into .stack/venv).
    #[arg(long, env = "LOCUST", default_value = ".stack/venv/bin/locust")]
    pub locust: PathBuf,
    /// The Locust file.
    #[arg(long, default_value = "loadtest/locustfile.py")]
    pub locustfile: PathBuf,
    /// Locust users during a burst.
    #[arg(long, default_value_t = 40)]
    pub users: u32,
    /// Requests per second per user (0 = as fast as possible).
    #[arg(long, default_value_t = 25.0)]
    pub user_rps: f64,
    /// Length of each burst, in seconds.
    #[arg(long, default_value_t = 25)]
    pub burst_seconds: u32,
    /// Idle gap between bursts, in seconds.
    #[arg(long, default_value_t = 10)]
    pub gap_seconds: u32,
    /// Number of bursts.
    #[arg(long, default_value_t = 2)]
    pub bursts: u32,
    /// Also write Locust's CSV statistics (`locust_stats_history.csv`, …).
    #[arg(long)]
    pub csv: bool,
}

impl LoadArgs {
    /// Seconds from the first burst's start to the last one's end.
    pub fn seconds(&self) -> u32 {
        self.bursts * self.burst_seconds + self.bursts.saturating_sub(1) * self.gap_seconds
    }

    pub fn describe(&self) -> String {
        format!(
            "{} burst(s) of {} s with {} users at {} req/s each, {} s apart (~{} s)",
            self.bursts,
            self.burst_seconds,
            self.users,
            self.user_rps,
            self.gap_seconds,
            self.seconds()
        )
    }

    /// Starts Locust against `host`, writing into `out`; [`Locust::finish`] waits for it.
    pub fn spawn(&self, host: &str, out: &std::path::Path) -> anyhow::Result<Locust> {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let log = std::fs::File::create(out.join("locust.log"))?;
        let mut command = tokio::process::Command::new(&self.locust);
        command
            .arg("-f")
            .arg(&self.locustfile)
            .args(["--headless", "--host", host])
            .arg("--json-file")
            .arg(out.join("locust"))
            .arg("--ledger-file")
            .arg(out.join("ledger.jsonl"))
            .args(["--burst-users", &self.users.to_string(), "--burst-spawn-rate", &self.users.to_string()])
            .args([
                "--burst-seconds",
                &self.burst_seconds.to_string(),
                "--gap-seconds",
                &self.gap_seconds.to_string(),
            ])
            .args(["--bursts", &self.bursts.to_string(), "--user-rps", &self.user_rps.to_string()])
            // Let requests in flight at the end finish, so Locust's statistics include them.
            .args(["--stop-timeout", "10"]);
        if self.csv {
            command.arg("--csv").arg(out.join("locust"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {} (`make demo` installs it)", self.locust.display()))?;
        Ok(Locust { child, out: out.to_path_buf() })
    }
}

/// A running Locust.
pub struct Locust {
    child: tokio::process::Child,
    out: PathBuf,
}

impl Locust {
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether Locust is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for Locust to end and reads its statistics and its ledger.
    pub async fn finish(mut self) -> anyhow::Result<(LocustStats, Ledger)> {
        let status = self.child.wait().await?;
        // Locust exits 1 when any request failed; the statistics count those as failures.
        if !status.success() && status.code() != Some(1) {
            bail!("locust failed with {status}; see {}", self.out.join("locust.log").display());
        }
        Ok((LocustStats::read(&self.out.join("locust.json"))?, Ledger::read(&self.out.join("ledger.jsonl"))?))
    }
}

/// Locust's final statistics (`--json-file`), all endpoints together.
#[derive(Debug, Default, serde::Serialize)]
pub struct LocustStats {
    pub requests: u64,
    pub failures: u64,
    /// Response time in whole milliseconds (as Locust rounds it) → requests.
    #[serde(skip)]
    response_times: BTreeMap<u64, u64>,
}

impl<'de> serde::Deserialize<'de> for LocustStats {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Entry {
            num_requests: u64,
            num_failures: u64,
            response_times: BTreeMap<String, u64>,
        }
        let mut stats = LocustStats::default();
        for entry in Vec::<Entry>::deserialize(d)? {
            stats.requests += entry.num_requests;
            stats.failures += entry.num_failures;
            for (ms, n) in entry.response_times {
                let ms: f64 = ms.parse().map_err(serde::de::Error::custom)?;
                *stats.response_times.entry(ms as u64).or_default() += n;
            }
        }
        Ok(stats)
    }
}

impl LocustStats {
    pub fn read(path: &std::path::Path) -> anyhow::Result<LocustStats> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Requests answered 202.
    pub fn accepted(&self) -> u64 {
        self.requests - self.failures
    }

    /// The smallest response time that at least `fraction` of the requests did not exceed.
    pub fn percentile(&self, fraction: f64) -> f64 {
        let total: u64 = self.response_times.values().sum();
        let wanted = (total as f64 * fraction).ceil() as u64;
        let mut seen = 0;
        for (ms, n) in &self.response_times {
            seen += n;
            if seen >= wanted {
                return *ms as f64;
            }
        }
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_locust_statistics() {
        let json = r#"[{"name":"/input","method":"POST","num_requests":10,"num_failures":1,
            "response_times":{"3":5,"4.0":3,"9":1,"250":1}}]"#;
        let stats: LocustStats = serde_json::from_str(json).unwrap();
        assert_eq!((stats.requests, stats.failures, stats.accepted()), (10, 1, 9));
        assert_eq!(stats.percentile(0.5), 3.0);
        assert_eq!(stats.percentile(0.8), 4.0);
        assert_eq!(stats.percentile(0.9), 9.0);
        assert_eq!(stats.percentile(0.99), 250.0);
        assert_eq!(LocustStats::default().percentile(0.5), 0.0);
    }
}
