"""shmtxn: transactional shared memory for Python processes.

    from shmtxn import SharedMemory
    with SharedMemory(create=True, size=80) as shr:
        with shr.txn() as shm:
            shm[0] = 42

    from shmtxn import SharedDict
    with SharedDict(create=True) as d:
        with d.txn() as t:
            t["n"] = t.get("n", 0) + 1
"""

from .errors import (  # the exception hierarchy
    AccessDeniedError, BufferExportsError, CorruptSegmentError, Error,
    IncompatibleSegmentError, LockTimeout, NestedTransactionError,
    ReadOnlyError, SegmentClosedError, SegmentExistsError, SegmentFullError,
    SegmentInUseError, SegmentNotFoundError, TransactionClosedError,
    TransactionThreadError, TransactionTooLarge, TransactionsOpenError)
from .admin import list_segments, segment_info
from .memory import SharedMemory
from .dict import SharedDict
from . import _install
from ._install import install, uninstall
from . import admin

__version__ = "0.1.0"

__all__ = ["SharedMemory", "SharedDict", "list_segments", "segment_info",
           "install", "uninstall", "__version__",
           # errors.__all__, spelled out for type checkers and stubtest
           "Error", "SegmentExistsError", "SegmentNotFoundError",
           "AccessDeniedError", "ReadOnlyError", "LockTimeout",
           "TransactionTooLarge", "SegmentFullError", "CorruptSegmentError",
           "IncompatibleSegmentError", "TransactionClosedError",
           "NestedTransactionError", "SegmentClosedError",
           "BufferExportsError", "TransactionsOpenError",
           "TransactionThreadError", "SegmentInUseError"]

# children of `shmtxn run` (spawn, forkserver) install as they import us
import os as _os
if _os.environ.get(_install.ENV) == "1":
    install()
del _os
