"""The article's programs, verbatim: tests/article/ holds them byte for
byte as ../shared/seed/article_verbatim_*.py, and `python -m shmtxn run`
runs them on a stock interpreter, with each start method."""

import multiprocessing
import multiprocessing.managers
import os
import struct
import subprocess
import sys

import pytest

import shmtxn
from shmtxn import _install

HERE = os.path.dirname(os.path.abspath(__file__))
ARTICLE = os.path.join(HERE, "article")
SEED = os.path.join(HERE, "..", "..", "shared", "seed")
METHODS = ["fork", "spawn", "forkserver"]


def segments_created_by(pid):
    """Names in /dev/shm whose shmtxn header says `pid` created them."""
    found = []
    for name in os.listdir("/dev/shm"):
        try:
            with open(f"/dev/shm/{name}", "rb") as f:
                header = f.read(192)
        except OSError:
            continue
        if len(header) == 192 and struct.unpack_from("i", header, 184)[0] == pid:
            found.append(name)
    return found


def run(script, method):
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmtxn", "run", "--start-method", method,
         os.path.join(ARTICLE, script)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert segments_created_by(proc.pid) == []  # nothing left behind
    return out.splitlines()


@pytest.mark.parametrize("script", ["article_verbatim_1.py",
                                    "article_verbatim_2.py"])
def test_the_copies_are_the_seed_byte_for_byte(script):
    seed = os.path.join(SEED, script)
    if not os.path.exists(seed):
        pytest.skip("../shared/seed is not beside this clone; nothing to "
                    "compare the copies with")
    with open(seed, "rb") as a, open(os.path.join(ARTICLE, script), "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("method", METHODS)
def test_the_producer_consumer_program_runs_verbatim(method):
    lines = run("article_verbatim_1.py", method)
    numbers = [int(x) for x in lines]
    # the consumer's txn sees all of the producer's or none of it
    assert numbers in ([0] * 10, list(range(10)))


@pytest.mark.parametrize("method", METHODS)
def test_the_attributes_program_runs_verbatim(method):
    lines = run("article_verbatim_2.py", method)
    assert lines[0].startswith("name: ")
    assert lines[1:] == ["size: 80", str(list(range(10)))]
    assert not os.path.exists("/dev/shm/" + lines[0].split(": ", 1)[1])


def test_the_stock_interpreter_has_no_such_attribute():
    code = ("import multiprocessing\n"
            "print(hasattr(multiprocessing, 'shared_memory'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.fixture
def installed():
    shmtxn.install()
    shmtxn.install()  # idempotent
    yield
    shmtxn.uninstall()


def test_install_swaps_only_shared_memory(installed, name):
    import multiprocessing.shared_memory as module
    assert module.SharedMemory is shmtxn.SharedMemory
    assert multiprocessing.shared_memory.SharedMemory is shmtxn.SharedMemory
    with multiprocessing.shared_memory.SharedMemory(name, create=True,
                                                    size=80) as shr:
        with shr.txn() as t:
            t[0] = 1
    # what the stdlib builds on its own class still works
    sl = multiprocessing.shared_memory.ShareableList([1, "two", 3.0])
    try:
        assert list(sl) == [1, "two", 3.0]
        assert type(sl.shm).__module__ == "multiprocessing.shared_memory"
        assert type(sl.shm) is not shmtxn.SharedMemory
    finally:
        sl.shm.close()
        sl.shm.unlink()
    with multiprocessing.managers.SharedMemoryManager() as smm:
        shm = smm.SharedMemory(size=10)
        shm.buf[0] = 7
        assert shm.buf[0] == 7 and type(shm) is not shmtxn.SharedMemory
        sl = smm.ShareableList(range(3))
        assert list(sl) == [0, 1, 2]
        del shm, sl


def test_uninstall_restores_the_stdlib(name):
    import multiprocessing.shared_memory as before
    shmtxn.install()
    assert shmtxn._install.installed()
    shmtxn.uninstall()
    shmtxn.uninstall()  # idempotent
    import multiprocessing.shared_memory as after
    assert after is before and not _install.installed()
    assert after.SharedMemory is not shmtxn.SharedMemory


def test_run_keeps_argv_exit_code_and_tracebacks(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(
        "import sys, multiprocessing\n"
        "print(sys.argv[1:], __name__)\n"
        "print(multiprocessing.shared_memory.SharedMemory.__module__)\n"
        "if sys.argv[1] == 'fail':\n"
        "    raise RuntimeError('boom')\n"
        "sys.exit(int(sys.argv[1]))\n")
    cmd = [sys.executable, "-m", "shmtxn", "run", str(script)]
    proc = subprocess.run(cmd + ["3", "x"], capture_output=True, text=True)
    assert proc.returncode == 3
    assert proc.stdout.splitlines() == ["['3', 'x'] __main__",
                                        "shmtxn.memory"]
    proc = subprocess.run(cmd + ["fail"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "RuntimeError: boom" in proc.stderr and "Traceback" in proc.stderr
