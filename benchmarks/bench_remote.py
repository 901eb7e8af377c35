"""SharedDict on Redis beside plain redis-py (the floor), Manager().dict()
over TCP and the shared-memory SharedDict, with 1, 4 and 16 client
processes (docs/benchmarks.md, "Redis backend").

    python benchmarks/bench_remote.py                  # starts its own
    python benchmarks/bench_remote.py --url redis://127.0.0.1:6379/0
    python benchmarks/bench_remote.py --quick

Operations, each a lean loop over a pre-built list of 1000 "key:N" keys
holding 100-byte bytes values:

- get:  ``for k in keys: m[k]``
- set:  ``for k in keys: m[k] = VALUE``
- txn:  ten ops in one transaction: ``with d.txn() as t: vs =
  t.get_many(five keys); then five sets`` (a round trip to take the
  lease, one for get_many, one for the commit).  Floors: redis-py doing
  the ten ops as ten calls (ten round trips), and as one MULTI/EXEC
  pipeline (one round trip, no isolation for the reads it depends on).
  SharedDict in shared memory does the same txn; Manager().dict() has no
  txn (skipped).

Every client process runs the same loop for --seconds; the parent starts
them together (a pipe message, no sleeps) and sums ops/s.  Rows are
interleaved per round (A B C A B C ...) and repeated --rounds times;
tables give the median (min-max) of the rounds, and, at one client, the
ratio to the redis-py floor.  The server runs with persistence off.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import redis

from shmtxn import SharedDict

VALUE = b"v" * 100
NKEYS = 1000
KEYS = [f"key:{i}" for i in range(NKEYS)]


def start_server():
    port_sock = socket.socket()
    port_sock.bind(("127.0.0.1", 0))
    port = port_sock.getsockname()[1]
    port_sock.close()
    tmp = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp,
         "--logfile", ""], stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "Ready to accept connections" in line:
            return proc, tmp, f"redis://127.0.0.1:{port}/0"
    raise RuntimeError("redis-server did not start")


# ---- the loops: each returns how many ops it did in `seconds` ----

def loop(target, op, seconds):
    count = 0
    deadline = time.perf_counter() + seconds
    five = [KEYS[i:i + 5] for i in range(0, NKEYS, 5)]
    while time.perf_counter() < deadline:
        if op == "get":
            for k in KEYS[:100]:
                target[k]
            count += 100
        elif op == "set":
            for k in KEYS[:100]:
                target[k] = VALUE
            count += 100
        else:  # a 10-op txn; count txns
            for ks in five[:20]:
                target(ks)
            count += 20
    return count


def make_target(kind, op, where):
    """The object `loop` drives for candidate `kind`."""
    if kind == "redis-py":
        r = redis.Redis.from_url(where["url"])
        if op == "get":
            class Get:
                def __getitem__(self, k, hget=r.hget):
                    return hget("plain", k)
            return Get()
        if op == "set":
            class Set:
                def __setitem__(self, k, v, hset=r.hset):
                    hset("plain", k, v)
            return Set()
        if op == "txn-calls":
            def txn(ks):
                vs = [r.hget("plain", k) for k in ks]
                for k, v in zip(ks, vs):
                    r.hset("plain", k, v)
            return txn

        def txn_pipe(ks):
            p = r.pipeline(transaction=True)
            for k in ks:
                p.hget("plain", k)
                p.hset("plain", k, VALUE)
            p.execute()
        return txn_pipe
    if kind == "manager":
        from multiprocessing.managers import BaseManager, DictProxy

        class M(BaseManager):
            pass
        M.register("get_dict", proxytype=DictProxy)
        m = M(address=where["manager"], authkey=b"bench")
        m.connect()
        d = m.get_dict()
        return d
    d = (SharedDict.connect(where["url"], where["redis_name"])
         if kind == "RedisDict" else SharedDict(where["shm_name"]))
    if op in ("get", "set"):
        return d

    def txn(ks):
        with d.txn() as t:
            vs = t.get_many(ks)
            for k, v in zip(ks, vs):
                t[k] = v
    return txn


def client(kind, op, where, seconds, conn):
    target = make_target(kind, op, where)
    loop(target, op, 0.05)  # connect, warm up
    conn.send("ready")
    conn.recv()
    conn.send(loop(target, op, seconds))


def run_row(kind, op, where, procs, seconds):
    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe() for _ in range(procs)]
    ps = [ctx.Process(target=client, args=(kind, op, where, seconds, c))
          for _, c in pipes]
    for p in ps:
        p.start()
    try:
        for parent, _ in pipes:
            assert parent.poll(60) and parent.recv() == "ready"
        for parent, _ in pipes:
            parent.send("go")
        total = 0
        for parent, _ in pipes:
            assert parent.poll(seconds + 60)
            total += parent.recv()
    finally:
        for p in ps:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    return total / seconds


def serve_manager_dict():
    """A Manager serving one dict over TCP; returns (manager, address)."""
    from multiprocessing.managers import BaseManager, DictProxy
    shared = {}

    class M(BaseManager):
        pass
    M.register("get_dict", callable=lambda: shared, proxytype=DictProxy)
    m = M(address=("127.0.0.1", 0), authkey=b"bench")
    m.start()
    return m, m.address


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a Redis to use (default: start one)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.clients = 0.3, 2, "1,4"
    server = None
    url = args.url
    if url is None:
        server, tmp, url = start_server()
    r = redis.Redis.from_url(url)
    r.hset("plain", mapping=dict.fromkeys(KEYS, VALUE))
    redis_name = f"bench-{uuid.uuid4().hex[:8]}"
    shm_name = f"bench_remote_{os.getpid()}"
    manager, address = serve_manager_dict()
    where = {"url": url, "redis_name": redis_name, "shm_name": shm_name,
             "manager": address}
    rd = SharedDict.connect(url, redis_name, create=True)
    sd = SharedDict(shm_name, create=True)
    rd.update(dict.fromkeys(KEYS, VALUE))
    sd.update(dict.fromkeys(KEYS, VALUE))
    m = make_target("manager", "get", where)
    m.update(dict.fromkeys(KEYS, VALUE))
    rows = {
        "get": ["redis-py", "RedisDict", "manager", "SharedDict(shm)"],
        "set": ["redis-py", "RedisDict", "manager", "SharedDict(shm)"],
        "txn": ["redis-py calls", "redis-py pipeline", "RedisDict",
                "SharedDict(shm)"],
    }
    kinds = {"redis-py calls": ("redis-py", "txn-calls"),
             "redis-py pipeline": ("redis-py", "txn-pipe"),
             "SharedDict(shm)": ("shm", None)}
    print(f"# bench_remote: {os.cpu_count()} CPUs, redis "
          f"{r.info('server')['redis_version']}, redis-py "
          f"{redis.__version__}, hiredis "
          f"{'yes' if redis.utils.HIREDIS_AVAILABLE else 'no'}; "
          f"{args.rounds} rounds x {args.seconds} s; ops/s summed over "
          f"clients, median (min-max)")
    try:
        for procs in [int(c) for c in args.clients.split(",")]:
            results = {(op, k): [] for op, ks in rows.items() for k in ks}
            for _ in range(args.rounds):
                for op, ks in rows.items():
                    for k in ks:
                        kind, kop = kinds.get(k, (k, None))
                        results[op, k].append(run_row(
                            kind, kop or op, where, procs, args.seconds))
            print(f"\n## {procs} client process(es)\n")
            print("| op | candidate | ops/s | us/op per client | "
                  "vs redis-py |")
            print("|---|---|---|---|---|")
            for op, ks in rows.items():
                floor = statistics.median(results[op, ks[0]])
                for k in ks:
                    xs = results[op, k]
                    med = statistics.median(xs)
                    print(f"| {op} | {k} | {med:,.0f} ({min(xs):,.0f}-"
                          f"{max(xs):,.0f}) | {procs / med * 1e6:,.1f} | "
                          f"{floor / med:.2f}x |")
            sys.stdout.flush()
        assert rd.get_many(KEYS[:3]) == [VALUE] * 3
    finally:
        rd.unlink()
        rd.close()
        sd.close()
        sd.unlink()
        manager.shutdown()
        if server is not None:
            server.terminate()
            server.wait()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
