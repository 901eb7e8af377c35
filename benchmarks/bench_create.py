"""Creating and attaching segments: shmtxn beside the stdlib.

    python benchmarks/bench_create.py            # 4 KiB, 1 MiB, 64 MiB
    python benchmarks/bench_create.py --quick    # smoke run

For each size, two tables (medians, min, max, ratio to the stdlib's
`multiprocessing.shared_memory.SharedMemory`, interleaved samples):

- **create + unlink**: a new segment of `size` data bytes, closed and
  removed again.  The stdlib only sizes its file (its pages are holes that
  fault in, or SIGBUS on a full /dev/shm, at first touch); shmtxn backs
  the data with pages at once (posix_fallocate), so a full /dev/shm is an
  error now and never a SIGBUS later.  "stdlib + posix_fallocate" is the
  stdlib paying that same price: what the data costs.
- **first attach**: opening an existing segment by name in a process that
  does not have it open yet, then closing it.

Not collected by pytest (benchmarks/ is outside testpaths).
"""

from __future__ import annotations

import argparse
import os
import time
from multiprocessing import shared_memory as mp_shm

from shmtxn import SharedMemory
from shmtxn._bench import machine, measure, table

SIZES = [("4 KiB", 4 << 10), ("1 MiB", 1 << 20), ("64 MiB", 64 << 20)]


def runner(op):
    """A runner for _bench.measure: `op()` n times, in seconds."""
    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            op()
        return time.perf_counter() - start
    return run


def create_candidates(size: int) -> dict:
    name = f"bc{os.getpid()}"

    def shmtxn_create():
        s = SharedMemory(name, create=True, size=size)
        s.close()
        s.unlink()

    def stdlib_create():
        m = mp_shm.SharedMemory(name, create=True, size=size)
        m.close()
        m.unlink()

    def stdlib_reserved():
        m = mp_shm.SharedMemory(name, create=True, size=size)
        os.posix_fallocate(m._fd, 0, size)
        m.close()
        m.unlink()

    return {"stdlib SharedMemory": runner(stdlib_create),
            "stdlib + posix_fallocate": runner(stdlib_reserved),
            "shmtxn SharedMemory": runner(shmtxn_create)}


def attach_candidates(size: int, names: dict) -> dict:
    def shmtxn_attach():
        SharedMemory(names["shmtxn"]).close()

    def stdlib_attach():
        # before 3.13 this registers the name with the resource tracker
        # again (a set: the creator's one unlink unregisters it)
        mp_shm.SharedMemory(names["stdlib"]).close()

    return {"stdlib SharedMemory": runner(stdlib_attach),
            "shmtxn SharedMemory": runner(shmtxn_attach)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run")
    args = ap.parse_args()
    samples, min_sample = (3, 0.05) if args.quick else (7, 0.2)
    print(f"<!-- {machine()} -->\n")
    for label, size in SIZES:
        res = measure(create_candidates(size), samples, min_sample)
        print(table(f"create + unlink, {label}", res, "stdlib SharedMemory"))
        names = {"shmtxn": f"ba{os.getpid()}", "stdlib": f"bs{os.getpid()}"}
        owner = SharedMemory(names["shmtxn"], create=True, size=size)
        owner.close()  # closed, not unlinked: attaches below are first
        std = mp_shm.SharedMemory(names["stdlib"], create=True, size=size)
        try:
            res = measure(attach_candidates(size, names), samples,
                          min_sample)
            print(table(f"first attach + close, {label}", res,
                        "stdlib SharedMemory"))
        finally:
            SharedMemory(names["shmtxn"]).unlink()
            std.close()
            std.unlink()


if __name__ == "__main__":
    main()
