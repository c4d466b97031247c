//! The Redis keyspace ([`Keyspace`]: the one description of the keys, which the tools read too)
//! and the one Lua script that updates it exactly once per record ([`Counts`]).
//!
//! Keys (all under the configured prefix, `weather:` by default, written as the hash tag
//! `{weather}:` so that every key lives in one slot and the script runs on Redis Cluster too; no
//! key is built from user text):
//! - `total` — string: tweets counted;
//! - `countries` — hash: country → tweets;
//! - `climas` — hash: weather condition → tweets;
//! - `country-clima` — hash: `country/condition` → tweets (the condition never holds `/`);
//! - `country-codes` — hash: ISO 3166-1 alpha-2 code → tweets (Grafana's geomap reads it);
//!   countries come from ISO 3166-1 (`common::country`), so these hashes hold at most 249
//!   fields (× 8 conditions for `country-clima`) by construction;
//! - `seen:{topic}:{partition}:{block}` — bitmap of counted records of the record's own topic,
//!   bit `offset mod 2^20` of block `offset div 2^20`; each block is 128 KiB at most and its
//!   expiry is set again to `DEDUP_TTL_S` whenever a record is counted in it, so every record's
//!   mark lives at least `DEDUP_TTL_S` after that record was counted. The bound: the blocks
//!   written within the last `DEDUP_TTL_S`, i.e. one bit per record counted within the TTL
//!   rounded up to whole blocks (≈ 125 MB per billion records, plus at most one 128 KiB block
//!   per partition).
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
//! the one version line we test), `appendonly yes` with `appendfsync always` for "2xx means
//! durable" (a write Redis acknowledged but had not fsynced is lost when it crashes; the local
//! stack sets both, and [`Counts::connection`] warns when the server does not), and all keys of
//! one script in one slot (the hash tag).
//!
//! Offsets restart at 0 when a topic is deleted and created again: clear `seen:*` then too
//! (`tools reset` does), or new records would be taken for ones already counted.

use common::{
    event::{Position, Received},
    sink::{Applied, Store},
};
use redis::{
    AsyncCommands, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use std::{collections::BTreeMap, time::Duration};
use tokio::sync::OnceCell;
use tracing::Instrument;

/// Offsets per bitmap block (2^20 bits = 128 KiB).
const BLOCK_BITS: i64 = 1 << 20;
/// The oldest Redis major version counter is tested with.
const MIN_REDIS_MAJOR: u32 = 7;

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
    /// The bitmap block that holds `position`'s mark, and the bit in it.
    pub fn seen(&self, topic: &str, position: Position) -> (String, i64) {
        let block = position.offset / BLOCK_BITS;
        (format!("{}seen:{topic}:{}:{block}", self.tag, position.partition), position.offset % BLOCK_BITS)
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

/// Counts in Redis, connecting on first use so the function starts while Redis is down.
pub struct Counts {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: Script,
    keys: Keyspace,
    /// The keys every event counts into, named once (they were five `format!`s per event).
    counters: Counters,
    topic: String,
    partitions: i32,
    ttl_s: u64,
    timeout: Duration,
}

impl Counts {
    pub fn new(config: &crate::Config) -> Result<Counts, redis::RedisError> {
        let keys = Keyspace::new(&config.key_prefix);
        Ok(Counts {
            client: redis::Client::open(config.redis_url.as_str())?,
            connection: OnceCell::new(),
            script: Script::new(APPLY),
            counters: Counters::new(&keys),
            keys,
            topic: config.topic.clone(),
            partitions: config.topic_partitions,
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
    /// that is merely down is not an error (counter answers 503 until it is back).
    pub async fn check(&self) -> Result<(), redis::RedisError> {
        match self.connection().await {
            Err(e) if e.kind() == redis::ErrorKind::InvalidClientConfig => Err(e),
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_refusal() => {
                tracing::warn!(error = %e, "Redis is not reachable yet; answering 503 until it is");
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// The topic a delivered record belongs to: the one Knative names in a wrapped record's
    /// source (`…/kafkasources/<name>#<topic>`), else the topic counter is configured for.
    fn topic_of<'a>(&'a self, event: &'a Received) -> &'a str {
        event.source.rsplit_once('#').map_or(self.topic.as_str(), |(_, topic)| topic)
    }

    /// Counts the tweet unless this record (or event id) was counted before.
    pub async fn apply(&self, event: &Received) -> redis::RedisResult<Applied> {
        let mut invocation = self.script.prepare_invoke();
        match event.position {
            Some(position) => {
                let (block, bit) = self.keys.seen(self.topic_of(event), position);
                invocation.key(block).arg("bit").arg(bit)
            }
            None => invocation.key(self.keys.seen_id(&event.id)).arg("id").arg(0),
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
    const DEPENDENCY: &'static str = "redis";
    type Error = redis::RedisError;

    async fn apply(&self, event: &Received) -> Result<Applied, redis::RedisError> {
        Counts::apply(self, event).await
    }

    /// Offsets are non-negative already (`common::event`); the partition must be the topic's.
    fn check(&self, event: &Received) -> Result<(), String> {
        match event.position {
            Some(p) if p.partition < 0 || p.partition >= self.partitions => Err(format!(
                "knativekafkapartition {} is not a partition of the topic (0 to {})",
                p.partition,
                self.partitions - 1
            )),
            _ => Ok(()),
        }
    }
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
    if aof.get(1).map(String::as_str) != Some("yes") || fsync.get(1).map(String::as_str) != Some("always") {
        tracing::warn!(
            appendonly = aof.get(1).map(String::as_str).unwrap_or("unknown"),
            appendfsync = fsync.get(1).map(String::as_str).unwrap_or("unknown"),
            "Redis does not fsync every write: a crash can lose counts already answered 2xx \
             (set appendonly yes, appendfsync always)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_one_hash_tag() {
        let keys = Keyspace::new("weather:r1:");
        let (seen, bit) = keys.seen("messages", Position { partition: 2, offset: (1 << 20) + 7 });
        assert_eq!(seen, "{weather:r1}:seen:messages:2:1");
        assert_eq!(bit, 7);
        for key in
            [keys.total(), keys.countries(), keys.climas(), keys.country_clima(), keys.seen_id("x"), seen]
        {
            assert!(key.starts_with("{weather:r1}:"), "{key}");
        }
        assert_eq!(Keyspace::new("weather:").total(), "{weather}:total");
    }
}
