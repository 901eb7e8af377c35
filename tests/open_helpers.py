"""Functions run in child processes by test_open_or_create.py (importable
by spawn and forkserver)."""

import os
import time

from shmtxn import SharedMemory


def race_worker(names, modes, rank, parties, barrier, results):
    """For each name in turn, with the other workers: open it as `modes`
    says for this rank (create=None, or False for a plain attach), write
    slot `rank`, report who created what, wait for everyone, let the
    creator check every worker's slot, then close (the creator unlinks).

    Reports ("open", name, rank, created, creator_pid, created_ns),
    ("check", name, slots seen by the creator), ("error", name, rank,
    repr) per name; ("done", rank) at the end."""
    for name in names:
        create = modes[rank]
        shr = None
        try:
            barrier.wait(timeout=120)
            shr = SharedMemory(name, create=create, size=8 * parties)
            with shr.txn() as t:
                t[rank] = rank + 1
            info = shr.info()
            results.put(("open", name, rank, shr.created,
                         info["creator_pid"], info["created_ns"]))
        except Exception as e:  # reported, never raised: the test judges
            results.put(("error", name, rank, repr(e)))
        try:
            barrier.wait(timeout=120)  # every worker has written
            if shr is not None and shr.created:
                results.put(("check", name, shr[:]))
            barrier.wait(timeout=120)  # the check is done before closing
        except Exception as e:
            results.put(("error", name, rank, repr(e)))
            barrier.abort()
        if shr is not None:
            with shr:  # the creator unlinks
                pass
    results.put(("done", rank))


def create_and_hold(name, size, value, conn):
    """Create `name`, store `value` in slot 0, say "ready", then wait to be
    killed (the test SIGKILLs this process: a crashed creator)."""
    shr = SharedMemory(name, create=True, size=size)
    shr[0] = value
    conn.send(("ready", os.getpid()))
    while True:
        time.sleep(60)


def attach_and_hold(name, conn):
    """Attach to `name`, say "ready", and keep it open until told."""
    shr = SharedMemory(name)
    conn.send(("ready", shr[0]))
    conn.recv()
    shr.close()
    conn.send("closed")
