"""shmtxn.SharedDict: a crash-safe dictionary shared between processes.

The per-key paths (``d[k]``, ``d[k] = v``, ``del d[k]``, ``in``, ``len``,
``get``, ``txn()``) are the C base class ``shmtxn._core.Dict``; this module
adds the rest of ``MutableMapping`` -- each compound operation in one
transaction, so ``pop`` or ``setdefault`` is atomic -- plus ``reversed``,
``|`` and ``|=`` as dicts have them, pickling, ``copy()`` and repr.  See
docs/dict.md.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import (ItemsView, KeysView, Mapping, MutableMapping,
                             ValuesView)

from . import _core
from .memory import _MODE, SharedMemory, _check_mode

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Hashable, Iterable, Iterator
    from contextlib import AbstractContextManager
    from typing import Any, Final, Literal, TypeVar, overload

    import typing_extensions
    from _typeshed import SupportsKeysAndGetItem
    from typing_extensions import Self

    from .remote import RedisDict

    # a bare SharedDict(...) is SharedDict[Any, Any] (PEP 696 defaults);
    # the classes name them in quotes: they exist for type checkers only
    _KT = typing_extensions.TypeVar("_KT", bound=Hashable, default=Any)
    _VT = typing_extensions.TypeVar("_VT", default=Any)
    _T = TypeVar("_T")
    _T2 = TypeVar("_T2")
    _D = TypeVar("_D", bound=_core.Dict[Any, Any])
else:
    def overload(func):
        """typing.overload without importing typing (which would double
        the time `import shmtxn` takes): the last definition wins."""
        return func

__all__ = ["SharedDict"]

# what _snapshot() reads
_KEYS: Final = 0
_VALUES: Final = 1
_ITEMS: Final = 2
_MISSING: Any = object()

# mypy 2.4 makes reversed() of a list[_KT] Any (_KT has a default): the
# __reversed__ methods below name their result to keep its type.


class _SnapshotKeys(KeysView["_KT"]):
    """d.keys(): iterating reads every key in one read txn."""

    __slots__ = ()
    _mapping: _MappingMethods[_KT, Any]

    def __reversed__(self) -> Iterator[_KT]:
        keys: Iterator[_KT] = reversed(self._mapping._snapshot(_KEYS))
        return keys


class _SnapshotValues(ValuesView["_VT"]):
    """d.values(): iterating reads every value in one read txn."""

    __slots__ = ()
    _mapping: _MappingMethods[Any, _VT]

    def __iter__(self) -> Iterator[_VT]:
        return iter(self._mapping._snapshot(_VALUES))

    def __reversed__(self) -> Iterator[_VT]:
        values: Iterator[_VT] = reversed(self._mapping._snapshot(_VALUES))
        return values


class _SnapshotItems(ItemsView["_KT", "_VT"]):
    """d.items(): iterating reads every pair in one read txn."""

    __slots__ = ()
    _mapping: _MappingMethods[_KT, _VT]

    def __iter__(self) -> Iterator[tuple[_KT, _VT]]:
        return iter(self._mapping._snapshot(_ITEMS))

    def __reversed__(self) -> Iterator[tuple[_KT, _VT]]:
        items: Iterator[tuple[_KT, _VT]] = reversed(
            self._mapping._snapshot(_ITEMS))
        return items


class _MappingMethods(MutableMapping["_KT", "_VT"]):
    """What SharedDict and its txns add to their C base: the rest of a
    dict.  Each lists its C base first, so the C per-key methods (get,
    __contains__, clear, ...) come before MutableMapping's generic ones."""

    __slots__ = ()

    @overload
    @abstractmethod
    def _snapshot(self, what: Literal[0], /) -> list[_KT]: ...
    @overload
    @abstractmethod
    def _snapshot(self, what: Literal[1], /) -> list[_VT]: ...
    @overload
    @abstractmethod
    def _snapshot(self, what: Literal[2], /) -> list[tuple[_KT, _VT]]: ...

    @abstractmethod
    def _snapshot(self, what: int, /) -> list[Any]:
        """Every key (0), value (1) or item (2) in one read: the C base's."""

    def keys(self) -> _SnapshotKeys[_KT]:
        return _SnapshotKeys(self)

    def values(self) -> _SnapshotValues[_VT]:
        return _SnapshotValues(self)

    def items(self) -> _SnapshotItems[_KT, _VT]:
        return _SnapshotItems(self)

    def copy(self) -> dict[_KT, _VT]:
        """A plain dict with the current contents (one consistent read)."""
        return dict(self._snapshot(_ITEMS))

    def __reversed__(self) -> Iterator[_KT]:
        """The keys of one snapshot, last inserted first."""
        keys: Iterator[_KT] = reversed(self._snapshot(_KEYS))
        return keys

    def __or__(self, other: Mapping[_T, _T2]) -> dict[_KT | _T, _VT | _T2]:
        """``d | other``: a plain dict, the contents of ``d`` updated with
        ``other``, as for dicts (``d`` itself does not change)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        merged: dict[Any, Any] = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other: Mapping[_T, _T2]) -> dict[_KT | _T, _VT | _T2]:
        """``other | d``: a plain dict, ``other`` updated with ``d``."""
        if not isinstance(other, Mapping):
            return NotImplemented
        merged: dict[Any, Any] = dict(other)
        merged.update(self.copy())
        return merged

    # `d |= x` keeps d (a SharedDict, not the dict `d | x` makes), which
    # mypy calls incompatible with __or__
    def __ior__(  # type: ignore[misc]
            self, other: (SupportsKeysAndGetItem[_KT, _VT]
                          | Iterable[tuple[_KT, _VT]])) -> Self:
        """``d |= other``: ``d.update(other)``, in one transaction."""
        self.update(other)
        return self


class _TxnMethods(_MappingMethods["_KT", "_VT"]):
    """What the txns of every backend share (shmtxn.remote's too)."""

    __slots__ = ()

    def popitem(self) -> tuple[_KT, _VT]:
        """Remove and return the last inserted (key, value), as dict does."""
        keys = self._snapshot(_KEYS)
        if not keys:
            raise KeyError("popitem(): dictionary is empty")  # as dict
        key = keys[-1]
        value = self[key]
        del self[key]
        return key, value


class DictTxn(_core.DictTxn["_KT", "_VT"], _TxnMethods["_KT", "_VT"]):
    """The mapping ``with d.txn() as t`` binds: every method of a dict,
    all inside one transaction."""

    __slots__ = ()


_core.set_dict_txn_class(DictTxn)


class _HandleMethods(_MappingMethods["_KT", "_VT"]):
    """The compound operations of a dict handle (of every backend), each
    one transaction."""

    __slots__ = ()

    @abstractmethod
    def txn(self, write: bool | None = None, timeout: float | None = None,
            ) -> AbstractContextManager[_TxnMethods[_KT, _VT], None]:
        """The backend's transaction: a context manager giving a txn
        mapping."""

    @overload
    def pop(self, key: _KT) -> _VT: ...
    @overload
    def pop(self, key: _KT, default: _VT) -> _VT: ...
    @overload
    def pop(self, key: _KT, default: _T) -> _VT | _T: ...

    def pop(self, key: _KT, default: object = _MISSING) -> object:
        with self.txn() as t:
            if default is _MISSING:
                return t.pop(key)
            return t.pop(key, default)

    def popitem(self) -> tuple[_KT, _VT]:
        with self.txn() as t:
            return t.popitem()

    @overload
    def setdefault(self: _HandleMethods[_KT, _T | None], key: _KT,
                   default: None = None) -> _T | None: ...
    @overload
    def setdefault(self, key: _KT, default: _VT) -> _VT: ...

    def setdefault(self, key: _KT, default: Any = None) -> object:
        with self.txn() as t:
            return t.setdefault(key, default)

    @overload
    def update(self, other: SupportsKeysAndGetItem[_KT, _VT], /,
               **kwds: _VT) -> None: ...
    @overload
    def update(self, other: Iterable[tuple[_KT, _VT]], /,
               **kwds: _VT) -> None: ...
    @overload
    def update(self: _HandleMethods[str, _VT], /, **kwds: _VT) -> None: ...

    def update(self, other: Any = (), /, **kwds: _VT) -> None:
        with self.txn() as t:
            t.update(other, **kwds)


def _reattach(cls: type[_D], name: str, read_only: bool) -> _D:
    """Unpickle a handle: attach to the segment by name."""
    return cls(name, read_only=read_only)


class SharedDict(_core.Dict["_KT", "_VT"], _HandleMethods["_KT", "_VT"]):
    """A dict in named shared memory, with transactions.

    ``SharedDict(name=None, create=False, size=0, *, read_only=False,
    undo_size=0, max_processes=0, timeout=None, mode=0o600)``

    Keys are ``str``, ``bytes``, ``int``, ``float``, ``bool``, ``None`` and
    tuples of them (``1``, ``1.0`` and ``True`` are one key, as in a dict);
    values are anything picklable.  Each operation outside a txn is atomic
    on its own; ``with d.txn() as t:`` makes several atomic together.
    ``size`` is an optional cap on what the dict may hold (keys, values and
    table); 0, the default, lets it grow until /dev/shm is full.  Pages
    are only used as it fills.  ``create=None`` attaches if the name
    exists, else creates (exactly one of racing processes creates;
    ``created`` says which); the segment found must be a dict, and a
    ``size`` (cap), ``max_processes`` or ``undo_size`` given must be its
    own -- 0 accepts whatever it has.  Lifetimes, reclaiming a crashed
    run's leftover, pickling, ``mode`` and errors are those of
    ``SharedMemory``.  Values are pickles, and unpickling runs code: share
    a dict only with processes you trust (docs/dict.md).  For a type
    checker it is generic: ``SharedDict[str, int]``.
    """

    __slots__ = ()

    def __init__(self, name: str | None = None, create: bool | None = False,
                 size: int = 0, *, read_only: bool = False,
                 undo_size: int = 0, max_processes: int = 0,
                 timeout: float | None = None, mode: int = _MODE) -> None:
        super().__init__(name, create, size, read_only=read_only,
                         undo_size=undo_size, max_processes=max_processes,
                         timeout=timeout, mode=_check_mode(mode))

    if TYPE_CHECKING:
        @overload
        def txn(self, write: bool | None = None,
                timeout: float | None = None, *,
                until: None = None) -> DictTxn[_KT, _VT]: ...
        @overload
        def txn(self, write: bool | None = None,
                timeout: float | None = None, *,
                until: Callable[[DictTxn[_KT, _VT]], object],
                ) -> AbstractContextManager[DictTxn[_KT, _VT], None]: ...
        def txn(self, write: bool | None = None,
                timeout: float | None = None, *,
                until: Callable[[DictTxn[_KT, _VT]], object] | None = None,
                ) -> object: ...

    @classmethod
    def connect(cls, url: str, name: str, create: bool | None = False, *,
                read_only: bool = False, timeout: float | None = None,
                lease: float = 10.0) -> RedisDict:
        """The same dict kept in Redis instead of shared memory:
        ``SharedDict.connect("redis://host:6379/0", "jobs")`` returns a
        ``shmtxn.remote.RedisDict`` (docs/remote.md).  ``create`` is as
        here; ``timeout`` bounds connecting and every reply; ``lease`` is
        the seconds a txn's claim outlives a silent client."""
        from .remote import RedisDict
        return RedisDict(url, name, create, read_only=read_only,
                         timeout=timeout, lease=lease)

    # the same for both kinds of handle (it only calls wait())
    wait_async = SharedMemory.wait_async

    def __reduce__(self) -> tuple[Callable[[type[Self], str, bool], Self],
                                  tuple[type[Self], str, bool]]:
        if self.closed:
            raise ValueError(f"cannot pickle closed SharedDict {self.name!r}")
        return (_reattach, (type(self), self.name, self.read_only))

    def __repr__(self) -> str:
        if self.closed:
            return f"<SharedDict {self.name!r} closed>"
        mode = "read-only" if self.read_only else "read-write"
        return (f"<SharedDict {self.name!r} keys={len(self)} "
                f"size={self.size} {mode}>")
