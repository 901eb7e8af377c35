#!/usr/bin/env bash
# Usage: .ci/sdist.sh [PYTHON]
# The sdist alone builds and passes the tests: build it (python -m build
# --sdist), unpack it in a scratch directory, and there run the README's
# test command with PYTHON (default python3): a fresh venv, pip install
# '.[test]', pytest (-rs added, so each skip says why).
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/packaging.sh
packaging_setup "${1:-python3}"
tools_venv build
build_and_unpack_sdist
cd "$SDIST_DIR"
echo "== README test command in the unpacked sdist"
"$PYTHON" -m venv .venv && .venv/bin/pip install -q '.[test]' \
    && .venv/bin/python -m pytest -q -p no:cacheprovider -rs
