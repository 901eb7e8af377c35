"""The subprocess side of the corruption fuzzer: attach to damaged segment
images and use them every way a user or the CLI can.

Run as ``python fuzz_worker.py TIMEOUT`` with one JSON job per stdin line
({"seed", "name", "kind"}).  For each it prints ``start SEED`` before
touching the image and ``result {json}`` after, flushing both, so the
parent knows which image was in hand if this process dies or hangs.  A
result maps each operation to ``ok``, the name of the shmtxn.Error it
raised, or ``BAD <type>: <message>`` for anything else.  Every wait is
bounded by TIMEOUT seconds (txn timeouts, attach waits); after a
LockTimeout, operations that wait without a timeout (auto-committed ones)
are skipped, since a wedged lock would hold them forever.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import random
import signal
import sys
import traceback

import shmtxn
from shmtxn import SharedDict, SharedMemory, admin, cli

try:
    import numpy
except ImportError:  # numpy is in the test extra; do without it
    numpy = None


class Hang(Exception):
    """The per-image alarm rang: an operation did not finish in time."""


def _alarm(signum, frame):
    raise Hang("no answer within the image's time budget")


class Session:
    """The operations on one image and what each did."""

    def __init__(self, job, timeout):
        self.name, self.kind = job["name"], job["kind"]
        self.rng = random.Random(job["seed"] * 7919 + 1)
        self.timeout = timeout
        self.results = {}
        self.wedged = False  # a LockTimeout: skip unbounded waits
        self.handle = None

    def run(self, label, func, *args):
        n = sum(1 for k in self.results if k.split("#")[0] == label)
        key = f"{label}#{n}" if n else label
        try:
            func(*args)
            self.results[key] = "ok"
        except shmtxn.LockTimeout:
            self.wedged = True
            self.results[key] = "LockTimeout"
        except shmtxn.Error as e:
            self.results[key] = type(e).__name__
        except Hang:
            raise
        except Exception as e:  # noqa: BLE001 -- the point of the fuzzer
            self.results[key] = (f"BAD {type(e).__name__}: {e}"[:300] + " "
                                 + traceback.format_exc(limit=-3)[-600:])

    # ---- without attaching ----

    def admin_ops(self):
        self.run("segment_info", admin.segment_info, self.name)
        self.run("list_segments", admin.list_segments, False, self.name)
        self.run("check", admin.check, self.name, False, self.timeout)
        self.run("cli_ls", self.cli, ["ls", "--prefix", self.name, "--json"])
        self.run("cli_check", self.cli, ["check", self.name, "--json",
                                         "--timeout", str(self.timeout)])

    def cli(self, argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(out):
            code = cli.main(argv)
        if code not in (0, 1):
            raise AssertionError(f"shmtxn {argv[0]} exit {code}: "
                                 f"{out.getvalue()[-300:]}")

    # ---- attached ----

    def attach(self, read_only=False):
        cls = SharedDict if self.kind.startswith("dict") else SharedMemory
        self.handle = cls(self.name, read_only=read_only,
                          timeout=self.timeout)

    def close(self):
        if self.handle is not None:
            handle, self.handle = self.handle, None
            handle.close()

    def slots_reads(self, auto):
        h = self.handle
        n = len(h)
        idx = [self.rng.randrange(max(n, 1)) for _ in range(3)]
        with h.txn(write=False, timeout=self.timeout) as t:
            t[0:n]
            list(t)
            for i in idx:
                t.get(i)
            bytes(t.buf[:64])
            if numpy is not None:
                t.ndarray().sum()
        if auto and n:
            h[idx[0]]
            h[0:min(n, 5)]
            list(h)
            if numpy is not None:
                h.ndarray(copy=True)

    def slots_writes(self, auto):
        h = self.handle
        n = len(h)
        if not n:
            return
        with h.txn(write=False, timeout=self.timeout) as t:
            old = t[0]
        with h.txn(timeout=self.timeout) as t:
            t[self.rng.randrange(n)] = old
            t[0:min(n, 3)] = t[0:min(n, 3)]
        if auto:
            h[n - 1] = old

    def slots_abort(self, auto):
        h = self.handle
        with h.txn(timeout=self.timeout) as t:
            t[0] = t[0]
            t.abort()

    def dict_reads(self, auto):
        d = self.handle
        with d.txn(write=False, timeout=self.timeout) as t:
            keys = list(t)
            len(t)
            for k in keys[:5]:
                t.get(k)
            t.copy()
        if auto:
            len(d)
            for k in keys[:5] + ["k1", "absent", 2.5]:
                d.get(k)
                k in d  # noqa: B015
            list(d.items())
            d.stats()
            d.verify()

    def dict_writes(self, auto):
        d = self.handle
        with d.txn(timeout=self.timeout) as t:
            keys = list(t)
            t["fz"] = b"z" * self.rng.choice([1, 40, 700, 5000])
            for k in keys[:3]:
                t.pop(k, None)
            t[("fz", 1)] = "fuzz"
        if auto:
            d["fz2"] = 2
            d.pop("fz2", None)
            d.setdefault("fz3", [1, 2])

    def dict_abort(self, auto):
        with self.handle.txn(timeout=self.timeout) as t:
            t["ab"] = b"a" * 100
            t.abort()

    def exercise(self):
        dict_kind = self.kind.startswith("dict")
        reads = self.dict_reads if dict_kind else self.slots_reads
        writes = self.dict_writes if dict_kind else self.slots_writes
        abort = self.dict_abort if dict_kind else self.slots_abort
        steps = [("reads", reads), ("writes", writes), ("abort", abort)]
        self.rng.shuffle(steps)
        for label, step in steps:
            if self.wedged:
                break  # each further txn would only wait out its timeout
            self.run(label, step, True)

    def main(self):
        if self.rng.random() < 0.5:
            self.admin_ops()
        if self.rng.random() < 0.3:
            self.run("repair", admin.check, self.name, True, self.timeout)
        self.run("attach_ro", self.attach, True)
        if self.handle is not None:
            reads = (self.dict_reads if self.kind.startswith("dict")
                     else self.slots_reads)
            self.run("ro_reads", reads, False)
            self.run("close_ro", self.close)
        self.run("attach", self.attach)
        if self.handle is not None:
            self.exercise()
            self.run("close", self.close)
        if not self.wedged:
            self.run("repair", admin.check, self.name, True, self.timeout)
            self.run("cli_info", self.cli, ["info", self.name, "--json",
                                            "--items", "3"])
        self.admin_ops()


def main():
    timeout = float(sys.argv[1])
    budget = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    signal.signal(signal.SIGALRM, _alarm)
    for line in sys.stdin:
        job = json.loads(line)
        print("start", job["seed"], flush=True)
        session = Session(job, timeout)
        signal.alarm(budget)
        # a hang in C ignores the alarm: show where it is before the kill
        faulthandler.dump_traceback_later(budget + 2)
        try:
            session.main()
        except Hang as e:
            session.results["hang"] = f"BAD Hang: {e}"
        finally:
            signal.alarm(0)
            faulthandler.cancel_dump_traceback_later()
        try:
            session.close()
        except Exception:  # noqa: BLE001
            pass
        print("result", json.dumps({"seed": job["seed"],
                                    "ops": session.results}), flush=True)


if __name__ == "__main__":
    main()
