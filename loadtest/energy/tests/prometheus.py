"""A real Prometheus (v0.316.0, built by ``dev/k8s/build prometheus`` into ``.stack/k8s/bin``)
serving series backfilled from OpenMetrics text with ``promtool tsdb create-blocks-from
openmetrics``, for tests of the queries the Kubernetes experiment asks."""

from __future__ import annotations

import os
import random
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def binary(name: str) -> Path:
    path = Path(os.environ.get("STACK_DIR", ROOT / ".stack")) / "k8s" / "bin" / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run dev/k8s/build prometheus (make check does)")
    return path


def listen_port() -> int:
    """A random port below the ephemeral range, where no outgoing connection takes it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return random.randrange(10000, low)


class BackfilledPrometheus:
    """``with BackfilledPrometheus(openmetrics_text, folder) as url:`` — stopped on exit."""

    def __init__(self, openmetrics: str, folder: Path, ready_timeout_s: float = 60) -> None:
        self.folder = folder
        self.openmetrics = openmetrics
        self.ready_timeout_s = ready_timeout_s
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        source = self.folder / "series.om"
        source.write_text(self.openmetrics)
        tsdb = self.folder / "tsdb"
        subprocess.run([binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", source, tsdb],
                       check=True, capture_output=True, text=True)
        config = self.folder / "prometheus.yml"
        config.write_text("global: {scrape_interval: 15s}\n")
        for _ in range(5):
            url = self._start(tsdb, config, listen_port())
            if url:
                return url
        pytest.fail("prometheus found its port taken 5 times")

    def _start(self, tsdb: Path, config: Path, port: int) -> str | None:
        """Prometheus on ``port``: its URL once ready, None if the port was taken."""
        log_path = self.folder / "prometheus.log"
        # Retention far beyond the series' age, or Prometheus deletes the backfilled blocks.
        with open(log_path, "w") as log:
            self.process = subprocess.Popen(
                [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
                 "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.process.poll() is not None:
                text = log_path.read_text()
                if "address already in use" in text:
                    return None
                pytest.fail(f"prometheus exited: {text[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return url
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after {self.ready_timeout_s}s")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.process:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
