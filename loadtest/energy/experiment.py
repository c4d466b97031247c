"""``make energy`` on this machine: for each mode, reset the data, start the sampler and
``runner up --mode M``, drive the Locust burst shape, wait until every tweet is counted and
archived, stop, and collect the counts; then write the report.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import accounting, procfs
from .sampler import Sampler, stack_pids

MODES = ("always-on", "scale-to-zero")


class ExperimentError(RuntimeError):
    """The experiment could not run, or ran but lost tweets; the message says which."""


@dataclass
class Settings:
    runner: Path = Path("target/release/runner")
    locust: Path = Path(".stack/venv/bin/locust")
    locustfile: Path = Path("loadtest/locustfile.py")
    out: Path = Path("target/energy")
    modes: tuple[str, ...] = MODES
    users: int = 20
    user_rps: float = 10.0
    burst_seconds: float = 20.0
    gap_seconds: float = 30.0
    bursts: int = 3
    idle_period_ms: int = 10_000
    pre_idle_seconds: float = 15.0
    post_idle_seconds: float = 30.0
    interval: float = 1.0
    run_id: str = "energy"
    base_port: int = 18180
    # The same variables the runner and the functions read.
    redis_url: str = field(default_factory=lambda: os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    mongodb_uri: str = field(default_factory=lambda: os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017"))
    delivery_timeout_s: float = 180.0


def runner_has_modes(runner: Path) -> bool:
    """Whether ``runner up`` takes ``--mode`` (and ``--events``)."""
    if not runner.exists():
        raise ExperimentError(f"{runner} does not exist: build it with `cargo build --release --workspace --bins`")
    helps = (subprocess.run([str(runner), *args, "--help"], capture_output=True, text=True).stdout
             for args in ([], ["up"]))
    return any("--mode" in h for h in helps)


def require_modes(runner: Path) -> None:
    """Fail with a clear message when the runner has no ``up --mode`` (the scale-to-zero mode)."""
    if not runner.exists():
        raise ExperimentError(f"{runner} does not exist: build it with `cargo build --release --workspace --bins`")
    if not runner_has_modes(runner):
        raise ExperimentError(
            f"`{runner} up` has no --mode option: the energy experiment needs the runner's "
            "scale-to-zero mode (`runner up --mode always-on|scale-to-zero --events PATH`); "
            "rebuild the runner once it has landed"
        )


def redis_get(url: str, key: str) -> str | None:
    """GET one key over RESP, without a client library (``redis://host:port/db``)."""
    rest = url.split("://", 1)[1]
    hostport, _, db = rest.partition("/")
    host, _, port = hostport.partition(":")

    def command(sock, *args: str) -> bytes:
        sock.sendall(f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args))
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(4096)
        head, _, body = data.partition(b"\r\n")
        if head.startswith(b"$"):
            n = int(head[1:])
            if n < 0:
                return b""
            while len(body) < n + 2:
                body += sock.recv(4096)
            return body[:n]
        if head.startswith(b"-"):
            raise ExperimentError(f"Redis: {head[1:].decode()}")
        return head[1:]

    with socket.create_connection((host, int(port or 6379)), timeout=5) as sock:
        if db and db != "0":
            command(sock, "SELECT", db)
        value = command(sock, "GET", key)
    return value.decode() if value else None


def counted(settings: Settings) -> int:
    return int(redis_get(settings.redis_url, f"weather:{settings.run_id}:total") or 0)


def archived(settings: Settings) -> int:
    import pymongo  # only the experiment needs it; the unit tests do not

    client = pymongo.MongoClient(settings.mongodb_uri, serverSelectionTimeoutMS=5000)
    try:
        return client[f"weather_{settings.run_id}"]["tweets"].count_documents({})
    finally:
        client.close()


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


def wait_delivered(settings: Settings, accepted: int) -> dict:
    """Until Redis and MongoDB hold every accepted tweet, or their counts stop moving for 15 s."""
    deadline = time.monotonic() + settings.delivery_timeout_s
    last, stable_since = None, time.monotonic()
    while True:
        now = {"counted": counted(settings), "archived": archived(settings)}
        if now["counted"] >= accepted and now["archived"] >= accepted:
            return now
        if now != last:
            last, stable_since = now, time.monotonic()
        if time.monotonic() - stable_since > 15 or time.monotonic() > deadline:
            return now
        time.sleep(0.5)


def run_mode(settings: Settings, mode: str) -> Path:
    """One mode, end to end; returns its folder with the raw data and ``run.json``."""
    out = settings.out / mode
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    # The runner reads every option from its environment too (RUNNER_*), which holds whether the
    # options sit before or after `up`.
    env = {**os.environ, "RUNNER_RUN_ID": settings.run_id, "RUNNER_BASE_PORT": str(settings.base_port)}
    print(f"[{mode}] resetting topics, counters and archive (run id {settings.run_id})", flush=True)
    subprocess.run([str(settings.runner), "reset"], check=True, env=env)

    sampler = Sampler(out / "samples.jsonl", settings.interval, stack_pids()).start()
    if runner_has_modes(settings.runner):
        env |= {"RUNNER_MODE": mode, "RUNNER_EVENTS": str(out / "events.jsonl")}
        if mode == "scale-to-zero":
            env["RUNNER_IDLE_PERIOD_MS"] = str(settings.idle_period_ms)
    elif mode != "always-on":
        raise ExperimentError(f"this runner has no {mode} mode")
    up = [str(settings.runner), "up"]
    print(f"[{mode}] " + " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("RUNNER_")) + " " + " ".join(up),
          flush=True)
    log = (out / "runner.log").open("w")
    runner = subprocess.Popen(up, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    sampler.track("runner", runner.pid)
    try:
        wait_port(settings.base_port, 60, runner)
        time.sleep(settings.pre_idle_seconds)
        locust_cmd = [
            str(settings.locust), "-f", str(settings.locustfile), "--headless",
            "--host", f"http://127.0.0.1:{settings.base_port}",
            "--json-file", str(out / "locust"), "--csv", str(out / "locust"),
            "--burst-users", str(settings.users), "--burst-spawn-rate", str(settings.users),
            "--burst-seconds", str(settings.burst_seconds), "--gap-seconds", str(settings.gap_seconds),
            "--bursts", str(settings.bursts), "--user-rps", str(settings.user_rps),
            "--stop-timeout", "10", "--only-summary",
        ]
        print(f"[{mode}] Locust: {settings.bursts} × {settings.burst_seconds:.0f} s bursts of "
              f"{settings.users} users at {settings.user_rps} req/s, {settings.gap_seconds:.0f} s gaps", flush=True)
        spawned = time.time()
        locust = subprocess.Popen(locust_cmd, stdin=subprocess.DEVNULL)
        sampler.track("locust", locust.pid)
        code = locust.wait()
        # Locust exits 1 when a request failed; the counts below report those.
        if code not in (0, 1):
            raise ExperimentError(f"locust failed with exit code {code}")
        stats = accounting.locust_stats(out / "locust.json")
        history = accounting.locust_history(out / "locust_stats_history.csv")
        started = [h["t"] for h in history if h["users"] > 0]
        # The shape's clock starts when Locust has loaded; history rows come every second.
        load_start = max(spawned, started[0] - 1.0) if started else spawned
        plan = accounting.Plan(load_start, settings.bursts, settings.burst_seconds, settings.gap_seconds)
        print(f"[{mode}] {stats['accepted']} accepted; waiting until every one is counted and archived", flush=True)
        counts = {"accepted": stats["accepted"], **wait_delivered(settings, stats["accepted"])}
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
    print(f"[{mode}] counts {counts}", flush=True)
    run = {"mode": mode, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
           "plan": asdict(plan), "window": window, "locust": stats, "counts": counts,
           "runner_exit": runner.returncode}
    (out / "run.json").write_text(json.dumps(run, indent=2))
    return out


def analyse_run(folder: Path, model: accounting.PowerModel, grid_g_per_kwh: float) -> dict:
    """A mode's figures from its folder (what ``run_mode`` left)."""
    from .sampler import read_samples

    run = json.loads((folder / "run.json").read_text())
    settle = run["settings"].get("idle_period_ms", 0) / 1000 + 5 if run["mode"] == "scale-to-zero" else 5
    return accounting.analyse_mode(
        run["mode"],
        read_samples(folder / "samples.jsonl"),
        accounting.Plan(**run["plan"]),
        tuple(run["window"]),
        model,
        grid_g_per_kwh,
        events=accounting.read_events(folder / "events.jsonl"),
        locust=run["locust"],
        history=accounting.locust_history(folder / "locust_stats_history.csv"),
        counts=run["counts"],
        idle_settle_s=settle,
    ) | {"settings": run["settings"]}


def run(settings: Settings) -> list[Path]:
    if settings.modes != ("always-on",):
        require_modes(settings.runner)
    folders = [run_mode(settings, mode) for mode in settings.modes]
    return folders


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
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    virt = ""
    try:
        virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return {
        "cpu_model": cpu_model,
        "vcpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": os.uname().release,
        "virtualisation": virt or "unknown",
        "rapl_readable": bool(procfs.rapl_zones()),
    }
