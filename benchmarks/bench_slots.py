"""Typed slots: shmtxn side by side with the floor and the peers.

    python benchmarks/bench_slots.py            # full run (~3 minutes)
    python benchmarks/bench_slots.py --quick    # smoke run

Workloads (../shared/BENCHMARKING.md): W1 single get / set, W2 the
article's transaction (10 writes then 10 reads), W5 two processes
incrementing one counter (exactness checked), W6 random reads by one vs two
processes, plus how long survivors wait after a writer or reader is
SIGKILLed.  Peers that are not installed (pip install .[bench]) are
skipped.  Prints Markdown tables: medians, min, max, ratio to the floor.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time

from shmtxn import SharedMemory
from shmtxn._bench import (CTX, SLOTS, WORKER_TIMEOUT, Peers, WorkerFailed,
                           collect, join_all, machine, measure, rate_table,
                           table, w1_candidates, w2_candidates)
from shmtxn._procs import stop_processes


# --------------------------------------------------------------------------
# W5 and W6: several processes

def counter_op(p: Peers, kind: str):
    """One increment of slot 0, as a user of each candidate writes it."""
    if kind == "mp.Lock":
        m, lk = p.mv, p.lock

        def op():
            with lk:
                m[0] += 1
    elif kind == "posix_ipc sem":
        m, acq, rel = p.mv, p.sem.acquire, p.sem.release

        def op():
            acq()
            m[0] += 1
            rel()
    elif kind == "lmdb writemap":
        env = p.open_lmdb()  # an env must not cross fork()
        b, fb = env.begin, int.from_bytes

        def op():
            with b(write=True) as t:
                t.put(b"0", (fb(t.get(b"0"), "little") + 1).to_bytes(
                    8, "little"))
    else:
        s = p.shr

        def op():
            with s.txn() as t:
                t[0] += 1
    return op


def read_op(p: Peers, kind: str):
    """A runner of random single reads for each candidate."""
    idx = [random.randrange(SLOTS) for _ in range(4096)]
    if kind == "memoryview (lock-free floor)":
        m = p.mv
        return lambda n: [m[i] for _ in range(n // 4096) for i in idx]
    if kind == "stdlib shm + mp.Lock":
        m, lk = p.mv, p.lock

        def run(n):
            for _ in range(n // 4096):
                for i in idx:
                    with lk:
                        m[i]
        return run
    if kind == "lmdb txn per read":
        env = p.open_lmdb()
        b, keys = env.begin, [b"%d" % i for i in idx]

        def run(n):
            for _ in range(n // 4096):
                for k in keys:
                    with b() as t:
                        t.get(k)
        return run
    if kind == "shmtxn read txn per read":
        s = p.shr

        def run(n):
            for _ in range(n // 4096):
                for i in idx:
                    with s.txn(write=False) as t:
                        t[i]
        return run
    s = p.shr
    return lambda n: [s[i] for _ in range(n // 4096) for i in idx]


def _child(work, n, barrier, out):
    barrier.wait()
    start = time.perf_counter()
    work(n)
    out.put((start, time.perf_counter()))


def run_procs(make_work, procs: int, n: int) -> float:
    """Operations per second of `procs` processes doing `n` ops each."""
    barrier = CTX.Barrier(procs)
    out = CTX.Queue()
    ps = [CTX.Process(target=lambda: _child(make_work(), n, barrier, out))
          for _ in range(procs)]
    for q in ps:
        q.start()
    spans = collect(out, ps)
    join_all(ps)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    return procs * n / wall


def w5(p: Peers, samples: int, per_proc: int) -> tuple[dict, list[str]]:
    kinds = ["mp.Lock"] + (["posix_ipc sem"] if p.sem else []) + \
        (["lmdb writemap"] if p.lmdb_for_children() else []) + \
        ["shmtxn txn"]
    rates = {k: [] for k in kinds}
    problems = []
    for _ in range(samples):
        for kind in kinds:
            reset_counter(p, kind)

            def work(kind=kind):
                op = counter_op(p, kind)
                return lambda n: [op() for _ in range(n)]
            rates[kind].append(run_procs(work, 2, per_proc) / 1e6)
            got = read_counter(p, kind)
            if got != 2 * per_proc:
                problems.append(f"{kind}: counter {got} != {2 * per_proc}"
                                " (LOST UPDATES)")
    return rates, problems


def reset_counter(p: Peers, kind: str) -> None:
    if kind == "lmdb writemap":
        p.lmdb_counter(0)
    elif kind == "shmtxn txn":
        p.shr[0] = 0
    else:
        p.mv[0] = 0


def read_counter(p: Peers, kind: str) -> int:
    if kind == "lmdb writemap":
        return p.lmdb_counter()
    return p.shr[0] if kind == "shmtxn txn" else p.mv[0]


def w6(p: Peers, samples: int, n: int) -> dict:
    kinds = ["memoryview (lock-free floor)", "stdlib shm + mp.Lock"] + \
        (["lmdb txn per read"] if p.lmdb_for_children() else []) + \
        ["shmtxn shr[i] (lock-free)", "shmtxn read txn per read"]
    scale = {k: [] for k in kinds}
    for _ in range(samples):
        for kind in kinds:
            one = run_procs(lambda: read_op(p, kind), 1, n)
            two = run_procs(lambda: read_op(p, kind), 2, n)
            scale[kind].append(two / one)
    return scale


# --------------------------------------------------------------------------
# crash recovery: how long survivors wait

def _writer_forever(name, ready):
    shr = SharedMemory(name)
    with shr.txn() as t:
        t[0:SLOTS] = [7] * SLOTS
        ready.set()
        threading.Event().wait()  # holds the txn until killed


def _reader_forever(name, ready):
    shr = SharedMemory(name)
    with shr.txn(write=False):
        ready.set()
        threading.Event().wait()


def recovery_delays(p: Peers, target, kills: int) -> list[float]:
    """Seconds from SIGKILL to a waiting survivor's txn opening."""
    delays = []
    for _ in range(kills):
        ready = CTX.Event()
        child = CTX.Process(target=target, args=(p.shr.name, ready))
        child.start()
        if not ready.wait(WORKER_TIMEOUT):
            stop_processes([child])
            raise WorkerFailed("benchmark stopped: the crashing child never "
                               "opened its txn")
        opened = []

        def survivor():
            with p.shr.txn():
                opened.append(time.perf_counter())
        t = threading.Thread(target=survivor, daemon=True)
        t.start()
        time.sleep(0.05)  # let the survivor block (benchmark, not a test)
        killed = time.perf_counter()
        os.kill(child.pid, signal.SIGKILL)
        t.join(WORKER_TIMEOUT)
        child.join(WORKER_TIMEOUT)  # SIGKILLed above: exit code -9
        if not opened:
            raise WorkerFailed("benchmark stopped: the survivor's txn did "
                               f"not open within {WORKER_TIMEOUT:g} s of "
                               "the SIGKILL")
        delays.append(opened[0] - killed)
    return delays


# --------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer, shorter samples (smoke run)")
    args = parser.parse_args()
    samples, min_sample = (3, 0.05) if args.quick else (5, 0.2)
    per_proc = 20000 if args.quick else 200000
    p = Peers()
    out = [f"Machine: {machine()}. Command: `python benchmarks/"
           f"bench_slots.py{' --quick' if args.quick else ''}`.", ""]
    try:
        for op in ("get", "set"):
            res = measure(w1_candidates(p, op), samples, min_sample)
            out.append(table(f"W1 single int {op}", res,
                             "memoryview.cast('q') (unsafe floor)"))
            print(out[-1], flush=True)
        res = measure(w2_candidates(p), samples, min_sample)
        out.append(table("W2 the article's txn: 10 writes then 10 reads",
                         res, "unsafe memoryview loop (floor)"))
        print(out[-1], flush=True)
        rates, problems = w5(p, samples, per_proc)
        out.append(rate_table(
            f"W5 2 processes × {per_proc:,} increments of one counter",
            rates, "M/s", ratio_to="posix_ipc sem" if p.sem else None,
            note="Throughput, higher is better. " + (
                "LOST UPDATES: " + "; ".join(problems) if problems
                else "Every counter ended exact.")))
        print(out[-1], flush=True)
        scale = w6(p, samples, 4096 * (25 if args.quick else 200))
        out.append(rate_table(
            "W6 random reads: 2 processes vs 1", scale, "×",
            note="Aggregate throughput of two reader processes divided by "
                 "one's; 2.0 is perfect scaling on 2 cores."))
        print(out[-1], flush=True)
        kills = 5 if args.quick else 15
        delays = {"writer killed mid-txn": recovery_delays(
                      p, _writer_forever, kills),
                  "reader killed in read txn": recovery_delays(
                      p, _reader_forever, kills)}
        out.append(rate_table(
            "Crash recovery: SIGKILL to the waiting survivor's txn",
            {k: [d * 1e3 for d in v] for k, v in delays.items()}, "ms",
            note="Time from SIGKILL until a survivor already waiting for "
                 "the lock opens its txn (target < 50 ms)."))
        print(out[-1], flush=True)
    finally:
        p.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
