"""Errors that protect data: undo budget, full /dev/shm, corrupt
segments."""

import os

import pytest

import shmtxn
from shmtxn import SharedMemory


def test_transaction_too_large_rolls_back_and_names_the_option(name):
    with SharedMemory(name, create=True, size=8 * 2000,
                      undo_size=4096) as shr:
        shr[0] = 1
        with pytest.raises(shmtxn.TransactionTooLarge, match="undo_size"):
            with shr.txn() as shm:
                for i in range(2000):
                    shm[i] = 9
        assert shr[0:3] == [1, 0, 0]
        assert shr.info()["undo_used"] == 0
        shr[5] = 5  # still usable
        with pytest.raises(shmtxn.TransactionTooLarge):
            shr[0:2000] = [3] * 2000  # one auto-committed op, too large
        assert shr[0:6] == [1, 0, 0, 0, 0, 5]


def test_creation_larger_than_dev_shm_is_segment_full(name):
    st = os.statvfs("/dev/shm")
    too_big = (st.f_bavail * st.f_frsize // 8 + 1) * 8 + 8 * 2**20
    with pytest.raises(shmtxn.SegmentFullError) as err:
        SharedMemory(name, create=True, size=too_big)
    assert isinstance(err.value, OSError)
    assert "free" in str(err.value)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_absurd_size_is_segment_full(name):
    with pytest.raises(shmtxn.SegmentFullError):
        SharedMemory(name, create=True, size=2**62)
    assert not os.path.exists(f"/dev/shm/{name}")


def overwrite(name, offset, data):
    with open(f"/dev/shm/{name}", "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("offset", [0, 8, 24, 40, 120])
def test_garbage_header_is_corrupt_on_attach(name, offset):
    shr = SharedMemory(name, create=True, size=80)
    shr.close()
    overwrite(name, offset, os.urandom(64))
    with pytest.raises(shmtxn.CorruptSegmentError):
        SharedMemory(name)
    os.unlink(f"/dev/shm/{name}")


def test_foreign_segment_is_refused(name):
    from multiprocessing import shared_memory
    foreign = shared_memory.SharedMemory(name, create=True, size=100)
    try:
        with pytest.raises(shmtxn.CorruptSegmentError, match="not a shmtxn|another program"):
            SharedMemory(name)
    finally:
        foreign.close()
        foreign.unlink()


def test_version_mismatch_is_incompatible(name):
    shr = SharedMemory(name, create=True, size=8)
    shr.close()
    overwrite(name, 8, (99).to_bytes(4, "little"))
    with pytest.raises(shmtxn.IncompatibleSegmentError, match="version"):
        SharedMemory(name)
    os.unlink(f"/dev/shm/{name}")


def test_corrupt_undo_log_is_reported_not_followed(name):
    with SharedMemory(name, create=True, size=80) as shr:
        with shr.txn() as shm:
            shm[0] = 1
            # a hostile process scribbles a huge length into the log
            info = shr.info()
            assert info["undo_used"] > 0
            overwrite(name, info["undo_off"] + 8,
                      (2**60).to_bytes(8, "little"))
            with pytest.raises(shmtxn.CorruptSegmentError):
                shm.abort()


def test_errors_subclass_the_builtins_callers_catch():
    assert issubclass(shmtxn.SegmentExistsError, FileExistsError)
    assert issubclass(shmtxn.SegmentNotFoundError, FileNotFoundError)
    assert issubclass(shmtxn.ReadOnlyError, PermissionError)
    assert issubclass(shmtxn.LockTimeout, TimeoutError)
    for cls in (shmtxn.TransactionTooLarge, shmtxn.SegmentFullError,
                shmtxn.CorruptSegmentError, shmtxn.IncompatibleSegmentError,
                shmtxn.TransactionClosedError):
        assert issubclass(cls, shmtxn.Error)


def test_misaligned_regions_in_a_valid_looking_header_are_corrupt(name):
    """A hostile header with a correct checksum but an undo log that is
    not 8-byte aligned is refused before anything is written there."""
    import struct
    import helpers
    shr = SharedMemory(name, create=True, size=80)
    undo_off = shr.info()["undo_off"]
    shr.close()
    helpers.patch_header(name, 48, struct.pack("Q", undo_off + 4))
    with pytest.raises(shmtxn.CorruptSegmentError, match="geometry"):
        SharedMemory(name)
    os.unlink(f"/dev/shm/{name}")


def _attach_and_report(name, conn):
    try:
        SharedMemory(name).close()
        conn.send("attached")
    except shmtxn.SegmentFullError as e:
        conn.send(str(e))


def test_max_processes_is_honoured(name):
    import multiprocessing
    import helpers
    from test_crash import start_child
    ctx = multiprocessing.get_context("fork")
    with SharedMemory(name, create=True, size=8, max_processes=2):
        holder, _ = start_child(helpers.hold_read_txn, name, expect=0)
        try:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_attach_and_report, args=(name, child))
            p.start()
            said = parent.recv()
            p.join()
            assert "max_processes" in said
        finally:
            helpers.kill(holder)
