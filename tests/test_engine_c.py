"""The engine in C, without Python: tests/engine/*.c built against the
engine sources and run.  The race harness runs under ThreadSanitizer: a
writer thread and lock-free readers on one segment must produce no data
race report and no torn read."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINE = os.path.join(ROOT, "src", "shmtxn", "_core", "engine")
INCLUDE = os.path.join(ROOT, "src", "shmtxn", "_core", "include")
HERE = os.path.join(ROOT, "tests", "engine")


def engine_sources():
    """The engine's .c files: everything under _core/engine/."""
    return sorted(os.path.join(d, f) for d, _, files in os.walk(ENGINE)
                  for f in files if f.endswith(".c"))


def build(tmp_path, harness, flags):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    exe = str(tmp_path / harness.replace(".c", ""))
    cmd = [cc, "-std=gnu11", "-O1", "-g", *flags, f"-I{ENGINE}", f"-I{INCLUDE}",
           os.path.join(HERE, harness), *engine_sources(), "-o", exe,
           "-lpthread", "-lrt"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


def tsan_available(tmp_path):
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    cc = shutil.which("gcc") or shutil.which("cc") or "cc"
    proc = subprocess.run([cc, "-fsanitize=thread", str(probe), "-o",
                           str(tmp_path / "probe")], capture_output=True)
    return proc.returncode == 0


def test_the_engine_sources_do_not_include_python():
    for path in engine_sources():
        with open(path) as f:
            assert "Python.h" not in f.read(), path
    assert len(engine_sources()) >= 6


@pytest.mark.parametrize("harness", ["race_harness.c",
                                     "dict_race_harness.c"])
def test_writer_and_lock_free_readers_have_no_data_race(tmp_path, harness):
    if not tsan_available(tmp_path):
        pytest.skip("this compiler has no ThreadSanitizer runtime")
    exe = build(tmp_path, harness, ["-fsanitize=thread", "-Wno-tsan"])
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    env.pop("LD_PRELOAD", None)  # the ASan run's preload would clash
    proc = subprocess.run([exe], capture_output=True, text=True, env=env,
                          timeout=300)
    assert "ThreadSanitizer" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torn reads 0" in proc.stdout
