"""SharedMemory's API: attributes, indexing, txn objects, lifetimes,
pickling, and clear errors for bad input."""

import os
import pickle

import pytest

import shmtxn
from shmtxn import SharedMemory


def test_create_attributes_and_defaults(name):
    with SharedMemory(name, create=True, size=80) as shr:
        assert shr.name == name
        assert shr.size == 80
        assert len(shr) == 10
        assert shr.format == "q"
        assert shr.itemsize == 8
        assert shr.read_only is False
        assert shr.owner is True
        assert shr[0:10] == [0] * 10
        assert name in repr(shr)


def test_generated_name_is_short_and_removed_by_owner():
    with SharedMemory(create=True, size=8) as shr:
        generated = shr.name
        assert generated.startswith("stx_") and len(generated) <= 31
        assert os.path.exists(f"/dev/shm/{generated}")
    assert not os.path.exists(f"/dev/shm/{generated}")


def test_txn_reads_and_writes_like_the_article(name):
    with SharedMemory(name, create=True, size=80) as shr:
        with shr.txn() as shm:
            for i in range(10):
                shm[i] = i
        with shr.txn() as shm:
            assert shm[0:10] == list(range(10))
            assert shm[-1] == 9
            assert len(shm) == 10
            assert list(shm) == list(range(10))
            assert list(shm.keys()) == list(range(10))
            assert shm.values() == list(range(10))
            assert shm.items()[3] == (3, 3)
            assert shm.get(4) == 4
            assert shm.get(99, "none") == "none"
            assert shm[::3] == [0, 3, 6, 9]
            shm[2:5] = [20, 30, 40]
            shm[::-5] = [-1, -2]
        assert shr[0:10] == [0, 1, 20, 30, -2, 5, 6, 7, 8, -1]


def test_auto_committed_ops(name):
    with SharedMemory(name, create=True, size=40) as shr:
        shr[1] = 7
        shr[-1] = 9
        shr[2:4] = (5, 6)
        assert shr[1] == 7 and shr[4] == 9
        assert list(shr) == [0, 7, 5, 6, 9]
        with pytest.raises(TypeError):
            del shr[0]


@pytest.mark.parametrize("fmt,value", [
    ("b", -128), ("B", 255), ("h", -32768), ("H", 65535), ("i", -2**31),
    ("I", 2**32 - 1), ("q", -2**63), ("Q", 2**64 - 1), ("n", 2**62),
    ("N", 3), ("l", -5), ("L", 5), ("d", 1.5), ("f", 0.25), ("e", 0.5),
    ("?", True),
])
def test_formats_round_trip_and_attachers_agree(name, fmt, value):
    import struct
    size = struct.calcsize(fmt) * 4
    with SharedMemory(name, create=True, size=size, format=fmt) as shr:
        shr[2] = value
        with SharedMemory(name) as other:
            assert other.format == fmt
            assert other[2] == value
            assert other.size == size


def test_exception_in_body_rolls_back(name):
    with SharedMemory(name, create=True, size=80) as shr:
        shr[0] = 1
        with pytest.raises(KeyError):
            with shr.txn() as shm:
                shm[0] = 2
                shm[1:10] = [5] * 9
                raise KeyError("boom")
        assert shr[0:10] == [1] + [0] * 9


def test_abort_and_commit_end_the_txn(name):
    with SharedMemory(name, create=True, size=16) as shr:
        with shr.txn() as shm:
            shm[0] = 5
            shm.abort()
            with pytest.raises(shmtxn.TransactionClosedError):
                shm[0] = 6
        assert shr[0] == 0
        with shr.txn() as shm:
            shm[1] = 3
            shm.commit()
            assert not shm.active
        assert shr[1] == 3


def test_txn_after_exit_is_closed(name):
    with SharedMemory(name, create=True, size=16) as shr:
        with shr.txn() as shm:
            pass
        for use in (lambda: shm[0], lambda: shm.__setitem__(0, 1),
                    lambda: len(shm), lambda: shm.buf):
            with pytest.raises(shmtxn.TransactionClosedError):
                use()
        t = shr.txn()
        with t:
            pass
        with pytest.raises(shmtxn.TransactionClosedError):
            t.__enter__()


def test_repeated_writes_to_one_slot_fit_the_undo_log(name):
    with SharedMemory(name, create=True, size=8, undo_size=4096) as shr:
        with shr.txn() as shm:
            for _ in range(10000):
                shm[0] += 1
        assert shr[0] == 10000


def test_read_only_handle(name):
    with SharedMemory(name, create=True, size=16) as shr:
        shr[0] = 3
        with SharedMemory(name, read_only=True) as ro:
            assert ro.read_only and ro[0] == 3
            with pytest.raises(shmtxn.ReadOnlyError):
                ro[0] = 1
            with pytest.raises(shmtxn.ReadOnlyError):
                ro.txn(write=True)
            with ro.txn() as shm:
                assert not shm.write and shm[0] == 3
                with pytest.raises(shmtxn.ReadOnlyError):
                    shm[0] = 2
            with pytest.raises(TypeError):
                ro.buf[0] = 1
            assert ro.buf.readonly
        assert shr[0] == 3


def test_read_txn_on_writable_handle_refuses_writes(name):
    with SharedMemory(name, create=True, size=16) as shr:
        with shr.txn(write=False) as shm:
            with pytest.raises(shmtxn.ReadOnlyError):
                shm[1] = 1
            with pytest.raises(TypeError):
                shm.buf[0] = 1


def test_txn_buf_writes_roll_back(name):
    with SharedMemory(name, create=True, size=16) as shr:
        with pytest.raises(RuntimeError):
            with shr.txn() as shm:
                shm.buf[0:8] = (77).to_bytes(8, "little")
                assert shm[0] == 77
                raise RuntimeError
        assert shr[0] == 0


def test_buf_is_the_data_region_and_close_refuses_live_views(name):
    shr = SharedMemory(name, create=True, size=16)
    try:
        assert len(shr.buf) == 16
        view = shr.buf[0:8]
        with pytest.raises(shmtxn.BufferExportsError, match="view"):
            shr.close()
        view.release()
        shr.close()
        assert shr.closed
        shr.close()  # idempotent
        with pytest.raises(shmtxn.SegmentClosedError):
            shr[0]
    finally:
        shr.unlink()
        shr.unlink()  # idempotent


def test_close_refuses_open_txn(name):
    with SharedMemory(name, create=True, size=16) as shr:
        with shr.txn():
            with pytest.raises(shmtxn.Error, match="transaction"):
                shr.close()


def test_attacher_does_not_unlink_and_owner_does(name):
    with SharedMemory(name, create=True, size=16):
        with SharedMemory(name) as attached:
            assert attached.owner is False
        assert os.path.exists(f"/dev/shm/{name}")
    assert not os.path.exists(f"/dev/shm/{name}")


def test_unlink_never_removes_a_new_segment_of_the_same_name(name):
    first = SharedMemory(name, create=True, size=8)
    first.unlink()
    second = SharedMemory(name, create=True, size=8)
    first.unlink()  # must not remove `second`
    assert os.path.exists(f"/dev/shm/{name}")
    first.close()
    first.unlink()  # closed: still only removes its own segment
    assert os.path.exists(f"/dev/shm/{name}")
    second.close()
    second.unlink()


def test_pickle_reattaches_by_name_keeping_read_only(name):
    with SharedMemory(name, create=True, size=16) as shr:
        shr[1] = 11
        copy = pickle.loads(pickle.dumps(shr))
        assert copy.name == name and copy[1] == 11 and not copy.owner
        copy.close()
        with SharedMemory(name, read_only=True) as ro:
            ro_copy = pickle.loads(pickle.dumps(ro))
            assert ro_copy.read_only
            ro_copy.close()


@pytest.mark.parametrize("kwargs,error", [
    (dict(size=0), ValueError),
    (dict(size=-8), ValueError),
    (dict(size=12, format="q"), ValueError),     # format= given: whole items
    (dict(size=8, format="x"), ValueError),
    (dict(size=8, format="qq"), ValueError),
    (dict(size=8, format="=q"), ValueError),     # standard sizes: no
    (dict(size=8, read_only=True), ValueError),
])
def test_bad_creation_arguments(name, kwargs, error):
    with pytest.raises(error):
        SharedMemory(name, create=True, **kwargs)
    assert not os.path.exists(f"/dev/shm/{name}")


@pytest.mark.parametrize("bad", ["a/b", "x" * 300, "", ".."])
def test_bad_names(bad):
    with pytest.raises(ValueError):
        SharedMemory(bad, create=True, size=8)


def test_attach_missing_and_create_existing(name):
    with pytest.raises(shmtxn.SegmentNotFoundError) as err:
        SharedMemory(name)
    assert isinstance(err.value, FileNotFoundError)
    assert name in str(err.value)
    with SharedMemory(name, create=True, size=8):
        with pytest.raises(shmtxn.SegmentExistsError) as err:
            SharedMemory(name, create=True, size=8)
        assert isinstance(err.value, FileExistsError)
    with pytest.raises(ValueError):
        SharedMemory()  # attach needs a name


def test_attach_with_wrong_size_or_format(name):
    with SharedMemory(name, create=True, size=16):
        with pytest.raises(shmtxn.IncompatibleSegmentError):
            SharedMemory(name, size=24)
        with pytest.raises(shmtxn.IncompatibleSegmentError):
            SharedMemory(name, format="d")


def test_index_and_value_errors(name):
    with SharedMemory(name, create=True, size=16, format="i") as shr:
        for bad in (4, -5, 2**70):
            with pytest.raises(IndexError):
                shr[bad]
            with pytest.raises(IndexError):
                shr[bad] = 1
        with pytest.raises(TypeError):
            shr["a"]
        with pytest.raises(TypeError):
            shr[0] = "seven"
        with pytest.raises(TypeError):
            shr[0] = 1.5
        with pytest.raises(OverflowError):
            shr[0] = 2**31
        with pytest.raises(ValueError):
            shr[0:2] = [1, 2, 3]
        with pytest.raises(TypeError):
            shr[0:4] = [1, 2, "x", 4]
        assert shr[0:4] == [0, 0, 0, 0]  # nothing half-written
        with shr.txn() as shm:
            with pytest.raises(IndexError):
                shm[4] = 1
            with pytest.raises(OverflowError):
                shm[1] = -2**40
            shm[1] = 5  # the txn is still usable
        assert shr[1] == 5


def test_timeout_argument_is_checked(name):
    with SharedMemory(name, create=True, size=8) as shr:
        with pytest.raises(ValueError):
            shr.txn(timeout=-1)


def mappings_of(name):
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith(f"/dev/shm/{name}"))


def test_handles_of_one_process_share_one_mapping_per_kind(name):
    first = SharedMemory(name, create=True, size=80)
    second = SharedMemory(name)
    assert mappings_of(name) == 1
    ro = SharedMemory(name, read_only=True)
    assert mappings_of(name) >= 2  # the read-only one protects its data
    first[0] = 5
    first.close()
    second[1] = 6  # the shared mapping outlives the handle that made it
    assert ro[0:2] == [5, 6]
    with pytest.raises(TypeError):
        ro.buf[0] = 1
    second.close()
    ro.close()
    assert mappings_of(name) == 0
    SharedMemory(name).unlink()
