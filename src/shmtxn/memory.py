"""shmtxn.SharedMemory: named shared memory with transactions.

The hot paths (indexing, ``txn()``) live in the C base class
``shmtxn._core.Memory``; this subclass adds what is Python's business:
numpy dtype names as formats, ``from_array``, pickling (re-attach by name)
and a readable repr.
"""

from __future__ import annotations

import sys

from . import _core

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Sequence
    from typing import Any, TypeVar

    from typing_extensions import Buffer, Self

    from ._core import _ArrayLike, _DType
    from ._wait import _Waitable

    _H = TypeVar("_H", bound="SharedMemory")
    #: What format= takes: a struct code or numpy dtype name ("d",
    #: "float64", "<f8"), a numpy dtype, or a numpy scalar type.
    _Format = str | _DType | type

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


def format_code(fmt: _Format | None) -> str | None:
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


def _check_mode(mode: object) -> int:
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


class _Octal(int):
    """An int shown in octal: the default mode reads 0o600, not 384, in
    help() and inspect.signature()."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"0o{int(self):o}"


_MODE = _Octal(0o600)


def _reattach(cls: type[_H], name: str, read_only: bool) -> _H:
    """Unpickle a handle: attach to the segment by name."""
    return cls(name, read_only=read_only)


class SharedMemory(_core.Memory):
    """A named shared-memory segment of typed slots with transactions.

    ``SharedMemory(name=None, create=False, size=0, *, track=True,
    read_only=False, format=None, shape=None, data=None, undo_size=0,
    max_processes=0, populate=False, timeout=None, mode=0o600)``

    The stdlib's first four parameters mean what they mean there:
    ``create=True`` makes a new segment (``name=None``: a fresh random
    name), ``create=False`` attaches to an existing one.  ``create=None``
    does either: it attaches if the name exists, else creates, and of
    processes racing on one name exactly one creates and the others
    attach (``created`` says which this handle did); the segment found
    must be the one this call would have created (format, size, shape,
    and ``max_processes``/``undo_size`` if given), else
    ``IncompatibleSegmentError`` names what differs.  ``create=True`` and
    ``create=None`` reclaim a leftover nobody can be using (its creator
    died and no process has it open, or its creator died mid-creation);
    anything else under the name is ``SegmentExistsError`` saying what
    keeps it.

    ``size`` is in bytes.  ``format`` (a struct code or numpy dtype;
    default ``"q"``, an 8-byte signed integer) is the item type: ``len()``
    counts whole items and ``buf`` covers every byte, so the stdlib's
    ``SharedMemory(create=True, size=10)`` holds one item in 10 bytes.
    With ``format=`` or ``shape=`` given, the size must be whole items.
    ``shape`` gives the dimensions instead (``shape=(1000, 3),
    format="d"``); ``data`` is the initial contents; ``populate``
    prefaults the pages so the first write runs at memory speed.
    Attaching reads format, size and shape from the segment.  ``mode`` is
    the new segment's permission bits, exactly (the umask does not narrow
    it; an attaching call ignores it); attaching, even read-only, needs
    read and write permission.  ``timeout`` bounds the wait for a creator
    still building the segment (default 5 s).  ``track`` is accepted as in
    Python 3.13 and changes nothing: shmtxn never registers segments with
    the stdlib's ``resource_tracker`` and never unlinks behind the owner's
    back.  The handle that created a segment owns it: leaving its
    ``with`` block closes *and* unlinks; other handles only close.  See
    docs/semantics.md for the guarantees.
    """

    __slots__ = ()

    def __init__(self, name: str | None = None, create: bool | None = False,
                 size: int = 0, *, track: bool = True,
                 read_only: bool = False, format: _Format | None = None,
                 shape: int | Sequence[int] | None = None,
                 data: Buffer | _ArrayLike | None = None, undo_size: int = 0,
                 max_processes: int = 0, populate: bool = False,
                 timeout: float | None = None, mode: int = _MODE) -> None:
        super().__init__(name, create, size, read_only=read_only,
                         format=format_code(format), shape=shape, data=data,
                         undo_size=undo_size, max_processes=max_processes,
                         populate=populate, timeout=timeout,
                         mode=_check_mode(mode), track=track)

    @classmethod
    def from_array(cls, array: object, name: str | None = None,
                   **kwargs: Any) -> Self:
        """A new segment holding a copy of `array` (any numpy array or
        array-like; stored in C order), with its shape and dtype.  With
        ``create=None``: the segment under `name` if it exists (then of
        that shape and dtype), else a new one holding `array`."""
        import numpy

        array = numpy.ascontiguousarray(array)
        if array.ndim == 0:
            array = array.reshape(1)
        kwargs.setdefault("create", True)
        return cls(name, format=array.dtype, shape=array.shape, data=array,
                   **kwargs)

    def wait_async(self: _Waitable, since: int | None = None,
                   timeout: float | None = None,
                   ) -> Coroutine[Any, Any, int]:
        """``await shr.wait_async(since=None, timeout=None)``: ``wait()``
        for coroutines -- it sleeps on a worker thread, so the event loop
        runs on (docs/coordination.md).  The new version, or ``since`` if
        ``timeout`` seconds passed first; ``since=None`` is the version at
        the call."""
        from . import _wait  # threading and asyncio: only when used

        return _wait.wait_async(self, since, timeout)

    def __reduce__(self) -> tuple[Callable[[type[Self], str, bool], Self],
                                  tuple[type[Self], str, bool]]:
        if self.closed:
            raise ValueError(f"cannot pickle closed segment {self.name!r}")
        return (_reattach, (type(self), self.name, self.read_only))

    def __repr__(self) -> str:
        if self.closed:
            return f"<SharedMemory {self.name!r} closed>"
        mode = "read-only" if self.read_only else "read-write"
        shape = "" if len(self.shape) == 1 else f" shape={self.shape}"
        return (f"<SharedMemory {self.name!r} size={self.size} "
                f"format={self.format!r}{shape} items={len(self)} {mode}>")
