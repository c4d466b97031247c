//! Reads the Knative Services (the functions: order, port protocol, environment, readiness
//! path), the KafkaSources and the KafkaSink that is their dead-letter sink from the same
//! `knative/` manifests that go to the cluster, so the local runner and Kubernetes cannot drift.
//! Defaults are Knative's own (eventing-kafka-broker `kafka_defaults.go`, `source.go`). The
//! scaling annotations are read in [`crate::autoscaler::annotations`].

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
    /// The container's `resources.requests`: what the scheduler reserves for each replica.
    pub requests: Requests,
}

/// A container's resource requests (absent ones are zero, as the scheduler counts them).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Requests {
    /// CPU in millicores (`100m`, `0.5`, `1`).
    pub cpu_millis: f64,
    /// Memory in MiB (`48Mi`, `1Gi`, `128M`, bytes).
    pub memory_mib: f64,
}

impl Requests {
    /// From a `requests:` map of Kubernetes quantities.
    fn from_quantities(quantities: &BTreeMap<String, serde_json::Value>) -> anyhow::Result<Requests> {
        let get = |name: &str, parse: fn(&str) -> anyhow::Result<f64>| -> anyhow::Result<f64> {
            let Some(q) = quantities.get(name) else { return Ok(0.0) };
            // YAML may write a whole number unquoted (`cpu: 1`).
            let text = q.as_str().map_or_else(|| q.to_string(), str::to_owned);
            parse(&text).with_context(|| format!("requests.{name}: {text:?}"))
        };
        Ok(Requests { cpu_millis: get("cpu", cpu_millis)?, memory_mib: get("memory", memory_mib)? })
    }
}

/// A CPU quantity in millicores: `250m`, `0.5`, `2`.
pub fn cpu_millis(q: &str) -> anyhow::Result<f64> {
    let (number, scale) = match q.strip_suffix('m') {
        Some(n) => (n, 1.0),
        None => (q, 1000.0),
    };
    let n: f64 = number.parse().context("not a CPU quantity")?;
    anyhow::ensure!(n >= 0.0 && n.is_finite(), "must be a non-negative number");
    Ok(n * scale)
}

/// A memory quantity in MiB: binary (`Ki`, `Mi`, `Gi`) and decimal (`k`, `M`, `G`) suffixes, or bytes.
pub fn memory_mib(q: &str) -> anyhow::Result<f64> {
    const MIB: f64 = 1024.0 * 1024.0;
    let units = [("Ki", 1024.0), ("Mi", MIB), ("Gi", 1024.0 * MIB), ("k", 1e3), ("M", 1e6), ("G", 1e9)];
    let (number, bytes) =
        units.iter().find_map(|(suffix, b)| q.strip_suffix(suffix).map(|n| (n, *b))).unwrap_or((q, 1.0));
    let n: f64 = number.parse().context("not a memory quantity")?;
    anyhow::ensure!(n >= 0.0 && n.is_finite(), "must be a non-negative number");
    Ok(n * bytes / MIB)
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
    #[serde(default)]
    resources: Resources,
}

#[derive(Deserialize, Default)]
struct Resources {
    #[serde(default)]
    requests: BTreeMap<String, serde_json::Value>,
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
        requests: Requests::from_quantities(&container.resources.requests)?,
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
    fn kubernetes_quantities() {
        assert_eq!(cpu_millis("250m").unwrap(), 250.0);
        assert_eq!(cpu_millis("0.5").unwrap(), 500.0);
        assert_eq!(cpu_millis("2").unwrap(), 2000.0);
        assert_eq!(memory_mib("48Mi").unwrap(), 48.0);
        assert_eq!(memory_mib("1Gi").unwrap(), 1024.0);
        assert_eq!(memory_mib("1048576").unwrap(), 1.0);
        assert!((memory_mib("128M").unwrap() - 122.07).abs() < 0.01);
        for bad in ["", "m", "-1", "1x", "Mi"] {
            assert!(cpu_millis(bad).is_err() && memory_mib(bad).is_err(), "{bad}");
        }
        assert!(cpu_millis("-100m").is_err());
        assert!(memory_mib("tenMi").is_err());
        let unquoted = BTreeMap::from([("cpu".to_owned(), serde_json::json!(1))]);
        assert_eq!(Requests::from_quantities(&unquoted).unwrap().cpu_millis, 1000.0);
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
        assert_eq!(ingest.requests, Requests { cpu_millis: 100.0, memory_mib: 32.0 });
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
            "ingest must wait out producer's own timeouts, so that its answer is producer's"
        );
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
