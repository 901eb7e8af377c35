"""The binding uses CPython's public C API only (issue #14: private calls
such as _PyErr_FormatFromCause warn on 3.13 and may not link on 3.14),
and what replaced the private calls behaves as they did."""

import shutil
import subprocess

import pytest

import shmtxn
from shmtxn import SharedDict, _core

# Underscored symbols that public macros expand to (Py_None, Py_DECREF,
# PyObject_GC_New, and the *_SizeT names PY_SSIZE_T_CLEAN selects).
FROM_PUBLIC_MACROS = {
    "_Py_Dealloc", "_Py_NoneStruct", "_Py_TrueStruct", "_Py_FalseStruct",
    "_Py_NotImplementedStruct", "_Py_EllipsisObject", "_PyObject_New",
    "_PyObject_GC_New", "_PyObject_NewVar", "_PyObject_GC_NewVar",
    "_PyArg_ParseTupleAndKeywords_SizeT", "_PyArg_ParseTuple_SizeT",
    "_PyObject_CallFunction_SizeT", "_PyObject_CallMethod_SizeT",
    "_Py_BuildValue_SizeT", "_Py_IncRef", "_Py_DecRef",
    # Py_INCREF/Py_DECREF on free-threaded builds (3.13t, 3.14t)
    "_Py_DecRefShared", "_Py_MergeZeroLocalRefcount", "_Py_IncRefShared",
}


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm")
def test_the_extension_calls_no_private_cpython_function():
    out = subprocess.run(["nm", "-u", "-D", _core.__file__],
                         capture_output=True, text=True, check=True).stdout
    used = {line.split()[-1].split("@")[0] for line in out.splitlines()}
    private = sorted(s for s in used if s.startswith("_Py")
                     and s not in FROM_PUBLIC_MACROS)
    assert private == []


def test_get_takes_one_or_two_arguments_as_dict_get_does(name):
    with SharedDict(name, create=True) as d:
        with pytest.raises(TypeError, match="expected at least 1 argument"
                           ", got 0"):
            d.get()
        with pytest.raises(TypeError, match="expected at most 2 arguments"
                           ", got 3"):
            d.get(1, 2, 3)
        with d.txn() as t:
            with pytest.raises(TypeError, match="at most 2 arguments"):
                t.get(1, 2, 3)


class Unpicklable:
    def __reduce__(self):
        raise ValueError("no pickling this")


def test_an_unpicklable_value_raises_from_the_pickling_error(name):
    with SharedDict(name, create=True) as d:
        with pytest.raises(TypeError, match="must be picklable") as info:
            d["k"] = Unpicklable()
        cause = info.value.__cause__
        assert isinstance(cause, ValueError)
        assert str(cause) == "no pickling this"
        assert info.value.__context__ is cause
        assert cause.__traceback__ is not None


def test_a_big_int_key_round_trips(name):
    with SharedDict(name, create=True) as d:
        for key in (2 ** 63, -2 ** 63 - 1, 2 ** 200, -(2 ** 200) + 7):
            d[key] = key
        assert {k: d[k] for k in d} == {k: k for k in d}
        assert d[2 ** 200] == 2 ** 200 and 2 ** 64 not in d


def test_a_closed_handle_names_its_class(name):
    d = SharedDict(name, create=True)
    d.close()
    with pytest.raises(shmtxn.SegmentClosedError, match=r"SharedDict\(name\)"):
        d["k"]
    d.unlink()
