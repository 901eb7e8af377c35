"""Waiting for data: ``txn(until=pred)`` and ``wait_async``.

``shr.wait(since, timeout)`` itself is C (a futex on the segment's change
word, the GIL released while it sleeps); this module builds on it:

- ``txn_until``: what ``shr.txn(until=pred, ...)`` returns -- a context
  manager that opens a txn, evaluates ``pred(t)`` in it and, while it is
  false, closes the txn and sleeps until the next change.  When ``pred``
  holds, the body runs in that very txn: the snapshot ``pred`` saw.
- ``wait_async``: ``await shr.wait_async(...)``, the same wait on a worker
  thread so the event loop keeps running; cancelling the awaiting task
  frees its thread within one slice.

See docs/coordination.md.
"""

from __future__ import annotations

import os
import threading
import time

from .errors import LockTimeout

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Coroutine
    from typing import Any, Literal, Protocol

    from . import _core

    _Handle = _core.Memory | _core.Dict
    _AnyTxn = _core.Txn | _core.DictTxn
    _Job = Callable[[], None]

    class _Waitable(Protocol):
        """A handle wait_async can wait on: SharedMemory or SharedDict."""

        @property
        def name(self) -> str: ...
        @property
        def version(self) -> int: ...
        def wait(self, since: int | None = None,
                 timeout: float | None = None) -> int: ...
        def txn(self, write: bool | None = None,
                timeout: float | None = None) -> object: ...

__all__ = ["txn_until", "wait_async"]

# Longest single wait of a worker thread before it looks at its cancel
# flag: a cancelled wait_async holds its thread at most this long.
_SLICE = 0.02


class _UntilTxn:
    """``with shr.txn(until=pred, timeout=...) as t``: enters once
    ``pred(t)`` holds, and binds that txn."""

    __slots__ = ("_handle", "_pred", "_write", "_timeout", "_txn")

    def __init__(self, handle: _Handle, pred: Callable[[Any], object],
                 write: bool, timeout: float | None) -> None:
        self._handle = handle
        self._pred = pred
        self._write = write
        self._timeout = timeout
        self._txn: _AnyTxn | None = None

    @property
    def write(self) -> bool:
        return self._write

    def __repr__(self) -> str:
        state = "not entered" if self._txn is None else repr(self._txn)
        return (f"<shmtxn txn until {self._pred!r} on "
                f"{self._handle.name!r}, {state}>")

    def __enter__(self) -> _AnyTxn:
        if self._txn is not None:
            raise RuntimeError("a transaction object can be entered once; "
                               "open a new one with .txn()")
        handle, pred, timeout = self._handle, self._pred, self._timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
            t = handle.txn(self._write, left)
            t.__enter__()
            try:
                # inside the txn no commit can land: the version read here
                # is the one of the snapshot pred sees
                seen = handle.version
                held = pred(t)
            except BaseException:
                if t.active:
                    t.abort()
                raise
            if held:
                self._txn = t
                return t
            if t.active:
                t.abort()  # end it without a commit: pred writes nothing
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or handle.wait(seen, left) == seen:
                    raise LockTimeout(
                        f"txn(until={pred!r}) on {handle.name!r}: the "
                        f"predicate did not hold within the timeout of "
                        f"{timeout} s")
            else:
                handle.wait(seen)

    def __exit__(self, *exc: object) -> Literal[False]:
        if self._txn is not None:
            self._txn.__exit__(*exc)  # never swallows: returns False
        return False


def txn_until(handle: _Handle, pred: Callable[[Any], object], write: bool,
              timeout: float | None) -> _UntilTxn:
    """What ``handle.txn(write, timeout, until=pred)`` returns."""
    return _UntilTxn(handle, pred, write, timeout)


# ---------------------------------------------------------------------------
# asyncio


class _Workers:
    """Daemon threads that run blocking waits for event loops, reused
    while idle: a wait blocks one thread, never the loop, and never queues
    behind another wait."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # [(event, slot)] of parked workers
        self._idle: list[tuple[threading.Event, list[_Job | None]]] = []

    def submit(self, job: _Job) -> None:
        with self._lock:
            if self._idle:
                ready, slot = self._idle.pop()
                slot[0] = job
                ready.set()
                return
        threading.Thread(target=self._run, args=(job,), daemon=True,
                         name="shmtxn-wait").start()

    def _run(self, job: _Job | None) -> None:
        ready = threading.Event()
        slot: list[_Job | None] = [None]
        while True:
            try:
                if job is not None:
                    job()
            except BaseException:  # e.g. the loop closed under us
                pass
            job = None
            ready.clear()
            with self._lock:
                self._idle.append((ready, slot))
            # parked threads live as long as the process: few at a time
            ready.wait()
            job, slot[0] = slot[0], None


_workers = _Workers()


def _forget_parent_workers() -> None:
    """In a forked child: the parent's parked workers were not forked
    (only the forking thread is), so a job handed to one would never run.
    Start the child with an empty pool and a fresh lock."""
    global _workers
    _workers = _Workers()


os.register_at_fork(after_in_child=_forget_parent_workers)


def _blocking_wait(handle: _Waitable, since: int, deadline: float | None,
                   cancelled: threading.Event) -> int:
    """Wait in slices so a cancelled coroutine frees its thread soon."""
    while True:
        left = _SLICE
        if deadline is not None:
            left = min(_SLICE, deadline - time.monotonic())
            if left <= 0:
                return since
        version = handle.wait(since, left)
        if version != since or cancelled.is_set():
            return version


def wait_async(handle: _Waitable, since: int | None = None,
               timeout: float | None = None,
               ) -> Coroutine[Any, Any, int]:
    """``await handle.wait_async(since=None, timeout=None)``: the new
    version once another commit moved it past ``since``, or ``since`` if
    ``timeout`` seconds passed first -- without blocking the event loop.
    Arguments are checked (and ``since=None`` resolved) at the call."""
    handle.txn(False, timeout)  # checks timeout exactly as txn() does
    if since is None:
        since = handle.version
    version = handle.wait(since, 0)  # checks since; moved already?
    return _wait_async(handle, since, timeout, version)


async def _wait_async(handle: _Waitable, since: int,
                      timeout: float | None, version: int) -> int:
    import asyncio  # only here: importing shmtxn stays cheap

    if version != since or timeout == 0:
        return version
    deadline = None if timeout is None else time.monotonic() + timeout
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    cancelled = threading.Event()

    def job() -> None:
        try:
            result = _blocking_wait(handle, since, deadline, cancelled)
        except BaseException as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(_settle, future, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result)

    _workers.submit(job)
    try:
        return await future
    finally:
        cancelled.set()  # on cancellation: the worker leaves in a slice


def _settle(future: asyncio.Future[int],
            outcome: int | BaseException) -> None:
    """Hand the wait's result, or the exception it raised, to `future`."""
    if future.done():
        return  # cancelled meanwhile
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
