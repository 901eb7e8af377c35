"""shmtxn.SharedDict: a crash-safe dictionary shared between processes.

The per-key paths (``d[k]``, ``d[k] = v``, ``del d[k]``, ``in``, ``len``,
``get``, ``txn()``) are the C base class ``shmtxn._core.Dict``; this module
adds the rest of ``MutableMapping`` -- each compound operation in one
transaction, so ``pop`` or ``setdefault`` is atomic -- plus ``reversed``,
``|`` and ``|=`` as dicts have them, pickling, ``copy()`` and repr.  See
docs/dict.md.
"""

from __future__ import annotations

from collections.abc import (ItemsView, KeysView, Mapping, MutableMapping,
                             ValuesView)

from . import _core
from .memory import _MODE, SharedMemory, _check_mode

__all__ = ["SharedDict"]

_KEYS, _VALUES, _ITEMS = 0, 1, 2
_MISSING = object()


class _SnapshotKeys(KeysView):
    """d.keys(): iterating reads every key in one read txn."""

    __slots__ = ()

    def __reversed__(self):
        return reversed(self._mapping._snapshot(_KEYS))


class _SnapshotValues(ValuesView):
    """d.values(): iterating reads every value in one read txn."""

    __slots__ = ()

    def __iter__(self):
        return iter(self._mapping._snapshot(_VALUES))

    def __reversed__(self):
        return reversed(self._mapping._snapshot(_VALUES))


class _SnapshotItems(ItemsView):
    """d.items(): iterating reads every pair in one read txn."""

    __slots__ = ()

    def __iter__(self):
        return iter(self._mapping._snapshot(_ITEMS))

    def __reversed__(self):
        return reversed(self._mapping._snapshot(_ITEMS))


class _MappingMethods:
    """What SharedDict and its txns share beyond the C per-key methods."""

    __slots__ = ()

    def keys(self):
        return _SnapshotKeys(self)

    def values(self):
        return _SnapshotValues(self)

    def items(self):
        return _SnapshotItems(self)

    def copy(self) -> dict:
        """A plain dict with the current contents (one consistent read)."""
        return dict(self._snapshot(_ITEMS))

    def __reversed__(self):
        """The keys of one snapshot, last inserted first."""
        return reversed(self._snapshot(_KEYS))

    def __or__(self, other):
        """``d | other``: a plain dict, the contents of ``d`` updated with
        ``other``, as for dicts (``d`` itself does not change)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other):
        """``other | d``: a plain dict, ``other`` updated with ``d``."""
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = dict(other)
        merged.update(self.copy())
        return merged

    def __ior__(self, other):
        """``d |= other``: ``d.update(other)``, in one transaction."""
        self.update(other)
        return self


class _TxnMethods(_MappingMethods):
    """What the txns of every backend share (shmtxn.remote's too)."""

    __slots__ = ()

    def popitem(self):
        """Remove and return the last inserted (key, value), as dict does."""
        keys = self._snapshot(_KEYS)
        if not keys:
            raise KeyError("popitem(): dictionary is empty")  # as dict
        key = keys[-1]
        value = self[key]
        del self[key]
        return key, value


class DictTxn(_TxnMethods, _core.DictTxn, MutableMapping):
    """The mapping ``with d.txn() as t`` binds: every method of a dict,
    all inside one transaction."""

    __slots__ = ()


_core.set_dict_txn_class(DictTxn)


class _HandleMethods(_MappingMethods):
    """The compound operations of a dict handle (of every backend), each
    one transaction."""

    __slots__ = ()

    def pop(self, key, default=_MISSING):
        with self.txn() as t:
            if default is _MISSING:
                return t.pop(key)
            return t.pop(key, default)

    def popitem(self):
        with self.txn() as t:
            return t.popitem()

    def setdefault(self, key, default=None):
        with self.txn() as t:
            return t.setdefault(key, default)

    def update(self, other=(), /, **kwds):
        with self.txn() as t:
            t.update(other, **kwds)


def _reattach(cls, name, read_only):
    """Unpickle a handle: attach to the segment by name."""
    return cls(name, read_only=read_only)


class SharedDict(_HandleMethods, _core.Dict, MutableMapping):
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
    a dict only with processes you trust (docs/dict.md).
    """

    __slots__ = ()

    def __init__(self, name=None, create=False, size=0, *, read_only=False,
                 undo_size=0, max_processes=0, timeout=None, mode=_MODE):
        super().__init__(name, create, size, read_only=read_only,
                         undo_size=undo_size, max_processes=max_processes,
                         timeout=timeout, mode=_check_mode(mode))

    @classmethod
    def connect(cls, url, name, create=False, *, read_only=False,
                timeout=None, lease=10.0):
        """The same dict kept in Redis instead of shared memory:
        ``SharedDict.connect("redis://host:6379/0", "jobs")`` returns a
        ``shmtxn.remote.RedisDict`` (docs/remote.md).  ``create`` is as
        here; ``timeout`` bounds connecting; ``lease`` is the seconds a
        txn's claim outlives a silent client."""
        from .remote import RedisDict
        return RedisDict(url, name, create, read_only=read_only,
                         timeout=timeout, lease=lease)

    # the same for both kinds of handle (it only calls wait())
    wait_async = SharedMemory.wait_async

    def __reduce__(self):
        if self.closed:
            raise ValueError(f"cannot pickle closed SharedDict {self.name!r}")
        return (_reattach, (type(self), self.name, self.read_only))

    def __repr__(self):
        if self.closed:
            return f"<SharedDict {self.name!r} closed>"
        mode = "read-only" if self.read_only else "read-write"
        return (f"<SharedDict {self.name!r} keys={len(self)} "
                f"size={self.size} {mode}>")
