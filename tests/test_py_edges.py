"""Edges of the Python layer: permission modes, names and formats, damaged
pickles, SharedDict against a plain dict (KeyError, -0.0, reversed, |),
the CLI (Ctrl-C, demo arguments and failures, check --repair, gc), the
benchmark machinery, and the test suite's own housekeeping."""

import collections
import json
import math
import multiprocessing
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

import conftest
import helpers
import shmtxn
from shmtxn import SharedDict, SharedMemory, _core, admin, cli, demo
from test_cli import cli as run_cli, cli_json, leak
from test_crash import run_crashing_child, start_child

CTX = multiprocessing.get_context("fork")
KINDS = [pytest.param(lambda n, **kw: SharedMemory(n, size=8, **kw),
                      id="SharedMemory"),
         pytest.param(lambda n, **kw: SharedDict(n, size=1 << 20, **kw),
                      id="SharedDict")]


def path(name):
    return f"/dev/shm/{name}"


@pytest.fixture
def d(name):
    with SharedDict(name, create=True, size=1 << 20) as d:
        yield d


# ---- mode= ----

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [-1, 0o1000, 0o4600, 0o2660, 0o1666,
                                  0o7777, 2**40, 0, 0o400, 0o200, 0o066])
def test_mode_outside_the_permission_bits_is_a_value_error(name, kind,
                                                           mode):
    with pytest.raises(ValueError, match="0o777 that include 0o600"):
        kind(name, create=True, mode=mode)
    assert not os.path.exists(path(name))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", [True, False, 1.5, "0o600", None, b"x"])
def test_mode_that_is_not_an_int_is_a_value_error(name, kind, mode):
    with pytest.raises(ValueError, match="mode must be an int"):
        kind(name, create=True, mode=mode)
    assert not os.path.exists(path(name))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode,umask", [(0o666, 0o022), (0o660, 0o077),
                                        (0o600, 0o000), (0o777, 0o027)])
def test_the_mode_passed_is_the_mode_the_segment_gets(name, kind, mode,
                                                      umask):
    old = os.umask(umask)
    try:
        handle = kind(name, create=True, mode=mode)
    finally:
        os.umask(old)
    with handle:
        assert stat.S_IMODE(os.stat(path(name)).st_mode) == mode
        # fixing the mode must not have dropped this process's beacon
        assert admin.segment_info(name)["attached"] == [os.getpid()]
        attached = type(handle)(name)  # attaching still works
        attached.close()


# ---- names and formats ----

def test_name_length_is_counted_and_reported_in_bytes(name):
    room = _core.NAME_MAX - len(name)
    longest = name + "x" * (room % 2) + "é" * (room // 2)  # 248 bytes
    assert len(longest.encode()) == _core.NAME_MAX
    with SharedMemory(longest, create=True, size=8):
        assert os.path.exists(path(longest))
    too_long = longest + "x"
    assert len(too_long) < _core.NAME_MAX  # fewer characters than the cap
    message = r"1 to 248 bytes of UTF-8 \(got 249 bytes\)"
    for make in (lambda: SharedMemory(too_long, create=True, size=8),
                 lambda: SharedDict(too_long, create=True),
                 lambda: SharedMemory(too_long),
                 lambda: admin.segment_info(too_long)):
        with pytest.raises(ValueError, match=message):
            make()
    out = run_cli("info", too_long)
    assert out.returncode == 2 and "249 bytes" in out.stderr
    with pytest.raises(ValueError, match=r"got 0 bytes"):
        SharedMemory("", create=True, size=8)


@pytest.mark.parametrize("fmt", ["", "<", "@", "=", " ", "qq", "x", "P",
                                 "s", "i8x", "float65", "<"])
def test_empty_or_garbage_format_is_a_value_error(name, fmt):
    with pytest.raises(ValueError, match="format") as err:
        SharedMemory(name, create=True, size=8, format=fmt)
    if fmt == "":
        assert "must not be empty" in str(err.value)
    assert not os.path.exists(path(name))


@pytest.mark.parametrize("fmt", [0, b"q", 1.5, object()])
def test_format_of_another_type_is_a_type_error(name, fmt):
    with pytest.raises(TypeError, match="format must be"):
        SharedMemory(name, create=True, size=8, format=fmt)
    assert not os.path.exists(path(name))


# ---- values are pickles ----

VALUE = collections.OrderedDict(marker="m" * 40)


def damage(name, old, new):
    """Replace bytes `old` of the stored pickle of VALUE with `new`, in
    /dev/shm directly (as a stray write would)."""
    blob = pickle.dumps(VALUE, 5)
    assert old in blob and len(old) == len(new)
    with open(path(name), "r+b") as f:
        data = f.read()
        at = data.find(blob)
        assert at >= 0 and data.find(blob, at + 1) < 0
        f.seek(at + blob.find(old))
        f.write(new)


DAMAGES = {
    "bad opcode": (b"\x80\x05", b"\xff\x05"),                # UnpicklingError
    "truncated": (b"s.", b"sN"),                              # EOFError
    "missing class": (b"OrderedDict", b"OrderedDicX"),        # AttributeError
    "missing module": (b"collections", b"collectionz"),      # ImportError
}


@pytest.mark.parametrize("how", list(DAMAGES))
def test_a_damaged_pickle_is_a_corrupt_segment_error_everywhere(d, name,
                                                                how):
    d["ok"] = [1, 2]
    d["bad"] = VALUE
    damage(name, *DAMAGES[how])
    reads = {
        "d[k]": lambda: d["bad"], "get": lambda: d.get("bad"),
        "values": lambda: list(d.values()), "items": lambda: list(d.items()),
        "copy": d.copy, "==": lambda: d == {}, "pop": lambda: d.pop("bad"),
        "popitem": d.popitem,
    }
    for what, read in reads.items():
        with pytest.raises(shmtxn.CorruptSegmentError,
                           match="cannot be unpickled") as err:
            read()
        assert isinstance(err.value.__cause__, Exception), what
        assert type(err.value.__cause__).__name__ in str(err.value)
        assert f"SharedDict '{name}'" in str(err.value), what
    with d.txn() as t:
        for read in (lambda: t["bad"], lambda: t.get("bad"),
                     lambda: list(t.items()), lambda: t.pop("bad")):
            with pytest.raises(shmtxn.CorruptSegmentError):
                read()
    with SharedDict(name, read_only=True) as ro:
        with pytest.raises(shmtxn.CorruptSegmentError):
            ro["bad"]
    assert "bad" in d and d["ok"] == [1, 2]  # pop/popitem changed nothing
    d["bad"] = 1  # overwriting replaces the damaged value
    assert d["bad"] == 1


def test_info_items_shows_a_damaged_value_without_a_traceback(d, name):
    d["ok"] = [1, 2]
    d["bad"] = VALUE
    d["last"] = "x"
    damage(name, *DAMAGES["bad opcode"])
    out = run_cli("info", name, "--items", "5")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "could not be read" in out.stderr
    assert "<damaged value:" in out.stdout and "'last'" in out.stdout
    out = run_cli("info", name, "--items", "5", "--json")
    items = json.loads(out.stdout)["first_items"]
    assert items[0] == ["'ok'", "[1, 2]"] and items[2] == ["'last'", "'x'"]
    assert items[1][0] == "'bad'"
    assert items[1][1].startswith("<damaged value: a value stored")


def test_a_value_nested_too_deeply_says_so(d):
    nested = []
    # deeper than the recursion limit, and than 3.13's separate limit for
    # C code such as pickle's (about 10 000)
    for _ in range(max(sys.getrecursionlimit() * 4, 50_000)):
        nested = [nested]
    with pytest.raises(RecursionError, match="nested too deeply"):
        d["deep"] = nested
    with d.txn() as t:
        with pytest.raises(RecursionError, match="nested too deeply"):
            t["deep"] = nested
    assert "deep" not in d and len(d) == 0


# ---- SharedDict against a dict ----

def key_error_args(op, mapping):
    with pytest.raises(KeyError) as err:
        op(mapping)
    return repr(err.value.args)


MISSING = [(1,), (), ("a", (2,)), None, 0, "k", b"k", 2.5, -0.0, True]


@pytest.mark.parametrize("key", MISSING, ids=repr)
def test_a_missing_key_is_the_key_errors_one_argument_like_dict(d, key):
    d["present"] = 1
    for op in (lambda m: m[key], lambda m: m.__delitem__(key),
               lambda m: m.pop(key)):
        expected = key_error_args(op, {"present": 1})
        assert key_error_args(op, d) == expected
        with d.txn() as t:
            assert key_error_args(op, t) == expected


def test_popitem_on_empty_raises_what_dict_raises(d):
    expected = key_error_args(lambda m: m.popitem(), {})
    assert key_error_args(lambda m: m.popitem(), d) == expected
    with d.txn() as t:
        assert key_error_args(lambda m: m.popitem(), t) == expected


@pytest.mark.parametrize("writes", [
    [(-0.0, 1), (0.0, 2), (0, 3), (False, 4)],
    [(0.0, 1), (-0.0, 2)],
    [(0, 1), (-0.0, 2)],
    [(False, 1), (-0.0, 2)],
    [(-0.0, 1), ("x", 2), (0, 3)],
], ids=repr)
def test_the_first_stored_zero_is_the_key_like_dict(d, name, writes):
    model = {}
    for key, value in writes:
        d[key] = value
        model[key] = value
    assert repr(list(d)) == repr(list(model))
    assert repr(list(d.items())) == repr(list(model.items()))
    with SharedDict(name) as other:  # as another process reads it
        assert repr(list(other)) == repr(list(model))
    for zero in (0, 0.0, -0.0, False):
        assert d[zero] == model[zero]
    key = list(d)[0]
    if isinstance(key, float):
        assert math.copysign(1, key) == math.copysign(1, list(model)[0])


def test_negative_zero_inside_a_tuple_comes_back_as_int(d):
    d[(-0.0, "a")] = 1  # documented: inside tuples the canonical int
    assert list(d) == [(0, "a")] and d[(0, "a")] == 1


def test_reversed_and_the_union_operators_work_like_dict(d):
    model = {"a": 1, "b": 2, "c": 3}
    d.update(model)
    assert list(reversed(d)) == list(reversed(model))
    assert list(reversed(d.keys())) == list(reversed(model.keys()))
    assert list(reversed(d.values())) == list(reversed(model.values()))
    assert list(reversed(d.items())) == list(reversed(model.items()))
    right = {"c": 30, "z": 26}
    merged = d | right
    assert type(merged) is dict
    assert list(merged.items()) == list((model | right).items())
    left = {"c": 30, "y": 0} | d
    assert type(left) is dict
    assert list(left.items()) == list(({"c": 30, "y": 0} | model).items())
    assert d == model  # | changed neither side
    same = d
    d |= {"e": 5}
    model |= {"e": 5}
    assert d is same and list(d.items()) == list(model.items())
    d |= [("f", 6)]  # |= takes what update() takes, as for dict
    model |= [("f", 6)]
    assert list(d.items()) == list(model.items())
    for bad in (lambda: d | [("g", 7)], lambda: [("g", 7)] | d):
        with pytest.raises(TypeError):
            bad()
    with d.txn() as t:
        t |= {"g": 7}
        assert list(reversed(t))[:2] == ["g", "f"]
        assert t | {"h": 8} == dict(model, g=7, h=8)
        assert {"h": 8} | t == dict({"h": 8}, **model, g=7)
    assert d["g"] == 7


def test_or_assign_is_one_transaction(d):
    d["a"] = 1
    with pytest.raises(TypeError, match="picklable"):
        d |= {"b": 2, "c": lambda: 0, "e": 4}  # fails midway
    assert d == {"a": 1}  # b was rolled back with the rest


def test_equality_get_and_setdefault_behave_like_dict(d):
    d["a"] = 1
    assert d == {"a": 1} and {"a": 1} == d
    assert d != {"a": 2} and not (d != {"a": 1})
    for m in ({"a": 1}, d):
        with pytest.raises(TypeError):
            m.get("a", default=0)  # positional only, as dict.get
        with pytest.raises(TypeError):
            m.get()
    assert d.setdefault("n") is None and d["n"] is None
    assert d.popitem() == ("n", None)  # LIFO


# ---- the CLI ----

def test_cli_turns_ctrl_c_into_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(admin, "list_segments", interrupted)
    try:
        code = cli.main(["ls"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped shmtxn's main() as a traceback")
    assert code == 130
    assert capsys.readouterr().err == "shmtxn ls: interrupted\n"


def default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as from a terminal


def test_ctrl_c_stops_the_demo_and_its_children_cleanly():
    p = subprocess.Popen(
        [sys.executable, "-m", "shmtxn", "demo", "--seconds", "120",
         "--writers", "2", "--readers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True, preexec_fn=default_sigint)
    try:
        seen = b""
        while b"txns" not in seen:  # the children run: progress is shown
            chunk = os.read(p.stdout.fileno(), 4096)
            assert chunk, p.stderr.read()
            seen += chunk
        segment = re.search(rb"on segment '(\w+)'", seen).group(1).decode()
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130
    assert err.decode() == "shmtxn demo: interrupted\n"  # no traceback
    assert not os.path.exists(path(segment))


@pytest.mark.parametrize("args", [
    ["--writers", "0"], ["--writers", "-1"], ["--writers", "100000"],
    ["--readers", "-1"], ["--txns", "0"], ["--txns", "-5"],
    ["--seconds", "-1"], ["--seconds", "nan"], ["--seconds", "inf"],
    ["--writers", "two"],
])
def test_demo_arguments_are_checked_by_argparse(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["demo", *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and args[0] in err


@pytest.mark.parametrize("kwargs", [dict(writers=0), dict(writers=-1),
                                    dict(readers=-1), dict(txns=0),
                                    dict(seconds=-1.0),
                                    dict(seconds=math.nan)])
def test_demo_run_checks_its_arguments(kwargs):
    kwargs.setdefault("readers", 0)  # none to wait for if it did run
    with pytest.raises(ValueError):
        demo.run(**kwargs, stream=None)


DEMO_WITH = {
    "a writer that dies": (
        "import os\n"
        "from shmtxn import demo\n"
        "demo._writer = lambda *a: os._exit(3)\n"),
    "a segment removed before the children attach": (
        "from shmtxn import demo, SharedMemory, _core\n"
        "class Removed(SharedMemory):\n"
        "    def __init__(self, name=None, create=False, *a, **k):\n"
        "        if not create:  # as if `shmtxn rm --force` ran\n"
        "            try:\n"
        "                _core.unlink(name)\n"
        "            except FileNotFoundError:\n"
        "                pass\n"
        "        super().__init__(name, create, *a, **k)\n"
        "demo.SharedMemory = Removed\n"),
}


@pytest.mark.parametrize("case", list(DEMO_WITH))
def test_demo_reports_a_failed_child_instead_of_waiting(case):
    code = DEMO_WITH[case] + (
        "import json\n"
        "r = demo.run(2, 1, 1000, start_method='fork', stream=None)\n"
        "print(json.dumps(r))\n")
    p = subprocess.Popen([sys.executable, "-c", code], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:  # it hung: take its children down with it
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 0, stderr
    result = json.loads(stdout)
    assert result["ok"] is False
    # with the segment removed, a reader may be the first child to fail
    assert re.search(r"(writer|reader) process \d+ exited with code [13]",
                     result["error"])
    assert "Traceback" not in stderr
    assert not os.path.exists(path(result["segment"]))


def test_check_repair_counts_every_dead_reader_slot_it_clears(name):
    with SharedMemory(name, create=True, size=16) as shr:
        shr[0] = 7
        reader, _ = start_child(helpers.hold_read_txn, name, expect=7)
        helpers.kill(reader)  # died inside a read txn
        assert admin.segment_info(name)["dead_processes"] == [reader.pid]
        result = admin.check(name, repair=True)
        assert result["repaired"] == {"recovered_writers": 0,
                                      "cleared_readers": 1}
        writer, _ = start_child(helpers.hold_write_txn, name,
                                expect="locked")
        helpers.kill(writer)  # died holding the lock
        out = run_cli("check", name, "--repair")
        assert out.returncode == 0, out.stdout
        assert ("1 dead writer(s) rolled back, 1 dead reader slot(s) "
                "cleared") in out.stdout
        assert admin.segment_info(name)["dead_processes"] == []
        assert shr[0] == 7


def remove(*names):
    for n in names:
        try:
            os.unlink(path(n))
        except FileNotFoundError:
            pass


def test_gc_says_why_it_removes_each_segment(name):
    orphan, abandoned = name + "_o", name + "_a"
    try:
        leak(orphan)
        run_crashing_child("create:after_reserve", (
            "from shmtxn import SharedMemory\n"
            f"SharedMemory({abandoned!r}, create=True, size=80)\n"))
        out = run_cli("gc", "--dry-run", "--prefix", name)
        assert out.returncode == 0 and "(ready)" not in out.stdout
        assert (f"would remove {abandoned} (abandoned: its creator died "
                "mid-creation)") in out.stdout.splitlines()
        assert re.search(rf"would remove {orphan} \(orphaned: no live "
                         r"process has it attached, creator \d+ gone\)",
                         out.stdout)
        code, rows = cli_json("gc", "--prefix", name)
        reasons = {r["name"]: r["reason"].split(":")[0] for r in rows}
        assert reasons == {orphan: "orphaned", abandoned: "abandoned"}
        assert not os.path.exists(path(orphan))
        assert not os.path.exists(path(abandoned))
    finally:
        remove(orphan, abandoned)


# ---- the benchmark machinery ----

def test_bench_peers_close_after_their_segments_were_removed():
    from shmtxn import _bench
    peers = _bench.Peers()
    os.unlink(path(peers.shr.name))  # as `shmtxn rm --force` would
    os.unlink(path(peers.std.name.lstrip("/")))
    peers.close()  # no FileNotFoundError for what is gone already
    assert peers.shr.closed


def test_bench_collect_reports_a_dead_worker_instead_of_waiting():
    from shmtxn import _bench
    out = CTX.Queue()
    procs = [CTX.Process(target=out.put, args=("done",)),
             CTX.Process(target=os._exit, args=(3,))]
    for p in procs:
        p.start()
    try:
        with pytest.raises(_bench.WorkerFailed, match="exited with code 3"):
            _bench.collect(out, procs)
    finally:
        for p in procs:
            p.join()


def test_bench_collect_and_join_all_do_not_wait_forever():
    from shmtxn import _bench
    procs = [CTX.Process(target=time.sleep, args=(600,)) for _ in range(2)]
    try:
        procs[0].start()
        with pytest.raises(_bench.WorkerFailed, match="no result within"):
            _bench.collect(CTX.Queue(), procs[:1], timeout=0.2)
        assert procs[0].exitcode is not None  # it was stopped
        procs[1].start()
        with pytest.raises(_bench.WorkerFailed, match="still running"):
            _bench.join_all(procs[1:], timeout=0.2)
        assert procs[1].exitcode is not None
    finally:
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                helpers.kill(p)
    fine = [CTX.Process(target=os._exit, args=(0,))]
    fine[0].start()
    _bench.join_all(fine)


# ---- the test suite's own housekeeping ----

def proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_ctrl_c_interrupts_a_wait_even_when_sigint_was_ignored(name):
    with SharedMemory(name, create=True, size=16):
        holder, _ = start_child(helpers.hold_write_txn, name,
                                expect="locked")
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as nohup does
        try:
            waiter, conn = start_child(helpers.wait_for_lock_then_report,
                                       name, expect="waiting")
        finally:
            signal.signal(signal.SIGINT, old)
        try:
            deadline = time.monotonic() + 60
            while proc_state(waiter.pid) != "S":  # asleep in the lock wait
                assert time.monotonic() < deadline, "never waited"
                time.sleep(0.001)
            os.kill(waiter.pid, signal.SIGINT)
            assert conn.poll(60), "SIGINT did not end the wait"
            assert conn.recv() == "interrupted"
            waiter.join()
            assert waiter.exitcode == 0
        finally:
            if waiter.exitcode is None:
                helpers.kill(waiter)
            helpers.kill(holder)


SNIPPET = ("from shmtxn import SharedMemory\n"
           "s = SharedMemory(create=True, size=8)\n"
           "print(s.name)\n"
           "s.close()\n")  # closed, not unlinked: left behind


def test_leftover_check_claims_only_segments_this_run_created(name):
    foreign_env = {k: v for k, v in os.environ.items()
                   if k not in ("SHMTXN_TEST_RUN_PIDS", "PYTHONPATH")}
    made = []
    try:
        # another program's segment, created meanwhile by a process this
        # run did not start as a Python of its own
        made.append(subprocess.run(
            [sys.executable, "-c", SNIPPET], env=foreign_env, check=True,
            capture_output=True, text=True).stdout.strip())
        foreign = made[-1]
        # generated names made by this run: here, in a new interpreter, in
        # a forked child
        here = SharedMemory(create=True, size=8)
        made.append(here.name)
        here.close()
        made.append(subprocess.run([sys.executable, "-c", SNIPPET],
                                   check=True, capture_output=True,
                                   text=True).stdout.strip())
        parent, child = CTX.Pipe()
        p = CTX.Process(target=lambda c: c.send(
            SharedMemory(create=True, size=8).name), args=(child,))
        p.start()
        made.append(parent.recv())
        p.join()
        SharedMemory(name, create=True, size=8).close()
        made.append(name)
        assert all(n.startswith(("stx_", "shmtxn_t_")) for n in made)
        assert conftest.ours(set(made), conftest.run_pids()) == \
            set(made) - {foreign}
    finally:
        for n in made:
            try:
                os.unlink(path(n))
            except FileNotFoundError:
                pass
