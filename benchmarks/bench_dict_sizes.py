"""SharedDict set and get by value size, side by side with the floor and
the peers.

    python benchmarks/bench_dict_sizes.py            # ~1 minute
    python benchmarks/bench_dict_sizes.py --quick    # smoke run

Values of 10 B, 1 KB, 100 KB and 1 MB (bytes) under 16 str keys: a set
overwrites a key with one of two values in turn, a get reads a key.  The
floor is a private dict; the peers, when installed (pip install
'.[bench]'), are lmdb in /dev/shm (writemap, no sync, one txn per
operation, as bench_dict.py wraps it) and UltraDict.  Medians of
interleaved samples, per operation, and the ratio to the floor and to
lmdb.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time

from shmtxn import SharedDict
from shmtxn._bench import machine, measure, optional, table

from bench_dict import LmdbDict

lmdb = optional("lmdb")
ultradict = optional("UltraDict")

SIZES = {"10 B": 10, "1 KB": 1_000, "100 KB": 100_000, "1 MB": 1_000_000}
KEYS = [f"key:{i}" for i in range(16)]


def setter(mapping, values):
    """A runner: n sets, cycling keys and alternating values."""
    def run(n):
        keys, nk = KEYS, len(KEYS)
        start = time.perf_counter()
        for i in range(n):
            mapping[keys[i % nk]] = values[i & 1]
        return time.perf_counter() - start
    return run


def getter(mapping):
    """A runner: n gets, cycling keys."""
    def run(n):
        keys, nk = KEYS, len(KEYS)
        start = time.perf_counter()
        for i in range(n):
            mapping[keys[i % nk]]
        return time.perf_counter() - start
    return run


def candidates(size):
    """name -> (mapping, cleanup), each holding the 16 keys."""
    room = 64 * size + (16 << 20)
    found = {"private dict (floor)": ({}, lambda: None)}
    d = SharedDict(create=True, size=room)
    found["shmtxn SharedDict"] = (d, lambda: (d.close(), d.unlink()))
    if lmdb:
        path = tempfile.mkdtemp(prefix="shmtxn-bench-", dir="/dev/shm")
        found["lmdb, txn per op"] = (LmdbDict(path),
                                     lambda: shutil.rmtree(path))
    if ultradict:
        u = ultradict.UltraDict(buffer_size=4 * size + (1 << 20),
                                full_dump_size=room)
        found["UltraDict"] = (u, lambda: u.unlink())
    return found


def with_lmdb_ratio(text, results):
    """`text` plus a line giving shmtxn's speed relative to lmdb."""
    if "lmdb, txn per op" not in results:
        return text
    ratio = (results["lmdb, txn per op"].median
             / results["shmtxn SharedDict"].median)
    return text + f"\nshmtxn is {ratio:.2f}× lmdb's speed here.\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    samples, min_sample = (3, 0.02) if args.quick else (7, 0.2)
    print(f"# SharedDict by value size\n\n{machine()}\n")
    for label, size in SIZES.items():
        values = [bytes([1]) * size, bytes([2]) * size]
        found = candidates(size)
        try:
            for mapping, _ in found.values():
                for k in KEYS:
                    mapping[k] = values[0]
            sets = measure({name: setter(m, values)
                            for name, (m, _) in found.items()},
                           samples, min_sample)
            print(with_lmdb_ratio(table(f"set, {label} values", sets,
                                        "private dict (floor)"), sets))
            gets = measure({name: getter(m)
                            for name, (m, _) in found.items()},
                           samples, min_sample)
            print(with_lmdb_ratio(table(f"get, {label} values", gets,
                                        "private dict (floor)"), gets))
        finally:
            for _, cleanup in found.values():
                cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
