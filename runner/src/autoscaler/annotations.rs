//! The scaling annotations (`autoscaling.knative.dev/…`) of the Services and of an overlay
//! (`knative/overlays/<mode>`, as `kubectl apply -k` takes it), read as Knative reads them.

use crate::manifests::Annotations;
use anyhow::{Context, bail};
use std::{path::Path, time::Duration};

/// How an overlay scales the Knative Services, from its strategic-merge patch's annotations;
/// what it does not set takes the default of Knative 1.23's `config-autoscaler`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    /// `autoscaling.knative.dev/min-scale` (default 0).
    pub min_scale: u32,
    /// `autoscaling.knative.dev/max-scale` (default 0: no bound).
    pub max_scale: u32,
    /// `autoscaling.knative.dev/scale-to-zero-pod-retention-period`, if the overlay sets it.
    pub retention: Option<Duration>,
    /// `autoscaling.knative.dev/target`: requests in flight per replica (default 100).
    pub target: f64,
    /// `autoscaling.knative.dev/target-utilization-percentage` (default 70).
    pub target_utilization: f64,
    /// `autoscaling.knative.dev/window`, the stable window (default 60 s).
    pub stable_window: Duration,
    /// `autoscaling.knative.dev/panic-window-percentage`: the panic window as a share of the
    /// stable window (default 10).
    pub panic_window_percentage: f64,
    /// `autoscaling.knative.dev/panic-threshold-percentage` (default 200).
    pub panic_threshold_percentage: f64,
}

impl Default for Scaling {
    fn default() -> Scaling {
        Scaling {
            min_scale: 0,
            max_scale: 0,
            retention: None,
            target: 100.0,
            target_utilization: 70.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
        }
    }
}

const PREFIX: &str = "autoscaling.knative.dev/";

/// The annotations that `kustomization` patches into every Knative Service's template (later
/// patches win, as kustomize applies them in order).
pub fn overlay_annotations(kustomization: &Path) -> anyhow::Result<Annotations> {
    let text = std::fs::read_to_string(kustomization)
        .with_context(|| format!("reading {}", kustomization.display()))?;
    let doc: serde_json::Value =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", kustomization.display()))?;
    let mut annotations = Annotations::new();
    for patch in doc.get("patches").and_then(|p| p.as_array()).into_iter().flatten() {
        let Some(text) = patch.get("patch").and_then(|p| p.as_str()) else { continue };
        let patch: serde_json::Value = serde_saphyr::from_str(text)
            .with_context(|| format!("parsing a patch in {}", kustomization.display()))?;
        let kind = patch.get("kind").or_else(|| patch.pointer("/target/kind")).and_then(|k| k.as_str());
        if kind != Some("Service") {
            continue;
        }
        if let Some(found) = patch.pointer("/spec/template/metadata/annotations").and_then(|a| a.as_object())
        {
            annotations.extend(found.clone());
        }
    }
    Ok(annotations)
}

impl Scaling {
    /// Knative's defaults, then each set of annotations in turn (a later one wins). Values out
    /// of the ranges Knative's webhook admits are errors, and so is a metric other than
    /// concurrency (the runner measures only that).
    pub fn from_annotations(layers: &[&Annotations]) -> anyhow::Result<Scaling> {
        let mut scaling = Scaling::default();
        for (key, value) in layers.iter().flat_map(|a| a.iter()) {
            let Some(name) = key.strip_prefix(PREFIX) else { continue };
            let serde_json::Value::String(value) = value else { bail!("{key} is {value}, not a string") };
            scaling.set(name, value).with_context(|| format!("{key}: {value:?}"))?;
        }
        if scaling.max_scale != 0 && scaling.max_scale < scaling.min_scale {
            bail!("max-scale {} is below min-scale {}", scaling.max_scale, scaling.min_scale);
        }
        Ok(scaling)
    }

    fn set(&mut self, name: &str, value: &str) -> anyhow::Result<()> {
        let number = |low: f64, high: f64| -> anyhow::Result<f64> {
            let n: f64 = value.parse().context("not a number")?;
            anyhow::ensure!((low..=high).contains(&n), "must be within {low}..={high}");
            Ok(n)
        };
        let count = || -> anyhow::Result<u32> {
            let n: u32 = value.parse().context("not a count")?;
            anyhow::ensure!(n <= i32::MAX as u32, "must fit an int32");
            Ok(n)
        };
        match name {
            "min-scale" => self.min_scale = count()?,
            "max-scale" => self.max_scale = count()?,
            "scale-to-zero-pod-retention-period" => {
                let retention = go_duration(value)?;
                anyhow::ensure!(retention <= Duration::from_secs(3600), "must be within 0s..1h");
                self.retention = Some(retention);
            }
            "target" => self.target = number(0.01, f64::MAX)?,
            "target-utilization-percentage" => self.target_utilization = number(1.0, 100.0)?,
            "window" => {
                let window = go_duration(value)?;
                anyhow::ensure!(
                    (Duration::from_secs(6)..=Duration::from_secs(3600)).contains(&window),
                    "must be within 6s..1h"
                );
                anyhow::ensure!(window.subsec_nanos() == 0, "must be whole seconds");
                self.stable_window = window;
            }
            "panic-window-percentage" => self.panic_window_percentage = number(1.0, 100.0)?,
            "panic-threshold-percentage" => self.panic_threshold_percentage = number(110.0, 1000.0)?,
            "metric" => anyhow::ensure!(value == "concurrency", "the runner scales on concurrency only"),
            "class" => {
                anyhow::ensure!(value == "kpa.autoscaling.knative.dev", "the runner plays Knative's KPA only")
            }
            // initial-scale, activation-scale, scale-down-delay, target-burst-capacity…: the
            // runner does not play them (see the autoscaler's doc).
            _ => {}
        }
        Ok(())
    }
}

/// A Go duration as Knative's annotations write it (`30s`, `1m30s`, `500ms`, `0s`).
pub fn go_duration(s: &str) -> anyhow::Result<Duration> {
    let mut total = 0.0_f64;
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        bail!("duration {s:?} is empty");
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let value: f64 =
            rest[..digits].parse().with_context(|| format!("duration {s:?} has a bad number"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            other => bail!("duration {s:?} has an unknown unit {other:?}"),
        };
        total += value * unit;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::services;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(go_duration("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(go_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "30", "s", "3d", "x1s"] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
    }

    /// The overlay's scaling, as it applies to a Service that sets no annotation of its own.
    fn scaling(kustomization: &Path) -> anyhow::Result<Scaling> {
        Scaling::from_annotations(&[&overlay_annotations(kustomization)?])
    }

    #[test]
    fn reads_the_project_overlays() {
        let overlays = Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative/overlays");
        let on = scaling(&overlays.join("always-on/kustomization.yaml")).unwrap();
        let zero = scaling(&overlays.join("scale-to-zero/kustomization.yaml")).unwrap();
        assert_eq!((on.min_scale, zero.min_scale), (1, 0));
        assert_eq!((on.retention, zero.retention), (None, Some(Duration::from_secs(30))));
        // Everything else is the same in both modes.
        assert_eq!(Scaling { min_scale: 0, retention: None, ..on }, Scaling { retention: None, ..zero });
        assert!(on.max_scale >= 2, "{on:?}");
        // Each Service's own target, under the overlay's annotations.
        let services = services(&overlays.join("../base")).unwrap();
        let overlay = overlay_annotations(&overlays.join("always-on/kustomization.yaml")).unwrap();
        let targets: Vec<(String, f64)> = services
            .iter()
            .map(|s| (s.name.clone(), Scaling::from_annotations(&[&s.annotations, &overlay]).unwrap().target))
            .collect();
        let expected = [("ingest", 10.0), ("producer", 10.0), ("counter", 100.0), ("archiver", 100.0)];
        assert_eq!(targets, expected.map(|(n, t)| (n.to_owned(), t)));
    }

    #[test]
    fn scaling_annotations_outside_knatives_ranges_are_errors() {
        let dir = std::env::temp_dir().join(format!("overlay-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kustomization.yaml");
        let overlay = |annotations: &str| {
            let patch = format!(
                "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  template:\n    metadata:\n      annotations:\n{annotations}"
            );
            let doc = serde_json::json!({"resources": ["../base"], "patches": [{"patch": patch}]});
            std::fs::write(&path, serde_json::to_string(&doc).unwrap()).unwrap();
            scaling(&path)
        };
        let ok = overlay(
            "        autoscaling.knative.dev/target: \"7.5\"\n        autoscaling.knative.dev/window: 20s\n",
        )
        .unwrap();
        assert_eq!((ok.target, ok.stable_window), (7.5, Duration::from_secs(20)));
        assert_eq!(ok.panic_threshold_percentage, 200.0);
        for bad in [
            "autoscaling.knative.dev/min-scale: \"-1\"",
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period: thirty",
            "autoscaling.knative.dev/window: 5s",
            "autoscaling.knative.dev/window: 6500ms",
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period: 2h",
            "autoscaling.knative.dev/max-scale: \"4294967295\"",
            "autoscaling.knative.dev/target: \"0\"",
            "autoscaling.knative.dev/panic-threshold-percentage: \"100\"",
            "autoscaling.knative.dev/metric: rps",
            "autoscaling.knative.dev/min-scale: \"3\"\n        autoscaling.knative.dev/max-scale: \"2\"",
        ] {
            let err = overlay(&format!("        {bad}\n")).unwrap_err();
            assert!(
                format!("{err:#}").contains("autoscaling") || format!("{err:#}").contains("scale"),
                "{bad}: {err:#}"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
