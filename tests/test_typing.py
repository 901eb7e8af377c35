"""Types: `mypy --strict` on the installed package and on tests/typing's
snippets (written as users write code), the expected errors of
tests/typing/fail, and stubtest on the whole package -- when mypy is
installed (the `typing` and `test` extras); those tests skip, saying so,
without it.  The snippets also run, so what they claim holds at run time.

mypy keeps its cache in the temp directory (per user, interpreter and
installed copy):
the first run takes 10-30 s, later ones a few seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

import shmtxn
from shmtxn import SharedDict, _core
from shmtxn.dict import DictTxn

SNIPPETS = Path(__file__).parent / "typing"
PASSING = sorted(SNIPPETS.glob("*.py"))
FAILING = sorted((SNIPPETS / "fail").glob("*.py"))
PACKAGE = Path(shmtxn.__file__).parent  # the installed one
MARK = re.compile(r"#\s*E:\s*\[([a-z-]+)\]")
ERROR = re.compile(r"^(?P<path>.+?):(?P<line>\d+): error: (?P<message>.*?)"
                   r"(?:  \[(?P<code>[a-z-]+)\])?$")
# one cache per user, interpreter, installed package and snippet folder:
# runs from two clones or venvs at once must not share one (mypy then
# took one's cached snippets for the other's and reported nothing)
_WHERE = hashlib.sha256(f"{PACKAGE.resolve()}\0{SNIPPETS.resolve()}"
                        .encode()).hexdigest()[:12]
CACHE = Path(tempfile.gettempdir()) / (
    f"shmtxn-mypy-cache-{os.getuid()}-"
    f"{sys.implementation.cache_tag}{sysconfig.get_config_var('ABIFLAGS')}"
    f"-{_WHERE}")

needs_mypy = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (pip install '.[typing]'): types unchecked")


def run(*args: str | Path, cwd: Path,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m ARGS` in `cwd` (away from the repository, so no config
    file there applies and `shmtxn` is the installed package)."""
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory,
                ) -> dict[Path, list[tuple[int, str | None, str]]]:
    """One `mypy --strict` run over the package and every snippet (as
    modules: mypy takes packages or files, not both): the errors of each
    file, as (line, code, message)."""
    snippets = [arg for path in PASSING + FAILING for arg in ("-m", path.stem)]
    env = dict(os.environ,
               MYPYPATH=os.pathsep.join(map(str, (SNIPPETS, SNIPPETS / "fail"))))
    out = run("mypy", "--strict", "--cache-dir", CACHE, "--no-error-summary",
              "--no-pretty", "--show-error-codes", "-p", "shmtxn",
              *snippets, cwd=tmp_path_factory.mktemp("mypy"), env=env)
    if out.returncode not in (0, 1) or out.stderr.strip():
        pytest.fail(f"mypy did not run: {out.stderr or out.stdout}")
    errors: dict[Path, list[tuple[int, str | None, str]]] = defaultdict(list)
    for line in out.stdout.splitlines():
        m = ERROR.match(line)
        if m:
            errors[Path(m["path"]).resolve()].append(
                (int(m["line"]), m["code"], m["message"]))
    return errors


def shown(errors: list[tuple[int, str | None, str]]) -> str:
    return "\n".join(f"  line {n}: {msg} [{code}]" for n, code, msg in errors)


@needs_mypy
def test_package_is_strict_clean(mypy_errors):
    found = {path: errs for path, errs in mypy_errors.items()
             if path.is_relative_to(PACKAGE.resolve())}
    assert not found, "mypy --strict on shmtxn:\n" + "\n".join(
        f"{path.name}:\n{shown(errs)}" for path, errs in found.items())


@needs_mypy
@pytest.mark.parametrize("snippet", PASSING, ids=lambda p: p.name)
def test_snippet_is_strict_clean(mypy_errors, snippet):
    errors = mypy_errors.get(snippet.resolve(), [])
    assert not errors, f"{snippet.name}:\n{shown(errors)}"


@needs_mypy
@pytest.mark.parametrize("snippet", FAILING, ids=lambda p: p.name)
def test_misuse_is_reported(mypy_errors, snippet):
    """Each line marked `# E: [code]` gets an error of that code, and no
    other line gets one: the stubs still reject what they should."""
    expected = {(n, m[1]) for n, text in enumerate(
        snippet.read_text().splitlines(), start=1)
        if (m := MARK.search(text))}
    assert expected, f"{snippet.name} marks no expected error"
    errors = mypy_errors.get(snippet.resolve(), [])
    got = {(n, code) for n, code, _ in errors}
    assert got == expected, (
        f"{snippet.name}: missing {sorted(expected - got)}, unexpected "
        f"{sorted(got - expected)}; mypy said:\n{shown(errors)}")


@needs_mypy
def test_stubtest(tmp_path):
    """The stubs and annotations match the runtime: signatures, finality,
    what exists (the C extension's _core.pyi included)."""
    out = run("mypy.stubtest", "shmtxn", "--concise", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("snippet", PASSING, ids=lambda p: p.name)
def test_snippet_runs(snippet, tmp_path):
    out = subprocess.run([sys.executable, snippet], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_annotations_cost_nothing_at_import():
    """`import shmtxn` does not import typing (a third of its time): the
    annotations need it only under TYPE_CHECKING."""
    code = ("import sys; before = 'typing' in sys.modules; import shmtxn; "
            "print(before, 'typing' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True)
    before, after = out.stdout.split()
    if before == "True":
        pytest.skip("this interpreter imports typing at start-up")
    assert after == "False"


def test_generic_bases_change_no_method():
    """SharedDict and DictTxn list their C base first: the C per-key
    methods come before MutableMapping's generic ones, and subscripting
    (for annotations) gives aliases of the same classes."""
    for cls, base in ((SharedDict, _core.Dict), (DictTxn, _core.DictTxn)):
        for name in ("__getitem__", "__setitem__", "__delitem__",
                     "__contains__", "__iter__", "__len__", "get",
                     "get_many", "clear", "_snapshot"):
            assert getattr(cls, name) is getattr(base, name), (cls, name)
        assert cls.__abstractmethods__ == frozenset()
        alias = cls[str, int]
        assert alias.__origin__ is cls and alias.__args__ == (str, int)
    assert _core.Dict[str, int].__origin__ is _core.Dict
    with SharedDict[str, int](create=True) as d:
        assert type(d) is SharedDict
        d["a"] = 1
        with d.txn() as t:
            assert type(t) is DictTxn and t["a"] == 1
