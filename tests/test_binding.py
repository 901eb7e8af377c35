"""The CPython binding as such: the one txn() argument parser of
SharedMemory and SharedDict, the exception table resolved at import, the
module's multi-phase init and heap types, and binding.h's list of files
(and, on a built tree, its floors) against what is on disk."""

import fractions
import glob
import math
import os
import re
import shutil
import subprocess

import pytest

import shmtxn
from shmtxn import SharedDict, SharedMemory, _core

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINDING = os.path.join(ROOT, "src", "shmtxn", "_core", "binding")


@pytest.fixture(params=["memory", "dict"])
def handle(request, name):
    """A SharedMemory or a SharedDict created under `name`."""
    cls = SharedMemory if request.param == "memory" else SharedDict
    h = cls(name, create=True, size=80 if cls is SharedMemory else 0)
    yield h
    h.close()
    h.unlink()


def read_only_twin(h):
    return type(h)(h.name, read_only=True)


# --------------------------------------------------------------------------
# txn(write=None, timeout=None)


def test_txn_rejects_write_given_twice(handle):
    # it used to open a read txn, silently dropping the positional True
    with pytest.raises(TypeError, match="multiple values for argument "
                                        "'write'"):
        handle.txn(True, write=False)


def test_txn_rejects_timeout_given_twice(handle):
    with pytest.raises(TypeError, match="multiple values for argument "
                                        "'timeout'"):
        handle.txn(True, 1.0, timeout=2.0)


@pytest.mark.parametrize("args, kwargs, message", [
    ((True, 1.0, 2.0), {}, "at most 2 arguments"),
    ((), {"wait": True}, "unexpected keyword argument 'wait'"),
    ((), {"write": 1}, "write must be True, False or None.*int"),
    (("yes",), {}, "write must be True, False or None.*str"),
    ((), {"timeout": "1"}, "timeout must be None or a number of seconds, "
                           "not str"),
    ((), {"timeout": True}, "not bool"),
    ((), {"timeout": [1]}, "not list"),
])
def test_txn_type_errors(handle, args, kwargs, message):
    with pytest.raises(TypeError, match=message):
        handle.txn(*args, **kwargs)


@pytest.mark.parametrize("timeout", [-1, -0.5, math.nan, math.inf,
                                     -math.inf, 1e10])
def test_txn_rejects_timeouts_that_are_not_seconds(handle, timeout):
    with pytest.raises(ValueError, match="timeout must be None"):
        handle.txn(timeout=timeout)


@pytest.mark.parametrize("timeout", [None, 0, 2, 0.5, 1e9,
                                     fractions.Fraction(1, 3)])
def test_txn_accepts_real_timeouts(handle, timeout):
    with handle.txn(timeout=timeout) as t:
        assert t.write is True


@pytest.mark.parametrize("args, kwargs, write", [
    ((), {}, True), ((None,), {}, True), ((False,), {}, False),
    ((), {"write": False}, False), ((True, 3), {}, True),
    ((False,), {"timeout": 3}, False),
])
def test_txn_valid_arguments(handle, args, kwargs, write):
    with handle.txn(*args, **kwargs) as t:
        assert t.write is write
        assert t.active


def test_read_only_handle_refuses_write_txn(handle):
    ro = read_only_twin(handle)
    try:
        with pytest.raises(shmtxn.ReadOnlyError, match="read_only"):
            ro.txn(write=True)
        with pytest.raises(shmtxn.ReadOnlyError):
            ro.txn(True, 1.0)
        with ro.txn() as t:  # a read txn by default
            assert t.write is False
        with ro.txn(write=False) as t:
            assert t.write is False
    finally:
        ro.close()


def test_read_only_handle_checks_types_before_read_only(handle):
    ro = read_only_twin(handle)
    try:
        with pytest.raises(TypeError):
            ro.txn(write="no")
    finally:
        ro.close()


def test_txn_on_closed_handle(handle):
    other = type(handle)(handle.name)
    other.close()
    with pytest.raises(shmtxn.SegmentClosedError):
        other.txn()
    with pytest.raises(shmtxn.SegmentClosedError):
        other.txn(write=False, timeout=1)


def test_write_in_read_txn_is_read_only_error(handle):
    key = 0 if isinstance(handle, SharedMemory) else "k"
    with handle.txn(write=False) as t:
        with pytest.raises(shmtxn.ReadOnlyError, match="read transaction"):
            t[key] = 1


@pytest.mark.parametrize("timeout", [-1, math.nan, math.inf, "5", True])
def test_attach_timeout_is_checked_the_same_way(name, timeout):
    with SharedMemory(name, create=True, size=8):
        with pytest.raises((TypeError, ValueError), match="timeout"):
            SharedMemory(name, timeout=timeout)


def test_repair_timeout_is_checked(name):
    with SharedMemory(name, create=True, size=8):
        with pytest.raises(ValueError, match="timeout"):
            _core.repair(name, -1)
        assert _core.repair(name, 1)["recovered_writers"] == 0


# --------------------------------------------------------------------------
# exceptions


def test_close_with_open_txn_is_transactions_open_error(handle):
    with handle.txn():
        with pytest.raises(shmtxn.TransactionsOpenError,
                           match="1 transaction"):
            handle.close()
    assert issubclass(shmtxn.TransactionsOpenError, shmtxn.Error)
    assert not handle.closed


def test_segment_in_use_error_lives_in_errors():
    assert shmtxn.SegmentInUseError is shmtxn.errors.SegmentInUseError
    assert shmtxn.admin.SegmentInUseError is shmtxn.errors.SegmentInUseError
    assert issubclass(shmtxn.SegmentInUseError, (shmtxn.Error, OSError))
    for cls in ("SegmentInUseError", "TransactionsOpenError"):
        assert cls in shmtxn.__all__
        assert cls in shmtxn.errors.__all__


def test_exception_classes_are_resolved_once_at_import(name, monkeypatch):
    original = shmtxn.errors.SegmentNotFoundError

    class Impostor(Exception):
        pass

    monkeypatch.setattr(shmtxn.errors, "SegmentNotFoundError", Impostor)
    with pytest.raises(original):
        SharedMemory(name)


def test_engine_errors_raise_their_table_classes(name):
    with SharedMemory(name, create=True, size=8):
        with pytest.raises(shmtxn.SegmentExistsError, match="create=False"):
            SharedMemory(name, create=True, size=8)
        with pytest.raises(shmtxn.IncompatibleSegmentError,
                           match="SharedMemory"):
            SharedDict(name)


# --------------------------------------------------------------------------
# module state, heap types

HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE


@pytest.mark.parametrize("cls", ["Segment", "Memory", "Dict", "Txn",
                                 "DictTxn", "View"])
def test_types_are_heap_types_of_the_module(cls):
    t = getattr(_core, cls)
    assert t.__flags__ & HEAPTYPE
    assert t.__module__ == "shmtxn._core"


@pytest.mark.parametrize("cls", ["Segment", "Txn", "DictTxn", "View"])
def test_only_handles_are_instantiated_directly(cls):
    with pytest.raises(TypeError):
        getattr(_core, cls)()


@pytest.mark.parametrize("cls", [SharedMemory, SharedDict, _core.Memory])
def test_uninitialised_handle_is_closed_not_a_crash(cls):
    h = cls.__new__(cls)
    assert h.closed
    with pytest.raises(shmtxn.SegmentClosedError):
        h.txn()
    with pytest.raises(shmtxn.SegmentClosedError):
        len(h)
    h.close()  # idempotent on a never-opened handle


def test_txn_types_share_the_base_methods(name):
    with SharedMemory(name, create=True, size=8) as shr, \
            SharedDict(name + "_d", create=True) as d:
        for txn_type in (_core.Txn, _core.DictTxn):
            for attr in ("__enter__", "__exit__", "commit", "abort",
                         "write", "active"):
                assert attr in vars(txn_type), (txn_type, attr)
        t, dt = shr.txn(), d.txn(write=False)
        assert repr(t) == f"<shmtxn write txn on segment {name!r}, " \
                          "not entered>"
        assert repr(dt) == f"<shmtxn read txn on SharedDict " \
                           f"{name + '_d'!r}, not entered>"
        with t:
            assert "open" in repr(t)
        assert "ended" in repr(t)


def test_set_dict_txn_class_checks_its_argument():
    with pytest.raises(TypeError, match="subclass of DictTxn"):
        _core.set_dict_txn_class(int)


# --------------------------------------------------------------------------
# binding.h lists the files and their floors

def header_comment():
    with open(os.path.join(BINDING, "binding.h")) as f:
        text = f.read()
    return text[:text.index("*/")]


def listed_floors():
    """binding.h's floors, top first: [(floor, [file, ...]), ...]."""
    floors = []
    for line in header_comment().splitlines():
        floor = re.match(r"^ \* ([a-z ]+):$", line)
        entry = re.match(r"^ \*   (\w+\.[ch]) +-- ", line)
        if floor:
            floors.append((floor.group(1), []))
        elif entry:
            floors[-1][1].append(entry.group(1))
    return floors


def test_binding_h_lists_exactly_the_binding_files():
    listed = [f for _, files in listed_floors() for f in files]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    on_disk = sorted(f for f in os.listdir(BINDING)
                     if f.endswith((".c", ".h")))
    assert sorted(listed + ["binding.h"]) == on_disk


def built_objects():
    """The newest build's binding objects, {file.c: path.o}, or None."""
    dirs = glob.glob(os.path.join(ROOT, "build", "*", "temp*", "**",
                                  "_core", "binding"), recursive=True)
    if not dirs or shutil.which("nm") is None:
        return None
    newest = max(dirs, key=lambda d: max(
        (os.path.getmtime(p) for p in glob.glob(os.path.join(d, "*.o"))),
        default=0))
    objects = {os.path.basename(p)[:-2] + ".c": p
               for p in glob.glob(os.path.join(newest, "*.o"))}
    sources = {f for f in os.listdir(BINDING) if f.endswith(".c")}
    return objects if set(objects) == sources else None


def test_binding_calls_only_go_down_the_floors():
    objects = built_objects()
    if objects is None:
        pytest.skip("no complete build of the binding with nm to read")
    floor_of = {f: i for i, (_, files) in enumerate(listed_floors())
                for f in files}
    defined, used = {}, {}
    for source, obj in objects.items():
        out = subprocess.run(["nm", obj], capture_output=True, text=True,
                             check=True).stdout
        defined[source] = {line.split()[2] for line in out.splitlines()
                           if len(line.split()) == 3
                           and line.split()[1] in "TDBR"}
        used[source] = {line.split()[1] for line in out.splitlines()
                        if line.split()[:1] == ["U"]}
    upward = [(a, b, sorted(used[a] & defined[b])[:3])
              for a in objects for b in objects
              if a != b and used[a] & defined[b]
              and floor_of[b] <= floor_of[a]]
    assert not upward, f"calls that do not go down binding.h's floors: " \
                       f"{upward}"


def test_the_package_exports_every_error_class():
    """shmtxn.__all__ spells out errors.__all__ (for type checkers): a
    class added to errors.py must be added there too."""
    missing = set(shmtxn.errors.__all__) - set(shmtxn.__all__)
    assert not missing, f"add {sorted(missing)} to shmtxn/__init__.py"
    for name in shmtxn.errors.__all__:
        assert getattr(shmtxn, name) is getattr(shmtxn.errors, name)
