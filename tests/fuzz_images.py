"""Segment images for the corruption fuzzer: base images of every layout
and state, and deterministic mutations of them.

A base image is the bytes of /dev/shm/<name> of a real segment, taken in
one of these states: clean slots (two formats), a clean dict, a writer or
reader SIGKILLed inside its txn (slots and dict), a dict killed while its
txn rebuilt the table, writers killed at the engine's crash points, and a
creator killed before publishing.  mutate(bases, seed) picks one of them
and damages it the same way for the same seed.  Offsets are those of
docs/format.md (src/shmtxn/_core/engine/layout.h is the authority).
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import uuid

SHM = "/dev/shm"
# Not the suite's shmtxn_t_ prefix: a suite run from another checkout at
# the same time removes such names it did not have when it started.
PREFIX = "stxfz_"

# ---- the header (docs/format.md) ----
CHECKSUM_FROM, CHECKSUM_AT = 8, 200
IMMUTABLE = [  # (offset, size) of the fields the checksum covers
    (8, 4), (12, 4), (16, 4), (20, 4), (24, 8), (32, 8), (40, 4), (44, 4),
    (48, 8), (56, 8), (64, 8), (72, 8), (80, 16), (96, 4), (100, 4),
    *[(104 + 8 * i, 8) for i in range(8)], (168, 8), (176, 8), (184, 4),
    (188, 4), (192, 8)]
MUTABLE = [(0, 8), (200, 8), (256, 4), (260, 4), (448, 8), (456, 4),
           (460, 4), (272, 4), (276, 4), (320, 8), (328, 8), (336, 8),
           (344, 8), (352, 8)]
MUTEX = (384, 40)
SLOTS_OFF, NSLOTS, UNDO_OFF, UNDO_SIZE, DATA_OFF, DATA_SIZE = (
    32, 40, 48, 56, 64, 72)
UNDO_USED = 320
SLOT_SIZE = 64
# ---- the dict (docs/format.md) ----
DICT_STATE = [(8 * i, 8) for i in range(16)] + [(128, 8)]
FREE_HEADS, CLASSES = 192, 176
RECORD_FIELDS = [(0, 8), (8, 8), (16, 4), (20, 1), (21, 1), (22, 2),
                 (24, 8)]

KINDS = ["slots", "slots2d", "dict", "slots_dead_writer",
         "dict_dead_writer", "slots_dead_reader", "dict_dead_reader",
         "dict_mid_growth", "slots_crash_after_log", "dict_crash_after_log",
         "dict_crash_before_clear", "slots_abandoned", "dict_abandoned"]


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64, as segment.c's header_checksum."""
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def fix_checksum(img: bytearray) -> None:
    """Recompute the header checksum over bytes [8, 200)."""
    if len(img) >= CHECKSUM_AT + 8:
        struct.pack_into("<Q", img, CHECKSUM_AT,
                         fnv1a64(img[CHECKSUM_FROM:CHECKSUM_AT]))


def unique_name(tag: str) -> str:
    return f"{PREFIX}{os.getpid()}_{tag}_{uuid.uuid4().hex[:6]}"


def remove(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM, name))
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- bases

SETUP = {
    "slots": "s = SharedMemory({name!r}, create=True, size=80, "
             "max_processes=8)\ns[0:10] = list(range(-5, 5))\n",
    "slots2d": "s = SharedMemory({name!r}, create=True, format='d', "
               "shape=(6, 4), max_processes=8)\n"
               "s[0:24] = [i / 3 for i in range(24)]\n",
    "dict": "s = SharedDict({name!r}, create=True, size=1 << 16, "
            "undo_size=1 << 14, max_processes=8)\nfill_dict(s)\n",
}
DICT_FILL = '''
def fill_dict(d):
    for i in range(40):
        d[f"k{i}"] = b"v" * (i * 7 % 90)
    d.update({1: 1.5, 2.5: "text", (1, "t"): None, True: [1, 2],
              -7: {"p": 1}, "big": b"B" * 3000, "s": "\\u00e9" * 20})
    for i in range(0, 40, 3):
        del d[f"k{i}"]
    d["k1"] = b"w" * 300
'''
# what a child does to its segment before it dies (SIGKILL or crash point)
CHILD = {
    "slots_dead_writer": "with s.txn() as t:\n    t[0:5] = [9] * 5\n"
                         "    t[7] = 70\n    os.kill(os.getpid(), 9)\n",
    "dict_dead_writer": "with s.txn() as t:\n    t['k2'] = 'changed'\n"
                        "    del t['k4']\n    t['new'] = b'n' * 500\n"
                        "    os.kill(os.getpid(), 9)\n",
    "slots_dead_reader": "with s.txn(write=False) as t:\n    t[0]\n"
                         "    os.kill(os.getpid(), 9)\n",
    "dict_dead_reader": "with s.txn(write=False) as t:\n    t.get('k1')\n"
                        "    os.kill(os.getpid(), 9)\n",
    "dict_mid_growth": "with s.txn() as t:\n    for i in range(120):\n"
                       "        t[('g', i)] = i\n"
                       "    os.kill(os.getpid(), 9)\n",
    "slots_crash_after_log": "with s.txn() as t:\n    t[3] = 33\n",
    "dict_crash_after_log": "with s.txn() as t:\n    t['k5'] = 5\n",
    "dict_crash_before_clear": "with s.txn() as t:\n    t['k5'] = 5\n"
                               "    del t['k7']\n",
}
CRASH_AT = {"slots_crash_after_log": "write:after_log",
            "dict_crash_after_log": "write:after_log",
            "dict_crash_before_clear": "commit:before_clear",
            "slots_abandoned": "create:before_magic",
            "dict_abandoned": "create:before_magic"}
HEAD = "import os\nfrom shmtxn import SharedDict, SharedMemory\n" + DICT_FILL


def layout_of(kind: str) -> str:
    return "dict" if kind.startswith("dict") else "slots"


def _run_child(code: str, crash_at: str | None = None) -> int:
    env = dict(os.environ)
    env.pop("SHMTXN_CRASH_AT", None)
    if crash_at:
        env["SHMTXN_CRASH_AT"] = crash_at
    proc = subprocess.run([sys.executable, "-c", code], env=env,
                          capture_output=True, timeout=60)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"base image child failed: {proc.stderr!r}")
    return proc.returncode


def _read(name: str) -> bytes:
    with open(os.path.join(SHM, name), "rb") as f:
        return f.read()


# Volatile bytes are set to these, so that a seed means the same image in
# every run: the hash key (chosen before any key is inserted, so the table
# layout follows), pids, thread ids and times.
HASH_KEY = (0x0123456789ABCDEF, 0x0FEDCBA987654321)
FAKE_PID, FAKE_NS = 4000000, 1_700_000_000 * 10 ** 9
OWNER_DIED_AND_WAITERS = 0xC0000000


def _patch(name: str, edit) -> None:
    """Apply edit(bytearray) to the file of `name` in place."""
    with open(os.path.join(SHM, name), "r+b") as f:
        img = bytearray(f.read())
        edit(img)
        f.seek(0)
        f.write(img)


def set_hash_key(img: bytearray) -> None:
    """The fixed hash key; only for a dict with no keys yet."""
    struct.pack_into("<QQ", img, 168, *HASH_KEY)
    fix_checksum(img)


def normalize(img: bytearray) -> None:
    """Pids, thread ids and times set to fixed values (all dead)."""
    struct.pack_into("<QQ", img, 168, *HASH_KEY)  # unused by slots
    put(img, 184, 4, FAKE_PID)         # creator_pid
    put(img, 192, 8, FAKE_NS)          # created_ns
    fix_checksum(img)
    put(img, 344, 8, FAKE_NS)          # modified_ns
    if u(img, 260, 4):
        put(img, 260, 4, FAKE_PID + 1)  # writer_pid
    lock = u(img, 384, 4)
    if lock:  # a dead owner's thread id, with the kernel's flag bits
        put(img, 384, 4, (lock & OWNER_DIED_AND_WAITERS) | (FAKE_PID + 1))
        put(img, 392, 4, FAKE_PID + 1)  # __owner
        put(img, 408, 16, 0)            # its robust list links
    slots = u(img, SLOTS_OFF, 8)
    for i in range(u(img, NSLOTS, 4)):
        at = slots + SLOT_SIZE * i
        if u(img, at, 4):
            put(img, at, 4, FAKE_PID + 2 + i)
        if u(img, at + 8, 8):
            put(img, at + 8, 8, FAKE_NS)


def build_base(kind: str) -> bytes:
    """The bytes of a segment brought into state `kind`."""
    name = unique_name("base")
    base = kind if kind in SETUP else layout_of(kind)
    if kind.endswith("abandoned"):
        base = "slots" if kind.startswith("slots") else "dict"
    try:
        if kind.endswith("abandoned"):  # the creator dies mid-creation
            rc = _run_child(HEAD + SETUP[base].format(name=name),
                            CRASH_AT[kind])
            assert rc == -signal.SIGKILL
            if base == "dict":
                _patch(name, set_hash_key)
        else:
            build_clean(name, base)
        if kind in CHILD:
            opener = ("SharedDict" if layout_of(kind) == "dict"
                      else "SharedMemory")
            rc = _run_child(HEAD + f"s = {opener}({name!r})\n" + CHILD[kind],
                            CRASH_AT.get(kind))
            assert rc == -signal.SIGKILL, kind
        _patch(name, normalize)
        return _read(name)
    finally:
        remove(name)


def build_clean(name: str, base: str) -> None:
    """Create `name` as SETUP[base] says; a dict gets the fixed hash key
    before its keys."""
    setup = SETUP[base].format(name=name)
    if base == "dict":
        create, fill = setup.split("\n", 1)
        _run_child(HEAD + create + "\ns.close()\n")
        _patch(name, set_hash_key)
        setup = f"s = SharedDict({name!r})\n" + fill
    _run_child(HEAD + setup + "s.close()\n")  # the creator: no unlink


def build_bases() -> dict[str, bytes]:
    return {kind: build_base(kind) for kind in KINDS}


# ---------------------------------------------------------------- mutations

def u(img, off, size):
    """The unsigned little-endian integer at [off, off + size), or None."""
    if off < 0 or off + size > len(img):
        return None
    return int.from_bytes(img[off:off + size], "little")


def put(img, off, size, value):
    if 0 <= off and off + size <= len(img):
        img[off:off + size] = (value % (1 << (8 * size))).to_bytes(
            size, "little")


def interesting(rng, old, size, img):
    """A value worth trying in a `size`-byte field that held `old`."""
    bits = 8 * size
    old = old or 0
    choices = [0, 1, 2, 3, 7, 8, 16, 31, 32, 64, 255, 4095, 4096, 4097,
               (1 << bits) - 1, 1 << (bits - 1), (1 << (bits - 1)) - 1,
               old + 1, old - 1, old + 8, old - 8, old + 16, old - 16,
               old * 2, old // 2, old ^ (1 << rng.randrange(bits)),
               len(img), len(img) + 1, len(img) - 1, len(img) // 2,
               rng.getrandbits(bits), rng.randrange(len(img) + 1)]
    return rng.choice(choices) % (1 << bits)


def geometry(img):
    """[slots_off, nslots, undo_off, undo_size, data_off, data_size] as
    the header says, or None if the header is cut off."""
    if len(img) < 4096:
        return None
    return [u(img, o, s) for o, s in ((SLOTS_OFF, 8), (NSLOTS, 4),
                                       (UNDO_OFF, 8), (UNDO_SIZE, 8),
                                       (DATA_OFF, 8), (DATA_SIZE, 8))]


def m_header(rng, img, kind):
    off, size = rng.choice(IMMUTABLE + MUTABLE)
    put(img, off, size, interesting(rng, u(img, off, size), size, img))
    return f"header[{off}:{size}]"


def m_header_checksummed(rng, img, kind):
    off, size = rng.choice(IMMUTABLE)
    put(img, off, size, interesting(rng, u(img, off, size), size, img))
    fix_checksum(img)
    return f"header+checksum[{off}:{size}]"


def m_mutex(rng, img, kind):
    off = MUTEX[0] + 4 * rng.randrange(MUTEX[1] // 4)
    put(img, off, 4, interesting(rng, u(img, off, 4), 4, img))
    return f"mutex[{off}]"


def m_slot(rng, img, kind):
    g = geometry(img)
    if g is None:
        return m_bytes(rng, img, kind)
    slots_off, nslots = g[0], min(g[1], 8)
    at = slots_off + SLOT_SIZE * rng.randrange(max(nslots, 1))
    field = rng.choice([(0, 4), (4, 4), (8, 8)])
    value = rng.choice([0, 1, interesting(rng, u(img, at + field[0],
                                                 field[1]), field[1], img)])
    put(img, at + field[0], field[1], value)
    return f"slot[{at}+{field[0]}]"


def m_undo(rng, img, kind):
    g = geometry(img)
    if g is None:
        return m_bytes(rng, img, kind)
    undo_off, undo_size = g[2], g[3]
    used = u(img, UNDO_USED, 8)
    if used and used <= undo_size and rng.random() < 0.7:
        # damage a record of the log: its offset, length, bytes or trailer
        pos = undo_off + rng.choice([0, 8, 16, used - 8,
                                     8 * rng.randrange(max(used // 8, 1))])
        put(img, pos, 8, interesting(rng, u(img, pos, 8), 8, img))
        return f"undo[{pos - undo_off}]"
    if rng.random() < 0.5:
        put(img, UNDO_USED, 8, interesting(rng, used, 8, img))
        return "undo_used"
    # a well-formed record that restores chosen bytes anywhere
    off = rng.choice([0, 8, 64, rng.randrange(1 << 16),
                      rng.getrandbits(64)])
    length = rng.choice([1, 8, 16, 128, rng.randrange(1, 512)])
    pad = (length + 7) // 8 * 8
    rec = struct.pack("<QQ", off, length) + bytes(
        rng.getrandbits(8) for _ in range(pad)) + struct.pack(
        "<Q", 24 + pad)
    start = used if used and used + len(rec) <= undo_size else 0
    img[undo_off + start:undo_off + start + len(rec)] = rec
    put(img, UNDO_USED, 8, start + len(rec))
    return f"undo+record[{off}:{length}]"


def dict_fields(img):
    """Offsets of the dict's shared fields worth damaging (absolute)."""
    g = geometry(img)
    if g is None:
        return []
    data = g[4]
    out = [(data + o, s) for o, s in DICT_STATE]
    out += [(data + FREE_HEADS + 8 * c, 8) for c in range(CLASSES)
            if u(img, data + FREE_HEADS + 8 * c, 8)]
    index_off, cap = u(img, data + 16, 8), u(img, data + 24, 8)
    entries_off, used = u(img, data + 32, 8), u(img, data + 104, 8)
    top = u(img, data + 64, 8)
    if None in (index_off, cap, entries_off, used, top) or top > len(img):
        return out
    out += [(data + index_off + 8 * i, 8) for i in range(min(cap, 64))]
    out += [(data + index_off + 8 * cap + 4 * i, 4)
            for i in range(min(cap, 64))]
    for e in range(min(used, 64)):
        at = data + entries_off + 16 * e
        out += [(at, 8), (at + 8, 8)]
        record = u(img, at + 8, 8)
        if record and data + record + 32 <= len(img):
            out += [(data + record + o, s) for o, s in RECORD_FIELDS]
    return out


def m_dict(rng, img, kind):
    fields = dict_fields(img) if layout_of(kind) == "dict" else []
    if not fields:
        return m_header(rng, img, kind)
    off, size = rng.choice(fields)
    put(img, off, size, interesting(rng, u(img, off, size), size, img))
    return f"dict[{off}:{size}]"


def m_bytes(rng, img, kind):
    if rng.random() < 0.7:
        spots = [rng.randrange(len(img)) for _ in range(rng.randrange(1, 9))]
        for at in spots:
            img[at] = rng.getrandbits(8)
        return f"bytes{spots}"
    at = rng.randrange(len(img))
    n = min(rng.choice([8, 64, 512]), len(img) - at)
    img[at:at + n] = bytes(rng.getrandbits(8) for _ in range(n))
    return f"range[{at}:{n}]"


def m_resize(rng, img, kind):
    n = len(img)
    if rng.random() < 0.6:
        new = rng.choice([0, 1, 7, 8, 200, 4095, 4096, n // 2, n - 4096,
                          n - 1, rng.randrange(n)])
        del img[max(new, 0):]
        return f"truncate[{max(new, 0)}]"
    extra = rng.choice([1, 8, 4096, rng.randrange(1, 1 << 16)])
    img.extend(bytes(extra) if rng.random() < 0.5
               else bytes(rng.getrandbits(8) for _ in range(extra)))
    return f"extend[{extra}]"


MUTATIONS = [(m_header, 3), (m_header_checksummed, 4), (m_mutex, 1),
             (m_slot, 2), (m_undo, 3), (m_dict, 5), (m_bytes, 3),
             (m_resize, 1)]


def mutate(bases: dict[str, bytes], seed: int):
    """The image for `seed`: (kind, bytes, what was done)."""
    rng = random.Random(seed)
    kind = rng.choice(KINDS)
    img = bytearray(bases[kind])
    done = []
    funcs, weights = zip(*MUTATIONS)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not img:
            break
        done.append(rng.choices(funcs, weights)[0](rng, img, kind))
    return kind, bytes(img), done
