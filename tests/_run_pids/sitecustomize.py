"""Loaded by every Python process the test suite starts (tests/conftest.py
puts this directory first on PYTHONPATH): records the process's pid, and
its forks' pids, in $SHMTXN_TEST_RUN_PIDS, so that the suite's leftover
check knows which segments this run created.  Then runs the
sitecustomize module this one shadows, if there is one."""

import os
import sys

_RUN_PIDS = os.environ.get("SHMTXN_TEST_RUN_PIDS")


def _record_pid():
    try:
        os.close(os.open(os.path.join(_RUN_PIDS, str(os.getpid())),
                         os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError:
        pass  # the run is over, or its directory is gone


if _RUN_PIDS:
    _record_pid()
    os.register_at_fork(after_in_child=_record_pid)


def _chain():
    import importlib.machinery
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_chain()
