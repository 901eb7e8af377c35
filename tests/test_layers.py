"""The two floors of _core/ call downward only (issue #10).

Each .c file of a floor is compiled on its own to an object with only that
floor's include paths, and `nm` says which symbols it defines and which it
leaves to others.  File A points at file B when A uses a symbol B defines.
The engine may use nothing of the binding and nothing of CPython; within
each floor the arrows must not form a cycle, so every file can be read
(and tested) knowing only the files below it.
"""

import os
import re
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "src", "shmtxn", "_core")
ENGINE = os.path.join(CORE, "engine")
BINDING = os.path.join(CORE, "binding")
INCLUDE = os.path.join(CORE, "include")

CC = shutil.which("gcc")
NM = shutil.which("nm")
pytestmark = pytest.mark.skipif(CC is None or NM is None,
                                reason="needs gcc and nm")


def sources(floor):
    """The floor's .c files, as paths relative to the floor."""
    return sorted(os.path.relpath(os.path.join(d, f), floor)
                  for d, _, files in os.walk(floor) for f in files
                  if f.endswith(".c"))


def symbols(obj):
    """(defined, undefined): the global symbols of the object file."""
    out = subprocess.run([NM, "-P", obj], capture_output=True, text=True,
                         check=True).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        name, kind = fields[0], fields[1]
        if kind in ("U", "w", "v"):
            undefined.add(name)
        elif kind.isupper():  # lower case: local to the file
            defined.add(name)
    return defined, undefined


def compile_floor(floor, include_dirs, out_dir):
    """{file: (defined, undefined)} for every .c file of the floor."""
    result = {}
    for name in sources(floor):
        obj = os.path.join(out_dir, name.replace(os.sep, "__") + ".o")
        cmd = [CC, "-std=gnu11", "-O0", "-c", "-w",
               *(f"-I{d}" for d in include_dirs),
               os.path.join(floor, name), "-o", obj]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}:\n{proc.stderr}"
        result[name] = symbols(obj)
    return result


def graph(objects):
    """{file: {file it uses a symbol of: [those symbols]}} in one floor."""
    owner = {}
    for name, (defined, _) in objects.items():
        for sym in defined:
            owner[sym] = name
    edges = {}
    for name, (_, undefined) in objects.items():
        edges[name] = {}
        for sym in sorted(undefined):
            to = owner.get(sym)
            if to is not None and to != name:
                edges[name].setdefault(to, []).append(sym)
    return edges


def find_cycle(edges):
    """One cycle of the graph as a list of files (first == last), or None."""
    state = {}  # absent: unvisited; 1: on the current path; 2: done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for to in sorted(edges.get(node, ())):
            if state.get(to) == 1:
                return path[path.index(to):] + [to]
            if to not in state:
                found = visit(to)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def describe(cycle, edges):
    """The cycle with the symbols each arrow stands for."""
    steps = [f"{a} -> {b} ({', '.join(edges[a][b][:3])})"
             for a, b in zip(cycle, cycle[1:])]
    return "call cycle: " + "; ".join(steps)


@pytest.fixture(scope="module")
def engine_objects(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine")
    return compile_floor(ENGINE, [ENGINE, INCLUDE], str(out))


@pytest.fixture(scope="module")
def binding_objects(tmp_path_factory):
    out = tmp_path_factory.mktemp("binding")
    python = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(python, "Python.h")):
        pytest.skip("no Python.h for this interpreter")
    return compile_floor(BINDING, [BINDING, ENGINE, INCLUDE, python],
                         str(out))


def test_find_cycle_sees_a_cycle_and_a_dag():
    # the checker itself: a cycle through three files, and none in a DAG
    ring = {"a.c": {"b.c": ["f"]}, "b.c": {"c.c": ["g"]},
            "c.c": {"a.c": ["h"]}, "d.c": {"a.c": ["i"]}}
    assert find_cycle(ring) == ["a.c", "b.c", "c.c", "a.c"]
    assert "b.c -> c.c (g)" in describe(find_cycle(ring), ring)
    assert find_cycle({"a.c": {"b.c": ["f"]}, "b.c": {}, "c.c": {
        "a.c": ["g"], "b.c": ["h"]}}) is None


def test_engine_uses_nothing_of_the_binding_or_python(engine_objects,
                                                      binding_objects):
    binding_defined = set()
    for defined, _ in binding_objects.values():
        binding_defined |= defined
    bad = {}
    for name, (_, undefined) in engine_objects.items():
        up = sorted(s for s in undefined if s in binding_defined
                    or s.startswith(("Py", "_Py")))
        if up:
            bad[name] = up
    assert not bad, f"engine files using binding or CPython symbols: {bad}"
    # the binding does use the engine: the check above had work to do
    engine_defined = set()
    for defined, _ in engine_objects.values():
        engine_defined |= defined
    used = set()
    for _, undefined in binding_objects.values():
        used |= undefined & engine_defined
    assert "stx_create" in used and "stx_txn_step" in used


def test_engine_files_call_each_other_without_cycles(engine_objects):
    edges = graph(engine_objects)
    assert sum(len(to) for to in edges.values()) > 0
    cycle = find_cycle(edges)
    assert cycle is None, describe(cycle, edges)


def test_binding_files_call_each_other_without_cycles(binding_objects):
    edges = graph(binding_objects)
    assert sum(len(to) for to in edges.values()) > 0
    cycle = find_cycle(edges)
    assert cycle is None, describe(cycle, edges)


def listed_engine_order():
    """internal.h's list of engine files, bottom first ('dict/' stands
    for every file under dict/)."""
    with open(os.path.join(ENGINE, "internal.h")) as f:
        text = f.read()
    return re.findall(r"^ \*   (\S+\.c|dict/) ", text, re.M)


def test_internal_h_lists_every_engine_file_in_call_order(engine_objects):
    order = listed_engine_order()
    rank = {name: i for i, name in enumerate(order)}

    def rank_of(name):
        return rank.get("dict/" if name.startswith("dict/") else name)

    on_disk = {("dict/" if n.startswith("dict/") else n)
               for n in sources(ENGINE)}
    assert set(order) == on_disk, (
        f"internal.h lists {sorted(set(order))}, engine/ holds "
        f"{sorted(on_disk)}")
    upward = [f"{a} -> {b}" for a, to in graph(engine_objects).items()
              for b in to if rank_of(b) > rank_of(a)]
    assert not upward, ("these calls go up internal.h's list; move the "
                        f"file or the function: {upward}")
