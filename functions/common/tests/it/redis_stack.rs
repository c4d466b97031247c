//! Redis: counters and the atomic dedup-then-count Lua script, under a random key prefix.

use crate::{closed_port, env_or, unique, with_cleanup};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, Script};
use std::time::Duration;

/// Bound on connecting and on every reply.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Marks `ARGV[1]` (a Kafka offset) as seen in the bitmap `KEYS[1]` and, only if it was not,
/// counts one for field `ARGV[2]` of hash `KEYS[2]`. Returns 1 when counted, 0 for a duplicate;
/// one script so a crash can never mark without counting.
const DEDUP_COUNT: &str = r"
if redis.call('SETBIT', KEYS[1], ARGV[1], 1) == 1 then
  return 0
end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return 1
";

/// A connection to `url` that has answered PING.
async fn redis_ready(url: &str) -> Result<MultiplexedConnection, String> {
    let down = |err: String| format!("Redis is down at {url}: {err} — start it with `dev/stack up`");
    let client = redis::Client::open(url).map_err(|e| down(e.to_string()))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| down(e.to_string()))?;
    redis::cmd("PING").query_async::<String>(&mut con).await.map_err(|e| down(e.to_string()))?;
    Ok(con)
}

async fn redis() -> MultiplexedConnection {
    redis_ready(&env_or("REDIS_URL", "redis://127.0.0.1:6379/0")).await.unwrap_or_else(|msg| panic!("{msg}"))
}

async fn delete(mut con: MultiplexedConnection, keys: Vec<String>) {
    let _: Result<(), _> = con.del(keys).await;
}

#[tokio::test]
async fn hincrby_round_trips() {
    let con = redis().await;
    let counts = format!("{}:counts", unique("it:"));
    let body = {
        let (mut con, counts) = (con.clone(), counts.clone());
        async move {
            let after: i64 = con.hincr(&counts, "Perú", 2).await.expect("HINCRBY");
            assert_eq!(after, 2);
            let after: i64 = con.hincr(&counts, "Perú", 1).await.expect("HINCRBY");
            assert_eq!(after, 3);
            let stored: Option<i64> = con.hget(&counts, "Perú").await.expect("HGET");
            assert_eq!(stored, Some(3));
            let other: Option<i64> = con.hget(&counts, "Chile").await.expect("HGET");
            assert_eq!(other, None);
        }
    };
    with_cleanup(body, delete(con, vec![counts])).await;
}

#[tokio::test]
async fn the_dedup_script_counts_an_offset_once() {
    let con = redis().await;
    let prefix = unique("it:");
    let (seen, counts) = (format!("{prefix}:seen:0"), format!("{prefix}:counts"));
    let body = {
        let (con, seen, counts) = (con.clone(), seen.clone(), counts.clone());
        async move {
            let script = Script::new(DEDUP_COUNT);
            let run = |offset: u64| {
                let mut invocation = script.key(&seen);
                invocation.key(&counts).arg(offset).arg("Perú");
                let mut con = con.clone();
                async move { invocation.invoke_async::<i64>(&mut con).await.expect("run the script") }
            };
            let count = || {
                let mut con = con.clone();
                let counts = counts.clone();
                async move { con.hget::<_, _, i64>(&counts, "Perú").await.expect("HGET") }
            };
            assert_eq!(run(41).await, 1, "a new offset is counted");
            assert_eq!(run(41).await, 0, "a redelivered offset is not");
            assert_eq!(count().await, 1);
            assert_eq!(run(42).await, 1, "the next offset is counted");
            assert_eq!(count().await, 2);
        }
    };
    with_cleanup(body, delete(con, vec![seen, counts])).await;
}

#[tokio::test]
async fn a_down_redis_is_reported_by_name() {
    let url = format!("redis://127.0.0.1:{}/0", closed_port());
    let Err(err) = redis_ready(&url).await else {
        panic!("nothing listens on a released port, yet it answered")
    };
    assert!(err.starts_with(&format!("Redis is down at {url}: ")), "{err}");
}
