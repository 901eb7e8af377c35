"""See, check and clean segments: the Python API behind the `shmtxn` CLI.

Every function here looks at segments *without attaching* (no reader slot
is claimed, nothing waits), except ``check(..., repair=True)``, which
attaches and takes the write lock exactly as the next transaction would.

A segment is *orphaned* when no live process has it attached: every
attached process holds a liveness beacon (an fcntl lock on byte ``pid`` of
the segment), so "no beacon" means dead, even if the pid was reused.
"""

from __future__ import annotations

import os

from . import _core
from .errors import Error, SegmentInUseError, SegmentNotFoundError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Any

#: What the functions here return about a segment (docs/cli.md lists the
#: fields; ``shmtxn info NAME --json`` shows them all).
Info = dict[str, "Any"]

__all__ = ["SHM_DIR", "list_segments", "segment_info", "check", "remove",
           "gc", "SegmentInUseError"]

def _shm_dir() -> str:
    """``$SHMTXN_SHM_DIR`` (a relative one joined to the working directory
    now, as the engine does, so a later chdir moves nothing), else
    ``/dev/shm``; without a trailing slash."""
    d = os.environ.get("SHMTXN_SHM_DIR") or "/dev/shm"
    if not d.startswith("/"):
        d = os.path.join(os.getcwd(), d)
    return d.rstrip("/") or "/"


#: The directory segments live in: ``$SHMTXN_SHM_DIR`` as it is when
#: shmtxn is imported (the engine reads it then too), else ``/dev/shm``
#: (on Linux the POSIX shm object ``/x`` is the file ``/dev/shm/x``).
SHM_DIR = _shm_dir()


def _disk_usage(name: str) -> Info:
    st = os.stat(os.path.join(SHM_DIR, name))
    return {"file_size": st.st_size, "used_bytes": st.st_blocks * 512,
            "mtime_ns": st.st_mtime_ns}


def _check_name(name: str) -> str:
    """ValueError unless `name` can name a segment (the engine's limit is
    in bytes of UTF-8, so say bytes)."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if not 0 < size <= _core.NAME_MAX:
        raise ValueError(f"a segment name is 1 to {_core.NAME_MAX} bytes of "
                         f"UTF-8 (got {size} bytes)")
    return name


def segment_info(name: str) -> Info:
    """Everything known about `name`, without attaching.

    ``state`` is ``ready``, ``building`` (a live creator is initialising
    it), ``abandoned`` (its creator died mid-creation), ``corrupt``,
    ``incompatible`` or ``foreign`` (not a shmtxn segment).  Ready segments
    also carry their header, lock state (``free``/``held``/``dead``),
    attached processes, ``attached`` (live pids), ``active_readers`` and
    ``orphaned``.
    """
    info = _core.probe(_check_name(name))
    info.update(_disk_usage(name))
    if info["state"] == "ready":
        live = [p for p in info["processes"] if p["alive"]]
        # a process holding a beacon has the segment open even without a
        # reader slot (all slots taken, or a child just forked)
        attached = [p["pid"] for p in live]
        attached += [b for b in info["beacons"] if b not in attached]
        info["attached"] = attached
        info["active_readers"] = sum(p["readers"] for p in live)
        info["dead_processes"] = [p["pid"] for p in info["processes"]
                                  if not p["alive"]]
        info["orphaned"] = not attached
    return info


def _names() -> list[str]:
    """Regular files in SHM_DIR, except POSIX semaphores (sem.*)."""
    try:
        entries = os.scandir(SHM_DIR)
    except FileNotFoundError:
        return []
    with entries:
        return sorted(e.name for e in entries
                      if e.is_file(follow_symlinks=False)
                      and not e.name.startswith("sem."))


def list_segments(all: bool = False, prefix: str = "") -> list[Info]:
    """segment_info() of every shmtxn segment in SHM_DIR (and, with
    ``all=True``, every other file there too, as ``foreign``)."""
    found = []
    for name in _names():
        if not name.startswith(prefix):
            continue
        try:
            info = segment_info(name)
        except (OSError, ValueError) as e:  # vanished, or not ours to read
            info = {"name": name, "state": "unreadable", "detail": str(e)}
        if all or info["state"] not in ("foreign", "unreadable"):
            found.append(info)
    return found


def detail(info: Info, key: str = "detail") -> str:
    """The engine's explanation `info[key]` without the segment's name,
    which the rest of `info` gives: "segment 'x' is corrupt: its header
    checksum does not match" is "its header checksum does not match"
    ("" if nothing is left).  `key` may be a path: "dict.problem"."""
    value: Any = info
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    text = str(value or "")
    quoted = f"'{info['name']}'"
    head, sep, rest = text.partition(": ")
    if quoted in head:
        return rest.strip() if sep else ""
    return text.replace(quoted, str(info["name"]))


def _problems(info: Info) -> list[str]:
    """What is wrong with a segment, as sentences."""
    state = info["state"]
    if state != "ready":
        if state == "building":
            return []
        why = detail(info)
        return [f"segment is {state}" + (f": {why}" if why else "")]
    if info.get("unrecoverable"):
        return [detail(info, "unrecoverable") or "it is unusable"]
    found = []
    live_writer = info["lock"] == "held"
    if info["lock"] == "dead":
        found.append(f"the writer lock is held by dead process "
                     f"{info['writer_pid']}: its transaction will be rolled "
                     "back by the next one (--repair does it now)")
    if not live_writer and info["undo_used"]:
        found.append(f"the undo log holds {info['undo_used']} bytes of an "
                     "unfinished transaction")
    if not live_writer and info["seq"] % 2:
        found.append("the sequence is odd: a writer died mid-transaction")
    if not live_writer and not info["undo_valid"]:
        found.append("the undo log is damaged: "
                     + detail(info, "undo_problem"))
    for proc in info["processes"]:
        if not proc["alive"]:
            inside = " inside a read transaction" if proc["readers"] else ""
            found.append(f"process {proc['pid']} died{inside} and still "
                         "holds a reader slot")
    return found


def check(name: str, repair: bool = False, timeout: float = 5.0) -> Info:
    """Verify every invariant of `name`.  With ``repair=True``, first
    recover a dead writer and clear dead readers, exactly as the next
    transaction would.  Returns ``{"problems": [...], "repaired": {...}}``;
    no problems means the segment is sound."""
    repaired: dict[str, int] | None = None
    before: Info = {}
    if repair:
        before = segment_info(name)
        if before["state"] == "ready":
            repaired = _core.repair(name, timeout)
    info = segment_info(name)
    if repaired is not None and info["state"] == "ready":
        # Taking the lock already clears dead readers (recovering a dead
        # writer reaps every dead slot; waiting for readers drops a dead
        # one), so count the dead slots that are gone, not only the ones
        # repair() itself found.
        still = set(info["dead_processes"])
        repaired["cleared_readers"] = sum(
            1 for pid in before["dead_processes"] if pid not in still)
    problems = _problems(info)
    if not problems and info.get("layout") == "dict":
        problems += _dict_problems(name, timeout)
    return {"name": name, "problems": problems, "repaired": repaired}


def _dict_problems(name: str, timeout: float) -> list[str]:
    """Walk a dict's whole table and heap (SharedDict.verify)."""
    from .dict import SharedDict
    try:
        with SharedDict(  # type: ignore[no-untyped-call, unused-ignore]
                name, read_only=True, timeout=timeout) as d:
            d.verify()
    except Error as e:
        return [str(e)]
    return []


def remove(name: str, force: bool = False) -> Info:
    """Unlink `name`.  Refuses (SegmentInUseError) while live processes
    have it attached, while its creator is still building it, or if it is
    not a shmtxn segment -- unless ``force=True``."""
    info = segment_info(name)
    if not force:
        others = [p for p in info.get("attached", []) if p != os.getpid()]
        reason = None
        if others:
            reason = ("live processes have it attached: "
                      + ", ".join(map(str, others)))
        elif info["state"] == "building":
            reason = "a live process is still creating it"
        elif info["state"] in ("foreign", "unreadable"):
            reason = "it is not a shmtxn segment"
        # under the attach/reclaim protocol, as gc: a process that
        # attached since the look above keeps it (unless it is this one,
        # which knows it is not in the middle of attaching)
        guarded = (info["state"] in ("ready", "abandoned")
                   and os.getpid() not in info.get("attached", []))
        if not reason and guarded and not _reclaim(name):
            reason = "a process attached it just now"
        if reason:
            raise SegmentInUseError(
                f"not removing segment '{name}': {reason}; use --force "
                "(force=True) to remove it anyway")
        if guarded:
            return {"name": name, "removed": True, "state": info["state"]}
    try:
        _core.unlink(name)
    except SegmentNotFoundError:
        pass  # removed meanwhile: the goal is reached
    return {"name": name, "removed": True, "state": info["state"]}


def gc(dry_run: bool = False, prefix: str = "") -> list[Info]:
    """Remove every shmtxn segment no live process has attached (and those
    whose creator died mid-creation).  Never a live one, never a foreign
    file.  Returns what was (or, with ``dry_run``, would be) removed."""
    doomed = [info for info in list_segments(prefix=prefix)
              if info["state"] == "abandoned" or info.get("orphaned")]
    removed = {}
    for info in doomed:
        if not dry_run:
            removed[info["name"]] = _collect(info)
    return [{"name": i["name"], "state": i["state"], "reason": _why(i),
             "removed": removed.get(i["name"], False)} for i in doomed]


def _collect(info: Info) -> bool:
    """Remove a segment gc found unused; False if it is in use by now.

    A shmtxn segment is removed under the attach/reclaim protocol
    (`_core.reclaim`): a process that attached since the listing -- even
    one between opening the file and taking its beacon -- keeps it.  A
    corrupt or other-version one (which nothing can attach) is unlinked.
    """
    try:
        if info["state"] in ("ready", "abandoned"):
            return _reclaim(info["name"])
        _core.unlink(info["name"])
    except SegmentNotFoundError:
        pass
    return True


def _reclaim(name: str) -> bool:
    """`_core.reclaim(name, creator_may_live=True)`: unlink `name` unless
    a process has it attached (or is attaching); False if one has."""
    # (the ignore: _core.pyi does not declare reclaim yet)
    return bool(_core.reclaim(  # type: ignore[attr-defined, unused-ignore]
        name, creator_may_live=True))


def _why(info: Info) -> str:
    """Why gc collects a segment, as `shmtxn gc` prints it."""
    if info["state"] == "abandoned":
        return "abandoned: its creator died mid-creation"
    if info.get("orphaned"):
        creator = "" if info.get("creator_alive") is None else (
            f", creator {info['creator_pid']} "
            + ("alive" if info["creator_alive"] else "gone"))
        return f"orphaned: no live process has it attached{creator}"
    return str(info["state"])
