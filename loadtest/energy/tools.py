"""The ``tools`` binary (``tools/src/main.rs``): the one way this package resets a run
(``tools reset``), reads what the pipeline holds (``tools counts``) and drives Locust's burst
shape (``tools load``). The run is chosen by the environment the tools read (``RUNNER_RUN_ID``,
``KAFKA_BROKERS``, ``REDIS_URL``, ``MONGODB_URI``, ``RUNNER_MANIFESTS``), as the runner's is.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path


class ToolsError(RuntimeError):
    """A ``tools`` command failed; the message has its exit code and the end of its stderr."""


@dataclass(frozen=True)
class PipelineCounts:
    """What ``tools counts`` prints: Redis' counters, the archive, the topics and the lag."""

    total: int
    countries: dict[str, int]
    climas: dict[str, int]
    country_clima: dict[str, int]
    archived: int
    # Records in the topic of tweets and in its dead-letter topic.
    in_kafka: int
    dead_lettered: int
    # Records the KafkaSources have not committed yet.
    lag: int

    @classmethod
    def from_json(cls, data: dict) -> PipelineCounts:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class LoadShape:
    """The burst shape ``tools load`` gives Locust (whole seconds, as ``tools load`` takes them)."""

    users: int
    user_rps: float
    burst_seconds: int
    gap_seconds: int
    bursts: int


@dataclass(frozen=True)
class LoadSummary:
    """What ``tools load`` prints at the end."""

    requests: int
    failures: int


@dataclass
class Load:
    """A running ``tools load``; its Locust is a child of ``process``."""

    process: subprocess.Popen
    out: Path

    def wait(self) -> LoadSummary:
        stdout, _ = self.process.communicate()
        if self.process.returncode != 0:
            raise ToolsError(f"`tools load` exited with {self.process.returncode}; "
                             f"see {self.out / 'locust.log'}")
        lines = [line for line in stdout.splitlines() if line.strip()]
        if not lines:
            raise ToolsError("`tools load` printed no summary")
        return LoadSummary(**json.loads(lines[-1]))


@dataclass(frozen=True)
class Tools:
    path: Path = Path("target/release/tools")
    env: dict[str, str] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        if not self.path.exists():
            raise ToolsError(f"{self.path} does not exist: build it with `cargo build --release --workspace --bins`")
        return [str(self.path), *args]

    def run(self, *args: str) -> str:
        """Runs ``tools ARGS…`` to its end and returns what it printed."""
        done = subprocess.run(self.command(*args), capture_output=True, text=True, env=self.env or None,
                              stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise ToolsError(f"`tools {' '.join(args)}` exited with {done.returncode}: {tail}")
        return done.stdout

    def reset(self) -> None:
        """Deletes and re-creates the run's topics, clears its Redis keys, drops its database."""
        self.run("reset")

    def counts(self) -> PipelineCounts:
        return PipelineCounts.from_json(json.loads(self.run("counts")))

    def load(self, host: str, out: Path, shape: LoadShape, locust: Path, locustfile: Path) -> Load:
        """Starts Locust's burst shape against ``host``: its output goes to ``out/locust.log``, its
        statistics to ``out/locust.json`` and its CSV files (``out/locust_stats_history.csv``…)."""
        args = ["load", "--host", host, "--out", str(out), "--csv", "--locust", str(locust),
                "--locustfile", str(locustfile), "--users", str(shape.users), "--user-rps", str(shape.user_rps),
                "--burst-seconds", str(shape.burst_seconds), "--gap-seconds", str(shape.gap_seconds),
                "--bursts", str(shape.bursts)]
        process = subprocess.Popen(self.command(*args), stdout=subprocess.PIPE, text=True,
                                   env=self.env or None, stdin=subprocess.DEVNULL)
        return Load(process, out)
