//! Energy per component from the energy experiment's newest report (`make energy` writes
//! `target/energy/report.json`; runs kept in the repository are under `loadtest/results/`).

use anyhow::Context;
use serde::Serialize;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

/// What the energy panel shows of a report.
#[derive(Debug, Serialize)]
pub struct Energy {
    pub report: PathBuf,
    pub shape: String,
    pub modes: Vec<Mode>,
}

#[derive(Debug, Serialize)]
pub struct Mode {
    pub mode: String,
    /// `rapl` or `model` (see the report).
    pub energy_source: String,
    /// Joules per component over the mode's window.
    pub energy_j: BTreeMap<String, f64>,
    pub total_j: f64,
    pub j_per_1000_tweets: Option<f64>,
}

/// The newest `report.json` in `folders` or one level below them, read; `None` when there is
/// none.
pub fn latest(folders: &[PathBuf]) -> anyhow::Result<Option<Energy>> {
    let mut reports: Vec<(SystemTime, PathBuf)> = Vec::new();
    for folder in folders {
        let below = std::fs::read_dir(folder).into_iter().flatten().flatten().map(|e| e.path());
        for candidate in std::iter::once(folder.clone()).chain(below) {
            let report = candidate.join("report.json");
            if let Ok(modified) = report.metadata().and_then(|m| m.modified()) {
                reports.push((modified, report));
            }
        }
    }
    let Some((_, newest)) = reports.into_iter().max() else { return Ok(None) };
    read(&newest).map(Some)
}

fn read(path: &Path) -> anyhow::Result<Energy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let modes = json["modes"]
        .as_array()
        .with_context(|| format!("{} has no modes", path.display()))?
        .iter()
        .map(|m| {
            let energy_j: BTreeMap<String, f64> = m["energy_j"]
                .as_object()
                .with_context(|| format!("{}: a mode without energy_j", path.display()))?
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect();
            Ok(Mode {
                mode: m["mode"].as_str().unwrap_or("?").to_owned(),
                energy_source: m["energy_source"].as_str().unwrap_or("?").to_owned(),
                total_j: m["total_j"].as_f64().unwrap_or_else(|| energy_j.values().sum()),
                j_per_1000_tweets: m["j_per_1000_tweets"].as_f64(),
                energy_j,
            })
        })
        .collect::<anyhow::Result<Vec<Mode>>>()?;
    Ok(Energy {
        report: path.to_owned(),
        shape: json["context"]["shape"].as_str().unwrap_or_default().to_owned(),
        modes,
    })
}
