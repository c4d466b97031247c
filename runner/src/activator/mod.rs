//! Knative's activator on one machine: the runner listens on every function's public port and
//! hands each request to one of the function's replicas, processes it starts and stops as the
//! [`crate::autoscaler`] decides. `proxy` forwards requests (and the runner's own deliveries,
//! through an [`Entrance`]), `pool` starts, routes to and drains replicas, and `reconcile`
//! decides each round how many run.

mod pool;
mod proxy;
mod reconcile;

pub use proxy::{Entrance, Refusal, ReplicaBody};

use crate::{
    autoscaler::{Decider, Scaling},
    events::Events,
    functions::{Functions, READY_TIMEOUT},
    manifests::{Annotations, Service},
};
use anyhow::Context;
use common::metrics::ServiceLabels;
use hyper::Version;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use pool::State;
use proxy::Outbound;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{
    net::TcpListener,
    sync::{Notify, watch},
    task::JoinHandle,
};

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

/// Binds each function's public port on loopback (`ports` by name, from
/// [`crate::functions::numbered_ports`]; 0 lets the OS choose).
pub async fn bind(ports: Vec<(String, u16)>) -> anyhow::Result<Vec<(String, TcpListener)>> {
    let mut listeners = Vec::new();
    for (name, port) in ports {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.map_err(|e| {
            anyhow::anyhow!("binding {name}'s port 127.0.0.1:{port}: {e} — is another runner using it? (`ss -ltnp 'sport = :{port}'`)")
        })?;
        listeners.push((name, listener));
    }
    Ok(listeners)
}

impl Activator {
    /// Serves each function on its listener (from [`bind`]); no process is started until a
    /// request comes or [`Activator::scale_to_min`].
    pub fn start(
        functions: Arc<Functions>,
        listeners: Vec<(String, TcpListener)>,
        events: Events,
        policy: Policy,
    ) -> anyhow::Result<Activator> {
        let (shutdown, stop) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut gates = Vec::new();
        for (name, listener) in listeners {
            let gate = Arc::new(Gate::new(name, functions.clone(), events.clone(), &policy)?);
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
    armed: AtomicBool,
    state: Mutex<State>,
    /// Wakes requests waiting for a replica or capacity, and drains waiting for requests to end.
    changed: Notify,
    client: Client<HttpConnector, Outbound>,
    version: Version,
    labels: ServiceLabels,
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
        let now = tokio::time::Instant::now();
        Ok(Gate {
            labels: ServiceLabels { service: name.clone() },
            name,
            functions,
            events,
            scaling,
            idle: policy.idle,
            container_concurrency: container_concurrency as usize,
            decider: Mutex::new(Decider::new(&scaling, container_concurrency)),
            state: Mutex::new(State::new(now)),
            armed: AtomicBool::new(false),
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
}

/// Resolves once shutdown is asked for (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_scale_caps_every_function_and_its_min_scale() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../knative");
        let services = crate::manifests::services(&dir.join("base")).unwrap();
        let overlay =
            crate::autoscaler::overlay_annotations(&dir.join("overlays/always-on/kustomization.yaml"))
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
}
