"""shmtxn.SharedMemory: named shared memory with transactions.

The hot paths (indexing, ``txn()``) live in the C base class
``shmtxn._core.Memory``; this subclass adds what is Python's business:
numpy dtype names as formats, ``from_array``, pickling (re-attach by name)
and a readable repr.
"""

from __future__ import annotations

import sys

from . import _core

__all__ = ["SharedMemory", "format_code"]

_FORMATS = "bBhHiIlLqQnNefd?"

# numpy dtype names and codes -> struct codes (native size and order)
_DTYPE_CODES = {
    "f8": "d", "f4": "f", "f2": "e", "i1": "b", "u1": "B", "i2": "h",
    "u2": "H", "i4": "i", "u4": "I", "i8": "q", "u8": "Q", "b1": "?",
    "float64": "d", "float32": "f", "float16": "e", "double": "d",
    "single": "f", "half": "e", "float": "d", "int8": "b", "uint8": "B",
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
    "int64": "q", "uint64": "Q", "int": "q", "bool": "?",
}
_NATIVE = "<" if sys.byteorder == "little" else ">"


def format_code(fmt) -> str | None:
    """The struct code for `fmt`: a struct code ("d"), a numpy dtype name
    or string ("float64", "<f8"), a numpy dtype, or a numpy scalar type."""
    if fmt is None or (isinstance(fmt, str) and len(fmt) == 1):
        return fmt
    if not isinstance(fmt, str):
        fmt = getattr(fmt, "str", None) or getattr(fmt, "__name__", None)
        if not isinstance(fmt, str):
            raise TypeError("format must be a struct code, a numpy dtype or"
                            " a dtype name")
    if not fmt:
        raise ValueError(f"format must not be empty: use a struct code "
                         f"({_FORMATS}, default 'q') or a numpy dtype of "
                         "those")
    order, code = (fmt[0], fmt[1:]) if fmt[0] in "<>=|@" else ("=", fmt)
    if order not in ("=", "|", "@", _NATIVE):
        raise ValueError(f"format {fmt!r} is not in this machine's byte "
                         "order; segments hold native-order items")
    if code in _DTYPE_CODES:
        return _DTYPE_CODES[code]
    if order == "@" and len(code) == 1:
        return code
    raise ValueError(f"unknown item format {fmt!r}: use a struct code "
                     f"({_FORMATS}) or a numpy dtype of those")


def _check_mode(mode) -> int:
    """`mode` if it is permission bits a segment can have (an int within
    0o777 that lets the owner read and write), else ValueError."""
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise ValueError(f"mode must be an int of permission bits such as "
                         f"0o600 or 0o660, not {mode!r}")
    if not 0 <= mode <= 0o777 or mode & 0o600 != 0o600:
        shown = f"-0o{-mode:o}" if mode < 0 else f"0o{mode:o}"
        raise ValueError(f"mode must be permission bits within 0o777 that "
                         f"include 0o600 (got {shown}): every process that "
                         "attaches, even read-only, reads and writes the "
                         "segment")
    return mode


def _reattach(cls, name, read_only):
    """Unpickle a handle: attach to the segment by name."""
    return cls(name, read_only=read_only)


class SharedMemory(_core.Memory):
    """A named shared-memory segment of typed slots with transactions.

    ``SharedMemory(name=None, create=False, size=0, *, read_only=False,
    format="q", shape=None, data=None, undo_size=0, max_processes=0,
    populate=False, timeout=None, mode=0o600)``

    ``size`` is in bytes and must be a multiple of the item size of
    ``format`` (a struct code or numpy dtype; the default ``"q"`` is an
    8-byte signed integer, so ``size=80`` holds ten slots).  ``shape`` gives
    the dimensions instead (``shape=(1000, 3), format="d"``); ``data`` is
    the initial contents; ``populate`` prefaults the pages so the first
    write runs at memory speed.  Attaching reads format, size and shape
    from the segment.  ``mode`` is the new segment's permission bits,
    exactly (the umask does not narrow it); attaching, even read-only,
    needs read and write permission.  The handle that created a segment
    owns it: leaving its ``with`` block closes *and* unlinks; other
    handles only close.  See docs/semantics.md for the guarantees.
    """

    __slots__ = ()

    def __init__(self, name=None, create=False, size=0, *, format=None,
                 mode=0o600, **kwargs):
        super().__init__(name, create, size, format=format_code(format),
                         mode=_check_mode(mode), **kwargs)

    @classmethod
    def from_array(cls, array, name=None, **kwargs):
        """A new segment holding a copy of `array` (any numpy array or
        array-like; stored in C order), with its shape and dtype."""
        import numpy

        array = numpy.ascontiguousarray(array)
        if array.ndim == 0:
            array = array.reshape(1)
        return cls(name, create=True, format=array.dtype,
                   shape=array.shape, data=array, **kwargs)

    def wait_async(self, since=None, timeout=None):
        """``await shr.wait_async(since=None, timeout=None)``: ``wait()``
        for coroutines -- it sleeps on a worker thread, so the event loop
        runs on (docs/coordination.md).  The new version, or ``since`` if
        ``timeout`` seconds passed first; ``since=None`` is the version at
        the call."""
        from . import _wait  # threading and asyncio: only when used

        return _wait.wait_async(self, since, timeout)

    def __reduce__(self):
        if self.closed:
            raise ValueError(f"cannot pickle closed segment {self.name!r}")
        return (_reattach, (type(self), self.name, self.read_only))

    def __repr__(self):
        if self.closed:
            return f"<SharedMemory {self.name!r} closed>"
        mode = "read-only" if self.read_only else "read-write"
        shape = "" if len(self.shape) == 1 else f" shape={self.shape}"
        return (f"<SharedMemory {self.name!r} size={self.size} "
                f"format={self.format!r}{shape} items={len(self)} {mode}>")
