"""Build the one C11 extension, shmtxn._core.

Flavours by environment: SHMTXN_SANITIZE=1 builds with ASan+UBSan,
SHMTXN_DEBUG=1 without optimisation and with assertions.
"""
import os
from glob import glob

from setuptools import Extension, setup

CORE = "src/shmtxn/_core"
compile_args = ["-std=gnu11", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                "-Wno-cast-function-type", "-Wno-unused-parameter",
                "-fno-strict-aliasing"]
link_args = []
macros = []

flavour = "release"
if os.environ.get("SHMTXN_DEBUG") == "1":
    flavour = "debug"
    compile_args += ["-O0", "-g3", "-UNDEBUG"]
else:
    # hidden visibility + LTO: engine calls from the binding inline, no PLT
    compile_args += ["-O2", "-fvisibility=hidden", "-flto"]
    link_args += ["-flto", "-O2"]
if os.environ.get("SHMTXN_SANITIZE") == "1":
    flavour += "-sanitize"
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                "-fno-omit-frame-pointer", "-g"]
    compile_args += sanitize
    link_args += sanitize

setup(
    # setuptools does not track compiler flags: keep each flavour's objects
    # apart, or a release install could pick up sanitized ones
    options={"build": {"build_base": f"build/{flavour}"}},
    ext_modules=[
        Extension(
            "shmtxn._core",
            sources=sorted(glob(f"{CORE}/*.c")),
            depends=sorted(glob(f"{CORE}/*.h")),
            define_macros=macros,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            libraries=["rt", "pthread"],
        )
    ],
)
