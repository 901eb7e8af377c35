"""examples/c/share.c, built with gcc against the engine sources, shares
segments with Python both ways: it reads what Python stored (slots in a
read txn, a str value lock-free, an int under a tuple key in a txn) and
Python reads what it wrote (a slot and a str value)."""

import os
import subprocess

import pytest

from capi.cbuild import ROOT, build, run_env
from shmtxn import SharedDict, SharedMemory

EXAMPLE = os.path.join(ROOT, "examples", "c", "share.c")


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    return build(EXAMPLE, tmp_path_factory)


def test_the_c_example_and_python_share_both_ways(share, name):
    with SharedMemory(f"{name}_s", create=True, size=5 * 8) as shr, \
            SharedDict(f"{name}_d", create=True, size=1 << 20) as d:
        with shr.txn() as t:
            t[0:5] = [1, 2, 3, 4, 5]
        d["greeting"] = "hello from Python"
        d[("point", 1)] = 7
        d[True] = None
        d[-0.0] = 1.5
        proc = subprocess.run([share, shr.name, d.name], capture_output=True,
                              text=True, env=run_env(), timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout.splitlines()
        # C saw what Python stored
        assert "slots: 5 items of format 'q': 1 2 3 4 5" in out
        assert "greeting: hello from Python" in out
        assert "('point', 1): 7" in out
        assert ("5 keys: 'greeting' ('point', 1) True -0 'from_c'" in out)
        # Python sees what C wrote
        assert shr[4] == 15 and shr[0:4] == [1, 2, 3, 4]
        assert d["from_c"] == "hello from C"
        assert list(d) == ["greeting", ("point", 1), True, -0.0, "from_c"]


def test_the_c_example_reports_a_missing_segment(share, name):
    proc = subprocess.run([share, f"{name}_none", f"{name}_none2"],
                          capture_output=True, text=True, env=run_env(),
                          timeout=60)
    assert proc.returncode == 1
    assert "attach slots" in proc.stderr and "No such file" in proc.stderr


def test_the_c_example_refuses_a_dict_for_slots(share, name):
    with SharedDict(name, create=True, size=1 << 20):
        proc = subprocess.run([share, name, name], capture_output=True,
                              text=True, env=run_env(), timeout=60)
    assert proc.returncode == 1
    assert "holds a dict, not slots" in proc.stderr
