//! `tools dashboard` (`make dashboard`; `make demo` starts one): a page on loopback with the
//! run's live panels — the counts of `grafana/dashboards/tweets.json` with a world map, the
//! pipeline of `pipeline.json`, energy per component from the latest energy report — and one
//! trace per tweet at `/trace/<id>`, read from the stack's Jaeger.
//!
//! The page (`tools/dashboard/`: `index.html`, `app.js`, `trace.html`, `trace.js`) draws with
//! ECharts, topojson-client and world-atlas, installed by `npm ci` (`dev/stack install`) into
//! `tools/dashboard/node_modules` and served from there. Its panels are listed in
//! `panels.json`, with the Grafana panel each mirrors. The server reads the pipeline through
//! [`Live`], the demo's live line's reader, only while a page asks (at most once a second), so
//! an idle dashboard adds no load to a run.

mod energy;
mod traces;

use crate::{
    live::{Live, Reading, Runner},
    state::State,
};
use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Path, Query, State as Shared},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use counter::Counted;
use runner::Stack;
use serde::{Deserialize, Serialize};
use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{net::TcpListener, sync::Mutex};

/// Where the dashboard listens; `make demo` starts one there unless one already answers.
#[derive(Debug, Clone, clap::Args)]
pub struct DashboardAddr {
    /// The dashboard's address (loopback).
    #[arg(long = "dashboard-addr", env = "DASHBOARD_ADDR", default_value = "127.0.0.1:8070")]
    pub addr: SocketAddr,
}

impl DashboardAddr {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub addr: DashboardAddr,
    /// Port of the run's first function: the runner's own /metrics is on the port after its
    /// functions', as `tools demo` starts it.
    #[arg(long, env = "RUNNER_BASE_PORT", default_value_t = 8080)]
    pub base_port: u16,
    /// The stack's Jaeger (its query API).
    #[arg(long, env = "JAEGER_URL", default_value = "http://127.0.0.1:16686")]
    pub jaeger_url: String,
    /// The page's files, and the libraries `npm ci` installed under them.
    #[arg(long, env = "DASHBOARD_ASSETS", default_value = "tools/dashboard")]
    pub assets: PathBuf,
    /// Folders holding energy reports (`report.json`, in them or one level down); the panel
    /// shows the newest.
    #[arg(long, value_delimiter = ',', default_value = "target/energy,loadtest/results")]
    pub energy_reports: Vec<PathBuf>,
}

/// The page's files: URL path, file under the assets folder, content type. Nothing else of
/// the folder is served.
const FILES: &[(&str, &str, &str)] = &[
    ("/", "index.html", HTML),
    ("/app.js", "app.js", JS),
    ("/trace.js", "trace.js", JS),
    ("/style.css", "style.css", "text/css; charset=utf-8"),
    ("/panels.json", "panels.json", JSON),
    ("/vendor/echarts.min.js", "node_modules/echarts/dist/echarts.min.js", JS),
    ("/vendor/topojson-client.min.js", "node_modules/topojson-client/dist/topojson-client.min.js", JS),
    ("/vendor/countries-10m.json", "node_modules/world-atlas/countries-10m.json", JSON),
];
const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const JSON: &str = "application/json";

/// Points of the live series kept for a page that opens late: 15 minutes at one a second.
const HISTORY: usize = 900;
/// A reading younger than this is served again instead of reading the pipeline anew.
const FRESH: Duration = Duration::from_millis(900);

/// What `GET /health` answers: which run the dashboard shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub run_id: Option<String>,
    pub base_port: u16,
}

struct Dashboard {
    identity: Identity,
    assets: PathBuf,
    energy_reports: Vec<PathBuf>,
    jaeger: traces::Jaeger,
    sampler: Mutex<Sampler>,
}

/// The live series: the latest reading and the points before it.
struct Sampler {
    live: Live,
    latest: Option<(Instant, Reading)>,
    points: VecDeque<Point>,
    next_seq: u64,
}

/// One point of the live series (the counts by country and condition only in the latest).
#[derive(Debug, Clone, Serialize)]
struct Point {
    seq: u64,
    t_ms: i64,
    counted: i64,
    archived: u64,
    in_kafka: i64,
    dead_lettered: i64,
    lag: i64,
    runner: Option<Runner>,
}

/// `GET /api/live?since=<seq>`: the latest counts and the points after `since`.
#[derive(Debug, Serialize)]
struct LiveAnswer<'a> {
    run_id: &'a Option<String>,
    functions: &'a [String],
    counted: &'a Counted,
    points: Vec<&'a Point>,
}

#[derive(Debug, Deserialize)]
struct Since {
    since: Option<u64>,
}

/// Serves the dashboard of `stack`'s run until Ctrl-C or SIGTERM (`tools dashboard`).
pub async fn run(stack: &Stack, args: DashboardArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.addr.addr).await.with_context(|| {
        format!("cannot listen on {} (is a dashboard already running there?)", args.addr.addr)
    })?;
    let app = router(stack, &args)?;
    println!("Dashboard of run {}: {}", stack.run_id.as_deref().unwrap_or("default"), args.addr.url());
    common::server::serve(listener, app, common::server::shutdown_signal()).await?;
    Ok(())
}

/// The dashboard's routes; an error when the page's libraries are not installed.
pub fn router(stack: &Stack, args: &DashboardArgs) -> anyhow::Result<Router> {
    for (_, file, _) in FILES {
        let path = args.assets.join(file);
        anyhow::ensure!(
            path.is_file(),
            "the dashboard's {} is missing: run `dev/stack install` (it runs `npm ci` in {})",
            path.display(),
            args.assets.display()
        );
    }
    let state = State::new(stack)?;
    let metrics_url = format!("http://127.0.0.1:{}/metrics", args.base_port + stack.services()?.len() as u16);
    let dashboard = Arc::new(Dashboard {
        identity: Identity { run_id: stack.run_id.clone(), base_port: args.base_port },
        assets: args.assets.clone(),
        energy_reports: args.energy_reports.clone(),
        jaeger: traces::Jaeger::new(&args.jaeger_url, &state.topic),
        sampler: Mutex::new(Sampler {
            live: Live::new(state, metrics_url)?,
            latest: None,
            points: VecDeque::new(),
            next_seq: 1,
        }),
    });
    let files = FILES.iter().fold(Router::new(), |router, &(path, file, kind)| {
        router.route(path, get(move |Shared(d): Shared<Arc<Dashboard>>| serve_file(d, file, kind)))
    });
    Ok(files
        .route("/trace/{id}", get(|Shared(d): Shared<Arc<Dashboard>>| serve_file(d, "trace.html", HTML)))
        .route("/health", get(|Shared(d): Shared<Arc<Dashboard>>| async move { Json(d.identity.clone()) }))
        .route("/api/live", get(live))
        .route("/api/countries", get(countries))
        .route("/api/energy", get(energy))
        .route("/api/traces", get(recent_traces))
        .route("/api/trace/{id}", get(trace))
        .with_state(dashboard))
}

async fn serve_file(dashboard: Arc<Dashboard>, file: &'static str, kind: &'static str) -> Response {
    match tokio::fs::read(dashboard.assets.join(file)).await {
        Ok(bytes) => {
            ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "no-cache")], bytes).into_response()
        }
        Err(e) => failure(StatusCode::NOT_FOUND, format!("{file}: {e}")),
    }
}

/// A JSON error the page shows as it is.
fn failure(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn live(Shared(dashboard): Shared<Arc<Dashboard>>, Query(since): Query<Since>) -> Response {
    let mut sampler = dashboard.sampler.lock().await;
    if sampler.latest.as_ref().is_none_or(|(at, _)| at.elapsed() >= FRESH) {
        match sampler.live.read().await {
            Ok(reading) => sampler.push(reading),
            Err(e) => return failure(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")),
        }
    }
    let Some((_, latest)) = &sampler.latest else { unreachable!("a reading was just pushed") };
    let since = since.since.unwrap_or(0);
    Json(LiveAnswer {
        run_id: &dashboard.identity.run_id,
        functions: &sampler.live.functions,
        counted: &latest.snapshot.counted,
        points: sampler.points.iter().filter(|p| p.seq > since).collect(),
    })
    .into_response()
}

impl Sampler {
    fn push(&mut self, reading: Reading) {
        let s = &reading.snapshot;
        if self.points.len() == HISTORY {
            self.points.pop_front();
        }
        self.points.push_back(Point {
            seq: self.next_seq,
            t_ms: reading.t_ms,
            counted: s.counted.total,
            archived: s.archived,
            in_kafka: s.in_kafka,
            dead_lettered: s.dead_lettered,
            lag: s.lag,
            runner: reading.runner.clone(),
        });
        self.next_seq += 1;
        self.latest = Some((Instant::now(), reading));
    }
}

/// The 249 countries with the codes the map needs (`common::country`).
async fn countries() -> Response {
    #[derive(Serialize)]
    struct Row {
        alpha2: &'static str,
        numeric: &'static str,
        es: &'static str,
        en: &'static str,
    }
    let rows: Vec<Row> = common::country::all()
        .iter()
        .map(|c| Row { alpha2: c.alpha2, numeric: c.numeric, es: c.es, en: c.en })
        .collect();
    Json(rows).into_response()
}

async fn energy(Shared(dashboard): Shared<Arc<Dashboard>>) -> Response {
    match energy::latest(&dashboard.energy_reports) {
        Ok(Some(report)) => Json(report).into_response(),
        Ok(None) => failure(
            StatusCode::NOT_FOUND,
            "no energy report yet: `make energy` writes target/energy/report.json".into(),
        ),
        Err(e) => failure(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

async fn recent_traces(Shared(dashboard): Shared<Arc<Dashboard>>) -> Response {
    match dashboard.jaeger.recent().await {
        Ok(traces) => Json(traces).into_response(),
        Err(e) => failure(StatusCode::BAD_GATEWAY, format!("{e:#}")),
    }
}

async fn trace(Shared(dashboard): Shared<Arc<Dashboard>>, Path(id): Path<String>) -> Response {
    if !traces::is_trace_id(&id) {
        return failure(StatusCode::BAD_REQUEST, "a trace id is 1 to 32 hexadecimal digits".into());
    }
    match dashboard.jaeger.trace(&id).await {
        Ok(Some(json)) => ([(header::CONTENT_TYPE, JSON)], json).into_response(),
        Ok(None) => failure(
            StatusCode::NOT_FOUND,
            format!("Jaeger has no trace {id} (it keeps traces in memory, since its last start)"),
        ),
        Err(e) => failure(StatusCode::BAD_GATEWAY, format!("{e:#}")),
    }
}

/// The demo's dashboard: the one that already answers at `addr` for this run, else
/// `tools dashboard` started in the background, which stays up after the demo so that the
/// summary's trace link opens (its log in `log`). Its URL, or `None` after saying why not.
pub async fn start_for_demo(
    addr: &DashboardAddr,
    stack: &Stack,
    base_port: u16,
    jaeger_url: &str,
    log: &std::path::Path,
) -> Option<String> {
    let url = addr.url();
    let wanted = Identity { run_id: stack.run_id.clone(), base_port };
    let client = reqwest::Client::new();
    let identity = || async {
        let answer = client.get(format!("{url}/health")).timeout(Duration::from_secs(1)).send().await.ok()?;
        answer.json::<Identity>().await.ok()
    };
    match identity().await {
        Some(found) if found == wanted => {
            println!("Dashboard: {url} (already running)");
            return Some(url);
        }
        Some(found) => {
            println!(
                "(no dashboard: the one at {url} shows run {:?} on port {}; stop it or set DASHBOARD_ADDR)",
                found.run_id, found.base_port
            );
            return None;
        }
        None => {}
    }
    let started = spawn(addr, stack, base_port, jaeger_url, log);
    let pid = match started {
        Ok(pid) => pid,
        Err(e) => {
            println!("(no dashboard: {e:#})");
            return None;
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if identity().await.is_some() {
            println!("Dashboard: {url} (it stays up after the demo; stop it with `kill {pid}`)");
            return Some(url);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("(no dashboard: it did not answer at {url} within 10 s; see {})", log.display());
    None
}

fn spawn(
    addr: &DashboardAddr,
    stack: &Stack,
    base_port: u16,
    jaeger_url: &str,
    log: &std::path::Path,
) -> anyhow::Result<u32> {
    if let Some(folder) = log.parent() {
        std::fs::create_dir_all(folder)?;
    }
    let log = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .arg("dashboard")
        .env("RUNNER_MANIFESTS", &stack.manifests)
        .env("KAFKA_BROKERS", &stack.kafka_brokers)
        .env("REDIS_URL", stack.redis_url.expose_secret())
        .env("MONGODB_URI", stack.mongodb_uri.expose_secret())
        .env("RUNNER_BASE_PORT", base_port.to_string())
        .env("JAEGER_URL", jaeger_url)
        .env("DASHBOARD_ADDR", addr.addr.to_string())
        .env_remove("RUNNER_RUN_ID");
    if let Some(id) = &stack.run_id {
        command.env("RUNNER_RUN_ID", id);
    }
    let child = command
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting `tools dashboard`")?;
    Ok(child.id())
}

#[cfg(test)]
mod tests;
