"""``python -m shmtxn demo --redis URL``: the demo on a SharedDict in Redis.

The same job as shmtxn.demo, in the dict's terms: writers each run write
txns that bump ``counter`` and stamp ``b0``..``b9`` with its new value;
readers run read txns that check the ten stamps always equal the
counter.  At the end the counter must equal the write txns the writers
report.  The report is shmtxn.demo's.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import sys
import time
from multiprocessing.connection import wait
from typing import Any, TextIO

from . import demo
from ._procs import stop_processes
from .errors import Error
from .remote import RedisDict

BATCH = [f"b{i}" for i in range(10)]


def _child(role: str, url: str, name: str, *args: Any) -> None:
    """Connect and run a writer or reader; a shmtxn error is one line on
    stderr and exit code 1 (as in shmtxn.demo)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with RedisDict(url, name) as d:
            (_writer if role == "writer" else _reader)(d, *args)
    except Error as e:
        print(f"shmtxn demo: {role} process {os.getpid()}: {e}",
              file=sys.stderr)
        sys.exit(1)


def _writer(d: RedisDict, txns: int, seconds: float, done: Any) -> None:
    deadline = time.monotonic() + seconds
    count = 0
    while (count < txns) if seconds <= 0 else (time.monotonic() < deadline):
        with d.txn(timeout=demo.LOCK_TIMEOUT) as t:
            value = t["counter"] + 1
            t["counter"] = value
            t.update(dict.fromkeys(BATCH, value))
        count += 1
    done.put(count)
    with d.txn(timeout=demo.LOCK_TIMEOUT) as t:
        t["writers_done"] += 1


def _reader(d: RedisDict, writers: int, results: Any) -> None:
    checked = torn = 0
    while True:
        with d.txn(write=False, timeout=demo.LOCK_TIMEOUT) as t:
            counter, finished, *batch = t.get_many(
                ["counter", "writers_done", *BATCH])
        checked += 1
        torn += batch != [counter] * 10 and counter != 0
        if finished == writers:
            break
    results.put((checked, torn))


def run(url: str, writers: int = 4, readers: int = 2, txns: int = 2000,
        seconds: float = 0.0, start_method: str | None = None,
        stream: TextIO | None = sys.stdout,
        color: bool = False) -> dict[str, Any]:
    """Run the demo on a new dict in the Redis at `url`; as shmtxn.demo.run
    otherwise (the result also names the URL; no progress bar)."""
    demo.check_args(writers, readers, txns, seconds)
    ctx: Any = multiprocessing.get_context(start_method)
    out = stream or io.StringIO()
    name = f"shmtxn-demo-{os.getpid()}-{time.time_ns()}"
    with RedisDict(url, name, create=True) as d:
        with d.txn() as t:
            for key in ["counter", "writers_done", *BATCH]:
                t[key] = 0
        out.write(f"shmtxn demo: {writers} writer and {readers} reader "
                  f"processes ({ctx.get_start_method()}) on SharedDict "
                  f"{name!r} at {url}\n")
        done, results = ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=_child, name="writer",
                             args=("writer", url, name, txns, seconds,
                                   done)) for _ in range(writers)]
        procs += [ctx.Process(target=_child, name="reader",
                              args=("reader", url, name, writers, results))
                  for _ in range(readers)]
        demo.start_ignoring_ctrl_c(procs)
        start = time.perf_counter()
        error = None
        try:
            pending = {p.sentinel: p for p in procs}
            while pending and not error:
                for ended in wait(list(pending), timeout=0.25):
                    pending.pop(ended).join()
                if demo._failed(procs):
                    error = "; ".join(demo._failed(procs))
        finally:
            stop_processes(procs)
        elapsed = time.perf_counter() - start
        counts = demo._drain(done, writers, 0.5 if error else 10)
        checks = demo._drain(results, readers, 0.5 if error else 10)
        if not error and (len(counts) < writers or len(checks) < readers):
            error = "a process ended without reporting its count"
        total = sum(counts)
        result = {
            "url": url, "dict": name, "writers": writers,
            "readers": readers, "start_method": ctx.get_start_method(),
            "write_txns": total, "seconds": elapsed,
            "txn_per_s": total / elapsed,
            "read_txns": sum(c for c, _ in checks),
            "torn_reads": sum(t for _, t in checks),
            "counter": d["counter"],
            "failed_processes": [p.exitcode for p in procs
                                 if p.exitcode not in (None, 0)],
            "error": error, "ok": False,
        }
    demo._report(result, out, color)
    return result
