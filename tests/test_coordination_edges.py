"""Edges of issue #13 (open-or-create, reclaiming, wait/version/until,
wait_async) that an outside review found broken: each test names the
defect it showed in its docstring, and failed on the code it was written
against.

No sleeps as synchronisation: a waiter is known to be asleep when the
header's change_waiters count says so (wait_workers.waiters); a broken
wait is caught by a generous cap (30 s) on a condition, never by a
duration that a correct run must beat."""

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from shmtxn import SharedMemory
from wait_workers import waiters

TESTS = os.path.dirname(os.path.abspath(__file__))


def until_true(cond, what, cap=30):
    """Poll `cond` until it holds; `cap` seconds at most."""
    end = time.monotonic() + cap
    while not cond():
        assert time.monotonic() < end, f"never: {what}"
        time.sleep(0.001)


def run_script(code, *args, cap=30):
    """Run `code` in a fresh interpreter (killed after `cap` s: a hang is
    the defect); its (returncode, stdout, stderr)."""
    try:
        r = subprocess.run([sys.executable, "-c", textwrap.dedent(code),
                            *args], cwd=TESTS, capture_output=True,
                           text=True, timeout=cap)
    except subprocess.TimeoutExpired as e:  # subprocess killed it
        pytest.fail(f"the script hung (killed after {cap} s); output so "
                    f"far: {e.stdout!r} {e.stderr!r}")
    return r.returncode, r.stdout, r.stderr


# --------------------------------------------------------------------------
# wait_async in a forked child


def _child_wait_async(name, conn):
    h = SharedMemory(name)
    try:
        conn.send(("got", asyncio.run(h.wait_async())))
    except BaseException as e:  # noqa: BLE001 -- reported to the parent
        conn.send(("error", repr(e)))
    h.close()


def test_wait_async_works_in_a_child_forked_after_the_parent_used_it(name):
    """Defect: the worker pool (_wait._workers) survives fork with the
    parent's parked threads in its idle list; in the child, submit() hands
    the wait to a thread that does not exist, so the wait never starts and
    `await wait_async(...)` never returns, whatever its timeout."""
    from shmtxn import _wait

    ctx = multiprocessing.get_context("fork")
    with SharedMemory(name, create=True, size=8) as h:
        # the parent waits once (times out on a worker thread), and that
        # worker parks in the pool
        assert asyncio.run(h.wait_async(timeout=0.01)) == 0
        until_true(lambda: _wait._workers._idle, "the worker parks")
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_child_wait_async, args=(name, child))
        p.start()
        try:
            # the child's wait must at least begin (be counted) ...
            until_true(lambda: waiters(name) == 1,
                       "the forked child's wait_async begins waiting")
            h[0] = 1  # ... and then end with this commit
            assert parent.poll(60)
            assert parent.recv() == ("got", 1)
        finally:
            p.kill()
            p.join()


# --------------------------------------------------------------------------
# close() from a signal handler while the same thread waits


def test_close_from_a_signal_handler_during_wait_does_not_hang(name):
    """Defect: a signal handler (run by wait()'s PyErr_CheckSignals between
    slices) that closes the handle -- a common SIGTERM clean-up -- spins
    forever in wait_release_waiters: it waits for the handle's waiters to
    leave, and the only waiter is the very thread running the handler."""
    code = """
        import os, signal, sys, threading, time
        from shmtxn import SharedMemory
        from shmtxn.errors import SegmentClosedError
        from wait_workers import waiters

        name = sys.argv[1]
        h = SharedMemory(name, create=True, size=8)

        def on_term(signum, frame):
            h.close()  # clean up on SIGTERM

        signal.signal(signal.SIGTERM, on_term)
        main = threading.main_thread().ident

        def poke():
            while waiters(name) != 1:  # the main thread sleeps in wait()
                time.sleep(0.001)
            signal.pthread_kill(main, signal.SIGTERM)

        threading.Thread(target=poke, daemon=True).start()
        try:
            h.wait()
            print("returned")
        except SegmentClosedError:
            print("closed")
        h.unlink()
    """
    rc, out, err = run_script(code, name)
    assert rc == 0, err
    assert out.strip() in ("closed", "returned")


# --------------------------------------------------------------------------
# shmtxn rm against a process attaching meanwhile


def _attach_and_hold(name, conn):
    h = SharedMemory(name)  # attaches: it has the segment open now
    conn.send("attached")
    conn.recv()
    h.close()


def test_rm_keeps_a_segment_attached_after_it_was_looked_at(name,
                                                            monkeypatch):
    """Defect: `shmtxn rm` (admin.remove) checks `attached` and then
    unlinks by name (_core.unlink), so a process that attaches in between
    keeps using a file nobody can find any more (the next create=None
    makes a second segment under the name).  gc was moved to the
    attach/reclaim protocol for exactly this race; rm was not.  Here the
    attach is put right after remove()'s look (the race made
    deterministic); with 4 processes doing create=None/close in a loop and
    rm in another, a holder finds its mapping '(deleted)' within a few
    hundred rounds."""
    from shmtxn import admin

    ctx = multiprocessing.get_context("fork")
    seg = SharedMemory(name, create=True, size=8)
    seg.close()  # not unlinked: an unused segment rm may remove
    look = admin.segment_info
    kids = []

    def look_then_someone_attaches(n):
        info = look(n)
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_attach_and_hold, args=(name, child))
        p.start()
        kids.append((p, parent))
        assert parent.recv() == "attached"
        return info

    monkeypatch.setattr(admin, "segment_info", look_then_someone_attaches)
    try:
        try:
            admin.remove(name)
        except admin.SegmentInUseError:
            pass  # refusing is right too
        # the attached process must still find its segment under the name
        assert os.path.exists(f"/dev/shm/{name}"), (
            "rm removed a segment a live process had attached")
    finally:
        for p, conn in kids:
            conn.send("go")
            p.join(30)
