"""SharedDict beside a private dict (the floor) and its peers, as lean loops,
at 1k, 100k and 1M keys (workload W3, ../shared/BENCHMARKING.md).

    python benchmarks/bench_dict.py            # full run (a few minutes)
    python benchmarks/bench_dict.py --quick    # smoke run (seconds)
    python benchmarks/bench_dict.py --sizes 100000 --rw-size 100000

Keys are the str "key:N", values one 100-byte bytes object.  Every
candidate is timed with the same loop, and nothing else is in it:

    for k in order: m[k]              (random get)
    for k in order: m[k] = VALUE      (random overwrite, auto-commit)

`order` is a pre-shuffled list of all the keys.  A sample walks on
through it from where the last sample stopped (wrapping round), so at 1M
keys the samples touch keys all over the table; the slices it takes are
cut before the clock starts (shmtxn._bench.Stream).  Samples of all the
candidates are interleaved (A B C A B C ...), each lasts >= 0.2 s, and a
table gives median, min and max per operation and the ratio of medians
to the floor measured in the same run, at the same size.

The floor is a private dict holding the same keys and values, timed with
the same loop.  Peers, each skipped if not installed (pip install
'.[bench]'): lmdb in /dev/shm (writemap, no sync, one txn per operation,
keys encoded to UTF-8 per op: the LmdbDict wrapper below), UltraDict
(buffer 64 MiB, no shared lock) and Manager().dict() (skipped above
100 000 keys: at ~40 us an operation its fill of 1M keys alone takes
~40 s).  SharedDict is created as SharedDict(create=True): no size, so it
grows on demand, as users create it.

Rows, at each size:

- fill: `for k in keys: m[k] = VALUE` into a brand-new empty candidate
  (growth, page faults and all), per key; best done a few times at 1k
  and 100k (a fresh candidate each time), once at 1M.  lmdb also fills
  in one write txn.  The last fill is what the later rows use.
- random get, random overwrite: the loops above, per op.
- delete + re-insert: `for k in order: del m[k]; m[k] = VALUE`, per pair.
- get_many: 100 random keys per call.  Floor: `[p.get(k) for k in ks]`
  on the private dict; then `d.get_many(ks)` (one consistent snapshot),
  the same comprehension of single gets on SharedDict, and lmdb's
  equivalent of get_many (one read txn, a comprehension of t.get).  Per
  call, and per key.
- 10-op txn: 5 gets then 5 sets of random keys in `with d.txn() as t:`,
  per txn; the floor does the same ten operations on the private dict
  with no transaction; lmdb does them in one write txn.

Then, at --rw-size keys (1000 and 100 000; the largest size with
--quick), reader beside writer: a forked reader process does random gets
(the lean loop, 1000 keys a part) for a fixed time alone, then again
while a second forked process overwrites random keys (auto-commit) as
fast as it can.  Reader ops/s in both, the share it keeps (median of the
per-round ratios; the two runs of a round are back to back) and the
writer's rate.  At 1000 keys the two hit the same few cache lines all
the time; at 100 000 they rarely meet.  Workers start on pipe messages
(no sleeps) and are stopped by pid if one fails.  The private-dict row is
the machine's own share: each process works on its own copy, so
whatever it loses comes from sharing the cores, caches and memory bus,
not from the dict.  The contents are checked afterwards.

Last, the issue #12 targets, measured from the tables above.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

from shmtxn import SharedDict
from shmtxn._bench import (Result, WorkerFailed, fmt_time, join_all, lean,
                           machine, measure, optional, receive, table)
from shmtxn._procs import stop_processes

lmdb = optional("lmdb")
ultradict = optional("UltraDict")

VALUE = bytes(range(100))
CTX = multiprocessing.get_context("fork")

FLOOR = "private dict (floor)"
SHM = "shmtxn SharedDict"
LMDB = "lmdb, txn per op"
ULTRA = "UltraDict"
MANAGER = "Manager().dict()"
MANAGER_MAX = 100_000  # larger sizes skip Manager (see the docstring)

FULL_SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000)
BATCH = 100  # keys per get_many call
PART = 1000  # keys per part of the reader-beside-writer loops


class LmdbDict:
    """The smallest dict-like wrapper a user would write over lmdb: one
    txn per operation, str keys encoded to UTF-8."""

    def __init__(self, path, map_size=1 << 30):
        self.path = path
        self.map_size = map_size
        self.env = self._open()

    def _open(self):
        return lmdb.open(self.path, map_size=self.map_size, writemap=True,
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
            if not t.delete(key.encode()):
                raise KeyError(key)

    def __len__(self):
        return self.env.stat()["entries"]

    def update_in_one_txn(self, items):
        with self.env.begin(write=True) as t:
            for k, v in items:
                t.put(k.encode(), v)

    def reopen(self):
        """An env must not cross fork(): close it before forking, and
        each process (parent after, children at start) opens its own."""
        self.env = self._open()


# --------------------------------------------------------------------------
# The timed loops.  Each is called once per part (a whole pass over the
# pre-built list, or a slice of it); the loop inside is all that runs per
# operation, and it is the same for every candidate.

def get_loop(m, keys):
    for k in keys:
        m[k]


def set_loop(m, keys):
    v = VALUE
    for k in keys:
        m[k] = v


def delete_loop(m, keys):
    v = VALUE
    for k in keys:
        del m[k]
        m[k] = v


def comprehension_loop(m, batches):
    for ks in batches:
        [m.get(k) for k in ks]


def get_many_loop(d, batches):
    for ks in batches:
        d.get_many(ks)


def lmdb_batch_loop(m, batches):
    begin = m.env.begin
    for ks in batches:
        with begin() as t:
            [t.get(k.encode()) for k in ks]


def txn_floor_loop(p, groups):
    v = VALUE
    for a, b, c, d, e, f, g, h, i, j in groups:
        p[a]; p[b]; p[c]; p[d]; p[e]
        p[f] = v; p[g] = v; p[h] = v; p[i] = v; p[j] = v


def txn_shm_loop(sd, groups):
    v = VALUE
    for a, b, c, d, e, f, g, h, i, j in groups:
        with sd.txn() as t:
            t[a]; t[b]; t[c]; t[d]; t[e]
            t[f] = v; t[g] = v; t[h] = v; t[i] = v; t[j] = v


def txn_lmdb_loop(m, groups):
    begin, v = m.env.begin, VALUE
    for a, b, c, d, e, f, g, h, i, j in groups:
        with begin(write=True) as t:
            t.get(a.encode()); t.get(b.encode()); t.get(c.encode())
            t.get(d.encode()); t.get(e.encode())
            t.put(f.encode(), v); t.put(g.encode(), v); t.put(h.encode(), v)
            t.put(i.encode(), v); t.put(j.encode(), v)


def lmdb_fill_one_txn(m, keys):
    v = VALUE
    with m.env.begin(write=True) as t:
        for k in keys:
            t.put(k.encode(), v)


# --------------------------------------------------------------------------
# Candidates

def names(size, manager):
    found = [FLOOR, SHM]
    if lmdb:
        found.append(LMDB)
    if ultradict:
        found.append(ULTRA)
    if manager is not None and size <= MANAGER_MAX:
        found.append(MANAGER)
    return found


def make(name, size, manager):
    """A new, empty candidate: (mapping, cleanup)."""
    if name == FLOOR:
        return {}, lambda: None
    if name == SHM:
        d = SharedDict(create=True)
        return d, lambda: (d.close(), d.unlink())
    if name == LMDB:
        path = tempfile.mkdtemp(prefix="shmtxn-bench-", dir="/dev/shm")
        m = LmdbDict(path, map_size=max(1 << 30, 2048 * size))

        def cleanup():
            m.env.close()
            shutil.rmtree(path, ignore_errors=True)
        return m, cleanup
    if name == ULTRA:
        u = ultradict.UltraDict(buffer_size=64 << 20,
                                full_dump_size=200 * size + (16 << 20))
        return u, u.unlink
    if name == MANAGER:
        return manager.dict(), lambda: None
    raise ValueError(name)


def fill_rows(names_, size, keys, reps, manager, live):
    """Per-key fill times; leaves the last filled candidates in `live`."""
    times = {name: [] for name in names_}
    if LMDB in names_:
        times["lmdb, one txn for all"] = []
    for _ in range(reps):
        for name in names_:
            if name in live:
                live.pop(name)[1]()
            m, cleanup = make(name, size, manager)
            live[name] = (m, cleanup)
            start = time.perf_counter()
            set_loop(m, keys)
            times[name].append((time.perf_counter() - start) / size)
        if LMDB in names_:
            m, cleanup = make(LMDB, size, manager)
            try:
                start = time.perf_counter()
                lmdb_fill_one_txn(m, keys)
                times["lmdb, one txn for all"].append(
                    (time.perf_counter() - start) / size)
            finally:
                cleanup()
    return {name: Result(name, t) for name, t in times.items()}


# --------------------------------------------------------------------------
# Reader beside writer

def rw_worker(m, parts, write, seconds, conn):
    """A forked reader (write=False) or writer.  The reader does one
    untimed pass first (page faults, caches, a private dict's
    copy-on-write), reports "ready", reads for `seconds` after "go" and
    sends its ops/s.  The writer reports "ready", and after "go" writes
    one part, reports "writing", and writes until "stop"."""
    if isinstance(m, LmdbDict):
        m.reopen()
    if not write:
        for part in parts:
            get_loop(m, part)
    conn.send("ready")
    conn.recv()
    count, done, i = len(parts), 0, 0
    start = time.perf_counter()
    if write:
        set_loop(m, parts[0])
        done, i = len(parts[0]), 1 % count
        conn.send("writing")
        while not conn.poll():
            set_loop(m, parts[i])
            done += len(parts[i])
            i = (i + 1) % count
        conn.recv()
    else:
        end = start + seconds
        while time.perf_counter() < end:
            get_loop(m, parts[i])
            done += len(parts[i])
            i = (i + 1) % count
    conn.send(done / (time.perf_counter() - start))


def rw_round(m, rparts, wparts, seconds, busy):
    """(reader ops/s, writer ops/s or None): the reader alone, or beside
    a writer that is already writing when the reader starts."""
    if isinstance(m, LmdbDict):
        m.env.close()
    procs, conns = [], []
    try:
        for write in (False, True) if busy else (False,):
            parent, child = CTX.Pipe()
            p = CTX.Process(target=rw_worker, daemon=True,
                            args=(m, wparts if write else rparts, write,
                                  seconds, child))
            p.start()
            child.close()
            procs.append(p)
            conns.append(parent)
        for conn in conns:
            if receive(conn, procs) != "ready":
                raise WorkerFailed("benchmark stopped: a worker out of step")
        if busy:
            conns[1].send("go")
            if receive(conns[1], procs) != "writing":
                raise WorkerFailed("benchmark stopped: a worker out of step")
        conns[0].send("go")
        read = receive(conns[0], procs)
        wrote = None
        if busy:
            conns[1].send("stop")
            wrote = receive(conns[1], procs)
        join_all(procs)
        return read, wrote
    except BaseException:
        stop_processes(procs)
        raise
    finally:
        for conn in conns:
            conn.close()
        if isinstance(m, LmdbDict):
            m.reopen()


def rw_rows(live, keys, seconds, reps):
    """name -> {"alone": [...], "busy": [...], "writer": [...],
    "kept": [...]}, rounds interleaved across the candidates."""
    size = len(keys)
    rorder, worder = keys[:], keys[:]
    random.Random(4).shuffle(rorder)
    random.Random(5).shuffle(worder)
    rparts = [rorder[i:i + PART] for i in range(0, size, PART)]
    wparts = [worder[i:i + PART] for i in range(0, size, PART)]
    cands = [n for n in (FLOOR, SHM, LMDB, ULTRA) if n in live]
    out = {n: {"alone": [], "busy": [], "writer": [], "kept": []}
           for n in cands}
    for _ in range(reps):
        for name in cands:
            m = live[name][0]
            alone, _ = rw_round(m, rparts, wparts, seconds, busy=False)
            busy, wrote = rw_round(m, rparts, wparts, seconds, busy=True)
            row = out[name]
            row["alone"].append(alone)
            row["busy"].append(busy)
            row["writer"].append(wrote)
            row["kept"].append(busy / alone)
    if FLOOR in out:  # each share over the machine's own in that round
        for name, row in out.items():
            if name == FLOOR:
                continue
            row["net"] = [k / f for k, f in zip(row["kept"],
                                                 out[FLOOR]["kept"])]
    return out


def check_contents(live, names_, keys):
    """Those of `names_` that do not hold every key, each with VALUE."""
    bad = []
    for name in names_:
        m = live[name][0]
        try:
            ok = len(m) == len(keys) and all(m[k] == VALUE for k in keys)
        except Exception:  # noqa: BLE001 -- a broken peer is reported
            ok = False
        if not ok:
            bad.append(name)
    return bad


def rw_table(title, rows, note):
    def k(v):
        return f"{v / 1e3:,.0f}"
    lines = [f"### {title}", "", note, "",
             "| candidate | reader alone (k ops/s) | reader beside writer "
             "(k ops/s) | kept | kept ÷ machine's | writer (k ops/s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        cells = []
        for key in ("alone", "busy"):
            v = r[key]
            cells.append(f"{k(statistics.median(v))} ({k(min(v))}–"
                         f"{k(max(v))})")
        for key in ("kept", "net"):
            v = r.get(key)
            cells.append(f"{statistics.median(v):.0%} ({min(v):.0%}–"
                         f"{max(v):.0%})" if v else "—")
        cells.append(k(statistics.median(r["writer"])))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# The targets of issue #12

def targets(results, rws, sizes):
    def med(row, size, name):
        r = results.get((row, size), {}).get(name)
        return r.median if r else None

    lines = ["### Targets (issue #12)", "",
             "| target | measured | |", "|---|---|---|"]

    def add(target, value, ok):
        verdict = "not run" if ok is None else ("met" if ok else
                                                "**missed**")
        lines.append(f"| {target} | {value} | {verdict} |")

    for size, limit in ((100_000, 4), (1_000_000, 2)):
        s, f = med("get", size, SHM), med("get", size, FLOOR)
        add(f"random get ≤ {limit}× private dict, {size:,} keys",
            f"{s / f:.2f}× ({fmt_time(s)} vs {fmt_time(f)})" if s else "—",
            s / f <= limit if s else None)
    if ultradict:
        cells, ok = [], True
        for size in sizes:
            s, u = med("get", size, SHM), med("get", size, ULTRA)
            cells.append(f"{size:,}: {s / u:.2f}×")
            ok = ok and s < u
        add("random get faster than UltraDict at every size",
            "SharedDict / UltraDict: " + ", ".join(cells), ok)
    s, f = med("set", 100_000, SHM), med("set", 100_000, FLOOR)
    add("auto-commit set ≤ 4× private dict, 100,000 keys",
        f"{s / f:.2f}× ({fmt_time(s)} vs {fmt_time(f)})" if s else "—",
        s / f <= 4 if s else None)
    cells, ok = [], True
    for size in sizes:
        s, f = med("get_many", size, GM_SHM), med("get_many", size, GM_FLOOR)
        cells.append(f"{size:,}: {s / f:.2f}× ({fmt_time(s)})")
        ok = ok and s <= 2 * f
    add(f"get_many of {BATCH} random keys ≤ 2× `[p.get(k) for k in ks]`",
        ", ".join(cells), ok)
    cells, ok = [], True
    for size in sizes:
        s = med("txn", size, TXN_SHM)
        cells.append(f"{size:,}: {fmt_time(s)}")
        ok = ok and s <= 2e-6
    add("10-op txn (5 gets + 5 sets) ≤ 2 µs", ", ".join(cells), ok)
    for rw_size, rw in sorted(rws.items()):
        kept = statistics.median(rw[SHM]["kept"])
        extra = "".join(f"; {n}: {statistics.median(rw[n]['kept']):.0%}"
                        for n in (LMDB, FLOOR) if n in rw)
        if "net" in rw[SHM]:
            extra += (f" (SharedDict ÷ machine's: "
                      f"{statistics.median(rw[SHM]['net']):.0%})")
        add(f"reader beside a busy writer keeps ≥ 70%, {rw_size:,} keys",
            f"{kept:.0%}{extra}", kept >= 0.7)
    if not rws:
        add("reader beside a busy writer keeps ≥ 70%", "—", None)
    return "\n".join(lines) + "\n"


GM_FLOOR = "private dict: [p.get(k) for k in ks] (floor)"
GM_SHM = "SharedDict: d.get_many(ks)"
GM_SINGLE = "SharedDict: [d.get(k) for k in ks]"
GM_LMDB = "lmdb, one read txn: [t.get(k.encode()) for k in ks]"
TXN_FLOOR = "private dict, same 10 ops, no txn (floor)"
TXN_SHM = "SharedDict: with d.txn() as t"
TXN_LMDB = "lmdb: one write txn"


# --------------------------------------------------------------------------

def run_size(size, args, manager, results, samples, min_sample):
    """Every row at one size; returns the reader-beside-writer rows if
    this is one of --rw-size."""
    keys = [f"key:{i}" for i in range(size)]
    order = keys[:]
    random.Random(1).shuffle(order)
    mixed = keys[:]
    random.Random(2).shuffle(mixed)
    batches = [mixed[i:i + BATCH] for i in range(0, size - BATCH + 1, BATCH)]
    random.Random(3).shuffle(mixed)
    groups = [tuple(mixed[i:i + 10]) for i in range(0, size - 9, 10)]
    cands = names(size, manager)
    skipped = ("" if manager is None or size <= MANAGER_MAX else
               f" Manager().dict() skipped above {MANAGER_MAX:,} keys (its "
               f"fill alone would take ~{size * 40e-6:.0f} s).")
    reps = 1 if args.quick or size >= 1_000_000 else (
        5 if size <= 10_000 else 3)
    live = {}
    try:
        res = fill_rows(cands, size, keys, reps, manager, live)
        results[("fill", size)] = res
        print(table(f"W3 fill {size:,} keys from empty (per key)", res,
                    FLOOR, f"Each candidate new and empty; {reps} interleaved "
                    "fill(s)."
                    + skipped))
        for row, title, loop in [
                ("get", "random get", get_loop),
                ("set", "random overwrite (auto-commit)", set_loop),
                ("delete", "delete + re-insert (auto-commit, per pair)",
                 delete_loop)]:
            res = measure({n: lean(loop, m, order)
                           for n, (m, _) in live.items()},
                          samples, min_sample)
            results[(row, size)] = res
            print(table(f"W3 {title}, {size:,} keys", res, FLOOR,
                        f"`for k in order: {LOOP_TEXT[row]}`; per "
                        + ("pair." if row == "delete" else "op.")
                        + skipped))

        d = live[SHM][0]
        gm = {GM_FLOOR: lean(comprehension_loop, live[FLOOR][0], batches),
              GM_SHM: lean(get_many_loop, d, batches),
              GM_SINGLE: lean(comprehension_loop, d, batches)}
        if LMDB in live:
            gm[GM_LMDB] = lean(lmdb_batch_loop, live[LMDB][0], batches)
        res = measure(gm, samples, min_sample)
        results[("get_many", size)] = res
        print(table(f"W3 get_many of {BATCH} random keys, {size:,} keys",
                    res, GM_FLOOR, "Per call (and per key).",
                    per=("key", BATCH)))

        tx = {TXN_FLOOR: lean(txn_floor_loop, live[FLOOR][0], groups),
              TXN_SHM: lean(txn_shm_loop, d, groups)}
        if LMDB in live:
            tx[TXN_LMDB] = lean(txn_lmdb_loop, live[LMDB][0], groups)
        res = measure(tx, samples, min_sample)
        results[("txn", size)] = res
        print(table(f"W3 10-op txn (5 gets, then 5 sets), {size:,} keys",
                    res, TXN_FLOOR, "Per txn; random keys."))

        rw = None
        if size in args.rw_size:
            seconds, rounds = (0.2, 1) if args.quick else (1.0, 5)
            rw = rw_rows(live, keys, seconds, rounds)
            bad = check_contents(live, rw, keys)
            print(rw_table(
                f"W3 reader beside a busy writer, {size:,} keys", rw,
                f"Median (min–max) of {rounds} round(s), {seconds:g} s "
                "of reading each; kept = reader beside writer / reader "
                "alone, the median of each round's ratio.  The private "
                "dict's processes each use their own copy: its share is "
                "what the machine alone takes away (a second busy process "
                "on a shared 2-core VM), and kept ÷ machine's divides each "
                "round's share by the private dict's in the same round.  "
                "Contents checked afterwards: "
                + ("every key holds its value." if not bad
                   else "**WRONG in " + ", ".join(bad) + "**.")))
            if bad:
                raise SystemExit("bench_dict: contents wrong after the "
                                 "reader-beside-writer runs: "
                                 + ", ".join(bad))
        return rw
    finally:
        for _, cleanup in live.values():
            cleanup()


LOOP_TEXT = {"get": "m[k]", "set": "m[k] = VALUE",
             "delete": "del m[k]; m[k] = VALUE"}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"sizes {QUICK_SIZES}, short samples")
    ap.add_argument("--sizes", type=int, nargs="+",
                    help=f"key counts (default {FULL_SIZES})")
    ap.add_argument("--rw-size", type=int, nargs="+",
                    help="key counts (of --sizes) for the reader-beside-"
                         "writer rows (default 1000 and 100000, or the "
                         "largest size with --quick); 0 skips them")
    ap.add_argument("--no-manager", action="store_true",
                    help="leave out Manager().dict()")
    ap.add_argument("--samples", type=int,
                    help="samples per candidate and row (default 5; 3 "
                         "with --quick); more steady the medians")
    args = ap.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    if args.rw_size is None:
        args.rw_size = ([max(sizes)] if args.quick else
                        [n for n in (1_000, 100_000) if n in sizes]
                        or [max(sizes)])
    samples, min_sample = (3, 0.02) if args.quick else (5, 0.2)
    samples = args.samples or samples
    print(f"Machine: {machine()}")
    print("Command: " + " ".join(["python benchmarks/bench_dict.py"]
                                 + argv))
    print("Load average at start: %.2f %.2f %.2f\n" % os.getloadavg())
    manager = None if args.no_manager else CTX.Manager()
    results, rws = {}, {}
    try:
        for size in sizes:
            got = run_size(size, args, manager, results, samples,
                           min_sample)
            if got:
                rws[size] = got
    finally:
        if manager is not None:
            manager.shutdown()
    print(targets(results, rws, sizes))
    print("Load average at end: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
