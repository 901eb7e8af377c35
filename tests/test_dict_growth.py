"""A SharedDict has no fixed ceiling by default: it grows into a sparse
region as large as the file system holding segments, other processes see
the new space without reopening, and only what it grew into is backed."""

import multiprocessing
import os

import pytest

import helpers

import shmtxn
from shmtxn import SharedDict, admin
from test_capacity import run_in_small_tmpfs

MB = 1 << 20
WAIT = 60  # seconds any step may take before the test fails


def shm_total():
    v = os.statvfs(admin.SHM_DIR)
    return v.f_blocks * v.f_frsize


def value(i, size=MB):
    return bytes([i % 251]) * size


def test_a_default_dict_takes_1000_values_of_1_mb(name):
    if shm_total() < 3 << 30:
        pytest.skip("the segment directory holds less than 3 GiB")
    with SharedDict(name, create=True) as d:
        assert d.size >= 1 << 30
        for i in range(1000):
            d[i] = value(i)
        assert len(d) == 1000
        assert d[0] == value(0) and d[999] == value(999)
        assert admin.segment_info(name)["used_bytes"] > 1000 * MB
        d.verify()
        d.clear()


def test_a_new_default_dict_backs_only_what_it_uses(name):
    with SharedDict(name, create=True) as d:
        d["k"] = "v"
        info = admin.segment_info(name)
        assert info["used_bytes"] < 4 * MB
        assert info["file_size"] > 64 * MB or shm_total() <= 64 * MB


def test_size_is_still_a_cap(name):
    with SharedDict(name, create=True, size=8 * MB) as d:
        with pytest.raises(shmtxn.SegmentFullError):
            for i in range(100):
                d[i] = value(i)
        assert 0 < len(d) < 8
        d.verify()


def read_while_it_grows(name, conn):
    """Attach while the dict is small, then read every value the writer
    announces under "n" until it announces `done`; report what was read."""
    d = SharedDict(name)
    conn.send("attached")
    checked = 0
    while True:
        done = d.get("done")  # before "n": once done, n is final
        n = d.get("n", 0)
        for i in range(checked, n):
            if d[i] != value(i):
                conn.send(f"wrong value {i}")
                return
        checked = n
        if done:
            conn.send(checked)
            return


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_reader_sees_the_dict_grow_past_64_mib(name, method):
    ctx = multiprocessing.get_context(method)
    with SharedDict(name, create=True) as d:
        if d.size < 256 * MB:
            pytest.skip("the segment directory holds less than 256 MiB")
        parent, child = ctx.Pipe()
        p = ctx.Process(target=read_while_it_grows, args=(name, child),
                        daemon=True)
        p.start()
        try:
            assert parent.poll(WAIT) and parent.recv() == "attached"
            for i in range(100):  # 100 MiB: past the old 64 MiB ceiling
                with d.txn() as t:
                    t[i] = value(i)
                    t["n"] = i + 1
            d["done"] = True
            assert parent.poll(WAIT), "the reader did not finish"
            assert parent.recv() == 100
            assert d.stats()["heap_reserved"] > 100 * MB
        finally:
            exitcode = helpers.join_or_kill(p, WAIT)
        assert exitcode == 0


SMALL_TMPFS_DICT = r"""
import json, os
import shmtxn
from shmtxn import SharedDict

out = {}
d = SharedDict("grows", create=True)
out["size"] = d.size
n = 0
try:
    while True:
        d[n] = bytes([n]) * (1 << 20)
        n += 1
except shmtxn.SegmentFullError as e:
    out["error"] = str(e)
out["stored"] = n
out["intact"] = all(d[i] == bytes([i]) * (1 << 20) for i in range(n))
d.verify()
del d[0]
d["after"] = b"x" * 1000
out["after"] = d["after"] == b"x" * 1000
d.close(); d.unlink()
out["left"] = os.listdir(os.environ["SHMTXN_SHM_DIR"])
print(json.dumps(out))
"""


def test_a_default_dict_grows_until_its_tmpfs_is_full(tmp_path):
    out = run_in_small_tmpfs(tmp_path, SMALL_TMPFS_DICT)
    assert out["size"] == 64 * MB  # at least 64 MiB of address space
    assert 3 <= out["stored"] < 8, out
    assert "could not grow its heap" in out["error"], out
    assert "bytes free" in out["error"], out
    assert out["intact"] and out["after"]
    assert out["left"] == []
