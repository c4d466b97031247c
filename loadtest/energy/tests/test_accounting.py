"""Unit tests of the accounting on fixtures: /proc parsing, CPU-time deltas, the power model,
RAPL wraparound, Kepler-style attribution, one mode's figures and the report files."""

import json
from pathlib import Path

import pytest

from .. import accounting, procfs, report
from ..accounting import Interval, Plan, PowerModel

FIXTURES = Path(__file__).parent / "fixtures"


def test_pid_stat_with_spaces_and_parentheses_in_comm():
    # Fields from proc(5): utime 14 = 250 ticks, stime 15 = 50 ticks, starttime 22 = 12345.
    text = "4242 (my (odd) name) S 7 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 12345 1000 200"
    stat = procfs.parse_pid_stat(text)
    assert (stat.pid, stat.comm, stat.ppid, stat.start_ticks) == (4242, "my (odd) name", 7, 12345)
    assert stat.cpu_s == pytest.approx(300 / procfs.CLK_TCK)


def test_proc_stat_counts_busy_and_cpus():
    text = (FIXTURES / "proc_stat.txt").read_text()
    m = procfs.parse_proc_stat(text)
    # user 100 + nice 10 + system 50 + irq 5 + softirq 5 + steal 30; idle 700 + iowait 100.
    assert (m.busy, m.total, m.ncpu) == (200, 1000, 2)


def test_rapl_wraparound():
    assert accounting.rapl_delta_uj(1_000, 5_000, 262_143_328_850) == 4_000
    assert accounting.rapl_delta_uj(262_143_328_000, 1_000, 262_143_328_850) == 1_850


def test_rapl_zones_reads_packages_only(tmp_path):
    for zone, uj in (("intel-rapl:0", 10), ("intel-rapl:0:0", 5), ("intel-rapl:1", 20)):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "energy_uj").write_text(f"{uj}\n")
        (tmp_path / zone / "max_energy_range_uj").write_text("1000\n")
    zones = procfs.rapl_zones(tmp_path)
    assert [z.name for z in zones] == ["intel-rapl:0", "intel-rapl:1"]
    assert procfs.read_rapl(zones)["intel-rapl:1"] == {"energy_uj": 20, "max_energy_range_uj": 1000}


def test_model_matches_the_published_coefficients():
    m = PowerModel()
    assert m.power_w(2, 0.0) == pytest.approx(2 * 0.71 * 1.1)
    assert m.power_w(2, 1.0) == pytest.approx(2 * 4.26 * 1.1)
    idle, dynamic = m.split_j(2, 0.5, 10)
    assert idle == pytest.approx(2 * 0.71 * 1.1 * 10)
    assert idle + dynamic == pytest.approx(m.power_w(2, 0.5) * 10)


def sample(t, busy, total, procs, ncpu=2, rapl=None):
    return {"t": t, "machine": {"busy": busy, "total": total, "ncpu": ncpu, "clk_tck": 100},
            "rapl": rapl or {}, "procs": [
                {"component": c, "pid": pid, "comm": c, "cpu_s": cpu, "start_ticks": st} for c, pid, cpu, st in procs]}


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
    rapl = lambda uj: {"intel-rapl:0": {"energy_uj": uj, "max_energy_range_uj": 2_000_000}}  # noqa: E731
    samples = [sample(0, 0, 0, [], rapl=rapl(1_900_000)), sample(1, 100, 200, [], rapl=rapl(100_000))]
    ivs = accounting.cpu_deltas(samples)
    assert accounting.energy_source(ivs) == "rapl"
    assert ivs[0].rapl_j == pytest.approx(0.2)
    assert accounting.energy_source(accounting.cpu_deltas([sample(0, 0, 0, []), sample(1, 1, 2, [])])) == "model"


def test_percentile_of_locust_histogram():
    hist = {10.0: 50, 20.0: 49, 300.0: 1}
    assert accounting.percentile(hist, 0.5) == 10.0
    assert accounting.percentile(hist, 0.99) == 20.0
    assert accounting.percentile(hist, 1.0) == 300.0
    assert accounting.percentile({}, 0.5) is None


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
                                locust={"accepted": 1000, "p50_ms": 3.0, "p99_ms": 9.0}, idle_settle_s=2.0)
    assert r["energy_source"] == "model"
    assert r["cpu_s"]["kafka"] == pytest.approx(2.0)
    assert r["cpu_s"]["ingest"] == pytest.approx(2.5)
    # Total = idle power × 20 s + 3.55 W·1.1 per busy CPU second (busy: 5 × 1.4 s + 15 × 0.2 s = 10 s).
    assert r["total_j"] == pytest.approx(2 * 0.71 * 1.1 * 20 + 3.55 * 1.1 * 10.0)
    assert r["energy_j"]["ingest"] == pytest.approx(3.55 * 1.1 * 2.5)
    assert r["co2e_g"] == pytest.approx(r["total_j"] / 3.6e6 * 500)
    # Idle: intervals outside [5, 12]; 0.2 CPU s per s of which kafka 0.1.
    assert r["idle_power_w"] == pytest.approx(model.power_w(2, 0.1))
    assert r["idle_component_w"]["kafka"] == pytest.approx(3.55 * 1.1 * 0.1)
    assert r["processes"]["ingest"][:6] == [0, 0, 0, 0, 1, 1]
    assert r["cold_starts"]["count"] == 1 and r["cold_starts"]["latency_ms"] == [12.5]
    assert r["j_per_1000_tweets"] == pytest.approx(r["total_j"])
    assert r["tweets_per_s"] == 200


def test_report_writes_every_file(tmp_path):
    plan = Plan(load_start=5.0, bursts=1, burst_seconds=5.0, gap_seconds=0.0)
    results = [accounting.analyse_mode(m, synthetic_run(), plan, (0.0, 20.0), PowerModel(),
                                       locust={"accepted": 1000, "p50_ms": 3.0, "p99_ms": 9.0},
                                       history=[{"t": 6.0, "users": 5, "rps": 100.0}],
                                       counts={"accepted": 1000, "counted": 1000, "archived": 1000})
               for m in ("always-on", "scale-to-zero")]
    md = report.write(results, tmp_path, {"where": "test"})
    for name in ("report.md", "report.json", "processes.png", "power.png", "energy_components.png",
                 "per_mode.png", "cold_starts.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    text = md.read_text()
    assert "linear power model" in text and "Cloud Carbon Footprint" in text and "Ember" in text
    assert json.loads((tmp_path / "report.json").read_text())["modes"][1]["mode"] == "scale-to-zero"
