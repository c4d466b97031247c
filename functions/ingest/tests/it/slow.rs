//! Slow clients against a served ingest (`ingest::run` on a loopback port, behind nothing): a
//! body sent a byte at a time is answered 408 and closed within `BODY_READ_TIMEOUT_MS`, a head
//! sent slowly or not at all is closed within `HEADER_READ_TIMEOUT_MS`, and meanwhile probes and
//! real tweets keep their latency. Every loop is bounded in count and time.

use crate::kafka::{self, RunningProducer, Topic};
use crate::{config, traced};
use ingest::Config;
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How long any one slow client keeps going, whatever the server does.
const GIVE_UP: Duration = Duration::from_secs(20);

async fn serve(config: Config) -> SocketAddr {
    traced();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(ingest::run(config, listener, std::future::pending()));
    address
}

/// How a slow client's connection ended: after how long (from its first byte) and with what
/// answer (the status line, if the server sent one).
struct Ended {
    after: Duration,
    answer: Option<String>,
}

/// Connects, one connection at a time: thousands of connections opened at once overflow the
/// listen queue, and a silent client whose handshake the kernel dropped would wait for a SYN-ACK
/// retransmission (seconds) before the server even sees it.
async fn connect(address: SocketAddr) -> TcpStream {
    TcpStream::connect(address).await.expect("connecting")
}

/// Writes `head` on `stream`, then one byte of `trickle` every `every` (a slow body, or a slow
/// head when `head` is empty) until the server answers or closes, or [`GIVE_UP`].
async fn slow_client(
    mut stream: TcpStream,
    head: &'static [u8],
    trickle: &'static [u8],
    every: Duration,
    sent: Arc<AtomicUsize>,
) -> Ended {
    let started = Instant::now();
    let ended = |answer: Option<String>| Ended { after: started.elapsed(), answer };
    if stream.write_all(head).await.is_err() {
        return ended(None);
    }
    sent.fetch_add(1, Ordering::Relaxed);
    let mut buffer = [0u8; 512];
    let mut next = 0;
    loop {
        tokio::select! {
            read = stream.read(&mut buffer) => {
                let answer = match read {
                    Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buffer[..n]).lines().next().unwrap_or_default().to_owned()),
                    _ => None,
                };
                return ended(answer);
            }
            () = tokio::time::sleep(every) => {
                if started.elapsed() > GIVE_UP {
                    return ended(Some("still open".into()));
                }
                let byte = &trickle[next % trickle.len()..][..1];
                next += 1;
                if stream.write_all(byte).await.is_err() {
                    return ended(None);
                }
            }
        }
    }
}

/// Latencies of `n` readiness probes and `tweets` real tweets, one at a time.
async fn probe_and_tweet(
    http: &reqwest::Client,
    address: SocketAddr,
    n: usize,
    tweets: usize,
) -> (Duration, Duration) {
    let mut probe_max = Duration::ZERO;
    for _ in 0..n {
        let started = Instant::now();
        let response = http.get(format!("http://{address}/health/readiness")).send().await.expect("a probe");
        assert_eq!(response.status(), 200);
        probe_max = probe_max.max(started.elapsed());
    }
    let mut tweet_max = Duration::ZERO;
    for i in 0..tweets {
        let started = Instant::now();
        let response = http
            .post(format!("http://{address}/input"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"texto":"Sol {i}","pais":"Chile"}}"#))
            .send()
            .await
            .expect("a tweet");
        assert_eq!(response.status(), 202, "{:?}", response.text().await);
        tweet_max = tweet_max.max(started.elapsed());
    }
    (probe_max, tweet_max)
}

const SLOW_BODY_HEAD: &[u8] =
    b"POST /input HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\nContent-Length: 16000\r\n\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_slow_bodies_get_408_within_the_timeout_while_probes_and_tweets_keep_their_latency() {
    let topic = Topic::create().await;
    let producer = RunningProducer::start(&kafka::brokers(), &topic.name, 8_000).await;
    let timeout = Duration::from_secs(3);
    let address = serve(Config {
        body_read_timeout_ms: timeout.as_millis() as u64,
        header_read_timeout_ms: timeout.as_millis() as u64,
        ..config(&producer.url)
    })
    .await;
    let http = reqwest::Client::new();
    let (probe_before, tweet_before) = probe_and_tweet(&http, address, 20, 5).await;

    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(2_000);
    for _ in 0..2_000 {
        let stream = connect(address).await;
        clients.push(tokio::spawn(slow_client(
            stream,
            SLOW_BODY_HEAD,
            b"{",
            Duration::from_secs(1),
            sent.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent.load(Ordering::Relaxed) < 2_000 {
        assert!(Instant::now() < deadline, "only {} slow heads sent in 10 s", sent.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (probe_during, tweet_during) = probe_and_tweet(&http, address, 20, 5).await;
    eprintln!(
        "probe max {probe_before:?} before, {probe_during:?} with 2,000 slow bodies; tweet max {tweet_before:?} before, {tweet_during:?} during"
    );
    assert!(probe_during < Duration::from_millis(500), "a probe took {probe_during:?}");
    assert!(tweet_during < Duration::from_secs(1), "a tweet took {tweet_during:?}");

    let mut latest = Duration::ZERO;
    for client in clients {
        let ended = client.await.unwrap();
        assert_eq!(ended.answer.as_deref(), Some("HTTP/1.1 408 Request Timeout"));
        assert!(ended.after >= timeout, "answered after {:?}", ended.after);
        latest = latest.max(ended.after);
    }
    eprintln!("the last of 2,000 slow bodies was answered 408 after {latest:?} (timeout {timeout:?})");
    assert!(latest < timeout + Duration::from_secs(3), "the last slow body was held {latest:?}");
    producer.stop().await;
    topic.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_slow_heads_are_closed_within_the_header_timeout() {
    let timeout = Duration::from_secs(2);
    let address = serve(Config {
        header_read_timeout_ms: timeout.as_millis() as u64,
        ..config(&crate::closed_port_url())
    })
    .await;
    let sent = Arc::new(AtomicUsize::new(0));
    let head = b"POST /input HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n";
    let mut clients = Vec::with_capacity(400);
    for i in 0..400 {
        // Nothing at all; the start of HTTP/2's preface, then nothing (the protocol is not known
        // yet); a head a byte every half second; a request line, then its headers a byte every
        // half second.
        let (head, trickle, every): (&'static [u8], &'static [u8], _) = match i % 4 {
            0 => (b"", b"\0", GIVE_UP),
            1 => (b"PRI * HTTP/2.0\r\n", b"\r", GIVE_UP),
            2 => (b"", head, Duration::from_millis(500)),
            _ => (b"POST /input HTTP/1.1\r\n", b"X-Slow: 1\r\n", Duration::from_millis(500)),
        };
        let stream = connect(address).await;
        clients.push(tokio::spawn(slow_client(stream, head, trickle, every, sent.clone())));
    }
    let http = reqwest::Client::new();
    let (probe_during, _) = probe_and_tweet(&http, address, 20, 0).await;
    assert!(probe_during < Duration::from_millis(500), "a probe took {probe_during:?}");
    for (i, client) in clients.into_iter().enumerate() {
        let ended = client.await.unwrap();
        assert!(ended.after < timeout + Duration::from_secs(2), "client {i} held {:?}", ended.after);
        // Closed without an answer: there is no request to answer.
        assert_eq!(ended.answer, None, "client {i}");
    }
}
