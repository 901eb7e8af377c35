"""The shmtxn command line (``shmtxn`` or ``python -m shmtxn``).

Human tables by default, ``--json`` everywhere.  Exit codes: 0 ok, 1
problems found (check) or an operation refused or failed, 2 usage errors.
Errors go to stderr in one line.  The information comes from
shmtxn.admin; this module only formats it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from . import __version__, admin
from .demo import MAX_PROCS
from .errors import Error


# ---------------------------------------------------------------- formatting

def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def print_table(rows: list[list[str]], head: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for row in [head, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths))
              .rstrip())


def lock_text(info: dict) -> str:
    if info["lock"] == "free":
        return "free"
    verb = "held by" if info["lock"] == "held" else "DEAD holder"
    return f"{verb} {info['writer_pid']}"


def items_text(info: dict) -> str:
    """What a segment holds: a slots segment's item format and shape
    ("d[4]"), a dict's number of keys ("3 keys")."""
    if info["layout"] == "dict":
        count = info.get("dict", {}).get("count")
        return "? keys" if count is None else f"{count} keys"
    return f"{info['format']}[{'x'.join(str(d) for d in info['shape'])}]"


def ls_row(info: dict) -> list[str]:
    if info["state"] != "ready":
        size = human_bytes(info.get("file_size", 0))
        return [info["name"], info["state"], "-", size,
                human_bytes(info.get("used_bytes", 0)), "-", "-", "-", "-",
                "-", "-"]
    creator = (f"{info['creator_pid']}"
               f"{'' if info['creator_alive'] else ' (gone)'}")
    attached = ",".join(map(str, info["attached"])) or "none (orphaned)"
    return [info["name"], info["layout"], items_text(info),
            human_bytes(info["data_size"]), human_bytes(info["used_bytes"]),
            creator, attached, lock_text(info), str(info["active_readers"]),
            when(info["created_ns"]), when(info["modified_ns"])]


def emit(args, data, human) -> None:
    """Print `data` as JSON with --json, else call human(data)."""
    if args.json:
        json.dump(data, sys.stdout, indent=2, default=str)
        print()
    else:
        human(data)


# ---------------------------------------------------------------- commands

def cmd_ls(args) -> int:
    infos = admin.list_segments(all=args.all, prefix=args.prefix)
    emit(args, infos, lambda rows: print_table(
        [ls_row(i) for i in rows],
        ["NAME", "LAYOUT", "ITEMS", "SIZE", "USED", "CREATOR", "ATTACHED",
         "LOCK", "READERS", "CREATED", "MODIFIED"]) if rows else
        print(f"no shmtxn segments in {admin.SHM_DIR}"))
    return 0


def _dict_items(name: str, count: int) -> tuple[list, int]:
    """The first `count` (repr(key), repr(value)) pairs of a SharedDict,
    read in one read txn, and how many could not be read: a value that
    does not unpickle is shown as ``<damaged value: ...>``; if the keys
    cannot be listed (a damaged key or table) the list is one
    ``<damaged: ...>`` row.
    Note that reading values unpickles them (docs/dict.md)."""
    from .dict import SharedDict
    rows, damaged = [], 0
    with SharedDict(name, read_only=True) as d, d.txn(write=False) as t:
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


def cmd_info(args) -> int:
    info = admin.segment_info(args.name)
    damaged = 0
    if args.items and info["state"] == "ready":
        if info["layout"] == "dict":
            info["first_items"], damaged = _dict_items(args.name, args.items)
        else:
            from .memory import SharedMemory
            with SharedMemory(args.name, read_only=True) as shr:
                info["first_items"] = shr[0:args.items]

    def human(i):
        for key, value in i.items():
            if key == "processes":
                print("processes:")
                for p in value:
                    state = "alive" if p["alive"] else "DEAD"
                    print(f"  pid {p['pid']:<8} {state:<5} readers "
                          f"{p['readers']}  attached {when(p['attached_ns'])}")
            elif key.endswith("_ns") and isinstance(value, int):
                print(f"{key[:-3]}: {when(value)}")
            else:
                print(f"{key}: {value}")
    emit(args, info, human)
    if damaged:
        print(f"shmtxn info: {damaged} of the items shown could not be read;"
              f" `shmtxn check {args.name}` verifies the segment",
              file=sys.stderr)
    return 1 if damaged else 0


def cmd_check(args) -> int:
    result = admin.check(args.name, repair=args.repair, timeout=args.timeout)

    def human(r):
        if r["repaired"]:
            print(f"repaired: {r['repaired']['recovered_writers']} dead "
                  f"writer(s) rolled back, {r['repaired']['cleared_readers']}"
                  " dead reader slot(s) cleared")
        for problem in r["problems"]:
            print(f"problem: {problem}")
        if not r["problems"]:
            print(f"{r['name']}: ok")
    emit(args, result, human)
    return 1 if result["problems"] else 0


def cmd_rm(args) -> int:
    results, status = [], 0
    for name in args.names:
        try:
            results.append(admin.remove(name, force=args.force))
        except Error as e:
            print(f"shmtxn rm: {e}", file=sys.stderr)
            results.append({"name": name, "removed": False,
                            "error": str(e)})
            status = 1
    emit(args, results, lambda rs: [print(f"removed {r['name']}")
                                    for r in rs if r["removed"]])
    return status


def cmd_gc(args) -> int:
    removed = admin.gc(dry_run=args.dry_run, prefix=args.prefix)
    verb = "would remove" if args.dry_run else "removed"
    emit(args, removed, lambda rs: print(
        "\n".join(f"{verb} {r['name']} ({r['reason']})" if r["removed"]
                  or args.dry_run else f"kept {r['name']} (attached since "
                  "it was listed)" for r in rs)
        or "nothing to remove"))
    return 0


def cmd_demo(args) -> int:
    from .demo import run

    txns = args.txns or 50000
    if args.redis:  # the same job on a SharedDict in Redis
        from functools import partial
        from .remote_demo import run as run_redis
        run = partial(run_redis, args.redis)
        txns = args.txns or 2000
    result = run(args.writers, args.readers, txns, args.seconds,
                 args.start_method, stream=None if args.json else sys.stdout)
    if args.json:
        emit(args, result, None)
    return 0 if result["ok"] else 1


def cmd_bench(args) -> int:
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

def count_arg(low: int, high: int | None = None):
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

    def command(name, func, help):
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


def cmd_run(args) -> int:
    from ._install import run_script

    run_script(args.script, args.args, args.start_method)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":  # the script's errors are its own: as python
        return args.func(args)
    try:
        return args.func(args)
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
