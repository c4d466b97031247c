"""The Kubernetes experiment's queries and report, against recorded Prometheus answers served by
a local HTTP server shaped exactly like Prometheus' HTTP API (no cluster needed)."""

import json
import re
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from .. import accounting, k8s

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


class FakePrometheus(BaseHTTPRequestHandler):
    """Answers each known query with the recorded answer of the mode being served."""

    answers: ClassVar[dict] = {}
    seen: ClassVar[list] = []

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        FakePrometheus.seen.append((url.path, params))
        body = self.answers.get((url.path, params["query"]))
        if body is None:
            body = {"status": "error", "errorType": "bad_data", "error": "unknown query"}
        data = json.dumps(body).encode()
        self.send_response(200 if body["status"] == "success" else 400)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def prometheus():
    server = HTTPServer(("127.0.0.1", 0), FakePrometheus)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_collect_uses_query_and_query_range_and_returns_the_answers(prometheus):
    window = (1764400000.0, 1764400600.0)
    recorded = FIXTURES / "scale-to-zero" / "prometheus"
    FakePrometheus.answers = {}
    FakePrometheus.seen = []
    for name, (kind, expr) in k8s.queries(600).items():
        path = "/api/v1/query" if kind == "instant" else "/api/v1/query_range"
        FakePrometheus.answers[(path, expr)] = json.loads((recorded / f"{name}.json").read_text())
    answers = k8s.collect(k8s.Prometheus(prometheus), window, step_s=15)
    assert set(answers) == set(k8s.queries(600))
    ranges = [p for path, p in FakePrometheus.seen if path == "/api/v1/query_range"]
    assert ranges and all((p["start"], p["end"], p["step"]) == ("1764400000.000", "1764400600.000", "15s")
                          for p in ranges)
    assert all(p["time"] == "1764400600.000" for path, p in FakePrometheus.seen if path == "/api/v1/query")
    with pytest.raises(k8s.PrometheusError, match="bad_data"):
        k8s.Prometheus(prometheus).query("up", 0)


def test_analysis_of_recorded_answers():
    r = k8s.analyse_folder(FIXTURES / "scale-to-zero", grid_g_per_kwh=400)
    assert r.energy_j["weather"] == 900.0
    assert r.energy_j[accounting.IDLE] == 5000.0
    # 9000 node − 5000 idle − 3150 in the five namespaces.
    assert r.energy_j[accounting.OTHER] == pytest.approx(850.0)
    assert r.total_j == pytest.approx(9000.0)
    assert r.co2e_g == pytest.approx(9000 / 3.6e6 * 400)
    # Two bursts, each followed by a scale from zero of every service.
    assert r.cold_starts.by_function == {"archiver": 2, "counter": 2, "ingest": 2, "producer": 2}
    assert max(r.processes["ingest"]) == 1 and min(r.processes["ingest"]) == 0
    assert r.idle_power_w == pytest.approx(12.0)
    assert r.j_per_1000_tweets == pytest.approx(150.0)
    assert r.energy_source.startswith("Kepler") and "PUE" not in r.energy_source
    always = k8s.analyse_folder(FIXTURES / "always-on", grid_g_per_kwh=400)
    assert always.cold_starts.count == 0 and min(always.processes["ingest"]) == 1
    doubled = k8s.analyse_folder(FIXTURES / "scale-to-zero", grid_g_per_kwh=400, pue=2.0)
    assert doubled.total_j == pytest.approx(18000.0) and doubled.energy_source.endswith("× PUE 2.0")


def test_report_from_recorded_answers(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "k8s")
    md = k8s.write_report(tmp_path / "k8s", k8s.MODES, 481.0, "test source")
    text = md.read_text()
    assert "Kepler" in text and "knative-eventing" in text and "| kafka |" in text
    # Each service's pods beside the energy; single starts are not in Knative's count.
    assert "| ingest | scale-to-zero | – | – | 270.0 | – | 1 | – | 2 | 2 |" in text
    assert "| function replica-seconds (the autoscaler's replicas) | 2,400 | 1,080 |" in text
    for png in ("replicas.png", "processes.png", "power.png", "energy_components.png", "per_mode.png",
                "cold_starts.png"):
        assert (tmp_path / "k8s" / png).stat().st_size > 0
    figures = json.loads((tmp_path / "k8s" / "report.json").read_text())
    assert [m["mode"] for m in figures["modes"]] == ["always-on", "scale-to-zero"]
