"""SharedMemory as a user writes it: checked by `mypy --strict` and run by
tests/test_typing.py.  assert_type() fails the check if a type turns into
something else, Any included."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
from typing import Any, assert_type

from shmtxn import SharedMemory
from shmtxn._core import Txn  # the type `with shr.txn() as t` binds


def first(shr: SharedMemory) -> int:
    """A return inside `with shr.txn()` ends the function: leaving the
    block never swallows an exception, so nothing is missing after it."""
    with shr.txn(write=False) as t:
        return int(t[0])


def bump(shr: SharedMemory, by: int = 1) -> int:
    with shr.txn() as t:
        assert_type(t, Txn)
        t[0] += by
        assert_type(t.write, bool)
        return int(t[0])


def slices_and_views(shr: SharedMemory) -> None:
    shr[0:3] = [1, 2, 3]
    assert_type(shr[0:3], list[Any])
    assert_type(shr[0], Any)  # the format decides: int, float or bool
    with shr.txn() as t:
        t[1:3] = (7, 8)
        assert_type(t[1:3], list[Any])
        assert_type(t.get(99, -1), Any)
        assert_type(list(t.keys()), list[int])
        for i, value in t.items():
            assert_type(i, int)
        assert_type(t.ndarray(0, 2), Any)  # numpy arrays: numpy is optional
    assert_type(shr.buf, memoryview)
    assert_type(shr.shape, tuple[int, ...])
    assert_type(shr.format, str)
    assert_type(len(shr), int)
    assert_type(shr.ndarray(copy=True), Any)


def wait_for_change(shr: SharedMemory) -> int:
    seen = shr.version
    assert_type(seen, int)
    return shr.wait(seen, timeout=0.01)


def wait_until_positive(shr: SharedMemory) -> int:
    with shr.txn(until=lambda t: t[0] > 0, timeout=5) as t:
        assert_type(t, Txn)
        return int(t[0])


async def wait_async(shr: SharedMemory) -> int:
    version = await shr.wait_async(timeout=0)
    assert_type(version, int)
    return version


class Counter(SharedMemory):
    """Subclasses keep their own type through `with` and from_array."""

    def bump(self) -> int:
        return bump(self)


def child(shr: SharedMemory) -> None:
    bump(shr)
    shr.close()


def main() -> None:
    with SharedMemory(create=True, size=80) as shr:
        assert_type(shr, SharedMemory)
        assert_type(shr.name, str)
        slices_and_views(shr)
        assert bump(shr, 2) == 3 and first(shr) == 3
        assert wait_for_change(shr) == shr.version
        assert wait_until_positive(shr) == 3
        assert asyncio.run(wait_async(shr)) == shr.version

        other = SharedMemory(shr.name, read_only=True)
        assert_type(other.read_only, bool)
        assert first(other) == 3
        other.close()

        again = pickle.loads(pickle.dumps(shr))
        assert isinstance(again, SharedMemory)
        again.close()

        process = multiprocessing.get_context("fork").Process(
            target=child, args=(shr,))
        process.start()
        process.join()
        assert first(shr) == 4

    with Counter(create=True, size=8, format="q") as counter:
        assert_type(counter, Counter)
        assert counter.bump() == 1

    with Counter.from_array([1.5, 2.5]) as copied:
        assert_type(copied, Counter)
        assert copied[1] == 2.5


if __name__ == "__main__":
    main()
