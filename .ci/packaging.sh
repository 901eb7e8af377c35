# Shared by .ci/sdist.sh and .ci/wheel.sh (sourced, not run): a scratch
# directory, a tools venv, and the sdist built and unpacked in it.

# PYTHON (absolute) and WORK (a scratch directory, removed on exit) for the
# interpreter given as $1, default python3.
packaging_setup() {
    PYTHON=$("${1:-python3}" -c "import sys; print(sys.executable)") || {
        echo "no interpreter ${1:-python3}" >&2; exit 2; }
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/shmtxn-pkg.XXXXXX")
    chmod 755 "$WORK"  # tests run a child as another user: it reads the venv
    trap 'rm -rf "$WORK"' EXIT
    echo "== $("$PYTHON" -VV | head -1) ($PYTHON), scratch $WORK"
}

# A venv at $WORK/tools with the packages given (build, auditwheel, ...).
tools_venv() {
    "$PYTHON" -m venv "$WORK/tools"
    "$WORK/tools/bin/pip" install -q "$@"
}

# Build the sdist of this checkout into $WORK/dist (plus the wheel built
# from that sdist when given --wheel: what pip does with an sdist from
# PyPI) and unpack the sdist; SDIST_DIR is the unpacked tree.
build_and_unpack_sdist() {
    local what=(--sdist)
    [ "${1:-}" = --wheel ] && what=()   # build's default: sdist, then wheel from it
    "$WORK/tools/bin/python" -m build "${what[@]}" --outdir "$WORK/dist" . \
        > "$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
    tar xzf "$WORK"/dist/shmtxn-*.tar.gz -C "$WORK"
    SDIST_DIR=$(echo "$WORK"/shmtxn-*/)
    echo "== sdist $(basename "$WORK"/dist/shmtxn-*.tar.gz):" \
        "$(find "$SDIST_DIR" -type f | wc -l) files"
}
