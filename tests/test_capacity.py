"""No sizing cliffs in the undo log: it grows on demand and gives its
pages back.

- a whole-array write txn on a 300 MiB array commits at default settings,
  and rolls back on an exception and on SIGKILL of the writer;
- the pages a big txn reserved are given back when it ends (st_blocks);
- every step of reserving and giving back undo space survives SIGKILL
  (SHMTXN_CRASH_AT, the engine's stx_crash_point);
- on a small private tmpfs (SHMTXN_SHM_DIR), a txn that does not fit fails
  cleanly with the numbers and leaves nothing behind, and so does creating
  a segment that does not fit.
"""

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

# these tests fill segments with numpy arrays (and so do their children)
np = pytest.importorskip("numpy")

import helpers
import shmtxn
from shmtxn import SharedMemory

CTX = multiprocessing.get_context("fork")
UNDO_BASE = 64 << 10  # docs/format.md: undo space kept between txns
PAGE = 4096


def allocated(name, directory="/dev/shm"):
    """Bytes of the segment's file backed by pages."""
    return os.stat(os.path.join(directory, name)).st_blocks * 512


def at_rest(shr):
    """Bytes a segment holds between txns: header, slots, the undo base
    and the data, each page rounded."""
    info = shr.info()
    data = -(-info["data_size"] // PAGE) * PAGE
    return info["undo_off"] + min(UNDO_BASE, info["undo_size"]) + data


def small_txn(shr):
    """A write txn that logs one item: it gives back the undo pages an
    earlier, bigger txn kept."""
    with shr.txn() as t:
        t[0] = t[0]


# ------------------------------------------------------- a 300 MiB array

N_BIG = (300 << 20) // 8


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 300 MiB float64 array segment holding 0, 1, 2, ... (committed by
    one whole-array txn at default settings) and that content."""
    import conftest
    name = f"{conftest.RUN_PREFIX}big"
    src = np.arange(N_BIG, dtype="d")
    shr = SharedMemory(name, create=True, shape=(N_BIG,), format="d")
    try:
        with shr.txn() as t:
            np.copyto(t.ndarray(), src)
        yield shr, src
    finally:
        shr.close()
        shr.unlink()


def test_a_whole_array_txn_on_300_mib_commits_at_default_settings(big):
    shr, src = big
    with shr.txn(write=False) as t:
        assert np.array_equal(t.ndarray(), src)
    info = shr.info()
    assert info["commits"] == 1 and info["undo_used"] == 0
    # the 300 MiB the txn logged stay for the next big txn, and go back
    # with the next smaller one
    assert allocated(shr.name) > at_rest(shr) + (299 << 20)
    assert shr.info()["undo_reserved"] > 300 << 20
    small_txn(shr)
    assert allocated(shr.name) <= at_rest(shr)
    assert shr.info()["undo_reserved"] == UNDO_BASE


def test_a_whole_array_txn_rolls_back_on_exception(big):
    shr, src = big
    with pytest.raises(KeyError):
        with shr.txn() as t:
            t.ndarray()[:] = 7.0
            assert allocated(shr.name) > 2 * (300 << 20)  # data + log
            raise KeyError("boom")
    with shr.txn(write=False) as t:
        assert np.array_equal(t.ndarray(), src)
    small_txn(shr)
    assert allocated(shr.name) <= at_rest(shr)


def write_whole_array_and_wait(name, conn):
    """Child: fill the array with 9.0 inside a txn, say so, then hang."""
    shr = SharedMemory(name)
    with shr.txn() as t:
        t.ndarray()[:] = 9.0
        conn.send("written")
        conn.recv()  # killed here


def test_a_whole_array_txn_rolls_back_when_its_writer_is_killed(big):
    shr, src = big
    recoveries = shr.info()["recoveries"]
    parent, child = CTX.Pipe()
    p = CTX.Process(target=write_whole_array_and_wait,
                    args=(shr.name, child))
    p.start()
    assert parent.recv() == "written"
    assert shr.info()["undo_used"] > 300 << 20
    helpers.kill(p)
    with shr.txn(write=False, timeout=30) as t:  # recovers the dead writer
        assert np.array_equal(t.ndarray(), src)
    info = shr.info()
    assert info["recoveries"] == recoveries + 1 and info["undo_used"] == 0
    assert allocated(shr.name) <= at_rest(shr)


# ------------------------------------------------------------- the cap

def test_undo_size_counts_old_bytes(name):
    n = 1 << 17
    with SharedMemory(name, create=True, shape=(n,), format="d",
                      undo_size=8 * n) as shr:
        with shr.txn() as t:
            t.ndarray()[:] = 1.0  # one record of exactly undo_size bytes
        assert shr[n - 1] == 1.0


def test_a_txn_past_its_cap_says_how_much_it_needed(name):
    with SharedMemory(name, create=True, size=8 * 10000,
                      undo_size=4096) as shr:
        with pytest.raises(shmtxn.TransactionTooLarge) as err:
            with shr.txn() as t:
                t[0:10000] = [5] * 10000
        assert "80024 bytes" in str(err.value)
        assert "8192-byte cap" in str(err.value)
        assert shr[0:10000] == [0] * 10000


def test_many_small_writes_fit_the_default_log(name):
    """Each item written alone, three times over: past a copy of the data
    the whole region is logged once, so the log stays under 2x."""
    n = 4096
    with SharedMemory(name, create=True, size=n, format="B") as shr:
        with pytest.raises(KeyError):
            with shr.txn() as t:
                for rnd in range(3):
                    for i in range(n):
                        t[i] = (i + rnd) % 256
                assert shr.info()["undo_used"] <= 2 * n + 48
                raise KeyError
        assert shr[0:n] == [0] * n
        with shr.txn() as t:
            for i in range(n):
                t[i] = i % 256
        assert shr[0:n] == [i % 256 for i in range(n)]


# --------------------------------------------------------- crash points

MIB8 = (8 << 20) // 8


def run_crashing(point, code):
    env = dict(os.environ, SHMTXN_CRASH_AT=point)
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          timeout=120, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


# a big txn, then a small one whose end gives the big one's pages back
BIG_TXN = ("import numpy as np\n"
           "from shmtxn import SharedMemory\n"
           "s = SharedMemory({name!r})\n"
           "with s.txn() as t:\n"
           "    t.ndarray()[:] = 9\n"
           "with s.txn() as t:\n"
           "    t[0] = t[0]\n")


@pytest.mark.parametrize("point,committed", [
    ("undo:after_fallocate", False),   # pages reserved, not counted
    ("undo:after_reserve", False),     # counted, no record yet
    ("write:after_whole_region", False),
    ("undo:after_lower", True),        # committed, count lowered, no punch
    ("undo:after_punch", True),        # given back, still holding the lock
])
def test_undo_space_steps_survive_sigkill(name, point, committed):
    with SharedMemory(name, create=True, shape=(MIB8,), format="q") as shr:
        shr[0:3] = [1, 2, 3]  # reserves the base, which stays
        rest = allocated(name)
        run_crashing(point, BIG_TXN.format(name=name))
        with shr.txn(timeout=30) as t:  # recovers the dead writer
            values = t[0:3]
            last = t[MIB8 - 1]
        assert values == ([9, 9, 9] if committed else [1, 2, 3])
        assert last == (9 if committed else 0)
        info = shr.info()
        assert info["recoveries"] == 1 and info["undo_used"] == 0
        assert allocated(name) <= rest
        # and the log grows again as before, and shrinks after a small txn
        with shr.txn() as t:
            t.ndarray()[:] = 4
        assert shr[MIB8 - 1] == 4 and allocated(name) > rest
        small_txn(shr)
        assert allocated(name) <= rest


def hold_big_write_txn(name, conn):
    """Child: write the whole array inside a txn, say so, then hang."""
    shr = SharedMemory(name)
    with shr.txn() as t:
        t.ndarray()[:] = 9
        conn.send("written")
        conn.recv()


def test_a_recoverer_killed_after_giving_back_space(name):
    """A writer dies mid-txn; the process recovering it dies right after
    giving back the undo space; the next one finishes the recovery."""
    with SharedMemory(name, create=True, shape=(MIB8,), format="q") as shr:
        shr[0:3] = [1, 2, 3]
        rest = allocated(name)
        parent, child = CTX.Pipe()
        p = CTX.Process(target=hold_big_write_txn, args=(name, child))
        p.start()
        assert parent.recv() == "written"
        helpers.kill(p)
        run_crashing("recover:after_shrink", (
            "from shmtxn import SharedMemory\n"
            f"s = SharedMemory({name!r})\n"
            "with s.txn(timeout=30) as t:\n"
            "    pass\n"))
        with shr.txn(timeout=30) as t:
            assert t[0:3] == [1, 2, 3] and t[MIB8 - 1] == 0
        # the killed recoverer died before counting its recovery
        assert shr.info()["recoveries"] == 1
        assert allocated(name) <= rest


# ------------------------------------------- another segment directory

def test_segments_live_in_shmtxn_shm_dir(tmp_path):
    """SHMTXN_SHM_DIR moves segments (engine), `shmtxn ls` and admin."""
    code = (
        "import os, json\n"
        "from shmtxn import SharedMemory, admin\n"
        "s = SharedMemory('capdir', create=True, size=80)\n"
        "s[3] = 7\n"
        "a = SharedMemory('capdir')\n"
        "listed = [i['name'] for i in admin.list_segments()]\n"
        "print(json.dumps({'files': sorted(os.listdir(os.environ["
        "'SHMTXN_SHM_DIR'])), 'read': a[3], 'listed': listed, "
        "'dir': admin.SHM_DIR}))\n"
        "a.close(); s.close(); s.unlink()\n")
    env = dict(os.environ, SHMTXN_SHM_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, timeout=60,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen == {"files": ["capdir"], "read": 7, "listed": ["capdir"],
                    "dir": str(tmp_path)}
    assert not os.path.exists("/dev/shm/capdir")
    assert os.listdir(tmp_path) == []
    ls = subprocess.run([sys.executable, "-m", "shmtxn", "ls"], env=env,
                        timeout=60, capture_output=True, text=True)
    assert ls.returncode == 0 and str(tmp_path) in ls.stdout


SMALL_TMPFS = r"""
import json, os
import numpy as np
import shmtxn
from shmtxn import SharedMemory

d = os.environ["SHMTXN_SHM_DIR"]
def used():
    v = os.statvfs(d)
    return (v.f_blocks - v.f_bfree) * v.f_frsize
out = {"used_empty": used()}

# 3 MiB of data, its whole-array txn logs 3 MiB more: fits in 8 MiB
s = SharedMemory("fits", create=True, shape=(3 << 17,), format="d")
with s.txn() as t:
    t.ndarray()[:] = 1.5
out["fits"] = float(s[(3 << 17) - 1])
out["fits_file_size"] = os.stat(os.path.join(d, "fits")).st_size
s.close(); s.unlink()

# 5 MiB of data: the txn's 5 MiB of undo log do not fit
s = SharedMemory("big", create=True, shape=(5 << 17,), format="d")
s[0] = 2.0
before = used()
try:
    with s.txn() as t:
        t[1] = 3.0
        t.ndarray()[:] = 4.0
    out["txn"] = "committed"
except shmtxn.SegmentFullError as e:
    out["txn"] = str(e)
out["after"] = [s[0], s[1], s[(5 << 17) - 1]]
out["used_before"], out["used_after"] = before, used()
out["undo_used"] = s.info()["undo_used"]
with s.txn() as t:
    t[1] = 5.0
out["then"] = s[1]
s.close(); s.unlink()

# a segment that does not fit at all
try:
    SharedMemory("huge", create=True, size=16 << 20)
    out["create"] = "created"
except shmtxn.SegmentFullError as e:
    out["create"] = str(e)
out["left"] = sorted(os.listdir(d))
out["used_end"] = used()
print(json.dumps(out))
"""


def run_in_small_tmpfs(tmp_path, code):
    """Run `code` in a private mount namespace with an 8 MiB tmpfs as
    SHMTXN_SHM_DIR; skip if this machine cannot make one."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a private tmpfs")
    mnt = tmp_path / "shm"
    mnt.mkdir()
    script = tmp_path / "run.py"
    script.write_text(code)
    env = dict(os.environ, SHMTXN_SHM_DIR=str(mnt))
    cmd = ["unshare", "-rm", "sh", "-c",
           'mount -t tmpfs -o size=8m,mode=1777 shmtxn-test "$1" || exit 97;'
           ' exec "$2" "$3"', "sh", str(mnt), sys.executable, str(script)]
    proc = subprocess.run(cmd, env=env, timeout=120, capture_output=True,
                          text=True)
    if proc.returncode != 0 and ("unshare" in proc.stderr.split(":")[0]
                                 or proc.returncode == 97):
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_a_full_tmpfs_fails_cleanly_with_the_numbers(tmp_path):
    out = run_in_small_tmpfs(tmp_path, SMALL_TMPFS)
    assert out["fits"] == 1.5
    assert out["fits_file_size"] > 6 << 20  # the sparse undo region
    # the txn that did not fit: rolled back, with needed and free bytes
    msg = out["txn"]
    # t[1]'s record (32 bytes), then the whole array's (24 + 5 MiB)
    assert "needs 5242936 bytes of undo log" in msg, msg
    assert "rolled back" in msg, msg
    free = int(re.search(r"has (\d+) bytes free", msg).group(1))
    assert 0 < free < 5242936
    assert out["after"] == [2.0, 0.0, 0.0]
    assert out["undo_used"] == 0 and out["then"] == 5.0
    assert out["used_after"] <= out["used_before"]
    # creating what does not fit: refused with the numbers, nothing left
    assert "needs" in out["create"] and "free" in out["create"], out
    assert out["left"] == []
    assert out["used_end"] == out["used_empty"]
