"""Timing harness shared by the benchmarks (see ../shared/BENCHMARKING.md).

Each candidate is a function ``run(n) -> seconds`` that performs ``n``
operations the way a user writes them and returns the elapsed time.  The
harness calibrates ``n`` so one sample lasts at least ``min_sample``
seconds, then takes ``samples`` samples of every candidate interleaved
(A B C A B C ...) so drift on a shared machine hits all of them alike, and
reports median, min and max per operation and the ratio of medians to the
floor measured in the same run.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

Runner = Callable[[int], float]


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
          note: str = "") -> str:
    """A Markdown table: median, min, max, ratio to the floor's median."""
    base = results[floor].median
    lines = [f"### {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| candidate | median | min | max | × floor |",
              "|---|---:|---:|---:|---:|"]
    for r in results.values():
        lines.append(
            f"| {r.name} | {fmt_time(r.median)} | {fmt_time(min(r.per_op))}"
            f" | {fmt_time(max(r.per_op))} | {r.median / base:.2f} |")
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


def optional(module: str):
    """Import a peer if installed (pip install .[bench]); else None."""
    try:
        return __import__(module)
    except ImportError:
        return None
