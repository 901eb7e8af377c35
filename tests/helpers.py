"""Functions run in child processes (importable by spawn and forkserver)."""

import os
import signal

from shmtxn import SharedMemory


def fill(shr, n=10):
    with shr.txn() as shm:
        for i in range(n):
            shm[i] = i


def increment(shr, index, times):
    for _ in range(times):
        with shr.txn() as shm:
            shm[index] += 1


def increment_by_name(name, index, times):
    with SharedMemory(name) as shr:
        increment(shr, index, times)


def pool_task(args):
    shr, index = args
    with shr.txn() as shm:
        shm[index] = index * index
    return os.getpid()


def shifting_writer(name, rounds, n):
    """Keep sum(slots) == 0 across every committed txn."""
    with SharedMemory(name) as shr:
        for r in range(rounds):
            with shr.txn() as shm:
                i, j = r % n, (r * 7 + 3) % n
                if i == j:
                    continue
                shm[i] += r + 1
                shm[j] -= r + 1


def invariant_reader(name, n, done_index, writers, conn):
    """Count txns and lock-free reads that break sum == 0."""
    bad = checks = 0
    with SharedMemory(name) as shr:
        while True:
            with shr.txn(write=False) as shm:
                vals = shm[0:n]
                finished = shm[done_index]
            checks += 1
            bad += sum(vals) != 0
            snapshot = shr[0:n]
            checks += 1
            bad += sum(snapshot) != 0
            if finished == writers:
                break
    conn.send((checks, bad))


def uniform_writer_forever(name, conn):
    """Write txns that set every slot to the same new value, forever."""
    shr = SharedMemory(name)
    n = len(shr)
    k = 0
    while True:
        k += 1
        with shr.txn() as shm:
            for i in range(n):
                shm[i] = k
                if k == 1 and i == n // 2:
                    conn.send("in txn")


def hold_read_txn(name, conn):
    shr = SharedMemory(name)
    with shr.txn(write=False) as shm:
        conn.send(shm[0])
        conn.recv()  # blocks until killed


def wait_for_lock_then_report(name, conn):
    """Wait for the write lock another process holds; report whether the
    wait was interrupted.  The child restores Python's Ctrl-C handler
    itself: a test run under nohup (or a CI that starts it with SIGINT
    ignored) hands SIG_IGN down, and the SIGINT would then be lost."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    shr = SharedMemory(name)
    try:
        conn.send("waiting")
        with shr.txn():
            conn.send("entered")
    except KeyboardInterrupt:
        conn.send("interrupted")


def hold_write_txn(name, conn):
    shr = SharedMemory(name)
    with shr.txn() as shm:
        shm[0] = 12345
        conn.send("locked")
        conn.recv()  # blocks until told or killed




def join_or_kill(proc, timeout=60):
    """Join a child that should be ending; kill it (by pid, it is ours)
    if it has not ended within `timeout` seconds.  Returns its exit code."""
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout)
    return proc.exitcode


def kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()


def paired_increments_forever(name, k, conn):
    """Each txn adds 1 to slot 0 and to slot 1 + k: slot 0 must always
    equal the sum of the others, whatever is killed when."""
    shr = SharedMemory(name)
    first = True
    while True:
        with shr.txn() as shm:
            shm[0] += 1
            shm[1 + k] += 1
        if first:
            conn.send("running")
            first = False


def fill_row(args):
    """Pool task: fill row i of a 2-D segment inside a write txn."""
    shr, i = args
    with shr.txn() as shm:
        shm.ndarray(i, i + 1)[:] = i * 10.0 + 0.5
    return i


def copyto_forever(name, conn):
    """Overwrite the whole array through a write-txn view, endlessly."""
    import numpy as np
    shr = SharedMemory(name)
    with shr.txn() as shm:
        view = shm.ndarray()
        conn.send("in txn")
        k = 1.0
        while True:
            np.copyto(view, k)
            k += 1.0


def patch_header(name, offset, data):
    """Overwrite header bytes and recompute the checksum, as a hostile (or
    buggy) process could: only the field checks can catch it."""
    import struct
    with open(f"/dev/shm/{name}", "r+b") as f:
        header = bytearray(f.read(200))
        header[offset:offset + len(data)] = data
        h = 0xcbf29ce484222325
        for byte in header[8:200]:
            h = ((h ^ byte) * 0x100000001b3) & (2**64 - 1)
        f.seek(0)
        f.write(header + struct.pack("Q", h))


# ---- SharedDict children ----

def open_dict(spec, **kwargs):
    """Attach to a dict of either backend: `spec` is a segment name, or
    (url, name) of a dict on Redis (tests/redis_server.py)."""
    from shmtxn import SharedDict
    if isinstance(spec, tuple):
        return SharedDict.connect(*spec, **kwargs)
    return SharedDict(spec, **kwargs)


def dict_counter_worker(name, keys, rounds):
    """Read-modify-write counters in txns; also move 1 from "a" to "b"
    so a reader can check a + b stays constant."""
    with open_dict(name) as d:
        for r in range(rounds):
            with d.txn() as t:
                key = keys[r % len(keys)]
                t[key] = t.get(key, 0) + 1
                t["a"] -= 1
                t["b"] += 1


def dict_invariant_reader(name, total, conn):
    """Check a + b == total in read txns and in copies until told to stop;
    send back (checks, violations)."""
    checks = bad = 0
    with open_dict(name, read_only=True) as d:
        conn.send("ready")
        while not conn.poll():
            with d.txn() as t:
                bad += t["a"] + t["b"] != total
            snap = d.copy()
            bad += snap["a"] + snap["b"] != total
            checks += 2
    conn.send((checks, bad))


def dict_round(r, n):
    """The dict state after round r of dict_rounds_forever: keys of round
    r (with one overwritten), none of round r - 1."""
    state = {"round": r}
    state.update({f"r{r}:{i}": bytes([i % 251]) * (i % 300)
                  for i in range(n)})
    state[f"r{r}:0"] = {"overwritten": r}
    return state


def dict_rounds_forever(name, n, conn):
    """Large txns forever: each inserts n keys (the table grows and
    shrinks), deletes the previous round's (freeing blocks that later
    rounds reuse) and overwrites one with a pickled value."""
    d = open_dict(name)
    r = d["round"]
    told = False
    while True:
        r += 1
        with d.txn() as t:
            for key, value in dict_round(r, n).items():
                t[key] = value
            for i in range(n):
                del t[f"r{r - 1}:{i}"]
            if not told:  # the parent kills at random from here on
                conn.send("in txn")
                told = True


def dict_churn_state(r):
    """The dict state after round r of dict_churn_forever: about 40 keys
    of round r's choosing, values of every kind, some over 4 KiB (their
    records are replaced out of place)."""
    import random
    rng = random.Random(r)
    state = {"round": r}
    for i in range(40):
        if rng.random() < 0.7:
            state[f"k{i}"] = rng.choice([b"B" * rng.randint(4100, 9000),
                                         "s" * rng.randint(0, 100), r, None])
    return state


def dict_churn_forever(name, conn):
    """Txns forever that take blocks off the free lists and free them again
    in the same txn: keys inserted and deleted at once (and the table
    compacted in place by the churn), a clear() every fourth round, then
    the round's state written over the last."""
    import random
    d = open_dict(name)
    r = d["round"]
    told = False
    while True:
        r += 1
        rng = random.Random(-r)
        new = dict_churn_state(r)
        with d.txn() as t:
            if r % 4 == 0:
                t.clear()
            for j in range(rng.randint(0, 60)):
                t[("j", j)] = j
                del t[("j", j)]
            for key in [k for k in t.keys() if k not in new]:
                del t[key]
            t.update(new)
            if rng.random() < 0.3:
                for key in new:
                    if key != "round":
                        del t[key]
                        t[key] = new[key]
            if not told:  # the parent kills at random from here on
                conn.send("in txn")
                told = True


def dict_read_in_child(name, conn):
    with open_dict(name) as d:
        conn.send(list(d.items()))
