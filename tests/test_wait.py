"""Waiting for a change: shr.version, shr.wait(since, timeout), and
txn(until=pred) -- across threads and processes (fork and spawn), with a
writer SIGKILLed mid-txn, Ctrl-C, timeouts and close() while waiting.

No test sleeps to synchronise: a waiter is known to be asleep when the
header's change_waiters count says so (wait_workers.waiters), and a
waiter woken by a kill must return long before its 60 s timeout only
because the test would otherwise not finish."""

import inspect
import math
import multiprocessing
import os
import signal
import threading
import time

import pytest

import wait_workers
from shmtxn import SharedDict, SharedMemory
from shmtxn.dict import DictTxn
from shmtxn.errors import (LockTimeout, NestedTransactionError,
                           SegmentClosedError)
from wait_workers import create, handle, waiters  # noqa: F401 (fixture)

KINDS = ["memory", "dict"]


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def put(h, value):
    """One committed write of `value` to slot 0 / key "k"."""
    h["k" if isinstance(h, (SharedDict, DictTxn)) else 0] = value


def until_true(cond, what):
    """Poll `cond` (a condition, not a duration) until it holds; 60 s at
    most, so a broken wait fails instead of hanging the suite."""
    end = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < end, f"never: {what}"
        time.sleep(0.001)


# --------------------------------------------------------------------------
# version


def test_version_counts_commits_that_wrote(name, kind):
    with create(name, kind) as h:
        assert h.version == 0
        put(h, 1)
        assert h.version == 1
        with h.txn() as t:
            put(t, 2)
            put(t, 3)
        assert h.version == 2  # one txn, one version
        with h.txn():
            pass  # wrote nothing
        with h.txn(write=False) as t:
            pass
        with h.txn() as t:
            put(t, 4)
            t.abort()  # rolled back: nothing changed
        assert h.version == 2
        other = type(h)(name, read_only=True)
        assert other.version == 2  # the segment's, not the handle's
        other.close()


def test_version_of_closed_handle_raises(name):
    h = SharedMemory(name, create=True, size=8)
    h.close()
    with pytest.raises(SegmentClosedError):
        h.version
    with pytest.raises(SegmentClosedError):
        h.wait(0, 0)
    h.unlink()


# --------------------------------------------------------------------------
# wait(): arguments and timeouts


def test_signatures(handle):
    assert str(inspect.signature(handle.wait)) == "(since=None, timeout=None)"
    assert str(inspect.signature(handle.txn)) == \
        "(write=None, timeout=None, *, until=None)"


def test_wait_returns_at_once_if_the_version_moved(handle):
    put(handle, 1)
    put(handle, 2)
    assert handle.wait(0) == 2
    assert handle.wait(1, timeout=0) == 2


def test_timeout_returns_since(handle):
    v = handle.version
    assert handle.wait(v, timeout=0) == v
    assert handle.wait(timeout=0.01) == v  # since=None: the version now
    assert waiters(handle.name) == 0


def test_since_none_is_the_version_at_the_call(handle):
    put(handle, 1)
    # a commit before the call does not end a wait from "now"
    assert handle.wait(None, 0.01) == 1


@pytest.mark.parametrize("timeout", [-1, -0.5, math.nan, math.inf, 1e10])
def test_bad_timeouts_are_value_errors(handle, timeout):
    with pytest.raises(ValueError, match="timeout must be None"):
        handle.wait(0, timeout)
    with pytest.raises(ValueError, match="timeout must be None"):
        handle.txn(until=bool, timeout=timeout)


@pytest.mark.parametrize("since, exc", [
    ("1", TypeError), (1.0, TypeError), (True, TypeError), (-1, ValueError),
    (2**64, ValueError)])
def test_bad_since(handle, since, exc):
    with pytest.raises(exc, match="since must be"):
        handle.wait(since, 0)


def test_wait_inside_own_txn_is_refused(handle):
    # nothing could commit while this thread holds a txn on the segment
    for write in (True, False):
        with handle.txn(write=write):
            with pytest.raises(NestedTransactionError):
                handle.wait(timeout=1)
    assert waiters(handle.name) == 0


# --------------------------------------------------------------------------
# wait(): threads


def test_other_threads_run_while_one_waits(handle):
    """The GIL is released while waiting: this thread runs, sees the
    waiter asleep, and commits; the waiter returns the new version."""
    v = handle.version
    result = []
    t = threading.Thread(target=lambda: result.append(handle.wait(v)))
    t.start()
    until_true(lambda: waiters(handle.name) == 1, "the thread waits")
    put(handle, 7)
    t.join(60)
    assert result == [v + 1]
    assert waiters(handle.name) == 0


def test_ctrl_c_interrupts_a_wait(name):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals go to the main thread")
    with SharedMemory(name, create=True, size=8) as h:

        def interrupt():
            until_true(lambda: waiters(name) == 1, "main thread waits")
            os.kill(os.getpid(), signal.SIGINT)

        t = threading.Thread(target=interrupt)
        t.start()
        with pytest.raises(KeyboardInterrupt):
            h.wait()  # no timeout: only the signal ends it
        t.join()
        assert waiters(name) == 0


def test_close_from_another_thread_ends_the_wait(name):
    h = SharedMemory(name, create=True, size=8)
    errors = []

    def waiter():
        try:
            h.wait()
        except SegmentClosedError as exc:
            errors.append(exc)

    t = threading.Thread(target=waiter)
    t.start()
    until_true(lambda: waiters(name) == 1, "the thread waits")
    h.close()  # wakes the waiter and lets it leave before unmapping
    t.join(60)
    assert len(errors) == 1 and "closed while" in str(errors[0])
    assert waiters(name) == 0
    h.unlink()


# --------------------------------------------------------------------------
# wait(): processes


def start(ctx, target, *args):
    parent, child = ctx.Pipe()
    p = ctx.Process(target=target, args=(*args, child))
    p.start()
    return p, parent


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_waiters_in_several_processes_wake_on_commit(name, kind, method):
    ctx = multiprocessing.get_context(method)
    with create(name, kind) as h:
        put(h, 1)
        kids = [start(ctx, wait_workers.wait_and_report, name, kind)
                for _ in range(3)]
        assert all(conn.recv() == 1 for _, conn in kids)
        until_true(lambda: waiters(name) == 3, "three children wait")
        put(h, 5)
        for p, conn in kids:
            assert conn.recv() == (2, 5)
            p.join(60)
            assert p.exitcode == 0
        assert waiters(name) == 0


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_writer_killed_mid_txn_wakes_waiters_after_the_rollback(
        name, kind, method):
    ctx = multiprocessing.get_context(method)
    with create(name, kind) as h:
        put(h, 1)  # version 1, value 1
        writer, wconn = start(ctx, wait_workers.write_then_hang, name, kind)
        assert wconn.recv() == "in txn"  # holds the lock, value 99 written
        kids = [start(ctx, wait_workers.wait_and_report, name, kind)
                for _ in range(2)]
        assert all(conn.recv() == 1 for _, conn in kids)
        until_true(lambda: waiters(name) == 2, "two children wait")
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        # no one else touches the segment: the waiters themselves find the
        # writer dead, roll it back and wake -- long before their 60 s
        for p, conn in kids:
            version, value = conn.recv()
            assert version == 2  # the recovery moved it
            assert value == 1  # the old data, not the dead writer's 99
            p.join(60)
            assert p.exitcode == 0
        info = h.info()
        assert info["recoveries"] == 1 and info["commits"] == 1
        assert waiters(name) == 0


def test_killed_waiter_leaves_the_count_until_the_next_wait(name):
    ctx = multiprocessing.get_context("fork")
    with SharedMemory(name, create=True, size=8) as h:
        p, conn = start(ctx, wait_workers.wait_forever, name)
        assert conn.recv() == "waiting"
        until_true(lambda: waiters(name) == 1, "the child waits")
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        assert waiters(name) == 1  # leaked: writers now make a wake call
        put(h, 1)
        assert h.wait(timeout=0) == 1  # a new wait reaps the dead waiter
        assert waiters(name) == 0


# --------------------------------------------------------------------------
# txn(until=pred)


def test_until_true_at_once_runs_the_body_in_the_predicates_txn(handle):
    put(handle, 3)
    seen = []

    def pred(t):
        seen.append(t)
        return True

    with handle.txn(until=pred) as t:
        assert t is seen[0] and t.active and t.write
        put(t, 4)
    assert handle.version == 2
    assert (handle.get("k") if isinstance(handle, SharedDict)
            else handle[0]) == 4


def test_until_reevaluates_after_each_commit(handle):
    calls = []

    def pred(t):
        value = t.get("k", 0) if isinstance(handle, SharedDict) else t[0]
        calls.append(value)
        return value >= 3

    def writer():
        for i in (1, 2, 3):
            until_true(lambda: len(calls) == i
                       and waiters(handle.name) == 1, "pred waits")
            put(handle, i)

    w = threading.Thread(target=writer)
    w.start()
    with handle.txn(write=False, timeout=60, until=pred) as t:
        assert (t.get("k") if isinstance(handle, SharedDict)
                else t[0]) == 3
        assert not t.write
    w.join()
    assert calls == [0, 1, 2, 3]


def test_until_that_never_holds_times_out(handle):
    with pytest.raises(LockTimeout, match="predicate did not hold within "
                                          "the timeout of 0.05"):
        with handle.txn(until=lambda t: False, timeout=0.05):
            pytest.fail("the body ran")
    assert waiters(handle.name) == 0
    with handle.txn(timeout=1):
        pass  # nothing was left open


def test_until_zero_timeout_checks_once(handle):
    with handle.txn(until=lambda t: True, timeout=0) as t:
        assert t.active
    with pytest.raises(LockTimeout):
        with handle.txn(until=lambda t: False, timeout=0):
            pass


def test_until_predicate_error_propagates_and_ends_the_txn(handle):
    with pytest.raises(ZeroDivisionError):
        with handle.txn(until=lambda t: 1 / 0):
            pass
    with handle.txn(timeout=1):
        pass


def test_until_body_error_rolls_back(handle):
    with pytest.raises(RuntimeError):
        with handle.txn(until=lambda t: True) as t:
            put(t, 9)
            raise RuntimeError
    assert handle.version == 0


def test_until_arguments(handle):
    with pytest.raises(TypeError, match="until must be a callable"):
        handle.txn(until=3)
    with handle.txn(until=None) as t:  # None: a plain txn
        assert type(t).__name__ in ("Txn", "DictTxn")
    ctx = handle.txn(until=lambda t: True)
    with ctx:
        with pytest.raises(RuntimeError, match="entered once"):
            ctx.__enter__()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_until_in_other_processes(name, kind, method):
    ctx = multiprocessing.get_context(method)
    with create(name, kind) as h:
        kids = [start(ctx, wait_workers.until_and_report, name, kind, 2)
                for _ in range(2)]
        assert all(conn.recv() == "ready" for _, conn in kids)
        until_true(lambda: waiters(name) == 2, "both predicates wait")
        put(h, 1)  # wakes them; the predicate is still false
        until_true(lambda: waiters(name) == 2, "both wait again")
        put(h, 2)
        for p, conn in kids:
            assert conn.recv() == 2
            p.join(60)
            assert p.exitcode == 0
