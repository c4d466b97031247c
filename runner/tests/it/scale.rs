//! The two modes of the energy experiment: scale-to-zero (the activator starts a function on its
//! first request, holds it until ready, stops the function when idle) and always-on (every
//! function runs the whole time), with their scaling events; and a burst over the autoscaler's
//! target, which scales the loaded function out and, a stable window later, back in.

use crate::{assert_exact, clean, options, post};
use runner::{
    Mode, Options, Ports, Runner,
    events::{EventKind, ScaleEvent},
};
use std::{
    path::Path,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

const IDLE_MS: u64 = 2_000;

fn mode_options(mode: Mode) -> Options {
    let options = options();
    let events = options.log_dir.join("events.jsonl");
    // The idle period is shortened to seconds, so the retry backoff must be too: a delivery
    // retried after the manifests' 10 s would find its sink scaled to zero again.
    Options {
        mode,
        idle_period_ms: Some(IDLE_MS),
        events: Some(events),
        backoff_delay_ms: Some(100),
        ..options
    }
}

/// Function processes of this test's run alive on the machine, found in `/proc` (whatever the
/// runner believes): one of our binaries with this run's topic in its environment.
fn our_processes(options: &Options, ports: &Ports) -> Vec<(u32, String)> {
    let bin_dir = options.bin_dir.clone().unwrap();
    // A process of ours has its function's manifest environment, made local for this run (whose
    // ports and names are the test's own).
    let services = options.stack.services().unwrap();
    let url_of = |name: &str| ports.functions.get(name).map(|address| format!("http://{address}"));
    let expected: Vec<(String, Vec<Vec<u8>>)> = services
        .iter()
        .map(|s| {
            let env = options.stack.local_env(s, url_of).unwrap();
            (s.name.clone(), env.into_iter().map(|(k, v)| format!("{k}={v}").into_bytes()).collect())
        })
        .collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let argv0 =
            String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
        let Some((name, env)) = expected.iter().find(|(n, _)| Path::new(&argv0) == bin_dir.join(n)) else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if env.iter().all(|var| vars.contains(&var.as_slice())) {
            found.push((pid, name.to_owned()));
        }
    }
    found
}

/// The functions of the manifests.
fn names(options: &Options) -> Vec<String> {
    options.stack.services().unwrap().into_iter().map(|s| s.name).collect()
}

fn of(events: &[ScaleEvent], kind: EventKind, function: &str) -> Vec<ScaleEvent> {
    events.iter().filter(|e| e.event == kind && e.function == function).cloned().collect()
}

/// The events file holds exactly what the runner kept in memory.
fn assert_file_matches(options: &Options, events: &[ScaleEvent]) {
    let text = std::fs::read_to_string(options.events.as_ref().unwrap()).unwrap();
    let from_file: Vec<ScaleEvent> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect();
    assert_eq!(from_file, events);
}

#[tokio::test(flavor = "multi_thread")]
async fn scale_to_zero_starts_on_demand_and_stops_when_idle() {
    let options = mode_options(Mode::ScaleToZero);
    let runner = Runner::start(options.clone()).await.expect("runner starts");
    let ports = runner.ports().clone();
    assert_eq!(runner.policy.idle, Some(Duration::from_millis(IDLE_MS)));

    // (a) Nothing runs before the first request.
    assert!(runner.running_functions().is_empty(), "{:?}", runner.running_functions());
    assert!(our_processes(&options, &ports).is_empty(), "{:?}", our_processes(&options, &ports));

    // (b) The first requests are held until ingest (then producer, then the sinks) is ready;
    // the sources' deliveries count in flight meanwhile (the sinks are starting), and no longer
    // once all are delivered.
    let most = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let watch = async {
        while !done.load(Ordering::Relaxed) {
            most.fetch_max(runner.deliveries_in_flight() as usize, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let work = async {
        post(&runner, 0..50).await;
        assert_exact(&runner, 50).await;
        done.store(true, Ordering::Relaxed);
    };
    tokio::join!(watch, work);
    assert!(most.load(Ordering::Relaxed) > 0, "no delivery was ever seen in flight");
    assert_eq!(runner.deliveries_in_flight(), 0);
    let first = runner.events();
    for name in names(&options) {
        let name = name.as_str();
        assert_eq!(of(&first, EventKind::Start, name).len(), 1, "{name} started once: {first:#?}");
        assert!(!of(&first, EventKind::ColdStart, name).is_empty(), "{name}: a request waited for it");
    }

    // (c) Idle for the idle period: every process is stopped, and really gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !runner.running_functions().is_empty() || !our_processes(&options, &ports).is_empty() {
        assert!(
            Instant::now() < deadline,
            "still running 10 s after the burst: {:?}, in /proc {:?}",
            runner.running_functions(),
            our_processes(&options, &ports)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gap = runner.events();
    for name in names(&options) {
        let name = name.as_str();
        let stops = of(&gap, EventKind::Stop, name);
        assert_eq!(stops.len(), 1, "{name} stopped once");
        assert_eq!(stops[0].pid, of(&gap, EventKind::Start, name)[0].pid, "{name}: the process it started");
        // SIGTERM drained it and it exited cleanly.
        let exits = of(&gap, EventKind::Exit, name);
        assert_eq!(exits.len(), 1, "{name} exited once");
        assert_eq!((exits[0].pid, exits[0].code, exits[0].signal), (stops[0].pid, Some(0), None), "{name}");
    }

    // (d) After the gap every function cold-starts again, and nothing is lost.
    post(&runner, 50..100).await;
    assert_exact(&runner, 100).await;
    let all = runner.events();
    let after = &all[gap.len()..];
    for name in names(&options) {
        let name = name.as_str();
        let cold = of(after, EventKind::ColdStart, name);
        assert!(!cold.is_empty(), "{name}: no cold start after the gap: {after:#?}");
        assert!(cold.iter().all(|e| e.latency_ms.is_some_and(|ms| ms > 0.0)), "{name}: {cold:?}");
        let ready = of(after, EventKind::Ready, name);
        assert_eq!(ready.len(), 1, "{name} started once after the gap");
        assert!(ready[0].ready_ms.is_some_and(|ms| ms > 0.0), "{ready:?}");
        // A request waits at least as long as the start it waited for.
        let slowest = cold.iter().filter_map(|e| e.latency_ms).fold(0.0, f64::max);
        assert!(slowest >= ready[0].ready_ms.unwrap(), "{name}: {cold:?} vs {ready:?}");
    }
    assert_file_matches(&options, &all);

    clean(&runner.options).await;
    runner.stop().await;
    assert!(our_processes(&options, &ports).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn always_on_keeps_every_function_running_and_has_no_cold_start() {
    let options = mode_options(Mode::AlwaysOn);
    let runner = Runner::start(options.clone()).await.expect("runner starts");
    let ports = runner.ports().clone();
    assert_eq!(runner.policy.idle, None, "always-on ignores the idle period");
    assert_eq!(runner.running_functions().len(), 4);
    let pids: Vec<u32> =
        runner.events().iter().filter(|e| e.event == EventKind::Start).filter_map(|e| e.pid).collect();
    assert_eq!(pids.len(), 4);

    // Watch the processes while tweets flow and for twice the idle period after.
    let done = AtomicBool::new(false);
    let fewest = AtomicUsize::new(usize::MAX);
    let watch = async {
        while !done.load(Ordering::Relaxed) {
            fewest.fetch_min(runner.running_functions().len(), Ordering::Relaxed);
            fewest.fetch_min(our_processes(&options, &ports).len(), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let work = async {
        post(&runner, 0..50).await;
        assert_exact(&runner, 50).await;
        tokio::time::sleep(Duration::from_millis(2 * IDLE_MS)).await;
        done.store(true, Ordering::Relaxed);
    };
    tokio::join!(watch, work);
    assert_eq!(fewest.load(Ordering::Relaxed), 4, "a function was not running at some point");

    let events = runner.events();
    assert!(events.iter().all(|e| e.event != EventKind::ColdStart), "{events:#?}");
    assert!(events.iter().all(|e| e.event != EventKind::Stop), "nothing stopped while running: {events:#?}");
    for name in names(&options) {
        let name = name.as_str();
        assert!(of(&events, EventKind::Ready, name)[0].ready_ms.is_some_and(|ms| ms > 0.0));
    }
    clean(&runner.options).await;
    runner.stop().await;
    let events = std::fs::read_to_string(options.events.as_ref().unwrap()).unwrap();
    let stops: Vec<ScaleEvent> = events
        .lines()
        .map(|l| serde_json::from_str::<ScaleEvent>(l).unwrap())
        .filter(|e| e.event == EventKind::Stop)
        .collect();
    let mut stopped: Vec<u32> = stops.iter().filter_map(|e| e.pid).collect();
    let mut started: Vec<u32> = events
        .lines()
        .map(|l| serde_json::from_str::<ScaleEvent>(l).unwrap())
        .filter(|e| e.event == EventKind::Start)
        .filter_map(|e| e.pid)
        .collect();
    assert!(pids.iter().all(|p| started.contains(p)));
    stopped.sort();
    started.sort();
    assert_eq!(stopped, started, "every process started was stopped at the end");
    assert!(stops.iter().all(|e| e.replicas.is_some()), "{stops:?}");
    assert!(our_processes(&options, &ports).is_empty());
}

/// An overlay folder of the test's own: always-on, min-scale 1, max-scale 4, a target of 2
/// requests in flight and Knative's shortest stable window (6 s).
fn small_target_overlays(options: &Options) -> std::path::PathBuf {
    let dir = options.log_dir.join("overlays");
    std::fs::create_dir_all(dir.join("always-on")).unwrap();
    let patch = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: every-service\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/target: \"2\"\n        autoscaling.knative.dev/min-scale: \"1\"\n        autoscaling.knative.dev/max-scale: \"4\"\n        autoscaling.knative.dev/window: 6s\n";
    let kustomization = serde_json::json!({
        "resources": ["../../base"],
        "patches": [{"target": {"kind": "Service"}, "patch": patch}],
    });
    std::fs::write(dir.join("always-on/kustomization.yaml"), kustomization.to_string()).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_over_the_target_scales_out_then_back_to_min_scale_losing_nothing() {
    let options = mode_options(Mode::AlwaysOn);
    let options = Options { overlays: Some(small_target_overlays(&options)), ..options };
    let runner = Runner::start(options.clone()).await.expect("runner starts");
    let ports = runner.ports().clone();
    let ingest = runner.scaling("ingest").unwrap();
    assert_eq!((ingest.target, ingest.max_scale, ingest.stable_window), (2.0, 4, Duration::from_secs(6)));
    assert_eq!(runner.replicas("ingest"), 1);

    // 16 tweets in flight for 8 s: ingest's panic window sees ~16 requests where one replica
    // aims for 1.4 (2 × 70 %), so the autoscaler wants max-scale.
    let most = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let watch = async {
        while !done.load(Ordering::Relaxed) {
            most.fetch_max(runner.replicas("ingest") as usize, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let load = async {
        let until = Instant::now() + Duration::from_secs(8);
        while Instant::now() < until {
            let from = sent.fetch_add(160, Ordering::Relaxed);
            post(&runner, from..from + 160).await;
        }
        done.store(true, Ordering::Relaxed);
    };
    tokio::join!(watch, load);
    let n = sent.load(Ordering::Relaxed);
    assert!(most.load(Ordering::Relaxed) >= 2, "ingest never had 2 replicas: {:#?}", runner.events());

    // A trickle, one tweet at a time, while the stable window passes: replicas drain and stop
    // under it, every tweet still accepted (post asserts 202), and ingest is back at one.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut i = n;
    while runner.replicas("ingest") > 1 {
        assert!(Instant::now() < deadline, "ingest still at {} replicas", runner.replicas("ingest"));
        post(&runner, i..i + 1).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_exact(&runner, i).await;

    let events = runner.events();
    let ingest = |kind| of(&events, kind, "ingest");
    assert!(ingest(EventKind::Start).len() >= 2, "{events:#?}");
    assert!(!ingest(EventKind::Stop).is_empty(), "no replica stopped: {events:#?}");
    let scale = ingest(EventKind::Scale);
    assert!(scale.iter().any(|e| e.desired >= Some(2)), "{scale:#?}");
    assert!(scale.iter().any(|e| e.desired == Some(1)), "never wanted 1 again: {scale:#?}");
    // Every event carries the replica count, and the counts follow the starts and stops.
    let mut alive = 0;
    let counted = [EventKind::Start, EventKind::Ready, EventKind::Stop, EventKind::Scale];
    for e in events.iter().filter(|e| e.function == "ingest" && counted.contains(&e.event)) {
        match e.event {
            EventKind::Start => alive += 1,
            EventKind::Stop => alive -= 1,
            _ => {}
        }
        assert_eq!(e.replicas, Some(alive), "{e:?}");
    }
    assert!(events.iter().all(|e| e.event != EventKind::ColdStart), "always-on had a cold start");
    clean(&runner.options).await;
    runner.stop().await;
    assert!(our_processes(&options, &ports).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_binary_is_an_error_before_anything_binds() {
    let options = Options { base_port: testkit::free_ports(5), ..mode_options(Mode::ScaleToZero) };
    let empty = options.log_dir.join("no-binaries");
    std::fs::create_dir_all(&empty).unwrap();
    let err =
        Runner::start(Options { bin_dir: Some(empty), ..options.clone() }).await.err().expect("refused");
    assert!(format!("{err:#}").contains("no binary"), "{err:#}");
    // Nothing was left listening on the functions' ports.
    assert!(std::net::TcpListener::bind(("127.0.0.1", options.base_port)).is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_function_that_cannot_start_gets_503_at_once_and_is_retried_with_a_backoff() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let options = mode_options(Mode::ScaleToZero);
    // The real binaries, but an ingest that exits at once, as a broken build or config would.
    let bin = options.log_dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in names(&options) {
        let path = bin.join(&name);
        if name == "ingest" {
            std::fs::write(&path, "#!/bin/sh\necho 'no config' >&2\nexit 3\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            symlink(options.bin_dir.as_ref().unwrap().join(&name), &path).unwrap();
        }
    }
    let runner =
        Runner::start(Options { bin_dir: Some(bin), ..options.clone() }).await.expect("runner starts");
    let ports = runner.ports().clone();
    let url = format!("{}/input", runner.functions.url("ingest").unwrap());
    let client = reqwest::Client::new();
    let send =
        || client.post(&url).header("content-type", "application/json").body(testkit::tweet(0).to_string());
    let started = Instant::now();
    let first = send().send().await.unwrap();
    assert_eq!(first.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5), "waited {:?}", started.elapsed());
    // Within the backoff a request is answered at once, and no new process is started.
    let again = Instant::now();
    assert_eq!(send().send().await.unwrap().status(), 503);
    assert!(again.elapsed() < Duration::from_millis(500), "{:?}", again.elapsed());
    let starts = of(&runner.events(), EventKind::Start, "ingest").len();
    assert_eq!(starts, 1, "{:#?}", runner.events());
    runner.stop().await;
    assert!(our_processes(&options, &ports).is_empty());
}
