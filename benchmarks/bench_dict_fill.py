"""Fill a SharedDict with 1 MB values up to 1 GB, beside lmdb and a
private dict.

    python benchmarks/bench_dict_fill.py                      # default dict
    python benchmarks/bench_dict_fill.py --size 2147483648    # size= given

Issue #11 ("No sizing cliffs"): a default `SharedDict(create=True)` should
take 1 GB without being told a size.  `--size` passes `size=` (default:
none, the default SharedDict()); a dict that fills up is reported with how
many values it took, not as a crash.  Each sample creates an empty store
and times the lean loop `for k, v in items: d[k] = v` over 1000 str keys
and 1 MB bytes values (16 distinct values in turn, 16 MB, so the source is
not all in cache): values/s and MB/s, medians of interleaved samples, and
the ratio to lmdb.  Candidates:

- private dict (floor): stores a reference, copies nothing;
- private dict of copies: `d[k] = bytearray(v)`, one copy into fresh
  private memory, the least any store that keeps its own bytes does;
- lmdb in /dev/shm (writemap, no sync, one txn per put: bench_dict's
  LmdbDict, map grown to 2 GiB), when installed;
- shmtxn SharedDict, one auto-commit set per value.

After each fill, the store's resident bytes (st_blocks * 512 of its file
in /dev/shm) against its nominal size (st_size).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from shmtxn import SharedDict, SegmentFullError
from shmtxn.admin import SHM_DIR
from shmtxn._bench import machine, optional, rate_table

from bench_dict import LmdbDict

lmdb = optional("lmdb")

VALUE = 1_000_000
COUNT = 1000
KEYS = [f"key:{i}" for i in range(COUNT)]
POOL = [bytes([i + 1]) * VALUE for i in range(16)]
ITEMS = [(k, POOL[i % len(POOL)]) for i, k in enumerate(KEYS)]

FLOOR = "private dict (floor: stores a reference)"
COPIES = "private dict of copies (bytearray(v))"
LMDB = "lmdb /dev/shm, writemap, txn per put"
SHMTXN = "shmtxn SharedDict"


def file_bytes(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_blocks * 512, st.st_size


class Fill:
    """One timed fill of a fresh store: seconds, values stored, and the
    (resident, nominal) bytes of its file, or None for private dicts."""

    def __init__(self, seconds, stored, resident=None, error=None):
        self.seconds, self.stored = seconds, stored
        self.resident, self.error = resident, error


def fill_private(copy: bool) -> Fill:
    d = {}
    items = ITEMS
    if copy:
        ba = bytearray
        start = time.perf_counter()
        for k, v in items:
            d[k] = ba(v)
        elapsed = time.perf_counter() - start
    else:
        start = time.perf_counter()
        for k, v in items:
            d[k] = v
        elapsed = time.perf_counter() - start
    return Fill(elapsed, len(d))


def fill_lmdb() -> Fill:
    path = tempfile.mkdtemp(prefix="shmtxn-bench-", dir="/dev/shm")
    try:
        d = LmdbDict(path)
        d.env.set_mapsize(2 << 30)
        items = ITEMS
        start = time.perf_counter()
        for k, v in items:
            d[k] = v
        elapsed = time.perf_counter() - start
        with d.env.begin() as t:
            stored = t.stat()["entries"]
        resident = file_bytes(os.path.join(path, "data.mdb"))
        d.env.close()
        return Fill(elapsed, stored, resident)
    finally:
        shutil.rmtree(path)


def fill_shmtxn(size) -> Fill:
    d = SharedDict(create=True) if size is None else SharedDict(
        create=True, size=size)
    try:
        items = ITEMS
        error = None
        start = time.perf_counter()
        try:
            for k, v in items:
                d[k] = v
        except SegmentFullError as e:
            error = e
        elapsed = time.perf_counter() - start
        return Fill(elapsed, len(d), file_bytes(os.path.join(SHM_DIR, d.name)),
                    error)
    finally:
        d.close()
        d.unlink()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=None,
                    help="SharedDict size= in bytes (default: none given)")
    ap.add_argument("--samples", type=int, default=5)
    args = ap.parse_args(argv)
    cmd = "python benchmarks/bench_dict_fill.py" + (
        f" --size {args.size}" if args.size is not None else "")
    print(f"# Fill a SharedDict with {COUNT} values of 1 MB\n\n"
          f"Machine: {machine()}. Command: `{cmd}`. SharedDict "
          + ("default (no size=)" if args.size is None
             else f"size={args.size}") + ".\n", flush=True)
    cands = {FLOOR: lambda: fill_private(False),
             COPIES: lambda: fill_private(True)}
    if lmdb:
        cands[LMDB] = fill_lmdb
    cands[SHMTXN] = lambda: fill_shmtxn(args.size)
    fills = {name: [] for name in cands}
    for _ in range(args.samples):
        for name, fn in cands.items():
            fills[name].append(fn())
    short = [f for f in fills[SHMTXN] if f.error]
    if short:
        print(f"**shmtxn SharedDict filled up after {short[0].stored} of "
              f"{COUNT} values**: {short[0].error}\n")
    for name, fs in fills.items():
        bad = [f.stored for f in fs if f.stored != COUNT]
        if bad and name != SHMTXN:
            print(f"**{name} stored {bad} values, not {COUNT}**\n")
    # rates over what was stored (a dict that filled up is flagged above);
    # the values are 1 MB, so MB/s and values/s are the same number
    mbps = {n: [f.stored * VALUE / f.seconds / 1e6 for f in fs]
            for n, fs in fills.items()}
    ref = LMDB if lmdb else COPIES
    print(rate_table("Fill rate, MB/s (= values/s at 1 MB a value)", mbps,
                     "MB/s", ratio_to=ref))
    shm = statistics.median(mbps[SHMTXN])
    print(f"shmtxn fills at {shm / statistics.median(mbps[COPIES]):.2f}× "
          "the private copy's rate"
          + (f" and {shm / statistics.median(mbps[LMDB]):.2f}× lmdb's"
             if lmdb else "") + ".\n")
    print("### Resident vs nominal bytes of the file after the fill "
          "(median)\n")
    print("| store | resident (st_blocks × 512) | nominal (st_size) | "
          "resident / data stored |")
    print("|---|---:|---:|---:|")
    for name, fs in fills.items():
        if fs[0].resident is None:
            continue
        res = statistics.median(f.resident[0] for f in fs)
        nom = statistics.median(f.resident[1] for f in fs)
        data = statistics.median(f.stored for f in fs) * VALUE
        print(f"| {name} | {res / 1e6:,.1f} MB | {nom / 1e6:,.1f} MB | "
              f"{res / data:.3f} |")
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
