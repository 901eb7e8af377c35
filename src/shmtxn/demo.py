"""The article's producer/consumer, scaled up: the main job the README runs.

Writers each run many write transactions that bump a shared counter and
stamp ten slots with its new value; readers run read transactions that
check the ten slots always agree with the counter (no torn transaction is
ever visible).  At the end the counter must equal the number of write
transactions the writers report: not one increment lost.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import queue
import signal
import sys
import time
from multiprocessing.connection import wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from typing import TYPE_CHECKING, Any, Callable, TextIO

from ._procs import stop_processes
from ._term import columns, paint
from .errors import Error
from .memory import SharedMemory

if TYPE_CHECKING:
    from ._core import Memory

COUNTER = 0
BATCH = slice(1, 11)
WRITERS_DONE = 11
SLOTS = 12
MAX_PROCS = 512  # writers, and readers: more is a fork bomb, not a demo
# No wait is unbounded: a process that cannot get the lock for this long,
# or readers that do not finish this long after the writers did, mean
# something outside the demo holds or removed its segment.
LOCK_TIMEOUT = 30.0
FINISH_TIMEOUT = 30.0
# A reader sleeping for the next commit looks again after this long even
# without one: the demo's end never hangs on a single wake-up.
RECHECK = 0.1


def check_args(writers: int, readers: int, txns: int,
               seconds: float) -> None:
    """ValueError unless the demo can run with these numbers."""
    if not 1 <= writers <= MAX_PROCS:
        raise ValueError(f"writers must be 1 to {MAX_PROCS} (got {writers})")
    if not 0 <= readers <= MAX_PROCS:
        raise ValueError(f"readers must be 0 to {MAX_PROCS} (got {readers})")
    if txns < 1:
        raise ValueError(f"txns must be at least 1 (got {txns})")
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"seconds must be a finite number >= 0 (got "
                         f"{seconds}); 0 runs --txns transactions instead")


def _child(role: str, func: Callable[..., None], name: str,
           *args: Any) -> None:
    """Attach to segment `name` and run a writer or reader on it.  Ctrl-C
    is the parent's to handle (it stops the children); a shmtxn error (the
    segment was removed, a lock stayed taken) is one line on stderr and
    exit code 1."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with SharedMemory(  # type: ignore[no-untyped-call, unused-ignore]
                name) as shr:
            func(shr, *args)
    except Error as e:
        print(f"shmtxn demo: {role} process {os.getpid()}: {e}",
              file=sys.stderr)
        sys.exit(1)


def _writer(shr: Memory, txns: int, seconds: float,
            done: Queue[int]) -> None:
    """Run `txns` write txns, or as many as fit in `seconds` if > 0."""
    deadline = time.monotonic() + seconds
    count = 0
    while (count < txns) if seconds <= 0 else (time.monotonic() < deadline):
        with shr.txn(timeout=LOCK_TIMEOUT) as shm:
            value = shm[COUNTER] + 1
            shm[COUNTER] = value
            shm[BATCH] = [value] * 10
        count += 1
    done.put(count)
    with shr.txn(timeout=LOCK_TIMEOUT) as shm:
        shm[WRITERS_DONE] += 1


def _reader(shr: Memory, writers: int,
            results: Queue[tuple[int, int]]) -> None:
    """Check every state the writers commit, sleeping (no polling, no lock
    held) while none is new: wait() returns at once when a commit came
    since `seen`, and only an idle segment puts the reader to sleep."""
    checked = torn = 0
    while True:
        seen = shr.version
        with shr.txn(write=False, timeout=LOCK_TIMEOUT) as shm:
            counter = shm[COUNTER]
            batch = shm[BATCH]
            finished = shm[WRITERS_DONE]
        checked += 1
        if batch != [counter] * 10 and counter != 0:
            torn += 1
        if finished == writers:
            break
        shr.wait(since=seen, timeout=RECHECK)
    results.put((checked, torn))


def _counter(shr: Memory) -> int:
    with shr.txn(write=False, timeout=LOCK_TIMEOUT) as shm:
        value = int(shm[COUNTER])
    return value


BAR_MIN, BAR_MAX = 10, 40  # the bar's inside, in characters


def bar_line(done: int, part: float, rate: float, columns: int) -> str:
    """The progress line for a terminal `columns` wide: at most
    ``columns - 1`` characters, so that it never wraps (a wrapped line
    cannot be redrawn in place).  What does not fit goes, in this order:
    the indent, the rate, the bar, then the count's end."""
    room = columns - 1
    count = f"{done:,} txns"
    rate_text = f"{rate:,.0f}/s"
    for indent, tail in (("  ", f" {count}  {rate_text}"),
                         ("", f" {count}  {rate_text}"), ("", f" {count}")):
        inner = min(room - len(indent) - len(tail) - 2, BAR_MAX)
        if inner >= BAR_MIN:
            filled = min(int(inner * part), inner)
            return f"{indent}[{'#' * filled}{'.' * (inner - filled)}]{tail}"
    return count[:max(room, 0)]


class Bar:
    """The demo's progress line on a terminal: redrawn in place each time
    draw() is called, as wide as the terminal is at that moment (never
    wider, so it never wraps), and erased by close()."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.ansi = os.environ.get("TERM") != "dumb"
        self.shown = 0  # characters on the line now

    def draw(self, done: int, part: float, rate: float) -> None:
        line = bar_line(done, part, rate, columns(self.stream))
        # the rest of a longer earlier line is cleared (ANSI "erase to
        # end of line", or spaces on a terminal without it)
        rest = "\x1b[K" if self.ansi else " " * (self.shown - len(line))
        # counted first: a Ctrl-C inside the write still gets it erased
        self.shown = max(self.shown, len(line))
        self.stream.write(f"\r{line}{rest}")
        self.stream.flush()
        self.shown = len(line)

    def close(self) -> None:
        """Erase the line (the cursor back at its start); again: no-op."""
        if self.shown:
            clear = "\x1b[K" if self.ansi else " " * self.shown + "\r"
            self.stream.write(f"\r{clear}")
            self.stream.flush()
            self.shown = 0


def _progress(shr: Memory, total: int, seconds: float, start: float,
              bar: Bar | None) -> None:
    if bar is None:
        return
    done = _counter(shr)
    elapsed = time.perf_counter() - start
    part = done / total if total else min(elapsed / seconds, 1.0)
    bar.draw(done, part, done / max(elapsed, 1e-9))


def wait_all(sentinels: list[int], timeout: float,
             ended: Callable[[int], None]) -> bool:
    """Wait until every process of `sentinels` has ended, calling
    ended(sentinel) for each as it does; False if some had not within
    `timeout` s.  (One connection.wait() is not enough: it returns as
    soon as *one* has ended.)"""
    deadline = time.monotonic() + timeout
    left = set(sentinels)
    while left:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        for sentinel in wait(list(left), timeout=remaining):
            assert isinstance(sentinel, int)  # as passed
            left.discard(sentinel)
            ended(sentinel)
    return True


def _failed(procs: list[BaseProcess]) -> list[str]:
    """'writer 1234 exited with code 1' for each child that failed."""
    return [f"{p.name} process {p.pid} exited with code {p.exitcode}"
            for p in procs if p.exitcode not in (None, 0)]


def _drain(q: Queue[Any], n: int, seconds: float) -> list[Any]:
    """Up to `n` results the children put on `q`, waiting at most `seconds`
    in all (a child that exited normally has put its result already)."""
    got: list[Any] = []
    deadline = time.monotonic() + seconds
    while len(got) < n:
        try:
            got.append(q.get(timeout=max(deadline - time.monotonic(), 0)))
        except queue.Empty:
            break
    return got


def run(writers: int = 4, readers: int = 2, txns: int = 50000,
        seconds: float = 0.0, start_method: str | None = None,
        stream: TextIO | None = sys.stdout, progress: TextIO | None = None,
        color: bool = False) -> dict[str, Any]:
    """Run the demo; report to `stream` (None: silent); return the result.

    `progress`, a terminal, gets a progress line, redrawn as the writers
    run and erased before the results are written (the CLI passes stderr
    when it is a terminal).  `color`: the verdict in colour.

    Each writer runs `txns` transactions, or, if `seconds` > 0, as many as
    it can in that time.  If a child fails (its segment was removed, it
    was killed, a lock stayed taken for LOCK_TIMEOUT s), the others are
    stopped and the result says why (``ok`` False, ``error``).  Ctrl-C
    stops the children and raises KeyboardInterrupt.
    """
    check_args(writers, readers, txns, seconds)
    # Any: typeshed's BaseContext lacks Process (each concrete one has it)
    ctx: Any = multiprocessing.get_context(start_method)
    out = stream or io.StringIO()  # None: run silently
    bar = Bar(progress) if progress is not None else None
    with SharedMemory(  # type: ignore[no-untyped-call, unused-ignore]
            create=True, size=SLOTS * 8,
            max_processes=max(128, writers + readers + 1)) as shr:
        out.write(f"shmtxn demo: {writers} writer and {readers} reader "
                  f"processes ({ctx.get_start_method()}) on segment "
                  f"{shr.name}\n")
        out.flush()  # before the bar, should both go to one terminal
        done: Queue[int] = ctx.Queue()
        results: Queue[tuple[int, int]] = ctx.Queue()
        procs: list[BaseProcess] = [
            ctx.Process(target=_child, name="writer",
                        args=("writer", _writer, shr.name, txns, seconds,
                              done))
            for _ in range(writers)]
        procs += [ctx.Process(target=_child, name="reader",
                              args=("reader", _reader, shr.name, writers,
                                    results))
                  for _ in range(readers)]
        try:
            result = _supervise(shr, procs, writers, readers, txns, seconds,
                                done, results, ctx, bar)
        finally:
            if bar is not None:  # Ctrl-C: the message after is on its own
                bar.close()
            stop_processes(procs)  # Ctrl-C, or an error: none is left behind
    _report(result, out, color)
    return result


def start_ignoring_ctrl_c(procs: list[BaseProcess]) -> None:
    """Start `procs` ignoring Ctrl-C from the start (spawned ones inherit
    SIG_IGN through exec): the parent stops them."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for p in procs:
            p.start()
    finally:
        signal.signal(signal.SIGINT, old)


def _supervise(shr: Memory, procs: list[BaseProcess], writers: int,
               readers: int, txns: int, seconds: float, done: Queue[int],
               results: Queue[tuple[int, int]], ctx: BaseContext,
               bar: Bar | None) -> dict[str, Any]:
    """Start the children, follow them, and gather what they report."""
    start_ignoring_ctrl_c(procs)
    start = time.perf_counter()
    running = {p.sentinel: p for p in procs[:writers]}
    readers_left = {p.sentinel: p for p in procs[writers:]}
    expected = 0 if seconds > 0 else writers * txns
    error = None
    while running and not error:
        _progress(shr, expected, seconds, start, bar)
        for ended in wait(list(running) + list(readers_left), timeout=0.25):
            assert isinstance(ended, int)  # a sentinel, as passed
            (running.pop(ended, None) or readers_left.pop(ended)).join()
        if _failed(procs):
            error = "; ".join(_failed(procs))
    elapsed = time.perf_counter() - start
    _progress(shr, expected, seconds, start, bar)  # the end, until erased
    if not error and readers_left:  # the readers' last txn sees the end
        if not wait_all(list(readers_left), FINISH_TIMEOUT,
                        lambda s: readers_left.pop(s).join()):
            error = (f"readers did not finish within {FINISH_TIMEOUT:g} s "
                     "of the writers")
        elif _failed(procs):
            error = "; ".join(_failed(procs))
    if error:
        stop_processes(procs)
    counts = _drain(done, writers, 0.5 if error else 10)
    checks = _drain(results, readers, 0.5 if error else 10)
    if not error and (len(counts) < writers or len(checks) < readers):
        error = "a process ended without reporting its count"
    total = sum(counts)
    return {
        "segment": shr.name, "writers": writers, "readers": readers,
        "start_method": ctx.get_start_method(), "write_txns": total,
        "seconds": elapsed, "txn_per_s": total / elapsed,
        "read_txns": sum(c for c, _ in checks),
        "torn_reads": sum(t for _, t in checks),
        "counter": _counter(shr),
        "failed_processes": [p.exitcode for p in procs
                             if p.exitcode not in (None, 0)],
        "error": error,
        "ok": False,
    }


def _report(result: dict[str, Any], out: TextIO, color: bool) -> None:
    result["ok"] = (not result["error"] and not result["torn_reads"]
                    and result["counter"] == result["write_txns"])
    total = result["write_txns"]
    out.write(
        f"  {total:,} write txns in {result['seconds']:.2f} s: "
        f"{result['txn_per_s']:,.0f} txn/s; {result['read_txns']:,} read "
        f"txns checked\n  counter = {result['counter']:,} (expected "
        f"{total:,}), torn reads = {result['torn_reads']}\n  ")
    if result["ok"]:
        out.write(f"{paint('OK:', 'ok', color)} every transaction was "
                  "atomic and none was lost\n")
    elif result["error"]:
        out.write(f"{paint('FAILED:', 'bad', color)} {result['error']}; "
                  "the counts above are incomplete\n")
    else:
        out.write(f"{paint('FAILED', 'bad', color)}\n")
