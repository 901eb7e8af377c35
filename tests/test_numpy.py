"""NumPy and bulk data: shaped segments, zero-copy views inside txns,
rollback of writes through views, and view lifetimes."""

import multiprocessing
import os
import random
import struct
import subprocess
import sys
import time
import warnings

import pytest

np = pytest.importorskip("numpy")

import helpers  # noqa: E402
import shmtxn  # noqa: E402
from shmtxn import SharedMemory  # noqa: E402
from test_crash import start_child  # noqa: E402

FORMATS = ["b", "B", "h", "H", "i", "I", "q", "Q", "e", "f", "d", "?"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_dtype_and_shape_round_trip(name, fmt):
    values = (np.arange(12) % 7).astype(np.dtype(fmt)).reshape(3, 4)
    with SharedMemory(name, create=True, shape=(3, 4), format=fmt) as shr:
        with shr.txn() as t:
            t.ndarray()[:] = values
        with SharedMemory(name) as other:
            assert other.shape == (3, 4) and other.format == fmt
            with other.txn(write=False) as t:
                seen = t.ndarray()
                assert seen.dtype == np.dtype(fmt) and seen.shape == (3, 4)
                assert np.array_equal(seen, values)
                del seen


@pytest.mark.parametrize("dtype", ["float64", "<f4", np.int32, np.uint8])
def test_numpy_dtypes_are_accepted_as_formats(name, dtype):
    with SharedMemory(name, create=True, shape=5, format=dtype) as shr:
        assert shr.ndarray().dtype == np.dtype(dtype)


def test_from_array_copies_shape_dtype_and_values_c_or_fortran(name):
    source = np.asfortranarray(np.arange(24, dtype=np.float32).reshape(4, 6))
    with SharedMemory.from_array(source, name=name) as shr:
        assert shr.shape == (4, 6) and shr.format == "f"
        with shr.txn(write=False) as t:
            stored = np.asarray(t)
            assert stored.flags.c_contiguous  # stored in C order
            assert np.array_equal(stored, source)
            del stored


def test_multi_dimensional_indexing_through_the_view(name):
    with SharedMemory(name, create=True, shape=(3, 4), format="q") as shr:
        with shr.txn() as t:
            a = t.ndarray()
            a[1, 2] = 5
            a[2] = [1, 2, 3, 4]
            rows = t.ndarray(1, 3)
            assert rows.shape == (2, 4) and rows[0, 2] == 5
            rows[1, 0] = 9
            del a, rows
        assert shr[1 * 4 + 2] == 5
        assert shr[8:12] == [9, 2, 3, 4]
        assert len(shr) == 12  # indexing stays flat


def test_rollback_restores_the_array_after_an_exception(name):
    with SharedMemory.from_array(np.arange(1000.0), name=name) as shr:
        with pytest.raises(RuntimeError):
            with shr.txn() as t:
                a = t.ndarray()
                np.copyto(a, -1.0)
                del a
                raise RuntimeError
        assert np.array_equal(shr.ndarray(), np.arange(1000.0))


def test_sigkill_mid_copyto_rolls_the_array_back(name):
    rng = random.Random(5)
    n = 4 * 1024 * 1024  # 32 MiB of float64
    with SharedMemory(name, create=True, shape=n, format="d",
                      undo_size=8 * n + 4096) as shr:
        for _ in range(3):
            p, _ = start_child(helpers.copyto_forever, name, expect="in txn")
            time.sleep(rng.uniform(0.005, 0.05))  # random kill point
            helpers.kill(p)
            with shr.txn(timeout=10, write=False) as t:
                a = t.ndarray()
                assert not a.any(), "writes of a killed txn survived"
                del a
        assert shr.info()["recoveries"] == 3


def test_read_txn_views_are_read_only(name):
    with SharedMemory(name, create=True, shape=4, format="d") as shr:
        with shr.txn(write=False) as t:
            a = t.ndarray()
            assert not a.flags.writeable
            with pytest.raises(ValueError):
                a[0] = 1.0
            assert not np.asarray(t).flags.writeable
            del a
        assert not shr.ndarray().flags.writeable


def test_views_that_outlive_their_txn_warn_and_new_exports_fail(name):
    with SharedMemory(name, create=True, shape=4, format="d") as shr:
        with pytest.warns(ResourceWarning, match="not transactional"):
            with shr.txn() as t:
                leaked = t.ndarray()
        del leaked
        with shr.txn() as t:
            view = t.ndarray().base.obj  # the exporter behind the array
        with pytest.raises(shmtxn.TransactionClosedError):
            memoryview(view)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # released in time: no warning
            with shr.txn() as t:
                a = t.ndarray()
                a[0] = 1.0
                del a


def test_close_with_a_live_array_is_a_named_error(name):
    shr = SharedMemory(name, create=True, shape=4, format="d")
    array = shr.ndarray()
    with pytest.raises(shmtxn.BufferExportsError, match="numpy"):
        shr.close()
    del array
    shr.close()
    shr.unlink()


def test_a_row_view_logs_only_its_rows(name):
    with SharedMemory(name, create=True, shape=(1000, 1000), format="d",
                      undo_size=1 << 20) as shr:  # 8 MB data, 1 MiB undo
        with shr.txn() as t:
            t.ndarray(5, 6)[:] = 1.0
        assert shr[5000:5003] == [1.0, 1.0, 1.0]
        with pytest.raises(shmtxn.TransactionTooLarge):
            with shr.txn() as t:
                t.ndarray()  # the whole array does not fit the undo log
        assert shr.ndarray().sum() == 1000.0


def test_bulk_slice_assignment_from_arrays(name):
    with SharedMemory(name, create=True, size=80) as shr:
        shr[0:10] = np.arange(10)
        with shr.txn() as t:
            t[2:4] = np.array([20, 30], dtype=np.int64)
            assert t[0:5] == [0, 1, 20, 30, 4]  # slices stay lists
        with pytest.raises(TypeError):
            shr[0:2] = np.array([1.5, 2.5])
        assert shr[0:2] == [0, 1]


def test_snapshot_copy_is_private(name):
    with SharedMemory.from_array(np.ones(8), name=name) as shr:
        snap = shr.ndarray(copy=True)
        shr[0] = 5.0
        assert snap[0] == 1.0 and snap.flags.writeable
        assert shr.ndarray()[0] == 5.0


def test_populate_prefaults_a_fresh_segment(name):
    with SharedMemory(name, create=True, shape=1 << 20, format="d",
                      populate=True) as shr:
        with SharedMemory(name, populate=True) as other:
            assert not other.ndarray().any()
        assert shr.shape == (1 << 20,)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_fills_rows_of_one_shared_array(name, method):
    ctx = multiprocessing.get_context(method)
    with SharedMemory(name, create=True, shape=(16, 8), format="d") as shr:
        with ctx.Pool(2) as pool:
            done = pool.map(helpers.fill_row, [(shr, i) for i in range(16)])
        assert sorted(done) == list(range(16))
        expected = np.repeat(np.arange(16) * 10.0 + 0.5, 8).reshape(16, 8)
        assert np.array_equal(shr.ndarray(), expected)


def test_shape_that_does_not_match_the_size_is_corrupt(name):
    SharedMemory(name, create=True, shape=(2, 5), format="q").close()
    helpers.patch_header(name, 104, struct.pack("Q", 3))
    with pytest.raises(shmtxn.CorruptSegmentError, match="shape"):
        SharedMemory(name)
    os.unlink(f"/dev/shm/{name}")


def test_bad_shapes_and_data(name):
    for bad in [dict(shape=()), dict(shape=(0, 3)), dict(shape=(-1,)),
                dict(shape=(2, 2), size=8), dict(size=16, data=b"x" * 8),
                dict(shape=(1,) * 9), dict(shape=4, format=">f8")]:
        with pytest.raises(ValueError):
            SharedMemory(name, create=True, **bad)
        assert not os.path.exists(f"/dev/shm/{name}")
    with SharedMemory(name, create=True, shape=(2, 2)):
        with pytest.raises(shmtxn.IncompatibleSegmentError):
            SharedMemory(name, shape=(4,))


def test_without_numpy_ndarray_says_what_to_use(name):
    code = ("import sys; sys.modules['numpy'] = None\n"
            "from shmtxn import SharedMemory\n"
            f"with SharedMemory({name!r}, create=True, size=8) as s:\n"
            "    with s.txn() as t:\n"
            "        try:\n"
            "            t.ndarray()\n"
            "        except ImportError as e:\n"
            "            print(e)\n"
            "        print(bytes(t.buf))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=60)
    assert "needs numpy" in out.stdout and ".buf" in out.stdout
    assert "b'\\x00" in out.stdout


