"""The edges of the promise: a recovery that fails, a lock word or writer
flag left behind, threads that end inside a txn, arrays that outlive
close(), hostile headers, and reaping reader slots.

Waits that must not hang run in a subprocess with a generous hard limit,
so a regression fails the test instead of wedging the suite."""

import multiprocessing
import os
import queue
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings

import pytest

import helpers
import shmtxn
from shmtxn import SharedMemory
from test_crash import start_child

CTX = multiprocessing.get_context("fork")

# byte offsets of the header fields these tests poke (docs/format.md)
UNDO_OFF = 48
WRITER_FLAG = 256
SLOTS_HWM = 276
MUTEX_WORD = 384   # glibc: the futex word opens pthread_mutex_t
SLOTS_OFF = 4096   # the reader slot table follows the one-page header
SLOT_SIZE = 64


def poke(name, offset, fmt, *values):
    with open(f"/dev/shm/{name}", "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def peek(name, offset, fmt):
    with open(f"/dev/shm/{name}", "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def slot_pid(name, i):
    return peek(name, SLOTS_OFF + i * SLOT_SIZE, "i")


def slot_readers(name, i):
    return peek(name, SLOTS_OFF + i * SLOT_SIZE + 4, "I")


def set_slot(name, i, pid, readers):
    poke(name, SLOTS_OFF + i * SLOT_SIZE, "iI", pid, readers)
    hwm = peek(name, SLOTS_HWM, "I")
    poke(name, SLOTS_HWM, "I", max(hwm, i + 1))


def dead_pid():
    """The pid of a process that has exited (and was reaped)."""
    p = CTX.Process(target=os._exit, args=(0,))
    p.start()
    p.join()
    return p.pid


def run_python(code, limit=120):
    """Run `code` in a fresh interpreter; a hang fails after `limit` s."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=limit,
                          cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ---- a recovery that fails ----------------------------------------------

def die_inside_write_txn(name):
    shr = SharedMemory(name)
    t = shr.txn()
    t.__enter__()
    t[0] = 99
    os.kill(os.getpid(), signal.SIGKILL)


OPERATIONS = """
import shmtxn
from shmtxn import SharedMemory
shr = SharedMemory({name!r})
ops = {{
    "get": lambda: shr[0],
    "slice": lambda: shr[0:5],
    "set": lambda: shr.__setitem__(0, 1),
    "write txn": lambda: shr.txn().__enter__(),
    "read txn": lambda: shr.txn(write=False).__enter__(),
    "write txn, timeout": lambda: shr.txn(timeout=2).__enter__(),
}}
for what, op in ops.items():
    try:
        op()
        print(what, "ok")
    except shmtxn.CorruptSegmentError as e:
        print(what, "corrupt", "unusable" in str(e))
shr.close()
"""


def test_a_failed_recovery_fails_every_later_operation_at_once(name):
    with SharedMemory(name, create=True, size=80) as shr:
        p = CTX.Process(target=die_inside_write_txn, args=(name,))
        p.start()
        p.join()
        assert p.exitcode == -signal.SIGKILL
        info = shr.info()
        assert info["undo_used"] > 0
        # the dead writer's one record claims an impossible length
        poke(name, info["undo_off"] + 8, "Q", 1 << 40)
        with pytest.raises(shmtxn.CorruptSegmentError):
            shr[0]
        for _ in range(3):  # and again, at once, not wedged
            with pytest.raises(shmtxn.CorruptSegmentError, match="unusable"):
                shr[0]
            with pytest.raises(shmtxn.CorruptSegmentError):
                shr.txn(timeout=2).__enter__()
        lines = run_python(OPERATIONS.format(name=name)).splitlines()
        assert lines == [f"{op} corrupt True" for op in (
            "get", "slice", "set", "write txn", "read txn",
            "write txn, timeout")]
        assert "rolled back" in shr.info()["unrecoverable"]
        with pytest.raises(shmtxn.CorruptSegmentError):
            shmtxn.admin.check(name, repair=True)


# ---- no wait forever on a dead writer ----------------------------------

def test_a_lock_word_naming_a_vanished_thread_is_reported(name):
    with SharedMemory(name, create=True, size=80) as shr:
        poke(name, MUTEX_WORD, "I", dead_pid())
        out = run_python(f"""
import shmtxn
from shmtxn import SharedMemory
shr = SharedMemory({name!r})
for op in (lambda: shr.__setitem__(0, 1), lambda: shr.txn().__enter__()):
    try:
        op()
        print("ok")
    except shmtxn.CorruptSegmentError as e:
        print("corrupt", "dead process" in str(e))
shr.close()
""")
        assert out.split("\n")[:2] == ["corrupt True", "corrupt True"]
        assert "dead process" in shr.info()["unrecoverable"]


def test_a_stale_writer_flag_does_not_block_readers(name):
    with SharedMemory(name, create=True, size=80) as shr:
        shr[0] = 5
        poke(name, WRITER_FLAG, "I", 1)  # no process holds the mutex
        out = run_python(f"""
from shmtxn import SharedMemory
shr = SharedMemory({name!r})
with shr.txn(write=False) as t:
    print(t[0])
print(shr[0])
shr.close()
""")
        assert out.split() == ["5", "5"]
        assert shr.info()["lock"] == "free"
        shr[1] = 6  # and writers go on


def test_a_read_txn_honours_its_timeout_behind_a_live_writer(name):
    with SharedMemory(name, create=True, size=80) as shr:
        p, conn = start_child(helpers.hold_write_txn, name, expect="locked")
        try:
            with pytest.raises(shmtxn.LockTimeout):
                shr.txn(write=False, timeout=0.2).__enter__()
        finally:
            conn.send("go")
            p.join()
        assert shr[0] == 12345


# ---- threads that end inside a txn ---------------------------------------

def in_thread(fn):
    t = threading.Thread(target=fn)
    t.start()
    t.join()


def writer_in_child(name):
    shr = SharedMemory(name)
    with shr.txn(timeout=10) as t:
        t[1] = 7
    shr.close()


def test_a_thread_that_ends_inside_a_read_txn_releases_it(name):
    kept = []

    def body():
        t = shr.txn(write=False)
        t.__enter__()
        kept.append(t)

    with SharedMemory(name, create=True, size=80) as shr:
        in_thread(body)
        assert not kept[0].active
        with shr.txn(timeout=5) as t:  # writers are not blocked...
            t[0] = 1
        p = CTX.Process(target=writer_in_child, args=(name,))
        p.start()
        p.join()
        assert p.exitcode == 0 and shr[1] == 7  # ...in any process
        in_thread(body)  # a new thread (maybe the same pthread_t) is free
        kept.clear()
    assert shr.closed


def test_a_thread_that_ends_inside_a_write_txn_rolls_it_back(name):
    kept = []

    def body():
        t = shr.txn()
        t.__enter__()
        t[0] = 42
        kept.append(t)

    with SharedMemory(name, create=True, size=80) as shr:
        in_thread(body)
        assert shr[0] == 0
        with shr.txn(timeout=5) as t:
            assert t[0] == 0
            t[2] = 3
        assert shr.info()["lock"] == "free"
    assert shr.closed  # the creator's with-block closed and unlinked


def test_a_thread_that_ends_with_a_view_alive(name):
    np = pytest.importorskip("numpy")
    kept = []

    def body():
        t = shr.txn()
        t.__enter__()
        a = t.ndarray()
        a[:] = 7
        kept.append(a)

    shr = SharedMemory(name, create=True, shape=4, format="q")
    in_thread(body)
    assert shr[0:4] == [0, 0, 0, 0]  # rolled back
    assert kept[0].sum() == 0  # the array still reads mapped memory
    with pytest.raises(shmtxn.BufferExportsError):
        shr.close()
    kept.clear()
    shr.close()
    shr.unlink()


def test_a_read_txn_can_be_ended_by_another_thread(name):
    handed = queue.Queue()
    done = threading.Event()

    def body():
        t = shr.txn(write=False)
        t.__enter__()
        handed.put(t)
        del t
        # keep running Python: on a free-threaded build an object dropped
        # by another thread than its creator is freed when the creator
        # next checks in (biased reference counting, docs/threads.md)
        while not done.wait(0.01):
            pass

    with SharedMemory(name, create=True, size=80) as shr:
        th = threading.Thread(target=body, daemon=True)
        th.start()
        try:
            t = handed.get()
            del t  # dropped here: the read txn ends in this thread
            with shr.txn(timeout=5) as w:
                w[0] = 9
        finally:
            done.set()
            th.join()
        assert shr[0] == 9


# ---- arrays that outlive close() -------------------------------------------

def test_close_refuses_while_an_array_made_from_buf_is_alive(name):
    np = pytest.importorskip("numpy")
    shr = SharedMemory(name, create=True, size=8000)
    a = np.ndarray((1000,), np.int64, buffer=shr.buf)
    with pytest.raises(shmtxn.BufferExportsError):
        shr.close()
    assert a.sum() == 0 and not shr.closed
    del a
    shr.close()
    shr.unlink()


def test_close_refuses_while_an_array_made_from_txn_buf_is_alive(name):
    np = pytest.importorskip("numpy")
    shr = SharedMemory(name, create=True, size=80)
    with pytest.warns(ResourceWarning, match="not transactional"):
        with shr.txn() as t:
            a = np.ndarray((10,), np.int64, buffer=t.buf)
            a[0] = 3
    with pytest.raises(shmtxn.BufferExportsError):
        shr.close()
    assert a[0] == 3
    del a
    shr.close()
    shr.unlink()


def test_an_array_over_the_handle_itself_survives_close(name):
    pytest.importorskip("numpy")  # the child needs it
    out = run_python(f"""
import numpy as np
from shmtxn import SharedMemory
shr = SharedMemory({name!r}, create=True, size=8000)
shr[0] = 5
a = np.ndarray((1000,), np.int64, buffer=shr)
shr.close()
shr.unlink()
print(shr.closed, a.sum())
""")
    assert out.split() == ["True", "5"]


def test_the_stdlib_buf_pattern_still_closes(name):
    shr = SharedMemory(name, create=True, size=16)
    buffer = shr.buf
    buffer[:4] = bytearray([22, 33, 44, 55])
    shr.close()  # as in the stdlib: the memoryview is released
    with pytest.raises(ValueError):
        buffer[0]
    shr.unlink()


# ---- hostile headers -------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    (UNDO_OFF, 0),        # the undo log over the header
    (UNDO_OFF, 4096),     # over the reader slots
    (64, 4096),           # data_off over the slots and undo log
])
def test_overlapping_regions_are_corrupt(name, field, value):
    with SharedMemory(name, create=True, size=80) as shr:
        helpers.patch_header(name, field, struct.pack("Q", value))
        with pytest.raises(shmtxn.CorruptSegmentError, match="overlap|outside"):
            SharedMemory(name)
        assert shr.closed is False


def test_a_damaged_mutex_kind_is_corrupt(name):
    with SharedMemory(name, create=True, size=80) as shr:
        poke(name, MUTEX_WORD + 16, "i", 0)  # glibc's __kind: a plain mutex
        with pytest.raises(shmtxn.CorruptSegmentError, match="mutex"):
            SharedMemory(name)
        poke(name, MUTEX_WORD + 16, "i", shmtxn._core.mutex_kind())


# ---- reader slots ------------------------------------------------------------

def test_a_read_txn_leaves_the_slot_it_entered(name):
    entered, leave = threading.Event(), threading.Event()

    def reader():
        with shr.txn(write=False):
            entered.set()
            leave.wait(60)

    with SharedMemory(name, create=True, size=80) as shr:
        th = threading.Thread(target=reader, daemon=True)
        th.start()
        entered.wait()  # (daemon: a failed assert must not wedge the run)
        assert (slot_pid(name, 0), slot_readers(name, 0)) == (os.getpid(), 1)
        poke(name, SLOTS_OFF, "i", dead_pid())  # our slot is taken from us
        with shr.txn(write=False):  # ...so this one claims another
            ours = [i for i in range(1, 8) if slot_pid(name, i) == os.getpid()]
            assert len(ours) == 1 and slot_readers(name, ours[0]) == 1
            leave.set()
            th.join()
            assert slot_readers(name, 0) == 0  # left where it entered
            assert slot_readers(name, ours[0]) == 1
        assert slot_readers(name, ours[0]) == 0


def test_a_count_cleared_under_a_reader_never_wraps(name):
    with SharedMemory(name, create=True, size=80) as shr:
        with shr.txn(write=False):
            poke(name, SLOTS_OFF + 4, "I", 0)  # as a reaper would
        assert slot_readers(name, 0) == 0
        with shr.txn(timeout=5) as t:
            t[0] = 1


@pytest.mark.parametrize("mark", ["dead owner", "dead reaper"])
def test_a_slot_of_the_dead_is_reaped_by_one_writer(name, mark):
    with SharedMemory(name, create=True, size=80) as shr:
        pid = dead_pid()
        set_slot(name, 5, pid if mark == "dead owner" else -pid, 3)
        with shr.txn(timeout=5) as t:
            t[0] = 1
        assert (slot_pid(name, 5), slot_readers(name, 5)) == (0, 0)


def wait_forever(conn):
    conn.send("ready")
    conn.recv()


def test_a_live_reapers_mark_is_respected(name):
    with SharedMemory(name, create=True, size=80) as shr:
        p, conn = start_child(wait_forever, expect="ready")
        try:
            set_slot(name, 5, -p.pid, 1)  # a live process is reaping it
            with pytest.raises(shmtxn.LockTimeout):
                shr.txn(timeout=0.2).__enter__()
            assert slot_readers(name, 5) == 1
        finally:
            conn.send("go")
            p.join()


def test_a_forked_child_is_listed_before_its_first_txn(name):
    with SharedMemory(name, create=True, size=80) as shr:
        shr[0] = 1
        p, conn = start_child(wait_forever, expect="ready")
        try:
            info = shr.info()
            assert p.pid in [q["pid"] for q in info["processes"]]
            assert p.pid in info["beacons"]
        finally:
            conn.send("go")
            p.join()
        assert p.pid not in shr.info()["beacons"]


def test_a_thread_that_ends_inside_a_dict_txn_rolls_it_back(name):
    kept = []

    def body():
        t = d.txn()
        t.__enter__()
        t["k"] = "uncommitted"
        kept.append(t)

    with shmtxn.SharedDict(name, create=True, size=1 << 20) as d:
        d["k"] = "committed"
        in_thread(body)
        assert d["k"] == "committed"
        with d.txn(timeout=5) as t:
            t["n"] = 1
        d.verify()
    assert d.closed


# ---- gc and rm never remove what a live process maps --------------------

def parent_of_a_lock_free_reader(name, conn):
    """Attach, fork a child that only reads lock-free, then close and exit
    (the child keeps reading until told to stop, a minute at most)."""
    shr = SharedMemory(name)
    pid = os.fork()
    if pid == 0:
        conn.send(("reader", os.getpid()))
        deadline = time.monotonic() + 60
        while not conn.poll() and time.monotonic() < deadline:
            shr[0]
        os._exit(0)
    shr.close()
    conn.send(("closed", os.getpid()))


@pytest.mark.parametrize("max_processes", [0, 1])  # 1: no slot to claim
def test_gc_and_rm_spare_a_segment_a_forked_reader_still_maps(
        name, max_processes):
    SharedMemory(name, create=True, size=80,
                 max_processes=max_processes).close()  # we hold nothing
    parent, child = CTX.Pipe()
    p = CTX.Process(target=parent_of_a_lock_free_reader, args=(name, child))
    p.start()
    try:
        said = dict(parent.recv() for _ in range(2))
        reader = said["reader"]
        gone = os.pidfd_open(reader)  # not our child: wait on a pidfd
        p.join()  # its parent closed its handle and exited
        [info] = shmtxn.list_segments(prefix=name)
        assert reader in info["attached"] and not info["orphaned"]
        assert shmtxn.admin.gc(prefix=name) == []
        with pytest.raises(shmtxn.admin.SegmentInUseError):
            shmtxn.admin.remove(name)
        assert os.path.exists(f"/dev/shm/{name}")
    finally:
        parent.send("stop")
    select.select([gone], [], [], 60)  # readable once it has exited
    os.close(gone)
    [removed] = shmtxn.admin.gc(prefix=name)
    assert removed["name"] == name and removed["removed"]


def test_a_write_txn_dropped_by_another_thread_ends_with_its_thread(name):
    box, entered, leave = [], threading.Event(), threading.Event()

    def body():
        t = shr.txn()
        t.__enter__()
        t[0] = 99
        box.append(t)
        del t
        entered.set()
        leave.wait(60)

    shr = SharedMemory(name, create=True, size=80)
    th = threading.Thread(target=body, daemon=True)
    th.start()
    entered.wait()
    box.clear()  # dropped here: only its own thread may unlock it
    try:
        with pytest.raises(shmtxn.Error, match="transaction"):
            shr.close()  # it still holds the lock
    finally:
        leave.set()
        th.join()
    assert shr[0] == 0  # rolled back as its thread ended
    with shr.txn(timeout=5) as t:
        t[1] = 1
    shr.close()
    shr.unlink()


def test_arrays_over_a_txn_or_a_released_buf_never_read_unmapped(name):
    pytest.importorskip("numpy")  # the child needs it
    out = run_python(f"""
import numpy as np, shmtxn
from shmtxn import SharedMemory
shr = SharedMemory({name!r}, create=True, size=80)
shr[0] = 4
with shr.txn() as t:
    a = np.ndarray((10,), dtype='q', buffer=t)  # holds the txn object
b = np.ndarray((10,), dtype='q', buffer=shr.buf)
shr.buf.release()  # the user releases shr.buf: b still points in
try:
    shr.close()
except shmtxn.BufferExportsError:
    print("refused")
del b
shr.close()  # a keeps the mapping alive through its txn object
shr.unlink()
print(a[0], shr.closed)
""")
    assert out.split() == ["refused", "4", "True"]


def test_a_priority_protect_mutex_kind_is_corrupt_not_an_abort(name):
    with SharedMemory(name, create=True, size=80) as shr:
        shr[0] = 1
        poke(name, MUTEX_WORD + 16, "i", 0xc0)  # PTHREAD_PRIO_PROTECT|pshared
        with pytest.raises(shmtxn.CorruptSegmentError, match="writer lock"):
            shr[0] = 2


def test_a_handle_whose_buf_was_taken_is_collected(name):
    import gc
    import weakref
    shr = SharedMemory(name, create=True, size=80)
    shr.buf[0] = 1
    other = SharedMemory(name)
    other.buf[1] = 2
    ref = weakref.ref(other)
    del other
    gc.collect()
    assert ref() is None  # its View no longer keeps it alive
    shr.close()
    shr.unlink()


def test_attaching_from_another_pid_namespace_is_refused(name):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) on this machine")
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this sandbox cannot make a pid namespace")
    with SharedMemory(name, create=True, size=80):
        code = (f"import shmtxn\n"
                f"try:\n"
                f"    shmtxn.SharedMemory({name!r})\n"
                f"except shmtxn.IncompatibleSegmentError as e:\n"
                f"    print('refused', 'pid namespace' in str(e))\n")
        out = subprocess.run(["unshare", "--pid", "--fork", sys.executable,
                              "-c", code], capture_output=True, text=True,
                             timeout=60)
        assert out.stdout.split() == ["refused", "True"], out.stderr


def test_damaged_utf8_in_a_stored_string_is_corrupt(name):
    with shmtxn.SharedDict(name, create=True, size=1 << 20) as d:
        d["key-one"] = "value-" + "é" * 8
        with open(f"/dev/shm/{name}", "rb") as f:
            raw = f.read()
        at = raw.index("é".encode() * 8)
        poke(name, at, "B", 0xff)  # no UTF-8 starts with 0xff
        with pytest.raises(shmtxn.CorruptSegmentError, match="decoded"):
            d["key-one"]
        with pytest.raises(shmtxn.CorruptSegmentError, match=name):
            list(d.items())
        at = raw.index(b"key-one")
        poke(name, at, "B", 0xff)  # and in a key
        with pytest.raises(shmtxn.CorruptSegmentError,
                           match=f"segment '{name}': a stored key"):
            list(d)
