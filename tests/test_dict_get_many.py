"""SharedDict.get_many(keys, default=None): many keys in one call, all read
in one consistent snapshot (DESIGN §2)."""

import multiprocessing

import pytest

import helpers

import shmtxn
from shmtxn import SharedDict

CTX = multiprocessing.get_context("fork")
WAIT = 60


def test_values_and_defaults_in_key_order(name):
    with SharedDict(name, create=True) as d:
        d.update({"a": 1, ("t", 2): [2], b"c": b"3", 4.0: None})
        assert d.get_many(["a", "zz", ("t", 2), b"c", 4]) == [
            1, None, [2], b"3", None]
        assert d.get_many(iter(["zz", "a"]), default=-1) == [-1, 1]
        assert d.get_many([]) == []
        assert d.get_many(["a"] * 3) == [1, 1, 1]


def test_bad_keys_raise_before_anything_is_read(name):
    with SharedDict(name, create=True) as d:
        d["a"] = 1
        with pytest.raises(TypeError, match="keys must be"):
            d.get_many(["a", ["unhashable"]])
        with pytest.raises(TypeError, match="iterable of keys"):
            d.get_many(5)
        # no read txn was left open: a write goes through at once
        with d.txn(timeout=1) as t:
            t["a"] = 2
        assert d.get_many(["a"]) == [2]
    with pytest.raises(shmtxn.SegmentClosedError):
        d.get_many(["a"])


def test_inside_a_txn_it_sees_the_txns_own_writes(name):
    with SharedDict(name, create=True) as d:
        d["a"] = 1
        with d.txn() as t:
            t["a"] = 10
            t["b"] = 20
            assert t.get_many(["a", "b", "c"], 0) == [10, 20, 0]
        with d.txn(write=False) as t:
            assert t.get_many(["a", "b"]) == [10, 20]
        t2 = d.txn()
        with pytest.raises(shmtxn.TransactionClosedError):
            t2.get_many(["a"])


def keep_pairs_equal(name, conn):
    """Child: set "x" and "y" to the same new value in one txn, again and
    again until told to stop; the invariant x == y holds in every
    committed state.  Sends the last value written."""
    d = SharedDict(name)
    conn.send("started")
    i = 0
    while not conn.poll():
        with d.txn() as t:
            t["x"] = i
            t["y"] = i
        i += 1
    conn.send(i - 1)


def test_one_snapshot_for_all_keys_beside_a_writer(name):
    """Lock-free get_many beside a writer: never a torn pair, and it sees
    the writer's states go by (it is not stuck behind the lock)."""
    with SharedDict(name, create=True) as d:
        d.update({"x": -1, "y": -1})
        parent, child = CTX.Pipe()
        p = CTX.Process(target=keep_pairs_equal, args=(name, child),
                        daemon=True)
        p.start()
        try:
            assert parent.poll(WAIT) and parent.recv() == "started"
            seen = set()
            for _ in range(10 ** 7):
                x, y = d.get_many(["x", "y"])
                assert x == y, (x, y)
                seen.add(x)
                if len(seen) > 20:
                    break
            parent.send("stop")
            assert parent.poll(WAIT)
            last = parent.recv()
            assert d.get_many(["x", "y"]) == [last, last]
            assert len(seen) > 20, "the writer never showed a new state"
        finally:
            exitcode = helpers.join_or_kill(p, WAIT)
        assert exitcode == 0
