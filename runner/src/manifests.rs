//! Reads the Knative Services (the functions: order, port protocol, environment, readiness
//! path), the KafkaSources and the KafkaSink that is their dead-letter sink from the same
//! `knative/` manifests that go to the cluster, so the local runner and Kubernetes cannot drift.
//! Defaults are Knative's own (eventing-kafka-broker `kafka_defaults.go`, `source.go`). The
//! scaling annotations come from the same overlays (`knative/overlays/<mode>`) that
//! `kubectl apply -k` takes.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

/// A KafkaSource as the runner uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaSource {
    pub name: String,
    pub namespace: String,
    pub topics: Vec<String>,
    pub consumer_group: String,
    pub initial_offset: String,
    pub ordering: Ordering,
    pub delivery: Delivery,
    /// Name of the Knative Service the events go to.
    pub sink: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ordering {
    /// One event in flight per partition, retries included.
    Ordered,
    /// Up to `UNORDERED_IN_FLIGHT` events in flight per partition.
    Unordered,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Retries after the first attempt.
    pub retry: u32,
    pub backoff: Backoff,
    pub backoff_delay: Duration,
    /// Per attempt.
    pub timeout: Duration,
    /// Kafka topic of the dead-letter KafkaSink, if any.
    pub dead_letter_topic: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    Exponential,
    Linear,
}

impl Delivery {
    /// Knative's wait before retry `n` (1-based): `delay·2ⁿ` or `delay·n`, no jitter, no cap.
    pub fn wait_before_retry(&self, n: u32) -> Duration {
        match self.backoff {
            Backoff::Exponential => self.backoff_delay.saturating_mul(2u32.saturating_pow(n)),
            Backoff::Linear => self.backoff_delay.saturating_mul(n),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Resource {
    api_version: String,
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: serde_json::Value,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    namespace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SourceSpec {
    topics: Vec<String>,
    consumer_group: Option<String>,
    initial_offset: Option<String>,
    ordering: Option<String>,
    delivery: Option<DeliverySpec>,
    sink: Destination,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeliverySpec {
    retry: Option<u32>,
    backoff_policy: Option<String>,
    backoff_delay: Option<String>,
    timeout: Option<String>,
    dead_letter_sink: Option<Destination>,
}

#[derive(Deserialize, Default)]
struct Destination {
    #[serde(rename = "ref")]
    reference: Option<Reference>,
}

#[derive(Deserialize, Default)]
struct Reference {
    kind: String,
    name: String,
}

/// A Knative Service, as the runner runs it: one function.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// The container port is named `h2c`: Knative (and the activator) speak HTTP/2 cleartext
    /// to it, as gRPC needs; otherwise HTTP/1.1.
    pub http2: bool,
    pub env: Vec<EnvVar>,
    /// `readinessProbe.httpGet.path` (Knative's default `/`).
    pub readiness_path: String,
    /// `containerConcurrency`: at most this many requests in flight per replica (0: no limit).
    pub container_concurrency: u32,
    /// `spec.template.metadata.annotations` (e.g. its own autoscaling target).
    pub annotations: Annotations,
}

/// Annotations as the manifests write them.
pub type Annotations = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq)]
pub struct EnvVar {
    pub name: String,
    pub value: EnvValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EnvValue {
    Value(String),
    /// `valueFrom.secretKeyRef`: the key of a Secret created by hand on the cluster.
    Secret {
        key: String,
    },
}

impl Service {
    /// The names of the other Services this one calls: an env value holding their cluster
    /// address (`http://<name>.<namespace>.svc…`).
    pub fn calls<'a>(&self, names: impl Iterator<Item = &'a str>) -> Vec<String> {
        let names: Vec<&str> = names.filter(|n| *n != self.name).collect();
        self.env
            .iter()
            .filter_map(|v| match &v.value {
                EnvValue::Value(value) => cluster_service(value),
                EnvValue::Secret { .. } => None,
            })
            .filter(|(name, _)| names.contains(&name.as_str()))
            .map(|(name, _)| name)
            .collect()
    }
}

/// `(service, namespace)` of a cluster address such as `http://producer.weather.svc.cluster.local`.
pub fn cluster_service(value: &str) -> Option<(String, String)> {
    let host = value.split_once("://").map_or(value, |(_, rest)| rest);
    let host = host.split(['/', ':']).next()?;
    let mut labels = host.split('.');
    let (name, namespace, svc) = (labels.next()?, labels.next()?, labels.next()?);
    (svc == "svc").then(|| (name.to_owned(), namespace.to_owned()))
}

#[derive(Deserialize)]
struct ServiceSpec {
    template: PodTemplate,
}

#[derive(Deserialize)]
struct PodTemplate {
    #[serde(default)]
    metadata: TemplateMetadata,
    spec: PodSpec,
}

#[derive(Deserialize, Default)]
struct TemplateMetadata {
    #[serde(default)]
    annotations: Annotations,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    containers: Vec<Container>,
    #[serde(default)]
    container_concurrency: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    ports: Vec<ContainerPort>,
    #[serde(default)]
    env: Vec<ContainerEnv>,
    readiness_probe: Option<Probe>,
}

#[derive(Deserialize)]
struct ContainerPort {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerEnv {
    name: String,
    value: Option<String>,
    value_from: Option<ValueFrom>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ValueFrom {
    secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize)]
struct SecretKeyRef {
    key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: Option<HttpGet>,
}

#[derive(Deserialize)]
struct HttpGet {
    path: Option<String>,
}

#[derive(Deserialize)]
struct Kustomization {
    resources: Vec<String>,
}

/// The Knative Services of `dir`, in the order its `kustomization.yaml` lists their files (the
/// runner gives them ports in that order).
pub fn services(dir: &Path) -> anyhow::Result<Vec<Service>> {
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let kustomization: Kustomization =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut services = Vec::new();
    for file in &kustomization.resources {
        for (path, r) in read_file(&dir.join(file))? {
            if r.kind == "Service" && r.api_version.starts_with("serving.knative.dev/") {
                services.push(
                    service(&r)
                        .with_context(|| format!("Service {:?} in {}", r.metadata.name, path.display()))?,
                );
            }
        }
    }
    if services.is_empty() {
        bail!("no Knative Service listed in {}", path.display());
    }
    Ok(services)
}

fn service(r: &Resource) -> anyhow::Result<Service> {
    let spec: ServiceSpec = serde_json::from_value(r.spec.clone()).context("reading spec")?;
    let [container] = &spec.template.spec.containers[..] else {
        bail!("spec.template.spec.containers must hold exactly one container");
    };
    let env = container
        .env
        .iter()
        .map(|e| {
            let value = match (&e.value, &e.value_from) {
                (Some(v), None) => EnvValue::Value(v.clone()),
                (None, Some(ValueFrom { secret_key_ref: Some(s) })) => {
                    EnvValue::Secret { key: s.key.clone() }
                }
                _ => bail!("env {} needs a value or a secretKeyRef", e.name),
            };
            Ok(EnvVar { name: e.name.clone(), value })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Service {
        name: r.metadata.name.clone(),
        namespace: r.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        http2: container.ports.first().and_then(|p| p.name.as_deref()) == Some("h2c"),
        env,
        readiness_path: container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
            .unwrap_or_else(|| "/".into()),
        container_concurrency: spec.template.spec.container_concurrency,
        annotations: spec.template.metadata.annotations,
    })
}

/// Every KafkaSource under `dir` (all `*.yaml` files, several documents per file allowed).
pub fn kafka_sources(dir: &Path) -> anyhow::Result<Vec<KafkaSource>> {
    let resources = read_dir(dir)?;
    let sink_topics: BTreeMap<String, String> = resources
        .iter()
        .filter(|(_, r)| r.kind == "KafkaSink")
        .filter_map(|(_, r)| Some((r.metadata.name.clone(), r.spec.get("topic")?.as_str()?.to_owned())))
        .collect();
    let mut sources = Vec::new();
    for (path, r) in resources.iter().filter(|(_, r)| r.kind == "KafkaSource") {
        let source = kafka_source(r, &sink_topics)
            .with_context(|| format!("KafkaSource {:?} in {}", r.metadata.name, path.display()))?;
        sources.push(source);
    }
    if sources.is_empty() {
        bail!("no KafkaSource found under {}", dir.display());
    }
    Ok(sources)
}

fn kafka_source(r: &Resource, sink_topics: &BTreeMap<String, String>) -> anyhow::Result<KafkaSource> {
    if !r.api_version.starts_with("sources.knative.dev/") {
        bail!("apiVersion {} is not sources.knative.dev", r.api_version);
    }
    let spec: SourceSpec = serde_json::from_value(r.spec.clone()).context("reading spec")?;
    let sink = match spec.sink.reference {
        Some(Reference { kind, name }) if kind == "Service" => name,
        _ => bail!("spec.sink must reference a Knative Service"),
    };
    if spec.topics.is_empty() {
        bail!("spec.topics is empty");
    }
    let ordering = match spec.ordering.as_deref().unwrap_or("ordered") {
        "ordered" => Ordering::Ordered,
        "unordered" => Ordering::Unordered,
        other => bail!("spec.ordering {other:?} is neither ordered nor unordered"),
    };
    let initial_offset = spec.initial_offset.unwrap_or_else(|| "latest".into());
    if initial_offset != "earliest" && initial_offset != "latest" {
        bail!("spec.initialOffset {initial_offset:?} is neither earliest nor latest");
    }
    let delivery = match spec.delivery {
        // Knative's defaults when spec.delivery is absent.
        None => Delivery {
            retry: 10,
            backoff: Backoff::Exponential,
            backoff_delay: Duration::from_millis(300),
            timeout: Duration::from_secs(600),
            dead_letter_topic: None,
        },
        Some(d) => Delivery {
            retry: d.retry.unwrap_or(0),
            backoff: match d.backoff_policy.as_deref() {
                Some("linear") => Backoff::Linear,
                _ => Backoff::Exponential,
            },
            backoff_delay: d
                .backoff_delay
                .as_deref()
                .map(iso8601)
                .transpose()?
                .unwrap_or(Duration::from_millis(200)),
            timeout: d.timeout.as_deref().map(iso8601).transpose()?.unwrap_or(Duration::from_secs(600)),
            dead_letter_topic: match d.dead_letter_sink.and_then(|d| d.reference) {
                None => None,
                Some(Reference { kind, name }) if kind == "KafkaSink" => Some(
                    sink_topics
                        .get(&name)
                        .with_context(|| format!("deadLetterSink KafkaSink {name:?} is not defined"))?
                        .clone(),
                ),
                Some(Reference { kind, .. }) => {
                    bail!("deadLetterSink of kind {kind} is not supported locally")
                }
            },
        },
    };
    Ok(KafkaSource {
        consumer_group: spec
            .consumer_group
            .with_context(|| "spec.consumerGroup is required (Knative's default is a random uuid)")?,
        name: r.metadata.name.clone(),
        namespace: r.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        topics: spec.topics,
        initial_offset,
        ordering,
        delivery,
        sink,
    })
}

fn read_dir(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Resource)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading manifests in {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    let mut resources = Vec::new();
    for path in paths {
        resources.extend(read_file(&path)?);
    }
    Ok(resources)
}

/// The resources of one file (several documents allowed).
fn read_file(path: &Path) -> anyhow::Result<Vec<(PathBuf, Resource)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.split("\n---")
        .filter(|d| d.lines().any(|l| l.starts_with("kind:")))
        .map(|doc| {
            let resource: Resource =
                serde_saphyr::from_str(doc).with_context(|| format!("parsing {}", path.display()))?;
            Ok((path.to_path_buf(), resource))
        })
        .collect()
}

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
            // runner does not play them (README, "The local runner").
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

/// The time part of an ISO-8601 duration (`PT0.2S`, `PT1M30S`, `PT2H`), as Knative's delivery
/// fields use it.
pub fn iso8601(s: &str) -> anyhow::Result<Duration> {
    let rest = s.strip_prefix("PT").with_context(|| format!("duration {s:?} does not start with PT"))?;
    let mut total = 0.0_f64;
    let mut number = String::new();
    for c in rest.chars() {
        let unit = match c {
            '0'..='9' | '.' => {
                number.push(c);
                continue;
            }
            'H' => 3600.0,
            'M' => 60.0,
            'S' => 1.0,
            _ => bail!("duration {s:?} has an unexpected {c:?}"),
        };
        let value: f64 = number.parse().with_context(|| format!("duration {s:?} has a bad number"))?;
        total += value * unit;
        number.clear();
    }
    if !number.is_empty() || rest.is_empty() {
        bail!("duration {s:?} is incomplete");
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_durations() {
        assert_eq!(iso8601("PT0.2S").unwrap(), Duration::from_millis(200));
        assert_eq!(iso8601("PT1M30S").unwrap(), Duration::from_secs(90));
        assert_eq!(iso8601("PT2H").unwrap(), Duration::from_secs(7200));
        for bad in ["0.2S", "PT", "PT5", "PT1D", "PTxS"] {
            assert!(iso8601(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_follows_knative() {
        let d = |backoff| Delivery {
            retry: 3,
            backoff,
            backoff_delay: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            dead_letter_topic: None,
        };
        let exp: Vec<_> = (1..=3).map(|n| d(Backoff::Exponential).wait_before_retry(n).as_millis()).collect();
        assert_eq!(exp, [200, 400, 800]);
        let lin: Vec<_> = (1..=3).map(|n| d(Backoff::Linear).wait_before_retry(n).as_millis()).collect();
        assert_eq!(lin, [100, 200, 300]);
    }

    #[test]
    fn reads_the_project_manifests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative/base");
        let sources = kafka_sources(&dir).unwrap();
        let sinks: Vec<_> = sources.iter().map(|s| s.sink.as_str()).collect();
        assert_eq!(sinks, ["archiver", "counter"]);
        for s in &sources {
            assert_eq!(s.topics, ["messages"]);
            assert_eq!(s.delivery.dead_letter_topic.as_deref(), Some("messages-dlq"));
            assert!(s.delivery.retry > 0);
        }
    }

    #[test]
    fn reads_the_project_services() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative/base");
        let services = services(&dir).unwrap();
        let names: Vec<_> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["ingest", "producer", "counter", "archiver"]);
        let http2: Vec<_> = services.iter().filter(|s| s.http2).map(|s| s.name.as_str()).collect();
        assert_eq!(http2, ["producer"]);
        let ingest = &services[0];
        assert_eq!(ingest.calls(names.iter().copied()), ["producer"]);
        assert!(services[1..].iter().all(|s| s.calls(names.iter().copied()).is_empty()));
        assert!(services.iter().all(|s| s.readiness_path == "/health/readiness"));
        let counter = &services[2];
        assert!(counter.env.contains(&EnvVar {
            name: "REDIS_URL".into(),
            value: EnvValue::Secret { key: "REDIS_URL".into() }
        }));
    }

    #[test]
    fn ingest_waits_longer_than_producer_can_take() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative/base");
        let services = services(&dir).unwrap();
        let ms = |service: &str, var: &str| -> u64 {
            let s = services.iter().find(|s| s.name == service).unwrap();
            match &s.env.iter().find(|e| e.name == var).unwrap_or_else(|| panic!("{service} {var}")).value {
                EnvValue::Value(v) => v.parse().unwrap(),
                EnvValue::Secret { .. } => panic!("{var} is a secret"),
            }
        };
        let producer = ms("producer", "KAFKA_QUEUE_TIMEOUT_MS") + ms("producer", "KAFKA_MESSAGE_TIMEOUT_MS");
        assert!(
            ms("ingest", "PRODUCER_TIMEOUT_MS") > producer,
            "a 503 from ingest must mean Kafka did not take it"
        );
    }

    #[test]
    fn counter_knows_the_partitions_the_runner_creates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative/base");
        let counter = services(&dir).unwrap().into_iter().find(|s| s.name == "counter").unwrap();
        let partitions =
            counter.env.iter().find(|e| e.name == "KAFKA_TOPIC_PARTITIONS").map(|e| e.value.clone());
        assert_eq!(partitions, Some(EnvValue::Value(crate::PARTITIONS.to_string())));
    }

    #[test]
    fn the_delivery_budget_covers_a_ten_minute_outage() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative/base");
        for source in kafka_sources(&dir).unwrap() {
            let waits: Duration =
                (1..=source.delivery.retry).map(|n| source.delivery.wait_before_retry(n)).sum();
            assert!(waits >= Duration::from_secs(600), "{}: {waits:?}", source.name);
            let longest = source.delivery.wait_before_retry(source.delivery.retry);
            assert!(
                longest <= Duration::from_secs(120),
                "{}: the last wait {longest:?} delays recovery",
                source.name
            );
        }
    }

    #[test]
    fn cluster_addresses() {
        assert_eq!(
            cluster_service("http://producer.weather.svc.cluster.local"),
            Some(("producer".into(), "weather".into()))
        );
        assert_eq!(
            cluster_service("weather-kafka-bootstrap.kafka.svc:9092"),
            Some(("weather-kafka-bootstrap".into(), "kafka".into()))
        );
        assert_eq!(cluster_service("weather-kafka-bootstrap.kafka:9092"), None);
        assert_eq!(cluster_service("messages"), None);
    }

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

    #[test]
    fn an_unknown_ordering_is_an_error() {
        let dir = std::env::temp_dir().join(format!("manifests-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("s.yaml"),
            "apiVersion: sources.knative.dev/v1\nkind: KafkaSource\nmetadata:\n  name: s\nspec:\n  topics: [t]\n  consumerGroup: g\n  ordering: sorted\n  sink:\n    ref:\n      kind: Service\n      name: counter\n",
        )
        .unwrap();
        let err = kafka_sources(&dir).unwrap_err();
        assert!(format!("{err:#}").contains("ordering"), "{err:#}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
