"""shmtxn: transactional shared memory for Python processes.

    from shmtxn import SharedMemory
    with SharedMemory(create=True, size=80) as shr:
        with shr.txn() as shm:
            shm[0] = 42
"""

from .errors import (
    AccessDeniedError,
    BufferExportsError,
    CorruptSegmentError,
    Error,
    IncompatibleSegmentError,
    LockTimeout,
    NestedTransactionError,
    ReadOnlyError,
    SegmentClosedError,
    SegmentExistsError,
    SegmentFullError,
    SegmentNotFoundError,
    TransactionClosedError,
    TransactionTooLarge,
)
from .memory import SharedMemory

__version__ = "0.1.0"

__all__ = [
    "SharedMemory",
    "Error",
    "SegmentExistsError",
    "SegmentNotFoundError",
    "AccessDeniedError",
    "ReadOnlyError",
    "LockTimeout",
    "TransactionTooLarge",
    "SegmentFullError",
    "CorruptSegmentError",
    "IncompatibleSegmentError",
    "TransactionClosedError",
    "NestedTransactionError",
    "SegmentClosedError",
    "BufferExportsError",
    "__version__",
]
