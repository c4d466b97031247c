//! The pipeline's live figures, read once a second from the run's state ([`State`]: Redis,
//! MongoDB, Kafka) and the runner's own `/metrics` ([`Scrape`]): the one reader behind the demo's
//! live line and the dashboard's panels.

use crate::{
    scrape::{Scrape, quantile},
    state::{Snapshot, State},
};
use serde::Serialize;
use std::{collections::BTreeMap, time::Instant};

/// Reads [`Reading`]s; rates and the p99 are over the time since the previous reading.
pub struct Live {
    state: State,
    /// The archive, connected on the first reading and kept.
    archive: Option<mongodb::Collection<mongodb::bson::Document>>,
    client: reqwest::Client,
    metrics_url: String,
    /// The functions, in the manifests' order.
    pub functions: Vec<String>,
    last: Option<(Scrape, Instant)>,
}

/// One reading of the pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct Reading {
    /// When it was read, in milliseconds since the Unix epoch.
    pub t_ms: i64,
    pub snapshot: Snapshot,
    /// What the runner's activator saw; `None` while no runner serves its metrics.
    pub runner: Option<Runner>,
}

/// The runner's figures: requests to ingest, replicas per function.
#[derive(Debug, Clone, Serialize)]
pub struct Runner {
    /// Requests ingest answered so far, whatever the status.
    pub sent: f64,
    /// Requests ingest answered 202 per second since the previous reading.
    pub accepted_per_s: f64,
    /// ingest's p99 latency since the previous reading, in ms; `None` without requests.
    pub p99_ms: Option<f64>,
    /// Every function's ready processes (0 when scaled to zero).
    pub replicas: BTreeMap<String, u32>,
}

const INGEST: [(&str, &str); 1] = [("service", "ingest")];
const REQUESTS: &str = "weather_runner_requests_total";
const DURATION: &str = "weather_runner_request_duration_seconds";

impl Live {
    /// Reads `state`, and the runner whose metrics are at `metrics_url`.
    pub fn new(state: State, metrics_url: String) -> anyhow::Result<Live> {
        let functions = state.stack.services()?.into_iter().map(|s| s.name).collect();
        Ok(Live { state, archive: None, client: reqwest::Client::new(), metrics_url, functions, last: None })
    }

    /// The state now, as [`State::snapshot`] reads it but for the archive's size (see
    /// [`Live::archived`]); an error when Redis, MongoDB or Kafka cannot be read.
    pub async fn read(&mut self) -> anyhow::Result<Reading> {
        let snapshot = Snapshot {
            counted: self.state.counted().await?,
            archived: self.archived().await?,
            in_kafka: crate::state::kafka::records(&self.state.stack.kafka_brokers, &self.state.topic)?,
            dead_lettered: crate::state::kafka::records(
                &self.state.stack.kafka_brokers,
                &self.state.dead_letters,
            )?,
            lag: self.state.lag()?,
        };
        let t_ms = chrono::Utc::now().timestamp_millis();
        let runner = match Scrape::get(&self.client, &self.metrics_url).await {
            Ok(now) => {
                let runner = self.runner(&now);
                self.last = Some((now, Instant::now()));
                Some(runner)
            }
            Err(_) => {
                self.last = None;
                None
            }
        };
        Ok(Reading { t_ms, snapshot, runner })
    }

    /// The archive's size from its statistics (`collStats`), which the MongoDB-wire server
    /// answers from its table's row count: a `count_documents` reads every document, over a
    /// second for a demo's archive, too slow for a reading a second. [`State::archived`]'s
    /// exact count when the statistics are missing (a database not yet created).
    async fn archived(&mut self) -> anyhow::Result<u64> {
        if self.archive.is_none() {
            self.archive = Some(self.state.archive().await?);
        }
        let archive = self.archive.as_ref().expect("just connected");
        let database = archive.client().database(&archive.namespace().db);
        let stats = database.run_command(mongodb::bson::doc! { "collStats": archive.name() }).await;
        match stats.ok().and_then(|s| {
            s.get("count")
                .and_then(|n| n.as_i64().or(n.as_i32().map(i64::from)).or(n.as_f64().map(|f| f as i64)))
        }) {
            Some(n) => Ok(n.max(0) as u64),
            None => self.state.archived().await,
        }
    }

    fn runner(&self, now: &Scrape) -> Runner {
        let accepted = |m: &Scrape| m.sum(REQUESTS, &[("service", "ingest"), ("status", "202")]);
        let replicas = now.by("weather_runner_replicas", "service", &[]);
        let (accepted_per_s, p99) = match &self.last {
            Some((before, at)) => (
                // Never below 0: a runner started again counts from 0.
                (accepted(now) - accepted(before)).max(0.0) / at.elapsed().as_secs_f64().max(0.001),
                quantile(0.99, &before.buckets(DURATION, &INGEST), &now.buckets(DURATION, &INGEST)),
            ),
            None => (0.0, None),
        };
        Runner {
            sent: now.sum(REQUESTS, &INGEST),
            accepted_per_s,
            p99_ms: p99.map(|p| p * 1000.0),
            replicas: self
                .functions
                .iter()
                .map(|f| (f.clone(), replicas.get(f).map_or(0, |n| *n as u32)))
                .collect(),
        }
    }

    /// The header of the demo's live line.
    pub fn header(&self) -> String {
        let replicas = format!("replicas ({})", self.functions.join(" "));
        format!(
            "  {:>5} {:<10} {:<11} {:<10} {:<10} {:<8} {:<w$} p99",
            "time",
            "sent",
            "accepted/s",
            "counted",
            "archived",
            "lag",
            replicas,
            w = replicas.len()
        )
    }

    /// The demo's live line for a reading `seconds` into the run (`None` without the runner).
    pub fn line(&self, seconds: u64, reading: &Reading) -> Option<String> {
        let (s, r) = (&reading.snapshot, reading.runner.as_ref()?);
        let replicas: Vec<String> =
            self.functions.iter().map(|f| r.replicas.get(f).copied().unwrap_or(0).to_string()).collect();
        let width = format!("replicas ({})", self.functions.join(" ")).len();
        Some(format!(
            "  {:>4}s {:<10} {:<11.0} {:<10} {:<10} {:<8} {:<width$} {}",
            seconds,
            r.sent,
            r.accepted_per_s,
            s.counted.total,
            s.archived,
            s.lag,
            replicas.join(" "),
            r.p99_ms.map_or("–".into(), |p| format!("{p:.0} ms")),
        ))
    }
}
