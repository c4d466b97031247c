//! The Redis keyspace and the one Lua script that updates it exactly once per record.
//!
//! Keys (all under the configured prefix, `weather:` by default; none is built from user text):
//! - `total` — string: tweets counted;
//! - `countries` — hash: country → tweets;
//! - `climas` — hash: weather condition → tweets;
//! - `country-clima` — hash: `country/condition` → tweets (the condition never holds `/`);
//! - `seen:{topic}:{partition}:{block}` — bitmap of counted offsets, bit `offset mod 2^20` of
//!   block `offset div 2^20`; each block is 128 KiB at most and expires `DEDUP_TTL_S` after it
//!   was created. The bound: one bit per record kept in Kafka (≈ 125 MB per billion records),
//!   never more than the records within the TTL.
//! - `seen-id:{event id}` — for events that carry no Kafka position (e.g. posted directly):
//!   one small key per event, expiring after the same TTL. The id is bounded (`common::sink::MAX_ID_BYTES`).
//!
//! Checking the mark and incrementing happen in one script, so Redis applies both or neither:
//! a redelivered record finds its bit set and changes nothing.
//!
//! Offsets restart at 0 when a topic is deleted and created again: clear `seen:*` then too
//! (`runner reset` does), or new records would be taken for ones already counted.

use common::event::Received;
use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use std::time::Duration;
use tokio::sync::OnceCell;
use tracing::Instrument;

/// Offsets per bitmap block (2^20 bits = 128 KiB).
const BLOCK_BITS: i64 = 1 << 20;

const APPLY: &str = r#"
local fresh
if ARGV[1] == 'bit' then
  fresh = redis.call('SETBIT', KEYS[1], ARGV[2], 1) == 0
  if fresh then redis.call('EXPIRE', KEYS[1], ARGV[3], 'NX') end
else
  fresh = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3]) ~= false
end
if not fresh then return 0 end
redis.call('INCR', KEYS[2])
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
redis.call('HINCRBY', KEYS[5], ARGV[4] .. '/' .. ARGV[5], 1)
return 1
"#;

/// Counts in Redis, connecting on first use so the function starts while Redis is down.
pub struct Counts {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: Script,
    prefix: String,
    topic: String,
    ttl_s: u64,
    timeout: Duration,
}

/// Whether an event changed the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Counted,
    Duplicate,
}

impl Counts {
    pub fn new(config: &crate::Config) -> Result<Counts, redis::RedisError> {
        Ok(Counts {
            client: redis::Client::open(config.redis_url.as_str())?,
            connection: OnceCell::new(),
            script: Script::new(APPLY),
            prefix: config.key_prefix.clone(),
            topic: config.topic.clone(),
            ttl_s: config.dedup_ttl_s,
            timeout: Duration::from_millis(config.redis_timeout_ms),
        })
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let init = || {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(self.client.clone(), config)
        };
        self.connection.get_or_try_init(init).await.cloned()
    }

    /// Counts the tweet unless this record (or event id) was counted before.
    pub async fn apply(&self, event: &Received) -> redis::RedisResult<Applied> {
        let p = &self.prefix;
        let mut invocation = self.script.prepare_invoke();
        match event.position {
            Some(pos) => invocation
                .key(format!("{p}seen:{}:{}:{}", self.topic, pos.partition, pos.offset / BLOCK_BITS))
                .arg("bit")
                .arg(pos.offset % BLOCK_BITS),
            None => invocation.key(format!("{p}seen-id:{}", event.id)).arg("id").arg(0),
        };
        invocation
            .key(format!("{p}total"))
            .key(format!("{p}countries"))
            .key(format!("{p}climas"))
            .key(format!("{p}country-clima"))
            .arg(self.ttl_s)
            .arg(&event.tweet.pais)
            .arg(event.tweet.clima.as_str());
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
        Ok(if fresh == 1 { Applied::Counted } else { Applied::Duplicate })
    }
}
