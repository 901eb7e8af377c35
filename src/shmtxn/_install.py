"""shmtxn.install(): the article's programs, verbatim.

The article this project comes from calls
``multiprocessing.shared_memory.SharedMemory(...).txn()`` after only
``import multiprocessing``.  The stdlib's class has no ``txn()``, and a
stock interpreter does not even import ``multiprocessing.shared_memory``
until asked.  ``install()`` is an explicit opt-in, in the spirit of
gevent's monkey patching: afterwards ``multiprocessing.shared_memory`` is
an attribute of ``multiprocessing`` (and the module ``import
multiprocessing.shared_memory`` gives) whose ``SharedMemory`` is shmtxn's.

Everything the stdlib builds on its own class keeps using the stdlib
class: ``ShareableList`` (its methods look ``SharedMemory`` up in the real
module) and ``SharedMemoryManager`` (``multiprocessing.managers`` is
imported first, so it binds the real module).  ``uninstall()`` puts
everything back.  ``python -m shmtxn run SCRIPT`` runs a script with
``install()`` applied, in its children too (docs/verbatim.md).
"""

from __future__ import annotations

import os
import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

__all__ = ["install", "uninstall", "installed", "run_script"]

MODULE = "multiprocessing.shared_memory"
# Set for the children of `shmtxn run`: importing shmtxn installs.
ENV = "SHMTXN_INSTALL"
_MISSING = object()
# (module in sys.modules, attribute of multiprocessing) before install()
_saved: tuple[types.ModuleType, Any] | None = None


def _shim(real: types.ModuleType) -> types.ModuleType:
    """A module like the stdlib's, but with shmtxn's SharedMemory."""
    from .memory import SharedMemory

    shim = types.ModuleType(MODULE, real.__doc__)
    for key, value in vars(real).items():
        if not key.startswith("__"):
            setattr(shim, key, value)
    shim.__file__ = getattr(real, "__file__", None)
    vars(shim).update(__all__=list(getattr(real, "__all__", ())),
                      SharedMemory=SharedMemory,
                      stdlib=real)  # the real module, for code that needs it
    return shim


def install() -> None:
    """Make ``multiprocessing.shared_memory.SharedMemory`` shmtxn's class
    in this process.  Idempotent; undone by :func:`uninstall`."""
    global _saved
    if _saved is not None:
        return
    import multiprocessing
    import multiprocessing.managers  # noqa: F401  (binds the real module)
    if MODULE not in sys.modules:
        import multiprocessing.shared_memory  # noqa: F401
    real = sys.modules[MODULE]
    _saved = (real, getattr(multiprocessing, "shared_memory", _MISSING))
    shim = _shim(real)
    sys.modules[MODULE] = shim
    multiprocessing.shared_memory = shim


def uninstall() -> None:
    """Undo :func:`install` (a no-op if it was not applied)."""
    global _saved
    if _saved is None:
        return
    import multiprocessing
    real, attribute = _saved
    sys.modules[MODULE] = real
    if attribute is _MISSING:
        del multiprocessing.shared_memory
    else:
        multiprocessing.shared_memory = attribute
    _saved = None


def installed() -> bool:
    """True while :func:`install` is in effect."""
    return _saved is not None


def run_script(path: str, args: list[str],
               start_method: str | None = None) -> None:
    """Run the script at `path` as ``python path args...`` would, with
    :func:`install` applied here and in the processes it starts."""
    import multiprocessing
    import runpy

    os.environ[ENV] = "1"  # spawn and forkserver children install on import
    install()
    if start_method is not None:
        multiprocessing.set_start_method(start_method, force=True)
    multiprocessing.set_forkserver_preload(["shmtxn"])
    sys.argv = [path, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(path))
    runpy.run_path(path, run_name="__main__")
