//! What ingest remembers of each `Idempotency-Key`, in Redis: the id of the first request that
//! carried it, so that the same key with another body is refused (422) and the same key and
//! body is the same tweet; and how many new keys it took this hour, so that clients cannot make
//! it (and counter) remember without bound (429).
//!
//! Keys, under the configured prefix (`weather:`) written as the hash tag `{weather}:` like
//! counter's, so one script touches one Redis Cluster slot and `tools reset` clears them too;
//! none is built from client text (the key is hashed):
//! - `idempotency-key:{UUIDv5 of the key, 32 hex digits}` — string: the 16 bytes of the first
//!   request's id, expiring `IDEMPOTENCY_KEY_TTL_S` after it was taken;
//! - `idempotency-keys:{hours since 1970}` — integer: new keys taken in that clock hour, expiring
//!   an hour after the hour ends.
//!
//! The bound: each remembered key costs [`BYTES_PER_KEY`] (measured by the tests with `MEMORY
//! USAGE`) plus Redis's expiry entry, and at most `IDEMPOTENCY_KEYS_PER_HOUR` are taken per
//! hour, so at most `IDEMPOTENCY_KEYS_PER_HOUR × (IDEMPOTENCY_KEY_TTL_S / 3600 + 1)` keys live at
//! once. Checking, counting and taking happen in one script, so two requests with one key and
//! two bodies cannot both be first.

use redis::{
    Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

/// The most one remembered key may take in Redis, per `MEMORY USAGE` (key, value and overhead;
/// the expiry adds about 40 bytes more). Tested.
pub const BYTES_PER_KEY: u64 = 144;

/// Returns 0 (first), 1 (same id), 2 (another id), 3 (over budget).
const REMEMBER: &str = r#"
local first = redis.call('GET', KEYS[1])
if first then
  if first == ARGV[1] then return 1 end
  return 2
end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[3]) then return 3 end
if redis.call('INCR', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], 7200) end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 0
"#;

/// What a key's request is, to what ingest remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    /// A new key, now bound to this request's id.
    First,
    /// A key bound to this very request (same key, same tweet): a retry.
    Same,
    /// A key bound to another tweet.
    Reused,
    /// A new key, but this hour's budget of new keys is spent; it ends in `retry_after_s`.
    OverBudget { retry_after_s: u64 },
}

/// The keys ingest remembers, connecting on first use so ingest starts while Redis is down.
pub struct Keys {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    script: Script,
    /// `{weather}:` for the prefix `weather:`.
    tag: String,
    ttl_s: u64,
    per_hour: u64,
    timeout: Duration,
}

impl Keys {
    pub fn new(config: &crate::Config) -> Result<Keys, redis::RedisError> {
        Ok(Keys {
            client: redis::Client::open(config.redis_url.as_str())?,
            connection: OnceCell::new(),
            script: Script::new(REMEMBER),
            tag: format!("{{{}}}:", config.key_prefix.trim_end_matches(':')),
            ttl_s: config.idempotency_key_ttl_s,
            per_hour: config.idempotency_keys_per_hour,
            timeout: Duration::from_millis(config.redis_timeout_ms),
        })
    }

    /// Where `key`'s first id is kept.
    pub fn record(&self, key: &str) -> String {
        let hashed = uuid::Uuid::new_v5(&common::event::IDEMPOTENCY_NAMESPACE, key.as_bytes());
        format!("{}idempotency-key:{}", self.tag, hashed.simple())
    }

    /// The count of new keys taken in `hour` (hours since 1970).
    pub fn budget(&self, hour: u64) -> String {
        format!("{}idempotency-keys:{hour}", self.tag)
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let init = || async {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1);
            ConnectionManager::new_with_config(self.client.clone(), config).await
        };
        self.connection.get_or_try_init(init).await.cloned()
    }

    /// Binds `key` to `id` unless it is bound already or the hour's budget is spent.
    pub async fn remember(&self, key: &str, id: uuid::Uuid) -> redis::RedisResult<Remembered> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let (hour, retry_after_s) = (now / 3600, 3600 - now % 3600);
        let mut connection = self.connection().await?;
        let answer: u8 = self
            .script
            .key(self.record(key))
            .key(self.budget(hour))
            .arg(id.as_bytes().as_slice())
            .arg(self.ttl_s)
            .arg(self.per_hour)
            .invoke_async(&mut connection)
            .await?;
        Ok(match answer {
            0 => Remembered::First,
            1 => Remembered::Same,
            2 => Remembered::Reused,
            _ => Remembered::OverBudget { retry_after_s },
        })
    }
}
