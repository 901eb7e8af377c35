"""An outside review of the Redis backend (issue #15): attacks on what
docs/remote.md promises.  Each failing test is a defect found; its
docstring says what should happen.  The passing ones are attacks that
held (kept because they are cheap)."""

import math
import multiprocessing
import os
import signal
import socket
import threading
import time

import pytest
import redis
from redis.crc import key_slot

import helpers
import shmtxn
from redis_server import redis_dict  # noqa: F401 (the fixture d uses)
from redis_server import connect, needs_redis, server, unique
from shmtxn import SharedDict, _core, remote

pytestmark = needs_redis


@pytest.fixture
def d(redis_dict):
    return redis_dict


def key(d, x):
    """The Redis key of part `x` (one of "MDOKLRWNQX") of dict `d`."""
    return d._keys[remote._KEY_NAMES.index(x)]


def until(condition, what, bound=30.0):
    """Poll `condition` (a bounded wait for a state another process or
    Redis's clock brings about, not a sleep standing in for one)."""
    end = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < end, f"never happened: {what}"
        time.sleep(0.005)


def in_thread(f, *args):
    """f(*args) in another thread (this one has a txn open), to its end."""
    errors = []

    def run():
        try:
            f(*args)
        except BaseException as e:  # noqa: B036 -- re-raised below
            errors.append(e)

    th = threading.Thread(target=run)
    th.start()
    th.join()
    if errors:
        raise errors[0]


def bump(d):
    with d.txn(timeout=30) as t:
        t["n"] += 100


def transfer(d):
    with d.txn(timeout=30) as t:
        t["a"] -= 50
        t["b"] += 50


# ---- defects ----

def test_commit_applied_then_reply_lost_is_not_reported_as_lost(d):
    """A commit whose reply is lost (the connection breaks after Redis ran
    the script) is retried; docs/remote.md: "a commit is never applied
    twice and never reported lost when it was applied".  Expected: the
    retry reports success (or "outcome unknown") -- never LeaseLostError
    ("nothing of it was applied"), because it WAS applied.  Today the
    retry only compares M.last with its token, so when another writer
    commits in between (it can: the commit released the lease and woke
    it), the applied txn is reported lost and a caller that retries on
    LeaseLostError applies it twice."""
    d["n"] = 0
    other = connect(d.name)
    script = d._redis().register_script(remote._source("commit"))
    armed = []

    def commit_then_lose_the_reply(keys, args):
        reply = script(keys=keys, args=args)
        if armed:
            armed.clear()
            in_thread(bump, other)   # the woken writer gets in first
            raise redis.ConnectionError("connection reset (the reply)")
        return reply

    d._redis()
    d._scripts["commit"] = commit_then_lose_the_reply
    try:
        with d.txn() as t:
            t["n"] += 1
            armed.append(1)
    finally:
        other.close()
    assert d["n"] == 101


def test_write_txn_never_reads_a_state_after_its_lease_is_gone(d):
    """Inside a write txn, reads go to Redis unvalidated ("the lease keeps
    every other writer out").  Once the lease is gone (expired while the
    client was paused between the renewal check and the read, or lost in
    a failover) another writer can commit, and the txn then reads a mix
    of two states (here a + b != 200) that its body acts on before the
    commit is refused.  Expected: a read in a write txn whose lease is no
    longer its own raises LeaseLostError (the read script can check L in
    the same round trip), as a read txn's reads do."""
    d.update(a=100, b=100)
    other = connect(d.name)
    try:
        with pytest.raises(remote.LeaseLostError):
            with d.txn() as t:
                a = t["a"]
                d._redis().delete(key(d, "L"))  # the lease expires
                in_thread(transfer, other)
                b = t["b"]
                assert a + b == 200, "the txn saw two states"
    finally:
        other.close()


def drain_then_wait(spec, conn):
    """Write in a txn whose commit must wait for a read txn."""
    with helpers.open_dict(spec, lease=600) as d:
        conn.send("go")
        with d.txn() as t:
            t["a"] = 2


def test_killed_drainers_flag_does_not_block_new_read_txns(d):
    """A writer SIGKILLed while its commit waits for read txns leaves the
    drain flag W (expiry: its lease).  Dead lease holders and dead
    readers are cleared at once (CLIENT LIST); expected: a dead drainer's
    flag too, so a new read txn opens at once.  Today every new read txn
    waits for the whole lease (600 s here) -- LockTimeout below."""
    d["a"] = 1
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    with d.txn(write=False) as r:
        assert r["a"] == 1
        p = ctx.Process(target=drain_then_wait, args=((d.url, d.name), child))
        p.start()
        assert parent.poll(60) and parent.recv() == "go"
        until(lambda: d._redis().exists(key(d, "W")), "the commit drains")
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    with d.txn(write=False, timeout=2) as t:
        assert t["a"] == 1


def test_a_short_lease_survives_its_own_commits_wait_for_readers(d):
    """A commit that waits for read txns keeps its lease only by re-running
    the commit script, once per wait of up to 1 s (_SLICE) or the first
    reader's expiry.  With lease=0.3 (allowed: 0.01 s and up) the lease
    expires during that wait and the commit fails with LeaseLostError
    although the client never stopped.  Expected: the library renews the
    lease while it waits (waits shorter than lease/3), and the commit
    applies once the reader leaves."""
    d["a"] = 1
    w = connect(d.name, lease=0.3)
    errors = []

    def writer():
        try:
            with w.txn() as t:
                t["a"] = 2
        except shmtxn.Error as e:
            errors.append(e)

    try:
        with d.txn(write=False) as r:
            assert r["a"] == 1
            th = threading.Thread(target=writer)
            th.start()
            until(lambda: d._redis().exists(key(d, "W")), "the commit drains")
            token = d._redis().get(key(d, "L"))
            start = redis_ms(d)
            until(lambda: redis_ms(d) > start + 1000,
                  "1 s (over 3 leases) passes on Redis's clock")
            # still the writer's: had it lapsed once, the commit script
            # would have found another token (or none) and given up
            assert d._redis().get(key(d, "L")) == token
        th.join(60)
    finally:
        w.close()
    assert errors == [] and d["a"] == 2


def redis_ms(d):
    """Redis's clock (ms): leases expire by it."""
    seconds, micros = d._redis().time()
    return seconds * 1000 + micros // 1000


def test_a_stale_handle_never_reads_a_newer_dict_of_its_name():
    """docs/remote.md: "A missing M (or one with another id than the handle
    opened) is SegmentNotFoundError".  Expected: after the dict is
    unlinked and a new one made under its name, d[k], `in` and len() on
    an old handle raise SegmentNotFoundError (as get_many, version and
    txn() do).  Today they read the new dict's data (HGET/HEXISTS/HLEN
    check the id only when they find nothing)."""
    name = unique()
    first = connect(name, create=True)
    old = connect(name)
    first.unlink()
    first.close()
    with connect(name, create=True) as new:
        new["k"] = "new"
        for op in (lambda: old["k"], lambda: "k" in old, lambda: len(old)):
            with pytest.raises(shmtxn.SegmentNotFoundError):
                op()
    old.close()


@pytest.mark.parametrize("name", ["}", "}jobs"])
def test_every_key_of_a_dict_is_in_one_cluster_slot(name):
    """docs/remote.md: the ten keys carry the hash tag {NAME} "so a Redis
    Cluster keeps them in one slot" (every script touches all ten: in a
    cluster, keys in two slots are a CROSSSLOT error).  A name starting
    with '}' makes the tag empty ("shmtxn:{}}:M"), so Redis hashes the
    whole key and the ten land in ten slots.  Expected: one slot for any
    valid name (or such names refused)."""
    try:
        d = SharedDict.connect(server().url, name + unique(), create=True)
    except ValueError:
        return
    with d:
        assert len({key_slot(k.encode()) for k in d._keys}) == 1


def test_url_options_that_change_replies_fail_clearly_and_leave_nothing():
    """A URL is redis-py's, so `?decode_responses=True` is accepted; with it
    every reply is str and the handle breaks: create=True raises
    SegmentNotFoundError ("was removed") after creating the dict, leaves
    it behind, and the next connect says "key layout '1', this shmtxn
    reads layout 1".  Expected: the handle works (shmtxn needs bytes and
    can force decode_responses off) or connect refuses the option up front
    with ValueError; and a connect that fails leaves no keys behind."""
    name = unique()
    url = server().url + "?decode_responses=True"
    try:
        try:
            with SharedDict.connect(url, name, create=True) as d:
                d["a"] = 1
                assert d["a"] == 1
        except ValueError:
            pass
        assert not server_keys(name)
    finally:
        with redis.Redis.from_url(server().url) as r:
            for k in server_keys(name):
                r.delete(k)


def server_keys(name):
    with redis.Redis.from_url(server().url) as r:
        return r.keys(f"shmtxn:{{{name}}}:*")


def test_db_index_out_of_range_is_a_shmtxn_error():
    """Bad input gets a clear shmtxn error (or ValueError, as a bad scheme
    does).  Expected for "redis://host:port/99" (Redis has 16 databases):
    ValueError or a shmtxn.Error naming the dict; today the raw
    redis.exceptions.ResponseError escapes."""
    url = server().url.rsplit("/", 1)[0] + "/99"
    with pytest.raises((ValueError, shmtxn.Error)):
        SharedDict.connect(url, unique(), create=True)


def test_timeout_bounds_connecting_to_a_server_that_never_answers():
    """docs/remote.md: "`timeout` bounds connecting".  A host that accepts
    the TCP connection but never answers (a stopped or wedged Redis, a
    half-open proxy): expected RemoteUnavailableError after about
    `timeout` (0.3 s here; the test allows 3 s).  Today the handshake has
    no timeout of shmtxn's: redis-py 8 gives up after its own default of
    5 s, and redis-py 5 (pyproject allows redis>=5) never does -- it hangs
    forever, as does every operation on a Redis that stops answering
    (no socket_timeout is set)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        result = []

        def try_connect():
            try:
                SharedDict.connect(url, unique(), create=True, timeout=0.3)
            except Exception as e:
                result.append(e)

        th = threading.Thread(target=try_connect, daemon=True)
        th.start()
        th.join(3)  # a bound on the behaviour under test
        assert result and isinstance(result[0], remote.RemoteUnavailableError)


# ---- attacks that held ----

KEYS = [1, 1.0, True, 0, -0.0, 2**100, float(2**100), (1, "a"), (1.0, "a"),
        "é", "e\u0301", b"x", "x", "", b"", float("nan"), -2**63, 2**64,
        None, ("", b"", None, (2.5,))]


def test_keys_equal_across_types_behave_as_in_a_segment(d, name):
    with SharedDict(name, create=True) as shm:
        for i, k in enumerate(KEYS):
            shm[k] = d[k] = i
        same = lambda a, b: a == b or (a != a and b != b)  # NaN  # noqa
        ditems, sitems = list(d.items()), list(shm.items())
        assert len(ditems) == len(sitems)
        for (dk, dv), (sk, sv) in zip(ditems, sitems):
            assert same(dk, sk) and type(dk) is type(sk) and dv == sv
            if isinstance(dk, float) and dk == 0:
                assert math.copysign(1, dk) == math.copysign(1, sk)
        fields = d._redis().hkeys(key(d, "D"))
        assert sorted(fields) == sorted(_core.encode_key(k)[0]
                                        for k, _ in sitems)


def test_huge_and_empty_values_round_trip(d):
    big = os.urandom(8 << 20)
    d[""] = ""
    d[b""] = b""
    d["big"] = big
    with d.txn() as t:
        t["big2"] = big + b"!"
    assert d[""] == "" and d[b""] == b"" and d["big"] == big
    assert d.get_many(["big2"])[0] == big + b"!"


def test_single_write_is_refused_by_the_fast_path_while_a_txn_holds(d):
    """The fast path checks the lease inside the same script that writes,
    so a single write cannot slip into a txn's critical section."""
    d["k"] = 0
    with d.txn() as t:
        t["k"] = 1
        other = connect(d.name)
        assert other._script("single", other._id, b"s",
                             _core.encode_key("k")[0],
                             _core.encode_value(5), 0) == -2
        other.close()
    assert d["k"] == 1


def test_misuse_gives_shmtxn_errors(d):
    with d.txn() as t:
        with pytest.raises(shmtxn.NestedTransactionError):
            d["x"] = 1
        with pytest.raises(shmtxn.NestedTransactionError):
            d.txn().__enter__()
    with connect(d.name, read_only=True) as ro:
        with pytest.raises(shmtxn.ReadOnlyError):
            ro.clear()
        with ro.txn() as t, pytest.raises(shmtxn.ReadOnlyError):
            t["x"] = 1
    h = connect(d.name)
    h.close()
    for op in (lambda: h["x"], lambda: h.txn(), lambda: len(h),
               lambda: h.get_many([1]), lambda: h.stats()):
        with pytest.raises(shmtxn.SegmentClosedError):
            op()
    t = d.txn()
    with t:
        pass
    with pytest.raises(shmtxn.TransactionClosedError):
        t["x"]


def test_unlink_while_a_read_txn_is_open(d):
    d["a"] = 1
    r = d.txn(write=False)
    r.__enter__()
    assert r["a"] == 1
    d.unlink()
    with pytest.raises(shmtxn.SegmentNotFoundError):
        r["a"]
    r.abort()
