"""Build C programs against the engine sources and the public header, the
way a C user does (see docs/c-api.md): with AddressSanitizer and UBSan
when the compiler has them, so the C tests check memory safety too."""

import functools
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
CORE = os.path.join(ROOT, "src", "shmtxn", "_core")
ENGINE = os.path.join(CORE, "engine")
INCLUDE = os.path.join(CORE, "include")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer"]


def engine_sources():
    return sorted(os.path.join(d, f) for d, _, files in os.walk(ENGINE)
                  for f in files if f.endswith(".c"))


def compiler():
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    return cc


@functools.lru_cache(maxsize=None)
def sanitizers_work(out_dir):
    probe = os.path.join(out_dir, "probe.c")
    with open(probe, "w") as f:
        f.write("int main(void) { return 0; }\n")
    proc = subprocess.run([compiler(), *SANITIZE, probe, "-o", probe[:-2]],
                          capture_output=True)
    return proc.returncode == 0


_built = {}


def _compile(args, cwd):
    proc = subprocess.run([compiler(), "-std=gnu11", "-O1", "-g", "-Wall",
                           "-Wextra", "-Wno-missing-field-initializers",
                           "-Werror", f"-I{INCLUDE}", f"-I{ENGINE}", *args],
                          capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stderr


def engine_objects(tmp_path_factory):
    """The engine compiled once per test session: its object files."""
    if "engine" not in _built:
        out_dir = str(tmp_path_factory.mktemp("engine"))
        flags = SANITIZE if sanitizers_work(out_dir) else []
        _compile([*flags, "-c", *engine_sources()], out_dir)
        _built["engine"] = (flags, sorted(
            os.path.join(out_dir, f) for f in os.listdir(out_dir)
            if f.endswith(".o") and f != "probe.o"))
    return _built["engine"]


def build(source, tmp_path_factory):
    """Compile `source` and link it with the engine, once per test
    session; the executable."""
    if source not in _built:
        flags, objects = engine_objects(tmp_path_factory)
        out_dir = str(tmp_path_factory.mktemp("cbuild"))
        exe = os.path.join(out_dir, os.path.basename(source)[:-2])
        _compile([*flags, source, *objects, "-o", exe, "-lpthread", "-lrt",
                  "-lm"], out_dir)
        _built[source] = exe
    return _built[source]


def run_env():
    """The environment to run a built program in: without the preload a
    sanitized Python run sets (the program links its own runtime)."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    env.pop("LD_PRELOAD", None)
    return env
