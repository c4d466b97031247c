//! The run's traces from the stack's Jaeger query API: the recent and the slowest, found by the
//! producer's `send <topic>` span (so only this run's tweets), and one trace as Jaeger gives it,
//! which the page draws as a waterfall.

use anyhow::Context;
use serde::Serialize;
use std::{collections::BTreeSet, time::Duration};

/// Traces fetched per search: the slowest are the slowest of these.
const SEARCH_LIMIT: usize = 100;
/// Traces listed per table.
const LISTED: usize = 10;

pub struct Jaeger {
    url: String,
    /// The operation every traced tweet of this run has: the producer's send to the run's topic.
    operation: String,
    client: reqwest::Client,
}

/// One trace in a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub trace_id: String,
    /// Its first span's start, in milliseconds since the Unix epoch.
    pub start_ms: f64,
    /// From its first span's start to its last span's end.
    pub duration_ms: f64,
    pub spans: usize,
    pub services: Vec<String>,
    /// Its first span's operation (ingest's `POST /input`).
    pub root: String,
}

#[derive(Debug, Serialize)]
pub struct Lists {
    /// Where the traces come from, and the search.
    pub jaeger: String,
    pub searched: usize,
    pub recent: Vec<Summary>,
    pub slowest: Vec<Summary>,
}

/// Jaeger's ids: 32 hexadecimal digits (a client may drop leading zeros).
pub fn is_trace_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Jaeger {
    pub fn new(url: &str, topic: &str) -> Jaeger {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
        Jaeger { url: url.trim_end_matches('/').to_owned(), operation: format!("send {topic}"), client }
    }

    /// The latest traces of the run, newest first, and the slowest of them.
    pub async fn recent(&self) -> anyhow::Result<Lists> {
        let limit = SEARCH_LIMIT.to_string();
        let query = [
            ("service", "producer"),
            ("operation", self.operation.as_str()),
            ("limit", limit.as_str()),
            ("lookback", "1h"),
        ];
        let json: serde_json::Value = self
            .client
            .get(format!("{}/api/traces", self.url))
            .query(&query)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .with_context(|| format!("searching Jaeger at {} — is it running? (`dev/stack up`)", self.url))?
            .json()
            .await?;
        let mut recent = summaries(&json);
        let searched = recent.len();
        let mut slowest = recent.clone();
        recent.sort_by(|a, b| b.start_ms.total_cmp(&a.start_ms));
        recent.truncate(LISTED);
        slowest.sort_by(|a, b| b.duration_ms.total_cmp(&a.duration_ms));
        slowest.truncate(LISTED);
        Ok(Lists {
            jaeger: format!("{} (service producer, operation {:?})", self.url, self.operation),
            searched,
            recent,
            slowest,
        })
    }

    /// Trace `id` as Jaeger's `/api/traces/<id>` answers it; `None` when Jaeger has no such
    /// trace.
    pub async fn trace(&self, id: &str) -> anyhow::Result<Option<axum::body::Bytes>> {
        let answer =
            self.client.get(format!("{}/api/traces/{id}", self.url)).send().await.with_context(|| {
                format!("reading trace {id} from Jaeger at {} — is it running?", self.url)
            })?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let answer = answer.error_for_status().with_context(|| format!("reading trace {id} from Jaeger"))?;
        Ok(Some(answer.bytes().await?))
    }
}

/// A summary of each trace of a Jaeger search answer (`{"data": [trace…]}`).
pub fn summaries(json: &serde_json::Value) -> Vec<Summary> {
    let traces = json["data"].as_array().map(Vec::as_slice).unwrap_or_default();
    traces
        .iter()
        .filter_map(|trace| {
            let spans = trace["spans"].as_array()?;
            let first = spans.iter().min_by_key(|s| s["startTime"].as_i64().unwrap_or(i64::MAX))?;
            let start = first["startTime"].as_i64()?;
            let end = spans
                .iter()
                .map(|s| s["startTime"].as_i64().unwrap_or(start) + s["duration"].as_i64().unwrap_or(0))
                .max()?;
            let services: BTreeSet<String> = spans
                .iter()
                .filter_map(|s| trace["processes"][s["processID"].as_str()?]["serviceName"].as_str())
                .map(str::to_owned)
                .collect();
            Some(Summary {
                trace_id: trace["traceID"].as_str()?.to_owned(),
                start_ms: start as f64 / 1000.0,
                duration_ms: (end - start) as f64 / 1000.0,
                spans: spans.len(),
                services: services.into_iter().collect(),
                root: first["operationName"].as_str().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}
