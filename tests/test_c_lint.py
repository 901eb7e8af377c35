"""The C engine keeps the shape DESIGN.md §5 asks for: it never includes
Python.h, and every engine function and struct carries a doc comment."""

import os
import re

import pytest

ENGINE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "src", "shmtxn", "_core", "engine")
# every engine file, as a path relative to engine/ (dict/ included)
ENGINE = sorted(os.path.relpath(os.path.join(d, f), ENGINE_DIR)
                for d, _, files in os.walk(ENGINE_DIR) for f in files
                if f.endswith((".c", ".h")))
# a function definition: return type on its own line, then name(args)
DEFINITION = re.compile(r"^([a-z_][a-z0-9_]*)\(", re.M)
STRUCT = re.compile(r"^typedef struct (\w+) \{", re.M)
DECLARATION = re.compile(r"^[a-z].*\b(stx_\w+)\(", re.M)
# the public C API, include/shmtxn.h, which api.c implements
PUBLIC_HEADER = os.path.join(os.path.dirname(ENGINE_DIR), "include",
                             "shmtxn.h")
PUBLIC_DECLARATION = re.compile(r"^SHMTXN_API .*\b(shmtxn_\w+)\(", re.M)


def source(name):
    with open(os.path.join(ENGINE_DIR, name)) as f:
        return f.read()


def preceded_by_comment(text, pos, lines_up=2):
    """True if a comment ends on one of the lines just above `pos`."""
    before = text[:pos].rstrip("\n").splitlines()[-lines_up:]
    return any(line.rstrip().endswith("*/") for line in before)


@pytest.mark.parametrize("name", ENGINE)
def test_engine_does_not_include_python(name):
    assert not re.search(r"#\s*include\s*[<\"]Python\.h", source(name))


@pytest.mark.parametrize("name", [n for n in ENGINE if n.endswith(".c")])
def test_every_engine_function_has_a_doc_comment(name):
    text = source(name)
    missing = []
    for m in DEFINITION.finditer(text):
        func = m.group(1)
        if func.startswith(("stx_", "shmtxn_")):
            continue  # documented where a header declares it
        # the comment stands above the return-type line
        if not preceded_by_comment(text, text.rfind("\n", 0, m.start())):
            missing.append(func)
    assert not missing, f"{name}: no doc comment above {missing}"


HEADERS = [n for n in ENGINE if n.endswith(".h")]


def test_every_public_engine_function_is_documented_in_a_header():
    declared = set()
    for name in HEADERS:
        header = source(name)
        undocumented = [m.group(1) for m in DECLARATION.finditer(header)
                        if not preceded_by_comment(header, m.start())]
        assert not undocumented, f"{name}: {undocumented}"
        declared |= {m.group(1) for m in DECLARATION.finditer(header)}
    defined = set()
    for name in ENGINE:
        if name.endswith(".c"):
            defined |= {m.group(1) for m in DEFINITION.finditer(source(name))
                        if m.group(1).startswith("stx_")}
    assert defined <= declared, f"in no header: {defined - declared}"


@pytest.mark.parametrize("name", HEADERS)
def test_every_engine_struct_has_a_doc_comment(name):
    text = source(name)
    missing = [m.group(1) for m in STRUCT.finditer(text)
               if not preceded_by_comment(text, m.start())]
    assert not missing


def test_every_public_c_function_is_documented_in_shmtxn_h():
    with open(PUBLIC_HEADER) as f:
        header = f.read()
    undocumented = [m.group(1) for m in PUBLIC_DECLARATION.finditer(header)
                    if not preceded_by_comment(header, m.start())]
    assert not undocumented
    declared = {m.group(1) for m in PUBLIC_DECLARATION.finditer(header)}
    defined = set()
    for name in ENGINE:
        if name.endswith(".c"):
            defined |= {m.group(1) for m in DEFINITION.finditer(source(name))
                        if m.group(1).startswith("shmtxn_")}
    assert declared, "shmtxn.h declares no function"
    assert defined == declared, (f"not in shmtxn.h: {defined - declared}; "
                                 f"not defined: {declared - defined}")
    structs = [m.group(1) for m in STRUCT.finditer(header)
               if not preceded_by_comment(header, m.start())]
    assert not structs, f"no doc comment above {structs}"
