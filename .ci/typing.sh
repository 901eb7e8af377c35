#!/usr/bin/env bash
# CI: the types of the installed shmtxn, in the virtual environment VENV
# (which has shmtxn installed with the `typing` or `test` extra):
#   1. mypy --strict on the package, and on tests/typing's snippets;
#   2. the errors mypy must report on tests/typing/fail (pytest);
#   3. stubtest on the whole package, shmtxn._core's stubs included.
# Usage: .ci/typing.sh VENV    (about a minute cold, seconds warm)
set -euo pipefail
venv=$(cd "${1:?usage: .ci/typing.sh VENV}" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
py="$venv/bin/python"
# run away from the repository: no config file applies and `shmtxn` is
# the installed package, not src/
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# a cache per venv and checkout: two runs at once must not share one
cache="${TMPDIR:-/tmp}/shmtxn-mypy-cache-$(id -u)-$(printf '%s\0%s' \
    "$venv" "$repo" | sha256sum | cut -c1-12)"

failed=()
step() {  # step NAME COMMAND...: run every step, report all that fail
    local name=$1
    shift
    echo "== $name"
    "$@" || failed+=("$name")
}
step "mypy $("$py" -m mypy --version | cut -d' ' -f2) --strict -p shmtxn" \
    "$py" -m mypy --strict --cache-dir "$cache" -p shmtxn
step "mypy --strict tests/typing/*.py" \
    "$py" -m mypy --strict --cache-dir "$cache" "$repo"/tests/typing/*.py
step "expected errors (tests/typing/fail) and the snippets at run time" \
    "$py" -m pytest -q -p no:cacheprovider --rootdir "$repo" \
    "$repo/tests/test_typing.py" -k "misuse or snippet_runs"
step "stubtest shmtxn" "$py" -m mypy.stubtest shmtxn
if ((${#failed[@]})); then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "types: all clean"
