//! The runner's own `/metrics` as the demo reads it once a second: replicas per function and
//! what the activator answered (requests by status, latency histogram), in the OpenMetrics text
//! our exporter writes (`name{label="value",…} number`, label values without escapes).

use std::collections::BTreeMap;

/// One scrape: every sample, by metric name, with its labels.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, labels(rest.strip_suffix('}')?)),
                    None => (series, BTreeMap::new()),
                };
                Some((name.to_owned(), labels, value))
            })
            .collect();
        Scrape { samples }
    }

    pub async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Scrape> {
        let text = client.get(url).timeout(std::time::Duration::from_secs(2)).send().await?.text().await?;
        Ok(Scrape::parse(&text))
    }

    /// The sum of `name`'s samples whose labels include every pair of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.matching(name, with).map(|(_, v)| v).sum()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = (&'a BTreeMap<String, String>, f64)> + 'a {
        self.samples
            .iter()
            .filter(move |(n, labels, _)| {
                n == name && with.iter().all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
            })
            .map(|(_, labels, v)| (labels, *v))
    }

    /// `label`'s value → sample value, for `name`'s samples with `with`.
    pub fn by(&self, name: &str, label: &str, with: &[(&str, &str)]) -> BTreeMap<String, f64> {
        let mut by = BTreeMap::new();
        for (labels, v) in self.matching(name, with) {
            if let Some(key) = labels.get(label) {
                *by.entry(key.clone()).or_default() += v;
            }
        }
        by
    }

    /// A histogram's cumulative buckets `(le, count)`, ascending, `+Inf` last.
    pub fn buckets(&self, name: &str, with: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let mut buckets: Vec<(f64, f64)> = self
            .by(&format!("{name}_bucket"), "le", with)
            .into_iter()
            .filter_map(|(le, n)| Some((le.parse::<f64>().ok()?, n)))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

fn labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

/// The `q` quantile of the observations between two scrapes of one histogram's buckets, as
/// PromQL's `histogram_quantile` estimates it (linear within the bucket; the highest finite
/// bound when it falls in `+Inf`). `None` without observations.
pub fn quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - before.iter().find(|(b, _)| b == le).map_or(0.0, |(_, m)| *m)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &delta {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let width = count - lower.1;
            let within = if width > 0.0 { (rank - lower.1) / width } else { 1.0 };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE weather_runner_replicas gauge
weather_runner_replicas{function="runner",service="ingest"} 3
weather_runner_replicas{function="runner",service="producer"} 1
weather_runner_requests_total{function="runner",service="ingest",status="202"} 90
weather_runner_requests_total{function="runner",service="ingest",status="503"} 10
weather_runner_request_duration_seconds_bucket{function="runner",service="ingest",le="0.01"} 50
weather_runner_request_duration_seconds_bucket{function="runner",service="ingest",le="0.02"} 90
weather_runner_request_duration_seconds_bucket{function="runner",service="ingest",le="+Inf"} 100
# EOF
"#;

    #[test]
    fn reads_our_exporters_samples() {
        let s = Scrape::parse(TEXT);
        assert_eq!(s.sum("weather_runner_requests_total", &[("service", "ingest")]), 100.0);
        assert_eq!(s.sum("weather_runner_requests_total", &[("status", "202")]), 90.0);
        let replicas = s.by("weather_runner_replicas", "service", &[]);
        assert_eq!(replicas, BTreeMap::from([("ingest".into(), 3.0), ("producer".into(), 1.0)]));
        let buckets = s.buckets("weather_runner_request_duration_seconds", &[("service", "ingest")]);
        assert_eq!(buckets, [(0.01, 50.0), (0.02, 90.0), (f64::INFINITY, 100.0)]);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket_of_the_difference() {
        let before = [(0.01, 10.0), (0.02, 10.0), (f64::INFINITY, 10.0)];
        let after = [(0.01, 60.0), (0.02, 100.0), (f64::INFINITY, 110.0)];
        // 100 new observations: 50 ≤ 10 ms, 40 in (10, 20] ms, 10 above.
        assert_eq!(quantile(0.5, &before, &after), Some(0.01));
        assert!((quantile(0.7, &before, &after).unwrap() - 0.015).abs() < 1e-12);
        assert_eq!(quantile(0.99, &before, &after), Some(0.02), "in +Inf: the highest finite bound");
        assert_eq!(quantile(0.99, &after, &after), None, "nothing new");
    }
}
