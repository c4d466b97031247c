//! Traces read back from Jaeger's query API.

use std::time::Duration;

pub struct TraceSpan {
    pub id: String,
    pub parent: Option<String>,
    /// Its parent is outside the trace (the caller's span).
    pub orphan: bool,
    pub service: String,
    pub operation: String,
    pub ms: f64,
}

/// The spans of trace `id` once at least `expected` arrived (or what arrived in 5 s).
pub async fn trace(jaeger: &str, id: &str, expected: usize) -> Vec<TraceSpan> {
    let url = format!("{jaeger}/api/traces/{id}");
    let mut spans = Vec::new();
    for _ in 0..25 {
        if let Ok(body) = reqwest::get(&url).await.and_then(|r| r.error_for_status())
            && let Ok(json) = body.json::<serde_json::Value>().await
        {
            spans = spans_of(&json);
            if spans.len() >= expected {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    spans
}

/// Prints spans as a tree, children under their parent.
pub fn print(spans: &[TraceSpan]) {
    fn walk(spans: &[TraceSpan], parent: Option<&str>, depth: usize) {
        for span in spans.iter().filter(|s| s.parent.as_deref() == parent || (depth == 0 && s.orphan)) {
            let (indent, width) = (depth * 2, 44usize.saturating_sub(depth * 2));
            println!("  {:indent$}{:<9} {:<width$} {:>8.2} ms", "", span.service, span.operation, span.ms);
            walk(spans, Some(&span.id), depth + 1);
        }
    }
    walk(spans, None, 0);
}

/// The spans of a Jaeger `/api/traces/{id}` answer, in start order.
pub fn spans_of(json: &serde_json::Value) -> Vec<TraceSpan> {
    let Some(trace) = json["data"].get(0) else { return Vec::new() };
    let mut spans: Vec<(i64, TraceSpan)> = trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let parent = s["references"].get(0).and_then(|r| r["spanID"].as_str()).map(str::to_owned);
            let service = s["processID"].as_str().and_then(|p| trace["processes"][p]["serviceName"].as_str());
            (
                s["startTime"].as_i64().unwrap_or(0),
                TraceSpan {
                    id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                    parent,
                    orphan: false,
                    service: service.unwrap_or("?").to_owned(),
                    operation: s["operationName"].as_str().unwrap_or_default().to_owned(),
                    ms: s["duration"].as_f64().unwrap_or(0.0) / 1000.0,
                },
            )
        })
        .collect();
    spans.sort_by_key(|(start, _)| *start);
    let ids: Vec<String> = spans.iter().map(|(_, s)| s.id.clone()).collect();
    spans
        .into_iter()
        .map(|(_, mut s)| {
            s.orphan = s.parent.as_ref().is_some_and(|p| !ids.contains(p));
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_jaeger_trace() {
        let json = serde_json::json!({"data": [{
            "processes": {"p1": {"serviceName": "ingest"}, "p2": {"serviceName": "producer"}},
            "spans": [
                {"spanID": "b", "startTime": 2, "duration": 500, "operationName": "send", "processID": "p2",
                 "references": [{"refType": "CHILD_OF", "spanID": "a"}]},
                {"spanID": "a", "startTime": 1, "duration": 1500, "operationName": "POST /input", "processID": "p1",
                 "references": [{"refType": "CHILD_OF", "spanID": "caller"}]}
            ]
        }]});
        let spans = spans_of(&json);
        let read: Vec<_> =
            spans.iter().map(|s| (s.id.as_str(), s.service.as_str(), s.orphan, s.ms)).collect();
        assert_eq!(read, [("a", "ingest", true, 1.5), ("b", "producer", false, 0.5)]);
        assert!(spans_of(&serde_json::json!({"data": []})).is_empty());
    }
}
