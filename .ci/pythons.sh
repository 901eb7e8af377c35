#!/usr/bin/env bash
# Print the path of a CPython interpreter of the asked version, building it
# first if this machine has none.
#
#   .ci/pythons.sh 3.12      an interpreter pyenv or the system already has
#   .ci/pythons.sh 3.13t     CPython 3.13 free-threaded (--disable-gil),
#                            built from Debian trixie's copy of its source
#
# Builds go to ${SHMTXN_PYTHONS:-$HOME/.cache/shmtxn-ci/pythons}/<version>
# and are reused by later runs.  The source is the upstream tarball that
# Debian ships as its package's .orig.tar.xz, checked against the SHA-256
# in Debian's signed Sources index, because this machine reaches Debian's
# and PyPI's mirrors but not python.org.  For 3.14 the mirror serves sid's
# binary packages but not their source, so 3.14 runs in a sid root
# (.ci/sid.sh) and 3.14t cannot be built here (docs/install.md).
# Progress goes to stderr; stdout is only the interpreter's path.
set -euo pipefail

want=${1:?usage: pythons.sh VERSION[t]}
minor=${want%t}
flags=()
[[ $want == *t ]] && flags+=(--disable-gil)
cache=${SHMTXN_PYTHONS:-$HOME/.cache/shmtxn-ci/pythons}
prefix=$cache/$want
exe=$prefix/bin/python$minor${want#"$minor"}

# 1. One already here: pyenv's, the system's, or an earlier build.
if [[ -x $exe ]]; then echo "$exe"; exit 0; fi
if [[ $want != *t ]]; then
    # (pyenv's shims are on PATH but fail unless that version is selected:
    # a candidate counts only if it runs)
    for cand in "$HOME"/.pyenv/versions/"$minor".*/bin/python"$minor" \
                "$(command -v "python$minor" || true)"; do
        if [[ -x $cand ]] && "$cand" -c 'import sys' 2>/dev/null; then
            echo "$cand"; exit 0
        fi
    done
fi

# 2. Build it from Debian's copy of the upstream source.
case $minor in
    3.13) suite=trixie ;;
    *) echo "pythons.sh: no source known for $want" >&2; exit 2 ;;
esac
mirror=http://deb.debian.org/debian
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "pythons.sh: building CPython $want from Debian $suite's source" >&2
curl -fsS --retry 3 "$mirror/dists/$suite/main/source/Sources.xz" \
    | xz -d > "$work/Sources"
# the stanza of package python3.X: its directory and the orig tarball's hash
read -r dir sha file < <(awk -v pkg="python$minor" '
    /^Package: / { inpkg = ($2 == pkg); insha = 0 }
    inpkg && /^Directory: / { dir = $2 }
    inpkg && /^Checksums-Sha256:/ { insha = 1; next }
    inpkg && insha && /^ / && $3 ~ /\.orig\.tar\.xz$/ { sha = $1; file = $3 }
    inpkg && insha && !/^ / { insha = 0 }
    END { print dir, sha, file }' "$work/Sources")
[[ -n $file ]] || { echo "pythons.sh: python$minor not in $suite" >&2; exit 2; }
curl -fsS --retry 3 -o "$work/$file" "$mirror/$dir/$file"
echo "$sha  $work/$file" | sha256sum -c --quiet -
tar -xJf "$work/$file" -C "$work"
src=$(find "$work" -maxdepth 1 -type d -name 'Python-*' | head -1)
(
    cd "$src"
    ./configure -q --prefix="$prefix" --without-ensurepip "${flags[@]}" \
        >"$work/configure.log" 2>&1 || { tail -30 "$work/configure.log"; exit 1; }
    make -s -j"$(nproc)" >"$work/make.log" 2>&1 || { tail -40 "$work/make.log"; exit 1; }
    make -s altinstall >"$work/install.log" 2>&1 || { tail -30 "$work/install.log"; exit 1; }
) >&2
# ensurepip is off (it would need the bundled wheel, present, but slow);
# venv --upgrade-deps is not needed: `python -m venv` bootstraps pip itself
"$exe" -m ensurepip -q >&2 2>&1 || true
echo "$exe"
