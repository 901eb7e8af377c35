"""Mistakes mypy must report on SharedDict (see memory_misuse.py)."""

from shmtxn import SharedDict


def misuse(d: SharedDict[str, int]) -> None:
    d["a"] = "one"  # E: [assignment]
    d[1] = 1  # E: [index]
    d[1]  # E: [index]
    text: str = d["a"]  # E: [assignment]
    d.get(1)  # E: [call-overload]
    d.pop(1)  # E: [call-overload]
    d.setdefault("a", "one")  # E: [arg-type]
    d.update({1: 1})  # E: [dict-item]
    d.copy()["a"] = "one"  # E: [assignment]
    d.get_many([1])  # E: [list-item]
    d.txn(write="yes")  # E: [call-overload]
    with d.txn() as t:
        t["a"] = b"one"  # E: [assignment]
        t.get(1)  # E: [call-overload]
    with d.txn(until=lambda t: t["a"] == 1) as t:
        t.pop(1)  # E: [call-overload]


unhashable: SharedDict[list[int], int]  # E: [type-var]
