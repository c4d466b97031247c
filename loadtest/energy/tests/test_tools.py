"""The ``tools`` wrapper against a stand-in binary that records its arguments and environment and
answers as ``tools`` does (the real one is exercised by the ``experiment`` test)."""

import json
import os
import stat

import pytest

from ..tools import LoadShape, LoadSummary, PipelineCounts, Tools, ToolsError

COUNTS = {"total": 7, "countries": {"Guatemala": 7}, "climas": {"soleado": 7},
          "country_clima": {"Guatemala/soleado": 7}, "archived": 6, "in_kafka": 7, "dead_lettered": 0, "lag": 1}


@pytest.fixture
def fake(tmp_path):
    """A `tools` that appends `RUNNER_RUN_ID args…` to calls.txt and prints what `tools` would."""
    path = tmp_path / "tools"
    path.write_text(f"""#!/usr/bin/env bash
echo "$RUNNER_RUN_ID $*" >>"{tmp_path}/calls.txt"
case $1 in
  reset) ;;
  counts) echo '{json.dumps(COUNTS)}' ;;
  load) echo "Locust's own output goes elsewhere" >&2; echo '{{"requests":10,"failures":1}}' ;;
  *) echo "error: unknown subcommand $1" >&2; exit 2 ;;
esac
""")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return Tools(path, {**os.environ, "RUNNER_RUN_ID": "t1"}), tmp_path / "calls.txt"


def test_reset_counts_and_load(fake, tmp_path):
    tools, calls = fake
    tools.reset()
    assert tools.counts() == PipelineCounts(**COUNTS)
    load = tools.load("http://127.0.0.1:1", tmp_path / "out", LoadShape(5, 2.5, 10, 20, 2),
                      tmp_path / "locust", tmp_path / "locustfile.py")
    assert load.wait() == LoadSummary(requests=10, failures=1)
    lines = calls.read_text().splitlines()
    assert lines[:2] == ["t1 reset", "t1 counts"]
    assert lines[2] == (f"t1 load --host http://127.0.0.1:1 --out {tmp_path / 'out'} --csv "
                        f"--locust {tmp_path / 'locust'} --locustfile {tmp_path / 'locustfile.py'} "
                        "--users 5 --user-rps 2.5 --burst-seconds 10 --gap-seconds 20 --bursts 2")


def test_failures_say_what_failed(fake, tmp_path):
    tools, _ = fake
    with pytest.raises(ToolsError, match="exited with 2: error: unknown subcommand bench"):
        tools.run("bench")
    with pytest.raises(ToolsError, match="does not exist: build it"):
        Tools(tmp_path / "nowhere").reset()
