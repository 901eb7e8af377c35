"""The main job the README runs: `python -m shmtxn demo`."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_demo_runs_verifies_and_reports_throughput(method):
    out = subprocess.run(
        [sys.executable, "-m", "shmtxn", "demo", "--writers", "2",
         "--readers", "1", "--txns", "300", "--start-method", method],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "counter = 600 (expected 600), torn reads = 0" in out.stdout
    assert "txn/s" in out.stdout
    assert "OK:" in out.stdout


def test_cli_usage_error_exits_2():
    out = subprocess.run([sys.executable, "-m", "shmtxn", "no-such-command"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "usage" in out.stderr
