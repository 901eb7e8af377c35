"""The shmtxn exception hierarchy.

Every error shmtxn raises on purpose is a :class:`shmtxn.Error`; each class
also subclasses the builtin a caller already catches (``FileExistsError``
for an existing name, ``TimeoutError`` for a lock timeout, ...), so code
written for the stdlib keeps working.  Messages say what happened, to which
segment, and what to do.
"""

__all__ = [
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
    "TransactionsOpenError",
    "TransactionThreadError",
    "SegmentInUseError",
]


class Error(Exception):
    """Base class of every shmtxn error."""


class SegmentExistsError(Error, FileExistsError):
    """create=True, but a segment of that name already exists."""


class SegmentNotFoundError(Error, FileNotFoundError):
    """No segment of that name exists."""


class AccessDeniedError(Error, PermissionError):
    """The operating system refused access to the segment."""


class ReadOnlyError(Error, PermissionError):
    """A write through a read-only handle or inside a read transaction."""


class LockTimeout(Error, TimeoutError):
    """A transaction could not start within its timeout."""


class TransactionTooLarge(Error):
    """A transaction changed more than the undo log holds; rolled back."""


class SegmentFullError(Error, OSError):
    """No room: /dev/shm is full, or the segment's process table is."""


class CorruptSegmentError(Error):
    """The segment holds impossible values and cannot be used safely."""


class IncompatibleSegmentError(Error):
    """The segment has another format, version, layout or size."""


class TransactionClosedError(Error, ValueError):
    """The transaction has ended (or was opened before fork())."""


class NestedTransactionError(Error, RuntimeError):
    """This thread already has a transaction open on this segment."""


class SegmentClosedError(Error, ValueError):
    """The handle was closed."""


class BufferExportsError(Error, BufferError):
    """close() while views of the segment's memory are still alive."""


class TransactionsOpenError(Error):
    """close() while transactions are open on the handle's segment in this
    process (leave their with-blocks first)."""


class TransactionThreadError(Error, RuntimeError):
    """A transaction was used from a thread other than the one that opened
    it (each thread opens its own)."""


class SegmentInUseError(Error, OSError):
    """rm refused: live processes have the segment attached."""
