"""The shmtxn command line (``shmtxn`` or ``python -m shmtxn``)."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    return 0 if run(args.writers, args.readers, args.txns,
                    args.start_method) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shmtxn", description="Transactional shared memory for Python.")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run the article's producer/consumer, scaled up and "
        "verified")
    demo.add_argument("--writers", type=int, default=4,
                      help="writer processes (default 4)")
    demo.add_argument("--readers", type=int, default=2,
                      help="reader processes (default 2)")
    demo.add_argument("--txns", type=int, default=50000,
                      help="write transactions per writer (default 50000)")
    demo.add_argument("--start-method", choices=["fork", "spawn",
                                                 "forkserver"],
                      help="multiprocessing start method")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
