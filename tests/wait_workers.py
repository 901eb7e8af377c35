"""Children for tests/test_wait.py and tests/test_wait_async.py: module
level functions, so that spawned interpreters can import them."""

import struct

import pytest

from shmtxn import SharedDict, SharedMemory

CHANGE_WAITERS = 460  # docs/format.md: the header's change_waiters


def waiters(name):
    """Threads inside wait() on segment `name`, in every process, read
    from the header's bytes (no handle: it touches nothing)."""
    with open(f"/dev/shm/{name}", "rb") as f:
        f.seek(CHANGE_WAITERS)
        return struct.unpack("=I", f.read(4))[0]


def create(name, kind):
    """A new segment of `kind`, "memory" (ten slots) or "dict"."""
    if kind == "dict":
        return SharedDict(name, create=True)
    return SharedMemory(name, create=True, size=80)


@pytest.fixture(params=["memory", "dict"])
def handle(request, name):
    """A new segment of each kind (the tests import this fixture)."""
    h = create(name, request.param)
    yield h
    h.close()
    h.unlink()


def open_handle(name, kind):
    return SharedDict(name) if kind == "dict" else SharedMemory(name)


def first_value(h):
    return h.get("k") if isinstance(h, SharedDict) else h[0]


def wait_and_report(name, kind, conn):
    """Attach, say the version, wait for it to move (60 s at most), then
    send the version wait() returned and the value then in slot/key 0."""
    h = open_handle(name, kind)
    since = h.version
    conn.send(since)
    got = h.wait(since, timeout=60)
    conn.send((got, first_value(h)))
    h.close()


def until_and_report(name, kind, at_least, conn):
    """Open a read txn once the first value reaches `at_least`; send what
    the body saw."""
    h = open_handle(name, kind)
    conn.send("ready")
    if kind == "dict":
        pred = lambda t: t.get("k", 0) >= at_least  # noqa: E731
    else:
        pred = lambda t: t[0] >= at_least  # noqa: E731
    with h.txn(write=False, timeout=60, until=pred) as t:
        conn.send(t.get("k") if kind == "dict" else t[0])
    h.close()


def write_then_hang(name, kind, conn):
    """Write inside a txn, say so, and block until killed."""
    h = open_handle(name, kind)
    with h.txn() as t:
        t["k" if kind == "dict" else 0] = 99
        conn.send("in txn")
        conn.recv()  # killed here


def wait_forever(name, conn):
    """Wait for a change that never comes (killed while waiting)."""
    h = SharedMemory(name)
    conn.send("waiting")
    h.wait()
