"""Build shmtxn._core in two floors.

The engine (src/shmtxn/_core/engine/, C11 + POSIX) is compiled first as a
static library by build_clib, whose compiler has no include path but the
engine's own: "the engine does not include Python.h" is a build fact.  The
binding (src/shmtxn/_core/binding/, the CPython types) is the extension and
links the engine in.  Both floors see include/shmtxn.h, the public C API.

Flavours by environment: SHMTXN_SANITIZE=1 builds with ASan+UBSan,
SHMTXN_DEBUG=1 without optimisation and with assertions, SHMTXN_WERROR=1
turns every compiler warning into an error (docs/install.md).

Before compiling, the build checks what it needs -- Linux, a C compiler,
an archiver, CPython's headers -- and stops with an error that says what
to install rather than setuptools' "No such file or directory: 'gcc'".
Making an sdist or reading the metadata needs none of them.
"""
import os
import shlex
import shutil
import sys
import sysconfig
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_clib import build_clib
from setuptools.command.build_ext import build_ext
from setuptools.errors import PlatformError

CORE = "src/shmtxn/_core"
ENGINE = f"{CORE}/engine"
BINDING = f"{CORE}/binding"
INCLUDE = f"{CORE}/include"
compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                "-Wno-cast-function-type", "-Wno-unused-parameter",
                "-fno-strict-aliasing"]
link_args = []

flavour = "release"
if os.environ.get("SHMTXN_DEBUG") == "1":
    flavour = "debug"
    compile_args += ["-O0", "-g3", "-UNDEBUG"]
else:
    # hidden visibility + LTO: engine calls from the binding inline, no PLT
    # (fat objects: the archive links even where ar lacks the LTO plugin)
    compile_args += ["-O2", "-fvisibility=hidden", "-flto", "-ffat-lto-objects"]
    link_args += ["-flto", "-O2"]
if os.environ.get("SHMTXN_WERROR") == "1":
    compile_args += ["-Werror"]
if os.environ.get("SHMTXN_SANITIZE") == "1":
    flavour += "-sanitize"
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                "-fno-omit-frame-pointer", "-g"]
    compile_args += sanitize
    link_args += sanitize

WHEEL = "or install a prebuilt wheel (pip install --only-binary=shmtxn shmtxn)"


def first_word(command):
    """The program a command line such as "gcc -pthread" runs."""
    return shlex.split(command)[0] if command.strip() else ""


def missing_build_requirement():
    """Why this machine cannot build the extension, or None if it can.

    The compiler and archiver checked are the ones setuptools will run:
    $CC and $AR when set, else those Python was configured with."""
    if not sys.platform.startswith("linux"):
        return (f"shmtxn needs Linux (futex, robust process-shared mutexes, "
                f"/dev/shm); this is {sys.platform!r}, which has no build "
                f"(docs/install.md: supported platforms and why)")
    configured = first_word(sysconfig.get_config_var("CC") or "cc")
    cc = first_word(os.environ.get("CC", "")) or configured
    if not shutil.which(cc):
        others = [c for c in dict.fromkeys((configured, "cc", "gcc", "clang"))
                  if c != cc and shutil.which(c)]
        if others:  # a compiler exists, just not the one to be run
            who = ("$CC" if os.environ.get("CC")
                   else "the C compiler Python was built with")
            return (f"{who}, {cc!r}, is not found, but {others[0]!r} is: "
                    f"rerun with CC={others[0]}")
        return ("shmtxn builds a C extension and found no C compiler "
                f"(looked for $CC, cc, gcc; CC={os.environ.get('CC', '')!r}): "
                "install one (Debian/Ubuntu: apt-get install gcc python3-dev; "
                f"Fedora: dnf install gcc python3-devel) {WHEEL}")
    ar = (first_word(os.environ.get("AR", ""))
          or first_word(sysconfig.get_config_var("AR") or "ar"))
    if not shutil.which(ar):
        return (f"found no archiver {ar!r} to build the engine library: "
                f"install binutils (Debian/Ubuntu: apt-get install binutils)"
                f" or set AR, {WHEEL}")
    headers = sysconfig.get_path("include")
    if not os.path.exists(os.path.join(headers, "Python.h")):
        return (f"Python.h is not in {headers}: install this Python's "
                f"headers (Debian/Ubuntu: apt-get install python3-dev; "
                f"Fedora: dnf install python3-devel) {WHEEL}")
    return None


def check_build_requirements():
    problem = missing_build_requirement()
    if problem:
        raise PlatformError(problem)


class BuildEngine(build_clib):
    """build_clib, after checking the machine can compile at all (in run:
    making an sdist finalizes this command to list its sources)."""

    def run(self):
        check_build_requirements()
        super().run()


class BuildExtension(build_ext):
    """build_ext, after checking the machine can compile at all."""

    def run(self):
        check_build_requirements()
        super().run()


engine_sources = sorted(glob(f"{ENGINE}/**/*.c", recursive=True))
engine_headers = sorted(glob(f"{ENGINE}/**/*.h", recursive=True)
                        + glob(f"{INCLUDE}/*.h"))

setup(
    cmdclass={"build_clib": BuildEngine, "build_ext": BuildExtension},
    # setuptools does not track compiler flags: keep each flavour's objects
    # apart, or a release install could pick up sanitized ones
    options={"build": {"build_base": f"build/{flavour}"}},
    libraries=[
        ("shmtxn_engine", {
            "sources": engine_sources,
            "include_dirs": [ENGINE, INCLUDE],
            "cflags": compile_args + ["-fPIC"],
            "obj_deps": {"": engine_headers},
        })
    ],
    ext_modules=[
        Extension(
            "shmtxn._core",
            sources=sorted(glob(f"{BINDING}/*.c")),
            include_dirs=[BINDING, ENGINE, INCLUDE],
            # relink when the engine changes
            depends=engine_sources + engine_headers
            + sorted(glob(f"{BINDING}/*.h")),
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            libraries=["rt", "pthread"],
        )
    ],
)
