"""The CLI's human output fits a terminal: `ls` and `info` within 80
columns (100 at most by default) on a zoo of segments in every state, no
Python reprs, names elided only in the narrow view, `--json` complete,
colour only on a terminal and never with NO_COLOR; and the demo's
progress bar only on a real terminal (a pty of a set width), on one line
that is erased before the results."""

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios

import pytest

import helpers
from shmtxn import SharedDict, SharedMemory, admin, cli
from shmtxn._term import elide
from test_cli import leak
from test_crash import run_crashing_child, start_child

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: what a Python repr leaks into text: dicts, quotes, tuples, constants
REPRS = re.compile(r"[{}'\"]|,\)|\bNone\b|\bTrue\b|\bFalse\b")


# ---------------------------------------------------------------- the zoo

@pytest.fixture(scope="module")
def zoo():
    """Segments in every state a user meets, under one prefix: live slots
    (this process) and a live dict, a name far longer than a column, a
    writer killed in its txn, a corrupt header, an orphan, an abandoned
    creation and a foreign file.  Removed afterwards."""
    prefix = f"shmtxn_t_{os.getpid()}_zoo_"
    names = {kind: prefix + kind for kind in (
        "slots", "dict", "dead", "corrupt", "orphan", "abandoned",
        "foreign")}
    names["long"] = prefix + "long_" + "x" * 150 + "_end"
    SharedMemory(names["dead"], create=True, size=16).close()
    # (first: a child forked while this process has segments attached
    # would leave a dead process's slot in each)
    p, _ = start_child(helpers.hold_write_txn, names["dead"],
                       expect="locked")
    helpers.kill(p)
    held = [SharedMemory(names["slots"], create=True, size=96, format="d"),
            SharedMemory(names["long"], create=True, size=8 * 1000,
                         format="d")]
    d = SharedDict(names["dict"], create=True)
    d.update({"a": 1, "b": [1, 2], "c": None})
    held.append(d)
    SharedMemory(names["corrupt"], create=True, size=80).close()
    with open(f"/dev/shm/{names['corrupt']}", "r+b") as f:
        f.seek(24)
        f.write(b"\xa5" * 32)
    leak(names["orphan"])
    run_crashing_child("create:after_reserve", (
        "from shmtxn import SharedMemory\n"
        f"SharedMemory({names['abandoned']!r}, create=True, size=80)\n"))
    with open(f"/dev/shm/{names['foreign']}", "wb") as f:
        f.write(b"not ours" * 100)
    try:
        yield prefix, names
    finally:
        for seg in held:
            seg.close()
        for seg in names.values():
            try:
                admin.remove(seg, force=True)
            except Exception:
                pass


def listing(prefix):
    return admin.list_segments(all=True, prefix=prefix)


def check_lines(lines, width):
    """Every line within `width` columns and free of reprs."""
    assert lines
    for line in lines:
        text = ANSI.sub("", line)
        assert len(text) <= width, (len(text), text)
        assert not REPRS.search(text), text


def test_the_zoo_has_every_state(zoo):
    prefix, names = zoo
    words = {i["name"]: cli.state_word(i) for i in listing(prefix)}
    assert words == {
        names["slots"]: "ok", names["long"]: "ok", names["dict"]: "ok",
        names["dead"]: "dead-writer", names["corrupt"]: "corrupt",
        names["orphan"]: "orphaned", names["abandoned"]: "abandoned",
        names["foreign"]: "foreign"}


# ---------------------------------------------------------------- ls

@pytest.mark.parametrize("width", [24, 40, 60, 80, 100, 132])
def test_ls_fits_every_width_and_shows_every_segment(zoo, width):
    prefix, names = zoo
    lines = cli.ls_lines(listing(prefix), width)
    check_lines(lines, width)
    assert lines[0].split()[0] == "NAME" and "STATE" in lines[0]
    assert len(lines) == 1 + len(names)
    for row, info in zip(lines[1:], listing(prefix)):
        assert cli.state_word(info) in row.split()


def test_ls_at_80_columns_keeps_every_column_and_elides_long_names(zoo):
    prefix, names = zoo
    infos = listing(prefix)
    lines = cli.ls_lines(infos, 80)
    assert lines[0].split() == ["NAME", "HOLDS", "USED", "STATE", "PROCS",
                                "MODIFIED"]
    for line, info in zip(lines[1:], infos):
        shown = line.split()[0]
        assert shown == elide(info["name"], len(shown))
        if info["name"] == names["long"]:
            assert "…" in shown and shown.endswith("x_end")
        else:
            assert shown == info["name"]  # short enough: whole
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows[names["dict"]][1:3] == ["3", "keys"]
    assert rows[names["slots"]][1:4] == ["d[12]", "16.0", "KiB"]


def test_ls_by_default_fits_100_columns_and_wide_elides_nothing(zoo):
    prefix, names = zoo
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = run(["ls", "--all", "--prefix", prefix], env=env)
    check_lines(out.splitlines(), 100)
    assert names["long"] not in out
    wide = run(["ls", "--all", "--wide", "--prefix", prefix], env=env)
    assert names["long"] in wide and "…" not in wide
    assert not REPRS.search(wide)
    assert len(wide.splitlines()[1]) > 100  # --wide: no limit


def test_ls_json_has_every_field_and_full_names(zoo):
    prefix, names = zoo
    rows = json.loads(run(["ls", "--all", "--json", "--prefix", prefix],
                          env=dict(os.environ, COLUMNS="40")))
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(names.values())
    ready = by_name[names["slots"]]
    assert set(ready) >= {
        "name", "state", "layout", "format", "shape", "data_size",
        "used_bytes", "creator_pid", "creator_alive", "attached", "lock",
        "writer_pid", "active_readers", "orphaned", "created_ns",
        "modified_ns", "processes", "undo_used", "seq"}
    assert by_name[names["dead"]]["lock"] == "dead"
    assert by_name[names["corrupt"]]["state"] == "corrupt"


# ---------------------------------------------------------------- info

@pytest.mark.parametrize("kind", ["slots", "dict", "long", "dead", "corrupt",
                                  "orphan", "abandoned", "foreign"])
def test_info_is_labelled_aligned_and_fits_80_columns(zoo, kind):
    prefix, names = zoo
    info = admin.segment_info(names[kind])
    lines = cli.info_lines(info, 80)
    check_lines(lines, 80)
    labels = [line.split(":")[0] for line in lines if line[:1] != " "]
    assert labels[:2] == ["Name", "State"]
    column = len(lines[0]) - len(lines[0][5:].lstrip())
    for line in lines:  # every value starts in one column
        assert line[column - 1] == " " and line[column] != " ", line
    if info["state"] == "ready":
        for label in ("Layout", "Size", "Writer", "Readers", "Processes",
                      "Undo log", "Created", "Modified"):
            assert label in labels, label
    if kind == "dict":
        assert "Dict" in labels
    if kind == "dead":
        writer = next(line for line in lines if line.startswith("Writer:"))
        assert f"pid {info['writer_pid']}, dead" in writer


def test_info_json_is_the_full_machine_form(zoo):
    prefix, names = zoo
    info = json.loads(run(["info", names["dict"], "--json"]))
    assert info.keys() == admin.segment_info(names["dict"]).keys()
    assert info["dict"]["count"] == 3 and info["orphaned"] is False
    human = run(["info", names["dict"]], env=dict(os.environ, COLUMNS="80"))
    check_lines(human.splitlines(), 80)
    assert "Dict:" in human and "3 keys" in human


def test_info_items_are_python_values_cut_to_the_width(zoo):
    """--items shows values as Python literals (they are Python values),
    each line cut to the width."""
    prefix, names = zoo
    with SharedDict(names["dict"]) as d:
        d["long"] = "y" * 500
    try:
        out = run(["info", names["dict"], "--items", "10"],
                  env=dict(os.environ, COLUMNS="80"))
    finally:
        with SharedDict(names["dict"]) as d:
            del d["long"]
    items = out.split("Items:")[1].splitlines()
    assert items[0].strip() == "'a': 1"
    assert all(len(line) <= 80 for line in out.splitlines())
    assert any(line.endswith("…") for line in items)


# ---------------------------------------------------------------- the rest

def test_check_gc_and_rm_print_words_not_reprs(zoo, name):
    prefix, names = zoo
    env = dict(os.environ, COLUMNS="80")
    for args in (["check", names["dead"]], ["check", names["corrupt"]],
                 ["check", names["slots"]], ["gc", "--dry-run", "--prefix",
                                             prefix]):
        out = run(args, env=env, check=False)
        assert not REPRS.search(out), out
        assert out.strip()
    SharedMemory(name, create=True, size=8).close()
    assert run(["rm", name]) == f"removed {name}\n"
    rm = subprocess.run([sys.executable, "-m", "shmtxn", "rm",
                         names["slots"]], capture_output=True, text=True,
                        timeout=60)
    assert rm.returncode == 1
    assert f"live processes have it attached: {os.getpid()};" in rm.stderr


def test_plain_words_for_every_kind_of_value():
    assert [cli.plain(v) for v in (True, False, None, "", [], (1, 2),
                                   {"a_b": 1, "c": [True]}, 7)] == [
        "yes", "no", "none", "none", "none", "1, 2", "a b 1; c yes", "7"]


# ---------------------------------------------------------------- terminals

def run(args, env=None, check=True):
    out = subprocess.run([sys.executable, "-m", "shmtxn", *args],
                         capture_output=True, text=True, timeout=120,
                         env=env)
    if check:
        assert out.returncode == 0, out.stderr
    return out.stdout


def terminal(columns):
    """A new pty (master, slave) `columns` wide."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ,
                struct.pack("HHHH", 24, columns, 0, 0))
    return master, slave


def read_all(fd, until=None):
    """What the pty master `fd` shows until every slave end is closed (or,
    with `until`, until those bytes have appeared)."""
    seen = b""
    while until is None or until not in seen:
        ready, _, _ = select.select([fd], [], [], 120)
        assert ready, f"the terminal stayed silent: {seen!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the last process on the terminal is gone
            break
        if not chunk:
            break
        seen += chunk
    return seen


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")}
    env["TERM"] = "xterm"
    env.update(extra)
    return env


def on_terminal(args, columns, stdout_too=False, **env):
    """Run the CLI with stderr (and stdout, if `stdout_too`) on a pty
    `columns` wide; (exit code, stdout through a pipe, what the terminal
    got, ANSI sequences kept)."""
    master, slave = terminal(columns)
    p = subprocess.Popen([sys.executable, "-m", "shmtxn", *args],
                         stdin=subprocess.DEVNULL,
                         stdout=slave if stdout_too else subprocess.PIPE,
                         stderr=slave, env=clean_env(**env))
    os.close(slave)
    try:
        shown = read_all(master)
        out = p.stdout.read().decode() if p.stdout else ""
        p.wait(timeout=120)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()
    return p.returncode, out, shown.decode()


DEMO = ["demo", "--writers", "1", "--readers", "1", "--txns", "20000"]
FRAME = re.compile(r"^ *\[[#.]+\] [\d,]+ txns")


def frames(shown):
    """The progress lines a terminal was sent: between carriage returns,
    erase-to-end-of-line codes removed."""
    return [f.replace("\x1b[K", "") for f in shown.split("\r")]


@pytest.mark.parametrize("columns", [40, 80])
def test_demo_bar_is_one_line_on_the_terminal_and_erased(columns):
    code, out, shown = on_terminal(DEMO, columns)
    assert code == 0, shown
    bars = [f for f in frames(shown) if f]
    assert bars and all(FRAME.match(f) for f in bars), shown
    assert all(len(f) <= columns - 1 for f in bars)  # never wraps
    assert "\n" not in shown  # never a new line: redrawn in place
    assert shown.endswith("\r\x1b[K")  # erased before the results
    assert "/s" in bars[-1]  # the rate fits at 40 columns
    # stdout: the results only, the last three lines as .ci/run greps them
    assert "\r" not in out and "\x1b" not in out and "[" not in out
    last = out.splitlines()[-3:]
    assert "write txns" in last[0] and "counter = 20,000" in last[1]
    assert last[2].strip().startswith("OK:")


def test_demo_bar_on_a_dumb_terminal_is_erased_with_spaces():
    code, out, shown = on_terminal(DEMO, 40, TERM="dumb")
    assert code == 0 and "\x1b" not in shown + out  # no ANSI, no colour
    bars = [f.rstrip() for f in shown.split("\r") if f.strip()]
    assert bars and all(FRAME.match(f) and len(f) <= 39 for f in bars)
    assert re.search(r"\r +\r$", shown) and "\n" not in shown


def test_demo_bar_adapts_to_any_width():
    from shmtxn.demo import bar_line
    for columns in range(1, 200):
        for done, part in ((0, 0.0), (123_456_789, 0.5), (10**12, 1.0)):
            line = bar_line(done, part, 987_654.0, columns)
            assert len(line) <= max(columns - 1, 0)
            if columns >= 40:
                assert line.count("[") == 1 and f"{done:,}" in line


def test_no_bar_without_a_terminal_nor_with_json():
    out = subprocess.run([sys.executable, "-m", "shmtxn", *DEMO],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stderr == ""
    assert "\r" not in out.stdout and "[" not in out.stdout
    code, out, shown = on_terminal([*DEMO, "--json"], 80)
    assert code == 0 and shown == ""
    assert json.loads(out)["ok"] is True


def test_colour_on_a_terminal_unless_no_color(zoo):
    prefix, names = zoo
    args = ["ls", "--prefix", prefix]
    _, _, coloured = on_terminal(args, 80, stdout_too=True)
    assert "\x1b[" in coloured
    lines = ANSI.sub("", coloured).split("\r\n")
    check_lines([line for line in lines if line], 80)
    _, _, empty = on_terminal(args, 80, stdout_too=True, NO_COLOR="")
    assert "\x1b[" in empty  # no-color.org: only a non-empty value counts
    for value in ("1", "yes"):
        _, _, plain = on_terminal(args, 80, stdout_too=True, NO_COLOR=value)
        assert "\x1b" not in plain and "dead-writer" in plain
    _, _, demo = on_terminal(DEMO, 80, stdout_too=True, NO_COLOR="1")
    assert "OK:" in demo and "\x1b[3" not in demo  # no colour, bar kept
    _, _, demo = on_terminal(DEMO, 80, stdout_too=True)
    assert "\x1b[32mOK:" in demo
    _, out, _ = on_terminal(["ls", "--json", "--prefix", prefix], 80,
                            stdout_too=True)
    assert "\x1b" not in out


def default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as from a terminal


def test_ctrl_c_erases_the_bar_and_stops_the_demo_cleanly():
    """Ctrl-C: the children stop, the segment goes, and the one-line
    message is on a line of its own -- the bar erased first."""
    master, slave = terminal(80)
    p = subprocess.Popen(
        [sys.executable, "-m", "shmtxn", "demo", "--seconds", "120",
         "--writers", "2", "--readers", "1"],
        stdout=subprocess.PIPE, stderr=slave, env=clean_env(),
        start_new_session=True, preexec_fn=default_sigint)
    os.close(slave)
    try:
        header = p.stdout.readline().decode()
        segment = re.search(r"on segment (\S+)$", header).group(1)
        read_all(master, until=b" txns")  # the children run: bar shown
        os.killpg(p.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        shown = read_all(master).decode()
        rest = p.stdout.read()
        p.wait(timeout=60)
    finally:
        os.close(master)
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130
    assert shown.rsplit("\r\x1b[K", 1)[-1] == "shmtxn demo: interrupted\r\n", \
        shown
    assert "Traceback" not in shown and rest == b""
    assert not os.path.exists(f"/dev/shm/{segment}")
