"""From samples to figures: CPU-time deltas per component, machine energy (RAPL or a linear power
model), Kepler-style attribution by CPU-time share, CO2e, and one mode's result as a JSON-ready dict.

CPU seconds are measured facts (``/proc``). Joules are estimates: RAPL counts the CPU package
only, and the model is a published average, not this machine.

**Attribution** (as Kepler 0.10+ does for pods): each interval's machine energy is split into an
idle part and a dynamic part. With the model the idle part is the power at 0 % utilisation
(``n_vcpu × idle_w × PUE``); with RAPL it is ``energy × (1 − utilisation)`` (Kepler's node
active/idle split). The dynamic part goes to each component by its share of the machine's busy
CPU time in that interval; what no tracked process used (the kernel, other processes) is
``other``. The idle part is **not** attributed to components: it is reported as its own row,
``idle (machine)``, paid whether or not anything runs — so a component's joules are what running
it added, and the total is the whole machine.

**Replicas** come from the runner's scaling events (``--events``): ``start``, ``ready``, ``stop``
and ``scale`` carry ``replicas``, the function's processes alive right after the event, so
several processes of one function at once need no pairing of starts with stops. Replica-seconds
are that step function's integral over the window.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from pathlib import Path

import numpy as np

from .manifests import FUNCTIONS

# Cloud Carbon Footprint's per-vCPU coefficients for GCP (median over its microarchitectures)
# and GCP's PUE, from https://www.cloudcarbonfootprint.org/docs/methodology/ ("Energy
# Estimate (Watt-Hours)", compute: Min Watts 0.71, Max Watts 4.26; PUE 1.1).
CCF_SOURCE = "Cloud Carbon Footprint methodology, GCP coefficients (https://www.cloudcarbonfootprint.org/docs/methodology/)"
IDLE_W_PER_VCPU = 0.71
MAX_W_PER_VCPU = 4.26
PUE = 1.1
# World average lifecycle intensity of electricity generation in 2023: 481 gCO2e/kWh, Ember,
# Global Electricity Review 2024 (https://ember-climate.org/insights/research/global-electricity-review-2024/).
GRID_G_PER_KWH = 481.0
GRID_SOURCE = "Ember, Global Electricity Review 2024: world average 2023 (https://ember-climate.org/insights/research/global-electricity-review-2024/)"

INFRASTRUCTURE = ("runner", "kafka", "redis", "ferretdb", "jaeger")
HARNESS = ("locust", "sampler")
OTHER = "other"
IDLE = "idle (machine)"
COMPONENTS = FUNCTIONS + INFRASTRUCTURE + HARNESS + (OTHER,)


@dataclass(frozen=True)
class PowerModel:
    """P = n_vcpu × (idle_w + (max_w − idle_w) × utilisation) × PUE, in watts."""

    idle_w: float = IDLE_W_PER_VCPU
    max_w: float = MAX_W_PER_VCPU
    pue: float = PUE

    def power_w(self, ncpu: int, utilisation: float) -> float:
        return ncpu * (self.idle_w + (self.max_w - self.idle_w) * utilisation) * self.pue

    def split_j(self, ncpu: int, utilisation: float, seconds: float) -> tuple[float, float]:
        """(idle joules, dynamic joules) over ``seconds`` at ``utilisation``."""
        idle = ncpu * self.idle_w * self.pue * seconds
        dynamic = ncpu * (self.max_w - self.idle_w) * utilisation * self.pue * seconds
        return idle, dynamic


def rapl_delta_uj(previous: int, current: int, max_range: int) -> int:
    """Energy between two readings of a RAPL counter, which wraps to 0 after ``max_range``."""
    if current >= previous:
        return current - previous
    return current + max_range - previous


@dataclass
class Interval:
    """What happened between two samples."""

    t0: float
    t1: float
    ncpu: int
    # CPU seconds the whole machine was busy (all CPUs together), and the machine's CPU seconds.
    busy_s: float
    capacity_s: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    # Function processes alive at the end of the interval.
    processes: dict[str, int] = field(default_factory=dict)
    # RAPL joules of every readable package, or None when no counter was readable.
    rapl_j: float | None = None

    @property
    def dt(self) -> float:
        return self.t1 - self.t0

    @property
    def utilisation(self) -> float:
        return min(1.0, self.busy_s / self.capacity_s) if self.capacity_s > 0 else 0.0


def cpu_deltas(samples: list[dict]) -> list[Interval]:
    """CPU seconds per component between consecutive samples.

    A process is known by (pid, start time), so a reused pid is a new process. One that appears
    after the first sample is new: all its CPU time so far belongs to the interval it appeared
    in. A process that exits between two samples loses what it used since the previous one
    (at most one interval of an exiting function; the runner reaps it before we can read it).
    """
    intervals = []
    for prev, cur in pairwise(samples):
        pm, cm = prev["machine"], cur["machine"]
        busy = max(0.0, cm["busy_s"] - pm["busy_s"])
        capacity = max(0.0, cm["total_s"] - pm["total_s"])
        before = {(p["pid"], p["started"]): p["cpu_s"] for p in prev["procs"]}
        cpu: dict[str, float] = {}
        processes: dict[str, int] = {f: 0 for f in FUNCTIONS}
        for p in cur["procs"]:
            key = (p["pid"], p["started"])
            used = p["cpu_s"] - before[key] if key in before else p["cpu_s"]
            cpu[p["component"]] = cpu.get(p["component"], 0.0) + max(0.0, used)
            if p["component"] in processes:
                processes[p["component"]] += 1
        rapl = None
        if cur.get("rapl") and prev.get("rapl"):
            zones = set(cur["rapl"]) & set(prev["rapl"])
            if zones:
                rapl = sum(
                    rapl_delta_uj(prev["rapl"][z]["energy_uj"], cur["rapl"][z]["energy_uj"],
                                  cur["rapl"][z]["max_energy_range_uj"])
                    for z in zones
                ) / 1e6
        intervals.append(Interval(prev["t"], cur["t"], cm["ncpu"], busy, capacity, cpu, processes, rapl))
    return intervals


def interval_energy(interval: Interval, model: PowerModel, source: str) -> tuple[float, float]:
    """(idle joules, dynamic joules) of one interval, from RAPL (× PUE) or from the model."""
    if source == "rapl" and interval.rapl_j is not None:
        total = interval.rapl_j * model.pue
        return total * (1 - interval.utilisation), total * interval.utilisation
    return model.split_j(interval.ncpu, interval.utilisation, interval.dt)


def attribute(interval: Interval, dynamic_j: float) -> dict[str, float]:
    """Dynamic joules per component by its share of the machine's busy CPU time; the rest is ``other``.

    When the processes' deltas add up to more than the machine's (the two are read a few
    microseconds apart), they are scaled down to the machine's busy time.
    """
    tracked = sum(interval.cpu_s.values())
    busy = max(interval.busy_s, tracked)
    if busy <= 0:
        return {OTHER: dynamic_j} if dynamic_j else {}
    out = {c: dynamic_j * s / busy for c, s in interval.cpu_s.items()}
    out[OTHER] = out.get(OTHER, 0.0) + dynamic_j * (busy - tracked) / busy
    return out


def clip(interval: Interval, start: float, end: float) -> float:
    """The share of ``interval`` inside [start, end]."""
    overlap = min(interval.t1, end) - max(interval.t0, start)
    return max(0.0, overlap) / interval.dt if interval.dt > 0 else 0.0


def energy_source(intervals: list[Interval]) -> str:
    return "rapl" if intervals and all(i.rapl_j is not None for i in intervals) else "model"


@dataclass(frozen=True)
class Plan:
    """The load's shape, to tell burst time from idle time."""

    load_start: float
    bursts: int
    burst_seconds: float
    gap_seconds: float

    def bursts_at(self) -> list[tuple[float, float]]:
        period = self.burst_seconds + self.gap_seconds
        return [(self.load_start + k * period, self.load_start + k * period + self.burst_seconds)
                for k in range(self.bursts)]

    @property
    def load_end(self) -> float:
        return self.load_start + self.bursts * self.burst_seconds + max(0, self.bursts - 1) * self.gap_seconds


def percentile(values: Sequence[float], q: float, weights: Sequence[int] | None = None) -> float | None:
    """The ``q``-quantile (0 ≤ q ≤ 1) of ``values``, each counted ``weights[i]`` times; ``None``
    when there is nothing to count.

    Definition: nearest rank — the smallest value that at least a fraction ``q`` of the
    observations do not exceed (Hyndman & Fan's definition 1, numpy's ``inverted_cdf``), so it is
    always an observed value, never an interpolation. The tools' percentiles
    (``tools/src/state.rs``, ``tools/src/load.rs``) use the same definition.
    """
    if not values or (weights is not None and sum(weights) == 0):
        return None
    return float(np.quantile(values, q, method="inverted_cdf", weights=weights))


@dataclass(frozen=True)
class LocustStats:
    """Accepted and failed requests and the latency percentiles of one Locust run."""

    requests: int
    accepted: int
    failed: int
    p50_ms: float | None
    p99_ms: float | None

    @classmethod
    def from_json(cls, data: dict) -> LocustStats:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def locust_stats(path: Path) -> LocustStats:
    """From Locust's ``--json-file``: every endpoint together, percentiles from its
    ``{ms: count}`` histogram."""
    entries = json.loads(Path(path).read_text())
    requests = sum(e["num_requests"] for e in entries)
    failures = sum(e["num_failures"] for e in entries)
    hist: dict[float, int] = {}
    for e in entries:
        for ms, n in e["response_times"].items():
            hist[float(ms)] = hist.get(float(ms), 0) + n
    ms, counts = list(hist), list(hist.values())
    return LocustStats(requests=requests, accepted=requests - failures, failed=failures,
                       p50_ms=percentile(ms, 0.50, counts), p99_ms=percentile(ms, 0.99, counts))


@dataclass(frozen=True)
class LoadPoint:
    """One row of Locust's history: users and requests/s at ``t`` (unix s, or s since the window's start)."""

    t: float
    users: int
    rps: float


def locust_history(path: Path) -> list[LoadPoint]:
    """Users and requests/s over time from Locust's ``--csv`` ``_stats_history.csv`` (aggregated rows)."""
    rows = []
    if not Path(path).exists():
        return rows
    with Path(path).open() as f:
        for row in csv.DictReader(f):
            if row.get("Name") != "Aggregated":
                continue
            rows.append(LoadPoint(t=float(row["Timestamp"]), users=int(float(row["User Count"])),
                                  rps=float(row["Requests/s"] or 0)))
    return rows


@dataclass(frozen=True)
class Counts:
    """Where the accepted tweets ended up, once delivery was over (or had stopped moving)."""

    accepted: int
    counted: int
    archived: int
    # Records in Kafka's topic of tweets and in its dead-letter topic.
    in_kafka: int | None = None
    dead_lettered: int | None = None

    @classmethod
    def from_json(cls, data: dict) -> Counts:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @property
    def delivered(self) -> bool:
        """Every accepted tweet counted and archived, none twice."""
        return self.accepted == self.counted == self.archived


def read_events(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# How each kind of the runner's scaling events changes the number of a function's processes
# alive (a started process counts before it is ready); ``scale`` is the autoscaler's decision.
REPLICA_DELTA = {"start": 1, "ready": 0, "stop": -1, "scale": 0}


@dataclass
class Replicas:
    """Replicas (processes on one machine, pods on Kubernetes) of each function over the window.

    ``steps[f]`` is a step function: ``[t, n]`` means ``n`` replicas from ``t`` (s since the
    window's start) until the next point, the last until the window's end; the first point is
    at 0 where the count is known there (always, from the runner's events). ``seconds`` is its
    integral over the window (replica-seconds).
    """

    steps: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    # The autoscaler's desired count whenever it changed, ``[t, desired, panic]`` (the one in
    # force at the window's start at 0); empty where the runner does not say.
    desired: dict[str, list[tuple[float, int, bool]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    max: dict[str, int] = field(default_factory=dict)
    # Process starts inside the window, and those of them that took the function from zero
    # replicas; None where they are not known (Kubernetes: only sampled pod counts).
    starts: dict[str, int] | None = None
    from_zero: dict[str, int] = field(default_factory=dict)


def step_integral(points: Sequence[tuple[float, float]], end: float) -> float:
    """The integral of a step function given as ``(t, value)`` points (sorted) up to ``end``."""
    if not points:
        return 0.0
    ends = [t for t, _ in points[1:]] + [end]
    return sum(v * max(0.0, t1 - t0) for (t0, v), t1 in zip(points, ends, strict=True))


def _alive_after(events: list[dict]) -> tuple[int, list[int]]:
    """For one function's scaling events in order: the processes alive before the first one, and
    after each.

    The runner writes ``replicas`` (alive right after the event) on every event; before the first
    one there were that many minus what the event changed (a stop with 0 after it means one was
    alive: it had started before the file, or the window, began). Events without ``replicas``
    (older runners) are counted: +1 per start, −1 per stop, from 0 at the file's beginning.
    """
    first = events[0] if events else None
    before = (first["replicas"] - REPLICA_DELTA[first["event"]]
              if first is not None and first.get("replicas") is not None else 0)
    alive, after = before, []
    for e in events:
        alive = e["replicas"] if e.get("replicas") is not None else max(0, alive + REPLICA_DELTA[e["event"]])
        after.append(alive)
    return max(0, before), after


def replicas_from_events(events: list[dict], window: tuple[float, float],
                         functions: Sequence[str] = FUNCTIONS) -> Replicas:
    """Each function's replicas over ``window`` (unix s) from the runner's scaling events."""
    start, end = window
    out = Replicas(starts={})
    for f in functions:
        mine = sorted((e for e in events if e.get("function") == f and e.get("event") in REPLICA_DELTA),
                      key=lambda e: e["t_ms"])
        alive, after = _alive_after(mine)
        steps: list[tuple[float, int]] = []
        highest, starts, from_zero = alive, 0, 0
        desired: list[tuple[float, int, bool]] = []
        for e, n in zip(mine, after, strict=True):
            t = e["t_ms"] / 1000
            if t > end:
                break
            if t <= start:
                alive = n
                if e["event"] == "scale":
                    desired = [(0.0, e["desired"], bool(e.get("panic")))]
                continue
            if not steps:
                steps.append((0.0, alive))
                highest = alive
            if e["event"] == "start":
                starts += 1
                # Alive right after a start is one more than before it.
                from_zero += int(n == 1)
            if e["event"] == "scale" and (not desired or desired[-1][1:] != (e["desired"], bool(e.get("panic")))):
                desired.append((t - start, e["desired"], bool(e.get("panic"))))
            highest = max(highest, n)
            # Events of the same millisecond leave one point: the last count.
            if steps[-1][0] == t - start:
                steps[-1] = (t - start, n)
                if len(steps) > 1 and steps[-2][1] == n:
                    steps.pop()
            elif steps[-1][1] != n:
                steps.append((t - start, n))
        if not steps:
            steps, highest = [(0.0, alive)], alive
        out.steps[f] = steps
        out.desired[f] = desired
        out.seconds[f] = step_integral(steps, end - start)
        out.max[f] = highest
        out.starts[f] = starts
        out.from_zero[f] = from_zero
    return out


@dataclass
class Series:
    """Per interval (``t`` = its end, s since the window's start): machine power, utilisation and
    each component's power."""

    t: list[float] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)
    utilisation: list[float] = field(default_factory=list)
    component_w: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class ColdStarts:
    count: int = 0
    by_function: dict[str, int] = field(default_factory=dict)
    # Request arrival → the function's response headers, per request that waited for a start.
    latency_ms: list[float] = field(default_factory=list)
    # When each happened, s since the window's start.
    times_s: list[float] = field(default_factory=list)
    # Exec → readiness of every process start.
    ready_ms: list[float] = field(default_factory=list)


@dataclass
class ModeFigures:
    """One mode's figures over its window: what the report shows, and ``report.json`` holds."""

    mode: str
    energy_source: str
    window_unix_s: tuple[float, float]
    duration_s: float
    ncpu: int | None
    # Measured CPU seconds per component, and "machine (busy)".
    cpu_s: dict[str, float]
    energy_j: dict[str, float]
    total_j: float
    mean_power_w: float | None
    co2e_g: float
    idle_power_w: float | None
    idle_component_w: dict[str, float]
    idle_seconds: float | None
    bursts_unix_s: list[tuple[float, float]]
    series: Series
    # "t" (s since the window's start) and, per function, its running processes (or pods).
    processes: dict[str, list[float]]
    function_process_seconds: dict[str, float]
    load: list[LoadPoint]
    cold_starts: ColdStarts
    # Replicas per function as the autoscaler ran them (the runner's events, Knative's pod count).
    replicas: Replicas
    locust: LocustStats | None
    tweets_per_s: float | None
    counts: Counts | None
    j_per_1000_tweets: float | None
    pipeline_j: float
    pipeline_j_per_1000_tweets: float | None
    # The power model (None where energy is measured elsewhere, as by Kepler).
    model: PowerModel | None
    grid_g_per_kwh: float
    # The local run's settings, as run.json saved them.
    settings: dict | None = None

    def to_json(self) -> dict:
        return asdict(self)


def analyse_mode(
    mode: str,
    samples: list[dict],
    plan: Plan,
    window: tuple[float, float],
    model: PowerModel,
    grid_g_per_kwh: float = GRID_G_PER_KWH,
    events: list[dict] | None = None,
    locust: LocustStats | None = None,
    history: list[LoadPoint] | None = None,
    counts: Counts | None = None,
    idle_settle_s: float = 0.0,
) -> ModeFigures:
    """One mode's figures over ``window`` (unix seconds).

    Idle power is the mean power over the window's intervals that overlap no burst (nor the
    ``idle_settle_s`` after one: in-flight deliveries and, in scale-to-zero, the idle period).
    """
    events = events or []
    intervals = cpu_deltas(samples)
    source = energy_source(intervals)
    start, end = window
    cpu: dict[str, float] = {}
    energy: dict[str, float] = {}
    idle_w_parts: dict[str, float] = {}
    idle_seconds = 0.0
    series = Series(component_w={c: [] for c in (*COMPONENTS, IDLE)})
    busy_windows = [(b0, b1 + idle_settle_s) for b0, b1 in plan.bursts_at()]
    for iv in intervals:
        share = clip(iv, start, end)
        if share <= 0:
            continue
        idle_j, dyn_j = interval_energy(iv, model, source)
        parts = attribute(iv, dyn_j)
        parts[IDLE] = idle_j
        for c, s in iv.cpu_s.items():
            cpu[c] = cpu.get(c, 0.0) + s * share
        cpu["machine (busy)"] = cpu.get("machine (busy)", 0.0) + iv.busy_s * share
        for c, j in parts.items():
            energy[c] = energy.get(c, 0.0) + j * share
        series.t.append(iv.t1 - start)
        series.power_w.append((idle_j + dyn_j) / iv.dt)
        series.utilisation.append(iv.utilisation)
        for c, values in series.component_w.items():
            values.append(parts.get(c, 0.0) / iv.dt)
        if share == 1.0 and not any(iv.t0 < b1 and iv.t1 > b0 for b0, b1 in busy_windows):
            idle_seconds += iv.dt
            for c, j in parts.items():
                idle_w_parts[c] = idle_w_parts.get(c, 0.0) + j
    total_j = sum(energy.values())
    inside = [s for s in samples if start <= s["t"] <= end]
    processes: dict[str, list[float]] = {"t": [s["t"] - start for s in inside]}
    for f in FUNCTIONS:
        processes[f] = [sum(1 for p in s["procs"] if p["component"] == f) for s in inside]
    cold = [e for e in events if e.get("event") == "cold_start" and start <= e["t_ms"] / 1000 <= end + 600]
    ready = [e for e in events if e.get("event") == "ready"]
    accepted = locust.accepted if locust else None
    burst_s = plan.bursts * plan.burst_seconds
    pipeline_j = sum(energy.get(c, 0.0) for c in FUNCTIONS + INFRASTRUCTURE)
    step = samples[1]["t"] - samples[0]["t"] if len(samples) > 1 else 0
    return ModeFigures(
        mode=mode,
        energy_source=source,
        window_unix_s=(start, end),
        duration_s=end - start,
        ncpu=intervals[0].ncpu if intervals else None,
        cpu_s=cpu,
        energy_j=energy,
        total_j=total_j,
        mean_power_w=total_j / (end - start) if end > start else None,
        co2e_g=total_j / 3.6e6 * grid_g_per_kwh,
        idle_power_w=sum(idle_w_parts.values()) / idle_seconds if idle_seconds else None,
        idle_component_w={c: j / idle_seconds for c, j in idle_w_parts.items()} if idle_seconds else {},
        idle_seconds=idle_seconds,
        bursts_unix_s=plan.bursts_at(),
        series=series,
        processes=processes,
        function_process_seconds={f: sum(processes[f]) * step for f in FUNCTIONS},
        load=[LoadPoint(h.t - start, h.users, h.rps) for h in history or []],
        cold_starts=ColdStarts(
            count=len(cold),
            by_function={f: sum(1 for e in cold if e.get("function") == f) for f in FUNCTIONS},
            latency_ms=[e["latency_ms"] for e in cold if e.get("latency_ms") is not None],
            times_s=[e["t_ms"] / 1000 - start for e in cold],
            ready_ms=[e["ready_ms"] for e in ready if e.get("ready_ms") is not None],
        ),
        replicas=replicas_from_events(events, window),
        locust=locust,
        tweets_per_s=accepted / burst_s if accepted is not None and burst_s else None,
        counts=counts,
        j_per_1000_tweets=total_j / accepted * 1000 if accepted else None,
        pipeline_j=pipeline_j,
        pipeline_j_per_1000_tweets=pipeline_j / accepted * 1000 if accepted else None,
        model=model,
        grid_g_per_kwh=grid_g_per_kwh,
    )
