"""The Kubernetes experiment's queries and report, against a real Prometheus holding Kepler- and
Knative-shaped series backfilled from a model of each mode (``fixtures/k8s/<mode>/model.json``
over its ``run.json``): the figures the analysis finds in Prometheus' answers must be the model's,
and plausible mistakes in a query must miss them (no cluster needed)."""

import json
import re
import shutil
from pathlib import Path

import pytest

from .. import accounting, k8s
from .prometheus import BackfilledPrometheus

FIXTURES = Path(__file__).parent / "fixtures" / "k8s"
METRICS_YAML = Path(__file__).parents[3] / "grafana" / "metrics.yaml"


def test_every_queried_metric_is_listed_in_grafana_metrics_yaml():
    listed = set(re.findall(r"name: ([a-z_]+)", METRICS_YAML.read_text()))
    for _, expr in k8s.queries(600).values():
        metrics = re.findall(r"([a-z_]+)\{", expr)
        assert metrics, expr
        for metric in metrics:
            assert metric in listed, metric


def test_queries_select_the_namespaces_and_one_zone():
    q = k8s.queries(600, zone="package")
    assert q["pod_energy"] == ("instant", ('sum by (pod_namespace) (increase(kepler_pod_cpu_joules_total'
                                           '{pod_namespace=~"weather|knative-serving|knative-eventing|kafka|kepler",'
                                           'zone="package"}[600s]))'))
    assert q["replicas"][1] == 'sum by (kn_service_name) (kn_revision_pods_count{k8s_namespace_name="weather"})'


STEP_S = 5  # Kepler's and Knative's scrape interval in the series written below
FUNCTIONS = ("ingest", "producer", "counter", "archiver")


class Model:
    """A mode's power and replicas (``fixtures/k8s/<mode>/model.json``) over its ``run.json``
    plan, written as the series Kepler and Knative export; and the figures they must give."""

    def __init__(self, folder: Path) -> None:
        self.m = json.loads((folder / "model.json").read_text())
        self.run = k8s.Run.from_json(json.loads((folder / "run.json").read_text()))
        self.bursts = self.run.plan.bursts_at()
        start, end = self.run.window
        self.times = [float(t) for t in range(int(start) - 300, int(end) + 61, STEP_S)]

    def busy(self, t: float) -> bool:
        return any(b0 <= t < b1 for b0, b1 in self.bursts)

    def replicas(self, t: float) -> int:
        if self.m["replicas"] == "always-on":
            return 1
        return int(any(b0 <= t < b1 + self.m["scale_down_after_s"] for b0, b1 in self.bursts))

    def pod_w(self, ns: str, t: float) -> float:
        """Package watts of a namespace's pods over [t, t + STEP_S)."""
        if ns == "weather" and not self.replicas(t):
            return 0.0
        return self.m["pods_w"][ns][int(self.busy(t))]

    def node_w(self, t: float) -> tuple[float, float]:
        """Package watts of the node: (idle, active)."""
        return self.m["node_idle_w"], self.m["system_w"] + sum(self.pod_w(ns, t) for ns in self.m["pods_w"])

    def integral(self, watts, t0: float, t1: float) -> float:
        return sum(watts(t) * STEP_S for t in self.times if t0 <= t < t1)

    def openmetrics(self) -> str:
        """Kepler's node and pod joule counters (zones package and dram) and Knative's ready pods."""
        lines = []
        dram = self.m["dram_factor"]
        node = {"total": lambda t: sum(self.node_w(t)), "idle": lambda t: self.node_w(t)[0],
                "active": lambda t: self.node_w(t)[1]}
        for family, part in (("kepler_node_cpu_joules", "total"), ("kepler_node_cpu_idle_joules", "idle"),
                             ("kepler_node_cpu_active_joules", "active")):
            lines.append(f"# TYPE {family} counter")
            for zone, factor in (("package", 1.0), ("dram", dram)):
                joules = 0.0
                for t in self.times:
                    lines.append(f'{family}_total{{zone="{zone}",path="/sys/class/powercap/intel-rapl:0",'
                                 f'node_name="node-1"}} {joules:.3f} {t:.0f}')
                    joules += node[part](t) * factor * STEP_S
        # One pod per namespace, four in weather; a function's pod is new after each scale from zero.
        lines.append("# TYPE kepler_pod_cpu_joules counter")
        for ns in self.m["pods_w"]:
            pods = [f"{f}-00001-deployment" for f in FUNCTIONS] if ns == "weather" else [f"{ns}-pod"]
            for zone, factor in (("package", 1.0), ("dram", dram)):
                for pod in pods:
                    joules, generation, running = 0.0, 0, False
                    for t in self.times:
                        up = ns != "weather" or bool(self.replicas(t))
                        if up and not running:
                            generation, joules = generation + 1, 0.0
                        running = up
                        if not up:
                            continue
                        name = f"{pod}-{generation}"
                        lines.append(f'kepler_pod_cpu_joules_total{{pod_id="{ns}/{name}",pod_name="{name}",'
                                     f'pod_namespace="{ns}",state="running",zone="{zone}",node_name="node-1"}} '
                                     f"{joules:.3f} {t:.0f}")
                        joules += self.pod_w(ns, t) / len(pods) * factor * STEP_S
        lines.append("# TYPE kn_revision_pods_count gauge")
        for ns, count in (("weather", self.replicas), ("elsewhere", lambda t: 5)):
            for f in FUNCTIONS:
                for t in self.times:
                    lines.append(f'kn_revision_pods_count{{k8s_namespace_name="{ns}",kn_service_name="{f}",'
                                 f'kn_configuration_name="{f}",kn_revision_name="{f}-00001"}} {count(t)} {t:.0f}')
        return "\n".join(lines) + "\n# EOF\n"

    def check(self, r: accounting.ModeFigures, step_s: float) -> None:
        """The figures the analysis must find in Prometheus' answers to the experiment's queries."""
        start, end = self.run.window
        approx = lambda x: pytest.approx(x, rel=0.03)  # noqa: E731 — increase() extrapolates at the edges
        for ns in k8s.NAMESPACES:
            assert r.energy_j.get(ns, 0.0) == approx(self.integral(lambda t, ns=ns: self.pod_w(ns, t), start, end)), ns
        node = self.integral(lambda t: sum(self.node_w(t)), start, end)
        idle = self.integral(lambda t: self.node_w(t)[0], start, end)
        assert r.energy_j[accounting.IDLE] == approx(idle)
        assert r.total_j == approx(node)
        # The system's watts and the pods of namespaces not followed.
        other = self.integral(lambda t: self.m["system_w"] + self.pod_w("default", t), start, end)
        assert r.energy_j[accounting.OTHER] == pytest.approx(other, rel=0.1)
        cold = len(self.bursts) if self.m["replicas"] == "scale-to-zero" else 0
        assert r.cold_starts.by_function == dict.fromkeys(FUNCTIONS, cold)
        for f in FUNCTIONS:
            assert max(r.processes[f]) == 1 and min(r.processes[f]) == (0 if cold else 1), f
        # Node power: rate over the last minute, at each step outside the bursts. Prometheus takes
        # the samples in (t − 60 s, t], 55 s apart at the ends, and extrapolates their slope.
        rate = lambda t: self.integral(lambda u: sum(self.node_w(u)), t - 55, t) / 55  # noqa: E731
        grid = [start + k * step_s for k in range(int((end - start) / step_s) + 1)]
        outside = [rate(t) for t in grid if not any(b0 <= t <= b1 for b0, b1 in self.bursts)]
        assert r.idle_power_w == approx(sum(outside) / len(outside))
        assert r.j_per_1000_tweets == pytest.approx(r.total_j / self.run.locust.accepted * 1000)


def collect_and_save(url: str, mode: str, out: Path, step_s: float = 15) -> None:
    """What ``run_mode`` saves of a mode: Prometheus' answers to every query over the window."""
    shutil.copytree(FIXTURES / mode, out / mode)
    run = k8s.Run.from_json(json.loads((out / mode / "run.json").read_text()))
    answers = k8s.collect(k8s.Prometheus(url), run.window, step_s=step_s)
    (out / mode / "prometheus").mkdir()
    for name, answer in answers.items():
        (out / mode / "prometheus" / f"{name}.json").write_text(json.dumps(answer))


@pytest.fixture(scope="module")
def prometheus_of(tmp_path_factory):
    """mode → the URL of a real Prometheus holding that mode's series (one per mode: both modes'
    runs cover the same recorded window)."""
    servers, urls = [], {}

    def start(mode: str) -> str:
        if mode not in urls:
            server = BackfilledPrometheus(Model(FIXTURES / mode).openmetrics(), tmp_path_factory.mktemp(mode))
            urls[mode] = server.__enter__()
            servers.append(server)
        return urls[mode]

    yield start
    for server in servers:
        server.__exit__(None, None, None)


@pytest.mark.parametrize("mode", k8s.MODES)
def test_the_queries_on_a_real_prometheus_give_the_model(prometheus_of, tmp_path, mode):
    collect_and_save(prometheus_of(mode), mode, tmp_path)
    figures = k8s.analyse_folder(tmp_path / mode, grid_g_per_kwh=400)
    Model(FIXTURES / mode).check(figures, step_s=15)
    doubled = k8s.analyse_folder(tmp_path / mode, grid_g_per_kwh=400, pue=2.0)
    assert doubled.total_j == pytest.approx(2 * figures.total_j) and doubled.energy_source.endswith("× PUE 2.0")
    assert figures.energy_source.startswith("Kepler") and "PUE" not in figures.energy_source


# Each a plausible mistake in a query; the real Prometheus' answers must then miss the model.
WRONG_QUERIES = {
    "no zone matcher (package and dram summed)": lambda q: {
        k: (kind, expr.replace(',zone="package"', "").replace('{zone="package"}', ""))
        for k, (kind, expr) in q.items()},
    "rate where increase is meant": lambda q: {
        k: (kind, expr.replace("increase(", "rate(")) for k, (kind, expr) in q.items()},
    "replicas of every namespace": lambda q: {
        **q, "replicas": ("range", "sum by (kn_service_name) (kn_revision_pods_count)")},
    "a misspelt label": lambda q: {
        k: (kind, expr.replace("pod_namespace", "namespace")) for k, (kind, expr) in q.items()},
}


@pytest.mark.parametrize("mistake", WRONG_QUERIES)
def test_a_wrong_query_misses_the_model(prometheus_of, tmp_path, monkeypatch, mistake):
    mode = "scale-to-zero"
    right = k8s.queries
    monkeypatch.setattr(k8s, "queries", lambda *a, **kw: WRONG_QUERIES[mistake](right(*a, **kw)))
    try:
        collect_and_save(prometheus_of(mode), mode, tmp_path)
        figures = k8s.analyse_folder(tmp_path / mode, grid_g_per_kwh=400)
    except (k8s.PrometheusError, KeyError, ValueError):
        return  # refused or unusable: caught too
    with pytest.raises(AssertionError):
        Model(FIXTURES / mode).check(figures, step_s=15)


def test_collect_reports_prometheus_errors(prometheus_of):
    with pytest.raises(k8s.PrometheusError, match="bad_data"):
        k8s.Prometheus(prometheus_of("scale-to-zero")).query("sum(", 0)


def test_report_from_a_real_prometheus(prometheus_of, tmp_path):
    for mode in k8s.MODES:
        collect_and_save(prometheus_of(mode), mode, tmp_path / "k8s")
    md = k8s.write_report(tmp_path / "k8s", k8s.MODES, 481.0, "test source")
    text = md.read_text()
    assert "Kepler" in text and "knative-eventing" in text and "| kafka |" in text
    # Each service's pods beside the energy; single starts are not in Knative's count.
    assert "| ingest | scale-to-zero | – | – | 300.0 | – | 1 | – | 2 | 2 |" in text
    assert "| function replica-seconds (the autoscaler's replicas) | 2,400 | 1,200 |" in text
    for png in ("replicas.png", "processes.png", "power.png", "energy_components.png", "per_mode.png",
                "cold_starts.png"):
        assert (tmp_path / "k8s" / png).stat().st_size > 0
    figures = json.loads((tmp_path / "k8s" / "report.json").read_text())
    assert [m["mode"] for m in figures["modes"]] == ["always-on", "scale-to-zero"]


def test_replicas_from_knative_pod_counts(prometheus_of, tmp_path):
    for mode in k8s.MODES:
        collect_and_save(prometheus_of(mode), mode, tmp_path)
    r = k8s.analyse_folder(tmp_path / "scale-to-zero", grid_g_per_kwh=400)
    # The model: one pod per service from each burst's start (120 s, 360 s into the window) to
    # 90 s after its end (270 s, 510 s).
    assert r.replicas.steps["ingest"] == [(0.0, 0), (120.0, 1), (270.0, 0), (360.0, 1), (510.0, 0)]
    assert r.replicas.seconds == {f: 300.0 for f in ("archiver", "counter", "ingest", "producer")}
    assert r.replicas.from_zero["ingest"] == 2 and r.replicas.max["ingest"] == 1
    assert r.replicas.starts is None and r.replicas.desired["ingest"] == []
    always = k8s.analyse_folder(tmp_path / "always-on", grid_g_per_kwh=400)
    assert always.replicas.steps["counter"] == [(0.0, 1)] and always.replicas.seconds["counter"] == 600.0
