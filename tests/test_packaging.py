"""Packaging: the sdist carries everything the tests, docs and examples
need, its metadata is valid and says what the code does, and a machine
that cannot build the extension gets an error saying what to install.

The build checks run setup.py (through pip, or directly) in a copy of the
project, so the checkout gets no build/ directory of theirs."""

import email
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINDING = os.path.join(ROOT, "src", "shmtxn", "_core", "binding")
# tracked files an sdist leaves out: CI scripts and editor settings
NOT_SHIPPED = re.compile(r"^(\.ci/|\.gitignore$|\.clang-format$)")
NO_COMPILER = "shmtxn builds a C extension and found no C compiler"


def setuptools_77():
    """Skip unless setuptools>=77 (the test extra's) runs the builds here:
    without build isolation, an older one cannot read pyproject.toml."""
    try:
        import setuptools
    except ImportError:
        pytest.skip("setuptools is not installed")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 here (the "
                    "test extra installs a newer one)")


def project_copy(tmp_path):
    """What setup.py needs to build, copied to tmp_path/project."""
    dest = tmp_path / "project"
    dest.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE",
                 "MANIFEST.in"):
        shutil.copy(os.path.join(ROOT, name), dest)
    shutil.copytree(os.path.join(ROOT, "src"), dest / "src",
                    ignore=shutil.ignore_patterns(
                        "__pycache__", "*.so", "*.egg-info"))
    return dest


def empty_path(tmp_path):
    """A PATH with nothing on it: no cc, gcc, clang or ar."""
    bare = tmp_path / "bare-bin"
    bare.mkdir(exist_ok=True)
    return str(bare)


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The sdist, built the way a release is (python -m build --sdist) but
    without build isolation, on a PATH with no compiler: making an sdist
    needs none."""
    pytest.importorskip("build", reason="`build` is not installed (it is "
                        "in the test extra)")
    setuptools_77()
    tmp = tmp_path_factory.mktemp("sdist")
    out = tmp / "dist"
    env = dict(os.environ, PATH=empty_path(tmp), CC="/nonexistent/cc")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation",
         "--outdir", str(out), ROOT],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (path,) = out.glob("shmtxn-*.tar.gz")
    return path


def sdist_members(path):
    """The sdist's file names, relative to its top directory."""
    with tarfile.open(path) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers()
                if m.isfile()}


def sdist_metadata(path):
    with tarfile.open(path) as tar:
        (info,) = [m for m in tar.getmembers()
                   if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")]
        return tar.extractfile(info).read().decode()


def git_files():
    if not os.path.exists(os.path.join(ROOT, ".git")) \
            or shutil.which("git") is None:
        pytest.skip("not a git checkout (an unpacked sdist, say): no list "
                    "of tracked files to compare the sdist with")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return {f for f in out.split("\0") if f}


def test_the_sdist_carries_every_tracked_file_but_ci_scripts(sdist):
    shipped = sdist_members(sdist)
    missing = sorted(f for f in git_files() - shipped
                     if not NOT_SHIPPED.match(f))
    assert missing == [], "tracked files the sdist leaves out (MANIFEST.in)"
    for needed in ("LICENSE", "tests/conftest.py", "tests/helpers.py",
                   "tests/engine/unit.h", "fuzz/corpus/dict",
                   "docs/format.md", "examples/c/share.c",
                   "src/shmtxn/_core/include/shmtxn.h"):
        assert needed in shipped


def test_the_sdist_carries_no_build_output(sdist):
    junk = sorted(f for f in sdist_members(sdist)
                  if re.search(r"(^|/)(__pycache__|build|\.venv[^/]*)/"
                               r"|\.(so|o|a|pyc)$", f))
    assert junk == []


def test_the_metadata_is_valid_and_complete(sdist):
    from packaging.metadata import Metadata

    text = sdist_metadata(sdist)
    meta = Metadata.from_email(text, validate=True)
    assert str(meta.license_expression) == "MIT"
    assert meta.license_files == ["LICENSE"]
    assert email.message_from_string(text)["License"] is None  # deprecated
    assert set(meta.project_urls) == {"Homepage", "Documentation", "Source",
                                      "Issues", "Changelog"}
    assert str(meta.requires_python) == ">=3.11"
    for minor in (11, 12, 13, 14):
        assert f"Programming Language :: Python :: 3.{minor}" \
            in meta.classifiers
    assert "Typing :: Typed" in meta.classifiers


def test_every_classifier_is_on_the_trove_list():
    trove = pytest.importorskip("trove_classifiers",
                                reason="trove-classifiers is not installed "
                                "(it is in the test extra)")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        classifiers = tomllib.load(f)["project"]["classifiers"]
    assert [c for c in classifiers if c not in trove.classifiers] == []
    assert [c for c in classifiers
            if c in trove.deprecated_classifiers] == []


def test_the_free_threading_classifier_matches_the_extension():
    """Level 1 (Unstable) means importing shmtxn turns the GIL back on;
    levels 2 and up mean the extension declares Py_mod_gil."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        classifiers = tomllib.load(f)["project"]["classifiers"]
    (level,) = [int(c.rsplit(":: ", 1)[1][0]) for c in classifiers
                if c.startswith("Programming Language :: Python :: Free "
                                "Threading ::")]
    declared = any("Py_MOD_GIL_NOT_USED" in open(os.path.join(BINDING, f))
                   .read() for f in os.listdir(BINDING))
    assert (level >= 2) == declared, (
        "pyproject.toml's Free Threading level and the binding's Py_mod_gil "
        "slot disagree: a GIL-free extension is level 3 (Stable)")


def test_the_suite_runs_against_the_installed_package_when_asked():
    """.ci/wheel.sh and cibuildwheel set SHMTXN_TEST_INSTALLED=1: then
    `shmtxn` must be the installed wheel, not a source tree's copy."""
    if os.environ.get("SHMTXN_TEST_INSTALLED") != "1":
        pytest.skip("SHMTXN_TEST_INSTALLED is not 1: this run tests "
                    "whichever shmtxn it imports")
    import shmtxn
    from shmtxn import _core

    for module in (shmtxn, _core):
        path = os.path.realpath(module.__file__)
        assert path.startswith(os.path.realpath(
            sysconfig.get_paths()["platlib"])), path
        assert not path.startswith(os.path.realpath(ROOT) + os.sep), path


def build_ext(project, env, prelude=""):
    """Run `setup.py build_ext` in the project copy after `prelude` (which
    may fake what the build inspects); the finished process."""
    script = "\n".join([
        "import sys, sysconfig",
        "import setuptools",
        "import setuptools.command.build_clib, setuptools.command.build_ext",
        prelude,
        'sys.argv = ["setup.py", "build_ext"]',
        'exec(compile(open("setup.py").read(), "setup.py", "exec"),',
        '     {"__name__": "__main__", "__file__": "setup.py"})'])
    return subprocess.run([sys.executable, "-c", script], cwd=project,
                          env=env, capture_output=True, text=True,
                          timeout=120)


def toolchain_or_skip():
    """Skip unless the compiler setup.py would run and ar are here."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    if shutil.which(cc.split()[0]) is None or shutil.which("ar") is None:
        pytest.skip("no C compiler and ar on this machine")


def test_pip_without_a_compiler_says_what_to_install(tmp_path):
    """A real `pip wheel` of the project with CC pointing nowhere and no
    compiler on PATH stops on shmtxn's message, not setuptools'."""
    pytest.importorskip("pip", reason="this environment has no pip")
    setuptools_77()
    project = project_copy(tmp_path)
    env = dict(os.environ, PATH=empty_path(tmp_path), CC="/nonexistent/cc",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-build-isolation",
         "--no-deps", "--no-index", "-w", str(tmp_path / "out"),
         str(project)],
        capture_output=True, text=True, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert NO_COMPILER in out, out
    assert "(looked for $CC, cc, gcc; CC='/nonexistent/cc')" in out
    assert "apt-get install gcc python3-dev" in out
    assert "pip install --only-binary=shmtxn shmtxn" in out
    assert "No such file or directory" not in out
    assert not (tmp_path / "out").exists() or \
        not list((tmp_path / "out").iterdir())


def test_a_compiler_other_than_the_configured_one_is_named(tmp_path):
    configured = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if configured == "clang":
        pytest.skip("this Python was built with clang")
    setuptools_77()
    project = project_copy(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "clang").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "clang").chmod(0o755)
    env = dict(os.environ, PATH=str(bin_dir))
    env.pop("CC", None)
    proc = build_ext(project, env)
    assert proc.returncode != 0
    assert (f"the C compiler Python was built with, {configured!r}, is not "
            "found, but 'clang' is: rerun with CC=clang") in proc.stderr


def test_a_missing_archiver_is_named(tmp_path):
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler on this machine")
    setuptools_77()
    env = dict(os.environ, PATH=empty_path(tmp_path), CC=cc)
    env.pop("AR", None)
    proc = build_ext(project_copy(tmp_path), env)
    assert proc.returncode != 0
    assert "found no archiver" in proc.stderr
    assert "apt-get install binutils" in proc.stderr


def test_missing_python_headers_are_named(tmp_path):
    setuptools_77()
    toolchain_or_skip()
    no_headers = tmp_path / "include"
    no_headers.mkdir()
    prelude = (f"real = sysconfig.get_path\n"
               f"sysconfig.get_path = lambda name, *a, **k: ("
               f"{str(no_headers)!r} if name == 'include' "
               f"else real(name, *a, **k))")
    proc = build_ext(project_copy(tmp_path), dict(os.environ), prelude)
    assert proc.returncode != 0
    assert f"Python.h is not in {no_headers}" in proc.stderr
    assert "apt-get install python3-dev" in proc.stderr


def test_another_platform_is_told_shmtxn_needs_linux(tmp_path):
    setuptools_77()
    proc = build_ext(project_copy(tmp_path), dict(os.environ),
                     'sys.platform = "darwin"')
    assert proc.returncode != 0
    assert ("shmtxn needs Linux (futex, robust process-shared mutexes, "
            "/dev/shm); this is 'darwin'") in proc.stderr


def test_shmtxn_werror_turns_warnings_into_errors(tmp_path):
    """SHMTXN_WERROR=1 adds -Werror to every compile: a stand-in compiler
    records its arguments (and fails, ending the build early)."""
    setuptools_77()
    toolchain_or_skip()
    project = project_copy(tmp_path)
    log = tmp_path / "cc-args"
    fake = tmp_path / "fake-cc"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexit 1\n')
    fake.chmod(0o755)
    for werror in ("1", "0"):
        env = dict(os.environ, CC=str(fake), SHMTXN_WERROR=werror)
        log.unlink(missing_ok=True)
        proc = build_ext(project, env)
        assert proc.returncode != 0
        assert ("-Werror" in log.read_text().split()) == (werror == "1")
