"""The article's producer/consumer, scaled up: the main job the README runs.

Writers each run many write transactions that bump a shared counter and
stamp ten slots with its new value; readers run read transactions that
check the ten slots always agree with the counter (no torn transaction is
ever visible).  At the end the counter must equal the number of write
transactions: not one increment lost.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from multiprocessing.connection import wait

from .memory import SharedMemory

COUNTER = 0
BATCH = slice(1, 11)
WRITERS_DONE = 11
SLOTS = 12


def _writer(shr: SharedMemory, txns: int) -> None:
    for _ in range(txns):
        with shr.txn() as shm:
            value = shm[COUNTER] + 1
            shm[COUNTER] = value
            shm[BATCH] = [value] * 10
    with shr.txn() as shm:
        shm[WRITERS_DONE] += 1


def _reader(shr: SharedMemory, writers: int, results) -> None:
    checked = torn = 0
    while True:
        with shr.txn(write=False) as shm:
            counter = shm[COUNTER]
            batch = shm[BATCH]
            done = shm[WRITERS_DONE]
        checked += 1
        if batch != [counter] * 10 and counter != 0:
            torn += 1
        if done == writers:
            break
    results.put((checked, torn))


def _progress(shr: SharedMemory, total: int, start: float, stream) -> None:
    width = 30
    done = shr[COUNTER]
    filled = width * done // total if total else width
    rate = done / max(time.perf_counter() - start, 1e-9)
    stream.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] "
                 f"{done}/{total} txns  {rate:,.0f}/s")
    stream.flush()


def run(writers: int = 4, readers: int = 2, txns: int = 50000,
        start_method: str | None = None, stream=sys.stdout) -> bool:
    """Run the demo; print what happened; return True if verified."""
    ctx = multiprocessing.get_context(start_method)
    total = writers * txns
    with SharedMemory(create=True, size=SLOTS * 8) as shr:
        stream.write(f"shmtxn demo: {writers} writer and {readers} reader "
                     f"processes ({ctx.get_start_method()}) on segment "
                     f"{shr.name!r}\n")
        results = ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(shr, txns))
                 for _ in range(writers)]
        procs += [ctx.Process(target=_reader, args=(shr, writers, results))
                  for _ in range(readers)]
        start = time.perf_counter()
        for p in procs:
            p.start()
        running = [p.sentinel for p in procs[:writers]]
        while running:
            _progress(shr, total, start, stream)
            for ended in wait(running, timeout=0.25):
                running.remove(ended)
        elapsed = time.perf_counter() - start
        _progress(shr, total, start, stream)
        stream.write("\n")
        checks = [results.get() for _ in range(readers)]
        for p in procs:
            p.join()
        counter = shr[COUNTER]
        checked = sum(c for c, _ in checks)
        torn = sum(t for _, t in checks)
        failed = [p.exitcode for p in procs if p.exitcode != 0]
    ok = counter == total and torn == 0 and not failed
    stream.write(
        f"  {total:,} write txns in {elapsed:.2f} s: "
        f"{total / elapsed:,.0f} txn/s; {checked:,} read txns checked\n"
        f"  counter = {counter:,} (expected {total:,}), torn reads = {torn}"
        f"{', failed processes: ' + str(failed) if failed else ''}\n"
        f"  {'OK: every transaction was atomic and none was lost' if ok else 'FAILED'}\n"
    )
    return ok
