"""The sampler: every ``interval`` seconds, one JSON line with the CPU time of every process of
the stack, the whole machine's jiffies and, where readable, RAPL's energy counters.

Processes are named by component: the four functions (any process named ``ingest``,
``producer``, ``counter`` or ``archiver`` whose parent is the runner — in scale-to-zero there are
many over time), ``runner``, ``kafka``, ``redis``, ``ferretdb``, ``jaeger``, ``locust`` and the
``sampler`` itself. Values are cumulative (CPU seconds since each process started); ``accounting``
takes the differences.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from . import procfs

FUNCTIONS = ("ingest", "producer", "counter", "archiver")
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
        if procfs.read_pid(pid) is not None:
            pids[component] = pid
    return pids


def snapshot(tracked: dict[str, int], proc: Path = Path("/proc"), rapl_zones=()) -> dict:
    """One sample: the tracked processes, the runner's function children, the machine, RAPL."""
    machine = procfs.read_machine(proc)
    procs = []
    for component, pid in tracked.items():
        stat = procfs.read_pid(pid, proc)
        if stat is not None:
            procs.append({"component": component, "pid": pid, "comm": stat.comm, "cpu_s": stat.cpu_s,
                          "start_ticks": stat.start_ticks})
    runner = tracked.get("runner")
    if runner is not None:
        for pid in procfs.all_pids(proc):
            stat = procfs.read_pid(pid, proc)
            if stat is not None and stat.ppid == runner and stat.comm in FUNCTIONS:
                procs.append({"component": stat.comm, "pid": pid, "comm": stat.comm, "cpu_s": stat.cpu_s,
                              "start_ticks": stat.start_ticks})
    return {
        "t": time.time(),
        "machine": {"busy": machine.busy, "total": machine.total, "ncpu": machine.ncpu,
                    "clk_tck": procfs.CLK_TCK},
        "rapl": procfs.read_rapl(list(rapl_zones)),
        "procs": procs,
    }


class Sampler:
    """Writes a snapshot to ``path`` every ``interval`` seconds on a thread, until ``stop()``.

    ``track(component, pid)`` adds a process while it runs (the runner and Locust start later).
    """

    def __init__(self, path: Path, interval: float = 1.0, tracked: dict[str, int] | None = None) -> None:
        self.path = Path(path)
        self.interval = interval
        self.tracked = dict(tracked or {})
        self.tracked.setdefault("sampler", os.getpid())
        self.rapl_zones = procfs.rapl_zones()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="energy-sampler", daemon=True)
        self.samples = 0

    def track(self, component: str, pid: int) -> None:
        with self._lock:
            self.tracked[component] = pid

    def start(self) -> "Sampler":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        # Ticks on a fixed grid, so a slow sample does not shift the ones after it.
        next_tick = time.monotonic()
        with self.path.open("w") as out:
            while True:
                with self._lock:
                    tracked = dict(self.tracked)
                out.write(json.dumps(snapshot(tracked, rapl_zones=self.rapl_zones)) + "\n")
                out.flush()
                self.samples += 1
                next_tick += self.interval
                if self._stop.wait(max(0.0, next_tick - time.monotonic())):
                    # One last sample at the stop, so the series covers the whole run.
                    with self._lock:
                        tracked = dict(self.tracked)
                    out.write(json.dumps(snapshot(tracked, rapl_zones=self.rapl_zones)) + "\n")
                    return


def read_samples(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]
