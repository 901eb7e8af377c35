"""The error hierarchy and the admin functions as a user writes them:
checked by `mypy --strict` and run by tests/test_typing.py."""

from __future__ import annotations

from typing import Any, assert_type

import shmtxn
from shmtxn import LockTimeout, SharedMemory


def attach(name: str) -> SharedMemory | None:
    try:
        return SharedMemory(name)
    except shmtxn.SegmentNotFoundError as e:
        assert_type(e, shmtxn.SegmentNotFoundError)
        missing: FileNotFoundError = e  # also the builtin a caller catches
        assert missing is e
        return None


def try_bump(shr: SharedMemory) -> bool:
    try:
        with shr.txn(timeout=0) as t:
            t[0] += 1
            return True
    except LockTimeout as e:
        timeout: TimeoutError = e  # a LockTimeout is a TimeoutError
        error: shmtxn.Error = e  # and a shmtxn.Error
        del timeout, error
        return False


def describe(error: shmtxn.Error) -> str:
    if isinstance(error, shmtxn.ReadOnlyError):
        denied: PermissionError = error
        return f"read-only: {denied}"
    return str(error)


def main() -> None:
    assert attach("shmtxn-typing-no-such-segment") is None
    with SharedMemory(create=True, size=8) as shr:
        assert try_bump(shr)
        info = shmtxn.segment_info(shr.name)
        assert_type(info, dict[str, Any])
        assert info["state"] == "ready"
        names = [s["name"] for s in shmtxn.list_segments(prefix=shr.name)]
        assert shr.name in names
        try:
            with SharedMemory(shr.name, read_only=True) as ro:
                ro[0] = 1
        except shmtxn.Error as e:
            assert describe(e).startswith("read-only")
    assert_type(shmtxn.__version__, str)
    shmtxn.install()
    shmtxn.uninstall()


if __name__ == "__main__":
    main()
