//! The Redis keyspace ([`Keyspace`]: the one description of the keys, which the tools read too)
//! and the one Lua script that updates it exactly once per record ([`Counts`]).
//!
//! Keys (all under the configured prefix, `weather:` by default, written as the hash tag
//! `{weather}:` so that every key lives in one slot; no key is built from user text):
//! - `total` — string: tweets counted;
//! - `countries` — hash: country → tweets;
//! - `climas` — hash: weather condition → tweets;
//! - `country-clima` — hash: `country/condition` → tweets (the condition never holds `/`);
//! - `country-codes` — hash: ISO 3166-1 alpha-2 code → tweets (Grafana's geomap reads it);
//!   countries come from ISO 3166-1 (`common::country`), so these hashes hold at most 249
//!   fields (× 8 conditions for `country-clima`) by construction;
//! - `seen:{topic}:{topic id}:{partition}:{block}` — bitmap of counted records of one topic,
//!   bit `offset mod 2^20` of block `offset div 2^20`. `{topic}` is `KAFKA_TOPIC` or
//!   `KAFKA_DEAD_LETTER_TOPIC` (an event naming another topic is refused), `{topic id}` the
//!   topic's Kafka id (KIP-516, written as Kafka writes it: 22 characters of URL-safe base64),
//!   so a topic deleted and created again is new to the dedup; only positions below their
//!   partition's high watermark are marked ([`crate::positions`]). Each block is 128 KiB at most
//!   and its expiry is set again to `DEDUP_TTL_S` whenever a record is counted in it, so every
//!   record's mark lives at least `DEDUP_TTL_S` after that record was counted. The bound: the
//!   blocks of records counted within the last `DEDUP_TTL_S`, i.e. one bit per record rounded
//!   up to whole blocks (≈ 125 MB per billion records, plus at most one 128 KiB block per
//!   partition); no event can mark a block that no record reaches.
//! - `seen-id:{event id}` — for events that carry no Kafka position (e.g. posted directly), and
//!   for tweets published with an `Idempotency-Key` (their id is the key's UUIDv5, so every
//!   record of one key shares it): one small key per event, expiring after the same TTL. The
//!   id is bounded (`common::sink::MAX_ID_BYTES`). A key reused after the TTL is a new tweet to
//!   counter, while archiver still holds the first one: clients must not reuse keys.
//!
//! Checking the mark and incrementing happen in one script, so Redis applies both or neither:
//! a redelivered record finds its bit set and changes nothing.
//!
//! What counter needs from Redis: scripting (`EVALSHA`, Redis ≥ 7 is checked on connecting, as
//! the one version line we test); `maxmemory-policy noeviction`, because any other policy may
//! evict the dedup marks (`volatile-*` ones take the keys with a TTL first, i.e. exactly them)
//! and redelivered records would count twice — counter refuses to count (503) and answers its
//! readiness probe 503 while Redis may evict ([`Counts::ready`]); `appendonly yes` with
//! `appendfsync always` for "2xx means durable" (a write Redis acknowledged but had not fsynced
//! is lost when it crashes; the local stack sets both, and counter warns when the server does
//! not). Counter's client speaks to one Redis server: it does not follow Redis Cluster's
//! redirections.

use crate::{
    kafka::{Kafka, KafkaError},
    positions::{Checked, Positions},
};
use base64::Engine;
use common::{
    event::{Position, Received},
    sink::{Applied, Failure, Store},
};
use redis::{
    AsyncCommands, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::OnceCell;
use tracing::Instrument;

/// Offsets per bitmap block (2^20 bits = 128 KiB).
const BLOCK_BITS: i64 = 1 << 20;
/// The oldest Redis major version counter is tested with.
const MIN_REDIS_MAJOR: u32 = 7;
/// The one `maxmemory-policy` under which Redis never drops a key to make room.
const NO_EVICTION: &str = "noeviction";
/// How long a look at Redis's eviction policy is trusted.
const POLICY_MAX_AGE: Duration = Duration::from_secs(1);

const APPLY: &str = r#"
local fresh
if ARGV[1] == 'bit' then
  fresh = redis.call('SETBIT', KEYS[1], ARGV[2], 1) == 0
  if fresh then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
else
  fresh = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) ~= false
end
if fresh and ARGV[6] == '1' then
  fresh = redis.call('SET', KEYS[6], '1', 'NX', 'EX', ARGV[3]) ~= false
end
if not fresh then return 0 end
redis.call('INCR', KEYS[2])
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
redis.call('HINCRBY', KEYS[5], ARGV[4] .. '/' .. ARGV[5], 1)
redis.call('HINCRBY', KEYS[7], ARGV[7], 1)
return 1
"#;

/// The names of counter's keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyspace {
    /// `{weather}:` for the prefix `weather:`.
    tag: String,
}

impl Keyspace {
    pub fn new(prefix: &str) -> Keyspace {
        Keyspace { tag: format!("{{{}}}:", prefix.trim_end_matches(':')) }
    }

    pub fn total(&self) -> String {
        format!("{}total", self.tag)
    }
    pub fn countries(&self) -> String {
        format!("{}countries", self.tag)
    }
    pub fn climas(&self) -> String {
        format!("{}climas", self.tag)
    }
    pub fn country_clima(&self) -> String {
        format!("{}country-clima", self.tag)
    }
    pub fn country_codes(&self) -> String {
        format!("{}country-codes", self.tag)
    }
    /// The bitmap block that holds the mark of `position` in the topic `topic` with Kafka id
    /// `topic_id`, and the bit in it.
    pub fn seen(&self, topic: &str, topic_id: uuid::Uuid, position: Position) -> (String, i64) {
        let block = position.offset / BLOCK_BITS;
        // As Kafka writes a topic id (`kafka-topics --describe`).
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topic_id.as_bytes());
        (
            format!("{}seen:{topic}:{id}:{}:{block}", self.tag, position.partition),
            position.offset % BLOCK_BITS,
        )
    }
    pub fn seen_id(&self, id: &str) -> String {
        format!("{}seen-id:{id}", self.tag)
    }
    /// A pattern matching every key of this keyspace (for `SCAN`, to clear a run).
    pub fn pattern(&self) -> String {
        // `{` and `}` are not glob characters; `[`, `*`, `?` never occur in a prefix we build.
        format!("{}*", self.tag)
    }

    /// Everything counted so far.
    pub async fn read(&self, redis: &mut impl redis::aio::ConnectionLike) -> redis::RedisResult<Counted> {
        let total: Option<i64> = redis::cmd("GET").arg(self.total()).query_async(redis).await?;
        let hash = |key: String| redis::cmd("HGETALL").arg(key).to_owned();
        Ok(Counted {
            total: total.unwrap_or(0),
            countries: hash(self.countries()).query_async(redis).await?,
            climas: hash(self.climas()).query_async(redis).await?,
            country_clima: hash(self.country_clima()).query_async(redis).await?,
            country_codes: hash(self.country_codes()).query_async(redis).await?,
        })
    }

    /// Deletes every key of this keyspace; returns how many went.
    pub async fn clear(&self, redis: &mut ConnectionManager) -> redis::RedisResult<usize> {
        let mut keys: Vec<String> = Vec::new();
        {
            let mut scan = redis.scan_match::<_, String>(self.pattern()).await?;
            while let Some(key) = scan.next_item().await {
                keys.push(key?);
            }
        }
        for chunk in keys.chunks(500) {
            let _: () = redis.del(chunk).await?;
        }
        Ok(keys.len())
    }
}

/// The counters, as the Grafana dashboard reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counted {
    pub total: i64,
    pub countries: BTreeMap<String, i64>,
    pub climas: BTreeMap<String, i64>,
    pub country_clima: BTreeMap<String, i64>,
    /// ISO 3166-1 alpha-2 code → tweets (for a geomap).
    pub country_codes: BTreeMap<String, i64>,
}

/// Why an event was not counted.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    /// No record has the event's position (400).
    #[error("{0}")]
    Position(String),
    #[error("Kafka: {0}")]
    Kafka(Arc<KafkaError>),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    /// Redis may evict counter's keys (503 until it may not).
    #[error("{0}")]
    Evicting(String),
}

/// Counts in Redis, connecting on first use so the function starts while Redis (or Kafka) is
/// down.
pub struct Counts {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: Script,
    keys: Keyspace,
    /// The keys every event counts into, named once (they were five `format!`s per event).
    counters: Counters,
    topic: String,
    positions: Positions,
    /// The last look at Redis's `maxmemory-policy`, and when it was taken.
    policy: tokio::sync::Mutex<Option<(Instant, String)>>,
    ttl_s: u64,
    timeout: Duration,
}

/// Where an event's mark lives.
enum Mark<'a> {
    /// The record at `position` of the topic `topic` whose Kafka id is `topic_id`.
    Record { topic: &'a str, topic_id: uuid::Uuid, position: Position },
    /// An event without a position: its id.
    Id,
}

impl Counts {
    pub fn new(config: &crate::Config) -> Result<Counts, redis::RedisError> {
        let keys = Keyspace::new(&config.key_prefix);
        let kafka = Kafka::new(&config.kafka_brokers, Duration::from_millis(config.kafka_timeout_ms));
        Ok(Counts {
            client: redis::Client::open(config.redis_url.expose_secret())?,
            connection: OnceCell::new(),
            script: Script::new(APPLY),
            counters: Counters::new(&keys),
            keys,
            topic: config.topic.clone(),
            positions: Positions::new(kafka, &config.topic, &config.dead_letter_topic),
            policy: tokio::sync::Mutex::new(None),
            ttl_s: config.dedup_ttl_s,
            timeout: Duration::from_millis(config.redis_timeout_ms),
        })
    }

    /// The shared connection; the first one checks what counter needs from the server.
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let init = || async {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1);
            let mut connection = ConnectionManager::new_with_config(self.client.clone(), config).await?;
            check_server(&mut connection).await?;
            Ok(connection)
        };
        self.connection.get_or_try_init(init).await.cloned()
    }

    /// Connects now and checks the server, for `main` to fail early with a clear error; a Redis
    /// or Kafka that is merely down is not an error (counter answers 503 until it is back), nor
    /// is a Redis that may evict (counter is not ready until it may not).
    pub async fn check(&self) -> Result<(), redis::RedisError> {
        if let Err(e) = self.positions.look().await {
            tracing::warn!(error = %e, "Kafka is not reachable yet; events with a position get 503 until it is");
        }
        match self.connection().await {
            Err(e) if e.kind() == redis::ErrorKind::InvalidClientConfig => return Err(e),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_refusal() => {
                tracing::warn!(error = %e, "Redis is not reachable yet; answering 503 until it is");
                return Ok(());
            }
            other => other.map(|_| ())?,
        }
        let _ = self.may_evict().await;
        Ok(())
    }

    /// Ready unless Redis may evict counter's keys; a Redis that cannot be asked does not make
    /// counter unready (events get 503 until it is back, and are retried).
    pub async fn ready(&self) -> Result<(), String> {
        match self.may_evict().await {
            Err(CountError::Evicting(why)) => Err(why),
            _ => Ok(()),
        }
    }

    /// `Err(Evicting)` when Redis's `maxmemory-policy` is not `noeviction`; asks Redis at most
    /// once per [`POLICY_MAX_AGE`].
    async fn may_evict(&self) -> Result<(), CountError> {
        let mut last = self.policy.lock().await;
        let policy = match &*last {
            Some((at, policy)) if at.elapsed() < POLICY_MAX_AGE => policy.clone(),
            _ => {
                let mut connection = self.connection().await?;
                let info: String = redis::cmd("INFO").arg("memory").query_async(&mut connection).await?;
                let policy = eviction_policy(&info).unwrap_or("unknown").to_owned();
                let before = last.as_ref().map(|(_, p)| p.as_str());
                if policy != NO_EVICTION && before != Some(policy.as_str()) {
                    tracing::error!(maxmemory_policy = %policy, "{}", evicting(&policy));
                } else if policy == NO_EVICTION && before.is_some_and(|p| p != NO_EVICTION) {
                    tracing::info!("Redis no longer evicts keys; counting again");
                }
                *last = Some((Instant::now(), policy.clone()));
                policy
            }
        };
        if policy == NO_EVICTION { Ok(()) } else { Err(CountError::Evicting(evicting(&policy))) }
    }

    /// The topic a delivered record belongs to: the one Knative names in a wrapped record's
    /// source (`…/kafkasources/<name>#<topic>`), else the topic counter is configured for.
    fn topic_of<'a>(&'a self, event: &'a Received) -> &'a str {
        event.source.rsplit_once('#').map_or(self.topic.as_str(), |(_, topic)| topic)
    }

    /// Counts the tweet unless this record (or event id) was counted before. A position must
    /// be a record's ([`crate::positions`]): anything else is refused before Redis is asked.
    pub async fn apply(&self, event: &Received) -> Result<Applied, CountError> {
        let arrived = Instant::now();
        let Some(position) = event.position else {
            self.may_evict().await?;
            return self.count(event, Mark::Id).await;
        };
        let topic = self.topic_of(event);
        let (topic_id, fresh) = genuine(self.positions.check(topic, position, arrived).await)?;
        self.may_evict().await?;
        let applied = self.count(event, Mark::Record { topic, topic_id, position }).await?;
        if applied == Applied::New || fresh {
            return Ok(applied);
        }
        // "Duplicate" by a look older than the event: if the topic was re-created since, the
        // mark is the old topic's, and the record is new to the new one.
        let (now, _) = genuine(self.positions.recheck(topic, position, arrived).await)?;
        if now == topic_id {
            return Ok(Applied::Duplicate);
        }
        tracing::warn!(
            topic,
            partition = position.partition,
            offset = position.offset,
            "Topic re-created; counting the record as the new topic's"
        );
        self.count(event, Mark::Record { topic, topic_id: now, position }).await
    }

    /// Runs the script: marks `mark` and counts, unless it was marked already.
    async fn count(&self, event: &Received, mark: Mark<'_>) -> Result<Applied, CountError> {
        let mut invocation = self.script.prepare_invoke();
        match mark {
            Mark::Record { topic, topic_id, position } => {
                let (block, bit) = self.keys.seen(topic, topic_id, position);
                invocation.key(block).arg("bit").arg(bit)
            }
            Mark::Id => invocation.key(self.keys.seen_id(&event.id)).arg("id").arg(0),
        };
        let counters = &self.counters;
        invocation
            .key(counters.total.as_str())
            .key(counters.countries.as_str())
            .key(counters.climas.as_str())
            .key(counters.country_clima.as_str())
            .arg(self.ttl_s)
            .arg(event.tweet.pais)
            .arg(event.tweet.clima.as_str())
            .arg(if event.idempotent && event.position.is_some() { "1" } else { "0" })
            .key(self.keys.seen_id(&event.id))
            .key(counters.country_codes.as_str())
            .arg(event.tweet.pais_codigo);
        let span = tracing::info_span!(
            "EVALSHA",
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = "EVALSHA",
            db.query.summary = "dedup and count",
        );
        let fresh: i64 = async {
            let mut connection = self.connection().await?;
            invocation.invoke_async(&mut connection).await
        }
        .instrument(span)
        .await?;
        Ok(if fresh == 1 { Applied::New } else { Applied::Duplicate })
    }
}

/// [`Keyspace`]'s keys that do not depend on the event.
struct Counters {
    total: String,
    countries: String,
    climas: String,
    country_clima: String,
    country_codes: String,
}

impl Counters {
    fn new(keys: &Keyspace) -> Counters {
        Counters {
            total: keys.total(),
            countries: keys.countries(),
            climas: keys.climas(),
            country_clima: keys.country_clima(),
            country_codes: keys.country_codes(),
        }
    }
}

impl Store for Counts {
    type Error = CountError;

    async fn apply(&self, event: &Received) -> Result<Applied, CountError> {
        Counts::apply(self, event).await
    }

    fn failure(error: &CountError) -> Failure {
        match error {
            CountError::Position(_) => Failure::Position,
            CountError::Kafka(_) => Failure::Unavailable("kafka"),
            CountError::Redis(_) | CountError::Evicting(_) => Failure::Unavailable("redis"),
        }
    }

    async fn ready(&self) -> Result<(), String> {
        Counts::ready(self).await
    }
}

/// The topic id of a genuine position, and whether a look after the event said so; a refusal
/// or a failed look as the error.
fn genuine(checked: Result<Checked, Arc<KafkaError>>) -> Result<(uuid::Uuid, bool), CountError> {
    match checked.map_err(CountError::Kafka)? {
        Checked::Genuine { topic_id, fresh } => Ok((topic_id, fresh)),
        Checked::Refused(why) => Err(CountError::Position(why)),
    }
}

/// Why counter does not count while Redis's `maxmemory-policy` is `policy`.
fn evicting(policy: &str) -> String {
    format!(
        "Redis maxmemory-policy is {policy}: Redis may evict counter's keys (the dedup marks first, as \
         they expire), and redelivered records would then count twice; set maxmemory-policy {NO_EVICTION}"
    )
}

/// `maxmemory_policy` from `INFO memory` (which managed Redis services answer even where they
/// refuse `CONFIG`).
fn eviction_policy(info: &str) -> Option<&str> {
    info.lines().find_map(|l| l.strip_prefix("maxmemory_policy:")).map(str::trim)
}

/// Refuses a Redis older than [`MIN_REDIS_MAJOR`]; warns when writes are not fsynced before
/// Redis answers, because a 2xx would then not mean durable.
async fn check_server(connection: &mut ConnectionManager) -> redis::RedisResult<()> {
    let info: String = redis::cmd("INFO").arg("server").query_async(connection).await?;
    let version =
        info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("0").trim().to_owned();
    let major: u32 = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major < MIN_REDIS_MAJOR {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "Redis is too old",
            format!("counter needs Redis {MIN_REDIS_MAJOR} or newer; the server is {version}"),
        )));
    }
    let fsync: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("appendfsync").query_async(connection).await.unwrap_or_default();
    let aof: Vec<String> =
        redis::cmd("CONFIG").arg("GET").arg("appendonly").query_async(connection).await.unwrap_or_default();
    let (aof, fsync) = (aof.get(1).map(String::as_str), fsync.get(1).map(String::as_str));
    if !fsyncs_every_write(aof, fsync) {
        tracing::warn!(
            appendonly = aof.unwrap_or("unknown"),
            appendfsync = fsync.unwrap_or("unknown"),
            "Redis does not fsync every write: a crash can lose counts already answered 2xx \
             (set appendonly yes, appendfsync always)"
        );
    }
    Ok(())
}

/// Whether Redis fsyncs each write before answering (`CONFIG GET`'s values; `None`: refused).
fn fsyncs_every_write(appendonly: Option<&str>, appendfsync: Option<&str>) -> bool {
    appendonly == Some("yes") && appendfsync == Some("always")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_one_hash_tag() {
        let keys = Keyspace::new("weather:r1:");
        let id = uuid::Uuid::from_u128(0xfb << 120 | 1);
        let (seen, bit) = keys.seen("messages", id, Position { partition: 2, offset: (1 << 20) + 7 });
        // The id as Kafka writes it: URL-safe base64 of its 16 bytes, unpadded.
        assert_eq!(seen, "{weather:r1}:seen:messages:-wAAAAAAAAAAAAAAAAAAAQ:2:1");
        assert_eq!(bit, 7);
        for key in
            [keys.total(), keys.countries(), keys.climas(), keys.country_clima(), keys.seen_id("x"), seen]
        {
            assert!(key.starts_with("{weather:r1}:"), "{key}");
        }
        assert_eq!(Keyspace::new("weather:").total(), "{weather}:total");
    }
}

#[cfg(test)]
mod store_tests {
    use super::*;

    #[test]
    fn the_eviction_policy_is_read_from_info_memory() {
        let info = "# Memory\r\nused_memory:1024\r\nmaxmemory:0\r\nmaxmemory_policy:volatile-lru\r\n";
        assert_eq!(eviction_policy(info), Some("volatile-lru"));
        assert_eq!(eviction_policy("# Memory\r\nused_memory:1\r\n"), None);
        let why = evicting("volatile-lru");
        assert!(why.contains("maxmemory-policy is volatile-lru") && why.ends_with("noeviction"), "{why}");
    }

    #[test]
    fn only_appendonly_with_appendfsync_always_fsyncs_every_write() {
        assert!(fsyncs_every_write(Some("yes"), Some("always")));
        for (aof, fsync) in [(Some("yes"), Some("everysec")), (Some("no"), Some("always")), (None, None)] {
            assert!(!fsyncs_every_write(aof, fsync), "{aof:?} {fsync:?}");
        }
    }

    #[test]
    fn refusals_are_400_and_the_rest_503_naming_the_dependency() {
        assert_eq!(Counts::failure(&CountError::Position("p".into())), Failure::Position);
        let kafka = CountError::Kafka(Arc::new(KafkaError::Timeout(1)));
        assert_eq!(Counts::failure(&kafka), Failure::Unavailable("kafka"));
        assert_eq!(Counts::failure(&CountError::Evicting("e".into())), Failure::Unavailable("redis"));
        let redis = CountError::Redis(redis::RedisError::from((redis::ErrorKind::Io, "down")));
        assert_eq!(Counts::failure(&redis), Failure::Unavailable("redis"));
    }
}
