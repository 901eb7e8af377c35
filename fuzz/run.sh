#!/usr/bin/env bash
# fuzz/run.sh [SECONDS] -- fuzz the engine with libFuzzer for SECONDS
# (default 60): build fuzz/attach_image.c and the engine with clang
# -fsanitize=fuzzer,address,undefined, then run it over fuzz/corpus.
#
# New inputs go to a scratch corpus, not into the repository; a crash,
# sanitizer report or hang (an input over 10 s) stops the run with a
# non-zero status and leaves the input in fuzz/findings/ (crash-*,
# timeout-*, ...).  Minimise one with
#   "$FUZZ_OUT"/attach_image -minimize_crash=1 -runs=10000 INPUT
# and keep it in fuzz/regressions/, which tests/test_engine_units.py
# replays.  FUZZ_OUT names the build and scratch directory (default: a
# fresh temporary one; give the same one again to go on from the
# corpus a previous run grew).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
if ! command -v clang >/dev/null; then
    echo "fuzz/run.sh: clang is not installed" >&2
    exit 2
fi
out=${FUZZ_OUT:-$(mktemp -d -t stx-fuzz-XXXXXX)}
mkdir -p "$out/corpus" fuzz/findings
core=src/shmtxn/_core
# shellcheck disable=SC2046
clang -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
    -I"$core/engine" -I"$core/include" fuzz/attach_image.c \
    $(find "$core/engine" -name '*.c' | sort) \
    -o "$out/attach_image" -lpthread -lrt
echo "== fuzzing the engine for ${secs}s (build and scratch corpus: $out)"

status=0
env -u LD_PRELOAD \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$out/attach_image" -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix=fuzz/findings/ "$out/corpus" fuzz/corpus &
pid=$!
wait "$pid" || status=$?
# the input in hand when a run died is still in /dev/shm
rm -f /dev/shm/stxfz_"$pid"_*
if [ "$status" -ne 0 ]; then
    echo "fuzz/run.sh: the fuzzer stopped with status $status; inputs:" >&2
    ls -l fuzz/findings >&2
fi
exit "$status"
