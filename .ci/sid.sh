#!/usr/bin/env bash
# Run a command inside a Debian sid root, for the Pythons the host's Debian
# does not have (sid packages CPython 3.14; python.org, where its source
# lives, is out of this machine's reach, and Debian serves sid's binaries
# but not its sources).
#
#   .ci/sid.sh setup           build (or reuse) the root; prints its path
#   .ci/sid.sh run CMD...      run CMD in the root, in /src = a fresh copy of
#                              this repository (no venvs, no build/)
#
# The root is ${SHMTXN_SID_ROOT:-$HOME/.cache/shmtxn-ci/sid-root}, made by
# debootstrap (installed with apt-get if missing) and reused by later runs.
# `run` copies the repository in (a bind mount would share build/ and .venv
# with the host's interpreter), bind-mounts /proc and /dev (with /dev/shm),
# hands over the host's CA bundle (pip's mirror may need it), and unmounts
# on the way out, however the command ends.
set -euo pipefail

root=${SHMTXN_SID_ROOT:-$HOME/.cache/shmtxn-ci/sid-root}
repo=${SHMTXN_SRC:-$(cd "$(dirname "$0")/.." && pwd)}
packages=python3.14,python3.14-dev,python3.14-venv,gcc,libc6-dev,binutils,ca-certificates,redis-server

setup() {
    if [[ -x $root/usr/bin/python3.14 && -x $root/usr/bin/gcc
          && -x $root/usr/bin/redis-server ]]; then
        echo "$root"; return
    fi
    if ! command -v debootstrap >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
    fi
    rm -rf "$root"
    mkdir -p "$(dirname "$root")"
    echo "sid.sh: debootstrap sid into $root" >&2
    debootstrap --variant=minbase --include="$packages" sid "$root" \
        http://deb.debian.org/debian >"$root.log" 2>&1 \
        || { tail -20 "$root.log" >&2; exit 1; }
    echo "$root"
}

run() {
    setup >/dev/null
    mounts=()
    cleanup() {
        local i
        for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
            umount -l "${mounts[i]}" 2>/dev/null || true
        done
    }
    trap cleanup EXIT
    rm -rf "$root/src" && mkdir -p "$root/src"
    tar -C "$repo" --exclude='./.venv*' --exclude=./build --exclude=./.git \
        -cf - . | tar -C "$root/src" -xf -
    mount --bind /proc "$root/proc" && mounts+=("$root/proc")
    mount --rbind /dev "$root/dev" && mounts+=("$root/dev")
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca.crt"
    chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 CI="${CI:-}" PIP_CERT=/etc/ssl/certs/host-ca.crt \
        PIP_DISABLE_PIP_VERSION_CHECK=1 SHMTXN_WERROR="${SHMTXN_WERROR:-}" \
        /bin/bash -c 'cd /src && "$@"' bash "$@"
}

case ${1:-} in
    setup) setup ;;
    run) shift; run "$@" ;;
    *) echo "usage: sid.sh setup | run CMD..." >&2; exit 2 ;;
esac
