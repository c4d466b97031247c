//! The local runner plays Knative's part on one machine, and nothing else: it runs the
//! functions that the `knative/base` Services describe as child processes ([`functions`]) behind
//! an [`activator`] that scales each between min-scale and max-scale replicas as Knative's
//! [`autoscaler`] decides and, for every KafkaSource there ([`manifests`]), delivers the topic's
//! records to the sink as KafkaSource does ([`source`], [`record`]). It plays one of the
//! `knative/overlays` ([`Mode`]): always-on keeps at least one replica of every function,
//! scale-to-zero stops the last one when idle. What it does — where it listens, processes
//! started and exited, scaling — goes to [`events`]. [`Stack`] says where a run's data lives —
//! the tools crate reads the same.

pub mod activator;
pub mod autoscaler;
pub mod events;
pub mod functions;
pub mod manifests;
pub mod record;
pub mod source;

use activator::{Activator, Policy};
use anyhow::{Context, bail};
use common::secret::SecretUrl;
use events::{Events, ScaleEvent};
use functions::Functions;
use manifests::{EnvValue, KafkaSource, Service};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::FutureProducer,
    types::RDKafkaErrorCode,
};
use source::Source;
use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::watch;

/// Which `knative/overlays/<mode>` the runner plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Every function keeps running (`min-scale: "1"`).
    AlwaysOn,
    /// A function starts on its first request and stops when idle (`min-scale: "0"`).
    ScaleToZero,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::AlwaysOn => "always-on",
            Mode::ScaleToZero => "scale-to-zero",
        })
    }
}

/// Knative's idle time when an overlay sets no retention period: the autoscaler's 60 s stable
/// window (`stable-window`), after which it scales an idle revision to zero.
pub const STABLE_WINDOW: Duration = Duration::from_secs(60);

/// Partitions of the topics the runner creates (as `strimzi/` does: ≥ 3, so sinks can scale).
pub const PARTITIONS: i32 = 3;

/// Where one run of the pipeline keeps its data on this machine: the manifests it plays, the
/// services it talks to and the run id that isolates it. The runner and the tools share it, so
/// both name a run's topics, keys and database the same way.
#[derive(Debug, Clone, clap::Args)]
pub struct Stack {
    /// Folder of the Knative manifests whose Services and KafkaSources the runner plays.
    #[arg(long, env = "RUNNER_MANIFESTS", default_value = "knative/base")]
    pub manifests: PathBuf,
    /// Kafka bootstrap servers (the manifests' bootstrapServers name the cluster's).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Redis URL: the value of the Secret key REDIS_URL the manifests refer to.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/0", hide_env_values = true)]
    pub redis_url: SecretUrl,
    /// MongoDB URI: the value of the Secret key MONGODB_URI the manifests refer to.
    #[arg(long, env = "MONGODB_URI", default_value = "mongodb://127.0.0.1:27017", hide_env_values = true)]
    pub mongodb_uri: SecretUrl,
    /// Isolates a run: suffixes topics, consumer groups, the Redis key prefix and the MongoDB
    /// database with this id (tests use one per test).
    #[arg(long, env = "RUNNER_RUN_ID")]
    pub run_id: Option<String>,
}

impl Stack {
    fn suffixed(&self, name: &str, sep: &str) -> String {
        match &self.run_id {
            Some(id) => format!("{name}{sep}{id}"),
            None => name.to_owned(),
        }
    }

    /// Topic (or consumer group) name for this run.
    pub fn topic(&self, name: &str) -> String {
        self.suffixed(name, "-")
    }

    /// A Redis key prefix of the manifests (`weather:`) for this run (`weather:<id>:`).
    pub fn redis_prefix(&self, prefix: &str) -> String {
        format!("{}:", self.suffixed(prefix.trim_end_matches(':'), ":"))
    }

    /// A MongoDB database of the manifests for this run.
    pub fn mongodb_database(&self, database: &str) -> String {
        self.suffixed(database, "_")
    }

    /// The value of a Secret key the manifests refer to: REDIS_URL and MONGODB_URI from the
    /// options, any other from the environment variable of the same name.
    pub fn secret(&self, key: &str) -> anyhow::Result<String> {
        match key {
            "REDIS_URL" => Ok(self.redis_url.expose_secret().to_owned()),
            "MONGODB_URI" => Ok(self.mongodb_uri.expose_secret().to_owned()),
            _ => std::env::var(key)
                .with_context(|| format!("the manifests use the Secret key {key}: set the variable {key}")),
        }
    }

    pub fn services(&self) -> anyhow::Result<Vec<Service>> {
        manifests::services(&self.manifests)
    }

    /// The KafkaSources with this run's topics and consumer groups.
    pub fn kafka_sources(&self) -> anyhow::Result<Vec<KafkaSource>> {
        let mut sources = manifests::kafka_sources(&self.manifests)?;
        for source in &mut sources {
            source.topics = source.topics.iter().map(|t| self.topic(t)).collect();
            source.consumer_group = self.topic(&source.consumer_group);
            source.delivery.dead_letter_topic =
                source.delivery.dead_letter_topic.as_deref().map(|t| self.topic(t));
        }
        Ok(sources)
    }

    /// `service`'s environment on this machine: its manifest's, with the cluster's addresses
    /// made local (`url_of` gives a function's loopback URL), Secrets filled in and this run's
    /// names.
    pub fn local_env(
        &self,
        service: &Service,
        url_of: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Vec<(String, String)>> {
        service
            .env
            .iter()
            .map(|var| {
                let value = match &var.value {
                    EnvValue::Secret { key } => self.secret(key)?,
                    EnvValue::Value(value) => self.local_value(&var.name, value, &url_of),
                };
                Ok((var.name.clone(), value))
            })
            .collect()
    }

    fn local_value(&self, name: &str, value: &str, url_of: &impl Fn(&str) -> Option<String>) -> String {
        match name {
            "KAFKA_BROKERS" => self.kafka_brokers.clone(),
            "KAFKA_TOPIC" | "KAFKA_DEAD_LETTER_TOPIC" => self.topic(value),
            "REDIS_KEY_PREFIX" => self.redis_prefix(value),
            "MONGODB_DATABASE" => self.mongodb_database(value),
            _ => manifests::cluster_service(value)
                .and_then(|(name, _)| url_of(&name))
                .unwrap_or_else(|| value.to_owned()),
        }
    }

    /// The local value of one variable of one Service, e.g. counter's `REDIS_KEY_PREFIX`.
    pub fn env_of(&self, service: &str, variable: &str) -> anyhow::Result<String> {
        let services = self.services()?;
        let service = services
            .iter()
            .find(|s| s.name == service)
            .with_context(|| format!("no Service {service} in {}", self.manifests.display()))?;
        self.local_env(service, |_| None)?
            .into_iter()
            .find(|(name, _)| name == variable)
            .map(|(_, value)| value)
            .with_context(|| format!("Service {} sets no {variable}", service.name))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    #[command(flatten)]
    pub stack: Stack,
    /// Folder of the function binaries; defaults to the runner's own folder.
    #[arg(long, env = "RUNNER_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Folder for the functions' log files.
    #[arg(long, env = "RUNNER_LOG_DIR", default_value = "target/runner")]
    pub log_dir: PathBuf,
    /// Port of the first Service of the manifests (ingest); the others take the next ones, in
    /// the order knative/base/kustomization.yaml lists them, and the runner's `/metrics` the one
    /// after the last Service (8084 by default: five ports in all). 0: the OS chooses every
    /// port, and the `listening` event (and `Runner::ports`) says which.
    #[arg(long, env = "RUNNER_BASE_PORT", default_value_t = 8080)]
    pub base_port: u16,
    /// Deliver every event this many times: at-least-once made visible, to check that the
    /// sinks' effect stays exactly once.
    #[arg(long, env = "RUNNER_DELIVERIES", default_value_t = 1)]
    pub deliveries: u32,
    /// Run the functions only, without the KafkaSources.
    #[arg(long, env = "RUNNER_NO_SOURCES")]
    pub no_sources: bool,
    /// Which overlay to play: `always-on` runs every function all the time; `scale-to-zero`
    /// starts a function on its first request (held until ready) and stops it when idle.
    #[arg(long, env = "RUNNER_MODE", value_enum, default_value_t = Mode::AlwaysOn)]
    pub mode: Mode,
    /// Folder of the Knative overlays (default: `overlays` beside the manifests' folder); the
    /// mode's `<mode>/kustomization.yaml` gives the autoscaling annotations (target, min-scale,
    /// max-scale, window, the scale-to-zero retention period…).
    #[arg(long, env = "RUNNER_OVERLAYS")]
    pub overlays: Option<PathBuf>,
    /// Idle period before a function is stopped in scale-to-zero mode, in milliseconds;
    /// overrides the overlay's scale-to-zero-pod-retention-period.
    #[arg(long, env = "RUNNER_IDLE_PERIOD_MS")]
    pub idle_period_ms: Option<u64>,
    /// Overrides the overlay's stable window (`autoscaling.knative.dev/window`), in
    /// milliseconds: tests see a scale-down in seconds with it.
    #[arg(long, env = "RUNNER_STABLE_WINDOW_MS")]
    pub stable_window_ms: Option<u64>,
    /// Caps every function's max-scale (and min-scale) at this many replicas, whatever the
    /// manifests say: `--max-scale 1` measures a tweet's cost apart from the autoscaler's
    /// choice of replicas (the bench does; on two cores ten replicas of a function only share
    /// them).
    #[arg(long, env = "RUNNER_MAX_SCALE", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_scale: Option<u32>,
    /// File for the runner's events (listening, start, ready, exit, stop, cold_start, scale) as
    /// JSON lines; created or truncated at start.
    #[arg(long, env = "RUNNER_EVENTS")]
    pub events: Option<PathBuf>,
    /// Overrides every KafkaSource's `delivery.backoffDelay`, in milliseconds: tests shrink the
    /// retry budget with it to reach the dead-letter sink in seconds.
    #[arg(long, env = "RUNNER_BACKOFF_DELAY_MS")]
    pub backoff_delay_ms: Option<u64>,
    /// Records a KafkaSource reads ahead of a partition's deliveries; when they are behind by
    /// more, the partition is paused (and resumed once half are delivered), so the consumer
    /// keeps polling whatever a sink does.
    #[arg(long, env = "RUNNER_READ_AHEAD", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub read_ahead: u32,
    /// The KafkaSources' `max.poll.interval.ms` (librdkafka's default, 300 s, when not given):
    /// tests shorten it to show that a stalled sink does not make a consumer leave its group.
    #[arg(long, env = "RUNNER_MAX_POLL_INTERVAL_MS")]
    pub max_poll_interval_ms: Option<u64>,
}

impl Options {
    fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.bin_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(std::env::current_exe()?.parent().context("the runner's folder")?.to_path_buf()),
        }
    }
}

/// Where the runner listens, as bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    /// Each function's public address (its activator's), by name.
    pub functions: BTreeMap<String, SocketAddr>,
    /// The runner's own `GET /metrics`.
    pub metrics: SocketAddr,
}

/// The functions and the sources, running.
pub struct Runner {
    pub functions: Arc<Functions>,
    pub sources: Vec<Source>,
    pub options: Options,
    /// How the functions scale (the overlay's annotations, the idle period in scale-to-zero).
    pub policy: Policy,
    ports: Ports,
    activator: Option<Activator>,
    /// `GET /metrics` of the runner itself.
    metrics: tokio::task::JoinHandle<()>,
    events: Events,
    shutdown: watch::Sender<bool>,
}

/// How `options`' mode scales the functions: its overlay's annotations (the stable window
/// overridden by `--stable-window-ms`) and, in scale-to-zero, the idle period (the retention
/// period, or `--idle-period-ms`). Fails when the overlay does not match the mode's name.
pub fn policy(options: &Options) -> anyhow::Result<Policy> {
    let overlays = options.overlays.clone().unwrap_or_else(|| options.stack.manifests.join("../overlays"));
    let path = overlays.join(options.mode.to_string()).join("kustomization.yaml");
    let overlay = autoscaler::overlay_annotations(&path)?;
    let scaling = autoscaler::Scaling::from_annotations(&[&overlay])
        .with_context(|| format!("in {}", path.display()))?;
    let idle = match (options.mode, scaling.min_scale) {
        (Mode::AlwaysOn, 0) => bail!("{} sets min-scale 0, which is not always-on", path.display()),
        (Mode::AlwaysOn, _) => None,
        (Mode::ScaleToZero, 0) => Some(
            options.idle_period_ms.map(Duration::from_millis).or(scaling.retention).unwrap_or(STABLE_WINDOW),
        ),
        (Mode::ScaleToZero, n) => bail!("{} sets min-scale {n}, which never scales to zero", path.display()),
    };
    Ok(Policy {
        overlay,
        stable_window: options.stable_window_ms.map(Duration::from_millis),
        idle,
        max_scale: options.max_scale,
    })
}

impl Runner {
    /// Creates the topics if needed, binds every port (reported in the `listening` event),
    /// starts the activator (and, always-on, every function's first replicas), then the sources.
    pub async fn start(options: Options) -> anyhow::Result<Runner> {
        let policy = policy(&options)?;
        let mut sources = options.stack.kafka_sources()?;
        if let Some(ms) = options.backoff_delay_ms {
            sources.iter_mut().for_each(|s| s.delivery.backoff_delay = Duration::from_millis(ms));
        }
        let mut topics: Vec<String> = sources
            .iter()
            .flat_map(|s| s.topics.iter().chain(&s.delivery.dead_letter_topic))
            .cloned()
            .collect();
        topics.sort();
        topics.dedup();
        create_topics(&options.stack.kafka_brokers, &topics).await?;

        let events = Events::new(options.events.as_deref())?;
        let bin_dir = options.bin_dir()?;
        functions::check_binaries(&options.stack, &bin_dir)?;
        let (numbered, metrics_port) = functions::numbered_ports(&options.stack, options.base_port)?;
        let listeners = activator::bind(numbered).await?;
        let metrics_listener = common::server::bind("127.0.0.1", metrics_port).await?;
        let ports = Ports {
            functions: listeners
                .iter()
                .map(|(name, listener)| Ok((name.clone(), listener.local_addr()?)))
                .collect::<std::io::Result<_>>()?,
            metrics: metrics_listener.local_addr()?,
        };
        let public: BTreeMap<String, u16> =
            ports.functions.iter().map(|(name, address)| (name.clone(), address.port())).collect();
        let functions = Arc::new(Functions::new(&options.stack, bin_dir, options.log_dir.clone(), &public)?);
        events.listening(&ports);
        tracing::info!(addresses = ?ports.functions, metrics = %ports.metrics, "Listening");

        let (shutdown, stop) = watch::channel(false);
        let mut stopped = stop.clone();
        let metrics = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            if let Err(e) = common::server::serve(metrics_listener, common::metrics::routes(), shutdown).await
            {
                tracing::warn!(error = %e, "Serving the runner's metrics failed");
            }
        });
        let activator = Activator::start(functions.clone(), listeners, events.clone(), policy.clone())?;
        let mut runner = Runner {
            functions,
            sources: Vec::new(),
            options,
            policy,
            ports,
            activator: Some(activator),
            metrics,
            events,
            shutdown,
        };
        if let Err(e) = runner.activator().scale_to_min().await {
            runner.stop().await;
            return Err(e);
        }
        if !runner.options.no_sources
            && let Err(e) = runner.start_sources(sources, stop)
        {
            runner.stop().await;
            return Err(e);
        }
        Ok(runner)
    }

    fn start_sources(
        &mut self,
        sources: Vec<KafkaSource>,
        stop: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let brokers = &self.options.stack.kafka_brokers;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .context("creating the dead-letter producer")?;
        for source in sources {
            // Delivered in process through the sink's activator; the public URL names the sink
            // in dead letters and spans.
            let sink_url = self.functions.url(&source.sink)?;
            let entrance = self.activator().entrance(&source.sink)?;
            self.sources.push(Source::start(
                source,
                brokers,
                sink_url,
                entrance,
                producer.clone(),
                source::Settings {
                    deliveries: self.options.deliveries,
                    read_ahead: self.options.read_ahead as usize,
                    max_poll_interval: self.options.max_poll_interval_ms.map(Duration::from_millis),
                },
                stop.clone(),
            )?);
        }
        Ok(())
    }

    fn activator(&self) -> &Activator {
        self.activator.as_ref().expect("the activator runs until Runner::stop")
    }

    /// Names of the functions with a process alive now, in start order.
    pub fn running_functions(&self) -> Vec<String> {
        self.activator().running()
    }

    /// How `function` scales (its Service's annotations under the overlay's).
    pub fn scaling(&self, function: &str) -> Option<autoscaler::Scaling> {
        self.activator().scaling(function)
    }

    /// Processes of `function` alive now.
    pub fn replicas(&self, function: &str) -> u32 {
        self.activator().replicas(function)
    }

    /// URLs of `function`'s ready replicas, each its own process (not through the activator).
    pub fn replica_urls(&self, function: &str) -> Vec<String> {
        self.activator().replica_ports(function).iter().map(|p| format!("http://127.0.0.1:{p}")).collect()
    }

    /// SIGKILL to every replica of `function`, as a crash (the activator replaces them).
    pub fn kill(&self, function: &str) -> anyhow::Result<()> {
        self.activator().kill(function)
    }

    /// Where the runner listens: each function's public address and `/metrics`, as bound (with
    /// `--base-port 0`, ports the OS chose).
    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// Every event so far (also in `--events`).
    pub fn events(&self) -> Vec<ScaleEvent> {
        self.events.all()
    }

    /// Deliveries the sources are sending to their sinks now (waiting for a replica included).
    pub fn deliveries_in_flight(&self) -> u64 {
        self.sources.iter().map(|s| s.progress().in_flight.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// Records not yet delivered or dead-lettered, over all sources.
    pub fn lag(&self) -> anyhow::Result<i64> {
        self.sources.iter().map(Source::lag).sum()
    }

    /// Waits until every source has caught up with its topics.
    pub async fn drain(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let lag = self.lag()?;
            if lag == 0 {
                return Ok(());
            }
            if started.elapsed() > timeout {
                anyhow::bail!("{lag} records still undelivered after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn dead_lettered(&self) -> u64 {
        self.sources
            .iter()
            .map(|s| s.progress().dead_lettered.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// Stops the sources first (they commit what was delivered), then the activator, which
    /// stops the functions.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for source in self.sources.drain(..) {
            source.stop().await;
        }
        let _ = (&mut self.metrics).await;
        if let Some(activator) = self.activator.take() {
            activator.stop().await;
        }
    }
}

/// Creates the topics that do not exist yet.
pub async fn create_topics(brokers: &str, topics: &[String]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the Kafka admin client")?;
    let new: Vec<NewTopic> =
        topics.iter().map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new, &options).await.with_context(|| {
        format!("creating topics on Kafka at {brokers} — is it running? (`dev/stack up`)")
    })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}
