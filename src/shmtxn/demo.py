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

from .errors import Error
from .memory import SharedMemory
from ._procs import stop_processes

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


def _child(role: str, func, name: str, *args) -> None:
    """Attach to segment `name` and run a writer or reader on it.  Ctrl-C
    is the parent's to handle (it stops the children); a shmtxn error (the
    segment was removed, a lock stayed taken) is one line on stderr and
    exit code 1."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with SharedMemory(name) as shr:
            func(shr, *args)
    except Error as e:
        print(f"shmtxn demo: {role} process {os.getpid()}: {e}",
              file=sys.stderr)
        sys.exit(1)


def _writer(shr: SharedMemory, txns: int, seconds: float, done) -> None:
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


def _reader(shr: SharedMemory, writers: int, results) -> None:
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


def _counter(shr: SharedMemory) -> int:
    with shr.txn(write=False, timeout=LOCK_TIMEOUT) as shm:
        return shm[COUNTER]


def _progress(shr, total, seconds, start, stream) -> None:
    width = 30
    done = _counter(shr)
    elapsed = time.perf_counter() - start
    part = done / total if total else min(elapsed / seconds, 1.0)
    filled = int(width * part)
    rate = done / max(elapsed, 1e-9)
    stream.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] "
                 f"{done:,} txns  {rate:,.0f}/s")
    stream.flush()


def wait_all(sentinels: list[int], timeout: float, ended) -> bool:
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
            left.discard(sentinel)
            ended(sentinel)
    return True


def _failed(procs) -> list[str]:
    """'writer 1234 exited with code 1' for each child that failed."""
    return [f"{p.name} process {p.pid} exited with code {p.exitcode}"
            for p in procs if p.exitcode not in (None, 0)]


def _drain(q, n: int, seconds: float) -> list:
    """Up to `n` results the children put on `q`, waiting at most `seconds`
    in all (a child that exited normally has put its result already)."""
    got = []
    deadline = time.monotonic() + seconds
    while len(got) < n:
        try:
            got.append(q.get(timeout=max(deadline - time.monotonic(), 0)))
        except queue.Empty:
            break
    return got


def run(writers: int = 4, readers: int = 2, txns: int = 50000,
        seconds: float = 0.0, start_method: str | None = None,
        stream=sys.stdout) -> dict:
    """Run the demo; report to `stream` (None: silent); return the result.

    Each writer runs `txns` transactions, or, if `seconds` > 0, as many as
    it can in that time.  If a child fails (its segment was removed, it
    was killed, a lock stayed taken for LOCK_TIMEOUT s), the others are
    stopped and the result says why (``ok`` False, ``error``).  Ctrl-C
    stops the children and raises KeyboardInterrupt.
    """
    check_args(writers, readers, txns, seconds)
    ctx = multiprocessing.get_context(start_method)
    out = stream or io.StringIO()  # None: run silently
    with SharedMemory(create=True, size=SLOTS * 8,
                      max_processes=max(128, writers + readers + 1)) as shr:
        out.write(f"shmtxn demo: {writers} writer and {readers} reader "
                  f"processes ({ctx.get_start_method()}) on segment "
                  f"{shr.name!r}\n")
        done, results = ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=_child, name="writer",
                             args=("writer", _writer, shr.name, txns,
                                   seconds, done))
                 for _ in range(writers)]
        procs += [ctx.Process(target=_child, name="reader",
                              args=("reader", _reader, shr.name, writers,
                                    results))
                  for _ in range(readers)]
        try:
            result = _supervise(shr, procs, writers, readers, txns, seconds,
                                done, results, ctx, out)
        finally:
            stop_processes(procs)  # Ctrl-C, or an error: none is left behind
    _report(result, out)
    return result


def _supervise(shr, procs, writers, readers, txns, seconds, done, results,
               ctx, out) -> dict:
    """Start the children, follow them, and gather what they report."""
    # Children ignore Ctrl-C from the start (spawned ones inherit SIG_IGN
    # through exec): the parent stops them.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for p in procs:
            p.start()
    finally:
        signal.signal(signal.SIGINT, old)
    start = time.perf_counter()
    running = {p.sentinel: p for p in procs[:writers]}
    readers_left = {p.sentinel: p for p in procs[writers:]}
    expected = 0 if seconds > 0 else writers * txns
    error = None
    while running and not error:
        _progress(shr, expected, seconds, start, out)
        for ended in wait(list(running) + list(readers_left), timeout=0.25):
            (running.pop(ended, None) or readers_left.pop(ended)).join()
        if _failed(procs):
            error = "; ".join(_failed(procs))
    elapsed = time.perf_counter() - start
    _progress(shr, expected, seconds, start, out)
    out.write("\n")
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


def _report(result: dict, out) -> None:
    result["ok"] = (not result["error"] and not result["torn_reads"]
                    and result["counter"] == result["write_txns"])
    total = result["write_txns"]
    out.write(
        f"  {total:,} write txns in {result['seconds']:.2f} s: "
        f"{result['txn_per_s']:,.0f} txn/s; {result['read_txns']:,} read "
        f"txns checked\n  counter = {result['counter']:,} (expected "
        f"{total:,}), torn reads = {result['torn_reads']}\n  ")
    if result["ok"]:
        out.write("OK: every transaction was atomic and none was lost\n")
    elif result["error"]:
        out.write(f"FAILED: {result['error']}; the counts above are "
                  "incomplete\n")
    else:
        out.write("FAILED\n")
