"""The Redis backend's own cases: the codec shared with segments, the
writer lease (a client SIGKILLed or SIGSTOPped inside a txn), read txns
holding back commits, a Redis restart, and its errors.  The mapping itself
is tested on both backends by test_dict.py and test_dict_property.py."""

import multiprocessing
import os
import pickle
import signal
import threading

import pytest
import redis

import helpers
import shmtxn
from redis_server import redis_dict  # noqa: F401 (the fixture d uses)
from redis_server import RedisServer, connect, needs_redis, server, unique
from shmtxn import SharedDict, _core, remote


pytestmark = needs_redis


@pytest.fixture
def d(redis_dict):
    return redis_dict


def raw(d, key):
    """The bytes Redis holds for `key`."""
    return d._redis().hget(d._keys[1], _core.encode_key(key)[0])


# ---- the codec is the segment's ----

def test_codec_functions_give_equal_keys_equal_bytes():
    ones = [_core.encode_key(k) for k in (1, 1.0, True)]
    assert len({b for b, _ in ones}) == 1
    assert [_core.decode_key(*e) for e in ones] == [1, 1.0, True]
    assert [type(_core.decode_key(*e)) for e in ones] == [int, float, bool]
    assert _core.decode_key(*_core.encode_key(-0.0)) == 0.0
    for k in ["é\udc80", b"\0", 2**80, None, (1, ("a", 2.5)), -3]:
        assert _core.decode_key(*_core.encode_key(k)) == k
    with pytest.raises(TypeError, match="str, bytes, int"):
        _core.encode_key([1])
    with pytest.raises(ValueError):
        _core.decode_key(b"zz")
    with pytest.raises(ValueError):
        _core.decode_key(b"sa", 9)
    for v in [b"x", "s", 7, 2**70, 0.5, True, None, [1, {"a": 2}]]:
        got = _core.decode_value(_core.encode_value(v))
        assert got == v and type(got) is type(v)
    with pytest.raises(ValueError):
        _core.decode_value(b"")
    with pytest.raises(ValueError):
        _core.decode_value(b"i\x01")  # an int of one byte


def test_values_are_stored_exactly_as_in_a_segment(d, name):
    values = ["text", b"raw", 42, 1.5, None, {"x": [1]}]
    with SharedDict(name, create=True) as shm:
        for i, v in enumerate(values):
            d[i] = shm[i] = v
        for i, v in enumerate(values):
            assert raw(d, i) == _core.encode_value(v)
            assert shm[i] == d[i] == _core.decode_value(raw(d, i))


def test_damaged_value_raises_corrupt_naming_the_dict(d):
    d["k"] = 1
    d["ok"] = 2
    d._redis().hset(d._keys[1], _core.encode_key("k")[0], b"p\x80junk")
    with pytest.raises(shmtxn.CorruptSegmentError, match=d.name) as err:
        d["k"]
    assert err.value.__cause__ is not None
    assert d["ok"] == 2
    d["k"] = 3  # storing replaces it
    assert d["k"] == 3


# ---- opening, lifetimes, errors ----

def test_create_attach_and_unlink():
    name = unique()
    with pytest.raises(shmtxn.SegmentNotFoundError, match=name):
        connect(name)
    with connect(name, create=True) as d:
        assert d.created and d.owner
        with pytest.raises(shmtxn.SegmentExistsError):
            connect(name, create=True)
        other = connect(name, create=None)
        assert not other.created and not other.owner
        d["x"] = 1
        assert other["x"] == 1
        other.close()
        other.close()
        with pytest.raises(shmtxn.SegmentClosedError):
            other["x"]
    with pytest.raises(shmtxn.SegmentNotFoundError):
        connect(name)


def test_unlink_removes_only_the_dict_the_handle_opened():
    name = unique()
    old = connect(name, create=True)
    old.unlink()
    with pytest.raises(shmtxn.SegmentNotFoundError, match="removed"):
        old["x"] = 1
    with connect(name, create=True) as new:
        new["x"] = 1
        old.unlink()  # the old dict is gone: the new one stays
        assert new["x"] == 1
    old.close()


def test_bad_arguments():
    with pytest.raises(ValueError, match="name"):
        SharedDict.connect(server().url, "")
    with pytest.raises(ValueError, match="lease"):
        connect(unique(), create=True, lease=-1)
    with pytest.raises(ValueError, match="timeout"):
        connect(unique(), create=True, timeout=0)
    with pytest.raises(ValueError, match="start with"):
        connect("}" + unique(), create=True)
    with pytest.raises(shmtxn.remote.RemoteUnavailableError):
        SharedDict.connect(f"redis://127.0.0.1:{helpers_free_port()}/0",
                           "x", create=True)


def helpers_free_port():
    import redis_server
    return redis_server.free_port()


def test_read_only_and_txn_arguments(d):
    d["k"] = 1
    with connect(d.name, read_only=True) as ro:
        with pytest.raises(shmtxn.ReadOnlyError):
            ro["k"] = 2
        with pytest.raises(shmtxn.ReadOnlyError):
            ro.txn(write=True)
        with ro.txn() as t:
            assert not t.write and t["k"] == 1
    with pytest.raises(TypeError):
        d.txn(write=1)
    with pytest.raises(TypeError):
        d.txn(timeout="1")
    with pytest.raises(ValueError):
        d.txn(timeout=-1)


def test_txn_belongs_to_its_thread_and_process(d):
    with d.txn() as t:
        t["a"] = 1
        errors = []
        threading.Thread(target=lambda: errors.append(
            pytest.raises(shmtxn.TransactionThreadError, t.get, "a"))).start()
        with pytest.raises(shmtxn.TransactionsOpenError):
            d.close()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                t["b"] = 2
            except shmtxn.TransactionClosedError as e:
                code = 0 if "fork" in str(e) else 2
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert d == {"a": 1}


def test_pickled_handle_reconnects(d):
    d["x"] = [1]
    again = pickle.loads(pickle.dumps(d))
    assert again["x"] == [1] and not again.owner and again.url == d.url
    again.close()
    d.close()
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(d)


def test_stats_and_info(d):
    d.update(a=1, b=2)
    s = d.stats()
    assert s["count"] == 2 and s["version"] == d.version == 1
    assert s["lease_holder"] is None and s["writer_leases"] == 1
    info = d.info()
    assert info["backend"] == "redis" and info["dict"]["count"] == 2
    d.verify()


# ---- the writer lease ----

def hold_txn(spec, lease, conn):
    """Write in a txn, say so, and commit when told; report how it went."""
    with helpers.open_dict(spec, lease=lease) as d:
        try:
            with d.txn() as t:
                t["x"] = "child"
                t["child"] = 1
                conn.send("in txn")
                conn.recv()
            conn.send("committed")
        except shmtxn.Error as e:
            conn.send(type(e).__name__)


def test_sigkilled_client_leaves_nothing_and_its_lease_goes_at_once(d):
    d["x"] = "before"
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    # a lease far longer than the wait allowed below: the next writer gets
    # in because the dead client's connection is gone, not by expiry
    p = ctx.Process(target=hold_txn, args=((d.url, d.name), 600, child))
    p.start()
    assert parent.poll(60) and parent.recv() == "in txn"
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    with d.txn(timeout=30) as t:
        assert t["x"] == "before" and "child" not in t
        t["x"] = "after"
    assert d == {"x": "after"}


def test_sigkilled_at_random_inside_big_txns_leaves_a_whole_round(d):
    import time
    d.update(helpers.dict_round(0, 50))
    ctx = multiprocessing.get_context("fork")
    for delay in (0, 0.003, 0.02):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=helpers.dict_rounds_forever,
                        args=((d.url, d.name), 50, child))
        p.start()
        assert parent.poll(60) and parent.recv() == "in txn"
        time.sleep(delay)  # where the kill lands, not synchronisation
        os.kill(p.pid, signal.SIGKILL)
        p.join()
        with d.txn(timeout=30) as t:
            state = t.copy()
        assert state == helpers.dict_round(state["round"], 50)


def test_stopped_client_past_its_lease_cannot_commit(d):
    d["x"] = "before"
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=hold_txn, args=((d.url, d.name), 0.3, child))
    p.start()
    assert parent.poll(60) and parent.recv() == "in txn"
    os.kill(p.pid, signal.SIGSTOP)
    try:
        # its connection is alive: this waits for the lease to expire
        with d.txn(timeout=30) as t:
            t["x"] = "parent"
    finally:
        os.kill(p.pid, signal.SIGCONT)
    parent.send("commit now")
    assert parent.poll(60) and parent.recv() == "LeaseLostError"
    p.join()
    assert d == {"x": "parent"}


def test_lock_timeout_names_the_dict(d):
    other = connect(d.name)
    held, release = threading.Event(), threading.Event()

    def holder():
        with d.txn() as t:
            t["a"] = 1
            held.set()
            release.wait(60)

    th = threading.Thread(target=holder)
    th.start()
    try:
        assert held.wait(60)
        with pytest.raises(shmtxn.LockTimeout, match=d.name):
            other.txn(timeout=0.05).__enter__()
    finally:
        release.set()
        th.join()
    with other.txn(timeout=30) as t:
        assert t["a"] == 1
    other.close()


def test_a_commit_waits_for_the_read_txns_before_it(d):
    d.update(a=1, b=1)
    other = connect(d.name)
    committed = threading.Event()

    def writer():
        with other.txn() as t:
            t["a"] = 2
            t["b"] = 2
        committed.set()

    with d.txn(write=False) as r:
        assert r["a"] == 1
        th = threading.Thread(target=writer)
        th.start()
        # whenever the writer got here, its commit waits for this txn
        assert r["b"] == 1 and r.copy() == {"a": 1, "b": 1}
        assert not committed.is_set()
    th.join(60)
    assert committed.is_set() and d == {"a": 2, "b": 2}
    other.close()


def hold_read_txn(spec, conn):
    with helpers.open_dict(spec, lease=600) as d:
        with d.txn(write=False) as t:
            t.get("a")
            conn.send("reading")
            conn.recv()


def test_a_killed_readers_registration_goes_at_once(d):
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=hold_read_txn, args=((d.url, d.name), child))
    p.start()
    assert parent.poll(60) and parent.recv() == "reading"
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    done = threading.Event()

    def write():
        d["a"] = 1
        done.set()

    th = threading.Thread(target=write, daemon=True)
    th.start()
    th.join(60)  # a bound (the lease is 600 s), not synchronisation
    assert done.is_set() and d["a"] == 1


def break_the_commit(d, between, applied=True):
    """Make d's next commit run (or not, if not `applied`), then call
    between() and raise as if the connection broke before the reply came;
    later runs go through."""
    script = d._redis().register_script(remote._source("commit"))
    armed = [1]

    def commit(keys, args):
        reply = script(keys=keys, args=args) if applied or not armed \
            else None
        if armed:
            armed.clear()
            run_in_thread(between)
            raise redis.ConnectionError("connection reset (the reply)")
        return reply

    d._scripts["commit"] = commit


def run_in_thread(f):
    """f() in a thread of its own (this one has a txn open), to its end."""
    errors = []
    th = threading.Thread(target=lambda: errors.extend(catch(f)))
    th.start()
    th.join()
    if errors:
        raise errors[0]


def catch(f):
    try:
        f()
    except BaseException as e:  # noqa: B036 -- the caller re-raises it
        return [e]
    return []


def test_a_retried_commit_whose_record_is_forgotten_is_unknown(d):
    """Over 256 commits between a commit and its retry: C no longer holds
    its token, so the retry cannot tell and says so (never "lost")."""
    d["n"] = 0
    other = connect(d.name)

    def many_commits():
        for _ in range(remote._COMMITS_KEPT + 1):
            with other.txn(timeout=30) as t:
                t["m"] = t.get("m", 0) + 1

    break_the_commit(d, many_commits)
    try:
        with pytest.raises(remote.RemoteUnavailableError, match="unknown"):
            with d.txn() as t:
                t["n"] = 1
    finally:
        other.close()
    assert d["n"] == 1 and d["m"] == remote._COMMITS_KEPT + 1


def test_a_retried_commit_that_was_refused_is_lost(d):
    """The first run found the lease gone (and applied nothing); a retry
    after another writer's commit still says LeaseLostError."""
    d["n"] = 0
    other = connect(d.name)

    def take_over():
        d._redis().delete(d._keys[4])  # the lease expires
        with other.txn(timeout=30) as t:
            t["n"] += 100

    break_the_commit(d, take_over, applied=False)
    try:
        with pytest.raises(remote.LeaseLostError):
            with d.txn() as t:
                t["n"] += 1
    finally:
        other.close()
    assert d["n"] == 100


def test_a_redis_that_stops_answering_fails_within_the_timeout():
    """timeout= bounds every reply, not only connecting: a Redis that
    stops answering (SIGSTOP) gives RemoteUnavailableError."""
    srv = RedisServer().start()
    try:
        d = SharedDict.connect(srv.url, unique(), create=True, timeout=0.3)
        d["x"] = 1
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            result = []
            th = threading.Thread(target=lambda: result.extend(
                catch(lambda: d["x"])), daemon=True)
            th.start()
            th.join(30)  # a bound on a hang, not synchronisation
            assert result and isinstance(result[0],
                                         remote.RemoteUnavailableError)
            assert "did not answer within timeout=0.3 s" in str(result[0])
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        d.close()
    finally:
        srv.close()


def test_blocking_waits_fit_inside_a_short_reply_timeout(d):
    """A txn waiting 1 s for the lease blocks in slices shorter than the
    handle's reply timeout (0.2 s): LockTimeout, not a broken connection."""
    other = connect(d.name, timeout=0.2)
    try:
        with d.txn():
            with pytest.raises(shmtxn.LockTimeout):
                run_in_thread(lambda: other.txn(timeout=1).__enter__())
    finally:
        other.close()


# ---- Redis itself fails ----

def test_redis_restart_mid_run_gives_clear_errors_and_no_partial_txn():
    srv = RedisServer().start()
    try:
        d = SharedDict.connect(srv.url, unique(), create=True)
        d["x"] = 1
        t = d.txn()
        t.__enter__()
        t["x"] = 2
        t["y"] = 2
        srv.restart()  # no persistence: the dict is gone
        with pytest.raises(shmtxn.SegmentNotFoundError, match="lost"):
            t.commit()
        with pytest.raises(shmtxn.SegmentNotFoundError):
            d["x"]
        srv.stop()
        with pytest.raises(shmtxn.remote.RemoteUnavailableError,
                           match="unreachable"):
            d["x"]
        with pytest.raises(shmtxn.remote.RemoteUnavailableError):
            with d.txn():
                pass
        d.close()
    finally:
        srv.close()


def test_demo_runs_on_redis_and_verifies():
    import subprocess
    import sys
    out = subprocess.run(
        [sys.executable, "-m", "shmtxn", "demo", "--redis", server().url,
         "--writers", "2", "--readers", "1", "--txns", "100"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "counter = 200 (expected 200), torn reads = 0" in out.stdout
    assert "OK:" in out.stdout and server().url in out.stdout
