"""Mistakes mypy must report: each line ending in an "E:" comment must
get an error of the code it names, and no other line any
(tests/test_typing.py).  If the stubs turned into Any, these lines would
pass silently."""

import shmtxn
from shmtxn import SharedMemory
from shmtxn._core import Txn


def misuse(shr: SharedMemory) -> None:
    shr.txn(write="yes")  # E: [call-overload]
    shr.txn(timeout="1")  # E: [call-overload]
    shr.txn(until=1)  # E: [call-overload]
    shr.txn(True, 1.0, False)  # E: [call-overload]
    shr.wait(since="0")  # E: [arg-type]
    shr.name = "other"  # E: [misc]
    shr.no_such_method()  # E: [attr-defined]
    shr["0"]  # E: [call-overload]
    with shr.txn() as t:
        t.commit(True)  # E: [call-arg]
    SharedMemory(create=True, size="80")  # E: [arg-type]
    SharedMemory(create=True, size=80, format=8)  # E: [arg-type]
    SharedMemory(create=True, size=80, mode="600")  # E: [arg-type]
    name: int = shr.name  # E: [assignment]
    shmtxn.NoSuchError  # E: [attr-defined]


class MyTxn(Txn):  # E: [misc]
    pass
