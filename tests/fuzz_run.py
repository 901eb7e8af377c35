"""Run the corruption fuzzer: mutated images in batches, one watched
worker subprocess per batch (fuzz_worker.py), a failing image re-run
alone to pinpoint it.

    python tests/fuzz_run.py --seeds 0:20000     # counts and failures

A failure is an image whose worker died of a signal, hung past the hard
timeout, printed a sanitizer report, or raised anything but a
shmtxn.Error.  Every image name is created here and removed in a finally.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import selectors
import subprocess
import sys
import tempfile

import fuzz_images

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "fuzz_worker.py")
SANITIZER = ("runtime error:", "AddressSanitizer", "LeakSanitizer",
             "UndefinedBehaviorSanitizer")


def write_image(name: str, img: bytes) -> None:
    fd = os.open(os.path.join(fuzz_images.SHM, name),
                 os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, img)
    finally:
        os.close(fd)


def spawn(jobs, timeout, budget, hard):
    """Run one worker over `jobs`: (stdout lines, stderr, returncode or
    'timeout').  The worker is killed (by its pid) if it says nothing for
    `hard` seconds: no image takes that long."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, WORKER, str(timeout), str(budget)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            text=True)
        proc.stdin.write("".join(json.dumps(j) + "\n" for j in jobs))
        proc.stdin.close()
        lines, status = [], None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while status is None:
                if not sel.select(hard):
                    proc.kill()
                    status = "timeout"
                    break
                line = proc.stdout.readline()
                if line:
                    lines.append(line.rstrip("\n"))
                else:
                    status = proc.wait()
        proc.wait()
        proc.stdout.close()
        err.seek(0)
        return lines, err.read(), status


def parse(lines):
    """({seed: ops}, the seed started but not finished or None)."""
    done, in_hand = {}, None
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "start":
            in_hand = int(rest)
        elif word == "result":
            r = json.loads(rest)
            done[r["seed"]] = r["ops"]
            in_hand = None
    return done, in_hand


def report(err):
    """The telling part of a worker's stderr: from the sanitizer's or
    Python's first line of trouble on."""
    starts = [err.find(s) for s in SANITIZER + ("Traceback", "Fatal")]
    first = min([i for i in starts if i >= 0], default=max(len(err) - 3000,
                                                            0))
    return err[max(first - 200, 0):first + 3000]


def died(err, status):
    """Why a worker run is a failure by itself, or None."""
    if status == "timeout":
        return "hang: killed after the hard timeout"
    if status != 0:
        return f"worker exit status {status}"
    if any(s in err for s in SANITIZER):
        return "sanitizer report"
    return None


class Fuzzer:
    """Runs seeds against base images and keeps what happened."""

    def __init__(self, bases, timeout=2.0, budget=15, batch=40):
        self.bases, self.timeout, self.budget = bases, timeout, budget
        self.batch = batch
        self.hard = budget + 5  # seconds a worker may stay silent
        self.results = {}      # seed -> {op: outcome}
        self.failed = {}       # seed -> seed, kind, mutations, why, detail

    def run(self, seeds, jobs=2):
        """Run `seeds` in batches, `jobs` workers at a time (a worker
        mostly waits: out lock timeouts, or on its own start-up)."""
        seeds = list(seeds)
        batches = [seeds[at:at + self.batch]
                   for at in range(0, len(seeds), self.batch)]
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            for done in pool.map(self.run_batch, batches):
                pass
        return self

    def run_batch(self, seeds):
        todo = list(seeds)
        while todo:
            names, jobs = {}, []
            try:
                for seed in todo:
                    kind, img, _ = fuzz_images.mutate(self.bases, seed)
                    names[seed] = fuzz_images.unique_name(str(seed))
                    write_image(names[seed], img)
                    jobs.append({"seed": seed, "name": names[seed],
                                 "kind": kind})
                lines, err, status = spawn(jobs, self.timeout, self.budget,
                                           self.hard)
            finally:
                for name in names.values():
                    fuzz_images.remove(name)
            done, in_hand = parse(lines)
            for seed, ops in done.items():
                self.record(seed, ops)
            why = died(err, status)
            if why is None:
                return
            if in_hand is None:  # e.g. a report at exit: find it alone
                for seed in done:
                    self.alone(seed)
                return
            self.alone(in_hand, why, err)
            todo = todo[todo.index(in_hand) + 1:]

    def record(self, seed, ops):
        self.results[seed] = ops
        bad = {op: what for op, what in ops.items() if what.startswith("BAD")}
        if bad:
            self.fail(seed, "an operation raised a non-shmtxn error", bad)

    def alone(self, seed, why=None, err=""):
        """Re-run `seed` by itself, to confirm and pinpoint a failure."""
        kind, img, _ = fuzz_images.mutate(self.bases, seed)
        name = fuzz_images.unique_name(f"{seed}r")
        try:
            write_image(name, img)
            lines, err2, status = spawn([{"seed": seed, "name": name,
                                          "kind": kind}], self.timeout,
                                        self.budget, self.hard)
        finally:
            fuzz_images.remove(name)
        done, _ = parse(lines)
        again = died(err2, status)
        if seed in done and again is None:
            self.record(seed, done[seed])
            if why is None:
                return
        self.results[seed] = done.get(seed, {"died": why or again})
        self.fail(seed, again or why, report(err2 or err),
                  reproduced=again is not None)

    def fail(self, seed, why, detail, reproduced=True):
        kind, _, mutations = fuzz_images.mutate(self.bases, seed)
        self.failed[seed] = {"seed": seed, "kind": kind,
                             "mutations": mutations, "why": why,
                             "reproduced": reproduced, "detail": detail}

    @property
    def failures(self):
        return [self.failed[seed] for seed in sorted(self.failed)]

    def counts(self):
        """(per image: its first outcome that is not ok, or ok;
        per operation: every outcome)."""
        images, ops = collections.Counter(), collections.Counter()
        for seed, result in self.results.items():
            outcomes = list(result.values())
            ops.update(o.split(":")[0] for o in outcomes)
            first = next((o for o in outcomes if o != "ok"), "ok")
            images[first.split(":")[0]] += 1
        return images, ops


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0:300",
                        help="START:STOP (default 0:300)")
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args()
    start, stop = map(int, args.seeds.split(":"))
    fz = Fuzzer(fuzz_images.build_bases(), timeout=args.timeout,
                batch=args.batch).run(range(start, stop))
    images, ops = fz.counts()
    json.dump({"seeds": args.seeds, "images": dict(images.most_common()),
               "operations": dict(ops.most_common()),
               "failures": fz.failures}, sys.stdout, indent=1)
    print()
    return 1 if fz.failures else 0


if __name__ == "__main__":
    sys.exit(main())
