//! The audit, tweet by tweet: every request a client sent ([`Ledger`]) against what the
//! pipeline holds — the tweet records in Kafka, the archive's `_id`s and Redis's count per
//! country. Sets are compared, not totals, so a tweet lost and another counted twice can no
//! longer cancel out, and every difference is listed by id in its own direction.
//!
//! The rules ([`Audit::compare`]):
//! - every accepted id is in Kafka (a 2xx means durable);
//! - every record in Kafka that no 2xx accounts for is explained by an answer that left the
//!   outcome unknown (a 504 `{"outcome":"unknown","id":…}` names its id; a request that got no
//!   answer at all, or another 5xx, explains one such record of its country); a 503 explains
//!   nothing: it means the tweet did not reach Kafka;
//! - an id recorded in Kafka more than once was sent more than once (a retry with its
//!   `Idempotency-Key`);
//! - every tweet in Kafka is archived once (`_id` = its id), nothing else is;
//! - per country, Redis counts exactly the tweets of that country in Kafka.

use crate::state::{State, kafka::Record};
use common::tweet::Tweet;
use counter::Counted;
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::Path,
    sync::Mutex,
    time::Duration,
};

/// What one answer told the client about its tweet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 2xx: the tweet is in Kafka (or a write Kafka acknowledged, for the suite's own writes).
    Accepted,
    /// Provably not stored: 503 (ingest could not hand it to Kafka) or a client error (4xx).
    NotSent,
    /// Stored or not: a 504 `{"outcome":"unknown"}`, another 5xx, or no answer at all.
    Unknown,
}

impl Outcome {
    /// The outcome of an answer with HTTP `status`; 0 stands for no answer.
    pub fn of(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Accepted,
            400..=499 | 503 => Outcome::NotSent,
            _ => Outcome::Unknown,
        }
    }
}

/// The country of `tweet` (a body a client posts) as the pipeline counts it: its canonical name.
pub fn country(tweet: &serde_json::Value) -> anyhow::Result<String> {
    let parsed =
        Tweet::from_json(tweet.to_string().as_bytes()).map_err(|e| anyhow::anyhow!("{tweet}: {e}"))?;
    Ok(parsed.pais.to_owned())
}

/// One request of a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The tweet's id, when the answer (a 2xx, a 504) or the client's own write named one.
    pub id: Option<String>,
    /// Its `Idempotency-Key`, if it sent one: every request with the key is the same tweet,
    /// whose id any answer to one of them names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The country as counted (its canonical name).
    pub country: String,
    /// The HTTP status; 0 when no answer came.
    pub status: u16,
}

impl Request {
    pub fn outcome(&self) -> Outcome {
        Outcome::of(self.status)
    }
}

/// Every request a run's clients sent, in the order they were answered.
#[derive(Debug, Default)]
pub struct Ledger {
    requests: Mutex<Vec<Request>>,
}

impl Ledger {
    pub fn push(&self, request: Request) {
        self.requests.lock().expect("ledger lock").push(request);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("ledger lock").clone()
    }

    /// Tweets accepted (a key accepted three times is one tweet).
    pub fn accepted(&self) -> usize {
        let requests = self.requests.lock().expect("ledger lock");
        let accepted = requests.iter().filter(|r| r.outcome() == Outcome::Accepted);
        accepted.map(|r| r.id.as_deref()).collect::<BTreeSet<_>>().len()
    }

    /// The ledger Locust writes with `--ledger-file`: one JSON object a line,
    /// `{"id": …, "country": …, "status": …}`.
    pub fn read(path: &Path) -> anyhow::Result<Ledger> {
        use anyhow::Context;
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let requests = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Ledger { requests: Mutex::new(requests) })
    }
}

/// How many ids differ in one way, and the first of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ids {
    pub count: u64,
    pub first: Vec<String>,
}

/// Ids listed by a difference.
const FIRST: usize = 5;

impl Ids {
    fn of(ids: impl IntoIterator<Item = impl AsRef<str>>) -> Ids {
        let mut found = Ids::default();
        for id in ids {
            found.count += 1;
            if found.first.len() < FIRST {
                found.first.push(id.as_ref().to_owned());
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl fmt::Display for Ids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.count)?;
        if !self.first.is_empty() {
            let more = if self.count > self.first.len() as u64 { ", …" } else { "" };
            write!(f, " ({}{more})", self.first.join(", "))?;
        }
        Ok(())
    }
}

/// One country whose count in Redis is not the number of its tweets in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountryCount {
    pub country: String,
    pub expected: i64,
    pub counted: i64,
}

/// The audit of a run; [`Audit::exact`] when every difference is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Requests sent; tweets accepted (distinct ids answered 2xx); requests answered 503 or
    /// 4xx, or left unknown.
    pub requests: u64,
    pub accepted: u64,
    pub not_sent: u64,
    pub unknown: u64,
    /// Tweet records in the topic (a tweet sent twice is two), and other records (poison).
    pub in_kafka: u64,
    pub not_tweets: u64,
    pub dead_lettered: i64,
    pub counted: i64,
    pub archived: u64,
    /// Records in Kafka that no 2xx accounts for, explained by an unknown outcome.
    pub explained: u64,
    /// Accepted, not in Kafka.
    pub missing_from_kafka: Ids,
    /// In Kafka, not accepted, and no unknown outcome explains them (a 503 that was written).
    pub unexplained_in_kafka: Ids,
    /// Ids in Kafka more than once, sent once.
    pub duplicated_in_kafka: Ids,
    /// In Kafka (or accepted), not archived.
    pub missing_from_archive: Ids,
    /// Archived, neither in Kafka nor accepted.
    pub extra_in_archive: Ids,
    /// Countries counted other than their tweets in Kafka.
    pub countries: Vec<CountryCount>,
    /// Tweets not counted, and counted beyond their number, summed over the countries (each
    /// country's difference goes to one of them, never netted against another's).
    pub lost: i64,
    pub double_counted: i64,
    /// The per-country, per-condition and per-pair counts each add up to the total.
    pub hashes_agree: bool,
}

impl Audit {
    /// Reads what the run's pipeline holds and compares it with `ledger`.
    pub async fn of(state: &State, ledger: &Ledger) -> anyhow::Result<Audit> {
        let brokers = &state.stack.kafka_brokers;
        let records = crate::state::kafka::read(brokers, &state.topic, Duration::from_secs(120)).await?;
        let dead_lettered = crate::state::kafka::records(brokers, &state.dead_letters)?;
        let archived = state.archived_ids().await?;
        let counted = state.counted().await?;
        Ok(Audit::compare(&ledger.requests(), &records, &archived, &counted, dead_lettered))
    }

    /// The audit of `requests` against the records in Kafka, the archive's ids and the counts.
    pub fn compare(
        requests: &[Request],
        records: &[Record],
        archived: &BTreeSet<String>,
        counted: &Counted,
        dead_lettered: i64,
    ) -> Audit {
        let outcomes = |o: Outcome| requests.iter().filter(|r| r.outcome() == o).count() as u64;
        // A key's id is the one any answer to it named.
        let key_ids: BTreeMap<&str, &str> =
            requests.iter().filter_map(|r| Some((r.key.as_deref()?, r.id.as_deref()?))).collect();
        let mut sent: BTreeMap<&str, usize> = BTreeMap::new();
        let (mut accepted, mut unknown) = (BTreeSet::new(), BTreeSet::new());
        let mut anonymous: BTreeMap<&str, u64> = BTreeMap::new();
        for r in requests {
            let id = r.id.as_deref().or_else(|| key_ids.get(r.key.as_deref()?).copied());
            match (id, r.outcome()) {
                (Some(id), outcome) => {
                    *sent.entry(id).or_default() += 1;
                    match outcome {
                        Outcome::Accepted => accepted.insert(id),
                        Outcome::Unknown => unknown.insert(id),
                        Outcome::NotSent => false,
                    };
                }
                (None, Outcome::Unknown) => *anonymous.entry(&r.country).or_default() += 1,
                (None, _) => {}
            }
        }

        // Tweets in Kafka: id → (country, records).
        let mut in_kafka: BTreeMap<&str, (&str, usize)> = BTreeMap::new();
        let mut not_tweets = 0;
        for record in records {
            match record {
                Record::Tweet { id, country } => {
                    in_kafka.entry(id.as_str()).or_insert((country.as_str(), 0)).1 += 1
                }
                Record::NotATweet => not_tweets += 1,
            }
        }
        let missing_from_kafka = Ids::of(accepted.iter().filter(|id| !in_kafka.contains_key(*id)));
        let (mut explained, mut unexplained) = (0, Vec::new());
        for (id, (country, _)) in &in_kafka {
            if accepted.contains(id) {
                continue;
            }
            if unknown.contains(id) {
                explained += 1;
            } else if let Some(left) = anonymous.get_mut(country).filter(|n| **n > 0) {
                *left -= 1;
                explained += 1;
            } else {
                unexplained.push(*id);
            }
        }
        let duplicated = in_kafka
            .iter()
            .filter(|(id, (_, n))| *n > 1 && sent.get(*id).copied().unwrap_or(0) < 2)
            .map(|(id, _)| id);

        // What the sinks must hold: every tweet in Kafka, and every accepted one (a 2xx whose
        // record is missing shows above, and must show here too).
        let mut expected: BTreeMap<&str, &str> = in_kafka.iter().map(|(id, (c, _))| (*id, *c)).collect();
        for r in requests.iter().filter(|r| r.outcome() == Outcome::Accepted) {
            if let Some(id) = &r.id {
                expected.entry(id.as_str()).or_insert(r.country.as_str());
            }
        }
        let missing_from_archive = Ids::of(expected.keys().filter(|id| !archived.contains(**id)));
        let extra_in_archive = Ids::of(archived.iter().filter(|id| !expected.contains_key(id.as_str())));

        let mut per_country: BTreeMap<&str, i64> = BTreeMap::new();
        for country in expected.values() {
            *per_country.entry(*country).or_default() += 1;
        }
        let names: BTreeSet<&str> =
            per_country.keys().copied().chain(counted.countries.keys().map(String::as_str)).collect();
        let countries: Vec<CountryCount> = names
            .into_iter()
            .map(|c| CountryCount {
                country: c.to_owned(),
                expected: per_country.get(c).copied().unwrap_or(0),
                counted: counted.countries.get(c).copied().unwrap_or(0),
            })
            .filter(|c| c.expected != c.counted)
            .collect();
        let sum = |h: &BTreeMap<String, i64>| h.values().sum::<i64>();
        Audit {
            requests: requests.len() as u64,
            accepted: accepted.len() as u64,
            not_sent: outcomes(Outcome::NotSent),
            unknown: outcomes(Outcome::Unknown),
            in_kafka: in_kafka.values().map(|(_, n)| *n as u64).sum(),
            not_tweets,
            dead_lettered,
            counted: counted.total,
            archived: archived.len() as u64,
            explained,
            missing_from_kafka,
            unexplained_in_kafka: Ids::of(&unexplained),
            duplicated_in_kafka: Ids::of(duplicated),
            missing_from_archive,
            extra_in_archive,
            lost: countries.iter().map(|c| (c.expected - c.counted).max(0)).sum(),
            double_counted: countries.iter().map(|c| (c.counted - c.expected).max(0)).sum(),
            countries,
            hashes_agree: [sum(&counted.countries), sum(&counted.climas), sum(&counted.country_clima)]
                .iter()
                .all(|s| *s == counted.total),
        }
    }

    /// Tweets missing somewhere: accepted but not in Kafka, not archived, or not counted.
    pub fn missing(&self) -> u64 {
        self.missing_from_kafka.count + self.missing_from_archive.count + self.lost as u64
    }

    /// Tweets there once too often or never sent: unexplained in Kafka, duplicated, archived
    /// beyond the tweets, or counted beyond them.
    pub fn extra(&self) -> u64 {
        self.unexplained_in_kafka.count
            + self.duplicated_in_kafka.count
            + self.extra_in_archive.count
            + self.double_counted as u64
    }

    /// Nothing missing, nothing extra, and the counts add up.
    pub fn exact(&self) -> bool {
        self.missing() == 0 && self.extra() == 0 && self.hashes_agree
    }

    /// One line per difference, each with the first ids (empty when exact).
    pub fn differences(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut ids = |what: &str, ids: &Ids| {
            if !ids.is_empty() {
                lines.push(format!("{what}: {ids}"));
            }
        };
        ids("accepted, missing from Kafka", &self.missing_from_kafka);
        ids("in Kafka, not accepted, no unknown outcome to explain it", &self.unexplained_in_kafka);
        ids("in Kafka more than once, sent once", &self.duplicated_in_kafka);
        ids("in Kafka or accepted, not archived", &self.missing_from_archive);
        ids("archived, never sent", &self.extra_in_archive);
        if !self.countries.is_empty() {
            let countries: Vec<String> = self
                .countries
                .iter()
                .map(|c| {
                    format!("{} {} of {} ({:+})", c.country, c.counted, c.expected, c.counted - c.expected)
                })
                .collect();
            lines.push(format!("counted per country: {}", countries.join(", ")));
        }
        if !self.hashes_agree {
            lines.push("the per-country, per-condition or per-pair counts do not add up to the total".into());
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: Option<&str>, country: &str, status: u16) -> Request {
        Request { id: id.map(str::to_owned), key: None, country: country.to_owned(), status }
    }

    fn keyed(key: &str, id: Option<&str>, country: &str, status: u16) -> Request {
        Request { key: Some(key.to_owned()), ..request(id, country, status) }
    }

    fn tweet(id: &str, country: &str) -> Record {
        Record::Tweet { id: id.to_owned(), country: country.to_owned() }
    }

    fn counted(countries: &[(&str, i64)]) -> Counted {
        let countries: BTreeMap<String, i64> = countries.iter().map(|(c, n)| (c.to_string(), *n)).collect();
        let total = countries.values().sum();
        Counted {
            total,
            climas: [("soleado".to_owned(), total)].into(),
            country_clima: countries.iter().map(|(c, n)| (format!("{c}/soleado"), *n)).collect(),
            countries,
            country_codes: BTreeMap::new(),
        }
    }

    fn ids(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn outcomes_of_answers() {
        let cases = [
            (202, Outcome::Accepted),
            (200, Outcome::Accepted),
            (400, Outcome::NotSent),
            (413, Outcome::NotSent),
            (503, Outcome::NotSent),
            (504, Outcome::Unknown),
            (502, Outcome::Unknown),
            (500, Outcome::Unknown),
            (0, Outcome::Unknown),
        ];
        for (status, outcome) in cases {
            assert_eq!(Outcome::of(status), outcome, "{status}");
        }
    }

    #[test]
    fn every_tweet_once_is_exact() {
        let requests = [request(Some("a"), "Chile", 202), request(Some("b"), "Perú", 202)];
        let audit = Audit::compare(
            &requests,
            &[tweet("a", "Chile"), tweet("b", "Perú"), Record::NotATweet],
            &ids(&["a", "b"]),
            &counted(&[("Chile", 1), ("Perú", 1)]),
            2,
        );
        assert!(audit.exact(), "{:?}", audit.differences());
        assert_eq!((audit.accepted, audit.in_kafka, audit.not_tweets, audit.archived), (2, 2, 1, 2));
        assert!(audit.differences().is_empty());
    }

    #[test]
    fn a_loss_and_a_double_do_not_cancel() {
        let requests = [request(Some("a"), "Chile", 202), request(Some("b"), "Perú", 202)];
        let audit = Audit::compare(
            &requests,
            &[tweet("a", "Chile"), tweet("b", "Perú")],
            &ids(&["a", "b"]),
            // The total is right: Chile counted twice, Perú not at all.
            &counted(&[("Chile", 2)]),
            0,
        );
        assert_eq!((audit.lost, audit.double_counted, audit.counted), (1, 1, 2));
        assert!(!audit.exact());
        assert_eq!(audit.differences(), ["counted per country: Chile 2 of 1 (+1), Perú 0 of 1 (-1)"]);
    }

    #[test]
    fn a_503_that_was_written_is_unexplained_and_a_504_explains_its_record() {
        let requests = [
            request(Some("a"), "Chile", 202),
            request(None, "Chile", 503),
            request(Some("c"), "Perú", 504),
            request(Some("d"), "Perú", 504),
        ];
        let records = [tweet("a", "Chile"), tweet("b", "Chile"), tweet("c", "Perú")];
        let audit = Audit::compare(
            &requests,
            &records,
            &ids(&["a", "b", "c"]),
            &counted(&[("Chile", 2), ("Perú", 1)]),
            0,
        );
        assert_eq!((audit.not_sent, audit.unknown, audit.explained), (1, 2, 1));
        assert_eq!(audit.unexplained_in_kafka, Ids { count: 1, first: vec!["b".into()] });
        assert_eq!(audit.missing(), 0, "d's outcome was unknown: not stored is fine");
        assert_eq!(audit.extra(), 1);
    }

    #[test]
    fn a_request_without_an_answer_explains_one_record_of_its_country() {
        let requests =
            [request(Some("a"), "Chile", 202), request(None, "Chile", 0), request(Some("c"), "Chile", 202)];
        let records = [tweet("a", "Chile"), tweet("b", "Chile"), tweet("c", "Chile"), tweet("e", "Perú")];
        let audit = Audit::compare(
            &requests,
            &records,
            &ids(&["a", "b", "c", "e"]),
            &counted(&[("Chile", 3), ("Perú", 1)]),
            0,
        );
        assert_eq!(audit.explained, 1);
        assert_eq!(audit.unexplained_in_kafka.first, ["e"], "no unanswered request of Perú");
    }

    #[test]
    fn a_retried_key_explains_its_duplicates_and_a_single_send_does_not() {
        // The key's first answer named no id; its second did.
        let requests = [
            keyed("key", None, "Chile", 0),
            keyed("key", Some("k"), "Chile", 202),
            request(Some("s"), "Perú", 202),
        ];
        let records = [tweet("k", "Chile"), tweet("k", "Chile"), tweet("s", "Perú"), tweet("s", "Perú")];
        let audit =
            Audit::compare(&requests, &records, &ids(&["k", "s"]), &counted(&[("Chile", 1), ("Perú", 1)]), 0);
        assert_eq!(audit.in_kafka, 4);
        assert_eq!(audit.duplicated_in_kafka.first, ["s"]);
        assert_eq!((audit.missing(), audit.extra()), (0, 1));
    }

    #[test]
    fn missing_and_extra_ids_are_listed() {
        let requests: Vec<Request> = (0..8).map(|i| request(Some(&format!("t{i}")), "Chile", 202)).collect();
        let records: Vec<Record> = (1..8).map(|i| tweet(&format!("t{i}"), "Chile")).collect();
        let archived: BTreeSet<String> = (2..8).map(|i| format!("t{i}")).chain(["x".into()]).collect();
        let audit = Audit::compare(&requests, &records, &archived, &counted(&[("Chile", 8)]), 0);
        assert_eq!(audit.missing_from_kafka.first, ["t0"]);
        assert_eq!(audit.missing_from_archive.first, ["t0", "t1"]);
        assert_eq!(audit.extra_in_archive.first, ["x"]);
        assert!(audit.countries.is_empty(), "8 accepted, 8 counted");
        assert_eq!(
            audit.differences(),
            [
                "accepted, missing from Kafka: 1 (t0)",
                "in Kafka or accepted, not archived: 2 (t0, t1)",
                "archived, never sent: 1 (x)",
            ]
        );
    }

    #[test]
    fn long_lists_show_their_first_ids() {
        let ids: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
        assert_eq!(Ids::of(&ids).to_string(), "7 (t0, t1, t2, t3, t4, …)");
        assert_eq!(Ids::of(Vec::<String>::new()).to_string(), "0");
    }

    #[test]
    fn reads_a_locust_ledger() {
        let path = std::env::temp_dir().join(format!("ledger-{}.jsonl", uuid::Uuid::new_v4()));
        std::fs::write(
            &path,
            "{\"id\":\"a\",\"country\":\"Chile\",\"status\":202}\n{\"id\":null,\"country\":\"Perú\",\"status\":503}\n",
        )
        .unwrap();
        let ledger = Ledger::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(ledger.requests(), [request(Some("a"), "Chile", 202), request(None, "Perú", 503)]);
        assert_eq!(ledger.accepted(), 1);
    }
}
