"""The engine's unit tests in C (tests/engine/unit_*.c), built against the
internal engine API and run, under ASan+UBSan when the compiler has them.
The fuzz harness (fuzz/attach_image.c) is built here the same way, without
libFuzzer, to replay its corpus and the crash inputs in fuzz/regressions/.

The engine sources are compiled once per flavour of flags and linked into
every program (tests/test_drift.py builds its helper here too)."""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from test_engine_c import ENGINE, HERE, INCLUDE, ROOT, engine_sources

UNITS = sorted(f for f in os.listdir(HERE)
               if f.startswith("unit_") and f.endswith(".c"))
FUZZ = os.path.join(ROOT, "fuzz")
SHM = "/dev/shm"

_objects = {}  # tuple(flags) -> the engine's object files built with them


def compiler():
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    return cc


def compile_c(args):
    proc = subprocess.run([compiler(), "-std=gnu11", "-O1", "-g", "-Wall",
                           "-Wextra", "-Wno-missing-field-initializers",
                           f"-I{ENGINE}", f"-I{INCLUDE}", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def sanitize_flags():
    """ASan+UBSan flags if this compiler can build and run with them."""
    if "sanitize" not in _objects:
        work = tempfile.mkdtemp(prefix="stx-probe-")
        atexit.register(shutil.rmtree, work, True)
        probe = os.path.join(work, "probe.c")
        with open(probe, "w") as f:
            f.write("int main(void) { return 0; }\n")
        flags = ["-fsanitize=address,undefined",
                 "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
        proc = subprocess.run([compiler(), *flags, probe, "-o",
                               probe[:-2]], capture_output=True)
        ok = proc.returncode == 0 and subprocess.run(
            [probe[:-2]], env=program_env(), capture_output=True
        ).returncode == 0
        _objects["sanitize"] = flags if ok else []
    return _objects["sanitize"]


def engine_objects(flags):
    """The engine compiled with `flags`, once per run."""
    key = tuple(flags)
    if key not in _objects:
        work = tempfile.mkdtemp(prefix="stx-engine-")
        atexit.register(shutil.rmtree, work, True)
        objs = []
        for i, src in enumerate(engine_sources()):
            obj = os.path.join(work, f"{i}_{os.path.basename(src)}.o")
            compile_c([*flags, "-c", src, "-o", obj])
            objs.append(obj)
        _objects[key] = objs
    return _objects[key]


def build_program(tmp_path, source, flags=(), defines=()):
    """`source` (compiled with `defines` too) linked with the engine, all
    built with `flags`; the path of the program."""
    flags = list(flags)
    exe = str(tmp_path / os.path.basename(source)[:-2])
    compile_c([*flags, *defines, source, *engine_objects(flags), "-o", exe,
               "-lpthread", "-lrt"])
    return exe


def program_env():
    """The environment for a program built here: no preloaded runtime
    (the suite's own ASan run preloads gcc's), sanitizers that stop at
    the first report."""
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:exitcode=66"
    env["UBSAN_OPTIONS"] = "halt_on_error=1:print_stacktrace=1:exitcode=66"
    return env


def run_program(exe, *args, timeout=300):
    """Run `exe`; afterwards remove (and report) any segment it left."""
    proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=program_env())
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    left = [n for n in os.listdir(SHM)
            if n.startswith((f"stx_unit_{proc.pid}_", f"stxfz_{proc.pid}_"))]
    for n in left:
        os.unlink(os.path.join(SHM, n))
    return proc.returncode, out, err, left


@pytest.mark.parametrize("unit", UNITS)
def test_engine_unit(tmp_path, unit):
    exe = build_program(tmp_path, os.path.join(HERE, unit), sanitize_flags())
    rc, out, err, left = run_program(exe)
    assert "Sanitizer" not in err and "runtime error" not in err, err
    assert rc == 0, out + err
    lines = out.splitlines()
    assert lines and lines[-1].endswith(" checks, 0 failed"), out + err
    assert int(lines[-1].split()[0]) > 0
    assert all(line.endswith(" ok") for line in lines[:-1]), out
    assert not left, f"{unit} left segments behind: {left}"


def test_there_are_engine_units():
    assert {"unit_undo.c", "unit_seqlock.c", "unit_readers.c",
            "unit_alloc.c", "unit_table.c", "unit_recover.c"} <= set(UNITS)


# ---------------------------------------------------------------- fuzzing

def regressions():
    """The crash inputs kept in fuzz/regressions/, each with the reason
    it still fails if fuzz/regressions/open.txt lists it ("name reason")."""
    folder = os.path.join(FUZZ, "regressions")
    open_ones = {}
    listing = os.path.join(folder, "open.txt")
    if os.path.exists(listing):
        with open(listing) as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    name, _, reason = line.strip().partition(" ")
                    open_ones[name] = reason
    names = sorted(n for n in os.listdir(folder)
                   if n not in ("open.txt", "README.md")
                   and not n.startswith("."))
    return [pytest.param(os.path.join(folder, n), id=n, marks=[
        pytest.mark.xfail(strict=True, reason=open_ones[n])]
        if n in open_ones else []) for n in names]


@pytest.fixture(scope="module")
def replayer(tmp_path_factory):
    """fuzz/attach_image.c built without libFuzzer: main() replays the
    inputs named on its command line."""
    return build_program(tmp_path_factory.mktemp("fuzz"),
                         os.path.join(FUZZ, "attach_image.c"),
                         sanitize_flags(), ["-DSTX_FUZZ_REPLAY"])


def replay(replayer, *paths):
    rc, out, err, left = run_program(replayer, *paths)
    assert "Sanitizer" not in err and "runtime error" not in err, err
    assert rc == 0, out + err
    assert not left, f"the harness left segments behind: {left}"
    return out


def test_the_fuzz_corpus_replays_cleanly(replayer):
    corpus = os.path.join(FUZZ, "corpus")
    seeds = len(os.listdir(corpus))
    assert seeds >= 13
    assert f"replayed {seeds} inputs" in replay(replayer, corpus)


@pytest.mark.parametrize("path", regressions())
def test_fuzz_regression(replayer, path):
    assert "replayed 1 inputs" in replay(replayer, path)


def test_the_fuzz_corpus_is_of_the_current_format():
    """fuzz/corpus/ holds what fuzz/make_corpus.py writes today: after a
    format change, stale seeds would all be refused as incompatible and
    the fuzzer would never get past the header."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fuzz_images
    stale = []
    for kind, image in fuzz_images.build_bases().items():
        with open(os.path.join(FUZZ, "corpus", kind), "rb") as f:
            if f.read() != image:
                stale.append(kind)
    assert not stale, ("re-run `python fuzz/make_corpus.py`: stale seeds "
                       f"{stale}")
