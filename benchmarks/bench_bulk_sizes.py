"""Whole-array reads and write txns from 1 MiB to 1 GiB, default settings.

    python benchmarks/bench_bulk_sizes.py [--mib 1 16 256 1024]
                                          [--plot docs/bulk_sizes.png]

Issue #11 ("No sizing cliffs"): a `SharedMemory(create=True, shape=n,
format="d")` with DEFAULT settings (no undo_size=, no populate=) must
take a whole-array write txn at any size, its undo log growing on demand
(posix_fallocate) and given back after the txn (hole punched).  At each
size, float64, the candidates of bench_numpy.py (same closures, reused by
import) without its optional peers:

- read: copy the whole shared array into private memory, through a
  shmtxn read txn view, against the stdlib's unsafe SharedMemory +
  ndarray and the floor (numpy copy private -> private, i.e. memcpy);
- write: overwrite the whole array, through a shmtxn write txn
  (np.copyto into t.ndarray()), against the same stdlib peer and floor.

Each sample repeats the copy until it lasts >= 0.2 s (one copy at 1 GiB);
candidates are interleaved; medians of 5 samples (3 at 1024 MiB), in
GB/s, with the ratio to the floor measured in the same run.  Needs about
6x the largest size in free memory (src, dst, private, stdlib, shmtxn and
its undo log) and 2x it in /dev/shm.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from shmtxn._bench import machine, measure, rate_table

from bench_numpy import Candidates

FLOOR = "numpy copy private→private (floor)"
STDLIB = "stdlib SharedMemory + ndarray (unsafe)"
READ = "shmtxn read txn view"
WRITE = "shmtxn write txn view"


def repeated(fn):
    """A runner for _bench.measure: n calls of fn, elapsed seconds."""
    def run(n):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - start
    return run


def gbps(results, nbytes) -> dict[str, list[float]]:
    return {name: [nbytes / s / 1e9 for s in r.per_op]
            for name, r in results.items()}


def one_size(mib: int) -> tuple[dict, dict]:
    """GB/s samples of reads and writes of `mib` MiB."""
    nbytes = mib << 20
    samples, min_sample = (3, 0.0) if mib >= 1024 else (5, 0.2)
    c = Candidates(nbytes // 8, shmtxn_kwargs={}, peers=False)
    try:
        reads = {k: repeated(v) for k, v in c.reads().items()}
        writes = {k: repeated(v) for k, v in c.writes().items()}
        r = gbps(measure(reads, samples, min_sample), nbytes)
        w = gbps(measure(writes, samples, min_sample), nbytes)
    finally:
        c.close()
    return r, w


def plot(sizes, reads, writes, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    style = {FLOOR: ("#222222", "o", "--"), STDLIB: ("#8d99ae", "s", "-"),
             READ: ("#2a9d8f", "^", "-"), WRITE: ("#e76f51", "v", "-")}
    for ax, title, per_size, where in (
            (axes[0], "read the whole array", reads, "lower left"),
            (axes[1], "write the whole array", writes, "center")):
        for name in per_size[sizes[0]]:
            meds = [statistics.median(per_size[s][name]) for s in sizes]
            lo = [m - min(per_size[s][name]) for m, s in zip(meds, sizes)]
            hi = [max(per_size[s][name]) - m for m, s in zip(meds, sizes)]
            color, marker, line = style[name]
            ax.errorbar(sizes, meds, yerr=[lo, hi], color=color,
                        marker=marker, linestyle=line, capsize=3,
                        label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [f"{s} MiB" for s in sizes])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("array size (float64)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc=where)
    axes[0].set_ylabel("GB/s (median; bars: min–max)")
    fig.suptitle("Whole-array copies at default settings: shmtxn vs "
                 "memcpy floor and stdlib (unsafe)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, nargs="+", default=[1, 16, 256, 1024])
    ap.add_argument("--plot", help="write a PNG of GB/s against size")
    args = ap.parse_args(argv)
    cmd = "python benchmarks/bench_bulk_sizes.py --mib " + " ".join(
        map(str, args.mib)) + (f" --plot {args.plot}" if args.plot else "")
    print(f"# Whole-array copies by size, default settings\n\n"
          f"Machine: {machine()}. Command: `{cmd}`.\n", flush=True)
    reads, writes = {}, {}
    for mib in args.mib:
        reads[mib], writes[mib] = one_size(mib)
        print(rate_table(f"Read {mib} MiB through a view", reads[mib],
                         "GB/s", ratio_to=FLOOR), flush=True)
        print(rate_table(f"Write {mib} MiB (write txn, default settings)",
                         writes[mib], "GB/s", ratio_to=FLOOR), flush=True)
    print("### Summary: medians in GB/s (× floor)\n")
    print("| size | floor | stdlib read | shmtxn read view | stdlib write "
          "| shmtxn write txn |")
    print("|---:|---:|---:|---:|---:|---:|")
    for mib in args.mib:
        med = {k: statistics.median(v) for k, v in reads[mib].items()}
        wmed = {k: statistics.median(v) for k, v in writes[mib].items()}
        # the floor appears in both runs; its reads-run median is the base
        # for the read columns, its writes-run median for the write ones
        print(f"| {mib} MiB | {med[FLOOR]:.2f} / {wmed[FLOOR]:.2f} "
              f"| {med[STDLIB]:.2f} ({med[STDLIB] / med[FLOOR]:.2f}) "
              f"| {med[READ]:.2f} ({med[READ] / med[FLOOR]:.2f}) "
              f"| {wmed[STDLIB]:.2f} ({wmed[STDLIB] / wmed[FLOOR]:.2f}) "
              f"| {wmed[WRITE]:.2f} ({wmed[WRITE] / wmed[FLOOR]:.2f}) |")
    print()
    if args.plot:
        plot(args.mib, reads, writes, args.plot)
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
