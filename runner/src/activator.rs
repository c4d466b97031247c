//! Knative's activator and autoscaler on one machine: the runner listens on every function's
//! public port and spreads the requests over the function's ready replicas (each a process on a
//! loopback port of its own), the least busy first and never more than `containerConcurrency`
//! at once to one replica. It proxies HTTP/1.1, and gRPC over h2c for producer, bodies streamed,
//! headers kept. It holds a request while no replica is ready — starting one if none is on its
//! way, as on a cold start.
//!
//! The runner's own requests — the KafkaSources' deliveries — enter a function's activator in
//! process ([`Entrance`]), not through its public port: the same choice of replica, cold start,
//! concurrency (what the autoscaler sees and drains wait for), metrics and answers on failure as a
//! request on the port gets ([`Gate::forward`] serves both), without the loopback HTTP hop to the
//! runner itself, a hyper client and server per delivery (`make profile`, README "Performance").
//!
//! How many replicas run is the [`crate::autoscaler`]'s decision from the concurrency observed
//! here, bounded by min-scale and max-scale; a replica that exits on its own is replaced (as the
//! kubelet and the ReplicaSet would), and one that is no longer wanted first leaves the routing,
//! then drains its requests in flight, then gets SIGTERM. In scale-to-zero every replica goes
//! once no request has been in flight for the idle period.
//!
//! On Knative the idle period is the `scale-to-zero-pod-retention-period` annotation, but the
//! autoscaler only decides to scale to zero after its stable window (60 s by default) without
//! traffic, so a real pod idles at least that long (plus the scale-to-zero grace period). Here
//! the retention period (or `--idle-period-ms`) alone decides, so short experiments can use a
//! few seconds.

use crate::{
    autoscaler::{Decider, TICK},
    events::Events,
    functions::{Functions, Process, READY_TIMEOUT},
    manifests::{Annotations, Scaling, Service},
};
use anyhow::Context;
use bytes::Bytes;
use common::metrics::ServiceLabels;
use http_body_util::{BodyExt, Either, Full, combinators::UnsyncBoxBody};
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::{Body, Frame, Incoming, SizeHint},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::Poll,
    time::Duration,
};
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
    task::{JoinHandle, JoinSet},
    time::Instant,
};

type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;
/// What goes to a replica: a request from a public port, streamed, or one of the runner's own,
/// in one piece.
type Outbound = Either<Incoming, Full<Bytes>>;

/// How often each function's replicas are checked (exits, the idle period, the wanted count).
const RECONCILE: Duration = Duration::from_millis(250);
/// How long a replica that is no longer wanted may take to finish its requests in flight: the
/// Services' `timeoutSeconds`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, at shutdown, requests in flight at the activator may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// The backoff after a failed start, doubling per failure in a row up to the maximum.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How the functions scale: an overlay's annotations over each Service's own and, in
/// scale-to-zero, the idle period.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The overlay's annotations (they win over a Service's).
    pub overlay: Annotations,
    /// Overrides every function's stable window (tests).
    pub stable_window: Option<Duration>,
    /// `None`: always-on (at least one replica, whatever min-scale says).
    pub idle: Option<Duration>,
    /// Caps every function's max-scale and min-scale (`--max-scale`).
    pub max_scale: Option<u32>,
}

impl Policy {
    /// How `service` scales: Knative's defaults, its own annotations, then the overlay's.
    pub fn scaling(&self, service: &Service) -> anyhow::Result<Scaling> {
        let mut scaling = Scaling::from_annotations(&[&service.annotations, &self.overlay])
            .with_context(|| format!("Service {}", service.name))?;
        if let Some(window) = self.stable_window {
            scaling.stable_window = window;
        }
        if let Some(cap) = self.max_scale {
            // 0 is Knative's "no limit".
            scaling.max_scale = if scaling.max_scale == 0 { cap } else { scaling.max_scale.min(cap) };
            scaling.min_scale = scaling.min_scale.min(cap);
        }
        Ok(scaling)
    }
}

/// The activator of every function, running.
pub struct Activator {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    gates: Vec<Arc<Gate>>,
    functions: Arc<Functions>,
}

impl Activator {
    /// Binds every function's public port; no process is started until a request comes or
    /// [`Activator::scale_to_min`].
    pub async fn start(
        functions: Arc<Functions>,
        events: Events,
        policy: Policy,
    ) -> anyhow::Result<Activator> {
        functions.check_binaries()?;
        let (shutdown, stop) = watch::channel(false);
        let mut listeners = Vec::new();
        for function in functions.all() {
            let (name, port) = (&function.service.name, function.port);
            let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
                anyhow::anyhow!("binding {name}'s port 127.0.0.1:{port}: {e} — is another runner using it? (`ss -ltnp 'sport = :{port}'`)")
            })?;
            listeners.push(listener);
        }
        let mut tasks = Vec::new();
        let mut gates = Vec::new();
        for (function, listener) in functions.all().iter().zip(listeners) {
            let gate = Arc::new(Gate::new(
                function.service.name.clone(),
                functions.clone(),
                events.clone(),
                &policy,
            )?);
            tasks.push(tokio::spawn(gate.clone().serve(listener, stop.clone())));
            tasks.push(tokio::spawn(gate.clone().reconcile(stop.clone())));
            gates.push(gate);
        }
        for gate in &gates {
            let s = &gate.scaling;
            tracing::info!(function = %gate.name, target = s.target, min_scale = s.min_scale, max_scale = s.max_scale, stable_window_ms = s.stable_window.as_millis() as u64, "Autoscaling");
        }
        tracing::info!(idle_ms = policy.idle.map(|i| i.as_millis() as u64), "Activator listening");
        Ok(Activator { shutdown, tasks, gates, functions })
    }

    fn gate(&self, name: &str) -> anyhow::Result<&Arc<Gate>> {
        self.gates.iter().find(|g| g.name == name).ok_or_else(|| anyhow::anyhow!("no function {name:?}"))
    }

    /// Starts the floor's replicas of every function (min-scale, at least one in always-on),
    /// each after the functions it calls, and waits until they are ready; only then does the
    /// autoscaler start or stop replicas.
    pub async fn scale_to_min(&self) -> anyhow::Result<()> {
        for name in self.functions.start_order() {
            let gate = self.gate(name)?;
            gate.wait_replicas(gate.floor(), READY_TIMEOUT + Duration::from_secs(5)).await?;
            gate.armed.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// How `name` scales.
    pub fn scaling(&self, name: &str) -> Option<Scaling> {
        self.gate(name).ok().map(|g| g.scaling)
    }

    /// Processes of `name` alive now (starting, ready or draining).
    pub fn replicas(&self, name: &str) -> u32 {
        self.gate(name).map_or(0, |g| g.state().alive)
    }

    /// Ports of `name`'s ready replicas (their own, not the activator's).
    pub fn replica_ports(&self, name: &str) -> Vec<u16> {
        self.gate(name).map_or_else(|_| Vec::new(), |g| g.state().ready.iter().map(|r| r.load.port).collect())
    }

    /// Names of the functions with a process alive now, in start order.
    pub fn running(&self) -> Vec<String> {
        self.functions.start_order().iter().filter(|name| self.replicas(name) > 0).cloned().collect()
    }

    /// `name`'s activator for the runner's own requests (the KafkaSources' deliveries).
    pub fn entrance(&self, name: &str) -> anyhow::Result<Entrance> {
        self.gate(name).map(|gate| Entrance { gate: gate.clone() })
    }

    /// SIGKILL to every ready replica of `name`, for tests of crashes (they are replaced).
    pub fn kill(&self, name: &str) -> anyhow::Result<()> {
        let gate = self.gate(name)?;
        gate.state().ready.iter_mut().for_each(|r| r.process.kill());
        Ok(())
    }

    /// Stops accepting (each function's requests in flight may finish, for a while), then stops
    /// every replica in reverse start order, draining each.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        for name in self.functions.start_order().iter().rev() {
            if let Ok(gate) = self.gate(name) {
                gate.stop_all().await;
            }
        }
    }
}

/// A function's activator entered from inside the runner, without its public port: a request
/// sent here is routed, held for a cold start, counted and measured as one on the port is, and
/// gets the same [`Refusal`] status when no replica answers it.
#[derive(Clone)]
pub struct Entrance {
    gate: Arc<Gate>,
}

impl Entrance {
    /// Sends `request` (its URI's path and its headers are kept; the authority becomes the
    /// replica's) to a ready replica. The request counts in flight until the response's body
    /// is dropped, so read it to its end or drop it.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response<ReplicaBody>, Refusal> {
        self.gate.forward(request.map(Either::Right), Instant::now()).await
    }
}

/// Why no replica answered a request, and the answer the activator gives instead — on a public
/// port as the response, to an [`Entrance`] as this error — so a KafkaSource sees what it saw
/// when it delivered through the port (a 502 or 503 it retries, this text in a dead letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No replica got ready: its start failed, or none was ready within the ready timeout.
    NotStarted,
    /// The request cannot be addressed to a replica.
    Unproxiable,
    /// The replica's connection failed before its answer's headers came (it exited, say).
    Unreachable,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::NotStarted => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Unproxiable => StatusCode::BAD_REQUEST,
            Refusal::Unreachable => StatusCode::BAD_GATEWAY,
        }
    }

    /// The body of the answer.
    pub fn text(self) -> &'static str {
        match self {
            Refusal::NotStarted => "function did not start",
            Refusal::Unproxiable => "cannot proxy this request",
            Refusal::Unreachable => "function unreachable",
        }
    }
}

/// A replica's response body, which keeps its request counted in flight until it is dropped: a
/// streamed answer keeps its replica busy until its last byte.
pub struct ReplicaBody {
    body: Incoming,
    _in_flight: InFlight,
}

impl Body for ReplicaBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One function's activator: its replicas and the requests in flight to it.
struct Gate {
    name: String,
    functions: Arc<Functions>,
    events: Events,
    scaling: Scaling,
    /// In scale-to-zero, how long the last replica may idle.
    idle: Option<Duration>,
    /// 0: no limit.
    container_concurrency: usize,
    decider: Mutex<Decider>,
    /// Whether `reconcile` may start and stop replicas: once the first ones are up, so that in
    /// always-on each function starts after the functions it calls.
    armed: std::sync::atomic::AtomicBool,
    state: Mutex<State>,
    /// Wakes requests waiting for a replica or capacity, and drains waiting for requests to end.
    changed: Notify,
    client: Client<HttpConnector, Outbound>,
    version: Version,
    labels: ServiceLabels,
}

struct State {
    /// Ready replicas, in start order; requests go only to these.
    ready: Vec<Replica>,
    /// Replicas asked for and not yet ready (or failed).
    starting: u32,
    /// Processes alive: starting, ready and draining.
    alive: u32,
    /// Requests at the activator, waiting for a replica or proxied.
    in_flight: usize,
    /// ∫ in_flight dt since `sampled`.
    area: f64,
    last_change: Instant,
    sampled: Instant,
    decided: Instant,
    /// When `in_flight` last dropped to zero (or a replica got ready).
    idle_since: Instant,
    /// The autoscaler's last decision.
    desired: u32,
    /// Starts that failed so far: a request waiting for a start gives up when one fails and
    /// nothing else is on its way.
    failed_starts: u64,
    /// Starts that failed since the last replica got ready, the last one's error, and when the
    /// next may be tried (a backoff as for a crash-looping container: 1 s doubling to 1 min).
    failures_in_a_row: u32,
    last_error: Option<String>,
    retry_at: Option<Instant>,
    stopping: bool,
}

struct Replica {
    load: Arc<Load>,
    process: Process,
}

/// What requests need of a replica: where it listens and how busy it is.
struct Load {
    port: u16,
    in_flight: AtomicUsize,
}

impl State {
    /// Whether a new replica may be started now.
    fn may_start(&self, now: Instant) -> bool {
        !self.stopping && self.retry_at.is_none_or(|at| now >= at)
    }

    /// Why the function cannot serve, for the error a request gets.
    fn failing(&self, name: &str) -> String {
        format!(
            "{name} failed to start {} time(s) in a row: {}",
            self.failures_in_a_row,
            self.last_error.as_deref().unwrap_or("no error recorded")
        )
    }

    /// Adds the time since the last change to the concurrency integral.
    fn flush(&mut self, now: Instant) {
        self.area += self.in_flight as f64 * (now - self.last_change).as_secs_f64();
        self.last_change = now;
    }
}

/// A request at the activator, counted until dropped: in the function's concurrency (what the
/// autoscaler samples and the idle period waits for) from its arrival, and in its replica's load
/// (what routing compares and a drain waits for) once [`Gate::lease`] chose one. It goes with the
/// response body ([`ReplicaBody`]).
struct InFlight {
    gate: Arc<Gate>,
    load: Option<Arc<Load>>,
}

impl InFlight {
    fn new(gate: Arc<Gate>) -> InFlight {
        {
            let mut state = gate.state();
            state.flush(Instant::now());
            state.in_flight += 1;
        }
        InFlight { gate, load: None }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(load) = &self.load {
            load.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        {
            let mut state = self.gate.state();
            let now = Instant::now();
            state.flush(now);
            state.in_flight -= 1;
            if state.in_flight == 0 {
                state.idle_since = now;
            }
        }
        self.gate.changed.notify_waiters();
    }
}

impl Gate {
    fn new(name: String, functions: Arc<Functions>, events: Events, policy: &Policy) -> anyhow::Result<Gate> {
        let service = &functions.get(&name)?.service;
        let scaling = policy.scaling(service)?;
        let http2 = service.http2;
        let container_concurrency = service.container_concurrency;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).http2_only(http2).build(connector);
        let now = Instant::now();
        Ok(Gate {
            labels: ServiceLabels { service: name.clone() },
            name,
            functions,
            events,
            scaling,
            idle: policy.idle,
            container_concurrency: container_concurrency as usize,
            decider: Mutex::new(Decider::new(&scaling, container_concurrency)),
            state: Mutex::new(State {
                ready: Vec::new(),
                starting: 0,
                alive: 0,
                in_flight: 0,
                area: 0.0,
                last_change: now,
                sampled: now,
                decided: now,
                idle_since: now,
                desired: 0,
                failed_starts: 0,
                failures_in_a_row: 0,
                last_error: None,
                retry_at: None,
                stopping: false,
            }),
            armed: std::sync::atomic::AtomicBool::new(false),
            changed: Notify::new(),
            client,
            version: if http2 { Version::HTTP_2 } else { Version::HTTP_11 },
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("activator state lock")
    }

    /// The replicas kept whatever the load: min-scale, and at least one in always-on.
    fn floor(&self) -> u32 {
        match self.idle {
            None => self.scaling.min_scale.max(1),
            Some(_) => self.scaling.min_scale,
        }
    }

    /// Accepts connections (HTTP/1.1 or HTTP/2 prior knowledge) until shutdown.
    async fn serve(self: Arc<Self>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let builder = auto::Builder::new(TokioExecutor::new());
        let mut connections = JoinSet::new();
        loop {
            let stream = tokio::select! {
                _ = stopped(&mut shutdown) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(function = %self.name, error = %e, "Accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let gate = self.clone();
            let builder = builder.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| gate.clone().handle(request));
                if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                    tracing::debug!(error = %e, "Activator connection ended with an error");
                }
            });
            while connections.try_join_next().is_some() {}
        }
        // The connections open may finish what is in flight (ingest's calls to producer too:
        // producer's connections stay up until its own requests are done).
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state().in_flight == 0 || tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        connections.abort_all();
    }

    /// Proxies one request from the public port.
    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Result<Response<ProxyBody>, Infallible> {
        Ok(match self.forward(request.map(Either::Left), Instant::now()).await {
            Ok(response) => response.map(BodyExt::boxed_unsync),
            Err(refusal) => answer(refusal.status(), refusal.text()),
        })
    }

    /// Sends one request, from a public port or an [`Entrance`], to a ready replica (waiting for
    /// one, starting one if none is on its way: a cold start). Counted in flight from `arrived`
    /// until the response body is dropped, and in the runner's metrics once answered, by the
    /// replica or with a [`Refusal`].
    async fn forward(
        self: &Arc<Self>,
        request: Request<Outbound>,
        arrived: Instant,
    ) -> Result<Response<ReplicaBody>, Refusal> {
        let (in_flight, port, cold) = match self.lease(arrived).await {
            Ok(leased) => leased,
            Err(e) => {
                tracing::error!(function = %self.name, error = format!("{e:#}"), "No replica to serve the request");
                return Err(self.refused(arrived, Refusal::NotStarted));
            }
        };
        let request = match self.outgoing(request, port) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(function = %self.name, error = %e, "Cannot proxy the request");
                return Err(self.refused(arrived, Refusal::Unproxiable));
            }
        };
        match self.client.request(request).await {
            Ok(response) => {
                if cold {
                    self.events.cold_start(&self.name, arrived.elapsed());
                }
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                self.answered(arrived, parts.status);
                Ok(Response::from_parts(parts, ReplicaBody { body, _in_flight: in_flight }))
            }
            Err(e) => {
                tracing::warn!(function = %self.name, port, error = %e, "Proxying to the function failed");
                Err(self.refused(arrived, Refusal::Unreachable))
            }
        }
    }

    /// A request counted in flight from `arrived` and a replica for it (its port), counted in
    /// the replica's load too; `true` if it had to wait for a replica to start. Dropping the
    /// [`InFlight`] releases both.
    async fn lease(self: &Arc<Self>, arrived: Instant) -> anyhow::Result<(InFlight, u16, bool)> {
        let mut in_flight = InFlight::new(self.clone());
        let (load, cold) = self.replica(arrived).await?;
        let port = load.port;
        in_flight.load = Some(load);
        Ok((in_flight, port, cold))
    }

    fn refused(&self, arrived: Instant, refusal: Refusal) -> Refusal {
        self.answered(arrived, refusal.status());
        refusal
    }

    /// Counts and times an answer (to its headers) in the runner's metrics.
    fn answered(&self, arrived: Instant, status: StatusCode) {
        let metrics = common::metrics::get();
        metrics.activator_duration.get_or_create(&self.labels).observe(arrived.elapsed().as_secs_f64());
        metrics.activator_request(&self.name, status.as_u16());
    }

    /// The least busy ready replica with room for one more request, marked busier; `true` if
    /// the request had to wait for a replica to start.
    async fn replica(self: &Arc<Self>, arrived: Instant) -> anyhow::Result<(Arc<Load>, bool)> {
        let deadline = arrived + READY_TIMEOUT + Duration::from_secs(5);
        let mut cold = false;
        let mut failures = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state();
                let room = |r: &&Replica| {
                    self.container_concurrency == 0
                        || r.load.in_flight.load(Ordering::Relaxed) < self.container_concurrency
                };
                if let Some(replica) =
                    state.ready.iter().filter(room).min_by_key(|r| r.load.in_flight.load(Ordering::Relaxed))
                {
                    replica.load.in_flight.fetch_add(1, Ordering::Relaxed);
                    return Ok((replica.load.clone(), cold));
                }
                let failed = *failures.get_or_insert(state.failed_starts);
                let nothing_coming = state.ready.is_empty() && state.starting == 0;
                if nothing_coming && (state.failed_starts > failed || !state.may_start(Instant::now())) {
                    anyhow::bail!(
                        "{}; see {}",
                        state.failing(&self.name),
                        self.functions.log_file(&self.name).display()
                    );
                }
                if state.ready.is_empty() {
                    cold = true;
                    if state.starting == 0 {
                        self.launch(&mut state, 1);
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!("no replica of {} was ready within {:?}", self.name, deadline - arrived);
            }
        }
    }

    /// Starts `n` more replicas in the background.
    fn launch(self: &Arc<Self>, state: &mut State, n: u32) {
        state.starting += n;
        for _ in 0..n {
            tokio::spawn(self.clone().start_replica());
        }
    }

    async fn start_replica(self: Arc<Self>) {
        let started = async {
            let mut process = self.functions.exec(&self.name)?;
            {
                let mut state = self.state();
                state.alive += 1;
                self.recorded(&state, |events, alive| events.start(&self.name, process.pid, alive));
            }
            match self.functions.wait_ready(&self.name, &mut process).await {
                Ok(took) => Ok((process, took)),
                Err(e) => {
                    self.exited(process.pid);
                    Err(e)
                }
            }
        }
        .await;
        {
            let mut state = self.state();
            state.starting -= 1;
            match started {
                Ok((process, took)) => {
                    let pid = process.pid;
                    tracing::info!(function = %self.name, port = process.port, pid, ready_ms = took.as_millis() as u64, replicas = state.alive, "Replica ready");
                    self.recorded(&state, |events, alive| events.ready(&self.name, pid, took, alive));
                    let load = Arc::new(Load { port: process.port, in_flight: AtomicUsize::new(0) });
                    state.ready.push(Replica { load, process });
                    state.idle_since = Instant::now();
                    (state.failures_in_a_row, state.last_error, state.retry_at) = (0, None, None);
                }
                Err(e) => {
                    state.failed_starts += 1;
                    state.failures_in_a_row += 1;
                    let backoff = BACKOFF_FIRST
                        .saturating_mul(1 << state.failures_in_a_row.min(16).saturating_sub(1))
                        .min(BACKOFF_MAX);
                    state.retry_at = Some(Instant::now() + backoff);
                    state.last_error = Some(format!("{e:#}"));
                    tracing::error!(function = %self.name, error = format!("{e:#}"), failures_in_a_row = state.failures_in_a_row, retry_in_ms = backoff.as_millis() as u64, "Starting a replica failed");
                }
            }
        }
        self.changed.notify_waiters();
    }

    /// Records that a process of this function is gone.
    fn exited(&self, pid: Option<u32>) {
        {
            let mut state = self.state();
            state.alive -= 1;
            self.recorded(&state, |events, alive| events.stop(&self.name, pid, alive));
        }
        self.changed.notify_waiters();
    }

    /// Writes an event and the replica gauge with the count `state` holds, under its lock, so
    /// both follow the starts and stops in order.
    fn recorded(&self, state: &State, record: impl FnOnce(&Events, u32)) {
        common::metrics::get().replicas.get_or_create(&self.labels).set(i64::from(state.alive));
        record(&self.events, state.alive);
    }

    /// Waits until `n` replicas are ready (starting what is missing).
    async fn wait_replicas(self: &Arc<Self>, n: u32, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let failed = self.state().failed_starts;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state();
                if state.ready.len() as u32 >= n {
                    return Ok(());
                }
                if state.failed_starts > failed {
                    anyhow::bail!(
                        "{}; see {}",
                        state.failing(&self.name),
                        self.functions.log_file(&self.name).display()
                    );
                }
                let missing = n.saturating_sub(state.ready.len() as u32 + state.starting);
                if missing > 0 {
                    self.launch(&mut state, missing);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                anyhow::bail!("{} had no {n} ready replicas within {timeout:?}", self.name);
            }
        }
    }

    /// Every 250 ms: replaces replicas that exited, samples the concurrency each second, asks
    /// the autoscaler each tick, and starts or drains replicas to match its decision.
    async fn reconcile(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stopped(&mut shutdown) => return,
                _ = tokio::time::sleep(RECONCILE) => {}
            }
            let mut exited = Vec::new();
            let mut drain = Vec::new();
            {
                let mut state = self.state();
                let mut i = 0;
                while i < state.ready.len() {
                    if let Some(status) = state.ready[i].process.exited() {
                        let replica = state.ready.remove(i);
                        tracing::warn!(function = %self.name, pid = replica.process.pid, %status, "Replica exited on its own; replacing it");
                        exited.push(replica.process.pid);
                    } else {
                        i += 1;
                    }
                }
                let now = Instant::now();
                if now - state.sampled >= Duration::from_secs(1) {
                    state.flush(now);
                    let concurrency = state.area / (now - state.sampled).as_secs_f64();
                    state.area = 0.0;
                    state.sampled = now;
                    self.decider.lock().expect("decider lock").record(concurrency);
                }
                if now - state.decided >= TICK {
                    state.decided = now;
                    let ready = state.ready.len() as u32;
                    let decision = self.decider.lock().expect("decider lock").decide(ready, now.into_std());
                    if decision.desired != state.desired {
                        tracing::info!(function = %self.name, desired = decision.desired, replicas = state.alive, panic = decision.panic, stable = decision.stable, panic_value = decision.panic_value, "Autoscaler decision");
                        self.events.scale(&self.name, state.alive, decision.desired, decision.panic);
                        common::metrics::get()
                            .desired_replicas
                            .get_or_create(&self.labels)
                            .set(i64::from(decision.desired));
                        state.desired = decision.desired;
                    }
                }
                let idle_expired =
                    self.idle.is_some_and(|idle| state.in_flight == 0 && state.idle_since.elapsed() >= idle);
                // The idle period alone takes scale-to-zero down to min-scale; otherwise the
                // autoscaler's count, and one at least while a request waits or a replica runs.
                let wanted = if idle_expired {
                    self.floor()
                } else if state.in_flight > 0 || state.alive > 0 {
                    state.desired.max(self.floor()).max(1)
                } else {
                    state.desired.max(self.floor())
                };
                let have = state.ready.len() as u32 + state.starting;
                if !self.armed.load(Ordering::Relaxed) {
                    // scale_to_min starts the first replicas, in dependency order.
                } else if wanted > have && state.may_start(now) {
                    self.launch(&mut state, wanted - have);
                } else if wanted < have {
                    let surplus = ((have - wanted) as usize).min(state.ready.len());
                    let keep = state.ready.len() - surplus;
                    drain = state.ready.split_off(keep);
                }
            }
            for pid in exited {
                self.exited(pid);
            }
            if !drain.is_empty() {
                tracing::info!(function = %self.name, replicas = drain.len(), "Scaling down: draining replicas");
            }
            for replica in drain {
                tokio::spawn(self.clone().drain(replica));
            }
        }
    }

    /// Waits for the replica's requests in flight to end, then stops its process.
    async fn drain(self: Arc<Self>, replica: Replica) {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while replica.load.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if replica.load.in_flight.load(Ordering::Relaxed) == 0 {
                break;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
        let pid = replica.process.pid;
        if let Err(e) = replica.process.stop(&self.name).await {
            tracing::warn!(function = %self.name, error = %e, "Stopping a replica failed");
        }
        self.exited(pid);
    }

    /// At shutdown: no more starts; every replica — ready, starting or already draining — is
    /// drained and stopped before this returns.
    async fn stop_all(self: &Arc<Self>) {
        self.state().stopping = true;
        let deadline = Instant::now() + READY_TIMEOUT + DRAIN_TIMEOUT + Duration::from_secs(30);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (ready, gone) = {
                let mut state = self.state();
                (std::mem::take(&mut state.ready), state.alive == 0 && state.starting == 0)
            };
            if gone {
                return;
            }
            for replica in ready {
                tokio::spawn(self.clone().drain(replica));
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(function = %self.name, "Replicas still alive at the end of the shutdown");
                return;
            }
        }
    }

    /// The request for the replica's port, without hop-by-hop headers (`te: trailers` stays:
    /// gRPC needs it).
    fn outgoing(&self, request: Request<Outbound>, port: u16) -> anyhow::Result<Request<Outbound>> {
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(format!("127.0.0.1:{port}"))
            .path_and_query(path)
            .build()?;
        parts.version = self.version;
        strip_hop_by_hop(&mut parts.headers);
        if self.version == Version::HTTP_2 {
            // HTTP/2 carries the authority in the URI; a Host header there is a protocol error.
            parts.headers.remove(header::HOST);
        }
        Ok(Request::from_parts(parts, body))
    }
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Connection-specific headers (RFC 9110 §7.6.1), which a proxy must not forward.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|te| te != HeaderValue::from_static("trailers")) {
        headers.remove(header::TE);
    }
}

fn answer(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response =
        Response::new(Full::new(Bytes::from_static(text.as_bytes())).map_err(|e| match e {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_scale_caps_every_function_and_its_min_scale() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative");
        let services = crate::manifests::services(&dir.join("base")).unwrap();
        let overlay =
            crate::manifests::overlay_annotations(&dir.join("overlays/always-on/kustomization.yaml"))
                .unwrap();
        let policy =
            |max_scale| Policy { overlay: overlay.clone(), stable_window: None, idle: None, max_scale };
        for service in &services {
            let free = policy(None).scaling(service).unwrap();
            assert!(free.max_scale > 1, "{}: {free:?}", service.name);
            let pinned = policy(Some(1)).scaling(service).unwrap();
            assert_eq!((pinned.min_scale, pinned.max_scale), (1, 1), "{}", service.name);
            assert_eq!(Scaling { min_scale: free.min_scale, max_scale: free.max_scale, ..pinned }, free);
        }
        let mut unbounded = overlay.clone();
        unbounded.insert("autoscaling.knative.dev/max-scale".into(), "0".into());
        unbounded.insert("autoscaling.knative.dev/min-scale".into(), "3".into());
        let capped = Policy { overlay: unbounded, stable_window: None, idle: None, max_scale: Some(2) };
        let scaling = capped.scaling(&services[0]).unwrap();
        assert_eq!((scaling.min_scale, scaling.max_scale), (2, 2));
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_rest_stays() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-private"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort();
        assert_eq!(names, ["content-type", "te", "traceparent"]);

        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.is_empty());
    }
}
