"""Terminal helpers for the command line and the demo: how wide the
terminal is, whether to colour, how to shorten a name to a width.

Nothing here writes anything; callers decide what to print where.
"""

from __future__ import annotations

import os
import re
import shutil
from typing import TextIO

#: The widest the human tables get, whatever the terminal (a wider table
#: is hard to read; ``ls --wide`` and ``--json`` have no limit).
MAX_WIDTH = 100

_ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: SGR codes for the few styles the CLI uses.
_STYLES = {"ok": "32", "warn": "33", "bad": "31;1", "dim": "2"}


def columns(stream: TextIO | None = None, fallback: int = MAX_WIDTH) -> int:
    """The width of the terminal `stream` writes to.

    As ``shutil.get_terminal_size()``: ``$COLUMNS`` if it is a positive
    number, else the terminal's own size -- but of `stream` (the demo's
    bar goes to stderr, which may be a terminal while stdout is a file),
    else stdout's, else `fallback`.
    """
    try:
        env = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        env = 0
    if env > 0:
        return env
    if stream is not None:
        try:
            return os.get_terminal_size(stream.fileno()).columns or fallback
        except (AttributeError, ValueError, OSError):
            pass  # not a terminal (a pipe, a file, a StringIO)
    return shutil.get_terminal_size((fallback, 24)).columns or fallback


def table_width(stream: TextIO | None = None) -> int:
    """How wide a human table on `stream` may be: the terminal's width,
    at most MAX_WIDTH (MAX_WIDTH when it is not a terminal)."""
    return max(1, min(columns(stream), MAX_WIDTH))


def is_tty(stream: TextIO | None) -> bool:
    """True if `stream` is a terminal (False for None, a closed stream or
    one without a file descriptor)."""
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


def use_color(stream: TextIO | None) -> bool:
    """Colour only on a terminal, never with ``$NO_COLOR`` set to anything
    non-empty (https://no-color.org) or on a dumb terminal."""
    return (is_tty(stream) and not os.environ.get("NO_COLOR")
            and os.environ.get("TERM") != "dumb")


def paint(text: str, style: str | None, color: bool) -> str:
    """`text` in `style` (a key of _STYLES) if `color`, else as is."""
    if not color or not style or not text:
        return text
    return f"\x1b[{_STYLES[style]}m{text}\x1b[0m"


def visible_len(text: str) -> int:
    """The width of `text` on a terminal, colour codes not counted."""
    return len(_ANSI.sub("", text))


def ellipsis(stream: TextIO | None = None) -> str:
    """"…" if `stream` can encode it, else "~"."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        "…".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "~"
    return "…"


def elide(text: str, width: int, mark: str = "…") -> str:
    """`text` cut to `width` characters by replacing its middle with
    `mark`: a segment name's start (often a shared prefix) and its end
    (often what tells two apart) both stay visible."""
    if len(text) <= width:
        return text
    if width <= len(mark):
        return text[:width]
    keep = width - len(mark)
    tail = keep // 2
    return text[:keep - tail] + mark + (text[-tail:] if tail else "")
