"""The article's producer/consumer, scaled up: the main job the README runs.

Writers each run many write transactions that bump a shared counter and
stamp ten slots with its new value; readers run read transactions that
check the ten slots always agree with the counter (no torn transaction is
ever visible).  At the end the counter must equal the number of write
transactions the writers report: not one increment lost.
"""

from __future__ import annotations

import io
import multiprocessing
import sys
import time
from multiprocessing.connection import wait

from .memory import SharedMemory

COUNTER = 0
BATCH = slice(1, 11)
WRITERS_DONE = 11
SLOTS = 12


def _writer(shr: SharedMemory, txns: int, seconds: float, done) -> None:
    """Run `txns` write txns, or as many as fit in `seconds` if > 0."""
    deadline = time.monotonic() + seconds
    count = 0
    while (count < txns) if seconds <= 0 else (time.monotonic() < deadline):
        with shr.txn() as shm:
            value = shm[COUNTER] + 1
            shm[COUNTER] = value
            shm[BATCH] = [value] * 10
        count += 1
    done.put(count)
    with shr.txn() as shm:
        shm[WRITERS_DONE] += 1


def _reader(shr: SharedMemory, writers: int, results) -> None:
    checked = torn = 0
    while True:
        with shr.txn(write=False) as shm:
            counter = shm[COUNTER]
            batch = shm[BATCH]
            finished = shm[WRITERS_DONE]
        checked += 1
        if batch != [counter] * 10 and counter != 0:
            torn += 1
        if finished == writers:
            break
    results.put((checked, torn))


def _progress(shr, total, seconds, start, stream) -> None:
    width = 30
    done = shr[COUNTER]
    elapsed = time.perf_counter() - start
    part = done / total if total else min(elapsed / seconds, 1.0)
    filled = int(width * part)
    rate = done / max(elapsed, 1e-9)
    stream.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] "
                 f"{done:,} txns  {rate:,.0f}/s")
    stream.flush()


def run(writers: int = 4, readers: int = 2, txns: int = 50000,
        seconds: float = 0.0, start_method: str | None = None,
        stream=sys.stdout) -> dict:
    """Run the demo; report to `stream` (None: silent); return the result.

    Each writer runs `txns` transactions, or, if `seconds` > 0, as many as
    it can in that time.
    """
    ctx = multiprocessing.get_context(start_method)
    out = stream or io.StringIO()  # None: run silently
    with SharedMemory(create=True, size=SLOTS * 8) as shr:
        out.write(f"shmtxn demo: {writers} writer and {readers} reader "
                  f"processes ({ctx.get_start_method()}) on segment "
                  f"{shr.name!r}\n")
        done, results = ctx.Queue(), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(shr, txns, seconds, done))
                 for _ in range(writers)]
        procs += [ctx.Process(target=_reader, args=(shr, writers, results))
                  for _ in range(readers)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        running = [p.sentinel for p in procs[:writers]]
        expected = 0 if seconds > 0 else writers * txns
        while running:
            _progress(shr, expected, seconds, start, out)
            for ended in wait(running, timeout=0.25):
                running.remove(ended)
        elapsed = time.perf_counter() - start
        _progress(shr, expected, seconds, start, out)
        out.write("\n")
        total = sum(done.get() for _ in range(writers))
        checks = [results.get() for _ in range(readers)]
        for p in procs:
            p.join()
        result = {
            "segment": shr.name, "writers": writers, "readers": readers,
            "start_method": ctx.get_start_method(), "write_txns": total,
            "seconds": elapsed, "txn_per_s": total / elapsed,
            "read_txns": sum(c for c, _ in checks),
            "torn_reads": sum(t for _, t in checks),
            "counter": shr[COUNTER],
            "failed_processes": [p.exitcode for p in procs
                                 if p.exitcode != 0],
        }
    result["ok"] = (result["counter"] == total and not result["torn_reads"]
                    and not result["failed_processes"])
    out.write(
        f"  {total:,} write txns in {elapsed:.2f} s: "
        f"{result['txn_per_s']:,.0f} txn/s; {result['read_txns']:,} read "
        f"txns checked\n  counter = {result['counter']:,} (expected "
        f"{total:,}), torn reads = {result['torn_reads']}"
        + (f", failed processes: {result['failed_processes']}"
           if result["failed_processes"] else "")
        + "\n  " + ("OK: every transaction was atomic and none was lost"
                    if result["ok"] else "FAILED") + "\n")
    return result
