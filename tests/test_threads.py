"""Threads sharing handles, txns, views and dicts (docs/threads.md): exact
invariants under 8+ threads, close() racing every kind of user, and one
test per race the free-threaded build (3.13t, PYTHON_GIL=0) exposed.

Every test runs on GIL builds too.  Those marked "old code" in their
docstring failed (crash, hang or false error) before the gate of
binding/gate.c: some on every build, some only without the GIL.  The
long versions are marked stress (`pytest -m stress`)."""

import os
import subprocess
import sys
import sysconfig
import threading
import warnings

import pytest

import shmtxn
from shmtxn import (BufferExportsError, NestedTransactionError,
                    SegmentClosedError, SharedDict, SharedMemory,
                    TransactionsOpenError, TransactionThreadError)

THREADS = 8
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
# a thread that has not ended by then is hung (a deadlock): the run fails
JOIN_S = 120


def rounds(default, stress):
    """`default` rounds in the suite, `stress` under -m stress."""
    return pytest.mark.parametrize("n", [
        default, pytest.param(stress, marks=pytest.mark.stress)])


def run_threads(target, count=THREADS, args=()):
    """Run target(i, barrier, *args) in `count` threads released together;
    re-raise the first exception any raised; fail if one hangs."""
    barrier = threading.Barrier(count)
    errors = []

    def body(i):
        try:
            target(i, barrier, *args)
        except BaseException as exc:  # noqa: B036 -- reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(i,)) for i in
               range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


# --------------------------------------------------------------------------
# exact invariants


@rounds(300, 20000)
def test_counters_sum_exactly(name, n):
    """Write txns in 8 threads on one handle: every increment counts, and
    the per-thread counters agree with the total."""
    with SharedMemory(name, create=True, size=8 * (THREADS + 1)) as shr:
        def work(i, barrier):
            barrier.wait()
            for _ in range(n):
                with shr.txn() as t:
                    t[0] += 1
                    t[1 + i] += 1

        run_threads(work)
        assert shr[0] == THREADS * n
        assert shr[1:] == [n] * THREADS


@rounds(300, 20000)
def test_a_multi_slot_invariant_is_never_seen_broken(name, n):
    """Writers move amounts between slots (the sum stays 1000); readers in
    other threads read the slots lock-free, as slices and in read txns,
    and never see another sum."""
    slots = 16
    with SharedMemory(name, create=True, size=8 * slots) as shr:
        shr[0] = 1000
        writers = THREADS // 2

        def work(i, barrier):
            barrier.wait()
            if i < writers:
                for k in range(n):
                    a, b = (i + k) % slots, (i * 7 + k * 3 + 1) % slots
                    with shr.txn() as t:
                        amount = t[a] // 2
                        t[a] -= amount
                        t[b] += amount
                return
            for k in range(n):
                assert sum(shr[:]) == 1000
                assert sum(shr) == 1000
                with shr.txn(write=False) as t:
                    assert sum(t[0:slots]) == 1000

        run_threads(work)
        assert sum(shr[:]) == 1000


@rounds(200, 10000)
def test_dict_totals_are_conserved(name, n):
    """Transfers between keys of a SharedDict in 8 threads: a snapshot
    (get_many, items(), a read txn) always sums to the total, and the
    keys never change."""
    keys = [f"k{j}" for j in range(12)]
    with SharedDict(name, create=True) as d:
        for k in keys:
            d[k] = 100
        total = 100 * len(keys)

        def work(i, barrier):
            barrier.wait()
            for k in range(n):
                if i % 2 == 0:
                    src, dst = keys[(i + k) % 12], keys[(i + 3 * k + 1) % 12]
                    with d.txn() as t:
                        amount = t[src] // 3
                        t[src] -= amount
                        t[dst] = t[dst] + amount
                        t["log"] = {"by": i, "k": k}  # pickled
                else:
                    assert sum(d.get_many(keys)) == total
                    with d.txn(write=False) as t:
                        assert sum(t[k] for k in keys) == total
                    assert d["log"] is None or isinstance(d["log"], dict)

        d["log"] = None
        run_threads(work)
        assert sum(d[k] for k in keys) == total
        assert len(d) == len(keys) + 1
        d.verify()


@rounds(100, 5000)
def test_views_in_many_threads(name, n):
    """Each thread writes its row through t.buf and (with numpy)
    t.ndarray(); the counts of exports balance, so close() succeeds."""
    np = pytest.importorskip("numpy")
    with SharedMemory(name, create=True, shape=(THREADS, 4)) as shr:
        def work(i, barrier):
            barrier.wait()
            for k in range(n):
                with shr.txn() as t:
                    row = t.ndarray(i, i + 1)
                    row += 1
                    with t.buf[i * 32:i * 32 + 8] as m:
                        assert int.from_bytes(m, "little") == k + 1
                    del row
                with shr.txn(write=False) as t:
                    assert np.asarray(t)[i, 3] == k + 1

        run_threads(work)
        assert shr.ndarray(copy=True).tolist() == [[n] * 4] * THREADS
    assert shr.closed


def test_memoryviews_of_the_handle_in_many_threads(name):
    """memoryview(shr) in 8 threads at once: its export count never
    drifts, so close() afterwards succeeds (old code, no GIL: the count
    was updated without a lock and close() refused or let go too
    early)."""
    shr = SharedMemory(name, create=True, size=64)

    def work(i, barrier):
        barrier.wait()
        for _ in range(2000):
            with memoryview(shr) as m:
                m[i] = 1

    run_threads(work)
    shr.close()
    shr.unlink()


# --------------------------------------------------------------------------
# a txn belongs to the thread that opened it


def test_a_txn_used_from_another_thread_is_a_clear_error(name):
    with SharedMemory(name, create=True, size=16) as shr:
        with shr.txn() as t:
            t[0] = 1
            seen = []

            def other():
                for action in (lambda: t[0], lambda: t.__setitem__(0, 2),
                               t.commit, t.abort, lambda: len(t),
                               lambda: t.__exit__(None, None, None)):
                    try:
                        action()
                    except TransactionThreadError as exc:
                        seen.append(str(exc))
                seen.append(t.active)
                seen.append(repr(t))

            th = threading.Thread(target=other)
            th.start()
            th.join(JOIN_S)
            assert len(seen) == 8
            assert all("belongs to the thread that opened it" in s
                       for s in seen[:6])
            assert seen[6] is False and "another thread's" in seen[7]
            assert t.active and t[0] == 1
        assert shr[0] == 1


def test_two_threads_entering_one_txn_object(name):
    """Exactly one thread enters it; the other gets the enter-once error,
    never a NestedTransactionError or a second open txn."""
    with SharedMemory(name, create=True, size=8) as shr:
        for _ in range(20):
            t = shr.txn()
            outcomes = []

            def enter(i, barrier):
                barrier.wait()
                try:
                    t.__enter__()
                except shmtxn.TransactionClosedError as exc:
                    outcomes.append(("refused", str(exc)))
                    return
                t[0] += 1
                outcomes.append(("entered", None))
                t.__exit__(None, None, None)

            run_threads(enter, count=2)
            kinds = sorted(o[0] for o in outcomes)
            assert kinds == ["entered", "refused"], outcomes
        assert shr[0] == 20


@rounds(2000, 50000)
def test_txn_objects_made_and_dropped_in_many_threads(name, n):
    """Old code, no GIL: the Txn free list was shared by all threads; two
    threads popped one object (a fatal PyObject_GC_Track abort), or one
    txn was listed twice (false NestedTransactionError, txns "open" at
    close)."""
    with SharedMemory(name, create=True, size=8 * THREADS) as shr:
        def work(i, barrier):
            barrier.wait()
            for k in range(n):
                t = shr.txn(write=k % 3 != 0)
                with t:
                    if t.write:
                        t[i] = k
                    else:
                        t[i]
                del t

        run_threads(work)
    assert shr.closed


# --------------------------------------------------------------------------
# close() racing users


def hammer(h, i, stop):
    """Use `h` every way until it is closed; only SegmentClosedError (or
    TransactionsOpenError/BufferExportsError from our own close attempts)
    may come out."""
    slots = isinstance(h, SharedMemory)
    key = i % 4 if slots else f"k{i % 4}"
    k = 0
    while not stop.is_set():
        k += 1
        try:
            kind = (i + k) % 6
            if kind == 0:
                h[key]
            elif kind == 1:
                h[key] = k
            elif kind == 2:
                with h.txn() as t:
                    t[key] = t[key] + 1 if slots else t.get(key, 0) + 1
            elif kind == 3:
                with h.txn(write=False) as t:
                    t[key]
            elif kind == 4:
                h.wait(timeout=0.001)
            else:
                list(h) if slots else h.get_many([key, "x"])
        except SegmentClosedError:
            return
        except TransactionThreadError:
            raise


@pytest.mark.parametrize("kind", ["memory", "dict"])
@rounds(20, 400)
def test_close_racing_users_gives_only_clean_errors(name, kind, n):
    for r in range(n):
        h = (SharedMemory(name, create=True, size=64) if kind == "memory"
             else SharedDict(name, create=True))
        if kind == "dict":
            for j in range(4):
                h[f"k{j}"] = 0
        stop = threading.Event()

        def user(i, barrier):
            if i == 0:
                barrier.wait()
                for _ in range(r % 7):
                    h.version  # let the others get going
                while True:
                    try:
                        h.close()
                        break
                    except (TransactionsOpenError, BufferExportsError):
                        continue  # a txn was open then: try again
                stop.set()
                return
            barrier.wait()
            hammer(h, i, stop)

        run_threads(user)
        assert h.closed
        with pytest.raises(SegmentClosedError):
            h[0 if kind == "memory" else "k0"]
        h.unlink()


def test_close_while_an_auto_write_waits_for_the_lock(name):
    """Old code (every build): close() unmapped a handle while another
    thread's shr[i] = v waited for the writer lock on it, and that thread
    then read the unmapped header (a segfault).  Now close() waits for it
    to leave, and it raises SegmentClosedError."""
    holder = SharedMemory(name, create=True, size=8)
    victim = SharedMemory(name)
    outcome = []
    with holder.txn():  # the writer lock, held by this thread
        def write():
            try:
                victim[0] = 5
                outcome.append("wrote")
            except SegmentClosedError as exc:
                outcome.append(exc)

        t = threading.Thread(target=write)
        t.start()
        t.join(0.2)  # gives it time to block; the outcome does not depend
        victim.close()
        t.join(JOIN_S)
    assert not t.is_alive()
    assert len(outcome) == 1
    # if it ran before the close, it waited until after the txn: neither
    # way may it crash or write through a closed handle
    assert isinstance(outcome[0], SegmentClosedError), outcome
    assert holder[0] == 0
    holder.close()
    holder.unlink()


class Slow:
    """A value whose unpickling waits for the test (hooks below)."""

    def __reduce__(self):
        return (make_slow, ())


HOOK = {}


def make_slow():
    hook = HOOK.get("hook")
    if hook is not None:
        hook()
    return "slow"


def test_close_while_another_thread_unpickles_in_a_snapshot(name):
    """Old code (every build): d.items() unpickles inside a read txn of
    its own; close() from another thread meanwhile unmapped the segment
    under it (a segfault on its next record).  Now close() waits for it."""
    d = SharedDict(name, create=True)
    d["a"] = Slow()
    d["b"] = list(range(5))
    inside, proceed = threading.Event(), threading.Event()

    def hook():
        inside.set()
        proceed.wait(JOIN_S)

    HOOK["hook"] = hook
    got, closed = [], []
    try:
        reader = threading.Thread(target=lambda: got.append(list(iter(d.items()))))
        reader.start()
        assert inside.wait(JOIN_S)
        closer = threading.Thread(target=lambda: closed.append(d.close()))
        closer.start()
        closer.join(0.2)  # old code: closed by now; new: still waiting
        HOOK.pop("hook")
        proceed.set()
        reader.join(JOIN_S)
        closer.join(JOIN_S)
    finally:
        HOOK.pop("hook", None)
        proceed.set()
    assert got and sorted(got[0]) == [("a", "slow"), ("b", [0, 1, 2, 3, 4])]
    assert closed == [None] and d.closed
    d.unlink()


def test_close_from_inside_an_operation_on_the_same_thread(name):
    """Old code (every build): unpickling code run by d.items() closed the
    handle and the snapshot went on reading unmapped memory.  Now that
    close() is a clean TransactionsOpenError and the handle stays open."""
    d = SharedDict(name, create=True)
    d["a"] = Slow()
    errors = []

    def hook():
        try:
            d.close()
        except TransactionsOpenError as exc:
            errors.append(str(exc))

    HOOK["hook"] = hook
    try:
        assert list(d.items()) == [("a", "slow")]
    finally:
        HOOK.pop("hook")
    assert len(errors) == 1 and "inside an operation on it" in errors[0]
    assert not d.closed
    d.close()
    d.unlink()


def test_many_threads_close_one_handle_at_once(name):
    """All return, the segment is unmapped once (old code, no GIL: two
    closers both dropped the file's reference: a double free)."""
    for _ in range(10):
        h = SharedMemory(name, create=True, size=8)

        def close(i, barrier):
            barrier.wait()
            h.close()

        run_threads(close)
        assert h.closed
        h.unlink()


def test_close_wakes_many_waiters(name):
    """8 threads in wait() on one handle, close() from another: each
    leaves with SegmentClosedError and close() returns (old code, no GIL:
    the handle counted its waiters without a lock, so close() could wait
    forever or unmap under a waiter)."""
    h = SharedMemory(name, create=True, size=8)
    started = threading.Barrier(THREADS + 1)
    errors = []

    def waiter():
        started.wait()
        try:
            while True:
                h.wait(timeout=5)
        except SegmentClosedError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter) for _ in range(THREADS)]
    for t in threads:
        t.start()
    started.wait()
    h.close()
    for t in threads:
        t.join(JOIN_S)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == THREADS
    h.unlink()


def test_views_outliving_close(name):
    """A view still exported keeps close() away (BufferExportsError); once
    released, close() succeeds and the view can no longer be exported."""
    shr = SharedMemory(name, create=True, size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        with shr.txn() as t:
            b = t.buf
            m = b[0:8]
    with pytest.raises(BufferExportsError):
        shr.close()
    with pytest.raises(ValueError):
        b[0]  # t.buf itself was released when its txn ended
    m.release()
    shr.close()
    with pytest.raises((SegmentClosedError, ValueError)):
        memoryview(b)
    with pytest.raises(SegmentClosedError):
        memoryview(shr)
    shr.unlink()


# --------------------------------------------------------------------------
# fresh processes: first-use races


FIRST_USE = r"""
import sys, threading
from shmtxn import SharedDict, SharedMemory
name, kind = sys.argv[1], sys.argv[2]
barrier = threading.Barrier(8)
errors = []
def work(i):
    try:
        barrier.wait()
        if kind == "pickle":
            d = SharedDict(name)
            d[f"k{i}"] = {"i": i, "l": [i] * 3}
            assert d[f"k{i}"] == {"i": i, "l": [i] * 3}
            d.close()
        else:
            h = SharedMemory(name)
            with h.txn(write=False) as t:
                t[0]
            handles.append(h)
    except BaseException as exc:
        errors.append(repr(exc))
handles = []
threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
if kind == "slots":
    import os
    mine = [p for p in handles[0].info()["processes"]
            if p["pid"] == os.getpid()]
    print(len(mine))
    for h in handles: h.close()
print(errors)
"""


@pytest.mark.parametrize("kind", ["pickle", "slots"])
def test_first_use_in_eight_threads_of_a_fresh_process(name, kind):
    """pickle's functions are imported on first use (old code, no GIL: a
    thread could see dumps set and loads not yet); the first attach of a
    process claims its reader slot (old code, every build: attaching
    threads could claim one each)."""
    cls = SharedDict if kind == "pickle" else SharedMemory
    with cls(name, create=True, **({} if kind == "pickle" else
                                   {"size": 8})):
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", FIRST_USE, name,
                                  kind], capture_output=True, text=True,
                                 timeout=JOIN_S)
            assert out.returncode == 0, out.stderr
            lines = out.stdout.split()
            assert lines[-1] == "[]", out.stdout
            if kind == "slots":
                assert lines[0] == "1", out.stdout  # one slot per process


def test_the_module_declares_it_runs_without_the_gil():
    """On a free-threaded build, importing shmtxn leaves the GIL off."""
    if not FREE_THREADED:
        pytest.skip("a GIL build: nothing to declare")
    out = subprocess.run([sys.executable, "-c", "import sys, shmtxn; "
                          "print(sys._is_gil_enabled())"],
                         capture_output=True, text=True, timeout=JOIN_S,
                         env={k: v for k, v in os.environ.items()
                              if k != "PYTHON_GIL"})
    assert out.stdout.strip() == "False", out.stderr


def test_nested_txn_in_one_thread_is_still_an_error(name):
    """Per-thread nesting is unchanged by all of the above."""
    with SharedMemory(name, create=True, size=8) as shr:
        def work(i, barrier):
            barrier.wait()
            for _ in range(200):
                with shr.txn():
                    with pytest.raises(NestedTransactionError):
                        with shr.txn():
                            pass

        run_threads(work)
