"""Per-message timings (client_app/timing.py): off by default; with FEDSHARE_TIMINGS=1 every
handled message leaves one ordered line in the node's state directory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.datasets import default_data_root

ROOT = Path(__file__).resolve().parents[2]
RUN = ("from harness.inprocess import run_inprocess; run_inprocess({{'max-users': 30, "
       "'num-rounds': 2, 'eval-every': 2, 'fraction-train': 1.0, 'state-dir': '{state}', "
       "'out-dir': '{out}'}}, 2)")


def _run(tmp_path: Path, timings: bool) -> list[dict]:
    env = {**os.environ, "FEDSHARE_TIMINGS": "1" if timings else "0"}
    code = RUN.format(state=tmp_path / "state", out=tmp_path / "out")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    lines = []
    for path in (tmp_path / "state").rglob("timings.jsonl"):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="ML-100K not available")
def test_timings_are_written_only_when_asked_and_are_ordered(tmp_path):
    assert _run(tmp_path / "off", timings=False) == []
    lines = _run(tmp_path / "on", timings=True)
    assert {line["type"] for line in lines} >= {"train", "evaluate"}
    for line in lines:
        assert line["process"] <= line["imported"] <= line["start"] <= line["end"]
        assert line["created"] <= line["start"]
