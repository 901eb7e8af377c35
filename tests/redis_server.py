"""A private redis-server for the tests of the Redis backend.

Each test process starts its own server (on first use) on a free loopback
port, in a temporary directory, with persistence off, and stops it by pid
at exit.  Tests of the Redis backend are skipped, saying why, only when
no `redis-server` binary (or no redis-py) exists; .ci/redis.sh installs
both so CI always runs them.

Fixtures: `redis_url` (the URL of this process's server), `backend`
(parametrised: "shm" and "redis") and `make_dict` (creates a dict of the
test's backend under a unique name, removed after the test).
"""

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest

BINARY = shutil.which("redis-server")
try:
    import redis  # noqa: F401
    HAVE_CLIENT = True
except ImportError:
    HAVE_CLIENT = False

MISSING = (None if BINARY and HAVE_CLIENT else
           "no redis-server binary on PATH (apt-get install redis-server)"
           if not BINARY else "redis-py is not installed (pip install "
           "'shmtxn[redis]')")
needs_redis = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process: start(), stop(), restart() (same port,
    empty: no persistence)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="shmtxn-redis-")
        self.port = None
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port=None):
        for _ in range(20):
            self.port = port or free_port()
            self.proc = subprocess.Popen(
                [BINARY, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir,
                 "--daemonize", "no", "--logfile", ""],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True)
            # ready when it says so (the log line), or failed when it exits
            for line in self.proc.stdout:
                if "Ready to accept connections" in line:
                    return self
            self.proc.wait()
            if port is not None:
                break  # that port is taken: a restart cannot move
        raise RuntimeError(f"redis-server did not start (port {self.port})")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        if self.proc is not None:
            self.proc.stdout.close()
        self.proc = None

    def restart(self):
        self.stop()
        return self.start(self.port)

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


_server = None
_owner_pid = None


def server():
    """This process's server, started on first use."""
    global _server, _owner_pid
    if MISSING is not None:
        pytest.skip(MISSING)
    if _server is None or _owner_pid != os.getpid():
        _server, _owner_pid = RedisServer().start(), os.getpid()
        atexit.register(_stop, _server, os.getpid())
    return _server


def _stop(srv, pid):
    if os.getpid() == pid:  # never from a forked child
        srv.close()


def unique(prefix="shmtxn_t"):
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_url():
    return server().url


def connect(name=None, **kwargs):
    """SharedDict.connect to this process's server (a new name if none)."""
    from shmtxn import SharedDict
    return SharedDict.connect(server().url, name or unique(), **kwargs)


@pytest.fixture
def redis_dict():
    """A new dict on this process's server, removed afterwards."""
    with connect(create=True) as d:
        yield d


@pytest.fixture(params=["shm", "redis"])
def backend(request):
    return request.param


@pytest.fixture
def make_dict(backend, name):
    """make_dict(**kwargs): a new dict of the test's backend, created
    under a unique name (the creator owns it); spec(d) gives what
    helpers.open_dict attaches with."""
    made = []

    def make(**kwargs):
        from shmtxn import SharedDict
        if backend == "redis":
            kwargs.pop("size", None)
            kwargs.pop("undo_size", None)
            d = SharedDict.connect(server().url, unique(), create=True,
                                   **kwargs)
        else:
            d = SharedDict(name if not made else unique(), create=True,
                           **kwargs)
        made.append(d)
        return d

    yield make
    for d in made:
        if not d.closed:
            d.__exit__(None, None, None)
        elif backend == "redis":
            d.unlink()


def spec(d):
    """What helpers.open_dict attaches to `d` with, in any process."""
    url = getattr(d, "url", None)
    return (url, d.name) if url else d.name


def attach(d, **kwargs):
    """Another handle on the dict of `d`, of its backend."""
    import helpers
    return helpers.open_dict(spec(d), **kwargs)
