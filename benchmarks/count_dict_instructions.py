"""Instructions per SharedDict operation, counted with callgrind:
deterministic where wall time is too noisy to decide.

    python benchmarks/count_dict_instructions.py [iterations]
    python benchmarks/count_dict_instructions.py --slots [iterations]

(--slots: the typed-slot operations of a SharedMemory instead.)

For each operation it runs itself under `valgrind --tool=callgrind` with
0 and with N iterations of a loop over 2 000 cached keys, and prints the
difference divided by N: the operation plus one loop step.  The private
dict's get is the floor.  (Instructions, not time: at 100 000 keys a get
is bound by its cache misses, which this does not count.)
"""

from __future__ import annotations

import random
import re
import subprocess
import sys

VALUE = bytes(range(100))
OPS = ("private get (floor)", "get", "set", "get_many of 100 (per key)",
       "empty txn", "10-op txn")
SLOT_OPS = ("shr[0]", "shr[0] = i", "empty slots txn", "1-write slots txn")


def run_slots(op: str, n: int) -> None:
    from shmtxn import SharedMemory
    with SharedMemory(create=True, size=80) as shr:
        if op == "shr[0]":
            for _ in range(n):
                shr[0]
        elif op == "shr[0] = i":
            for i in range(n):
                shr[0] = i
        elif op == "empty slots txn":
            for _ in range(n):
                with shr.txn():
                    pass
        else:
            for i in range(n):
                with shr.txn() as t:
                    t[0] = i


def run(op: str, n: int) -> None:
    if op in SLOT_OPS:
        return run_slots(op, n)
    from shmtxn import SharedDict
    keys = [f"key:{i}" for i in range(2000)]
    order = keys[:]
    random.Random(1).shuffle(order)
    d = SharedDict(create=True)
    p = dict.fromkeys(keys, VALUE)
    try:
        d.update(p)
        ks = [order[(j * 10) % 1990:(j * 10) % 1990 + 100]
              for j in range(200)]
        if op == "private get (floor)":
            for j in range(n):
                p[order[j % 2000]]
        elif op == "get":
            for j in range(n):
                d[order[j % 2000]]
        elif op == "set":
            for j in range(n):
                d[order[j % 2000]] = VALUE
        elif op == "get_many of 100 (per key)":
            for j in range(n // 100):
                d.get_many(ks[j % 200])
        elif op == "empty txn":
            for j in range(n):
                with d.txn():
                    pass
        else:
            for j in range(n):
                k = ks[j % 200]
                with d.txn() as t:
                    t[k[0]], t[k[1]], t[k[2]], t[k[3]], t[k[4]]
                    t[k[5]] = VALUE
                    t[k[6]] = VALUE
                    t[k[7]] = VALUE
                    t[k[8]] = VALUE
                    t[k[9]] = VALUE
    finally:
        d.close()
        d.unlink()


def count(op: str, n: int) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, "--run", op, str(n)],
        capture_output=True, text=True, check=True).stderr
    return int(re.search(r"refs:\s+([\d,]+)", out).group(1).replace(",", ""))


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--run":
        run(sys.argv[2], int(sys.argv[3]))
        return 0
    args = sys.argv[1:]
    ops = OPS
    if args[:1] == ["--slots"]:
        ops, args = SLOT_OPS, args[1:]
    n = int(args[0]) if args else 20000
    base = None
    for op in ops:
        ir = (count(op, n) - count(op, 0)) / n
        base = base or ir
        print(f"{op:28} {ir:10,.0f} instructions  ({ir / base:5.1f}× floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
