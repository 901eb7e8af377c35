"""The shmtxn command line (``shmtxn`` or ``python -m shmtxn``).

Human output by default, sized to the terminal (at most 100 columns,
``ls --wide`` excepted) and without Python reprs; ``--json`` everywhere
for the full machine form.  Exit codes: 0 ok, 1 problems found (check)
or an operation refused or failed, 2 usage errors.  Errors go to stderr
in one line.  The information comes from shmtxn.admin; this module only
formats it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import time
from typing import Any, Callable, Sequence, Union

from . import __version__, admin
from ._term import ellipsis, elide, is_tty, paint, table_width, use_color
from .demo import MAX_PROCS
from .errors import Error

Info = dict[str, Any]
#: `info`'s output: (label, value) pairs; a list value is one line each.
Fields = list[tuple[str, Union[str, list[str]]]]
#: A table cell: its text, or its text and a style for paint().
Cell = Union[str, tuple[str, Union[str, None]]]


# ---------------------------------------------------------------- words

def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB"; bytes below 1 KiB exactly ("80 B")."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def age(ns: int, now_ns: int) -> str:
    """How long before `now_ns` the time `ns` was: "12s ago", "5m ago",
    "3h ago", "2d ago" (a time in the future, from clock changes, is
    "now")."""
    seconds = (now_ns - ns) / 1e9
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return "now"


def counted(n: int, one: str, many: str | None = None) -> str:
    """"1 commit", "2 commits" (`many` for an irregular plural)."""
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def plain(value: object) -> str:
    """Any field of admin's dicts in words, never a Python repr: yes/no,
    none, comma-separated lists, "key value; ..." for dicts."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(f"{str(k).replace('_', ' ')} {plain(v)}"
                         for k, v in value.items()) or "none"
    return str(value)


#: What each state word of `ls` means (shown by `info`), and its style.
STATES: dict[str, tuple[str | None, str]] = {
    "ok": ("ok", "in use, nothing to repair"),
    "busy": (None, "a live writer is in a transaction"),
    "orphaned": ("warn", "no live process has it attached; `shmtxn gc` "
                 "removes it"),
    "dead-reader": ("warn", "a dead process still holds a reader slot; "
                    "the next write transaction (or check --repair) "
                    "clears it"),
    "dead-writer": ("bad", "a writer died holding the lock; the next "
                    "transaction (or check --repair) rolls its "
                    "transaction back"),
    "corrupt": ("bad", "damaged: `shmtxn check` says how; only rm can "
                "remove it"),
    "unusable": ("bad", "marked unusable: no transaction can run on it"),
    "building": (None, "a live process is still creating it"),
    "abandoned": ("warn", "its creator died mid-creation; `shmtxn gc` "
                  "removes it"),
    "incompatible": ("warn", "made by a shmtxn with another segment "
                     "format"),
    "foreign": (None, "not a shmtxn segment"),
    "unreadable": ("warn", "this user cannot read it"),
}


def state_word(info: Info) -> str:
    """One word for a segment's condition (a key of STATES), the most
    pressing first: damage, a dead writer, a live writer, no process
    attached, a dead reader, else ok."""
    state = str(info["state"])
    if state != "ready":
        return state if state in STATES else "corrupt"
    live_writer = info["lock"] == "held"
    if info.get("unrecoverable"):
        return "unusable"
    if (not live_writer and not info["undo_valid"]) or "problem" in info.get(
            "dict", {}):
        return "corrupt"
    if info["lock"] == "dead":
        return "dead-writer"
    if live_writer:
        return "busy"
    if info.get("orphaned"):
        return "orphaned"
    if info.get("dead_processes"):
        return "dead-reader"
    return "ok"


def state_cell(info: Info) -> Cell:
    word = state_word(info)
    return (word, STATES[word][0])


def lock_text(info: Info) -> str:
    if info["lock"] == "free":
        return "free"
    verb = "held by" if info["lock"] == "held" else "DEAD holder"
    return f"{verb} {info['writer_pid']}"


def items_text(info: Info) -> str:
    """What a segment holds: a slots segment's item format and shape
    ("d[4]"), a dict's number of keys ("3 keys")."""
    if info["layout"] == "dict":
        count = info.get("dict", {}).get("count")
        return "? keys" if count is None else f"{count} keys"
    return f"{info['format']}[{'x'.join(str(d) for d in info['shape'])}]"


# ---------------------------------------------------------------- tables

def cell_text(cell: Cell) -> str:
    return cell if isinstance(cell, str) else cell[0]


def render_table(head: Sequence[str], rows: Sequence[Sequence[Cell]], *,
                 width: int | None = None, shrink: int = 0,
                 right: frozenset[int] = frozenset(), color: bool = False,
                 mark: str = "…") -> list[str]:
    """Aligned columns, two spaces apart.  With `width`, column `shrink`
    is narrowed (its cells elided in the middle) so that lines fit, if
    they can with that column at least as wide as its heading."""
    widths = [max(len(cell_text(c)) for c in col) for col in zip(head, *rows)]
    if width is not None:
        over = sum(widths) + 2 * (len(widths) - 1) - width
        if over > 0:
            widths[shrink] = max(len(head[shrink]), widths[shrink] - over)
    lines = []
    for row in [list(head), *rows]:
        cells = []
        for j, cell in enumerate(row):
            text, style = (cell, None) if isinstance(cell, str) else cell
            text = elide(text, widths[j], mark)
            pad = " " * (widths[j] - len(text))
            shown = paint(text, style, color)
            cells.append(pad + shown if j in right else shown + pad)
        lines.append("  ".join(cells).rstrip())
    return lines


#: `ls` columns: heading, cell, right-aligned, and in which order they go
#: when the terminal is too narrow for all (0: never).  USED is the memory
#: a segment really takes (a dict's SIZE, in --wide and info, is the
#: address space it may grow into).
LsColumn = tuple[str, Callable[[Info, int], Cell], bool, int]
LS_COLUMNS: list[LsColumn] = [
    ("NAME", lambda i, now: str(i["name"]), False, 0),
    ("HOLDS", lambda i, now: items_text(i) if i["state"] == "ready"
     else "-", False, 3),
    ("USED", lambda i, now: human_bytes(i.get("used_bytes", 0)), True, 4),
    ("STATE", lambda i, now: state_cell(i), False, 0),
    ("PROCS", lambda i, now: str(len(i["attached"]))
     if i["state"] == "ready" else "-", True, 5),
    ("MODIFIED", lambda i, now: age(i["modified_ns"], now)
     if i["state"] == "ready" else age(i.get("mtime_ns", now), now),
     True, 2),
]
#: the narrowest a name gets before other columns are dropped instead
NAME_MIN = 16


def ls_lines(infos: list[Info], width: int, color: bool = False,
             mark: str = "…", now_ns: int | None = None) -> list[str]:
    """`shmtxn ls`: what a user needs to decide what to remove, within
    `width` columns (names elided in the middle if need be; on a very
    narrow terminal the least needed columns are left out)."""
    now = time.time_ns() if now_ns is None else now_ns
    columns = list(LS_COLUMNS)
    while True:
        rows = [[get(i, now) for _, get, _, _ in columns] for i in infos]
        head = [c[0] for c in columns]
        others = sum(max(len(cell_text(c)) for c in col)
                     for col in list(zip(head, *rows))[1:]) + 2 * (
                         len(head) - 1)
        names = max(len(str(i["name"])) for i in infos)
        droppable = [c for c in columns if c[3]]
        if others + min(names, NAME_MIN) <= width or not droppable:
            break
        columns.remove(min(droppable, key=lambda c: c[3]))
    right = frozenset(j for j, c in enumerate(columns) if c[2])
    return render_table(head, rows, width=width, right=right, color=color,
                        mark=mark)


def ls_wide_row(info: Info) -> list[Cell]:
    """Every column, nothing shortened (``ls --wide``)."""
    if info["state"] != "ready":
        size = human_bytes(info.get("file_size", 0))
        return [info["name"], state_cell(info), "-", "-", size,
                human_bytes(info.get("used_bytes", 0)), "-", "-", "-",
                "-", "-", "-"]
    creator = (f"{info['creator_pid']}"
               f"{'' if info['creator_alive'] else ' (gone)'}")
    attached = ",".join(map(str, info["attached"])) or "none (orphaned)"
    return [info["name"], state_cell(info), info["layout"], items_text(info),
            human_bytes(info["data_size"]), human_bytes(info["used_bytes"]),
            creator, attached, lock_text(info), str(info["active_readers"]),
            when(info["created_ns"]), when(info["modified_ns"])]


LS_WIDE_HEAD = ["NAME", "STATE", "LAYOUT", "ITEMS", "SIZE", "USED",
                "CREATOR", "ATTACHED", "LOCK", "READERS", "CREATED",
                "MODIFIED"]


# ---------------------------------------------------------------- info

def field_lines(fields: Fields, width: int,
                mark: str = "…") -> list[str]:
    """"Label:  value" lines, values aligned; a str value is wrapped to
    `width` under itself, a list value is one line each (cut to width,
    ending in `mark`)."""
    indent = max(len(label) for label, _ in fields) + 3
    room = max(width - indent, 10)
    lines = []
    for label, value in fields:
        if isinstance(value, str):
            parts = textwrap.wrap(value, room, break_on_hyphens=False) or [
                ""]
        else:
            parts = [v if len(v) <= room else v[:room - len(mark)] + mark
                     for v in value] or ["none"]
        lines.append(f"{label + ':':<{indent}}{parts[0]}".rstrip())
        lines += [" " * indent + p for p in parts[1:]]
    return lines


def process_rows(info: Info) -> list[str]:
    """The reader-slot table of `info`, as lines."""
    rows: list[list[Cell]] = [
        [str(p["pid"]), "alive" if p["alive"] else "dead", str(p["readers"]),
         when(p["attached_ns"])] for p in info["processes"]]
    listed = {p["pid"] for p in info["processes"]}
    rows += [[str(pid), "alive", "-", "(no reader slot)"]
             for pid in info["beacons"] if pid not in listed]
    if not rows:
        return []
    return render_table(["PID", "STATE", "READERS", "ATTACHED"], rows,
                        right=frozenset({2}))


#: admin's fields that info_lines() words; any other is shown as is
SHOWN = {
    "name", "state", "detail", "format_version", "layout", "format",
    "itemsize", "shape", "items", "data_size", "total_size", "undo_off",
    "undo_size", "undo_used", "undo_valid", "undo_problem", "undo_reserved",
    "max_processes", "creator_pid", "creator_alive", "lock", "writer_pid",
    "seq", "commits", "recoveries", "created_ns", "modified_ns", "mtime_ns",
    "processes", "beacons", "unrecoverable", "data_off", "dict",
    "file_size", "used_bytes", "attached", "active_readers",
    "dead_processes", "orphaned", "first_items"}


def info_fields(info: Info, now_ns: int | None = None) -> Fields:
    """`shmtxn info` as (label, value) pairs."""
    now = time.time_ns() if now_ns is None else now_ns
    word = state_word(info)
    fields: Fields = [
        ("Name", str(info["name"])),
        ("State", f"{word}: {STATES[word][1]}")]
    if info["state"] != "ready":
        if admin.detail(info):
            fields.append(("Detail", admin.detail(info)))
        fields.append(("File", f"{human_bytes(info.get('file_size', 0))}, "
                       f"{human_bytes(info.get('used_bytes', 0))} in "
                       "memory"))
        if "mtime_ns" in info:
            fields.append(("Modified", f"{when(info['mtime_ns'])} "
                           f"({age(info['mtime_ns'], now)})"))
    else:
        fields += ready_fields(info, now)
    fields += [(key.replace("_", " ").capitalize(), plain(value))
               for key, value in info.items() if key not in SHOWN]
    items = info.get("first_items")
    if items is not None:
        fields.append(("Items", items_lines(info, items)))
    return fields


def ready_fields(info: Info, now: int) -> Fields:
    """The fields of a ready segment's header and state."""
    if info["layout"] == "dict":
        layout = f"dict, {items_text(info)}"
    else:
        shape = " x ".join(f"{d:,}" for d in info["shape"])
        layout = (f"slots, {info['items']:,} items of format "
                  f"{info['format']} ({info['itemsize']} bytes each), "
                  f"shape {shape}")
    if info["lock"] == "free":
        writer = "none (the lock is free)"
    elif info["lock"] == "held":
        writer = f"pid {info['writer_pid']}, in a transaction"
    else:
        writer = (f"pid {info['writer_pid']}, dead: its transaction is "
                  "rolled back by the next one (check --repair does it "
                  "now)")
    undo = (f"{human_bytes(info['undo_used'])} used of "
            f"{human_bytes(info['undo_size'])} "
            f"({human_bytes(info['undo_reserved'])} backed by pages)")
    if not info["undo_valid"]:
        undo += f"; damaged: {admin.detail(info, 'undo_problem')}"
    seq = info["seq"]
    parity = "odd: a transaction is open" if seq % 2 else "even: committed"
    fields: Fields = [
        ("Layout", layout),
        ("Size", f"{human_bytes(info['data_size'])} of data, "
                 f"{human_bytes(info['total_size'])} in all, "
                 f"{human_bytes(info['used_bytes'])} in memory"),
        ("Format", f"version {info['format_version']}"),
        ("Creator", f"pid {info['creator_pid']}, "
                    + ("alive" if info["creator_alive"] else "gone")),
        ("Writer", writer),
        ("Readers", f"{info['active_readers']} in read transactions"),
        ("Attached", ", ".join(map(str, info["attached"]))
         or "none (orphaned)"),
        ("Processes", process_rows(info)),
        ("Max procs", f"{info['max_processes']}"),
        ("Undo log", undo),
        ("Sequence", f"{seq:,} ({parity}); "
                     f"{counted(info['commits'], 'commit')}, "
                     + counted(info["recoveries"], "recovery", "recoveries")),
        ("Created", when(info["created_ns"])),
        ("Modified", f"{when(info['modified_ns'])} "
                     f"({age(info['modified_ns'], now)})"),
    ]
    if "dict" in info:
        d = info["dict"]
        fields.append(("Dict", "damaged: "
                       + admin.detail(info, "dict.problem") if "problem" in d
                       else f"{d['count']:,} keys, table of "
                       f"{d['table_capacity']:,} entries; heap "
                       f"{human_bytes(d['heap_used'])} used of "
                       f"{human_bytes(d['heap_size'])} "
                       f"({human_bytes(d['live_bytes'])} live, "
                       f"{human_bytes(d['free_bytes'])} free)"))
    fields.append(("Offsets", f"undo log at byte {info['undo_off']:,}, "
                   f"data at byte {info['data_off']:,}"))
    if info.get("unrecoverable"):
        fields.append(("Unusable", admin.detail(info, "unrecoverable")))
    return fields


def items_lines(info: Info, items: list[Any]) -> list[str]:
    """--items: a dict's "key: value" pairs (Python literals: they are
    Python values), a slots segment's "[i] value"."""
    if info.get("layout") == "dict":
        return [f"{k}: {v}" if v else k for k, v in items]
    return [f"[{i}] {v}" for i, v in enumerate(items)]


def info_lines(info: Info, width: int, mark: str = "…",
               now_ns: int | None = None) -> list[str]:
    """`shmtxn info` for people, within `width` columns."""
    return field_lines(info_fields(info, now_ns), width, mark)


def wrapped(text: str, width: int | None, indent: int = 2) -> list[str]:
    """A sentence on lines of at most `width` (None: one line), continued
    `indent` in."""
    if width is None:
        return [text]
    return textwrap.wrap(text, max(width, indent + 10),
                         subsequent_indent=" " * indent,
                         break_on_hyphens=False) or [""]


# ---------------------------------------------------------------- output

def emit(args: argparse.Namespace, data: Any,
         human: Callable[[Any], None] | None) -> None:
    """Print `data` as JSON with --json, else call human(data)."""
    if args.json or human is None:
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
    else:
        human(data)


def out(lines: list[str]) -> None:
    for line in lines:
        print(line)


def width() -> int:
    """How wide tables and fields may be (see _term.table_width)."""
    return table_width(sys.stdout)


def sentence_width() -> int | None:
    """Where to wrap sentences (gc's and check's lines): the table width
    on a terminal; none in a pipe or a file, where one line per segment
    or problem is what grep wants."""
    return width() if is_tty(sys.stdout) else None


def color() -> bool:
    return use_color(sys.stdout)


# ---------------------------------------------------------------- commands

def cmd_ls(args: argparse.Namespace) -> int:
    infos = admin.list_segments(all=args.all, prefix=args.prefix)

    def human(rows: list[Info]) -> None:
        if not rows:
            print(f"no shmtxn segments in {admin.SHM_DIR}")
        elif args.wide:
            out(render_table(LS_WIDE_HEAD, [ls_wide_row(i) for i in rows],
                             right=frozenset({4, 5, 9}), color=color()))
        else:
            out(ls_lines(rows, width(), color(), ellipsis(sys.stdout)))
    emit(args, infos, human)
    return 0


def _dict_items(name: str, count: int) -> tuple[list[list[str]], int]:
    """The first `count` (repr(key), repr(value)) pairs of a SharedDict,
    read in one read txn, and how many could not be read: a value that
    does not unpickle is shown as ``<damaged value: ...>``; if the keys
    cannot be listed (a damaged key or table) the list is one
    ``<damaged: ...>`` row.
    Note that reading values unpickles them (docs/dict.md)."""
    from .dict import SharedDict
    rows: list[list[str]] = []
    damaged = 0
    # (the ignore is for until dict.py is annotated)
    with (SharedDict(  # type: ignore[no-untyped-call, unused-ignore]
            name, read_only=True) as d, d.txn(write=False) as t):
        try:
            keys = list(t)[:count]
        except Error as e:
            return [[f"<damaged: {e}>", ""]], 1
        for key in keys:
            try:
                value = t[key]
            except Error as e:
                rows.append([repr(key), f"<damaged value: {e}>"])
                damaged += 1
                continue
            except KeyError:  # listed, yet its lookup cannot find it
                rows.append([repr(key), "<damaged: the key is listed but "
                             "the index does not find it>"])
                damaged += 1
                continue
            try:
                shown = repr(value)
            except Exception as e:  # a stored class with a broken __repr__
                shown = f"<unprintable {type(value).__name__}: {e!r}>"
            rows.append([repr(key), shown])
    return rows, damaged


def cmd_info(args: argparse.Namespace) -> int:
    info = admin.segment_info(args.name)
    damaged = 0
    if args.items and info["state"] == "ready":
        if info["layout"] == "dict":
            info["first_items"], damaged = _dict_items(args.name, args.items)
        else:
            from .memory import SharedMemory
            with SharedMemory(  # type: ignore[no-untyped-call, unused-ignore]
                    args.name, read_only=True) as shr:
                info["first_items"] = shr[0:args.items]
    emit(args, info, lambda i: out(info_lines(i, width(),
                                              ellipsis(sys.stdout))))
    if damaged:
        print(f"shmtxn info: {damaged} of the items shown could not be read;"
              f" `shmtxn check {args.name}` verifies the segment",
              file=sys.stderr)
    return 1 if damaged else 0


def cmd_check(args: argparse.Namespace) -> int:
    result = admin.check(args.name, repair=args.repair, timeout=args.timeout)

    def human(r: Info) -> None:
        lines = []
        if r["repaired"]:
            lines += wrapped(
                f"repaired: {r['repaired']['recovered_writers']} dead "
                f"writer(s) rolled back, {r['repaired']['cleared_readers']}"
                " dead reader slot(s) cleared", sentence_width())
        for problem in r["problems"]:
            first, *rest = wrapped(f"problem: {problem}", sentence_width())
            lines += [paint("problem:", "bad", color()) + first[8:], *rest]
        if not r["problems"]:
            lines.append(f"{r['name']}: {paint('ok', 'ok', color())}")
        out(lines)
    emit(args, result, human)
    return 1 if result["problems"] else 0


def cmd_rm(args: argparse.Namespace) -> int:
    results: list[Info] = []
    status = 0
    for name in args.names:
        try:
            results.append(admin.remove(name, force=args.force))
        except Error as e:
            print(f"shmtxn rm: {e}", file=sys.stderr)
            results.append({"name": name, "removed": False,
                            "error": str(e)})
            status = 1
    emit(args, results, lambda rs: out([f"removed {r['name']}"
                                        for r in rs if r["removed"]]))
    return status


def cmd_gc(args: argparse.Namespace) -> int:
    removed = admin.gc(dry_run=args.dry_run, prefix=args.prefix)
    verb = "would remove" if args.dry_run else "removed"

    def human(rs: list[Info]) -> None:
        lines = []
        for r in rs:
            text = (f"{verb} {r['name']} ({r['reason']})"
                    if r["removed"] or args.dry_run
                    else f"kept {r['name']} (attached since it was listed)")
            lines += wrapped(text, sentence_width())
        out(lines or ["nothing to remove"])
    emit(args, removed, human)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    tty_bar = not args.json and sys.stderr.isatty()
    stream = None if args.json else sys.stdout
    if args.redis:  # the same job on a SharedDict in Redis
        from .remote_demo import run as run_redis
        result = run_redis(args.redis, args.writers, args.readers,
                           args.txns or 2000, args.seconds, args.start_method,
                           stream=stream, color=not args.json and color())
    else:
        result = run(args.writers, args.readers, args.txns or 50000,
                     args.seconds, args.start_method, stream=stream,
                     progress=sys.stderr if tty_bar else None,
                     color=not args.json and color())
    if args.json:
        emit(args, result, None)
    return 0 if result["ok"] else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from ._bench import quick_tables, table

    samples, min_sample = (3, 0.05) if args.quick else (5, 0.2)
    tables = quick_tables(samples, min_sample)
    if args.json:
        emit(args, {title: {name: {"median_s": r.median,
                                   "ratio": r.median / res[floor].median}
                            for name, r in res.items()}
                    for title, res, floor in tables}, None)
    else:
        for title, res, floor in tables:
            print(table(title, res, floor))
    return 0


# ---------------------------------------------------------------- parser

def count_arg(low: int,
              high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int in [low, high]."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole "
                                             "number") from None
        if n < low or (high is not None and n > high):
            bound = f"{low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound} (got {n})")
        return n
    return parse


def seconds_arg(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") \
            from None
    if not (math.isfinite(x) and x >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 "
                                         f"(got {text})")
    return x


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmtxn",
        description="See, check and clean shmtxn shared-memory segments.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int],
                help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true",
                       help="machine-readable output")
        p.set_defaults(func=func)
        return p

    p = command("ls", cmd_ls, "list shmtxn segments in /dev/shm (or "
                "$SHMTXN_SHM_DIR)")
    p.add_argument("--all", action="store_true",
                   help="also list other files there, flagged foreign")
    p.add_argument("--prefix", default="", help="only names starting so")
    p.add_argument("--wide", action="store_true",
                   help="every column (pids, lock, times), nothing "
                        "shortened, whatever the terminal's width")
    p = command("info", cmd_info, "show one segment's header and state")
    p.add_argument("name")
    p.add_argument("--items", type=count_arg(0), default=0, metavar="N",
                   help="also show the first N items (a dict's values are "
                        "unpickled: see docs/dict.md)")
    p = command("check", cmd_check, "verify a segment's invariants "
                "(exit 1 if problems remain)")
    p.add_argument("name")
    p.add_argument("--repair", action="store_true",
                   help="recover a dead writer and clear dead readers, as "
                        "the next transaction would")
    p.add_argument("--timeout", type=seconds_arg, default=5.0,
                   help="seconds to wait for the lock when repairing")
    p = command("rm", cmd_rm, "remove segments (refused while live "
                "processes have them attached)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--force", action="store_true",
                   help="remove even if attached, being created or foreign")
    p = command("gc", cmd_gc, "remove segments no live process has attached")
    p.add_argument("--dry-run", action="store_true",
                   help="only say what would be removed")
    p.add_argument("--prefix", default="", help="only names starting so")
    p = command("demo", cmd_demo, "run the article's producer/consumer, "
                "scaled up and verified")
    p.add_argument("--writers", type=count_arg(1, MAX_PROCS), default=4,
                   help=f"writer processes, 1 to {MAX_PROCS} (default 4)")
    p.add_argument("--readers", type=count_arg(0, MAX_PROCS), default=2,
                   help=f"reader processes, 0 to {MAX_PROCS} (default 2)")
    p.add_argument("--txns", type=count_arg(1),
                   help="write transactions per writer (default 50000; "
                        "2000 with --redis)")
    p.add_argument("--seconds", type=seconds_arg, default=0.0,
                   help="run for this long instead of a number of txns")
    p.add_argument("--start-method",
                   choices=["fork", "spawn", "forkserver"],
                   help="multiprocessing start method")
    p.add_argument("--redis", metavar="URL",
                   help="run it on a SharedDict in this Redis instead "
                        "(redis://host:port/db; docs/remote.md)")
    p = sub.add_parser("run", help="run a Python script with "
                       "shmtxn.install() applied (the article's programs, "
                       "verbatim: docs/verbatim.md)",
                       description="Run SCRIPT as `python SCRIPT ARGS...` "
                       "would, with multiprocessing.shared_memory."
                       "SharedMemory being shmtxn's, in its children too.")
    p.add_argument("--start-method", choices=["fork", "spawn", "forkserver"],
                   help="multiprocessing start method to set first")
    p.add_argument("script")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_run)
    p = command("bench", cmd_bench, "quick side-by-side table against the "
                "stdlib, multiprocessing, posix_ipc and lmdb")
    p.add_argument("--quick", action="store_true",
                   help="fewer, shorter samples")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from ._install import run_script

    run_script(args.script, args.args, args.start_method)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if args.command == "run":  # the script's errors are its own: as python
        return func(args)
    try:
        return func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for it
        print(f"shmtxn {args.command}: interrupted", file=sys.stderr)
        return 130
    except Error as e:
        print(f"shmtxn {args.command}: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        print(f"shmtxn {args.command}: {e}", file=sys.stderr)
        return 2 if isinstance(e, ValueError) else 1


if __name__ == "__main__":
    sys.exit(main())
