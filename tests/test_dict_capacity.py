"""SharedDict filled to capacity: the heap allocator keeps the dict valid
(verify() after every operation) up to SegmentFullError and through churn
after it, in auto-committed operations and in txns; free blocks at the top
go back to the heap; a lock-free read never decodes a length it has not
proved committed."""

import mmap
import multiprocessing
import os
import platform
import random
import signal
import struct
import tracemalloc

import pytest

import shmtxn
from shmtxn import SharedDict

CTX = multiprocessing.get_context("fork")
SIZES = [1 << 16, 1 << 18, 1 << 20]
# value sizes: log-uniform from 1 B to 64 KiB, or small records only
PROFILES = {"mixed": (0, 16), "small": (0, 8)}
HEAP_OFF = 1600          # docs/format.md: the dict header
RECORD = 32              # docs/format.md: record header
SEQ = 448                # docs/format.md: header.seq


def class_sizes():
    """The allocator's block sizes (docs/format.md), up to 1 GiB."""
    sizes = list(range(32, 257, 16))
    base = 256
    while base < 1 << 30:
        sizes += [base + step * base // 4 for step in range(1, 5)]
        base *= 2
    return sizes


class Churn:
    """Random operations on a SharedDict and a plain dict side by side;
    every outcome is checked against the model."""

    def __init__(self, d, seed, profile):
        self.d, self.model = d, {}
        self.rng = random.Random(seed)
        self.lo, self.hi = PROFILES[profile]
        self.full = 0
        self.next_key = 0

    def value(self, scale=1.0):
        n = int(2 ** self.rng.uniform(self.lo, self.hi) * scale)
        return bytes([self.rng.randrange(256)]) * max(1, min(n, 1 << 16))

    def new_key(self):
        self.next_key += 1
        return f"k{self.next_key}" if self.next_key % 3 else self.next_key

    def put(self, key, value):
        """d[key] = value; False if the dict was full (nothing changed)."""
        try:
            self.d[key] = value
        except shmtxn.SegmentFullError:
            self.full += 1
            assert self.d.get(key) == self.model.get(key)
            return False
        self.model[key] = value
        return True

    def step(self):
        """One random operation: insert, delete, re-insert or resize."""
        op = self.rng.random()
        if not self.model or op < 0.3:
            self.put(self.new_key(), self.value())
        elif op < 0.6:
            key = self.rng.choice(list(self.model))
            del self.d[key]
            del self.model[key]
        else:
            key = self.rng.choice(list(self.model))
            scale = self.rng.choice([0.25, 0.5, 2.0, 4.0])
            self.put(key, self.value() if op < 0.8
                     else self.model[key][:1] * int(len(self.model[key])
                                                    * scale + 1))

    def txn_step(self):
        """A txn of a few operations: all of it, or none if it was full."""
        ops = []
        for _ in range(self.rng.randrange(1, 8)):
            if self.model and self.rng.random() < 0.3:
                ops.append((self.rng.choice(list(self.model)), None))
            else:
                ops.append((self.new_key(), self.value()))
        after = dict(self.model)
        try:
            with self.d.txn(timeout=5) as t:
                for key, value in ops:
                    if value is None:
                        t.pop(key, None)
                        after.pop(key, None)
                    else:
                        t[key] = after[key] = value
        except shmtxn.SegmentFullError:
            self.full += 1
            return
        self.model = after

    def check(self):
        assert self.d.copy() == self.model
        assert len(self.d) == len(self.model)


def fill(c):
    """Insert new keys until the dict is full, verifying after each."""
    while c.put(c.new_key(), c.value()):
        c.d.verify()
    c.d.verify()
    c.check()
    assert len(c.model) > 0


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("size", SIZES)
def test_fill_to_capacity_then_churn(name, size, profile):
    with SharedDict(name, create=True, size=size) as d:
        c = Churn(d, seed=size + len(profile), profile=profile)
        fill(c)
        for i in range(600):
            c.step()
            d.verify()
            if i % 100 == 0:
                c.check()
        c.check()
        fill(c)  # full again after the churn: still consistent
        for _ in range(150):
            c.txn_step()
            d.verify()
        c.check()
        stats = d.stats()
        assert stats["count"] == len(c.model)
        assert stats["live_bytes"] + stats["free_bytes"] == stats["heap_used"]
        assert c.full > 0


def test_txn_that_fills_the_dict_rolls_back_whole(name):
    with SharedDict(name, create=True, size=1 << 18) as d:
        c = Churn(d, seed=5, profile="mixed")
        for _ in range(20):
            c.put(c.new_key(), c.value())
        before = d.stats()
        with pytest.raises(shmtxn.SegmentFullError):
            with d.txn(timeout=5) as t:
                for key in list(c.model)[:5]:
                    del t[key]
                for i in range(10 ** 6):
                    t[f"new{i}"] = c.value()
        d.verify()
        c.check()
        after = d.stats()
        for field in ("count", "heap_used", "live_bytes", "free_bytes"):
            assert after[field] == before[field]


def test_split_that_would_leave_16_bytes(name):
    """The first report: a 64 KiB dict of small records, where splitting a
    free table block leaves a 16-byte rest that no size class holds (the
    report's dict was 64 KiB; the index's 12-byte slots need twice that
    for the same keys)."""
    with SharedDict(name, create=True, size=1 << 17) as d:
        for i in range(458):
            d[f"a{i:05d}"] = b"v" * 20
            d.verify()
        try:
            for i in range(458, 10 ** 4):
                d[f"a{i:05d}"] = b"v" * 20
        except shmtxn.SegmentFullError:
            pass
        d.verify()
        assert d.copy() == {f"a{j:05d}": b"v" * 20 for j in range(i)}


# ---- free blocks at the top of the heap go back to it ----

def fill_top(d, value):
    """Fill `d` with records until under three blocks are left at the top;
    returns the block size and the last keys, each placed at the top, one
    above the other."""
    block = min(s for s in class_sizes() if s > RECORD + len(value))
    bumped = []
    while True:
        s = d.stats()
        if s["heap_size"] - s["heap_used"] < 3 * block:
            return block, bumped
        key = f"a{len(d)}"
        d[key] = value
        after = d.stats()
        if (after["heap_used"] - s["heap_used"] == block
                and after["rebuilds"] == s["rebuilds"]):
            bumped.append(key)
        else:
            bumped = []


def free_run_at_top(d, n=8, value=b"x" * 1000):
    """Fill `d`, then delete the last `n` records at the top oldest first,
    each in its own txn: the newest lowers the heap top, the others wait
    on free lists just below it.  Returns a block size that fits only if
    those are given back."""
    block, bumped = fill_top(d, value)
    assert len(bumped) >= n
    before = d.stats()
    for key in bumped[-n:]:
        del d[key]
    after = d.stats()
    assert before["heap_used"] - after["heap_used"] == block
    assert after["free_bytes"] - before["free_bytes"] == (n - 1) * block
    room = after["heap_size"] - after["heap_used"]
    fits = max(s for s in class_sizes() if s <= room + (n - 1) * block)
    assert fits > room, "the test needs a block only the run can hold"
    assert fits > max(block, 4096)  # no free block holds it
    return fits


def test_free_blocks_ending_the_heap_are_given_back(name):
    with SharedDict(name, create=True, size=1 << 18) as d:
        fits = free_run_at_top(d)
        d["big"] = b"y" * (fits - RECORD - 64)
        d.verify()
        assert d["big"] == b"y" * (fits - RECORD - 64)
        del d["big"]
        d.verify()


def test_blocks_freed_in_one_txn_at_the_top_all_go_back(name):
    with SharedDict(name, create=True, size=1 << 18) as d:
        block, bumped = fill_top(d, b"x" * 1000)
        used = d.stats()["heap_used"]
        with d.txn(timeout=5) as t:
            for key in reversed(bumped[-8:]):  # newest first
                del t[key]
        assert d.stats()["heap_used"] == used - 8 * block
        d.verify()


def test_giving_back_rolls_back_with_its_txn(name):
    with SharedDict(name, create=True, size=1 << 18) as d:
        fits = free_run_at_top(d)
        before, contents = d.stats(), d.copy()
        with pytest.raises(ZeroDivisionError):
            with d.txn(timeout=5) as t:
                t["big"] = b"y" * (fits - RECORD - 64)
                1 / 0
        d.verify()
        assert d.stats() == before and d.copy() == contents


def give_back_then_die(name, size):
    """Child: a txn whose insert gives the top back, then SIGKILL."""
    d = SharedDict(name)
    with d.txn(timeout=5) as t:
        t["big"] = b"y" * size
        os.kill(os.getpid(), signal.SIGKILL)


def test_giving_back_is_undone_when_the_writer_dies(name):
    with SharedDict(name, create=True, size=1 << 18) as d:
        fits = free_run_at_top(d)
        before, contents = d.stats(), d.copy()
        p = CTX.Process(target=give_back_then_die,
                        args=(name, fits - RECORD - 64))
        p.start()
        p.join()
        assert p.exitcode == -signal.SIGKILL
        with d.txn(timeout=5):  # recovers the dead writer
            pass
        d.verify()
        assert d.info()["recoveries"] == 1
        assert d.stats() == before and d.copy() == contents


def test_replacing_within_16_bytes_of_the_block_stays_in_place(name):
    with SharedDict(name, create=True, size=1 << 18) as d:
        d["k"] = b"a" * 100
        used = d.stats()["heap_used"]
        for n in (90, 100, 80, 100):
            d["k"] = b"b" * n
            assert d.stats()["heap_used"] == used
        d.verify()


# ---- lock-free reads decode only committed lengths ----

def tearing_writer(name, record, torn, rounds, conn, cycles=20):
    """Child: like a writer mid-txn, make seq odd, give the record at
    `record` a `torn` block size and value length, put it back, make seq
    even; again and again, holding the write lock (read txns queue behind
    it) in rounds of `cycles`.  A lock-free reader that started before seq
    went odd may load the torn lengths."""
    d = SharedDict(name)
    data_off = d.info()["data_off"]
    with open(f"/dev/shm/{name}", "r+b") as f:
        mm = mmap.mmap(f.fileno(), 0)
    at = data_off + record
    clean = mm[at:at + RECORD]
    key_len, = struct.unpack_from("<I", clean, 16)
    dirty = bytearray(clean)
    struct.pack_into("<QQIBBHQ", dirty, 0, torn, 0, key_len, clean[20],
                     clean[21], 0, torn - RECORD - key_len)
    dirty = bytes(dirty)
    conn.send("ready")
    for _ in range(rounds):
        with d.txn(timeout=30):
            for _ in range(cycles):
                seq, = struct.unpack_from("<Q", mm, SEQ)
                struct.pack_into("<Q", mm, SEQ, seq + 1)
                for _ in range(4):  # torn for most of the cycle
                    mm[at:at + RECORD] = dirty
                mm[at:at + RECORD] = clean
                struct.pack_into("<Q", mm, SEQ, seq + 2)
    mm.close()
    conn.send("done")


def _read_in_child(path, spans, conn):
    """Child: the bytes at each (offset, length) of `path`."""
    with open(path, "rb") as f:
        conn.send([os.pread(f.fileno(), n, off) for off, n in spans])


def read_elsewhere(name, spans):
    """Read bytes of a segment's file in a child process.  Opening and
    closing the file here would drop this process's liveness lock (POSIX
    fcntl locks go with *any* fd of the file closed), and a writer would
    then take this live reader for dead (docs/semantics.md)."""
    parent, child = CTX.Pipe()
    p = CTX.Process(target=_read_in_child,
                    args=(f"/dev/shm/{name}", spans, child))
    p.start()
    got = parent.recv()
    p.join()
    return got


def slow_to_find(d, target, n=2500):
    """Insert `n` keys that lie in the index just before `target`'s home
    slot, then `target`: a lookup of `target` probes past all of them
    (microseconds), wide enough to overlap a writer's tearing."""
    data = d.info()["data_off"]
    [key] = read_elsewhere(d.name, [(168, 16)])
    k0, k1 = struct.unpack("<QQ", key)
    mask = 4095  # the index of 2500 keys: 4096 slots
    def home(key):
        return shmtxn._core._siphash(k0, k1, b"s" + key.encode()) & mask
    h = home(target)
    i = 0
    while len(d) < n:
        key = f"c{i}"
        i += 1
        if (h - home(key)) % (mask + 1) < 48:
            d[key] = i
    d[target] = b"s"
    assert d.stats()["index_slots"] == mask + 1
    [raw] = read_elsewhere(d.name, [(data + 32, 8)])
    entries_off, = struct.unpack("<Q", raw)
    [raw] = read_elsewhere(d.name, [(data + entries_off + 16 * n, 16)])
    _, record = struct.unpack("<QQ", raw)
    [key] = read_elsewhere(d.name, [(data + record + RECORD, 2)])
    assert key == b"s" + target.encode()
    return record


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="the fake writer relies on x86 store order")
def test_torn_read_never_sizes_an_allocation(name):
    with SharedDict(name, create=True, size=16 << 20) as d:
        record = slow_to_find(d, "k")
        d["filler"] = b"f" * (12 << 20)
        top = d.stats()["heap_used"] + HEAP_OFF
        torn = (top - record) // 16 * 16
        parent, child = CTX.Pipe()
        p = CTX.Process(target=tearing_writer,
                        args=(name, record, torn, 4000, child))
        p.start()
        try:
            assert parent.recv() == "ready"
            tracemalloc.start()
            reads = 0
            while not parent.poll():
                for _ in range(64):
                    assert d["k"] == b"s"
                reads += 64
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert parent.recv() == "done"
        finally:
            p.join()
        assert p.exitcode == 0 and reads > 0
        assert peak < torn // 4, f"a torn length sized a {peak}-byte read"
        assert d["k"] == b"s"
        d.verify()


# ---- damaged allocator state is an error ----

@pytest.mark.parametrize("head", [1 << 63, (1 << 64) - 16, 1 << 40, 48])
def test_wild_free_list_head_is_corrupt(name, head):
    """A free-list head far outside the heap: CorruptSegmentError from
    verify() and from an allocation that reaches it (no pointer is formed
    from it first: UBSan's pointer-overflow check in the sanitizer run)."""
    with SharedDict(name, create=True, size=1 << 16) as d:
        d["a"] = b"x" * 100
        d["keep"] = 1
        del d["a"]  # below the top: on its class list, to be damaged
        data = d.info()["data_off"]
        heads = data + HEAP_OFF - 176 * 8
        with open(f"/dev/shm/{name}", "r+b") as f:
            mm = mmap.mmap(f.fileno(), 0)
            c = next(c for c in range(176)
                     if struct.unpack_from("<Q", mm, heads + 8 * c)[0])
            struct.pack_into("<Q", mm, heads + 8 * c, head)
            mm.close()
        with pytest.raises(shmtxn.CorruptSegmentError):
            d.verify()
        with pytest.raises(shmtxn.CorruptSegmentError):
            d["b"] = b"y" * 100
        assert "b" not in d
