"""Shared fixtures: unique segment names, and a check that the suite
leaves nothing of its own behind in /dev/shm -- and touches nothing else.

The suite's own segments are the ones that appeared during the run and
either carry this run's prefix (the `name` fixture: ``shmtxn_t_<pytest
pid>_...``) or were created by one of this run's processes (generated
``stx_...`` names: the pid in their header).  Every Python process of the
run records its pid in RUN_PIDS: this one and its forks here, new
interpreters (subprocess, spawn, forkserver) and their forks through
tests/_run_pids/sitecustomize.py, which PYTHONPATH puts first for them.
Segments other programs create meanwhile are never touched.
"""

import os
import shutil
import struct
import sys
import tempfile
import uuid

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)  # children import helpers

SHM = "/dev/shm"
SEGMENT_PREFIXES = ("stx_", "shmtxn_t_")
RUN_PREFIX = f"shmtxn_t_{os.getpid()}_"
CREATOR_PID_OFFSET = 184  # docs/format.md: the header's creator_pid

RUN_PIDS = tempfile.mkdtemp(prefix="shmtxn-test-pids-")


def record_pid():
    try:
        open(os.path.join(RUN_PIDS, str(os.getpid())), "a").close()
    except OSError:
        pass


record_pid()
os.register_at_fork(after_in_child=record_pid)
os.environ["SHMTXN_TEST_RUN_PIDS"] = RUN_PIDS
os.environ["PYTHONPATH"] = os.pathsep.join(
    [os.path.join(TESTS, "_run_pids")]
    + [p for p in [os.environ.get("PYTHONPATH")] if p])


def run_pids() -> set[int]:
    """The pids of every process this run has started so far."""
    return {int(n) for n in os.listdir(RUN_PIDS)}


def creator_pid(name: str) -> int | None:
    """The creator pid in a segment's header, or None if it has none."""
    try:
        with open(os.path.join(SHM, name), "rb") as f:
            f.seek(CREATOR_PID_OFFSET)
            raw = f.read(4)
    except OSError:
        return None
    return struct.unpack("=i", raw)[0] if len(raw) == 4 else None


def segments() -> set[str]:
    return {n for n in os.listdir(SHM) if n.startswith(SEGMENT_PREFIXES)}


def ours(names, pids) -> set[str]:
    """Those of `names` this run created."""
    return {n for n in names
            if n.startswith(RUN_PREFIX) or creator_pid(n) in pids}


@pytest.fixture(scope="session", autouse=True)
def no_leftovers_in_dev_shm():
    before = segments()
    yield
    left = ours(segments() - before, run_pids())
    for seg in left:  # clean up our own, then fail the run
        try:
            os.unlink(os.path.join(SHM, seg))
        except FileNotFoundError:
            pass
    assert not left, f"tests left segments in /dev/shm: {sorted(left)}"


def pytest_unconfigure(config):
    shutil.rmtree(RUN_PIDS, ignore_errors=True)


@pytest.fixture
def name():
    """A unique segment name, unlinked after the test if still there."""
    seg = f"{RUN_PREFIX}{uuid.uuid4().hex[:10]}"
    yield seg
    try:
        os.unlink(os.path.join(SHM, seg))
    except FileNotFoundError:
        pass
