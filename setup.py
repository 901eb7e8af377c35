"""Build shmtxn._core in two floors.

The engine (src/shmtxn/_core/engine/, C11 + POSIX) is compiled first as a
static library by build_clib, whose compiler has no include path but the
engine's own: "the engine does not include Python.h" is a build fact.  The
binding (src/shmtxn/_core/binding/, the CPython types) is the extension and
links the engine in.  Both floors see include/shmtxn.h, the public C API.

Flavours by environment: SHMTXN_SANITIZE=1 builds with ASan+UBSan,
SHMTXN_DEBUG=1 without optimisation and with assertions; SHMTXN_WERROR=1
turns every warning into an error.
"""
import os
from glob import glob

from setuptools import Extension, setup

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
if os.environ.get("SHMTXN_SANITIZE") == "1":
    flavour += "-sanitize"
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                "-fno-omit-frame-pointer", "-g"]
    compile_args += sanitize
    link_args += sanitize
if os.environ.get("SHMTXN_WERROR") == "1":
    compile_args.append("-Werror")  # CI: no warning on any Python version

engine_sources = sorted(glob(f"{ENGINE}/**/*.c", recursive=True))
engine_headers = sorted(glob(f"{ENGINE}/**/*.h", recursive=True)
                        + glob(f"{INCLUDE}/*.h"))

setup(
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
