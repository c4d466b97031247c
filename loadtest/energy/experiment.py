"""``make energy`` on this machine: for each mode, reset the run (``tools reset``), start the
sampler and ``runner up`` in that mode, drive the Locust burst shape (``tools load``), wait until
every tweet is counted and archived (``tools counts``), stop, and keep the counts; then write the
report.

Each mode's raw data stays in ``target/energy/<mode>/`` (``samples.jsonl``, ``events.jsonl``,
Locust's files, ``run.json``), so ``python -m loadtest.energy report`` can redo the report.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import psutil

from . import accounting, rapl
from .accounting import Counts, LocustStats, ModeFigures, Plan
from .sampler import Sampler, read_samples, stack_pids
from .tools import LoadShape, Tools

MODES = ("always-on", "scale-to-zero")


class ExperimentError(RuntimeError):
    """The experiment could not run, or ran but lost tweets; the message says which."""


@dataclass
class Settings:
    runner: Path = Path("target/release/runner")
    tools: Path = Path("target/release/tools")
    locust: Path = Path(".stack/venv/bin/locust")
    locustfile: Path = Path("loadtest/locustfile.py")
    out: Path = Path("target/energy")
    modes: tuple[str, ...] = MODES
    # The demo's burst: enough requests in flight to scale ingest and producer out.
    users: int = 40
    user_rps: float = 25.0
    # Whole seconds: what `tools load` takes.
    burst_seconds: int = 20
    gap_seconds: int = 30
    bursts: int = 3
    idle_period_ms: int = 10_000
    pre_idle_seconds: float = 15.0
    post_idle_seconds: float = 30.0
    interval: float = 1.0
    run_id: str = "energy"
    base_port: int = 18180
    delivery_timeout_s: float = 180.0

    @property
    def shape(self) -> LoadShape:
        return LoadShape(self.users, self.user_rps, self.burst_seconds, self.gap_seconds, self.bursts)

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> Settings:
        """From ``to_json``'s output; keys it does not know (older files) are ignored."""
        defaults = {f.name: f.default for f in fields(cls)}
        values = {}
        for k, v in data.items():
            if k in defaults:
                values[k] = type(defaults[k])(v) if isinstance(defaults[k], (Path, tuple)) else v
        return cls(**values)


@dataclass
class Run:
    """One mode's ``run.json``: what was run and what came out, for ``analyse_run``."""

    mode: str
    settings: Settings
    plan: Plan
    # The measured window, unix s.
    window: tuple[float, float]
    locust: LocustStats
    counts: Counts
    runner_exit: int | None

    def to_json(self) -> dict:
        return {"mode": self.mode, "settings": self.settings.to_json(), "plan": asdict(self.plan),
                "window": list(self.window), "locust": asdict(self.locust), "counts": asdict(self.counts),
                "runner_exit": self.runner_exit}

    @classmethod
    def from_json(cls, data: dict) -> Run:
        return cls(mode=data["mode"], settings=Settings.from_json(data["settings"]), plan=Plan(**data["plan"]),
                   window=tuple(data["window"]), locust=LocustStats.from_json(data["locust"]),
                   counts=Counts.from_json(data["counts"]), runner_exit=data.get("runner_exit"))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2))

    @classmethod
    def read(cls, path: Path) -> Run:
        return cls.from_json(json.loads(path.read_text()))


def wait_port(port: int, timeout_s: float, process: subprocess.Popen) -> None:
    """Until something accepts TCP on ``port``; a bare connect starts no function in scale-to-zero."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ExperimentError(f"the runner exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise ExperimentError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:.0f} s")


def wait_delivered(tools: Tools, accepted: int, timeout_s: float) -> Counts:
    """Until Redis and MongoDB hold every accepted tweet, or their counts stop moving for 15 s.

    Each poll is one `tools counts` process (a few tens of ms of CPU, in ``other``); by the time
    delivery is over they fall in the settling time after a burst, which idle power leaves out.
    """
    deadline = time.monotonic() + timeout_s
    last, stable_since = None, time.monotonic()
    while True:
        c = tools.counts()
        now = Counts(accepted=accepted, counted=c.total, archived=c.archived, in_kafka=c.in_kafka,
                     dead_lettered=c.dead_lettered)
        if now.counted >= accepted and now.archived >= accepted:
            return now
        if now != last:
            last, stable_since = now, time.monotonic()
        if time.monotonic() - stable_since > 15 or time.monotonic() > deadline:
            return now
        time.sleep(1.0)


def run_mode(settings: Settings, mode: str) -> Path:
    """One mode, end to end; returns its folder with the raw data and ``run.json``."""
    out = settings.out / mode
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    # The runner and the tools read the run's options from the environment (RUNNER_*).
    env = {**os.environ, "RUNNER_RUN_ID": settings.run_id, "RUNNER_BASE_PORT": str(settings.base_port),
           "RUNNER_MODE": mode, "RUNNER_EVENTS": str(out / "events.jsonl")}
    if mode == "scale-to-zero":
        env["RUNNER_IDLE_PERIOD_MS"] = str(settings.idle_period_ms)
    tools = Tools(settings.tools, env)
    print(f"[{mode}] tools reset: topics, counters and archive of run {settings.run_id}", flush=True)
    tools.reset()

    sampler = Sampler(out / "samples.jsonl", settings.interval, stack_pids()).start()
    up = [str(settings.runner), "up"]
    print(f"[{mode}] " + " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("RUNNER_")) + " " + " ".join(up),
          flush=True)
    log = (out / "runner.log").open("w")
    try:
        runner = subprocess.Popen(up, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    except OSError as e:
        sampler.stop()
        log.close()
        raise ExperimentError(
            f"{settings.runner}: {e} (build it with `cargo build --release --workspace --bins`)") from e
    sampler.track("runner", runner.pid)
    try:
        wait_port(settings.base_port, 60, runner)
        time.sleep(settings.pre_idle_seconds)
        print(f"[{mode}] tools load: {settings.bursts} × {settings.burst_seconds} s bursts of "
              f"{settings.users} users at {settings.user_rps} req/s, {settings.gap_seconds} s gaps "
              f"(Locust's output: {out / 'locust.log'})", flush=True)
        spawned = time.time()
        load = tools.load(f"http://127.0.0.1:{settings.base_port}", out, settings.shape, settings.locust,
                          settings.locustfile)
        # The load generator's CPU: `tools load` and the Locust it runs.
        sampler.track("locust", load.process.pid, descendants=True)
        summary = load.wait()
        stats = accounting.locust_stats(out / "locust.json")
        history = accounting.locust_history(out / "locust_stats_history.csv")
        started = [h.t for h in history if h.users > 0]
        # The shape's clock starts when Locust has loaded; history rows come every second.
        load_start = max(spawned, started[0] - 1.0) if started else spawned
        plan = Plan(load_start, settings.bursts, settings.burst_seconds, settings.gap_seconds)
        print(f"[{mode}] {summary.requests} requests, {summary.failures} failed; waiting until every accepted "
              "one is counted and archived", flush=True)
        counts = wait_delivered(tools, stats.accepted, settings.delivery_timeout_s)
        window = (plan.load_start - settings.pre_idle_seconds, plan.load_end + settings.post_idle_seconds)
        time.sleep(max(0.0, window[1] - time.time()))
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGTERM)
            try:
                runner.wait(60)
            except subprocess.TimeoutExpired:
                runner.kill()
        sampler.stop()
        log.close()
    print(f"[{mode}] accepted {counts.accepted}, counted {counts.counted}, archived {counts.archived}, "
          f"dead-lettered {counts.dead_lettered}", flush=True)
    Run(mode, settings, plan, window, stats, counts, runner.returncode).write(out / "run.json")
    return out


def analyse_run(folder: Path, model: accounting.PowerModel, grid_g_per_kwh: float) -> ModeFigures:
    """A mode's figures from its folder (what ``run_mode`` left)."""
    run = Run.read(folder / "run.json")
    settle = run.settings.idle_period_ms / 1000 + 5 if run.mode == "scale-to-zero" else 5
    figures = accounting.analyse_mode(
        run.mode,
        read_samples(folder / "samples.jsonl"),
        run.plan,
        run.window,
        model,
        grid_g_per_kwh,
        events=accounting.read_events(folder / "events.jsonl"),
        locust=run.locust,
        history=accounting.locust_history(folder / "locust_stats_history.csv"),
        counts=run.counts,
        idle_settle_s=settle,
    )
    figures.settings = run.settings.to_json()
    return figures


def run(settings: Settings) -> list[Path]:
    return [run_mode(settings, mode) for mode in settings.modes]


def machine_description() -> dict:
    """What the report says about this machine."""
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    virt = ""
    try:
        virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "vcpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": os.uname().release,
        "virtualisation": virt or "unknown",
        "rapl_readable": bool(rapl.rapl_zones()),
    }
