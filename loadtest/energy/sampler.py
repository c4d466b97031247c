"""The sampler: every ``interval`` seconds, one JSON line with the CPU time of every process of
the stack, the whole machine's CPU time and, where readable, RAPL's energy counters.

CPU time comes from psutil (which reads ``/proc/<pid>/stat`` and ``/proc/stat``). Processes are
named by component: the functions (any child of the runner named as a Knative Service of
``knative/base``, whichever of its threads started it — several of one function at once when the
autoscaler scales it up, each its own entry that ``accounting`` sums, and many over time),
``runner``, ``kafka``, ``redis``,
``ferretdb``, ``jaeger``, ``locust`` (``tools load`` with the Locust it runs) and the
``sampler`` itself. Values are cumulative (CPU seconds since each process started);
``accounting`` takes the differences.

A sample: ``{"t": unix s, "machine": {"busy_s", "total_s", "ncpu"}, "rapl": {zone: {...}},
"procs": [{"component", "pid", "comm", "cpu_s", "started"}]}``, where ``started`` is the
process's start time (unix s), which tells a reused pid from the process that had it before.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import psutil

from . import rapl
from .manifests import FUNCTIONS

# The stack's services and the pid file `dev/stack` writes for each.
STACK_SERVICES = {"kafka": "kafka", "redis": "redis", "ferretdb": "ferretdb", "jaeger": "jaeger"}


def stack_pids(run_dir: Path = Path(".stack/run")) -> dict[str, int]:
    """The stack services' pids from ``.stack/run/<service>.pid``, those that are alive."""
    pids = {}
    for component, service in STACK_SERVICES.items():
        try:
            pid = int((run_dir / f"{service}.pid").read_text().strip())
        except (OSError, ValueError):
            continue
        if psutil.pid_exists(pid):
            pids[component] = pid
    return pids


def read_process(process: psutil.Process, component: str) -> dict | None:
    """One process now (user + system CPU seconds), or ``None`` once it is gone."""
    try:
        with process.oneshot():
            cpu = process.cpu_times()
            return {"component": component, "pid": process.pid, "comm": process.name(),
                    "cpu_s": cpu.user + cpu.system, "started": process.create_time()}
    except psutil.Error:
        return None


def read_machine() -> dict:
    """Busy = user + nice + system + irq + softirq + steal; idle and iowait are not busy.

    guest and guest_nice are already inside user and nice, so they are not added again.
    """
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + t.irq + t.softirq + t.steal
    return {"busy_s": busy, "total_s": busy + t.idle + t.iowait, "ncpu": psutil.cpu_count()}


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def _children(process: psutil.Process, recursive: bool) -> list[psutil.Process]:
    try:
        return process.children(recursive=recursive)
    except psutil.Error:
        return []


def snapshot(tracked: dict[str, int], families: frozenset[str] = frozenset(), rapl_zones=()) -> dict:
    """One sample: the tracked processes (with every descendant for the components in
    ``families``), the runner's function children, the machine, RAPL."""
    procs = []
    for component, pid in tracked.items():
        process = _process(pid)
        if process is None:
            continue
        family = [process, *(_children(process, recursive=True) if component in families else [])]
        procs += [p for p in (read_process(x, component) for x in family) if p is not None]
    runner = _process(tracked["runner"]) if "runner" in tracked else None
    if runner is not None:
        for child in _children(runner, recursive=False):
            p = read_process(child, "")
            if p is not None and p["comm"] in FUNCTIONS:
                procs.append(p | {"component": p["comm"]})
    return {"t": time.time(), "machine": read_machine(), "rapl": rapl.read_rapl(list(rapl_zones)), "procs": procs}


class Sampler:
    """Writes a snapshot to ``path`` every ``interval`` seconds on a thread, until ``stop()``.

    ``track(component, pid)`` adds a process while it runs (the runner and Locust start later);
    with ``descendants=True`` its children and theirs count as the same component.
    """

    def __init__(self, path: Path, interval: float = 1.0, tracked: dict[str, int] | None = None) -> None:
        self.path = Path(path)
        self.interval = interval
        self.tracked = dict(tracked or {})
        self.tracked.setdefault("sampler", os.getpid())
        self.families: frozenset[str] = frozenset()
        self.rapl_zones = rapl.rapl_zones()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="energy-sampler", daemon=True)
        self.samples = 0

    def track(self, component: str, pid: int, descendants: bool = False) -> None:
        with self._lock:
            self.tracked[component] = pid
            if descendants:
                self.families |= {component}

    def start(self) -> Sampler:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self, out) -> None:
        with self._lock:
            tracked, families = dict(self.tracked), self.families
        out.write(json.dumps(snapshot(tracked, families, self.rapl_zones)) + "\n")
        out.flush()
        self.samples += 1

    def _run(self) -> None:
        # Ticks on a fixed grid, so a slow sample does not shift the ones after it.
        next_tick = time.monotonic()
        with self.path.open("w") as out:
            while True:
                self._sample(out)
                next_tick += self.interval
                if self._stop.wait(max(0.0, next_tick - time.monotonic())):
                    # One last sample at the stop, so the series covers the whole run.
                    self._sample(out)
                    return


def read_samples(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
