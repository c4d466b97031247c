//! What the integration tests share, so no crate keeps a copy (a dev-dependency only): the
//! local stack's addresses ([`kafka_brokers`], [`redis_url`], [`mongodb_uri`]), fresh names
//! ([`unique`]), ports ([`closed_port`], [`free_ports`]), the tweets a run posts ([`tweet`]),
//! CloudEvent requests for the sinks ([`event`]), one cleanup policy ([`with_cleanup`]) and the
//! check that `--help` keeps secrets ([`assert_help_hides`]). The tools' demo, bench and fault
//! suite post the same [`tweet`]s, so they depend on it too.
//!
//! The cleanup policy: a test removes what it created (its keys, database, topic) whether it
//! passes or fails, through [`with_cleanup`]; names are unique per test, so a test killed
//! half-way leaves only garbage nobody reads, never a clash.

use futures::FutureExt;
use std::{future::Future, net::TcpListener, panic::AssertUnwindSafe};

/// An address from the environment, or the loopback default the local stack listens on.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned())
}

pub fn kafka_brokers() -> String {
    env_or("KAFKA_BROKERS", "127.0.0.1:9092")
}

pub fn redis_url() -> String {
    env_or("REDIS_URL", "redis://127.0.0.1:6379/0")
}

pub fn mongodb_uri() -> String {
    env_or("MONGODB_URI", "mongodb://127.0.0.1:27017")
}

/// A name no other test uses: `prefix` and a fresh UUIDv7 (letters and digits only, so it suits
/// a topic, a key prefix and a database alike).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// A loopback port nothing listens on: bound by us, then released.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("a bound listener has an address").port()
}

/// The first of `n` consecutive loopback ports free now, below the kernel's ephemeral range:
/// a test that stops a server and starts it again on the same port must not find it taken by
/// an outgoing connection or a port-0 listener (a replica's) in the meantime.
pub fn free_ports(n: u16) -> u16 {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000, ephemeral.saturating_sub(n));
    assert!(high > low, "the ephemeral port range starts at {ephemeral}; no room below it for test ports");
    for _ in 0..100 {
        let base = low + (uuid::Uuid::new_v4().as_u128() % u128::from(high - low)) as u16;
        if (0..n).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1 between {low} and {ephemeral}");
}

/// The countries [`tweet`] rotates through (canonical names: each is counted as written).
pub const COUNTRIES: [&str; 8] =
    ["Guatemala", "México", "El Salvador", "Honduras", "Perú", "Chile", "Colombia", "España"];
/// The conditions [`tweet`] rotates through (every one but `desconocido`, which only the
/// classifier gives); 7 and 8 are coprime, so 56 tweets cover every pair.
pub const CLIMAS: [&str; 7] = ["tormenta", "nevado", "lluvioso", "niebla", "ventoso", "nublado", "soleado"];

/// The `i`-th tweet of a run, as a client posts it to `POST /input`: countries and conditions
/// in rotation, a text of a typical tweet's length.
pub fn tweet(i: usize) -> serde_json::Value {
    serde_json::json!({
        "texto": format!("Reporte {i}: cielo cambiante con viento moderado durante la tarde"),
        "pais": COUNTRIES[i % COUNTRIES.len()],
        "clima": CLIMAS[i % CLIMAS.len()],
    })
}

/// Runs `body`, then `cleanup` even when `body` panicked, so a failing assertion leaves nothing
/// behind; the panic is then resumed.
pub async fn with_cleanup<T>(body: impl Future<Output = T>, cleanup: impl Future<Output = ()>) -> T {
    let outcome = AssertUnwindSafe(body).catch_unwind().await;
    cleanup.await;
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// CloudEvents as a KafkaSource delivers them to a sink, and the sink's answer.
pub mod event {
    use axum::{
        Router,
        body::Body,
        http::{Request, StatusCode},
    };
    use http_body_util::BodyExt;
    use serde_json::Value;
    use tower::ServiceExt;

    /// The `type` of our tweet events and of records KafkaSource wraps (as `common::event`).
    pub const TWEET_TYPE: &str = "io.github.weathertweets.tweet.v1";
    pub const KAFKA_EVENT_TYPE: &str = "dev.knative.kafka.event";

    /// An event in binary content mode, with extra `ce-*` (or other) headers.
    pub fn binary(id: &str, ty: &str, data: &str, extra: &[(&str, &str)]) -> Request<Body> {
        let mut builder = Request::post("/")
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-type", ty)
            .header("ce-source", "/it/sink")
            .header("content-type", "application/json");
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::from(data.to_owned())).unwrap()
    }

    /// One of our tweet events (a valid tweet) in binary mode.
    pub fn tweet(id: &str) -> Request<Body> {
        let data = r#"{"texto":"Hoy llueve","pais":"Perú","clima":"lluvioso"}"#;
        binary(id, TWEET_TYPE, data, &[("ce-time", "2025-01-02T03:04:05Z")])
    }

    /// What a KafkaSource delivers for record `partition`/`offset` of `messages`: the raw
    /// tweet, wrapped.
    pub fn kafka_record(partition: u32, offset: u64, tweet: &str) -> Request<Body> {
        let id = format!("partition:{partition}/offset:{offset}");
        let (p, o) = (partition.to_string(), offset.to_string());
        binary(
            &id,
            KAFKA_EVENT_TYPE,
            tweet,
            &[
                ("ce-source", "/apis/v1/namespaces/default/kafkasources/counter#messages"),
                ("ce-knativekafkapartition", &p),
                ("ce-knativekafkaoffset", &o),
            ],
        )
    }

    /// An event in structured content mode.
    pub fn structured(event: &Value) -> Request<Body> {
        Request::post("/")
            .header("content-type", "application/cloudevents+json")
            .body(Body::from(event.to_string()))
            .unwrap()
    }

    /// Sends `request` through `app` in-process; the status and the JSON body (`null` if none).
    pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// A password with what naive redaction trips on: `@`, `:` and `/`, unencoded.
pub const SECRET_PASSWORD: &str = "Sx7q@Kk2:Qz9/zTj";

/// Runs `bin [subcommand] --help` with each of `vars` set to a URL holding [`SECRET_PASSWORD`],
/// and asserts that the help lists every one of them (so the check looks at the right lines) and
/// shows no part of the password.
pub fn assert_help_hides(bin: &str, subcommand: Option<&str>, vars: &[&str]) {
    let url = format!("scheme://weather:{SECRET_PASSWORD}@127.0.0.1:1/0");
    let output = std::process::Command::new(bin)
        .args(subcommand)
        .arg("--help")
        .envs(vars.iter().map(|var| (var, &url)))
        .output()
        .unwrap_or_else(|e| panic!("running {bin} --help: {e}"));
    assert!(output.status.success(), "{bin} --help failed: {output:?}");
    let help = String::from_utf8_lossy(&output.stdout);
    for var in vars {
        assert!(help.contains(&format!("[env: {var}")), "{bin} --help does not list {var}:\n{help}");
    }
    assert_no_password(&help);
}

/// Asserts that `shown` (a help text, a `Debug` output, a log) holds no part of
/// [`SECRET_PASSWORD`], not even what lies between its `@`, `:` and `/`.
pub fn assert_no_password(shown: &str) {
    for part in SECRET_PASSWORD.split(['@', ':', '/']) {
        assert!(!shown.contains(part), "{part:?} of the password is shown:\n{shown}");
    }
}
