"""Crash safety: processes SIGKILLed inside write txns, read txns and
creation never wedge or corrupt the survivors."""

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import helpers
import shmtxn
from shmtxn import SharedMemory, _core

CTX = multiprocessing.get_context("fork")


def start_child(target, *args, expect):
    """Start target(*args, conn) in a forked child and wait until it says
    `expect` (it is then where the test wants it)."""
    parent, child = CTX.Pipe()
    p = CTX.Process(target=target, args=(*args, child))
    p.start()
    assert parent.recv() == expect
    return p, parent


def kill_writer_at_random(name, rng):
    p, _ = start_child(helpers.uniform_writer_forever, name, expect="in txn")
    time.sleep(rng.uniform(0, 0.004))  # random kill point, not a sync
    helpers.kill(p)


def test_writer_killed_mid_txn_is_rolled_back(name):
    rng = random.Random(1234)
    with SharedMemory(name, create=True, size=8 * 2000) as shr:
        for _ in range(15):
            kill_writer_at_random(name, rng)
            with shr.txn(timeout=5) as shm:  # recovers the dead writer
                values = shm[:]
            assert len(set(values)) == 1, "a torn txn survived the crash"
            assert shr[:] == values  # lock-free reads agree
        info = shr.info()
        assert info["recoveries"] >= 1, "no kill landed inside a txn"
        assert info["undo_used"] == 0 and info["writer_pid"] == 0


def run_crashing_child(point, code):
    env = dict(os.environ, SHMTXN_CRASH_AT=point)
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          timeout=60, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


@pytest.mark.parametrize("point", ["write:after_log", "commit:before_clear"])
def test_crash_points_inside_a_write_txn(name, point):
    with SharedMemory(name, create=True, size=80) as shr:
        shr[0:10] = list(range(10))
        run_crashing_child(point, (
            "from shmtxn import SharedMemory\n"
            f"s = SharedMemory({name!r})\n"
            "with s.txn() as t:\n"
            "    for i in range(10): t[i] = 100 + i\n"))
        assert shr[0:10] == list(range(10))
        with shr.txn(timeout=5) as shm:
            assert shm[0:10] == list(range(10))
            shm[0] = -1
        assert shr.info()["recoveries"] == 1
        assert shr[0] == -1


def test_auto_commit_set_killed_is_all_or_nothing(name):
    with SharedMemory(name, create=True, size=80) as shr:
        run_crashing_child("write:after_log", (
            "from shmtxn import SharedMemory\n"
            f"s = SharedMemory({name!r})\n"
            "s[0:10] = [7] * 10\n"))
        assert shr[0:10] == [0] * 10


def test_dead_reader_does_not_block_writers(name):
    with SharedMemory(name, create=True, size=16) as shr:
        p, _ = start_child(helpers.hold_read_txn, name, expect=0)
        with pytest.raises(shmtxn.LockTimeout):
            with shr.txn(timeout=0.05):
                pass
        helpers.kill(p)
        with shr.txn(timeout=5) as shm:
            shm[0] = 1
        assert shr[0] == 1
        assert p.pid not in [s["pid"] for s in shr.info()["processes"]]


def test_lock_timeout_names_the_segment(name):
    with SharedMemory(name, create=True, size=16) as shr:
        p, parent = start_child(helpers.hold_write_txn, name,
                                expect="locked")
        for write in (True, False):
            with pytest.raises(shmtxn.LockTimeout) as err:
                with shr.txn(write=write, timeout=0.05):
                    pass
            assert isinstance(err.value, TimeoutError)
            assert name in str(err.value)
        parent.send("go")
        p.join()
        assert shr[0] == 12345


@pytest.mark.parametrize("point", ["create:after_open",
                                   "create:after_reserve",
                                   "create:before_magic"])
def test_creator_killed_mid_creation_does_not_wedge_attachers(name, point):
    run_crashing_child(point, (
        "from shmtxn import SharedMemory\n"
        f"SharedMemory({name!r}, create=True, size=80)\n"))
    assert os.path.exists(f"/dev/shm/{name}")
    start = time.monotonic()
    with pytest.raises(shmtxn.CorruptSegmentError, match="never finished"):
        SharedMemory(name, timeout=30)
    assert time.monotonic() - start < 10, "attach waited for a dead creator"
    _core.unlink(name)


def test_read_only_handle_recovers_a_dead_writer(name):
    with SharedMemory(name, create=True, size=8 * 500) as shr:
        shr[0:500] = [3] * 500
        # slot 0 is now 12345, uncommitted
        p, _ = start_child(helpers.hold_write_txn, name, expect="locked")
        helpers.kill(p)
        with SharedMemory(name, read_only=True) as ro:
            assert ro[0] == 3  # lock-free read falls back and recovers
            assert ro[0:500] == [3] * 500
        assert shr.info()["recoveries"] == 1


def kill_workers_at_random(name, workers, rounds, seed):
    """Writers contend; one after another is SIGKILLed at a random instant
    and replaced.  Returns the segment's values at the end."""
    rng = random.Random(seed)

    def start(k):
        return start_child(helpers.paired_increments_forever, name, k,
                           expect="running")[0]

    with SharedMemory(name, create=True, size=8 * (1 + workers)) as shr:
        procs = [start(k) for k in range(workers)]
        for _ in range(rounds):
            k = rng.randrange(workers)
            time.sleep(rng.uniform(0, 0.005))  # random kill point
            helpers.kill(procs[k])
            procs[k] = start(k)
            with shr.txn(timeout=5) as shm:
                assert shm[0] == sum(shm[1:]), "a txn was half applied"
        for p in procs:
            helpers.kill(p)
        with shr.txn(timeout=5) as shm:
            values = shm[:]
        return values, shr.info()


def test_killing_contending_writers_never_half_applies_a_txn(name):
    values, info = kill_workers_at_random(name, workers=3, rounds=12,
                                          seed=7)
    assert values[0] == sum(values[1:]) > 0
    assert info["writer_pid"] == 0 and info["undo_used"] == 0
