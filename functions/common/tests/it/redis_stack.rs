//! Redis: a counter round trip under a random key prefix (counter's own script is tested in
//! functions/counter/tests), and a down Redis named in the error.

use crate::{closed_port, env_or, unique, with_cleanup};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig};
use std::time::Duration;

/// Bound on connecting and on every reply.
const TIMEOUT: Duration = Duration::from_secs(3);

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
async fn a_down_redis_is_reported_by_name() {
    let url = format!("redis://127.0.0.1:{}/0", closed_port());
    let Err(err) = redis_ready(&url).await else {
        panic!("nothing listens on a released port, yet it answered")
    };
    assert!(err.starts_with(&format!("Redis is down at {url}: ")), "{err}");
}
