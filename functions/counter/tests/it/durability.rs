//! Against a Redis of the test's own (`redis-server` on a free loopback port, no persistence,
//! killed at the end), since they change its configuration or measure its memory: counter
//! refuses a Redis that may evict its keys, and forged positions leave Redis as it was.

use crate::{app, config, positions::topic_with_records, record_of};
use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use serde_json::json;
use std::time::Duration;
use testkit::{
    event::{send, tweet as tweet_event},
    free_ports, with_cleanup,
};
use tokio::process::{Child, Command};

/// A `redis-server` of our own; killed when dropped.
struct OwnRedis {
    url: String,
    server: Child,
    connection: redis::aio::MultiplexedConnection,
}

impl OwnRedis {
    /// Starts one with `args`, and waits (at most 10 s) until it answers.
    async fn start(args: &[&str]) -> OwnRedis {
        let port = free_ports(1);
        let server = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
            .args(args)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("redis-server is needed (Debian's redis-server package): {e}"));
        let url = format!("redis://127.0.0.1:{port}/0");
        let client = redis::Client::open(url.as_str()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let connection = loop {
            match client.get_multiplexed_async_connection().await {
                Ok(connection) => break connection,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("redis-server on {port} did not start: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        OwnRedis { url, server, connection }
    }

    async fn command<T: redis::FromRedisValue>(&mut self, cmd: &mut redis::Cmd) -> T {
        cmd.query_async(&mut self.connection).await.unwrap()
    }

    /// `INFO memory`'s `used_memory`, in bytes.
    async fn used_memory(&mut self) -> i64 {
        let info: String = self.command(redis::cmd("INFO").arg("memory")).await;
        info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
    }

    async fn stop(mut self) {
        let _ = self.server.kill().await;
    }
}

fn readiness() -> Request<Body> {
    Request::get("/health/readiness").body(Body::empty()).unwrap()
}

#[tokio::test]
async fn a_redis_that_may_evict_is_refused_until_it_may_not() {
    let mut redis = OwnRedis::start(&["--maxmemory-policy", "allkeys-lru"]).await;
    let app = app(&config(&redis.url, "it:evict:", "messages", 2_000, 600));
    for policy in ["allkeys-lru", "volatile-lru", "volatile-ttl"] {
        let _: () = redis.command(redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg(policy)).await;
        // The policy is looked at once a second at most.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let (status, body) = send(&app, readiness()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{policy}: {body}");
        let why = body["error"].as_str().unwrap();
        assert!(
            why.contains(&format!("maxmemory-policy is {policy}")) && why.contains("noeviction"),
            "{why}"
        );
        let (status, body) = send(&app, tweet_event(&format!("id-{policy}"))).await;
        assert_eq!(
            (status, body),
            (StatusCode::SERVICE_UNAVAILABLE, json!({"error": "redis is unavailable"}))
        );
        let keys: i64 = redis.command(&mut redis::cmd("DBSIZE")).await;
        assert_eq!(keys, 0, "{policy}: counted into a Redis that may evict");
    }

    let _: () =
        redis.command(redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg("noeviction")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while send(&app, readiness()).await.0 != StatusCode::OK {
        assert!(tokio::time::Instant::now() < deadline, "not ready 5 s after noeviction");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(send(&app, tweet_event("id-after")).await, (StatusCode::OK, json!({"duplicate": false})));
    redis.stop().await;
}

#[tokio::test]
async fn forged_positions_leave_redis_memory_flat() {
    // The forgery as reported: each event at an offset in a new 2^20-record block, or naming a
    // new topic in its source; 200 in all, sent at once.
    let (kafka, topic) = topic_with_records().await;
    let mut redis = OwnRedis::start(&[]).await;
    let app = app(&config(&redis.url, "it:forged:", &topic, 2_000, 600));
    let body = async {
        // One genuine record first, so the connection and the script are in place.
        assert_eq!(send(&app, record_of(&topic, 0, 0, "genuine", &[])).await.0, StatusCode::OK);
        let keys_before: i64 = redis.command(&mut redis::cmd("DBSIZE")).await;
        let memory_before = redis.used_memory().await;

        let mut forged = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let request = if i % 2 == 0 {
                record_of(&topic, (i % 3) as u32, (i + 1) << 20, &format!("forged-{i}"), &[])
            } else {
                record_of(&format!("forged-topic-{i}"), 0, 0, &format!("forged-{i}"), &[])
            };
            let app = app.clone();
            forged.spawn(async move { send(&app, request).await });
        }
        let started = std::time::Instant::now();
        while let Some(answer) = forged.join_next().await {
            let (status, body) = answer.unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        }
        let took = started.elapsed();

        let keys_after: i64 = redis.command(&mut redis::cmd("DBSIZE")).await;
        let memory_after = redis.used_memory().await;
        println!(
            "200 forged events (100 in new 2^20 blocks, 100 naming new topics), all 400 in {took:?}: \
             Redis keys {keys_before} → {keys_after}, used_memory {memory_before} → {memory_after} bytes \
             ({:+})",
            memory_after - memory_before
        );
        assert_eq!(keys_after, keys_before);
        // Nothing was written; what moves is the INFO answers' own buffers.
        assert!((memory_after - memory_before).abs() < 64 * 1024, "{memory_before} → {memory_after}");
    };
    with_cleanup(body, async {
        kafka.delete(&[&topic]).await;
    })
    .await;
    redis.stop().await;
}
