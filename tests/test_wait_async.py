"""wait_async: the event loop keeps running while a coroutine waits for a
commit; timeouts, cancellation (the worker thread leaves within a slice),
errors, and SharedDict.  Commits come from coroutines on the same loop:
if the loop were blocked they could not run and the waits would never
end (each has a 60 s timeout, so a blocked loop fails the test)."""

import asyncio
import multiprocessing
import os
import time

import pytest

import wait_workers
from shmtxn import SharedDict, SharedMemory
from shmtxn.errors import SegmentClosedError
from wait_workers import handle, waiters  # noqa: F401 (a fixture)


def put(h, value):
    h["k" if isinstance(h, SharedDict) else 0] = value


async def until_true(cond, what):
    """Poll `cond` on the loop (a condition, not a duration)."""
    end = time.monotonic() + 60
    while not cond():
        assert time.monotonic() < end, f"never: {what}"
        await asyncio.sleep(0.001)


def test_wait_async_wakes_on_a_commit_from_the_same_loop(handle):
    async def main():
        v = handle.version

        async def committer():
            await until_true(lambda: waiters(handle.name) == 1, "waiting")
            put(handle, 1)  # runs only if the loop is not blocked

        got, _ = await asyncio.gather(handle.wait_async(v, timeout=60),
                                      committer())
        return v, got

    v, got = asyncio.run(main())
    assert got == v + 1
    assert waiters(handle.name) == 0


def test_wait_async_wakes_on_a_commit_from_another_process(name):
    ctx = multiprocessing.get_context("spawn")
    with SharedMemory(name, create=True, size=80) as h:
        parent, child = ctx.Pipe()

        async def main():
            since = h.version
            waiting = asyncio.ensure_future(h.wait_async(since, 60))
            await until_true(lambda: waiters(name) == 1, "waiting")
            p = ctx.Process(target=wait_workers.write_then_hang,
                            args=(name, "memory", child))
            p.start()
            # the child holds its txn open: the version has not moved yet
            assert await asyncio.get_running_loop().run_in_executor(
                None, parent.recv) == "in txn"
            assert not waiting.done()
            parent.send("commit")  # the child's recv returns: it commits
            got = await waiting
            p.join(60)
            return since, got, p.exitcode

        since, got, code = asyncio.run(main())
        assert code == 0 and got == since + 1 and h[0] == 99


def test_wait_async_timeout_returns_since(handle):
    async def main():
        return await handle.wait_async(timeout=0.01), handle.version

    got, v = asyncio.run(main())
    assert got == v
    assert waiters(handle.name) == 0


def test_wait_async_returns_at_once_when_already_moved(handle):
    put(handle, 1)

    async def main():
        return await handle.wait_async(0)

    assert asyncio.run(main()) == 1


def test_wait_async_since_is_taken_at_the_call(handle):
    async def main():
        coro = handle.wait_async(timeout=60)  # since: the version now
        put(handle, 1)  # before the await: still counts
        return await coro

    assert asyncio.run(main()) == 1


def test_wait_async_checks_arguments_at_the_call(handle):
    with pytest.raises(ValueError, match="timeout must be None"):
        handle.wait_async(timeout=-1)
    with pytest.raises(TypeError, match="since must be"):
        handle.wait_async("0")


def test_cancelled_wait_async_frees_its_thread(handle):
    async def main():
        task = asyncio.ensure_future(handle.wait_async())
        await until_true(lambda: waiters(handle.name) == 1, "waiting")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the worker leaves within one slice, without any commit
        await until_true(lambda: waiters(handle.name) == 0, "it left")

    asyncio.run(main())


def test_many_concurrent_waits_all_wake(handle):
    async def main():
        v = handle.version
        waits = [asyncio.ensure_future(handle.wait_async(v, 60))
                 for _ in range(20)]
        await until_true(lambda: waiters(handle.name) == 20, "all wait")
        put(handle, 1)
        return v, await asyncio.gather(*waits)

    v, got = asyncio.run(main())
    assert got == [v + 1] * 20


def test_error_in_the_worker_reaches_the_task(name):
    h = SharedMemory(name, create=True, size=8)

    async def main():
        task = asyncio.ensure_future(h.wait_async(timeout=60))
        await until_true(lambda: waiters(name) == 1, "waiting")
        h.close()  # the worker's wait raises SegmentClosedError
        with pytest.raises(SegmentClosedError):
            await task

    asyncio.run(main())
    h.unlink()


def test_write_txn_inside_a_coroutine(handle):
    """The documented pattern: short txns inline, long ones on a thread
    (asyncio.to_thread) while the loop goes on."""
    async def main():
        with handle.txn() as t:  # short: inline
            put(t, 1)

        def long_txn():
            with handle.txn() as t:
                put(t, 2)
            return os.getpid()

        assert await asyncio.to_thread(long_txn) == os.getpid()
        return handle.version

    assert asyncio.run(main()) == 2
