"""Open-or-create (create=None), reclaiming a crashed run's leftovers,
and the stdlib's constructor: track=, sizes that are not whole items,
real signatures (issue #13)."""

import inspect
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

import open_helpers
import shmtxn
from shmtxn import SharedDict, SharedMemory
from shmtxn.admin import segment_info

FORK = multiprocessing.get_context("fork")
SHM = "/dev/shm"


def crashed_creator(name, size=64, value=7):
    """Leave `name` as a crashed run would: its creator SIGKILLed (and
    reaped) with the segment published and nobody attached.  Returns the
    dead creator's pid."""
    parent, child = FORK.Pipe()
    p = FORK.Process(target=open_helpers.create_and_hold,
                     args=(name, size, value, child))
    p.start()
    assert parent.recv() == ("ready", p.pid)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    assert p.exitcode == -signal.SIGKILL
    return p.pid


def start_attacher(name):
    parent, child = FORK.Pipe()
    p = FORK.Process(target=open_helpers.attach_and_hold, args=(name, child))
    p.start()
    return p, parent


# --------------------------------------------------------------------------
# create=None


def test_create_none_creates_when_absent_and_attaches_when_present(name):
    with SharedMemory(name, create=None, size=32) as first:
        assert first.created and first.owner
        first[1] = 5
        with SharedMemory(name, create=None, size=32) as second:
            assert not second.created and not second.owner
            assert second[1] == 5
            second[2] = 6
        assert os.path.exists(f"{SHM}/{name}")  # an attacher only closes
        assert first[2] == 6
    assert not os.path.exists(f"{SHM}/{name}")  # the creator unlinks


def test_created_is_false_for_plain_attach_and_true_for_create(name):
    with SharedMemory(name, create=True, size=8) as shr:
        assert shr.created
        with SharedMemory(name) as other:
            assert not other.created


def test_create_none_without_a_name_creates_a_fresh_segment():
    with SharedMemory(create=None, size=8) as shr:
        assert shr.created and shr.name.startswith("stx_")


def test_create_none_needs_what_creating_needs(name):
    with pytest.raises(ValueError, match="size"):
        SharedMemory(name, create=None)
    with pytest.raises(ValueError, match="read-only"):
        SharedMemory(name, create=None, size=8, read_only=True)
    with pytest.raises(ValueError, match="read-only"):
        SharedDict(name, create=None, read_only=True)
    assert not os.path.exists(f"{SHM}/{name}")


def test_create_none_with_data_initialises_only_when_it_creates(name):
    with SharedMemory(name, create=None, data=bytes(range(16)),
                      format="B") as shr:
        assert shr.created and shr[:] == list(range(16))
        with SharedMemory(name, create=None, data=bytes(16),
                          format="B") as again:
            assert not again.created and again[:] == list(range(16))


@pytest.mark.parametrize("kwargs,field,values", [
    (dict(size=80, format="d"), "format", ("'q'", "'d'")),
    (dict(size=88), "size", ("80", "88")),
    (dict(shape=(5, 2)), "shape", ("(10,)", "(5, 2)")),
    (dict(size=80, max_processes=7), "max_processes", ("128", "7")),
    (dict(size=80, undo_size=100), "undo_size", ("100",)),
])
def test_create_none_refuses_a_segment_it_would_not_have_made(
        name, kwargs, field, values):
    with SharedMemory(name, create=True, size=80) as shr:
        with pytest.raises(shmtxn.IncompatibleSegmentError) as err:
            SharedMemory(name, create=None, **kwargs)
        text = str(err.value)
        assert name in text and field in text
        assert all(v in text for v in values), text
        assert "create=None" in text
        assert shr.info()["processes"][0]["pid"] == os.getpid()


def test_create_none_default_format_must_match_too(name):
    with SharedMemory(name, create=True, size=80, format="d"):
        with pytest.raises(shmtxn.IncompatibleSegmentError,
                           match=r"format='d'.*"):
            SharedMemory(name, create=None, size=80)  # would make 'q'
        with SharedMemory(name, create=None, size=80, format="d") as same:
            assert not same.created and same.format == "d"


def test_create_none_refuses_the_other_layout(name):
    with SharedMemory(name, create=True, size=80):
        with pytest.raises(shmtxn.IncompatibleSegmentError,
                           match="SharedMemory"):
            SharedDict(name, create=None)
    with SharedDict(name, create=True):
        with pytest.raises(shmtxn.IncompatibleSegmentError,
                           match="SharedDict"):
            SharedMemory(name, create=None, size=80)


def test_shared_dict_create_none_and_its_size_cap(name):
    with SharedDict(name, create=None, size=1 << 20) as d:
        assert d.created and d.size == 1 << 20
        d["k"] = 1
        with SharedDict(name, create=None) as any_cap:  # 0: any cap
            assert not any_cap.created and any_cap["k"] == 1
        with SharedDict(name, create=None, size=1 << 20) as same:
            assert not same.created
        with pytest.raises(shmtxn.IncompatibleSegmentError) as err:
            SharedDict(name, create=None, size=2 << 20)
        assert str(1 << 20) in str(err.value)
        assert str(2 << 20) in str(err.value)
        with pytest.raises(shmtxn.IncompatibleSegmentError,
                           match="max_processes"):
            SharedDict(name, create=None, max_processes=3)


def test_shared_dict_create_none_default_cap(name):
    with SharedDict(name, create=None) as d:
        assert d.created and d.size > 0
        with SharedDict(name, create=None) as again:
            assert not again.created and again.size == d.size


def test_create_none_raced_by_threads_of_one_process(name):
    barrier = threading.Barrier(8)
    handles, errors = [], []

    def open_it():
        barrier.wait()
        try:
            handles.append(SharedMemory(name, create=None, size=64))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(h.created for h in handles) == 1
    handles[0][3] = 9
    assert all(h[3] == 9 for h in handles)
    for h in sorted(handles, key=lambda h: h.created):
        with h:
            pass
    assert not os.path.exists(f"{SHM}/{name}")


# --------------------------------------------------------------------------
# 8 processes at once, many times


def run_race(ctx, names, modes, parties=8):
    """Run `parties` race_workers over `names`; collect their reports."""
    barrier = ctx.Barrier(parties)
    results = ctx.Queue()
    procs = [ctx.Process(target=open_helpers.race_worker,
                         args=(names, modes, rank, parties, barrier,
                               results))
             for rank in range(parties)]
    for p in procs:
        p.start()
    reports, done = [], 0
    while done < parties:
        try:
            item = results.get(timeout=120)
        except queue.Empty:
            pytest.fail("a race worker stalled")
        if item[0] == "done":
            done += 1
        else:
            reports.append(item)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return reports


def check_exactly_one_creator(reports, names, parties, dead=()):
    errors = [r for r in reports if r[0] == "error"]
    assert not errors, errors[:3]
    for name in names:
        opened = [r for r in reports if r[0] == "open" and r[1] == name]
        assert len(opened) == parties
        assert sum(r[3] for r in opened) == 1, f"{name}: not one creator"
        identities = {(r[4], r[5]) for r in opened}
        assert len(identities) == 1, f"{name}: several segments"
        creator_pid = identities.pop()[0]
        assert creator_pid not in dead  # a leftover was reclaimed
        [check] = [r for r in reports if r[0] == "check" and r[1] == name]
        assert check[2] == list(range(1, parties + 1))
        assert not os.path.exists(f"{SHM}/{name}")


def race_rounds(ctx, name, rounds, leftovers):
    names = [f"{name}_{i}" for i in range(rounds)]
    dead = {crashed_creator(n) for n in names[:leftovers]}
    try:
        reports = run_race(ctx, names, [None] * 8)
        check_exactly_one_creator(reports, names, 8, dead)
    finally:
        for n in names:
            if os.path.exists(f"{SHM}/{n}"):
                os.unlink(f"{SHM}/{n}")


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_open_or_create_raced_by_8_processes(name, method):
    """50 rounds of 8 processes opening one fresh name with create=None at
    once: exactly one creates, all see the same segment, none errs."""
    race_rounds(multiprocessing.get_context(method), name, 50, 0)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_open_or_create_raced_over_crashed_leftovers(name, method):
    """As above, each name left by a SIGKILLed creator: one of the 8
    reclaims it and creates; the others attach to the new segment."""
    race_rounds(multiprocessing.get_context(method), name, 12, 12)


@pytest.mark.stress
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_open_or_create_raced_by_8_processes_stress(name, method):
    ctx = multiprocessing.get_context(method)
    race_rounds(ctx, name, 500, 0)
    race_rounds(ctx, name + "L", 100, 100)


def test_attachers_racing_reclaimers_end_on_one_segment(name):
    """4 processes attach (create=False) while 4 open-or-create a crashed
    run's leftover: whoever succeeds ends on one segment -- the leftover
    if an attacher got there first (then it is in use: nobody reclaims),
    else the new one.  create=None never errs."""
    names = [f"{name}_{i}" for i in range(12)]
    old = {}
    for n in names:
        crashed_creator(n)
        old[n] = segment_info(n)["created_ns"]
    modes = [None, False] * 4
    try:
        reports = run_race(FORK, names, modes)
    finally:
        for n in names:
            if os.path.exists(f"{SHM}/{n}"):
                os.unlink(f"{SHM}/{n}")
    for n in names:
        errors = [r for r in reports if r[0] == "error" and r[1] == n]
        assert all(modes[r[2]] is False and "SegmentNotFound" in r[3]
                   for r in errors), errors
        opened = [r for r in reports if r[0] == "open" and r[1] == n]
        assert {r[2] for r in opened} >= {0, 2, 4, 6}
        assert len({(r[4], r[5]) for r in opened}) == 1, n
        creators = sum(r[3] for r in opened)
        assert creators <= 1
        assert (creators == 0) == (opened[0][5] == old[n])


# --------------------------------------------------------------------------
# reclaiming a crashed run's leftovers


@pytest.mark.parametrize("create", [True, None])
def test_create_reclaims_after_a_sigkilled_creator(name, create):
    dead = crashed_creator(name, value=42)
    assert segment_info(name)["orphaned"]
    with SharedMemory(name, create=create, size=64) as shr:
        assert shr.created and shr.owner
        assert shr[0] == 0  # a new segment, not the leftover
        assert shr.info()["creator_pid"] == os.getpid() != dead
    assert not os.path.exists(f"{SHM}/{name}")


def test_create_reclaims_a_leftover_of_another_shape_and_layout(name):
    crashed_creator(name, size=16)
    with SharedDict(name, create=True) as d:  # was a SharedMemory
        assert d.created
    crashed_creator(name, size=16)
    with SharedMemory(name, create=None, size=800, format="d") as shr:
        assert shr.created and len(shr) == 100


def test_no_reclaim_while_another_process_has_it_open(name):
    crashed_creator(name, value=42)
    p, conn = start_attacher(name)
    try:
        assert conn.recv() == ("ready", 42)
        with pytest.raises(shmtxn.SegmentExistsError,
                           match=f"process {p.pid} has it open"):
            SharedMemory(name, create=True, size=64)
        with SharedMemory(name, create=None, size=64) as shr:
            assert not shr.created and shr[0] == 42  # attached: in use
    finally:
        conn.send("close")
        assert conn.recv() == "closed"
        p.join()
    with SharedMemory(name, create=True, size=64) as shr:  # unused now
        assert shr.created and shr[0] == 0


def test_no_reclaim_while_this_process_has_it_open(name):
    crashed_creator(name, value=42)
    with SharedMemory(name) as mine:
        with pytest.raises(shmtxn.SegmentExistsError,
                           match="this process has it open"):
            SharedMemory(name, create=True, size=64)
        assert mine[0] == 42
    with SharedMemory(name, create=True, size=64) as shr:
        assert shr.created


def test_no_reclaim_while_the_creator_lives(name):
    code = ("import sys\nfrom shmtxn import SharedMemory\n"
            f"s = SharedMemory({name!r}, create=True, size=64)\n"
            "s.close()\nprint('closed', flush=True)\nsys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"closed\n"
        assert segment_info(name)["orphaned"]  # nobody has it open...
        with pytest.raises(shmtxn.SegmentExistsError,
                           match=f"creator, process {proc.pid}, is still"):
            SharedMemory(name, create=True, size=64)  # ...but it may
        with SharedMemory(name, create=None, size=64) as shr:
            assert not shr.created
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    with SharedMemory(name, create=True, size=64) as shr:
        assert shr.created


@pytest.mark.parametrize("create", [True, None])
def test_create_reclaims_a_segment_abandoned_mid_creation(name, create):
    proc = subprocess.run(
        [sys.executable, "-c", "from shmtxn import SharedMemory\n"
         f"SharedMemory({name!r}, create=True, size=80)\n"],
        env=dict(os.environ, SHMTXN_CRASH_AT="create:before_magic"),
        timeout=60, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert segment_info(name)["state"] == "abandoned"
    with SharedMemory(name, create=create, size=80) as shr:
        assert shr.created


def test_a_reclaimer_killed_before_unlinking_leaves_the_leftover(name):
    crashed_creator(name, value=42)
    proc = subprocess.run(
        [sys.executable, "-c", "from shmtxn import SharedMemory\n"
         f"SharedMemory({name!r}, create=True, size=64)\n"],
        env=dict(os.environ, SHMTXN_CRASH_AT="reclaim:before_unlink"),
        timeout=60, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with SharedMemory(name) as old:  # untouched, and still reclaimable
        assert old[0] == 42
    with SharedMemory(name, create=True, size=64) as shr:
        assert shr.created and shr[0] == 0


@pytest.mark.parametrize("content", [b"", b"not a segment" * 400,
                                     b"\0" * 8192])
def test_a_file_shmtxn_did_not_make_is_never_touched(name, content):
    path = f"{SHM}/{name}"
    with open(path, "wb") as f:
        f.write(content)
    before = os.stat(path)
    with pytest.raises(shmtxn.SegmentExistsError) as err:
        SharedMemory(name, create=True, size=64)
    assert "shmtxn segment" in str(err.value) or "empty" in str(err.value)
    with pytest.raises(shmtxn.Error):
        SharedMemory(name, create=None, size=64, timeout=0.5)
    with pytest.raises(shmtxn.SegmentExistsError):
        SharedDict(name, create=True)
    after = os.stat(path)
    assert (after.st_ino, after.st_size) == (before.st_ino, before.st_size)
    with open(path, "rb") as f:
        assert f.read() == content


def test_a_corrupt_leftover_is_not_reclaimed(name):
    crashed_creator(name)
    with open(f"{SHM}/{name}", "r+b") as f:
        f.seek(100)  # ndim: covered by the header checksum
        f.write(b"\x07")
    with pytest.raises(shmtxn.SegmentExistsError, match="corrupt"):
        SharedMemory(name, create=True, size=64)
    assert os.path.exists(f"{SHM}/{name}")


# --------------------------------------------------------------------------
# the stdlib's constructor


def test_signatures_show_the_real_parameters():
    memory = inspect.signature(SharedMemory).parameters
    assert list(memory) == [
        "name", "create", "size", "track", "read_only", "format", "shape",
        "data", "undo_size", "max_processes", "populate", "timeout", "mode"]
    assert [memory[p].default for p in ("name", "create", "size",
                                        "track")] == [None, False, 0, True]
    assert memory["track"].kind is inspect.Parameter.KEYWORD_ONLY
    assert repr(memory["mode"].default) == "0o600"
    d = inspect.signature(SharedDict).parameters
    assert list(d) == ["name", "create", "size", "read_only", "undo_size",
                       "max_processes", "timeout", "mode"]
    for params in (memory, d):
        assert all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   for p in params.values())


@pytest.mark.parametrize("track", [True, False])
def test_track_is_accepted_and_changes_nothing(name, track):
    with SharedMemory(name, create=True, size=8, track=track) as shr:
        with SharedMemory(name, track=track) as other:
            other[0] = 3
        assert shr[0] == 3 and os.path.exists(f"{SHM}/{name}")
    assert not os.path.exists(f"{SHM}/{name}")


def test_no_resource_tracker_is_started():
    code = ("from multiprocessing import resource_tracker as rt\n"
            "from shmtxn import SharedMemory\n"
            "with SharedMemory(create=True, size=8, track=True) as s:\n"
            "    SharedMemory(s.name, track=True).close()\n"
            "print(rt._resource_tracker._pid)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         timeout=60, check=True).stdout
    assert out == b"None\n"


def test_a_size_that_is_not_whole_items(name):
    with SharedMemory(name, create=True, size=10) as shr:
        assert (len(shr), shr.size, len(shr.buf), shr.itemsize) == (1, 10,
                                                                     10, 8)
        shr[0] = -5
        shr.buf[8:10] = b"xy"
        assert shr[:] == [-5] and list(shr) == [-5]
        with pytest.raises(IndexError):
            shr[1]
        with SharedMemory(name) as other:
            assert (len(other), other.size, other.shape) == (1, 10, (1,))
            assert bytes(other.buf[8:]) == b"xy"
        with pytest.raises(ValueError):
            with shr.txn() as t:
                assert len(t.buf) == 10
                t.buf[8:10] = b"zz"
                t[0] = 1
                raise ValueError
        assert bytes(shr.buf[8:]) == b"xy" and shr[0] == -5  # rolled back
        assert segment_info(name)["state"] == "ready"


def test_a_size_below_one_item(name):
    with SharedMemory(name, create=True, size=3) as shr:
        assert (len(shr), shr.size, len(shr.buf), shr.shape) == (0, 3, 3,
                                                                 (0,))
        shr.buf[:3] = b"abc"
        assert shr[:] == []
        with pytest.raises(IndexError):
            shr[0]
        with SharedMemory(name) as other:
            assert bytes(other.buf) == b"abc" and len(other) == 0


def test_a_size_that_is_not_whole_items_with_numpy(name):
    np = pytest.importorskip("numpy")
    with SharedMemory(name, create=True, size=20) as shr:
        shr[0:2] = [1, 2]
        a = shr.ndarray()
        assert a.shape == (2,) and a.tolist() == [1, 2]
        del a


@pytest.mark.parametrize("kwargs", [dict(size=10, format="q"),
                                    dict(size=10, format="d"),
                                    dict(size=12, shape=(1,)),
                                    dict(size=10, format="i", shape=(2,))])
def test_format_or_shape_given_keeps_whole_items(name, kwargs):
    with pytest.raises(ValueError):
        SharedMemory(name, create=True, **kwargs)
    assert not os.path.exists(f"{SHM}/{name}")


@pytest.mark.parametrize("items,ok", [(2, True), (1, False), (3, False)])
def test_the_stored_shape_must_fill_the_data_but_for_a_short_tail(
        name, items, ok):
    import struct

    from helpers import patch_header
    shr = SharedMemory(name, create=True, size=17)  # 2 items, 1 byte more
    shr.close()
    patch_header(name, 104, struct.pack("Q", items))  # shape[0]
    if ok:
        with SharedMemory(name) as again:
            assert len(again) == 2 and again.size == 17
    else:
        with pytest.raises(shmtxn.CorruptSegmentError, match="shape"):
            SharedMemory(name)
    shr.unlink()
