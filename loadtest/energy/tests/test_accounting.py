"""Unit tests of the accounting on fixtures: the sampler's psutil readings, CPU-time deltas, the
power model, RAPL wraparound, Kepler-style attribution, percentiles, one mode's figures and the
report files; and the function list read from the manifests."""

import json
import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from .. import accounting, manifests, rapl, report, sampler
from ..accounting import Counts, Interval, LoadPoint, LocustStats, Plan, PowerModel
from ..experiment import Run, Settings

FIXTURES = Path(__file__).parent / "fixtures"


def test_functions_are_the_knative_services_in_kustomization_order():
    assert manifests.FUNCTIONS == ("ingest", "producer", "counter", "archiver")


def test_functions_skip_other_kinds_and_keep_the_listed_order(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - b.yaml\n  - a.yaml\n  - source.yaml\n")
    (tmp_path / "a.yaml").write_text("apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: alpha\n")
    (tmp_path / "b.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: plain\n---\n"
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: beta\n")
    (tmp_path / "source.yaml").write_text(
        "apiVersion: sources.knative.dev/v1\nkind: KafkaSource\nmetadata:\n  name: gamma\n")
    assert manifests.functions(tmp_path) == ("beta", "alpha")
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - source.yaml\n")
    with pytest.raises(ValueError, match="no Knative Service"):
        manifests.functions(tmp_path)


def test_machine_reading_is_busy_within_total():
    m = sampler.read_machine()
    assert 0 < m["busy_s"] < m["total_s"] and m["ncpu"] == os.cpu_count()


def test_snapshot_reads_tracked_processes_and_the_runners_function_children(tmp_path):
    # A child of this process named like a function counts as that function when this process is
    # the runner; the same name under another parent would not.
    (tmp_path / "ingest").symlink_to("/bin/sleep")
    child = subprocess.Popen([str(tmp_path / "ingest"), "30"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            s = sampler.snapshot({"runner": os.getpid(), "kafka": 2**22 + 1})
            if any(p["component"] == "ingest" for p in s["procs"]):
                break
            time.sleep(0.02)
        by = {p["component"]: p for p in s["procs"]}
        assert set(by) == {"runner", "ingest"}, s["procs"]  # the made-up kafka pid is not there
        assert by["ingest"]["pid"] == child.pid and by["ingest"]["comm"] == "ingest"
        assert by["runner"]["cpu_s"] > 0 and by["runner"]["started"] <= by["ingest"]["started"]
        # As a family, the tracked process brings its children under its own name.
        family = sampler.snapshot({"locust": os.getpid()}, families=frozenset({"locust"}))
        assert {p["pid"] for p in family["procs"]} >= {os.getpid(), child.pid}
        assert {p["component"] for p in family["procs"]} == {"locust"}
    finally:
        child.kill()
        child.wait()


def test_rapl_wraparound():
    assert accounting.rapl_delta_uj(1_000, 5_000, 262_143_328_850) == 4_000
    assert accounting.rapl_delta_uj(262_143_328_000, 1_000, 262_143_328_850) == 1_850


def test_rapl_zones_reads_packages_only(tmp_path):
    for zone, uj in (("intel-rapl:0", 10), ("intel-rapl:0:0", 5), ("intel-rapl:1", 20)):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "energy_uj").write_text(f"{uj}\n")
        (tmp_path / zone / "max_energy_range_uj").write_text("1000\n")
    zones = rapl.rapl_zones(tmp_path)
    assert [z.name for z in zones] == ["intel-rapl:0", "intel-rapl:1"]
    assert rapl.read_rapl(zones)["intel-rapl:1"] == {"energy_uj": 20, "max_energy_range_uj": 1000}


def test_model_matches_the_published_coefficients():
    m = PowerModel()
    assert m.power_w(2, 0.0) == pytest.approx(2 * 0.71 * 1.1)
    assert m.power_w(2, 1.0) == pytest.approx(2 * 4.26 * 1.1)
    idle, dynamic = m.split_j(2, 0.5, 10)
    assert idle == pytest.approx(2 * 0.71 * 1.1 * 10)
    assert idle + dynamic == pytest.approx(m.power_w(2, 0.5) * 10)


def sample(t, busy, total, procs, ncpu=2, rapl=None):
    """A sample as the sampler writes it; ``busy`` and ``total`` in hundredths of a CPU second."""
    return {"t": t, "machine": {"busy_s": busy / 100, "total_s": total / 100, "ncpu": ncpu},
            "rapl": rapl or {}, "procs": [
                {"component": c, "pid": pid, "comm": c, "cpu_s": cpu, "started": st} for c, pid, cpu, st in procs]}


def test_cpu_deltas_follow_processes_that_come_and_go():
    samples = [
        sample(0, 0, 0, [("kafka", 10, 5.0, 1), ("ingest", 20, 1.0, 2)]),
        # ingest 20 exits; a new ingest (pid 21) appears with 0.3 s used since it started.
        sample(1, 100, 200, [("kafka", 10, 5.4, 1), ("ingest", 21, 0.3, 50)]),
        # pid 21 reused by a different process (new start time): all its CPU is new.
        sample(2, 150, 400, [("kafka", 10, 5.5, 1), ("ingest", 21, 0.2, 90), ("counter", 30, 0.1, 91)]),
    ]
    first, second = accounting.cpu_deltas(samples)
    assert first.cpu_s == pytest.approx({"kafka": 0.4, "ingest": 0.3})
    assert (first.busy_s, first.capacity_s, first.utilisation) == (1.0, 2.0, 0.5)
    assert first.processes == {"ingest": 1, "producer": 0, "counter": 0, "archiver": 0}
    assert second.cpu_s == pytest.approx({"kafka": 0.1, "ingest": 0.2, "counter": 0.1})
    assert second.processes["counter"] == 1


def test_attribution_by_cpu_share_and_the_rest_to_other():
    iv = Interval(0, 1, 2, busy_s=1.0, capacity_s=2.0, cpu_s={"kafka": 0.5, "ingest": 0.25})
    parts = accounting.attribute(iv, 8.0)
    assert parts == pytest.approx({"kafka": 4.0, "ingest": 2.0, "other": 2.0})
    # Processes read a moment after the machine may add up to more: scaled to what they report.
    iv = Interval(0, 1, 2, busy_s=0.5, capacity_s=2.0, cpu_s={"kafka": 0.6, "ingest": 0.4})
    assert accounting.attribute(iv, 10.0) == pytest.approx({"kafka": 6.0, "ingest": 4.0, "other": 0.0})


def test_rapl_energy_split_into_idle_and_active_by_utilisation():
    iv = Interval(0, 1, 2, busy_s=0.5, capacity_s=2.0, rapl_j=20.0)
    idle, dyn = accounting.interval_energy(iv, PowerModel(pue=1.0), "rapl")
    assert (idle, dyn) == pytest.approx((15.0, 5.0))


def test_rapl_is_the_source_when_every_interval_has_it():
    def zone(uj):
        return {"intel-rapl:0": {"energy_uj": uj, "max_energy_range_uj": 2_000_000}}

    samples = [sample(0, 0, 0, [], rapl=zone(1_900_000)), sample(1, 100, 200, [], rapl=zone(100_000))]
    ivs = accounting.cpu_deltas(samples)
    assert accounting.energy_source(ivs) == "rapl"
    assert ivs[0].rapl_j == pytest.approx(0.2)
    assert accounting.energy_source(accounting.cpu_deltas([sample(0, 0, 0, []), sample(1, 1, 2, [])])) == "model"


def test_percentile_is_the_nearest_rank():
    # Locust's histogram {ms: count}, as values and weights.
    ms, counts = [10.0, 20.0, 300.0], [50, 49, 1]
    assert accounting.percentile(ms, 0.5, counts) == 10.0
    assert accounting.percentile(ms, 0.99, counts) == 20.0
    assert accounting.percentile(ms, 1.0, counts) == 300.0
    assert accounting.percentile([], 0.5) is None
    assert accounting.percentile([1.0], 0.5, [0]) is None
    # The tools' definition (tools/src/state.rs): 1..=100 → p50 50, p99 99; never interpolated.
    assert accounting.percentile([float(v) for v in range(1, 101)], 0.5) == 50.0
    assert accounting.percentile([float(v) for v in range(1, 101)], 0.99) == 99.0
    assert accounting.percentile([3.0, 8.0], 0.5) == 3.0
    # Repeated values all count.
    assert accounting.percentile([3.0, 5.0, 5.0, 5.0], 0.5) == 5.0


def test_locust_stats_from_its_json_file(tmp_path):
    (tmp_path / "locust.json").write_text(json.dumps([
        {"name": "/input", "num_requests": 10, "num_failures": 1,
         "response_times": {"3": 5, "4.0": 3, "9": 1, "250": 1}},
        {"name": "/", "num_requests": 0, "num_failures": 0, "response_times": {}},
    ]))
    assert accounting.locust_stats(tmp_path / "locust.json") == LocustStats(
        requests=10, accepted=9, failed=1, p50_ms=3.0, p99_ms=250.0)


def test_run_json_round_trips_and_stays_readable(tmp_path):
    run = Run("scale-to-zero", Settings(burst_seconds=10, modes=("scale-to-zero",)), Plan(5.0, 2, 10, 20),
              (0.0, 60.0), LocustStats(100, 99, 1, 3.0, 9.0),
              Counts(accepted=99, counted=99, archived=99, in_kafka=99, dead_lettered=0), 0)
    run.write(tmp_path / "run.json")
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["settings"]["tools"] == "target/release/tools" and saved["plan"]["bursts"] == 2
    assert saved["counts"] == {"accepted": 99, "counted": 99, "archived": 99, "in_kafka": 99, "dead_lettered": 0}
    assert Run.read(tmp_path / "run.json") == run
    assert run.counts.delivered and not Counts(accepted=2, counted=2, archived=1).delivered
    # A run.json of an older version, with settings this one no longer has.
    saved["settings"]["redis_url"] = "redis://elsewhere"
    assert Settings.from_json(saved["settings"]) == run.settings


def synthetic_run():
    """20 s at 1 s: a burst from 5 to 10 s; the functions run only from 4 to 14 s."""
    samples, cpu = [], {"kafka": 0.0, "ingest": 0.0}
    busy = total = 0
    for t in range(21):
        procs = [("kafka", 10, cpu["kafka"], 1)]
        if 4 <= t <= 14:
            procs.append(("ingest", 20, cpu["ingest"], 400))
        samples.append(sample(float(t), busy, total, procs))
        loaded = 5 <= t < 10
        cpu["kafka"] += 0.1
        if 4 <= t < 14:
            cpu["ingest"] += 0.5 if loaded else 0.0
        busy += 140 if loaded else 20
        total += 200
    return samples


def test_analyse_mode_window_energy_and_idle_power():
    model = PowerModel()
    plan = Plan(load_start=5.0, bursts=1, burst_seconds=5.0, gap_seconds=0.0)
    events = [{"t_ms": 4000, "event": "cold_start", "function": "ingest", "latency_ms": 12.5},
              {"t_ms": 4000, "event": "ready", "function": "ingest", "ready_ms": 7}]
    r = accounting.analyse_mode("scale-to-zero", synthetic_run(), plan, (0.0, 20.0), model, 500.0, events=events,
                                locust=LocustStats(1000, 1000, 0, 3.0, 9.0), idle_settle_s=2.0)
    assert r.energy_source == "model"
    assert r.cpu_s["kafka"] == pytest.approx(2.0)
    assert r.cpu_s["ingest"] == pytest.approx(2.5)
    # Total = idle power × 20 s + 3.55 W·1.1 per busy CPU second (busy: 5 × 1.4 s + 15 × 0.2 s = 10 s).
    assert r.total_j == pytest.approx(2 * 0.71 * 1.1 * 20 + 3.55 * 1.1 * 10.0)
    assert r.energy_j["ingest"] == pytest.approx(3.55 * 1.1 * 2.5)
    assert r.co2e_g == pytest.approx(r.total_j / 3.6e6 * 500)
    # Idle: intervals outside [5, 12]; 0.2 CPU s per s of which kafka 0.1.
    assert r.idle_power_w == pytest.approx(model.power_w(2, 0.1))
    assert r.idle_component_w["kafka"] == pytest.approx(3.55 * 1.1 * 0.1)
    assert r.processes["ingest"][:6] == [0, 0, 0, 0, 1, 1]
    assert r.cold_starts.count == 1 and r.cold_starts.latency_ms == [12.5]
    assert r.cold_starts.by_function == {"ingest": 1, "producer": 0, "counter": 0, "archiver": 0}
    assert r.j_per_1000_tweets == pytest.approx(r.total_j)
    assert r.tweets_per_s == 200


def test_report_writes_every_file(tmp_path):
    plan = Plan(load_start=5.0, bursts=1, burst_seconds=5.0, gap_seconds=0.0)
    results = [accounting.analyse_mode(m, synthetic_run(), plan, (0.0, 20.0), PowerModel(),
                                       locust=LocustStats(1000, 1000, 0, 3.0, 9.0),
                                       history=[LoadPoint(t=6.0, users=5, rps=100.0)],
                                       counts=Counts(accepted=1000, counted=1000, archived=1000))
               for m in ("always-on", "scale-to-zero")]
    md = report.write(results, tmp_path, report.Context(where="test"))
    for name in ("report.md", "report.json", "replicas.png", "processes.png", "power.png", "energy_components.png",
                 "per_mode.png", "cold_starts.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    text = md.read_text()
    assert "linear power model" in text and "Cloud Carbon Footprint" in text and "Ember" in text
    assert "| accepted / counted / archived | 1,000 / 1,000 / 1,000 | 1,000 / 1,000 / 1,000 |" in text
    assert "| latency p50 / p99, ms | 3 / 9 | 3 / 9 |" in text
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["context"]["where"] == "test"
    mode = saved["modes"][1]
    assert mode["mode"] == "scale-to-zero" and mode["locust"]["p99_ms"] == 9.0
    assert mode["counts"]["archived"] == 1000 and mode["load"] == [{"t": 6.0, "users": 5, "rps": 100.0}]
    assert mode["cold_starts"]["count"] == 0 and mode["model"] == asdict(PowerModel())
    assert set(mode["series"]) == {"t", "power_w", "utilisation", "component_w"}


def test_report_command_redoes_the_report_from_saved_runs(tmp_path):
    from ..__main__ import all_delivered, main

    for mode in ("always-on", "scale-to-zero"):
        folder = tmp_path / mode
        folder.mkdir()
        (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in synthetic_run()))
        Run(mode, Settings(out=tmp_path, bursts=1, burst_seconds=5, idle_period_ms=2000), Plan(5.0, 1, 5, 0),
            (0.0, 20.0), LocustStats(1000, 1000, 0, 3.0, 9.0), Counts(1000, 1000, 1000), 0).write(folder / "run.json")
    assert main(["report", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "**Load:** 1 bursts of 5 s" in text and "scale-to-zero idle period 2 s" in text
    modes = json.loads((tmp_path / "report.json").read_text())["modes"]
    assert [m["settings"]["idle_period_ms"] for m in modes] == [2000, 2000]
    assert all_delivered(tmp_path, ("always-on", "scale-to-zero"))
