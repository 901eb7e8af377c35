"""Instructions per iteration of the W2 loop (and an empty txn), counted
with callgrind: deterministic where wall time is too noisy to decide.

    python benchmarks/count_instructions.py [iterations]

Runs itself under `valgrind --tool=callgrind` once with 0 and once with N
iterations per variant and prints the difference divided by N.
"""

from __future__ import annotations

import re
import subprocess
import sys
from multiprocessing import shared_memory

VARIANTS = ("floor", "shmtxn", "empty-txn")


def run_variant(kind: str, n: int) -> None:
    from shmtxn import SharedMemory
    std = shared_memory.SharedMemory(create=True, size=80)
    mv = std.buf.cast("q")
    shr = SharedMemory(create=True, size=80)
    try:
        if kind == "floor":
            m = mv
            for _ in range(n):
                for i in range(10):
                    m[i] = i
                for i in range(10):
                    m[i]
        elif kind == "shmtxn":
            s = shr
            for _ in range(n):
                with s.txn() as t:
                    for i in range(10):
                        t[i] = i
                    for i in range(10):
                        t[i]
        else:
            s = shr
            for _ in range(n):
                with s.txn():
                    pass
    finally:
        mv.release()
        std.close()
        std.unlink()
        shr.close()
        shr.unlink()


def count(kind: str, n: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--run", kind, str(n)],
        capture_output=True, text=True, check=True).stderr
    return int(re.search(r"refs:\s+([\d,]+)", out).group(1).replace(",", ""))


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--run":
        run_variant(sys.argv[2], int(sys.argv[3]))
        return 0
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    per_iter = {k: (count(k, n) - count(k, 0)) / n for k in VARIANTS}
    for kind, ir in per_iter.items():
        print(f"{kind:10} {ir:10,.0f} instructions/iteration"
              f"  ({ir / per_iter['floor']:.2f}× floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
