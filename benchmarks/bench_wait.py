"""Waiting for a change (issue #13): wake-up latency, ping-pong, and what
the wake-up costs a commit nobody waits for.

    python benchmarks/bench_wait.py [--rounds 400] [--seconds 2]
    python benchmarks/bench_wait.py --commits-only   # for an A/B of builds

1. Wake-up latency, commit -> a waiting process running again (median and
   p99): the writer stamps CLOCK_MONOTONIC into the data and commits once
   the waiter is asleep; the waiter reads the clock when it wakes.  Peers:
   `multiprocessing.Condition` (notify under its lock) and a `posix_ipc`
   semaphore (optional; skipped if missing) with the stamp in an
   `mp.RawValue`.  Each round sleeps 1 ms first so the waiter is really
   in the kernel (that sleep is outside the measured interval).
2. Ping-pong: two processes hand a counter back and forth through one
   segment (each waits for the other's commit); round trips per second.
   Peers: two posix_ipc semaphores, and an mp.Condition pair.
3. No waiter: ns per `shr[0] = i` (one auto-committed write txn) and per
   read txn, 10 000 ops per sample -- run this with two builds to compare
   (`--commits-only` prints only these).
"""

from __future__ import annotations

import argparse
import mmap
import multiprocessing as mp
import os
import statistics
import struct
import sys
import time

CTX = mp.get_context("fork")
CHANGE_WAITERS = 460  # docs/format.md


def now() -> int:
    return time.monotonic_ns()


def header_waiters(name):
    """A function returning change_waiters of segment `name` (a read-only
    mmap of its header page: no handle, no txn)."""
    fd = os.open(f"/dev/shm/{name}", os.O_RDONLY)
    m = mmap.mmap(fd, 4096, prot=mmap.PROT_READ)
    os.close(fd)
    return lambda: struct.unpack_from("=I", m, CHANGE_WAITERS)[0]


def summary(samples_ns):
    s = sorted(samples_ns)
    med = statistics.median(s) / 1000
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))] / 1000
    return med, p99


# ---------------------------------------------------------------- latency

def shmtxn_waiter(name, rounds, conn):
    from shmtxn import SharedMemory
    shr = SharedMemory(name)
    lat = []
    v = shr.version
    conn.send("ready")
    for _ in range(rounds):
        v = shr.wait(v)
        lat.append(now() - shr[0])
    conn.send(lat)
    shr.close()


def latency_shmtxn(rounds):
    from shmtxn import SharedMemory
    with SharedMemory(create=True, size=8) as shr:
        parent, child = CTX.Pipe()
        p = CTX.Process(target=shmtxn_waiter, args=(shr.name, rounds, child))
        p.start()
        assert parent.recv() == "ready"
        waiting = header_waiters(shr.name)
        for _ in range(rounds):
            while waiting() == 0:
                pass
            time.sleep(0.001)
            shr[0] = now()
        lat = parent.recv()
        p.join()
    return lat


def cond_waiter(cond, ready, stamp, rounds, conn):
    lat = []
    for _ in range(rounds):
        with cond:
            ready.value = 1
            cond.wait()
            lat.append(now() - stamp.value)
    conn.send(lat)


def latency_condition(rounds):
    cond = CTX.Condition()
    ready = CTX.RawValue("i", 0)
    stamp = CTX.RawValue("q", 0)
    parent, child = CTX.Pipe()
    p = CTX.Process(target=cond_waiter,
                    args=(cond, ready, stamp, rounds, child))
    p.start()
    for _ in range(rounds):
        while True:
            with cond:
                if ready.value:
                    break
        time.sleep(0.001)
        with cond:
            ready.value = 0
            stamp.value = now()
            cond.notify()
    lat = parent.recv()
    p.join()
    return lat


def sem_waiter(sem_name, ready, stamp, rounds, conn):
    import posix_ipc
    sem = posix_ipc.Semaphore(sem_name)
    lat = []
    for _ in range(rounds):
        ready.value = 1
        sem.acquire()
        lat.append(now() - stamp.value)
    conn.send(lat)
    sem.close()


def latency_semaphore(rounds):
    import posix_ipc
    sem = posix_ipc.Semaphore(f"/bench_wait_{os.getpid()}",
                              posix_ipc.O_CREX, initial_value=0)
    ready = CTX.RawValue("i", 0)
    stamp = CTX.RawValue("q", 0)
    parent, child = CTX.Pipe()
    p = CTX.Process(target=sem_waiter,
                    args=(sem.name, ready, stamp, rounds, child))
    p.start()
    try:
        for _ in range(rounds):
            while not ready.value:
                pass
            ready.value = 0
            time.sleep(0.001)
            stamp.value = now()
            sem.release()
        lat = parent.recv()
        p.join()
    finally:
        sem.unlink()
        sem.close()
    return lat


# -------------------------------------------------------------- ping-pong

def shmtxn_pong(name, seconds, me, conn):
    """Player `me` (0 or 1): on its turn (value % 2 == me) it adds 1."""
    from shmtxn import SharedMemory
    shr = SharedMemory(name)
    conn.send("ready")
    conn.recv()
    end = time.monotonic() + seconds
    v = shr.version
    n = 0
    while True:
        value = shr[0]
        if value < 0:
            break
        if value % 2 == me:
            if time.monotonic() > end:
                shr[0] = -1
                break
            shr[0] = value + 1
            n += 1
        v = shr.wait(v)
    conn.send(n)
    shr.close()


def pingpong_shmtxn(seconds):
    from shmtxn import SharedMemory
    with SharedMemory(create=True, size=8) as shr:
        return run_pair(shmtxn_pong, (shr.name, seconds))


def sem_pong(state, seconds, me, conn):
    """Player `me` waits on its semaphore, then posts the other's."""
    import posix_ipc
    names, stop = state
    mine = posix_ipc.Semaphore(names[me])
    other = posix_ipc.Semaphore(names[1 - me])
    conn.send("ready")
    conn.recv()
    end = time.monotonic() + seconds
    n = 0
    while True:
        mine.acquire()
        if stop.value:
            other.release()
            break
        n += 1
        if time.monotonic() > end:
            stop.value = 1
        other.release()
    conn.send(n)


def pingpong_semaphore(seconds):
    import posix_ipc
    names = [f"/bench_pp_{os.getpid()}_{i}" for i in (0, 1)]
    sems = [posix_ipc.Semaphore(names[0], posix_ipc.O_CREX, initial_value=1),
            posix_ipc.Semaphore(names[1], posix_ipc.O_CREX, initial_value=0)]
    try:
        return run_pair(sem_pong, ((names, CTX.RawValue("i", 0)), seconds))
    finally:
        for s in sems:
            s.unlink()
            s.close()


def cond_pong(state, seconds, me, conn):
    cond, value = state
    conn.send("ready")
    conn.recv()
    end = time.monotonic() + seconds
    n = 0
    with cond:
        while True:
            while value.value >= 0 and value.value % 2 != me:
                cond.wait()
            if value.value < 0:
                break
            value.value = -1 if time.monotonic() > end else value.value + 1
            n += 1
            cond.notify()
    conn.send(n)


def pingpong_condition(seconds):
    return run_pair(cond_pong, ((CTX.Condition(), CTX.RawValue("q", 0)),
                                seconds))


def run_pair(target, args):
    pipes = [CTX.Pipe() for _ in range(2)]
    procs = [CTX.Process(target=target, args=(*args, me, pipes[me][1]))
             for me in (0, 1)]
    for p in procs:
        p.start()
    for parent, _ in pipes:
        assert parent.recv() == "ready"
    t0 = time.monotonic()
    for parent, _ in pipes:
        parent.send("go")
    counts = [parent.recv() for parent, _ in pipes]
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join()
    return sum(counts) / 2 / elapsed  # round trips per second


# ------------------------------------------------------------- no waiter

def no_waiter_costs(samples=9, ops=10_000):
    from shmtxn import SharedMemory
    out = {"shr[0] = i (auto-commit)": [], "with txn(): t[0] = i": [],
           "read txn": []}
    with SharedMemory(create=True, size=8, populate=True) as shr:
        for _ in range(samples):
            s = shr
            t0 = time.perf_counter_ns()
            for i in range(ops):
                s[0] = i
            out["shr[0] = i (auto-commit)"].append(
                (time.perf_counter_ns() - t0) / ops)
            t0 = time.perf_counter_ns()
            for i in range(ops):
                with s.txn() as t:
                    t[0] = i
            out["with txn(): t[0] = i"].append(
                (time.perf_counter_ns() - t0) / ops)
            t0 = time.perf_counter_ns()
            for i in range(ops):
                with s.txn(write=False) as t:
                    pass
            out["read txn"].append((time.perf_counter_ns() - t0) / ops)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--commits-only", action="store_true")
    a = ap.parse_args()
    print(f"# {sys.executable}, nproc {os.cpu_count()}")
    if not a.commits_only:
        try:
            import posix_ipc  # noqa: F401
            have_sem = True
        except ImportError:
            have_sem = False
            print("posix_ipc missing: its rows are skipped")
        print("\n| wake-up latency, commit -> waiting process | median µs "
              "| p99 µs |\n|---|---:|---:|")
        rows = [("shmtxn `wait()`", latency_shmtxn),
                ("`multiprocessing.Condition`", latency_condition)]
        if have_sem:
            rows.append(("`posix_ipc.Semaphore`", latency_semaphore))
        for label, fn in rows:
            med, p99 = summary(fn(a.rounds))
            print(f"| {label} | {med:.1f} | {p99:.1f} |")
        print("\n| ping-pong, 2 processes | round trips/s |\n|---|---:|")
        rows = [("shmtxn: write, then `wait()` for the other's commit",
                 pingpong_shmtxn),
                ("`multiprocessing.Condition` + RawValue",
                 pingpong_condition)]
        if have_sem:
            rows.append(("two `posix_ipc` semaphores", pingpong_semaphore))
        for label, fn in rows:
            print(f"| {label} | {fn(a.seconds):,.0f} |")
    print("\n| no waiter, 10 000 ops per sample, 9 samples | median ns "
          "| min | max |\n|---|---:|---:|---:|")
    for label, xs in no_waiter_costs().items():
        print(f"| {label} | {statistics.median(xs):.0f} | {min(xs):.0f} "
              f"| {max(xs):.0f} |")


if __name__ == "__main__":
    main()
