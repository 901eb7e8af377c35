"""SharedDict as a user writes it: checked by `mypy --strict` and run by
tests/test_typing.py.  SharedDict[K, V] is a MutableMapping[K, V]."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any, assert_type

from shmtxn import SharedDict
from shmtxn.dict import DictTxn  # the type `with d.txn() as t` binds


def total(counts: Mapping[str, int]) -> int:
    return sum(counts.values())


def record(counts: MutableMapping[str, int], word: str) -> None:
    counts[word] = counts.get(word, 0) + 1


def increment(d: SharedDict[str, int], key: str) -> int:
    """A return inside `with d.txn()` ends the function."""
    with d.txn() as t:
        assert_type(t, DictTxn[str, int])
        t[key] = t.get(key, 0) + 1
        return t[key]


def per_key(d: SharedDict[str, int]) -> None:
    d["a"] = 1
    assert_type(d["a"], int)
    assert_type(d.get("a"), int | None)
    assert_type(d.get("a", 0), int)
    assert_type(d.get("a", "none"), int | str)
    assert_type("a" in d, bool)
    assert_type(len(d), int)
    del d["a"]


def whole_dict(d: SharedDict[str, int]) -> None:
    d.update({"a": 1}, b=2)
    d.update([("c", 3)])
    d |= {"d": 4}
    assert_type(d.setdefault("e", 5), int)
    assert_type(d.pop("e"), int)
    assert_type(d.pop("missing", None), int | None)
    assert_type(d.popitem(), tuple[str, int])
    assert_type(d.copy(), dict[str, int])
    assert_type(d | {"x": 1.5}, dict[str, int | float])
    assert_type(d.get_many(["a", "b"]), list[int | None])
    assert_type(d.get_many(["a", "b"], 0), list[int])
    for key, value in d.items():
        assert_type(key, str)
        assert_type(value, int)
    assert_type(list(d), list[str])
    assert_type(list(d.keys()), list[str])
    assert_type(list(d.values()), list[int])
    assert_type(list(reversed(d)), list[str])


def in_one_txn(d: SharedDict[str, int]) -> None:
    with d.txn() as t:
        assert_type(t.get("a"), int | None)
        assert_type(t.pop("a", 0), int)
        assert_type(t.get_many(["b"]), list[int | None])
        t.update(z=26)
        assert_type(t.copy(), dict[str, int])
    with d.txn(write=False, timeout=1.0) as t:
        assert_type(t.write, bool)
        assert_type(dict(t), dict[str, int])


def wait_for(d: SharedDict[str, int], key: str) -> int:
    with d.txn(until=lambda t: key in t, timeout=5) as t:
        assert_type(t, DictTxn[str, int])
        return t[key]


def main() -> None:
    with SharedDict[str, int](create=True) as d:
        assert_type(d, SharedDict[str, int])
        assert increment(d, "n") == 1
        per_key(d)
        whole_dict(d)
        in_one_txn(d)
        record(d, "word")
        assert total(d) == sum(d.values())
        assert wait_for(d, "word") == 1
        assert d.stats()["count"] == len(d)

    with SharedDict(create=True) as anything:  # no parameters: Any, Any
        assert_type(anything, SharedDict[Any, Any])
        anything[("a", 1)] = [1, 2]
        attached: SharedDict[tuple[str, int], list[int]] = SharedDict(
            anything.name, read_only=True)
        assert attached[("a", 1)] == [1, 2]
        attached.close()


if __name__ == "__main__":
    main()
