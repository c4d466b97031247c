//! The local runner plays Knative's part on one machine: it runs the four functions as child
//! processes ([`functions`]) and, for every KafkaSource in the `knative/` manifests
//! ([`manifests`]), delivers the topic's records to the sink as KafkaSource does ([`source`],
//! [`record`]). It plays one of the `knative/overlays` ([`Mode`]): always-on keeps every function
//! running, scale-to-zero puts the [`activator`] in front of them; scaling goes to [`events`].
//! [`demo`] is the README's first command: a Locust burst and its summary; [`bench`] measures the
//! performance targets.

pub mod activator;
pub mod bench;
pub mod demo;
pub mod events;
pub mod functions;
pub mod manifests;
pub mod record;
pub mod source;

use activator::Activator;
use anyhow::{Context, bail};
use events::{Events, ScaleEvent};
use functions::Functions;
use manifests::KafkaSource;
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::FutureProducer,
    types::RDKafkaErrorCode,
};
use source::Source;
use std::{
    fmt,
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

#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Folder of the Knative manifests whose KafkaSources the runner plays.
    #[arg(long, env = "RUNNER_MANIFESTS", default_value = "knative/base")]
    pub manifests: PathBuf,
    /// Folder of the function binaries; defaults to the runner's own folder.
    #[arg(long, env = "RUNNER_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Folder for the functions' log files.
    #[arg(long, env = "RUNNER_LOG_DIR", default_value = "target/runner")]
    pub log_dir: PathBuf,
    /// Port of ingest; producer, counter and archiver take the next three.
    #[arg(long, env = "RUNNER_BASE_PORT", default_value_t = 8080)]
    pub base_port: u16,
    /// Kafka bootstrap servers (the manifests' bootstrapServers name the cluster's).
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Redis URL, for `reset` and the summary (counter reads the same variable).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/0")]
    pub redis_url: String,
    /// MongoDB URI, for `reset` and the summary (archiver reads the same variable).
    #[arg(long, env = "MONGODB_URI", default_value = "mongodb://127.0.0.1:27017")]
    pub mongodb_uri: String,
    /// Isolates a run: suffixes topics, consumer groups, the Redis key prefix and the MongoDB
    /// database with this id (tests use one per test).
    #[arg(long, env = "RUNNER_RUN_ID")]
    pub run_id: Option<String>,
    /// Deliver every event this many times: at-least-once made visible, to check that the
    /// sinks' effect stays exactly once.
    #[arg(long, env = "RUNNER_DELIVERIES", default_value_t = 1)]
    pub deliveries: u32,
    /// Run the functions only, without the KafkaSources.
    #[arg(long)]
    pub no_sources: bool,
    /// Which overlay to play: `always-on` runs every function all the time; `scale-to-zero`
    /// starts a function on its first request (held until ready) and stops it when idle.
    #[arg(long, env = "RUNNER_MODE", value_enum, default_value_t = Mode::AlwaysOn)]
    pub mode: Mode,
    /// Folder of the Knative overlays; the mode's `<mode>/kustomization.yaml` gives min-scale
    /// and the scale-to-zero retention period.
    #[arg(long, env = "RUNNER_OVERLAYS", default_value = "knative/overlays")]
    pub overlays: PathBuf,
    /// Idle period before a function is stopped in scale-to-zero mode, in milliseconds;
    /// overrides the overlay's scale-to-zero-pod-retention-period.
    #[arg(long, env = "RUNNER_IDLE_PERIOD_MS")]
    pub idle_period_ms: Option<u64>,
    /// File for the scaling events (start, ready, stop, cold_start) as JSON lines; created or
    /// truncated at start.
    #[arg(long, env = "RUNNER_EVENTS")]
    pub events: Option<PathBuf>,
}

impl Options {
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

    pub fn redis_prefix(&self) -> String {
        format!("{}:", self.suffixed("weather", ":"))
    }

    pub fn mongodb_database(&self) -> String {
        self.suffixed("weather", "_")
    }

    fn function_env(&self) -> Vec<(String, String)> {
        vec![
            ("KAFKA_BROKERS".into(), self.kafka_brokers.clone()),
            ("KAFKA_TOPIC".into(), self.topic("messages")),
            ("REDIS_URL".into(), self.redis_url.clone()),
            ("REDIS_KEY_PREFIX".into(), self.redis_prefix()),
            ("MONGODB_URI".into(), self.mongodb_uri.clone()),
            ("MONGODB_DATABASE".into(), self.mongodb_database()),
        ]
    }

    fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.bin_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(std::env::current_exe()?.parent().context("the runner's folder")?.to_path_buf()),
        }
    }
}

/// The functions and the sources, running.
pub struct Runner {
    pub functions: Arc<Functions>,
    pub sources: Vec<Source>,
    pub options: Options,
    /// Scale-to-zero only: how long a function may idle before it is stopped.
    pub idle_period: Option<Duration>,
    activator: Option<Activator>,
    events: Events,
    shutdown: watch::Sender<bool>,
}

/// The idle period of `options`' mode, from its overlay (or `--idle-period-ms`); `None` when the
/// overlay keeps every function running. Fails when the overlay does not match the mode's name.
pub fn idle_period(options: &Options) -> anyhow::Result<Option<Duration>> {
    let path = options.overlays.join(options.mode.to_string()).join("kustomization.yaml");
    let scaling = manifests::scaling(&path)?;
    match (options.mode, scaling.min_scale) {
        (Mode::AlwaysOn, 0) => bail!("{} sets min-scale 0, which is not always-on", path.display()),
        (Mode::AlwaysOn, _) => Ok(None),
        (Mode::ScaleToZero, 0) => Ok(Some(
            options.idle_period_ms.map(Duration::from_millis).or(scaling.retention).unwrap_or(STABLE_WINDOW),
        )),
        (Mode::ScaleToZero, n) => bail!("{} sets min-scale {n}, which never scales to zero", path.display()),
    }
}

impl Runner {
    /// Creates the topics if needed, starts the functions (or, scale-to-zero, the activator in
    /// front of them), then the sources.
    pub async fn start(options: Options) -> anyhow::Result<Runner> {
        let idle_period = idle_period(&options)?;
        let sources = manifests::kafka_sources(&options.manifests)?;
        let mut topics: Vec<String> = sources
            .iter()
            .flat_map(|s| s.topics.iter().chain(&s.delivery.dead_letter_topic))
            .map(|t| options.topic(t))
            .collect();
        topics.sort();
        topics.dedup();
        create_topics(&options.kafka_brokers, &topics).await?;

        let events = Events::new(options.events.as_deref())?;
        let mut functions = Functions::new(
            options.bin_dir()?,
            options.log_dir.clone(),
            options.base_port,
            options.function_env(),
        )
        .with_events(events.clone());
        if idle_period.is_some() {
            functions = functions.with_private_ports();
        }
        let functions = Arc::new(functions);
        let activator = match idle_period {
            Some(idle) => Some(Activator::start(functions.clone(), events.clone(), idle).await?),
            None => {
                if let Err(e) = functions.start_all().await {
                    functions.stop_all().await;
                    return Err(e);
                }
                None
            }
        };

        let (shutdown, stop) = watch::channel(false);
        let mut runner =
            Runner { functions, sources: Vec::new(), options, idle_period, activator, events, shutdown };
        if let Err(e) = runner.start_sources(sources, stop) {
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
        let options = &self.options;
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &options.kafka_brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .context("creating the dead-letter producer")?;
        for mut source in sources.into_iter().filter(|_| !options.no_sources) {
            source.topics = source.topics.iter().map(|t| options.topic(t)).collect();
            source.consumer_group = options.topic(&source.consumer_group);
            source.delivery.dead_letter_topic = source.delivery.dead_letter_topic.map(|t| options.topic(&t));
            let sink_url = self.functions.url(&source.sink);
            self.sources.push(Source::start(
                source,
                &options.kafka_brokers,
                sink_url,
                producer.clone(),
                options.deliveries,
                stop.clone(),
            )?);
        }
        Ok(())
    }

    /// Names of the function processes alive now.
    pub fn running_functions(&self) -> Vec<&'static str> {
        self.functions.running()
    }

    /// Every scaling event so far (also in `--events`).
    pub fn events(&self) -> Vec<ScaleEvent> {
        self.events.all()
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

    /// Stops the sources first (they commit what was delivered), then the activator (no new
    /// starts), then the functions.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for source in self.sources.drain(..) {
            source.stop().await;
        }
        if let Some(activator) = self.activator.take() {
            activator.stop().await;
        }
        self.functions.stop_all().await;
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
