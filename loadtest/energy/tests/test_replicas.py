"""Replicas per function: from the runner's scaling events (several processes of one function at
once, a stop whose start came before the window, scale-to-zero to 0 and back, older events
without ``replicas``), from Knative's sampled pod count, in the sampler's readings, and in the
report's tables, JSON and plot."""

import json
import os
import subprocess
import threading
import time

import pytest

from .. import accounting, report, sampler
from ..accounting import Counts, LocustStats, Plan, PowerModel
from .test_accounting import sample, synthetic_run

WINDOW = (100.0, 130.0)


def ev(t_s, event, function, replicas=None, **fields):
    e = {"t_ms": round(t_s * 1000), "event": event, "function": function, **fields}
    if replicas is not None:
        e["replicas"] = replicas
    return e


def scaling_events():
    """ingest scales 1 → 3 → 1 in a panic; counter goes to zero and back; producer's only event in
    the window is a stop (it started before the events file began); archiver has none."""
    return [
        ev(90.0, "start", "ingest", 1, pid=1),
        ev(90.01, "ready", "ingest", 1, pid=1, ready_ms=8.0),
        ev(95.0, "start", "counter", 1, pid=5),
        ev(103.5, "stop", "producer", 0, pid=7),
        ev(105.0, "scale", "ingest", 1, desired=3, panic=True),
        # Two starts in the same millisecond: one point, the last count.
        ev(105.0, "start", "ingest", 2, pid=2),
        ev(105.0, "start", "ingest", 3, pid=3),
        ev(105.008, "ready", "ingest", 3, pid=2, ready_ms=8.0),
        ev(105.009, "ready", "ingest", 3, pid=3, ready_ms=9.0),
        ev(110.0, "scale", "counter", 1, desired=0, panic=False),
        ev(112.0, "stop", "counter", 0, pid=5),
        ev(115.0, "scale", "ingest", 3, desired=1, panic=False),
        ev(118.0, "stop", "ingest", 2, pid=3),
        ev(120.0, "stop", "ingest", 1, pid=2),
        ev(124.0, "scale", "counter", 0, desired=1, panic=False),
        ev(124.0, "start", "counter", 1, pid=6),
        ev(124.006, "ready", "counter", 1, pid=6, ready_ms=6.0),
        ev(124.1, "cold_start", "counter", latency_ms=30.0),
        # After the window: not counted.
        ev(131.0, "start", "ingest", 2, pid=4),
    ]


def test_replicas_from_events_overlapping_to_zero_and_a_stop_without_its_start():
    r = accounting.replicas_from_events(scaling_events(), WINDOW)
    assert r.steps == {
        "ingest": [(0.0, 1), (5.0, 3), (18.0, 2), (20.0, 1)],
        "producer": [(0.0, 1), (3.5, 0)],
        "counter": [(0.0, 1), (12.0, 0), (24.0, 1)],
        "archiver": [(0.0, 0)],
    }
    # ingest: 1 × 5 s + 3 × 13 s + 2 × 2 s + 1 × 10 s; counter: 1 × 12 s + 0 × 12 s + 1 × 6 s.
    assert r.seconds == {"ingest": 58.0, "producer": 3.5, "counter": 18.0, "archiver": 0.0}
    assert r.max == {"ingest": 3, "producer": 1, "counter": 1, "archiver": 0}
    assert r.starts == {"ingest": 2, "producer": 0, "counter": 1, "archiver": 0}
    assert r.from_zero == {"ingest": 0, "producer": 0, "counter": 1, "archiver": 0}
    assert r.desired == {"ingest": [(5.0, 3, True), (15.0, 1, False)], "producer": [],
                         "counter": [(10.0, 0, False), (24.0, 1, False)], "archiver": []}


def test_replicas_before_the_window_hold_at_its_start():
    # From 105.5 s: ingest has 3 alive (the starts at 105 s were before), and the autoscaler's
    # panic decision is the one in force.
    r = accounting.replicas_from_events(scaling_events(), (105.5, 125.5))
    assert r.steps["ingest"] == [(0.0, 3), (12.5, 2), (14.5, 1)]
    assert r.seconds["ingest"] == 3 * 12.5 + 2 * 2 + 1 * 5.5
    assert r.starts["ingest"] == 0 and r.max["ingest"] == 3
    assert r.desired["ingest"] == [(0.0, 3, True), (9.5, 1, False)]
    # A window with no event of a function: the count before it, all along.
    quiet = accounting.replicas_from_events(scaling_events(), (125.0, 130.0))
    assert quiet.steps["counter"] == [(0.0, 1)] and quiet.seconds["counter"] == 5.0
    assert quiet.steps["ingest"] == [(0.0, 1)] and quiet.max["ingest"] == 1


def test_scale_to_zero_twice_counts_each_start_from_zero():
    events = [ev(101, "start", "ingest", 1), ev(101.01, "ready", "ingest", 1),
              ev(102, "start", "ingest", 2), ev(109, "stop", "ingest", 1), ev(110, "stop", "ingest", 0),
              ev(120, "start", "ingest", 1), ev(125, "stop", "ingest", 0)]
    r = accounting.replicas_from_events(events, WINDOW, functions=("ingest",))
    assert r.steps == {"ingest": [(0.0, 0), (1.0, 1), (2.0, 2), (9.0, 1), (10.0, 0), (20.0, 1), (25.0, 0)]}
    assert r.seconds["ingest"] == 1 + 2 * 7 + 1 + 5
    assert (r.starts["ingest"], r.from_zero["ingest"], r.max["ingest"]) == (3, 2, 2)


def test_events_without_replicas_are_counted_from_starts_and_stops():
    # An older runner's file: it begins with the runner, so nothing was alive before it.
    events = [ev(101, "start", "ingest"), ev(101.5, "ready", "ingest", ready_ms=5.0), ev(102, "start", "ingest"),
              ev(110, "stop", "ingest"), ev(112, "stop", "ingest"), ev(120, "start", "ingest")]
    r = accounting.replicas_from_events(events, WINDOW, functions=("ingest",))
    assert r.steps["ingest"] == [(0.0, 0), (1.0, 1), (2.0, 2), (10.0, 1), (12.0, 0), (20.0, 1)]
    assert r.seconds["ingest"] == 1 + 2 * 8 + 2 + 10
    assert (r.starts["ingest"], r.from_zero["ingest"]) == (3, 2)


def test_step_integral():
    assert accounting.step_integral([(0.0, 2), (3.0, 0), (4.0, 1)], 10.0) == 6 + 0 + 6
    assert accounting.step_integral([(2.0, 1)], 5.0) == 3.0
    assert accounting.step_integral([], 5.0) == 0


def test_cpu_deltas_sum_the_processes_of_one_function():
    samples = [
        sample(0, 0, 0, [("ingest", 20, 1.0, 2)]),
        sample(1, 100, 200, [("ingest", 20, 1.2, 2), ("ingest", 21, 0.3, 50), ("ingest", 22, 0.1, 50)]),
        # pid 21 exits; 20 and 22 go on.
        sample(2, 150, 400, [("ingest", 20, 1.3, 2), ("ingest", 22, 0.4, 50)]),
    ]
    first, second = accounting.cpu_deltas(samples)
    assert first.cpu_s == pytest.approx({"ingest": 0.2 + 0.3 + 0.1})
    assert first.processes["ingest"] == 3
    assert second.cpu_s == pytest.approx({"ingest": 0.1 + 0.3})
    assert second.processes["ingest"] == 2


def test_snapshot_finds_every_process_of_a_function_whichever_thread_started_it(tmp_path):
    # The runner starts replicas from its worker threads; each is this process's child all the same.
    (tmp_path / "ingest").symlink_to("/bin/sleep")
    children = [subprocess.Popen([str(tmp_path / "ingest"), "30"])]
    spawner = threading.Thread(target=lambda: children.append(subprocess.Popen([str(tmp_path / "ingest"), "30"])))
    spawner.start()
    spawner.join()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            s = sampler.snapshot({"runner": os.getpid()})
            found = sorted(p["pid"] for p in s["procs"] if p["component"] == "ingest")
            if len(found) == 2:
                break
            time.sleep(0.02)
        assert found == sorted(c.pid for c in children), s["procs"]
    finally:
        for c in children:
            c.kill()
            c.wait()


def mode(name, events):
    return accounting.analyse_mode(name, synthetic_run(), Plan(5.0, 1, 5.0, 0.0), (0.0, 20.0), PowerModel(),
                                   events=events, locust=LocustStats(1000, 1000, 0, 3.0, 9.0),
                                   counts=Counts(accepted=1000, counted=1000, archived=1000))


def test_report_shows_replicas_beside_the_energy(tmp_path):
    # synthetic_run's ingest runs from 4 to 14 s; the events say so, with a second replica 6-9 s.
    s2z = [ev(4, "start", "ingest", 1), ev(6, "scale", "ingest", 1, desired=2, panic=True),
           ev(6, "start", "ingest", 2), ev(9, "stop", "ingest", 1), ev(14, "stop", "ingest", 0),
           ev(4.02, "cold_start", "ingest", latency_ms=20.0)]
    always = [ev(-5, "start", f, 1) for f in ("ingest", "producer", "counter", "archiver")]
    results = [mode("always-on", always), mode("scale-to-zero", s2z)]
    assert results[1].replicas.seconds["ingest"] == 10 + 3
    md = report.write(results, tmp_path, report.Context(where="test")).read_text()
    assert (tmp_path / "replicas.png").stat().st_size > 0
    assert "| function replica-seconds (the autoscaler's replicas) | 80 | 13 |" in md
    assert "| starts from zero replicas | 0 | 1 |" in md
    assert "| cold starts | 0 | 1 |" in md and "cold starts are requests that waited for a start" in md
    ingest_j = results[1].energy_j["ingest"]
    assert (f"| ingest | scale-to-zero | {ingest_j:.1f} | 2.50 | 13.0 | {ingest_j / 13:.3f} | 2 | 2 | 1 | 1 |"
            in md)
    assert "| archiver | always-on | – | – | 20.0 | – | 1 | 0 | 0 | 0 |" in md
    assert "![Replicas per function over time, per mode](replicas.png)" in md
    saved = json.loads((tmp_path / "report.json").read_text())["modes"]
    assert saved[1]["replicas"]["steps"]["ingest"] == [[0.0, 0], [4.0, 1], [6.0, 2], [9.0, 1], [14.0, 0]]
    assert saved[1]["replicas"]["desired"]["ingest"] == [[6.0, 2, True]]
    assert saved[0]["replicas"]["seconds"] == {f: 20.0 for f in ("ingest", "producer", "counter", "archiver")}
    assert saved[0]["replicas"]["max"]["counter"] == 1 and saved[1]["replicas"]["from_zero"]["ingest"] == 1
