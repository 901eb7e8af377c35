"""Capacity at its edges, from the outside review of the on-demand undo
log, the default (ceiling-less) SharedDict, out-of-place replaces and
SHMTXN_SHM_DIR: each test names the behaviour that holds, its docstring
the defect it guards against (each failed before its fix).
Scenarios that need a full file system run in a private tmpfs mounted in
a user+mount namespace (as tests/test_capacity.py does) and skip where
that is not possible.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import shmtxn
from shmtxn import SharedDict, SharedMemory

PY = sys.executable


def run_in_tmpfs(tmp_path, code, size="8m"):
    """Run `code` in a private mount namespace with a `size` tmpfs as
    SHMTXN_SHM_DIR; return (returncode, stdout, stderr)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to make a private tmpfs")
    mnt = tmp_path / "shm"
    mnt.mkdir()
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ, SHMTXN_SHM_DIR=str(mnt))
    cmd = ["unshare", "-rm", "sh", "-c",
           f'mount -t tmpfs -o size={size},mode=1777 r11 "$1" || exit 97;'
           ' exec "$2" "$3"', "sh", str(mnt), PY, str(script)]
    proc = subprocess.run(cmd, env=env, timeout=60, capture_output=True,
                          text=True)
    if proc.returncode == 97 or (proc.returncode != 0 and "unshare" in
                                 proc.stderr.split(":")[0]):
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr}")
    return proc.returncode, proc.stdout, proc.stderr


# ------------------------------------------------ out-of-place replaces

def test_rewriting_a_large_value_in_one_txn_reuses_the_txns_own_blocks(
        name):
    """Values >= 4 KiB are replaced out of place, and the block a txn
    allocated itself is only freed at commit: rewriting one 1 MiB value
    40 times in one txn needs 40 MiB of heap (16 MiB cap: SegmentFullError;
    default dict: 40 MiB of /dev/shm pinned for good).  Before 741e0fb a
    same-size value was replaced in place and this fit."""
    d = SharedDict(name, create=True, size=16 << 20)
    try:
        d["k"] = b"\0" * (1 << 20)
        with d.txn() as t:
            for i in range(40):
                t["k"] = bytes([i]) * (1 << 20)
        assert d["k"] == bytes([39]) * (1 << 20)
    finally:
        d.close()
        d.unlink()


# ------------------------------------------------------ undo_size= caps

def test_undo_size_caps_old_bytes_even_for_itemwise_writes(name):
    """docs: `undo_size=N` caps the *old bytes* a txn may log.  A txn that
    rewrites every item of a 64 KiB array one by one logs 64 KiB of old
    bytes, yet with undo_size=64 KiB it raises TransactionTooLarge after a
    quarter of the items: the whole-region record is tried only once the
    log passes data_size, when it no longer fits under the cap."""
    n = 64 << 10
    with SharedMemory(name, create=True, size=n, undo_size=n) as s:
        with s.txn() as t:
            for i in range(n // 8):
                t[i] = i + 1
        assert s[n // 8 - 1] == n // 8


# ------------------------------------------- lying reservations: SIGBUS

FILL = """
import os, subprocess, sys
def fill(d):
    with open(os.path.join(d, "filler"), "wb") as f:
        try:
            while True:
                f.write(b"\\0" * 65536)
                f.flush()
        except OSError:
            pass

def patch(path, offset, value):  # another process, as format.md says
    subprocess.run([sys.executable, "-c",
        "import struct,sys\\n"
        "with open(sys.argv[1], 'r+b') as f:\\n"
        "    f.seek(int(sys.argv[2])); f.write(struct.pack('Q', int(sys.argv[3])))",
        path, str(offset), str(value)], check=True)
"""


def test_a_lying_undo_reserved_is_an_error_not_sigbus(tmp_path):
    """undo_reserved (header byte 352) is trusted as 'backed by pages': set
    it to undo_size on a full file system and the next big txn writes its
    record into holes -- SIGBUS, where DESIGN.md promises a corrupt
    segment is an error, never a crash."""
    rc, out, err = run_in_tmpfs(tmp_path, FILL + textwrap.dedent("""
        import os, subprocess, sys, shmtxn
        from shmtxn import SharedMemory
        d = os.environ["SHMTXN_SHM_DIR"]
        s = SharedMemory("seg", create=True, shape=(1 << 17,), format="q")
        s[0] = 1
        fill(d)
        patch(os.path.join(d, "seg"), 352, s.info()["undo_size"])
        try:
            with s.txn() as t:
                t.ndarray()[:] = 7
            print("committed")
        except shmtxn.Error as e:
            print(type(e).__name__)
        """))
    assert rc == 0, (rc, out, err)  # today: -7 (SIGBUS)


def test_a_lying_heap_reserved_is_an_error_not_sigbus(tmp_path):
    """The same for a dict's heap_reserved (data region byte 128)."""
    rc, out, err = run_in_tmpfs(tmp_path, FILL + textwrap.dedent("""
        import os, subprocess, sys, shmtxn
        from shmtxn import SharedDict
        d = os.environ["SHMTXN_SHM_DIR"]
        s = SharedDict("seg", create=True, size=4 << 20)
        s["a"] = 1
        info = s.info()
        fill(d)
        patch(os.path.join(d, "seg"), info["data_off"] + 128,
              info["data_size"])
        try:
            s["b"] = b"x" * (2 << 20)
            print("stored")
        except shmtxn.Error as e:
            print(type(e).__name__)
        """))
    assert rc == 0, (rc, out, err)  # today: -7 (SIGBUS)


# ------------------------------------------- a dict near a full tmpfs

def test_a_default_dict_uses_the_last_free_bytes_of_its_file_system(
        tmp_path):
    """The heap grows by max(1 MiB, reserved/8) and, unlike the undo log,
    does not retry with just what the block needs: in a 64 MiB tmpfs a
    50 KB value is refused with SegmentFullError while ~4.8 MB (an eighth
    of the heap) are free -- and stay unusable."""
    rc, out, err = run_in_tmpfs(tmp_path, """
        import json, os, shmtxn
        from shmtxn import SharedDict
        d = os.environ["SHMTXN_SHM_DIR"]
        s = SharedDict("seg", create=True)
        i = 0
        try:
            while True:
                s[i] = os.urandom(50_000)
                i += 1
        except shmtxn.SegmentFullError as e:
            v = os.statvfs(d)
            print(json.dumps({"free": v.f_bavail * v.f_frsize,
                              "msg": str(e)}))
        """, size="64m")
    assert rc == 0, err
    got = json.loads(out)
    assert got["free"] < 200_000, got


# ---------------------------------------------------- SHMTXN_SHM_DIR

def run_with_dir(shm_dir, code, **kw):
    env = dict(os.environ, SHMTXN_SHM_DIR=shm_dir)
    return subprocess.run([PY, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60, **kw)


def test_creating_in_a_missing_shm_dir_names_the_directory(tmp_path):
    """SHMTXN_SHM_DIR=/missing: create=True raises SegmentNotFoundError
    'create of ... failed ...; create it with create=True' -- advice the
    caller already followed, and no word of the missing directory."""
    missing = str(tmp_path / "missing")
    out = run_with_dir(missing, """
        from shmtxn import SharedMemory
        try:
            SharedMemory("r11seg", create=True, size=80)
        except Exception as e:
            print(type(e).__name__, e)
        """)
    assert missing in out.stdout, out.stdout
    assert "create it with create=True" not in out.stdout, out.stdout


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root to drop to another user")
def test_creating_in_an_unwritable_shm_dir_names_the_directory(tmp_path):
    """An unwritable SHMTXN_SHM_DIR: 'the segment belongs to another user;
    check its mode in /dev/shm' -- there is no segment, and the directory
    is not /dev/shm."""
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(ro, 0o555)
    code = ("from shmtxn import SharedMemory\n"
            "try:\n"
            "    SharedMemory('r11seg', create=True, size=80)\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, e)\n")
    env = dict(os.environ, SHMTXN_SHM_DIR=str(ro))
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(drop + [PY, "-c", "import shmtxn"], env=env,
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:  # e.g. a Python built under /root (0700)
        pytest.skip("this interpreter cannot run as uid 65534: "
                    + probe.stderr.strip()[-200:])
    out = subprocess.run(drop + [PY, "-c", code], env=env,
                         capture_output=True, text=True, timeout=60)
    assert "Error" in out.stdout, (out.stdout, out.stderr)
    assert "/dev/shm" not in out.stdout and str(ro) in out.stdout, out.stdout


def test_full_error_advice_names_the_segment_directory(tmp_path):
    """With SHMTXN_SHM_DIR set, SegmentFullError still says 'free space
    in /dev/shm'."""
    rc, out, err = run_in_tmpfs(tmp_path, """
        import shmtxn
        from shmtxn import SharedMemory
        try:
            SharedMemory("huge", create=True, size=16 << 20)
        except shmtxn.SegmentFullError as e:
            print(e)
        """)
    assert rc == 0, err
    assert "/dev/shm" not in out, out


def test_a_relative_shm_dir_is_fixed_when_read(tmp_path):
    """docs: SHMTXN_SHM_DIR is 'read once, when the engine initialises'.
    A relative one is re-resolved against every later cwd: after a chdir
    the owner cannot attach its own segment, and close()+unlink() leave it
    behind (a leak `shmtxn ls` from elsewhere cannot see)."""
    (tmp_path / "shm").mkdir()
    (tmp_path / "elsewhere").mkdir()
    out = run_with_dir("shm", """
        import os
        from shmtxn import SharedMemory
        s = SharedMemory("r11rel", create=True, size=80)
        s[0] = 5
        os.chdir("elsewhere")
        try:
            a = SharedMemory("r11rel")
            print("attached", a[0])
            a.close()
        except Exception as e:
            print(type(e).__name__)
        s.close()
        s.unlink()
        """, cwd=str(tmp_path))
    left = os.listdir(tmp_path / "shm")
    assert "attached 5" in out.stdout and left == [], (out.stdout,
                                                       out.stderr, left)


# ------------------------------------------- default dict, address space

def test_a_default_dict_under_an_address_space_limit(name):
    """The default dict maps the whole /dev/shm size (24 GiB here) in every
    process.  Under RLIMIT_AS (ulimit -v 4 GiB, common on clusters) the
    default SharedDict() cannot be created at all: 'MemoryError: mmap of
    ... failed: Cannot allocate memory', with no hint that size= helps."""
    total = os.statvfs("/dev/shm").f_blocks * os.statvfs("/dev/shm").f_frsize
    if total <= 6 << 30:
        pytest.skip("/dev/shm is not larger than the limit used here")
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("ASan's shadow memory cannot live under an address-"
                    "space limit (the release run tests this)")
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        from shmtxn import SharedDict
        try:
            d = SharedDict({name!r}, create=True)
            d[1] = 1
            print("ok")
            d.close(); d.unlink()
        except Exception as e:
            print(type(e).__name__, e)
        """)
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.startswith("ok") or "size=" in out.stdout, out.stdout


# ------------------------------------------------ corrupt undo_reserved

def test_a_corrupt_undo_reserved_is_reported_as_such(name):
    """undo_reserved = 12345 (not a page multiple) on an idle segment: the
    next write txn fails, its rollback fails the same check, and the
    segment is marked unusable for good with 'a writer died and its
    transaction could not be rolled back; its data may be torn' -- no
    writer died, nothing was written, and the field at fault is not
    named."""
    with SharedMemory(name, create=True, size=80) as s:
        s[0] = 1
        subprocess.run([PY, "-c",
                        "import struct,sys\n"
                        "with open(sys.argv[1], 'r+b') as f:\n"
                        "    f.seek(352); f.write(struct.pack('Q', 12345))",
                        f"/dev/shm/{name}"], check=True)
        with pytest.raises(shmtxn.CorruptSegmentError) as e:
            with s.txn() as t:
                t[1] = 5
        assert "writer died" not in str(e.value), str(e.value)
        assert "undo" in str(e.value), str(e.value)


def test_a_txn_whose_write_failed_does_not_exit_as_if_committed(name):
    """A write that fails for want of room rolls the whole txn back.  If
    the body catches that error and goes on, leaving the `with` block must
    not look like a commit: it raises TransactionClosedError, and nothing
    of the txn is kept."""
    with SharedDict(name, create=True, size=1 << 20) as d:
        d["a"] = 1
        with pytest.raises(shmtxn.TransactionClosedError,
                           match="nothing of it was committed"):
            with d.txn() as t:
                t["a"] = 2
                with pytest.raises(shmtxn.SegmentFullError):
                    t["big"] = b"x" * (2 << 20)
        assert d["a"] == 1 and "big" not in d
        with d.txn() as t:  # an explicit abort still leaves quietly
            t["a"] = 3
            t.abort()
        assert d["a"] == 1
