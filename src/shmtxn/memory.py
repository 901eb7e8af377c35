"""shmtxn.SharedMemory: named shared memory with transactions.

The hot paths (indexing, ``txn()``) live in the C base class
``shmtxn._core.Memory``; this subclass adds what is Python's business:
pickling (re-attach by name) and a readable repr.
"""

from __future__ import annotations

from . import _core

__all__ = ["SharedMemory"]


def _reattach(cls, name, read_only):
    """Unpickle a handle: attach to the segment by name."""
    return cls(name, read_only=read_only)


class SharedMemory(_core.Memory):
    """A named shared-memory segment of typed slots with transactions.

    ``SharedMemory(name=None, create=False, size=0, *, read_only=False,
    format="q", undo_size=0, max_processes=0, timeout=None, mode=0o600)``

    ``size`` is in bytes and must be a multiple of the item size of
    ``format`` (a struct code; the default ``"q"`` is an 8-byte signed
    integer, so ``size=80`` holds ten slots).  Attaching reads the format
    and size from the segment.  The handle that created a segment owns it:
    leaving its ``with`` block closes *and* unlinks; other handles only
    close.  See docs/semantics.md for the guarantees.
    """

    __slots__ = ()

    def __reduce__(self):
        if self.closed:
            raise ValueError(f"cannot pickle closed segment {self.name!r}")
        return (_reattach, (type(self), self.name, self.read_only))

    def __repr__(self):
        if self.closed:
            return f"<SharedMemory {self.name!r} closed>"
        mode = "read-only" if self.read_only else "read-write"
        return (
            f"<SharedMemory {self.name!r} size={self.size} "
            f"format={self.format!r} items={len(self)} {mode}>"
        )
