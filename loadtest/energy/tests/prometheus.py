"""A real Prometheus (v0.316.0, built by ``dev/k8s/build prometheus`` into ``.stack/k8s/bin``)
serving series backfilled from OpenMetrics text with ``promtool tsdb create-blocks-from
openmetrics``, for tests of the queries the Kubernetes experiment asks."""

from __future__ import annotations

import os
import socket
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        port = free_port()
        log = open(self.folder / "prometheus.log", "w")
        config = self.folder / "prometheus.yml"
        config.write_text("global: {scrape_interval: 15s}\n")
        # Retention far beyond the series' age, or Prometheus deletes the backfilled blocks.
        self.process = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tsdb}",
             "--storage.tsdb.retention.time=100y", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited: {(self.folder / 'prometheus.log').read_text()[-2000:]}")
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
