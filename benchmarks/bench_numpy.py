"""Bulk data: 256 MiB of float64 through zero-copy views, side by side.

    python benchmarks/bench_numpy.py [--mib 256] [--plot docs/numpy_bandwidth.png]

Workloads (../shared/BENCHMARKING.md W4): attach a segment and get an
array view of it; read the whole array through a view (copy into private
memory); write the whole array through a view (shmtxn: a write txn, so it
can roll back); the first write into a freshly created segment ("cold")
against a second one ("warm").  Floor: numpy copy private -> private.
Peers when installed: stdlib SharedMemory + ndarray, SharedArray, lmdb
(buffers=True, writemap).  Samples are interleaved; medians of 5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from multiprocessing import shared_memory

import numpy as np

from shmtxn import SharedMemory
from shmtxn._bench import machine, optional

SharedArray = optional("SharedArray")
lmdb = optional("lmdb")
SAMPLES = 5


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Candidates:
    """The arrays every method reads and writes, made once.  The shmtxn
    segment gets `shmtxn_kwargs` (default: room to log a whole-array write,
    prefaulted); `peers=False` leaves out SharedArray and lmdb."""

    def __init__(self, n: int, shmtxn_kwargs: dict | None = None,
                 peers: bool = True):
        self.n = n
        self.nbytes = 8 * n
        self.src = np.random.default_rng(1).random(n)
        self.dst = np.empty(n)
        self.dst[:] = 0  # fault the private pages in
        self.private = self.src.copy()
        self.std = shared_memory.SharedMemory(create=True, size=self.nbytes)
        self.std_arr = np.ndarray(n, dtype="d", buffer=self.std.buf)
        self.std_arr[:] = self.src
        if shmtxn_kwargs is None:
            shmtxn_kwargs = {"undo_size": self.nbytes + 4096,
                             "populate": True}
        self.shr = SharedMemory(create=True, shape=n, format="d",
                                **shmtxn_kwargs)
        with self.shr.txn() as t:
            np.copyto(t.ndarray(), self.src)
        self.sa_name = self.env = self.lmdb_dir = None
        if SharedArray and peers:
            self.sa_name = f"shm://shmtxn-bench-{os.getpid()}"
            self.sa = SharedArray.create(self.sa_name, n, dtype="d")
            self.sa[:] = self.src
        if lmdb and peers:
            self.lmdb_dir = tempfile.mkdtemp(prefix="shmtxn-bench-",
                                             dir="/dev/shm")
            self.env = lmdb.open(self.lmdb_dir, map_size=8 * self.nbytes,
                                 writemap=True, sync=False, metasync=False)
            with self.env.begin(write=True) as txn:
                txn.put(b"a", self.src)

    def close(self):
        del self.std_arr
        self.std.close()
        self.std.unlink()
        self.shr.close()
        self.shr.unlink()
        if self.sa_name:
            del self.sa
            SharedArray.delete(self.sa_name)
        if self.env:
            self.env.close()
            for f in os.listdir(self.lmdb_dir):
                os.unlink(os.path.join(self.lmdb_dir, f))
            os.rmdir(self.lmdb_dir)

    # -- reading: copy the whole shared array into private memory --------
    def reads(self) -> dict:
        c = {"numpy copy private→private (floor)":
             lambda: np.copyto(self.dst, self.private),
             "stdlib SharedMemory + ndarray (unsafe)":
             lambda: np.copyto(self.dst, self.std_arr)}
        if self.sa_name:
            c["SharedArray (unsafe)"] = lambda: np.copyto(self.dst, self.sa)
        if self.env:
            def lmdb_read():
                with self.env.begin(buffers=True) as txn:
                    np.copyto(self.dst, np.frombuffer(txn.get(b"a"), "d"))
            c["lmdb buffers=True, read txn"] = lmdb_read

        def shmtxn_read():
            with self.shr.txn(write=False) as t:
                a = t.ndarray()
                np.copyto(self.dst, a)
                del a
        c["shmtxn read txn view"] = shmtxn_read
        return c

    # -- writing: overwrite the whole shared array -------------------------
    def writes(self) -> dict:
        c = {"numpy copy private→private (floor)":
             lambda: np.copyto(self.private, self.src),
             "stdlib SharedMemory + ndarray (unsafe)":
             lambda: np.copyto(self.std_arr, self.src)}
        if self.sa_name:
            c["SharedArray (unsafe)"] = lambda: np.copyto(self.sa, self.src)
        if self.env:
            def lmdb_write():
                with self.env.begin(write=True) as txn:
                    txn.put(b"a", self.src)
            c["lmdb writemap put"] = lmdb_write

        def shmtxn_write():
            with self.shr.txn() as t:  # logged: a crash rolls it back
                a = t.ndarray()
                np.copyto(a, self.src)
                del a
        c["shmtxn write txn view"] = shmtxn_write
        return c


def bandwidth(candidates: dict, nbytes: int) -> dict:
    """GB/s samples per candidate, interleaved."""
    out = {k: [] for k in candidates}
    for _ in range(SAMPLES):
        for name, fn in candidates.items():
            out[name].append(nbytes / timed(fn) / 1e9)
    return out


def attach_and_view(c: Candidates) -> dict:
    """Seconds to attach by name, get an ndarray of it, and let it go."""
    def stdlib():
        s = shared_memory.SharedMemory(c.std.name)
        a = np.ndarray(c.n, dtype="d", buffer=s.buf)
        del a
        s.close()

    def shmtxn(read_only):
        with SharedMemory(c.shr.name, read_only=read_only) as s:
            with s.txn(write=False) as t:
                a = t.ndarray()
                del a

    cands = {"stdlib SharedMemory + ndarray": stdlib,
             "shmtxn, first handle of its kind here (maps)":
             lambda: shmtxn(True),
             "shmtxn, process already has a handle (shares its mapping)":
             lambda: shmtxn(False)}
    if c.sa_name:
        cands["SharedArray.attach"] = lambda: SharedArray.attach(c.sa_name)
    out = {k: [] for k in cands}
    for _ in range(SAMPLES):
        for name, fn in cands.items():
            reps = 200
            out[name].append(timed(lambda: [fn() for _ in range(reps)])
                             / reps)
    return out


def cold_vs_warm(nbytes: int) -> dict:
    """GB/s of the first and the second full write into a new segment."""
    n = nbytes // 8
    src = np.ones(n)
    out = {"stdlib SharedMemory: cold": [], "stdlib SharedMemory: warm": [],
           "shmtxn populate=True: cold": [], "shmtxn populate=True: warm": [],
           "shmtxn from_array (create + fill)": []}
    for _ in range(SAMPLES):
        s = shared_memory.SharedMemory(create=True, size=nbytes)
        a = np.ndarray(n, dtype="d", buffer=s.buf)
        out["stdlib SharedMemory: cold"].append(
            nbytes / timed(lambda: np.copyto(a, src)) / 1e9)
        out["stdlib SharedMemory: warm"].append(
            nbytes / timed(lambda: np.copyto(a, src)) / 1e9)
        del a
        s.close()
        s.unlink()
        with SharedMemory(create=True, shape=n, format="d",
                          populate=True) as shr:
            b = np.ndarray(n, dtype="d", buffer=shr.buf)
            out["shmtxn populate=True: cold"].append(
                nbytes / timed(lambda: np.copyto(b, src)) / 1e9)
            out["shmtxn populate=True: warm"].append(
                nbytes / timed(lambda: np.copyto(b, src)) / 1e9)
            del b
        holder = []
        out["shmtxn from_array (create + fill)"].append(
            nbytes / timed(lambda: holder.append(
                SharedMemory.from_array(src))) / 1e9)
        holder[0].close()
        holder[0].unlink()
    return out


def rate_rows(title, samples, unit, floor=None, scale=1.0, fmt="{:.2f}"):
    base = statistics.median(samples[floor]) if floor else None
    lines = [f"### {title}", "",
             f"| candidate | median {unit} | min | max |"
             + (" × floor |" if floor else ""),
             "|---|---:|---:|---:|" + ("---:|" if floor else "")]
    for name, vals in samples.items():
        med = statistics.median(vals)
        row = (f"| {name} | {fmt.format(med * scale)} | "
               f"{fmt.format(min(vals) * scale)} | "
               f"{fmt.format(max(vals) * scale)} |")
        if floor:
            row += f" {med / base:.2f} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.5))
    for ax, (title, samples) in zip(axes, results.items()):
        names = list(samples)
        meds = [statistics.median(samples[k]) for k in names]
        colors = ["#2a9d8f" if "shmtxn" in k else "#8d99ae" for k in names]
        ax.barh(range(len(names)), meds, color=colors)
        ax.set_yticks(range(len(names)), [k.replace(" (", "\n(")
                                          for k in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("GB/s (median)")
        ax.set_title(title, fontsize=9)
    fig.suptitle("256 MiB float64: GB/s per method (shmtxn in green)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--plot", help="write a PNG of GB/s per method")
    args = parser.parse_args()
    nbytes = args.mib << 20
    print(f"Machine: {machine()}. Command: `python benchmarks/"
          f"bench_numpy.py --mib {args.mib}`.\n", flush=True)
    c = Candidates(nbytes // 8)
    try:
        reads = bandwidth(c.reads(), nbytes)
        print(rate_rows(f"Read {args.mib} MiB through a view", reads,
                        "GB/s", floor="numpy copy private→private (floor)"),
              flush=True)
        writes = bandwidth(c.writes(), nbytes)
        print(rate_rows(f"Write {args.mib} MiB through a view", writes,
                        "GB/s", floor="numpy copy private→private (floor)"),
              flush=True)
        attach = attach_and_view(c)
        print(rate_rows("Attach by name and view as an ndarray", attach,
                        "µs", scale=1e6, fmt="{:.1f}"), flush=True)
    finally:
        c.close()
    cold = cold_vs_warm(nbytes)
    print(rate_rows(f"First (cold) vs second (warm) write of {args.mib} MiB "
                    "into a new segment", cold, "GB/s"), flush=True)
    if args.plot:
        plot({"read through a view": reads, "write through a view": writes,
              "cold vs warm write": cold}, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
