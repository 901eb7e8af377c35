"""Shared fixtures: unique segment names, and a check that the suite
leaves nothing of its own behind in /dev/shm."""

import os
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # children import helpers

SHM = "/dev/shm"
OUR_PREFIXES = ("stx_", "shmtxn_t_")


def _ours():
    return {n for n in os.listdir(SHM) if n.startswith(OUR_PREFIXES)}


@pytest.fixture(scope="session", autouse=True)
def no_leftovers_in_dev_shm():
    before = _ours()
    yield
    left = _ours() - before
    for name in left:  # clean up, then fail the run
        os.unlink(os.path.join(SHM, name))
    assert not left, f"tests left segments in /dev/shm: {sorted(left)}"


@pytest.fixture
def name():
    """A unique segment name, unlinked after the test if still there."""
    seg = f"shmtxn_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    yield seg
    try:
        os.unlink(os.path.join(SHM, seg))
    except FileNotFoundError:
        pass
