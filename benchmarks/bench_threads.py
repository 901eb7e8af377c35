"""Threads reading one handle: N threads (1, 2, 4, 8) each doing lock-free
gets `shr[i]` on ONE shared SharedMemory handle, against the floor (the
same loop over a memoryview.cast("q") of a stdlib SharedMemory, one per
thread -- and one memoryview shared by all threads: on 3.13t sharing one
object costs by itself, as every thread then writes its reference count)
and a dict handle's `d[k]`.  Meaningful on a free-threaded build
(PYTHON_GIL=0: the threads run in parallel up to the core count); on a
GIL build the aggregate stays flat by construction.

    python benchmarks/bench_threads.py [--quick]

Prints, per N, the aggregate millions of gets per second (median of the
samples, min..max) and its ratio to N = 1.
"""

from __future__ import annotations

import statistics
import sys
import sysconfig
import threading
import time
from multiprocessing import shared_memory

from shmtxn import SharedDict, SharedMemory

QUICK = "--quick" in sys.argv
SAMPLES = 3 if QUICK else 5
OPS = 100_000 if QUICK else 400_000  # per thread per sample


def timed(n_threads: int, make_loop) -> float:
    """Aggregate gets per second of `n_threads` running make_loop()()."""
    loops = [make_loop() for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads + 1)
    done = threading.Barrier(n_threads + 1)

    def body(loop):
        barrier.wait()
        loop()
        done.wait()

    threads = [threading.Thread(target=body, args=(lp,)) for lp in loops]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    done.wait()
    elapsed = time.perf_counter() - start
    for t in threads:
        t.join()
    return n_threads * OPS / elapsed


def main() -> None:
    std = shared_memory.SharedMemory(create=True, size=80)
    shr = SharedMemory(create=True, size=80)
    d = SharedDict(create=True)
    d["key:1"] = b"x" * 100
    views = []
    handles = []

    def floor_loop():
        mv = std.buf.cast("q")
        views.append(mv)

        def loop(m=mv, r=range(OPS // 10)):
            for _ in r:
                m[0]; m[1]; m[2]; m[3]; m[4]; m[5]; m[6]; m[7]; m[8]; m[9]
        return loop

    shared_mv = std.buf.cast("q")
    views.append(shared_mv)

    def shared_floor_loop():
        def loop(m=shared_mv, r=range(OPS // 10)):
            for _ in r:
                m[0]; m[1]; m[2]; m[3]; m[4]; m[5]; m[6]; m[7]; m[8]; m[9]
        return loop

    def shmtxn_loop():
        def loop(s=shr, r=range(OPS // 10)):
            for _ in r:
                s[0]; s[1]; s[2]; s[3]; s[4]; s[5]; s[6]; s[7]; s[8]; s[9]
        return loop

    def own_handle_loop():
        own = SharedMemory(shr.name)  # the same segment and mapping
        handles.append(own)

        def loop(s=own, r=range(OPS // 10)):
            for _ in r:
                s[0]; s[1]; s[2]; s[3]; s[4]; s[5]; s[6]; s[7]; s[8]; s[9]
        return loop

    def dict_loop():
        def loop(dd=d, r=range(OPS // 10), k="key:1"):
            for _ in r:
                dd[k]; dd[k]; dd[k]; dd[k]; dd[k]
                dd[k]; dd[k]; dd[k]; dd[k]; dd[k]
        return loop

    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(f"Python {sys.version.split()[0]}"
          f"{' free-threaded' if sysconfig.get_config_var('Py_GIL_DISABLED') else ''}"
          f", GIL {'on' if gil else 'off'}; {OPS} gets/thread/sample, "
          f"{SAMPLES} samples")
    try:
        for label, make in (("floor memoryview", floor_loop),
                            ("floor, one shared mv", shared_floor_loop),
                            ("shmtxn shr[i]", shmtxn_loop),
                            ("shmtxn, handle/thread", own_handle_loop),
                            ("shmtxn d[k] (100 B)", dict_loop)):
            base = None
            for n in (1, 2, 4, 8):
                rates = [timed(n, make) for _ in range(SAMPLES)]
                med = statistics.median(rates)
                base = base or med
                print(f"{label:22s} N={n}: {med / 1e6:6.2f} M gets/s "
                      f"({min(rates) / 1e6:.2f}..{max(rates) / 1e6:.2f})"
                      f"  x{med / base:.2f} of N=1", flush=True)
    finally:
        for h in handles:
            h.close()
        for mv in views:
            mv.release()
        std.close()
        std.unlink()
        shr.close()
        shr.unlink()
        d.close()
        d.unlink()


if __name__ == "__main__":
    main()
