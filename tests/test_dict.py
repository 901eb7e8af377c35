"""SharedDict: the mapping API, keys and values, transactions, space,
corruption, and several processes (fork and spawn) at once."""

import collections.abc
import math
import multiprocessing
import pickle
import random
import struct

import pytest

import helpers
import shmtxn
from redis_server import attach, backend, make_dict, spec  # noqa: F401
from shmtxn import SharedDict, SharedMemory


@pytest.fixture
def d(make_dict):
    """A new dict, on each backend (shared memory and Redis)."""
    return make_dict(size=1 << 20)


@pytest.fixture
def shm_d(name):
    """A new dict in shared memory (for what only a segment has)."""
    with SharedDict(name, create=True, size=1 << 20) as d:
        yield d


# ---- the mapping API ----

def test_is_a_full_mutable_mapping(d):
    assert isinstance(d, collections.abc.MutableMapping)
    d["a"] = 1
    d.update({"b": 2}, c=3)
    assert d.setdefault("a", 99) == 1 and d.setdefault("z", 26) == 26
    assert d.pop("z") == 26 and d.pop("z", None) is None
    with pytest.raises(KeyError):
        d.pop("z")
    with pytest.raises(KeyError):
        d["missing"]
    with pytest.raises(KeyError):
        del d["missing"]
    assert d.get("missing") is None and d.get("missing", 5) == 5
    assert "a" in d and "missing" not in d and len(d) == 3
    assert d == {"a": 1, "b": 2, "c": 3} and d != {"a": 1}
    assert list(d) == list(d.keys()) == ["a", "b", "c"]
    assert list(d.values()) == [1, 2, 3]
    assert list(d.items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert d.keys() & {"a", "q"} == {"a"}
    assert ("a", 1) in d.items() and 3 in d.values()
    copy = d.copy()
    assert type(copy) is dict and copy == {"a": 1, "b": 2, "c": 3}
    assert d.popitem() == ("c", 3)  # last inserted, as dict does
    d.clear()
    assert len(d) == 0 and list(d) == [] and d == {}
    assert repr(d).startswith(f"<SharedDict {d.name!r} keys=0")


def test_iteration_follows_insertion_order_like_dict(d):
    model = {}
    rng = random.Random(5)
    for step in range(3000):
        k = rng.randrange(200)
        if rng.random() < 0.3 and k in model:
            del d[k], model[k]
        else:
            d[k] = model[k] = step
    assert list(d.items()) == list(model.items())
    if isinstance(d, SharedDict):
        assert d.stats()["rebuilds"] > 0


def test_equal_numbers_are_one_key_and_keep_their_first_type(d):
    d[1] = "int"
    d[1.0] = "float"
    d[True] = "bool"
    assert len(d) == 1 and d[1] == "bool" and list(d) == [1]
    assert type(list(d)[0]) is int
    d[2.0] = "two"
    assert d[2] == "two" and type(list(d)[1]) is float
    d[False] = 0
    assert d[0] == 0 and d[0.0] == 0 and d[-0.0] == 0
    assert list(d)[2] is False
    d[(1, "x")] = "t"
    assert d[(1.0, "x")] == d[(True, "x")] == "t"
    assert 1.5 not in d and "1" not in d and b"1" not in d


def test_every_allowed_key_type_round_trips(d):
    keys = ["", "é∂😀", "a\udc80b", b"", b"\x00\xff", 0, -1, 2**63 - 1,
            -2**63, 2**64, -2**200, 1.5, -0.25, math.inf, -math.inf, None,
            True, (), (1, "a", b"b", None, (2.5, ())), ("x",) * 20]
    for i, k in enumerate(keys):
        d[k] = i
    for i, k in enumerate(keys):
        assert d[k] == i
    assert list(d) == keys
    d[math.nan] = "nan"  # every NaN is one key here
    assert d[float("nan")] == "nan"


@pytest.mark.parametrize("key", [[1], {"a": 1}, {1}, bytearray(b"x"),
                                 object(), 1j, ([1],)])
def test_other_key_types_raise_typeerror_listing_the_allowed(d, key):
    with pytest.raises(TypeError, match="str, bytes, int, float, bool, "
                                        "None or tuples"):
        d[key] = 1
    with pytest.raises(TypeError):
        d[key]
    with d.txn() as t:
        with pytest.raises(TypeError):
            t[key] = 1
    assert len(d) == 0


class MyInt(int):
    pass


def test_values_keep_their_exact_type(d):
    values = [b"raw", "text", "a\udc80", 7, -2**63, 2**70, 0.5, math.inf,
              True, False, None, [1, {"x": (2, 3)}], MyInt(5),
              bytearray(b"ba"), {1, 2}, b"\x00" * 10000]
    for i, v in enumerate(values):
        d[i] = v
    for i, v in enumerate(values):
        got = d[i]
        assert got == v and type(got) is type(v)


def test_unpicklable_value_raises_before_anything_changes(d):
    d["k"] = "old"
    with pytest.raises(TypeError, match="picklable"):
        d["k"] = lambda: 1
    assert d["k"] == "old" and len(d) == 1
    with d.txn() as t:
        t["other"] = 1
        with pytest.raises(TypeError):
            t["k"] = (x for x in [])
        assert t["k"] == "old"
    assert d == {"k": "old", "other": 1}


def test_mutating_a_value_read_out_does_not_write_back(d):
    d["list"] = [1]
    d["list"].append(2)
    assert d["list"] == [1]
    with d.txn() as t:  # the documented idiom
        t["list"] = t["list"] + [2]
    assert d["list"] == [1, 2]


# ---- transactions ----

def test_txn_commits_atomically_and_rolls_back_on_exception(d):
    d["n"] = 0
    with d.txn() as t:
        t["n"] = t.get("n", 0) + 1
        t["m"] = "new"
        del t["n"]
        t["n"] = 5
    assert d == {"m": "new", "n": 5}
    with pytest.raises(ZeroDivisionError):
        with d.txn() as t:
            t["n"] = 6
            t.clear()
            t.update({f"k{i}": i for i in range(500)})  # grows the table
            1 / 0
    assert d == {"m": "new", "n": 5}
    d.verify()


def test_abort_and_ended_txn(d):
    with d.txn() as t:
        t["x"] = 1
        t.abort()
        assert not t.active
        with pytest.raises(shmtxn.TransactionClosedError):
            t["x"]
    assert "x" not in d
    t = d.txn()
    with t:
        t.commit()
    with pytest.raises(shmtxn.TransactionClosedError):
        with t:
            pass


def test_read_txn_is_a_consistent_read_only_mapping(d):
    d.update(a=1, b=2)
    with d.txn(write=False) as t:
        assert isinstance(t, collections.abc.Mapping)
        assert dict(t.items()) == {"a": 1, "b": 2} and len(t) == 2
        assert t.copy() == {"a": 1, "b": 2} and "a" in t
        with pytest.raises(shmtxn.ReadOnlyError):
            t["c"] = 3
        with pytest.raises(shmtxn.ReadOnlyError):
            del t["a"]


def test_nested_txn_is_an_error_not_a_deadlock(d):
    with d.txn():
        with pytest.raises(shmtxn.NestedTransactionError):
            with d.txn():
                pass
        with pytest.raises(shmtxn.NestedTransactionError):
            d["x"] = 1


def test_read_only_handle(d):
    d["k"] = 1
    with attach(d, read_only=True) as ro:
        assert ro["k"] == 1 and ro.read_only
        with pytest.raises(shmtxn.ReadOnlyError):
            ro["k"] = 2
        with pytest.raises(shmtxn.ReadOnlyError):
            ro.txn(write=True)
        with ro.txn() as t:
            assert not t.write and t["k"] == 1


def test_lifetimes_and_wrong_kind_of_segment(name):
    with SharedDict(name, create=True, size=65536) as d:
        d["x"] = 1
        other = SharedDict(name)
        assert other["x"] == 1 and not other.owner
        other.close()
        other.close()
        with pytest.raises(shmtxn.SegmentClosedError, match="SharedDict"):
            other["x"]
        with pytest.raises(shmtxn.IncompatibleSegmentError,
                           match="open it with SharedDict"):
            SharedMemory(name)
        with pytest.raises(shmtxn.IncompatibleSegmentError):
            SharedDict(name, size=4096 * 3)
    with pytest.raises(shmtxn.SegmentNotFoundError):
        SharedDict(name)
    with SharedMemory(name, create=True, size=80):
        with pytest.raises(shmtxn.IncompatibleSegmentError,
                           match="open it with SharedMemory"):
            SharedDict(name)
    with pytest.raises(ValueError, match="at least"):
        SharedDict(name, create=True, size=100)


def test_stats(shm_d):
    s = shm_d.stats()
    assert s["count"] == 0 and s["free_bytes"] == 0
    for i in range(100):
        shm_d[i] = b"x" * 100
    for i in range(50):
        del shm_d[i]
    s = shm_d.stats()
    assert s["count"] == 50 and s["table_capacity"] >= 50
    assert s["free_bytes"] > 0 and 0 < s["fragmentation"] < 1
    assert s["heap_used"] <= s["heap_reserved"] <= s["heap_size"] + 4096
    assert shm_d.info()["dict"]["count"] == 50


# ---- space ----

def fill_until_full(d, prefix):
    n = 0
    with pytest.raises(shmtxn.SegmentFullError) as err:
        while True:
            d[f"{prefix}{n}"] = b"v" * 200
            n += 1
    return n, str(err.value)


def test_full_dict_raises_with_numbers_then_reuses_freed_space(name):
    with SharedDict(name, create=True, size=256 * 1024) as d:
        n, message = fill_until_full(d, "a")
        assert "size=" in message and "heap" in message and n > 500
        assert len(d) == n and d[f"a{n - 1}"] == b"v" * 200
        d.verify()
        for i in range(n):
            del d[f"a{i}"]
        assert len(d) == 0
        again, _ = fill_until_full(d, "b")
        assert again >= n * 0.9, "freed blocks were not reused"
        d.verify()


def test_full_inside_a_txn_rolls_the_whole_txn_back(name):
    with SharedDict(name, create=True, size=128 * 1024) as d:
        d["keep"] = 1
        with pytest.raises(shmtxn.SegmentFullError):
            with d.txn() as t:
                t["keep"] = 2
                for i in range(10**6):
                    t[i] = b"x" * 300
        assert d == {"keep": 1}
        d.verify()


def test_huge_single_value(name):
    with SharedDict(name, create=True, size=8 << 20) as d:
        big = bytes(range(256)) * (5 << 12)  # 5 MiB
        d["big"] = big
        assert d["big"] == big
        with pytest.raises(shmtxn.SegmentFullError, match="size="):
            d["bigger"] = b"x" * (9 << 20)
        assert list(d) == ["big"]
        del d["big"]
        d["again"] = big  # the freed block is reused
        assert d.stats()["heap_used"] < 7 << 20


def test_too_large_txn_rolls_back_with_advice(name):
    with SharedDict(name, create=True, size=4 << 20,
                    undo_size=16384) as d:
        for i in range(1000):
            d[i] = i
        with pytest.raises(shmtxn.TransactionTooLarge, match="undo"):
            with d.txn() as t:
                for i in range(1000):
                    del t[i]
        assert len(d) == 1000 and d[999] == 999


# ---- corruption ----

def poke(d, offset, fmt, *values):
    with open(f"/dev/shm/{d.name}", "r+b") as f:
        f.seek(d.info()["data_off"] + offset)
        f.write(struct.pack(fmt, *values))


def peek(d, offset, fmt):
    with open(f"/dev/shm/{d.name}", "rb") as f:
        f.seek(d.info()["data_off"] + offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))


def test_corrupt_record_raises_corrupt_segment_error(shm_d):
    shm_d["a"] = b"x" * 50
    shm_d["b"] = 2
    entries_off, = peek(shm_d, 32, "<Q")
    _, record = peek(shm_d, entries_off, "<QQ")
    poke(shm_d, record, "<Q", 1 << 40)  # the block claims 1 TiB
    with pytest.raises(shmtxn.CorruptSegmentError, match="corrupt"):
        shm_d["a"]
    with pytest.raises(shmtxn.CorruptSegmentError):
        shm_d.verify()
    with pytest.raises(shmtxn.CorruptSegmentError):
        list(shm_d.items())
    assert shm_d["b"] == 2  # other keys still answer


@pytest.mark.parametrize("offset,fmt,value,lookups_see_it", [
    (24, "<Q", 3, True),            # index capacity not a power of two
    (16, "<Q", 1 << 50, True),      # index outside the heap
    (104, "<Q", 1 << 40, False),    # entries used beyond capacity
    (96, "<Q", 1 << 40, False),     # count beyond the entries used
    (0, "<Q", 0, True),             # dict magic gone
])
def test_corrupt_table_header_raises(shm_d, offset, fmt, value, lookups_see_it):
    shm_d["a"] = 1
    poke(shm_d, offset, fmt, value)
    ops = [lambda: len(shm_d), lambda: shm_d.__setitem__("b", 1), lambda: list(shm_d),
           shm_d.verify]
    for op in ops + [lambda: shm_d["a"]] * lookups_see_it:
        with pytest.raises(shmtxn.CorruptSegmentError):
            op()
    if not lookups_see_it:
        # a lookup reads only the table's geometry (line 0 of the dict
        # header), which is intact: it still finds the key
        assert shm_d["a"] == 1


def test_corrupt_on_attach_is_caught(shm_d):
    poke(shm_d, 0, "<Q", 0)
    with pytest.raises(shmtxn.CorruptSegmentError):
        SharedDict(shm_d.name)


def test_siphash_is_cpython_siphash13():
    # CPython hashes bytes with SipHash-1-3; with PYTHONHASHSEED=0 its key
    # is zero.  Known values computed that way.
    assert shmtxn._core._siphash(0, 0, b"hello") == \
        (-2096571579003691106) % 2**64
    assert shmtxn._core._siphash(0, 0, b"12345678") == 3785724242978802311


# ---- several processes ----

def counters_run(d, ctx, workers, rounds):
    keys = ["x", "y", "z"]
    name = spec(d)
    with d:
        d.update(a=10**6, b=0)
        parent, child = ctx.Pipe()
        reader = ctx.Process(target=helpers.dict_invariant_reader,
                             args=(name, 10**6, child))
        reader.start()
        # a bound, not a sync: a reader that died must fail the test, not
        # leave it waiting forever
        assert parent.poll(120), f"the reader died: {reader.exitcode}"
        assert parent.recv() == "ready"
        procs = [ctx.Process(target=helpers.dict_counter_worker,
                             args=(name, keys, rounds))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        parent.send("stop")
        assert parent.poll(120), f"the reader died: {reader.exitcode}"
        checks, bad = parent.recv()
        reader.join()
        total = workers * rounds
        assert sum(d.get(k, 0) for k in keys) == total
        assert d["b"] == total and d["a"] == 10**6 - total
        assert checks > 0 and bad == 0
        assert all(p.exitcode == 0 for p in procs + [reader])


def test_read_modify_write_counters_are_exact_fork(d):
    counters_run(d, multiprocessing.get_context("fork"), 3, 400)


def test_read_modify_write_counters_are_exact_spawn(d):
    counters_run(d, multiprocessing.get_context("spawn"), 2, 200)


def test_handle_pickles_into_a_pool(d):
    with d:
        d["seed"] = 1
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(2) as pool:
            got = pool.map(pickle.loads, [pickle.dumps(d)] * 2)
        assert all(g.name == d.name for g in got)
        assert pickle.loads(pickle.dumps(d))["seed"] == 1


def test_cli_info_and_check_know_dicts(shm_d, capsys):
    import json
    from shmtxn import admin, cli
    shm_d.update(a=1, b=[2])
    assert cli.main(["info", shm_d.name, "--items", "5", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "dict" and info["dict"]["count"] == 2
    assert info["first_items"] == [["'a'", "1"], ["'b'", "[2]"]]
    assert admin.check(shm_d.name)["problems"] == []
    entries_off, = peek(shm_d, 32, "<Q")
    # a hash that does not match its key
    poke(shm_d, entries_off, "<Q", 12345)
    problems = admin.check(shm_d.name)["problems"]
    assert problems and "hash" in problems[0]
    assert cli.main(["check", shm_d.name]) == 1
