"""Hot paths of shmtxn itself, lean loops, for before/after comparisons of
two builds on one machine (run it with each build's interpreter, in
alternation, several times):

    python benchmarks/bench_hot_paths.py

Medians of 7 runs of n operations each, in ns per operation: single slot
set and get, an explicit write txn and read txn of one item, and
SharedDict get and set over 100 000 "key:N" keys with 100-byte values.
The side-by-side tables with the floor and the peers are bench_slots.py and
bench_dict.py; this one only answers "did a change slow a hot path".
"""

import statistics
import time

from shmtxn import SharedDict, SharedMemory


def median_ns(fn, n):
    runs = []
    for _ in range(7):
        start = time.perf_counter()
        fn(n)
        runs.append((time.perf_counter() - start) / n * 1e9)
    return statistics.median(runs)


def main():
    shr = SharedMemory(create=True, size=80)
    d = SharedDict(create=True, size=64 << 20)
    keys = [f"key:{i}" for i in range(100000)]
    value = b"v" * 100
    for k in keys:
        d[k] = value

    def slot_set(n):
        for i in range(n):
            shr[3] = i

    def slot_get(n):
        for _ in range(n):
            shr[3]

    def write_txn(n):
        for i in range(n):
            with shr.txn() as t:
                t[0] = i

    def read_txn(n):
        for _ in range(n):
            with shr.txn(write=False) as t:
                t[0]

    def dict_get(n):
        for k in keys[:n]:
            d[k]

    def dict_set(n):
        for k in keys[:n]:
            d[k] = value

    rows = [("slot set", slot_set, 200000), ("slot get", slot_get, 200000),
            ("write txn (1 item)", write_txn, 50000),
            ("read txn (1 item)", read_txn, 50000),
            ("dict get", dict_get, 100000), ("dict set", dict_set, 100000)]
    print("| operation | median ns/op |\n|---|---:|")
    for label, fn, n in rows:
        print(f"| {label} | {median_ns(fn, n):.0f} |")
    shr.close()
    shr.unlink()
    d.close()
    d.unlink()


if __name__ == "__main__":
    main()
