"""SharedDict side by side with a private dict (the floor) and the peers.

    python benchmarks/bench_dict.py            # full run (~3 minutes)
    python benchmarks/bench_dict.py --quick    # smoke run

Workload W3 (../shared/BENCHMARKING.md): 100 000 str keys "key:N" with
100-byte bytes values.  Fill from empty, random gets, random overwrites,
delete + re-insert, a 10-op transaction (5 gets, 5 sets), and two
processes (one writing, one reading) at once.  Peers, when installed
(pip install '.[bench]'): Manager().dict(), lmdb in /dev/shm (writemap,
no sync; one txn per op, and one txn for the whole fill), UltraDict and
shared-memory-dict.  Prints Markdown tables: medians, min, max, ratio to
the floor.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import time

from shmtxn import SharedDict
from shmtxn._bench import (WORKER_TIMEOUT, WorkerFailed, join_all, machine,
                           measure, optional, rate_table, table)
from shmtxn._procs import stop_processes

lmdb = optional("lmdb")
ultradict = optional("UltraDict")
smd = optional("shared_memory_dict")

N = 100_000
VALUE = bytes(range(100))
CTX = multiprocessing.get_context("fork")


class LmdbDict:
    """The smallest dict-like wrapper a user would write over lmdb."""

    def __init__(self, path):
        self.path = path
        self.env = lmdb.open(path, map_size=1 << 30, writemap=True,
                             sync=False, metasync=False)

    def __contains__(self, key):
        with self.env.begin() as t:
            return t.get(key.encode()) is not None

    def __getitem__(self, key):
        with self.env.begin() as t:
            v = t.get(key.encode())
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key, value):
        with self.env.begin(write=True) as t:
            t.put(key.encode(), value)

    def __delitem__(self, key):
        with self.env.begin(write=True) as t:
            t.delete(key.encode())

    def update_in_one_txn(self, items):
        with self.env.begin(write=True) as t:
            for k, v in items:
                t.put(k.encode(), v)

    def txn10(self, keys):
        with self.env.begin(write=True) as t:
            for k in keys[:5]:
                t.get(k.encode())
            for k in keys[5:]:
                t.put(k.encode(), VALUE)

    def reopen(self):
        """An env must not cross fork(): close it before forking, and
        each process (parent after, children at start) opens its own."""
        self.env = lmdb.open(self.path, map_size=1 << 30, writemap=True,
                             sync=False, metasync=False)


def make_candidates(manager):
    """name -> (mapping, cleanup) for every installed candidate."""
    c = {"private dict (floor)": ({}, lambda: None)}
    d = SharedDict(create=True, size=256 << 20)
    c["shmtxn SharedDict"] = (d, lambda: (d.close(), d.unlink()))
    if lmdb:
        path = tempfile.mkdtemp(prefix="shmtxn-bench-", dir="/dev/shm")
        c["lmdb, txn per op"] = (LmdbDict(path),
                                 lambda: shutil.rmtree(path))
    if manager is not None:
        c["Manager().dict()"] = (manager.dict(), lambda: None)
    if ultradict:
        u = ultradict.UltraDict(buffer_size=64 << 20, full_dump_size=64 << 20)
        c["UltraDict"] = (u, lambda: u.unlink())
    if smd:
        s = smd.SharedMemoryDict(name=f"shmtxn_bench_smd_{os.getpid()}",
                                 size=64 << 20)
        c["shared-memory-dict"] = (s, lambda: (s.shm.close(),
                                               s.shm.unlink()))
    return c


def fill(mapping, keys):
    for k in keys:
        mapping[k] = VALUE


def fill_times(cands, keys, reps):
    """Seconds per key to fill from empty, best of the interleaved reps."""
    per_op = {name: [] for name in cands}
    for _ in range(reps):
        for name, (m, _) in cands.items():
            if name == "shared-memory-dict":
                m.update(dict.fromkeys(keys, VALUE))  # one op: O(n) each
                continue
            for k in keys:
                if k in m:
                    del m[k]
            start = time.perf_counter()
            fill(m, keys)
            per_op[name].append((time.perf_counter() - start) / len(keys))
    if lmdb:
        m = cands["lmdb, txn per op"][0]
        per_op["lmdb, one txn for all"] = []
        for _ in range(reps):
            start = time.perf_counter()
            m.update_in_one_txn((k, VALUE) for k in keys)
            per_op["lmdb, one txn for all"].append(
                (time.perf_counter() - start) / len(keys))
    return per_op


def runner(op, m, order):
    """run(n) -> seconds for n operations `op` on mapping m."""
    size = len(order)

    def get(n):
        start = time.perf_counter()
        for j in range(n):
            m[order[j % size]]
        return time.perf_counter() - start

    def put(n):
        start = time.perf_counter()
        for j in range(n):
            m[order[j % size]] = VALUE
        return time.perf_counter() - start

    def delete(n):
        start = time.perf_counter()
        for j in range(n):
            k = order[j % size]
            del m[k]
            m[k] = VALUE
        return time.perf_counter() - start

    return {"get": get, "set": put, "delete": delete}[op]


def txn_runner(name, m, order):
    """A 10-op transaction: 5 gets then 5 sets of random keys."""
    size = len(order)
    if name == "shmtxn SharedDict":
        def run(n):
            start = time.perf_counter()
            for j in range(n):
                o = (j * 10) % (size - 10)
                ks = order[o:o + 10]
                with m.txn() as t:
                    t[ks[0]]; t[ks[1]]; t[ks[2]]; t[ks[3]]; t[ks[4]]
                    t[ks[5]] = VALUE; t[ks[6]] = VALUE; t[ks[7]] = VALUE
                    t[ks[8]] = VALUE; t[ks[9]] = VALUE
            return time.perf_counter() - start
    elif name == "lmdb, txn per op":
        def run(n):
            start = time.perf_counter()
            for j in range(n):
                o = (j * 10) % (size - 10)
                m.txn10(order[o:o + 10])
            return time.perf_counter() - start
    else:  # the floor: the same ten operations, no transaction
        def run(n):
            start = time.perf_counter()
            for j in range(n):
                o = (j * 10) % (size - 10)
                ks = order[o:o + 10]
                m[ks[0]]; m[ks[1]]; m[ks[2]]; m[ks[3]]; m[ks[4]]
                m[ks[5]] = VALUE; m[ks[6]] = VALUE; m[ks[7]] = VALUE
                m[ks[8]] = VALUE; m[ks[9]] = VALUE
            return time.perf_counter() - start
    return run


def mix_worker(m, order, write, seconds, conn):
    if isinstance(m, LmdbDict):
        m.reopen()
    op = runner("set" if write else "get", m, order)
    conn.recv()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        op(1000)
        done += 1000
    conn.send(done / (time.perf_counter() - start))


def receive(pipe, procs):
    """The next result on `pipe`; WorkerFailed (after stopping `procs`) if
    none arrives within WORKER_TIMEOUT seconds."""
    if not pipe.poll(WORKER_TIMEOUT):
        stop_processes(procs)
        raise WorkerFailed("benchmark stopped: a mixed-load worker sent no "
                           f"result within {WORKER_TIMEOUT:g} s")
    return pipe.recv()


def mix_rates(cands, order, seconds, reps):
    """ops/s of one writer + one reader process, summed."""
    rates = {}
    for _ in range(reps):
        for name, (m, _) in cands.items():
            if name in ("private dict (floor)", "shared-memory-dict"):
                continue
            pipes, procs = [], []
            if isinstance(m, LmdbDict):
                m.env.close()
            for write in (True, False):
                parent, child = CTX.Pipe()
                p = CTX.Process(target=mix_worker,
                                args=(m, order, write, seconds, child))
                p.start()
                pipes.append(parent)
                procs.append(p)
            for parent in pipes:
                parent.send("go")
            rates.setdefault(name, []).append(
                sum(receive(parent, procs) for parent in pipes) / 1e3)
            join_all(procs)
            if isinstance(m, LmdbDict):
                m.reopen()
    return rates


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    samples, min_sample = (3, 0.05) if args.quick else (5, 0.2)
    keys = [f"key:{i}" for i in range(N)]
    order = keys[:]
    random.Random(1).shuffle(order)
    manager = CTX.Manager()
    cands = make_candidates(manager)
    try:
        print(f"Machine: {machine()}; {N:,} keys, {len(VALUE)}-byte values\n")
        per_op = fill_times(cands, keys, 1 if args.quick else 3)
        print(table("W3 fill 100 000 keys from empty (per key; "
                    "shared-memory-dict skipped: O(n) per op)",
                    {k: _result(k, v) for k, v in per_op.items() if v},
                    "private dict (floor)"))
        for op, title in [("get", "random get"), ("set", "random overwrite"),
                          ("delete", "delete + re-insert")]:
            res = measure({name: runner(op, m, order)
                           for name, (m, _) in cands.items()}, samples,
                          min_sample)
            print(table(f"W3 {title} (auto-commit, per op)", res,
                        "private dict (floor)"))
        txn_cands = {n: txn_runner(n, m, order) for n, (m, _) in cands.items()
                     if n in ("private dict (floor)", "shmtxn SharedDict",
                              "lmdb, txn per op")}
        print(table("W3 10-op transaction (5 gets, 5 sets)",
                    measure(txn_cands, samples, min_sample),
                    "private dict (floor)",
                    "The floor runs the same ten operations with no "
                    "transaction."))
        rates = mix_rates(cands, order, 0.5 if args.quick else 1.0,
                          1 if args.quick else 3)
        print(rate_table("W3 two processes: one overwriting, one reading",
                         rates, "k ops/s", "Sum of both processes.",
                         ratio_to="Manager().dict()"))
    finally:
        for _, cleanup in cands.values():
            cleanup()
        manager.shutdown()


def _result(name, per_op):
    from shmtxn._bench import Result
    return Result(name, per_op)


if __name__ == "__main__":
    sys.exit(main())
