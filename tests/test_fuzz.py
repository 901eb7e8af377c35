"""The corruption fuzzer: damaged images of every layout and state
(fuzz_images.py) are attached and used every way a user or the CLI can
(fuzz_worker.py), in watched subprocesses (fuzz_run.py).  Every operation
must end ok or with a shmtxn.Error -- never a signal, a sanitizer report,
another exception type, or a hang.  A few hundred seeds here, tens of
thousands with -m stress; docs/fuzzing.md has the counts and how to
reproduce one seed."""

import os
import struct

import pytest

import fuzz_images
import fuzz_run
import shmtxn
from shmtxn import SharedDict, SharedMemory

DEFAULT_SEEDS = range(300)
STRESS_SEEDS = range(300, 20300)
TIMEOUT = 1.0  # every txn and attach of the worker waits at most this

# Defects the fuzzer has found (all fixed now: docs/fuzzing.md).  While
# one is open, the seeds that hit it go in KNOWN / KNOWN_STRESS: left out
# of the runs below, and the default range's checked as strict expected
# failures, so that its fix shows.
DEFECTS = {
    "probe-utf8": "info.c: probe() of a header whose format field is not "
                  "UTF-8 raises UnicodeDecodeError (segment_info, check, "
                  "CLI exit 2)",
    "reader-spin": "lock.c enter_reader: with writer_flag up and the mutex "
                   "free (a scribbled flag, or a dead writer's whose lock "
                   "word lost its owner-died bit) a read txn takes and drops "
                   "the mutex forever, ignoring timeout=",
    "mutex-einval": "lock.c: a scribbled mutex (or an undo log placed over "
                    "it) makes pthread return EINVAL: OSError, not a "
                    "shmtxn.Error",
    "mutex-abort": "lock.c: a scribbled mutex kind makes glibc assert "
                   "(robust, tpp priority, futex error): SIGABRT",
    "segv": "segment.c header_validate: regions may overlap (slots_off, "
            "undo_off, data_off moved, checksum recomputed): attach writes "
            "a reader slot into the read-only data mapping (SIGSEGV), or the "
            "undo log overwrites a held mutex, whose stale robust-list entry "
            "crashes the next lock of another segment in the process",
    "codec": "codec.c: damaged record bytes raise UnicodeDecodeError, "
             "ValueError (float key, pickle protocol), UnpicklingError or "
             "EOFError instead of CorruptSegmentError",
}
KNOWN = {}  # none open: every defect above is fixed (see docs/fuzzing.md)
KNOWN_STRESS = {}


def excluded(known, stress=None):
    """The seeds to leave out: {seed: defect}."""
    out = dict(known)
    for defect, seeds in (stress or {}).items():
        out.update(dict.fromkeys(seeds, defect))
    return out


@pytest.fixture(scope="module")
def bases():
    return fuzz_images.build_bases()


def run(bases, seeds):
    fz = fuzz_run.Fuzzer(bases, timeout=TIMEOUT).run(seeds)
    images, ops = fz.counts()
    print(f"\nfuzz: {len(fz.results)} images: {dict(images.most_common())}"
          f"\nfuzz: operations: {dict(ops.most_common())}")
    return fz, images


def describe(failures):
    return "\n".join(
        f"seed {f['seed']} ({f['kind']}, {f['mutations']}): {f['why']}: "
        f"{str(f['detail'])[:400]}" for f in failures)


def test_default_seeds(bases):
    skip = excluded(KNOWN)
    fz, images = run(bases, [s for s in DEFAULT_SEEDS if s not in skip])
    assert not fz.failures, describe(fz.failures)
    # the runs reach both sides: images that work and images refused
    assert images["ok"] > 20 and images["CorruptSegmentError"] > 20


@pytest.mark.stress
def test_stress_seeds(bases):
    skip = excluded(KNOWN, KNOWN_STRESS)
    fz, _ = run(bases, [s for s in STRESS_SEEDS if s not in skip])
    assert not fz.failures, describe(fz.failures)


if KNOWN:  # only while a known defect is open (no empty parameter set)
    @pytest.mark.parametrize("seed", sorted(KNOWN))
    @pytest.mark.xfail(strict=True, reason="a known defect outside the "
                       "dict engine (see DEFECTS)")
    def test_known_defect_seeds(bases, seed):
        fz = fuzz_run.Fuzzer(bases, timeout=TIMEOUT)
        fz.alone(seed)
        assert not fz.failures, describe(fz.failures)


# ---- the fuzzer's own parts ----

def test_mutations_depend_only_on_the_seed(bases):
    again = fuzz_images.build_bases()
    for seed in range(50):
        kind, img, done = fuzz_images.mutate(bases, seed)
        assert fuzz_images.mutate(bases, seed) == (kind, img, done)
        assert fuzz_images.mutate(again, seed)[2] == done


def image_attaches(img, kind, recoveries=0):
    """Attach to a copy of `img`: its length, after a write txn (which
    recovers a dead writer) made `recoveries` recoveries."""
    name = fuzz_images.unique_name("chk")
    try:
        fuzz_run.write_image(name, img)
        cls = SharedDict if kind.startswith("dict") else SharedMemory
        with cls(name, timeout=TIMEOUT) as h:
            with h.txn(timeout=TIMEOUT):
                pass
            assert h.info()["recoveries"] == recoveries
            if kind.startswith("dict"):
                h.verify()
            return len(h)
    finally:
        fuzz_images.remove(name)


def test_recomputed_checksum_is_the_engines(bases):
    img = bytearray(bases["dict"])
    struct.pack_into("<Q", img, 192, 12345)  # created_ns
    with pytest.raises(shmtxn.CorruptSegmentError, match="checksum"):
        image_attaches(bytes(img), "dict")
    fuzz_images.fix_checksum(img)
    assert image_attaches(bytes(img), "dict") > 0


def test_base_images_are_in_their_states(bases):
    u = fuzz_images.u
    for kind, img in bases.items():
        magic = u(img, 0, 8)
        if kind.endswith("abandoned"):
            assert magic == 0x444c4955425854, kind  # still building
            continue
        assert magic == 0x4e5854544d4853, kind
        dead_writer = "writer" in kind or "crash" in kind or "growth" in kind
        assert (u(img, fuzz_images.UNDO_USED, 8) > 0) == dead_writer, kind
        assert (u(img, 448, 8) % 2 == 1) == dead_writer, kind  # seq odd
        slots = u(img, fuzz_images.SLOTS_OFF, 8)
        readers = [u(img, slots + 64 * i + 4, 4) for i in range(8)]
        assert (sum(readers) > 0) == kind.endswith("dead_reader"), kind
        assert image_attaches(img, kind, int(dead_writer)) > 0


def test_images_are_removed(bases):
    ours = [n for n in os.listdir(fuzz_images.SHM)
            if n.startswith(f"{fuzz_images.PREFIX}{os.getpid()}_")]
    assert not ours
