"""Benchmark machinery shared by `benchmarks/` and `shmtxn bench`
(method: ../shared/BENCHMARKING.md).

Each candidate is a function ``run(n) -> seconds`` that performs ``n``
operations the way a user writes them and returns the elapsed time.  The
harness calibrates ``n`` so one sample lasts at least ``min_sample``
seconds, then takes ``samples`` samples of every candidate interleaved
(A B C A B C ...) so drift on a shared machine hits all of them alike, and
reports median, min and max per operation and the ratio of medians to the
floor measured in the same run.  Peers that are not installed
(``pip install '.[bench]'``) are skipped.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import queue
import shutil
import statistics
import struct
import tempfile
import time
import timeit
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from .memory import SharedMemory
from ._procs import stop_processes

if TYPE_CHECKING:
    from collections.abc import Sequence
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess
    from multiprocessing.queues import Queue

Runner = Callable[[int], float]

# The longest a benchmark waits for its worker processes.  A worker that
# died (killed, or its segment removed by `shmtxn rm --force` before it
# attached) never reports; the run stops with WorkerFailed instead of
# waiting forever.
WORKER_TIMEOUT = 120.0


class WorkerFailed(RuntimeError):
    """A benchmark worker died or stalled, so its numbers are missing."""


def _stop_and_fail(procs: Sequence[BaseProcess], dead: list[BaseProcess],
                   gone: bool, timeout: float, hint: str = "") -> NoReturn:
    """Stop the workers and raise WorkerFailed saying why: the ones that
    died, all of them gone without a result, or the timeout."""
    stop_processes(procs)
    why = (", ".join(f"worker {p.pid} exited with code {p.exitcode}"
                     for p in dead)
           or ("the workers exited without reporting" if gone else
               f"no result within {timeout:g} s"))
    raise WorkerFailed(f"benchmark stopped: {why}{hint}; its numbers are "
                       "missing")


def collect(out: Queue[Any], procs: Sequence[BaseProcess],
            timeout: float = WORKER_TIMEOUT) -> list[Any]:
    """One result per worker from queue `out`, in arrival order.  Raises
    WorkerFailed (after stopping the workers) if one exits without
    reporting or the results take longer than `timeout` seconds."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(procs):
        try:
            got.append(out.get(timeout=0.1))
            continue
        except queue.Empty:
            pass
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        quiet = len(got) < len(procs) and all(p.exitcode is not None
                                              for p in procs)
        if dead or quiet or time.monotonic() > deadline:
            _stop_and_fail(procs, dead, quiet, timeout,
                           " (killed, or its segment removed?)")
    return got


def join_all(procs: Sequence[BaseProcess],
             timeout: float = WORKER_TIMEOUT) -> None:
    """Join every worker within `timeout` seconds in all; WorkerFailed
    (after stopping them) if one is still running or failed."""
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0))
    stuck = [p for p in procs if p.exitcode is None]
    failed = [p for p in procs if p.exitcode not in (None, 0)]
    if stuck or failed:
        stop_processes(procs)
        raise WorkerFailed(
            "benchmark stopped: " + ", ".join(
                [f"worker {p.pid} still running after {timeout:g} s"
                 for p in stuck]
                + [f"worker {p.pid} exited with code {p.exitcode}"
                   for p in failed]))


def receive(conn: Connection, procs: Sequence[BaseProcess],
            timeout: float = WORKER_TIMEOUT) -> Any:
    """The next message on pipe end `conn` from one of the workers `procs`.
    Raises WorkerFailed (after stopping them all) if a worker exits with
    an error, or they all exit, or nothing arrives within `timeout` s."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.1):
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        gone = all(p.exitcode is not None for p in procs)
        late = time.monotonic() > deadline
        if dead or gone or late:
            if conn.poll():  # it did report before it went
                break
            _stop_and_fail(procs, dead, gone, timeout)
    return conn.recv()


class Stream:
    """Hands out the items of a pre-built list in order, wrapping around,
    so successive samples walk the whole list (at 1M keys a sample touches
    keys all over the table, not the same first few again).

    ``take(n)`` returns parts whose lengths sum to ``n``: the list itself
    for each whole pass, slices (copied before the clock starts) for the
    rest.  A runner times ``for part in parts: loop(target, part)``, and
    ``loop`` is the lean loop ``for k in part: target[k]``: the per-part
    call is paid once per pass or slice, not per operation."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items
        self.pos = 0

    def take(self, n: int) -> list[list[Any]]:
        items, size = self.items, len(self.items)
        parts = []
        while n > 0:
            if self.pos == 0 and n >= size:
                parts.append(items)
                n -= size
                continue
            k = min(n, size - self.pos)
            parts.append(items[self.pos:self.pos + k])
            self.pos = (self.pos + k) % size
            n -= k
        return parts


def lean(loop: Callable[[Any, list[Any]], object], target: object,
         items: list[Any]) -> Runner:
    """A runner: ``loop(target, part)`` over the next ``n`` items of
    `items` (see Stream); only the loops are timed."""
    stream = Stream(items)

    def run(n: int) -> float:
        parts = stream.take(n)
        start = time.perf_counter()
        for part in parts:
            loop(target, part)
        return time.perf_counter() - start
    return run


@dataclass
class Result:
    name: str
    per_op: list[float] = field(default_factory=list)  # seconds

    @property
    def median(self) -> float:
        return statistics.median(self.per_op)


def calibrate(run: Runner, min_sample: float) -> int:
    """Smallest power-of-two-ish n whose sample lasts >= min_sample."""
    n = 1
    while True:
        elapsed = run(n)
        if elapsed >= min_sample:
            return n
        grow = min_sample / max(elapsed, 1e-7) * 1.2
        n = max(n * 2, int(n * min(grow, 100)))


def measure(candidates: dict[str, Runner], samples: int = 5,
            min_sample: float = 0.2) -> dict[str, Result]:
    """Interleaved samples of every candidate; per-operation seconds."""
    sizes = {name: calibrate(run, min_sample)
             for name, run in candidates.items()}
    results = {name: Result(name) for name in candidates}
    for _ in range(samples):
        for name, run in candidates.items():
            n = sizes[name]
            results[name].per_op.append(run(n) / n)
    return results


def fmt_time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.2f} µs"
    return f"{seconds * 1e9:.1f} ns"


def table(title: str, results: dict[str, Result], floor: str,
          note: str = "", per: tuple[str, int] | None = None) -> str:
    """A Markdown table: median, min, max, ratio to the floor's median.
    With ``per=("key", 100)`` it adds the median divided by 100, headed
    "median per key" (for an operation that handles 100 keys)."""
    base = results[floor].median
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    head = "| candidate | median | min | max |"
    rule = "|---|---:|---:|---:|"
    if per:
        head += f" median per {per[0]} |"
        rule += "---:|"
    lines += [head + " × floor |", rule + "---:|"]
    for r in results.values():
        row = (f"| {r.name} | {fmt_time(r.median)} | "
               f"{fmt_time(min(r.per_op))} | {fmt_time(max(r.per_op))} |")
        if per:
            row += f" {fmt_time(r.median / per[1])} |"
        lines.append(row + f" {r.median / base:.2f} |")
    return "\n".join(lines) + "\n"


def rate_table(title: str, rates: dict[str, list[float]], unit: str,
               note: str = "", ratio_to: str | None = None) -> str:
    """A Markdown table of throughputs (higher is better)."""
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    head = "| candidate | median | min | max |"
    rule = "|---|---:|---:|---:|"
    if ratio_to:
        head += f" × {ratio_to} |"
        rule += "---:|"
    lines += [head, rule]
    base = statistics.median(rates[ratio_to]) if ratio_to else None
    for name, values in rates.items():
        med = statistics.median(values)
        row = (f"| {name} | {med:,.2f} {unit} | {min(values):,.2f} | "
               f"{max(values):,.2f} |")
        if base:
            row += f" {med / base:.2f} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {cpu}, "
            f"Python {platform.python_version()}")


def optional(module: str) -> Any:
    """Import a peer if installed (pip install .[bench]); else None."""
    try:
        return __import__(module)
    except ImportError:
        return None


posix_ipc = optional("posix_ipc")
lmdb = optional("lmdb")
SLOTS = 1000
CTX = multiprocessing.get_context("fork")


def loop(stmt: str, **names: object) -> Runner:
    """A runner timing `stmt` n times with `names` bound as locals."""
    setup = "\n".join(f"{k} = _names[{k!r}]" for k in names)
    timer = timeit.Timer(stmt, setup=setup, globals={"_names": names})
    return timer.timeit


class Peers:
    """Every candidate's shared state, created once per run."""

    def __init__(self) -> None:
        self.std = shared_memory.SharedMemory(create=True, size=8 * SLOTS)
        assert self.std.buf is not None  # (None once closed)
        self.mv = self.std.buf.cast("q")
        self.lock = CTX.Lock()
        self.array = CTX.Array("q", SLOTS)
        self.shr = SharedMemory(create=True, size=8 * SLOTS)
        self.sem: Any = None  # posix_ipc and lmdb come without types
        self.env: Any = None
        self.lmdb_dir: str | None = None
        if posix_ipc:
            self.sem = posix_ipc.Semaphore(None, posix_ipc.O_CREX,
                                           initial_value=1)
        if lmdb:
            self.lmdb_dir = tempfile.mkdtemp(prefix="shmtxn-bench-",
                                             dir="/dev/shm")
            self.env = self.open_lmdb()
            with self.env.begin(write=True) as tx:
                for i in range(SLOTS):
                    tx.put(b"%d" % i, bytes(8))

    def open_lmdb(self) -> Any:
        return lmdb.open(self.lmdb_dir, map_size=1 << 26, writemap=True,
                         sync=False, metasync=False, lock=True)

    def lmdb_for_children(self) -> bool:
        """Close the parent's env: an LMDB env must not cross fork(), so
        each child opens its own.  True if lmdb is a candidate."""
        if self.env is not None:
            self.env.close()
            self.env = None
        return self.lmdb_dir is not None

    def lmdb_counter(self, value: int | None = None) -> int:
        """Read (or set) slot 0 through a short-lived env."""
        env = self.open_lmdb()
        try:
            with env.begin(write=value is not None) as t:
                if value is not None:
                    t.put(b"0", value.to_bytes(8, "little"))
                return int.from_bytes(t.get(b"0"), "little")
        finally:
            env.close()

    def close(self) -> None:
        """Release everything; what someone removed meanwhile (`shmtxn rm
        --force`, `rm /dev/shm/...`) is already gone, which is fine."""
        self.mv.release()
        self.std.close()
        try:
            self.std.unlink()
        except FileNotFoundError:  # and so not unregistered: do it here
            from multiprocessing import resource_tracker
            # the name the stdlib registered: its private attribute
            resource_tracker.unregister(
                self.std._name, "shared_memory")  # type: ignore[attr-defined]
        self.shr.close()
        self.shr.unlink()
        if self.sem:
            try:
                self.sem.unlink()
            except posix_ipc.ExistentialError:
                pass
        if self.env:
            self.env.close()
        if self.lmdb_dir:
            shutil.rmtree(self.lmdb_dir, ignore_errors=True)


# --------------------------------------------------------------------------
# W1 and W2: one process

def w1_candidates(p: Peers, op: str) -> dict[str, Runner]:
    get = op == "get"
    c = {}
    c["memoryview.cast('q') (unsafe floor)"] = loop(
        "m[3]" if get else "m[3] = 5", m=p.mv)
    c["struct on stdlib shm (unsafe)"] = loop(
        "u('q', b, 24)[0]" if get else "u('q', b, 24, 5)",
        u=struct.unpack_from if get else struct.pack_into, b=p.std.buf)
    c["stdlib shm + mp.Lock"] = loop(
        "with lk: m[3]" if get else "with lk: m[3] = 5", m=p.mv, lk=p.lock)
    c["mp.Array with get_lock()"] = loop(
        "with lk: a[3]" if get else "with lk: a[3] = 5",
        a=p.array.get_obj(), lk=p.array.get_lock())
    if p.sem:
        c["posix_ipc sem + shm"] = loop(
            "acq(); m[3]; rel()" if get else "acq(); m[3] = 5; rel()",
            m=p.mv, acq=p.sem.acquire, rel=p.sem.release)
    if p.env:
        c["lmdb /dev/shm (txn per op)"] = loop(
            "with b() as t: fb(t.get(k), 'little')" if get else
            "with b(write=True) as t: t.put(k, (5).to_bytes(8, 'little'))",
            b=p.env.begin, k=b"3", fb=int.from_bytes)
    c["shmtxn shr[i] (auto-commit)"] = loop(
        "s[3]" if get else "s[3] = 5", s=p.shr)
    return c


W2_BODY = "for i in range(10): {w}\nfor i in range(10): {r}"


def indent(code: str, by: str = "    ") -> str:
    return "\n".join(by + line for line in code.splitlines())


def w2_candidates(p: Peers) -> dict[str, Runner]:
    body = W2_BODY.format(w="m[i] = i", r="m[i]")
    c = {"unsafe memoryview loop (floor)": loop(body, m=p.mv)}
    c["mp.Array raw under get_lock()"] = loop(
        "with lk:\n" + indent(W2_BODY.format(w="a[i] = i", r="a[i]")),
        a=p.array.get_obj(), lk=p.array.get_lock())
    if p.sem:
        c["posix_ipc sem + shm"] = loop(
            "acq()\n" + body + "\nrel()", m=p.mv, acq=p.sem.acquire,
            rel=p.sem.release)
    if p.env:
        c["lmdb writemap, one txn"] = loop(
            "with b(write=True) as t:\n" + indent(W2_BODY.format(
                w="t.put(ks[i], vs[i])", r="fb(t.get(ks[i]), 'little')")),
            b=p.env.begin, fb=int.from_bytes,
            ks=[b"%d" % i for i in range(10)],
            vs=[i.to_bytes(8, "little") for i in range(10)])
    c["shmtxn with shr.txn()"] = loop(
        "with s.txn() as t:\n" + indent(W2_BODY.format(w="t[i] = i",
                                                       r="t[i]")),
        s=p.shr)
    return c


def quick_tables(samples: int = 3, min_sample: float = 0.05,
                 ) -> list[tuple[str, dict[str, Result], str]]:
    """W1 get, W1 set and W2 against the peers: (title, results, floor)."""
    p = Peers()
    try:
        out = []
        for op in ("get", "set"):
            out.append((f"W1 single int {op}",
                        measure(w1_candidates(p, op), samples, min_sample),
                        "memoryview.cast('q') (unsafe floor)"))
        out.append(("W2 the article's txn: 10 writes then 10 reads",
                    measure(w2_candidates(p), samples, min_sample),
                    "unsafe memoryview loop (floor)"))
        return out
    finally:
        p.close()
