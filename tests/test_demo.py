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


def _exit_at_once():
    pass


def _exit_when_told(conn):
    conn.recv()


def test_the_demo_waits_for_every_reader_not_the_first_to_end():
    """The demo's end waits for all readers: one connection.wait() returns
    when the first has ended, and reported "readers did not finish within
    30 s" at once while the other was still finishing.  Here the second
    only ends once the first has been seen to end."""
    import multiprocessing
    from shmtxn.demo import wait_all
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    first = ctx.Process(target=_exit_at_once)
    second = ctx.Process(target=_exit_when_told, args=(theirs,))
    first.start()
    second.start()
    seen = []

    def ended(sentinel):
        seen.append(sentinel)
        if sentinel == first.sentinel:
            mine.send("go")
    try:
        assert wait_all([first.sentinel, second.sentinel], 60, ended)
        assert seen == [first.sentinel, second.sentinel]
    finally:
        for p in (first, second):
            p.kill()
            p.join()
