"""Small helpers for the processes the demo and the benchmarks start."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Iterable
    from multiprocessing.process import BaseProcess


def stop_processes(procs: Iterable[BaseProcess]) -> None:
    """Terminate the children still running, then reap them all (killed
    if they do not stop within 5 s).  Children never started are skipped."""
    started = [p for p in procs if p.pid is not None]
    for p in started:
        if p.exitcode is None:
            p.terminate()
    for p in started:
        p.join(5)
        if p.exitcode is None:
            p.kill()
            p.join()
