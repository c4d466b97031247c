"""End to end: a short experiment in both modes on the real local stack (select with
``-m experiment``; the stack must be up and the binaries built — ``ENERGY_RUNNER`` and
``ENERGY_TOOLS``, default ``target/release/runner`` and ``target/release/tools``). Two 10 s bursts
with 20 s gaps and a 5 s idle period."""

import json
import os
from pathlib import Path

import pytest

from ..__main__ import main
from ..manifests import FUNCTIONS

ROOT = Path(__file__).parents[3]


@pytest.mark.experiment
def test_short_experiment(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    runner = Path(os.environ.get("ENERGY_RUNNER", "target/release/runner"))
    tools = Path(os.environ.get("ENERGY_TOOLS", "target/release/tools"))
    # Not a skip: without the binaries this test must fail, and say why.
    for binary in (runner, tools):
        assert binary.exists(), f"{binary} is missing: cargo build --workspace --bins"
    out = tmp_path / "energy"
    code = main(["run", "--runner", str(runner), "--tools", str(tools), "--out", str(out), "--run-id", "energy-test",
                 "--base-port", "18280", "--users", "5", "--user-rps", "10", "--bursts", "2",
                 "--burst-seconds", "10", "--gap-seconds", "20", "--idle-period-ms", "5000",
                 "--pre-idle-seconds", "8", "--post-idle-seconds", "15"])
    for name in ("report.md", "report.json", "replicas.png", "processes.png", "power.png", "energy_components.png",
                 "per_mode.png", "cold_starts.png"):
        assert (out / name).stat().st_size > 0, name
    figures = {m["mode"]: m for m in json.loads((out / "report.json").read_text())["modes"]}
    for mode, r in figures.items():
        c = r["counts"]
        assert c["accepted"] > 0 and c["accepted"] == c["counted"] == c["archived"], (mode, c)
        assert c["dead_lettered"] == 0 and c["in_kafka"] == c["accepted"], (mode, c)
    assert code == 0

    s2z, always = figures["scale-to-zero"], figures["always-on"]
    # During each gap, after the idle period (5 s) and a margin, no function process is running.
    start = s2z["window_unix_s"][0]
    gaps = [(b1 + 5 + 3, b1 + 20) for (_, b1) in s2z["bursts_unix_s"][:-1]]
    gaps.append((s2z["bursts_unix_s"][-1][1] + 5 + 3, s2z["window_unix_s"][1]))
    p = s2z["processes"]
    in_gaps = [sum(p[f][i] for f in FUNCTIONS) for i, t in enumerate(p["t"])
               if any(g0 <= t + start <= g1 for g0, g1 in gaps)]
    assert in_gaps, "no sample fell in a gap"
    assert sum(1 for n in in_gaps if n == 0) >= 0.8 * len(in_gaps), in_gaps
    # Cold starts after the gaps: at least one per burst (the first request of each wakes ingest).
    cold = s2z["cold_starts"]
    assert cold["by_function"]["ingest"] >= 2, cold
    for b0, _ in s2z["bursts_unix_s"]:
        assert any(b0 - 2 <= t + start <= b0 + 10 for t in cold["times_s"]), (b0, cold["times_s"])
    # The runner's replicas agree: every function at zero at some time in every gap, and ingest
    # started from zero for each burst.
    for f, steps in s2z["replicas"]["steps"].items():
        for g0, g1 in gaps:
            at_g0 = [n for t, n in steps if t <= g0 - start][-1:]
            assert at_g0 == [0] or any(g0 - start < t <= g1 - start and n == 0 for t, n in steps), (f, g0, steps)
    assert s2z["replicas"]["from_zero"]["ingest"] >= 2, s2z["replicas"]
    assert always["cold_starts"]["count"] == 0
    # Always-on keeps at least one process of each function (the autoscaler may add more).
    assert all(always["processes"][f][i] >= 1 for f in FUNCTIONS for i in range(len(always["processes"]["t"])))
    assert all(n >= 1 for f in FUNCTIONS for _, n in always["replicas"]["steps"][f]), always["replicas"]["steps"]
    assert all(always["replicas"]["from_zero"][f] == 0 for f in FUNCTIONS)
