"""Long crash and concurrency runs: `pytest -m stress` (not in the default
suite, which runs the same checks at small scale)."""

import multiprocessing

import pytest

import helpers
from shmtxn import SharedMemory
from test_crash import kill_workers_at_random, kill_writer_at_random

pytestmark = pytest.mark.stress


def test_many_random_kills_of_contending_writers(name):
    values, info = kill_workers_at_random(name, workers=4, rounds=300,
                                          seed=2026)
    assert values[0] == sum(values[1:])
    assert info["recoveries"] > 0


def test_many_random_kills_of_a_large_txn(name):
    import random
    rng = random.Random(99)
    with SharedMemory(name, create=True, size=8 * 20000,
                      undo_size=1 << 20) as shr:
        for _ in range(200):
            kill_writer_at_random(name, rng)
            assert len(set(shr[:])) == 1
        assert shr.info()["recoveries"] > 0


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_eight_processes_count_exactly(name, method):
    ctx = multiprocessing.get_context(method)
    with SharedMemory(name, create=True, size=8) as shr:
        procs = [ctx.Process(target=helpers.increment, args=(shr, 0, 20000))
                 for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        assert shr[0] == 8 * 20000
