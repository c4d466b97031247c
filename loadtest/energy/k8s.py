"""The energy experiment on Kubernetes: apply an overlay, drive the Locust shape against the
cluster, read Kepler's joules and Knative's replicas from Prometheus' HTTP API, switch overlays
and repeat, then write the same report as on one machine.

Queries (every metric is listed in ``grafana/metrics.yaml``):

- ``kepler_pod_cpu_joules_total`` summed by ``pod_namespace`` for the namespaces of interest:
  ``increase`` over the window (instant ``/api/v1/query``) for energy, ``rate`` over time
  (``/api/v1/query_range``) for power;
- ``kepler_node_cpu_joules_total`` and ``kepler_node_cpu_idle_joules_total`` for the node(s):
  whole-machine energy and the idle part Kepler does not give to pods;
- ``kn_revision_pods_count`` summed by ``kn_service_name`` in our namespace: ready pods over time.

Every Prometheus answer is saved as it came (``target/energy/k8s/<mode>/prometheus/*.json``), so
``analyse_mode`` can be rerun — and is tested — on recorded answers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

from . import accounting, report
from .accounting import ColdStarts, Counts, LoadPoint, LocustStats, ModeFigures, Plan, Replicas, Series
from .tools import LoadShape, Tools

NAMESPACES = ("weather", "knative-serving", "knative-eventing", "kafka", "kepler")
FUNCTIONS_NAMESPACE = "weather"
MODES = ("always-on", "scale-to-zero")


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    """The two endpoints we use of Prometheus' HTTP API."""

    def __init__(self, url: str, timeout_s: float = 30) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as e:
            # Prometheus answers a bad query with 400/422 and its error in the JSON body.
            try:
                body = json.loads(e.read())
            except ValueError:
                raise PrometheusError(f"{path} {params.get('query')!r}: HTTP {e.code}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params.get('query')!r}: {body.get('errorType')}: {body.get('error')}")
        return body

    def query(self, expr: str, at: float) -> dict:
        return self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> dict:
        return self._get("/api/v1/query_range",
                         {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}s"})


def queries(duration_s: float, zone: str = "package", rate_window: str = "1m",
            namespaces=NAMESPACES, functions_namespace: str = FUNCTIONS_NAMESPACE) -> dict[str, tuple[str, str]]:
    """``{name: (kind, PromQL)}``; kind is ``instant`` (at the window's end) or ``range``."""
    ns = "|".join(namespaces)
    d = f"{round(duration_s)}s"
    pods = f'kepler_pod_cpu_joules_total{{pod_namespace=~"{ns}",zone="{zone}"}}'
    node = f'kepler_node_cpu_joules_total{{zone="{zone}"}}'
    node_idle = f'kepler_node_cpu_idle_joules_total{{zone="{zone}"}}'
    return {
        "pod_energy": ("instant", f"sum by (pod_namespace) (increase({pods}[{d}]))"),
        "node_energy": ("instant", f"sum(increase({node}[{d}]))"),
        "node_idle_energy": ("instant", f"sum(increase({node_idle}[{d}]))"),
        "pod_power": ("range", f"sum by (pod_namespace) (rate({pods}[{rate_window}]))"),
        "node_power": ("range", f"sum(rate({node}[{rate_window}]))"),
        "replicas": ("range", ("sum by (kn_service_name) "
                               f'(kn_revision_pods_count{{k8s_namespace_name="{functions_namespace}"}})')),
    }


def collect(prom: Prometheus, window: tuple[float, float], step_s: float = 5, **kw) -> dict[str, dict]:
    """Every query's answer over ``window``, as Prometheus returned it."""
    start, end = window
    out = {}
    for name, (kind, expr) in queries(end - start, **kw).items():
        out[name] = prom.query(expr, end) if kind == "instant" else prom.query_range(expr, start, end, step_s)
    return out


def _scalar(answer: dict) -> float:
    result = answer["data"]["result"]
    return sum(float(r["value"][1]) for r in result)


def _by(answer: dict, label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in answer["data"]["result"]}


def _matrix(answer: dict, label: str | None) -> dict[str, list[tuple[float, float]]]:
    return {(r["metric"].get(label, "") if label else ""): [(float(t), float(v)) for t, v in r["values"]]
            for r in answer["data"]["result"]}


def analyse_mode(mode: str, answers: dict[str, dict], window: tuple[float, float], plan: Plan,
                 grid_g_per_kwh: float = accounting.GRID_G_PER_KWH, locust: LocustStats | None = None,
                 history: list[LoadPoint] | None = None, counts: Counts | None = None, pue: float = 1.0,
                 idle_settle_s: float = 0.0) -> ModeFigures:
    """The same figures as ``accounting.analyse_mode``, from Kepler and Knative through Prometheus.

    Energy per namespace is Kepler's pod joules (the dynamic part, as Kepler attributes it);
    ``idle (machine)`` is the node's idle joules; ``other`` is the node's remaining active
    joules (pods of other namespaces, system). ``pue`` multiplies everything (1 by default:
    Kepler reports the node, not the facility; the energy source names any other). CPU seconds
    are not in Kepler's metrics.
    """
    start, end = window
    pods = {ns: j * pue for ns, j in _by(answers["pod_energy"], "pod_namespace").items()}
    node = _scalar(answers["node_energy"]) * pue
    idle = _scalar(answers["node_idle_energy"]) * pue
    energy = dict(pods)
    energy[accounting.OTHER] = max(0.0, node - idle - sum(pods.values()))
    energy[accounting.IDLE] = idle
    total = sum(energy.values())

    node_power = _matrix(answers["node_power"], None).get("", [])
    pod_power = _matrix(answers["pod_power"], "pod_namespace")
    series = Series(t=[t - start for t, _ in node_power], power_w=[w * pue for _, w in node_power],
                    component_w={ns: [w * pue for _, w in v] for ns, v in pod_power.items()})
    busy = [(b0, b1 + idle_settle_s) for b0, b1 in plan.bursts_at()]
    idle_points = [w * pue for t, w in node_power if not any(b0 <= t <= b1 for b0, b1 in busy)]
    idle_ns: dict[str, float] = {}
    for ns, v in pod_power.items():
        pts = [w * pue for t, w in v if not any(b0 <= t <= b1 for b0, b1 in busy)]
        if pts:
            idle_ns[ns] = sum(pts) / len(pts)

    replicas = _matrix(answers["replicas"], "kn_service_name")
    times = sorted({t for v in replicas.values() for t, _ in v})
    processes: dict[str, list] = {"t": [t - start for t in times]}
    cold = []
    for svc, v in sorted(replicas.items()):
        at = dict(v)
        processes[svc] = [at.get(t, 0.0) for t in times]
        for (_, n0), (t1, n1) in pairwise(v):
            if n0 == 0 and n1 > 0:
                cold.append((svc, t1))
    accepted = locust.accepted if locust else None
    burst_s = plan.bursts * plan.burst_seconds
    step = times[1] - times[0] if len(times) > 1 else 0
    pipeline = sum(j for ns, j in pods.items() if ns in ("weather", "knative-eventing", "kafka"))
    source = "Kepler (kepler_pod_cpu_joules_total, kepler_node_cpu_joules_total via Prometheus)"
    return ModeFigures(
        mode=mode,
        energy_source=source if pue == 1.0 else f"{source} × PUE {pue}",
        window_unix_s=(start, end),
        duration_s=end - start,
        ncpu=None,
        cpu_s={},
        energy_j=energy,
        total_j=total,
        mean_power_w=total / (end - start) if end > start else None,
        co2e_g=total / 3.6e6 * grid_g_per_kwh,
        idle_power_w=sum(idle_points) / len(idle_points) if idle_points else None,
        idle_component_w=idle_ns,
        idle_seconds=None,
        bursts_unix_s=plan.bursts_at(),
        series=series,
        processes=processes,
        function_process_seconds={svc: sum(v) * step for svc, v in processes.items() if svc != "t"},
        load=[LoadPoint(h.t - start, h.users, h.rps) for h in history or []],
        cold_starts=ColdStarts(
            count=len(cold),
            by_function={svc: sum(1 for s, _ in cold if s == svc) for svc in replicas},
            times_s=[t - start for _, t in cold],
        ),
        replicas=replicas_from_pods(replicas, window),
        locust=locust,
        tweets_per_s=accepted / burst_s if accepted is not None and burst_s else None,
        counts=counts,
        j_per_1000_tweets=total / accepted * 1000 if accepted else None,
        pipeline_j=pipeline,
        pipeline_j_per_1000_tweets=pipeline / accepted * 1000 if accepted else None,
        model=None,
        grid_g_per_kwh=grid_g_per_kwh,
    )


def replicas_from_pods(pods: dict[str, list[tuple[float, float]]], window: tuple[float, float]) -> Replicas:
    """Each service's replicas from its sampled pod count, each sample holding until the next.

    Knative's pod count says nothing of the autoscaler's desired count or of single starts, so
    ``desired`` is empty and ``starts`` unknown; a rise from 0 is a start from zero.
    """
    start, end = window
    out = Replicas()
    for svc, v in sorted(pods.items()):
        steps: list[tuple[float, int]] = []
        for t, n in v:
            if start <= t <= end and (not steps or steps[-1][1] != round(n)):
                steps.append((t - start, round(n)))
        out.steps[svc] = steps
        out.desired[svc] = []
        out.seconds[svc] = accounting.step_integral(steps, end - start)
        out.max[svc] = max((n for _, n in steps), default=0)
        out.from_zero[svc] = sum(1 for (_, n0), (_, n1) in pairwise(steps) if n0 == 0 and n1 > 0)
    return out


@dataclass
class Run:
    """One mode's ``run.json`` on Kubernetes: what was run, and the queries asked."""

    mode: str
    plan: Plan
    window: tuple[float, float]
    locust: LocustStats
    url: str = ""
    queries: dict | None = None
    # Where the tweets ended up, when known (not read from the cluster yet).
    counts: Counts | None = None

    def to_json(self) -> dict:
        return {"mode": self.mode, "plan": asdict(self.plan), "window": list(self.window), "url": self.url,
                "locust": asdict(self.locust), "queries": self.queries,
                "counts": asdict(self.counts) if self.counts else None}

    @classmethod
    def from_json(cls, data: dict) -> Run:
        return cls(mode=data["mode"], plan=Plan(**data["plan"]), window=tuple(data["window"]),
                   locust=LocustStats.from_json(data["locust"]), url=data.get("url", ""),
                   queries=data.get("queries"),
                   counts=Counts.from_json(data["counts"]) if data.get("counts") else None)


def kubectl(*args: str) -> str:
    return subprocess.run(["kubectl", *args], check=True, capture_output=True, text=True).stdout


def run_mode(args, mode: str) -> Path:
    """Apply the overlay, let it settle, drive Locust, wait, and save Prometheus' answers."""
    out = args.out / mode
    (out / "prometheus").mkdir(parents=True, exist_ok=True)
    print(f"[{mode}] kubectl apply -k knative/overlays/{mode}", flush=True)
    kubectl("apply", "-k", f"knative/overlays/{mode}")
    kubectl("wait", "--for=condition=Ready", "ksvc", "--all", "-n", FUNCTIONS_NAMESPACE, "--timeout=600s")
    url = args.url or kubectl("get", "ksvc", "ingest", "-n", FUNCTIONS_NAMESPACE, "-o", "jsonpath={.status.url}")
    # Long enough for scale-to-zero to reach zero (stable window 60 s + retention) before the load.
    time.sleep(args.pre_idle_seconds)
    spawned = time.time()
    shape = LoadShape(args.users, args.user_rps, args.burst_seconds, args.gap_seconds, args.bursts)
    Tools(args.tools).load(url, out, shape, args.locust, Path("loadtest/locustfile.py")).wait()
    history = accounting.locust_history(out / "locust_stats_history.csv")
    started = [h.t for h in history if h.users > 0]
    plan = Plan(max(spawned, started[0] - 1) if started else spawned, args.bursts, args.burst_seconds,
                args.gap_seconds)
    window = (plan.load_start - args.pre_idle_seconds, plan.load_end + args.post_idle_seconds)
    # Prometheus needs a scrape or two after the window's end.
    time.sleep(max(0.0, window[1] - time.time()) + 2 * args.step_seconds)
    answers = collect(Prometheus(args.prometheus), window, args.step_seconds, zone=args.zone)
    for name, answer in answers.items():
        (out / "prometheus" / f"{name}.json").write_text(json.dumps(answer))
    run = Run(mode, plan, window, accounting.locust_stats(out / "locust.json"), url,
              queries(window[1] - window[0], zone=args.zone))
    (out / "run.json").write_text(json.dumps(run.to_json(), indent=2))
    return out


def analyse_folder(folder: Path, grid_g_per_kwh: float, pue: float = 1.0, idle_settle_s: float = 0.0) -> ModeFigures:
    """A mode's figures from what ``run_mode`` saved (or from recorded answers in the same layout)."""
    run = Run.from_json(json.loads((folder / "run.json").read_text()))
    answers = {p.stem: json.loads(p.read_text()) for p in (folder / "prometheus").glob("*.json")}
    return analyse_mode(run.mode, answers, run.window, run.plan, grid_g_per_kwh, locust=run.locust,
                        history=accounting.locust_history(folder / "locust_stats_history.csv"),
                        counts=run.counts, pue=pue, idle_settle_s=idle_settle_s)


def write_report(out: Path, modes, grid_g_per_kwh: float, grid_source: str, pue: float = 1.0,
                 shape: str = "") -> Path:
    results = [analyse_folder(out / m, grid_g_per_kwh, pue) for m in modes]
    context = report.Context(where="Kubernetes with Knative, Kepler and Prometheus (`python -m loadtest.energy k8s`); "
                                   "components are namespaces: " + ", ".join(NAMESPACES) + ".",
                             shape=shape, grid_source=grid_source)
    return report.write(results, out, context, unit="pods")


def add_parser(sub) -> None:
    from .__main__ import add_shape_options

    p = sub.add_parser("k8s", help="the experiment on Kubernetes, reading Kepler through Prometheus")
    defaults = argparse.Namespace(users=50, user_rps=10.0, burst_seconds=60, gap_seconds=180, bursts=3,
                                  pre_idle_seconds=180.0, post_idle_seconds=180.0)
    add_shape_options(p, defaults)
    p.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus' URL (e.g. a port-forward)")
    p.add_argument("--url", help="the ingest Service's URL; default: from `kubectl get ksvc ingest`")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--zone", default="package", help="Kepler's RAPL zone to count (one, not summed)")
    p.add_argument("--step-seconds", type=float, default=15, help="query_range step (≥ the scrape interval)")
    p.add_argument("--tools", type=Path, default=Path("target/release/tools"),
                   help="the tools binary, whose `tools load` drives Locust")
    p.add_argument("--locust", type=Path, default=Path(".stack/venv/bin/locust"))
    p.add_argument("--out", type=Path, default=Path("target/energy/k8s"))
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from saved answers")
    p.add_argument("--pue", type=float, default=1.0, help="multiplies Kepler's joules (1: the node itself)")
    p.add_argument("--grid-g-per-kwh", type=float, default=accounting.GRID_G_PER_KWH)
    p.add_argument("--grid-source", default=accounting.GRID_SOURCE)


def main(args) -> int:
    modes = tuple(args.modes.split(","))
    if not args.report_only:
        for mode in modes:
            run_mode(args, mode)
    shape = (f"{args.bursts} bursts of {args.burst_seconds:.0f} s, {args.users} users at {args.user_rps} req/s, "
             f"{args.gap_seconds:.0f} s gaps")
    print(f"Report: {write_report(args.out, modes, args.grid_g_per_kwh, args.grid_source, args.pue, shape)}")
    return 0
