"""The shmtxn command line and the admin API it formats: ls, info, check,
rm, gc, bench; exit codes and --json."""

import json
import os
import subprocess
import sys

import pytest

import helpers
import shmtxn
from shmtxn import SharedDict, SharedMemory, admin
from test_crash import run_crashing_child, start_child


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "shmtxn", *args],
                          capture_output=True, text=True, timeout=timeout)


def cli_json(*args):
    out = cli(*args, "--json")
    return out.returncode, json.loads(out.stdout)


def leak(name, **kwargs):
    """A segment whose creator is SIGKILLed right after making it."""
    subprocess.run([sys.executable, "-c",
                    "import os, signal\nfrom shmtxn import SharedMemory\n"
                    f"s = SharedMemory({name!r}, create=True, size=80)\n"
                    "s[0] = 42\nos.kill(os.getpid(), signal.SIGKILL)\n"],
                   timeout=60)
    assert os.path.exists(f"/dev/shm/{name}")


def test_leaked_segment_is_orphaned_and_gc_removes_it(name):
    leak(name)
    code, rows = cli_json("ls", "--prefix", name)
    assert code == 0 and [r["name"] for r in rows] == [name]
    assert rows[0]["orphaned"] is True and rows[0]["attached"] == []
    assert rows[0]["creator_alive"] is False
    assert "orphaned" in cli("ls", "--prefix", name).stdout.split()
    assert "none (orphaned)" in cli("ls", "--wide", "--prefix", name).stdout
    code, would = cli_json("gc", "--dry-run", "--prefix", name)
    assert [w["name"] for w in would] == [name]
    assert os.path.exists(f"/dev/shm/{name}")  # dry run removes nothing
    code, removed = cli_json("gc", "--prefix", name)
    assert code == 0 and removed[0]["removed"] is True
    assert not os.path.exists(f"/dev/shm/{name}")


def test_gc_keeps_a_segment_attached_after_it_was_listed(name):
    """gc lists, then removes: a process that attaches in between (here,
    this one) keeps the segment -- gc removes under the attach/reclaim
    protocol, not by a bare unlink."""
    from shmtxn import admin
    leak(name)
    [info] = [i for i in admin.list_segments(prefix=name)]
    assert info["orphaned"] is True
    with SharedMemory(name) as shr:  # attached since the listing
        assert admin._collect(info) is False
        assert os.path.exists(f"/dev/shm/{name}")
        shr[0] = 7
    assert admin._collect(info) is True  # closed again: now it goes
    assert not os.path.exists(f"/dev/shm/{name}")


def test_attached_segment_survives_gc_and_rm_until_forced(name):
    seg = SharedMemory(name, create=True, size=16)
    seg.close()  # only the child keeps it attached from here on
    p, _ = start_child(helpers.hold_read_txn, name, expect=0)
    try:
        code, removed = cli_json("gc", "--prefix", name)
        assert removed == [] and os.path.exists(f"/dev/shm/{name}")
        out = cli("rm", name)
        assert out.returncode == 1
        assert "attached" in out.stderr and len(out.stderr.splitlines()) == 1
        assert os.path.exists(f"/dev/shm/{name}")
        row = admin.segment_info(name)
        assert row["attached"] == [p.pid] and row["active_readers"] == 1
        assert cli("rm", "--force", name).returncode == 0
        assert not os.path.exists(f"/dev/shm/{name}")
    finally:
        helpers.kill(p)


def test_check_finds_a_corrupt_header(name):
    SharedMemory(name, create=True, size=80).close()
    with open(f"/dev/shm/{name}", "r+b") as f:
        f.seek(24)
        f.write(os.urandom(32))
    out = cli("check", name)
    assert out.returncode == 1 and "corrupt" in out.stdout
    code, result = cli_json("check", name, "--repair")
    assert code == 1 and result["problems"]  # not repairable: say so
    assert admin.segment_info(name)["state"] == "corrupt"


def test_check_finds_a_dead_lock_holder_and_repair_rolls_it_back(name):
    with SharedMemory(name, create=True, size=16) as shr:
        shr[0] = 7
        p, _ = start_child(helpers.hold_write_txn, name, expect="locked")
        helpers.kill(p)  # died holding the lock, slot 0 = 12345 uncommitted
        code, result = cli_json("check", name)
        assert code == 1
        text = " ".join(result["problems"])
        assert f"dead process {p.pid}" in text and "undo log" in text
        assert "dead-writer" in cli("ls", "--prefix", name).stdout
        assert f"DEAD holder {p.pid}" in cli("ls", "--wide", "--prefix",
                                             name).stdout
        code, result = cli_json("check", name, "--repair")
        assert code == 0, result
        assert result["repaired"]["recovered_writers"] == 1
        assert result["problems"] == []
        assert shr[0] == 7  # the last committed state


def test_abandoned_creation_is_listed_and_collected(name):
    run_crashing_child("create:after_reserve", (
        "from shmtxn import SharedMemory\n"
        f"SharedMemory({name!r}, create=True, size=80)\n"))
    assert admin.segment_info(name)["state"] == "abandoned"
    assert "abandoned" in cli("ls", "--prefix", name).stdout
    assert admin.check(name)["problems"]
    assert [r["name"] for r in admin.gc(prefix=name)] == [name]
    assert not os.path.exists(f"/dev/shm/{name}")


def test_foreign_files_are_only_listed_with_all_and_never_collected(name):
    with open(f"/dev/shm/{name}", "wb") as f:
        f.write(b"not ours" * 100)
    assert admin.list_segments(prefix=name) == []
    rows = admin.list_segments(all=True, prefix=name)
    assert [(r["name"], r["state"]) for r in rows] == [(name, "foreign")]
    assert admin.gc(prefix=name) == []
    with pytest.raises(admin.SegmentInUseError, match="not a shmtxn"):
        admin.remove(name)
    admin.remove(name, force=True)
    assert not os.path.exists(f"/dev/shm/{name}")


def test_json_carries_the_fields_of_the_table(name):
    with SharedMemory(name, create=True, size=32, format="d") as shr:
        table = cli("ls", "--wide", "--prefix", name).stdout.splitlines()
        head, row = table[0].split(), table[1].split()
        code, rows = cli_json("ls", "--prefix", name)
        entry = rows[0]
        assert head[:6] == ["NAME", "STATE", "LAYOUT", "ITEMS", "SIZE",
                            "USED"]
        assert row[:3] == [entry["name"], "ok", entry["layout"]]
        assert row[3] == f"{entry['format']}[{entry['shape'][0]}]" == "d[4]"
        assert str(entry["creator_pid"]) in row and str(os.getpid()) in row
        table = cli("ls", "--prefix", name).stdout.splitlines()
        assert table[0].split() == ["NAME", "HOLDS", "USED", "STATE",
                                    "PROCS", "MODIFIED"]
        assert table[1].split()[:2] == [name, "d[4]"]
        assert table[1].split()[4:6] == ["ok", "1"]
        for field in ("data_size", "used_bytes", "creator_pid",
                      "creator_alive", "attached", "lock", "writer_pid",
                      "active_readers", "created_ns", "modified_ns"):
            assert field in entry
        code, info = cli_json("info", name, "--items", "2")
        assert info["first_items"] == [0.0, 0.0]
        assert info["processes"][0]["pid"] == os.getpid()
        assert shr.info()["name"] == name


def test_ls_counts_a_dicts_keys(name):
    with SharedDict(name, create=True) as d:
        d.update({"a": 1, "b": 2, "c": 3})
        row = cli("ls", "--prefix", name).stdout.splitlines()[1].split()
        assert row[1:3] == ["3", "keys"]
        row = cli("ls", "--wide", "--prefix", name).stdout.splitlines()[1]
        assert row.split()[2:5] == ["dict", "3", "keys"]


def test_python_api_lists_what_the_cli_lists(name):
    with SharedMemory(name, create=True, size=8):
        assert [s["name"] for s in shmtxn.list_segments(prefix=name)] == [
            name]
        assert shmtxn.segment_info(name)["attached"] == [os.getpid()]


def test_errors_are_one_line_on_stderr_with_exit_codes(name):
    missing = cli("info", name)
    assert missing.returncode == 1 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "no segment named" in missing.stderr
    assert cli("info", "bad/name").returncode == 2
    assert cli("rm").returncode == 2  # argparse: usage


def test_demo_for_a_duration_as_json():
    code, result = cli_json("demo", "--writers", "2", "--readers", "1",
                            "--seconds", "0.3")
    assert code == 0 and result["ok"] is True
    assert result["counter"] == result["write_txns"] > 0
    assert result["torn_reads"] == 0


def test_bench_quick_prints_ratios_to_the_floor():
    code, tables = cli_json("bench", "--quick")
    assert code == 0
    w1 = tables["W1 single int get"]
    assert w1["memoryview.cast('q') (unsafe floor)"]["ratio"] == 1.0
    assert "shmtxn shr[i] (auto-commit)" in w1
    assert "W2 the article's txn: 10 writes then 10 reads" in tables
