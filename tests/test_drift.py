"""Drift guards: what the documents say about the segment's bytes and
protocols against what the code does.

- docs/format.md's offset tables against the structs of layout.h, as the
  compiler lays them out (tests/engine/layout_offsets.c prints them);
- the commit order layout.h states against the order of the stores in
  lock.c's commit path.
"""

import os
import re
import subprocess

import pytest

from test_engine_c import ENGINE, HERE, ROOT
from test_engine_units import build_program, program_env

FORMAT_MD = os.path.join(ROOT, "docs", "format.md")
LAYOUT_H = os.path.join(ENGINE, "layout.h")
LOCK_C = os.path.join(ENGINE, "lock.c")
HELPER = os.path.join(HERE, "layout_offsets.c")

# format.md section (heading text) -> the struct its tables describe
SECTIONS = {
    "Header (first page)": "stx_header",
    "Reader slots": "stx_reader_slot",
    "Undo log": "stx_undo_record",
    "Dict header (offset 0 of the data region)": "stx_dict_header",
    "Heap blocks": "stx_record",
}
# C fields format.md may leave out or show as "—"/"reserved"
FILLER = re.compile(r"^(reserved\d*|pad)$")


def read(path):
    with open(path) as f:
        return f.read()


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """{struct: {field: (offset, size)}} from the compiler, with
    "sizeof" and the constants ("value") as fields."""
    exe = build_program(tmp_path_factory.mktemp("drift"), HELPER)
    out = subprocess.run([exe], capture_output=True, text=True,
                         env=program_env(), check=True).stdout
    structs = {}
    for line in out.splitlines():
        struct, field, *numbers = line.split()
        numbers = [int(n) for n in numbers]
        structs.setdefault(struct, {})[field] = (
            numbers[0], numbers[1] if len(numbers) > 1 else None)
    return structs


def doc_tables():
    """{section heading: [rows as {column: text}]} of format.md."""
    tables, section, header = {}, None, None
    for line in read(FORMAT_MD).splitlines():
        if line.startswith("#"):
            section, header = line.lstrip("#").strip(), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
        elif not all(set(c) <= set(":-") for c in cells):
            tables.setdefault(section, []).append(dict(zip(header, cells)))
    return tables


def size_of(text):
    """A size cell as a number ("176 × 8" too), or None if symbolic."""
    m = re.fullmatch(r"(\d+)(?:\s*×\s*(\d+))?", text)
    if m is None:
        return None
    return int(m.group(1)) * int(m.group(2) or 1)


def field_of(text):
    """The field a row documents: its first `name`, without [n]."""
    m = re.match(r"`(\w+)(?:\[\d+\])?`", text)
    return m.group(1) if m else None


def layout_h_fields():
    """{struct: [field names declared in its body]} parsed from layout.h."""
    out = {}
    text = re.sub(r"/\*.*?\*/", "", read(LAYOUT_H), flags=re.S)
    for m in re.finditer(r"typedef struct (\w+) \{(.*?)\} \1;", text, re.S):
        names = re.findall(r"(\w+)(?:\[[^\]]*\])?\s*;", m.group(2))
        out[m.group(1)] = names
    return out


def test_the_helper_prints_every_field_of_layout_h(layout):
    for struct, names in layout_h_fields().items():
        if struct == "stx_block":
            continue  # printed inside stx_record, as format.md shows it
        assert struct in layout, f"layout_offsets.c misses struct {struct}"
        # a record's block header is printed as its two fields
        names = [f for n in names
                 for f in (["size", "next_free"] if n == "block" else [n])]
        missing = set(names) - set(layout[struct])
        assert not missing, f"layout_offsets.c misses {struct}.{missing}"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_format_md_offsets_match_layout_h(layout, section):
    struct = SECTIONS[section]
    fields = layout[struct]
    rows = doc_tables().get(section)
    assert rows, f"docs/format.md has no table under '{section}'"
    documented = set()
    at = 0  # for tables without an offset column (the undo record)
    for row in rows:
        name = field_of(row.get("field", ""))
        size = size_of(row.get("size", ""))
        offset = int(row["offset"]) if row.get("offset", "").isdigit() \
            else (at if "offset" not in row else None)
        if size is None or offset is None:
            if "offset" not in row:
                break  # the undo record's variable part: fixed part done
            if offset is not None and name is None:
                # the bytes after a record header: key bytes at sizeof
                assert offset == fields["sizeof"][0], (
                    f"docs/format.md ({section}): the bytes after the "
                    f"header start at {offset} there, at "
                    f"{fields['sizeof'][0]} in layout.h")
            continue
        at = offset + size
        if name is None or name not in fields:
            # "—" or "reserved": layout.h must have filler there
            filler = [f for f, (o, s) in fields.items()
                      if o == offset and FILLER.match(f)]
            assert filler, (f"docs/format.md ({section}): bytes {offset} "
                            f"+{size} ({row.get('field')}) are not a "
                            f"reserved field in layout.h")
            assert fields[filler[0]][1] == size, (
                f"docs/format.md ({section}): reserved bytes at {offset} "
                f"are {size} there, {fields[filler[0]][1]} in layout.h")
            continue
        documented.add(name)
        assert fields[name] == (offset, size), (
            f"docs/format.md ({section}): `{name}` is at {offset} (+{size}) "
            f"there but at {fields[name][0]} (+{fields[name][1]}) in "
            f"layout.h")
    if "offset" not in rows[0]:
        assert at == fields["sizeof"][0], (
            f"docs/format.md ({section}): the fixed part is {at} bytes "
            f"there, {fields['sizeof'][0]} in layout.h")
    missing = {f for f in fields if f != "sizeof" and not FILLER.match(f)}
    missing -= documented
    assert not missing, (f"docs/format.md ({section}) does not document "
                         f"{sorted(missing)} of {struct}")


# (pattern in format.md, (struct, field) in the helper's output, adjust)
PROSE = [
    (r"# Segment format \(version (\d+)\)",
     ("STX_FORMAT_VERSION", "value"), 0),
    (r"FNV-1a 64 of bytes 8 … (\d+)", ("STX_CHECKSUMMED_BYTES", "value"), 1),
    (r"`nslots` records of (\d+) bytes", ("stx_reader_slot", "sizeof"), 0),
    (r"dict header: (\d+) bytes", ("stx_dict_header", "sizeof"), 0),
    (r"`heap_off` = (\d+)", ("stx_dict_header", "sizeof"), 0),
    (r"Bytes 0–(\d+) are the \*state\*", ("STX_DICT_STATE_BYTES", "value"),
     1),
    (r"(\d+) × 8 \| `free_heads`", ("STX_DICT_CLASSES", "value"), 0),
    (r"An entry is (\d+) bytes", ("stx_dict_entry", "sizeof"), 0),
]


@pytest.mark.parametrize("pattern,where,adjust", PROSE)
def test_format_md_numbers_in_prose(layout, pattern, where, adjust):
    m = re.search(pattern, read(FORMAT_MD))
    assert m, f"docs/format.md no longer says /{pattern}/"
    assert int(m.group(1)) + adjust == layout[where[0]][where[1]][0], (
        f"docs/format.md says {m.group(0)!r}; layout.h has "
        f"{where[0]} {where[1]} = {layout[where[0]][where[1]][0]}")


# ---------------------------------------------------------------- commit


def stated_commit_order():
    """The steps layout.h's write protocol states for ending a txn that
    wrote ("... in this order: ... unlock."): the fields it names and
    "unlock"."""
    text = re.sub(r"\n\s*\*\s?", " ", read(LAYOUT_H))
    m = re.search(r"Ending a txn that wrote.*?in this order:(.*?\bunlock\.)",
                  text)
    assert m, ("layout.h no longer states the commit order ('Ending a txn "
               "that wrote ... in this order: ... unlock.')")
    return [a or "unlock" for a, _ in
            re.findall(r"`(\w+)`|\b(unlock)", m.group(1))]


def function_body(text, name):
    """The body of C function `name` (PEP 7: name at a line start)."""
    m = re.search(rf"^{name}\([^)]*\)\s*\{{", text, re.M)
    assert m, f"lock.c has no function {name}"
    depth, i = 1, m.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[m.end():i - 1]


def without_block(body, opener):
    """`body` without the braced block that follows `opener`."""
    at = body.find(opener)
    if at < 0:
        return body
    start = body.index("{", at)
    depth, i = 1, start + 1
    while depth:
        depth += {"{": 1, "}": -1}.get(body[i], 0)
        i += 1
    return body[:at] + body[i:]


def stores(body):
    """The shared-header fields stored to, and unlocks, in order (a call
    of undo.c's stx_undo_shrink stores `undo_reserved`)."""
    return [f or ("undo_reserved" if shrink else "unlock")
            for f, shrink, _ in re.findall(
                r"atomic_(?:store|fetch_\w+)(?:_explicit)?\(\s*&hdr->(\w+)"
                r"|(stx_undo_shrink)\(|(pthread_mutex_unlock)\(", body)]


def code_commit_order():
    """The order lock.c's commit path stores: finish_txn calls
    finish_writes (its rollback branch left out) and then
    release_writer."""
    text = read(LOCK_C)
    finish = function_body(text, "finish_txn")
    calls = [m.group(1) for m in
             re.finditer(r"\b(finish_writes|release_writer)\(", finish)]
    assert calls == ["finish_writes", "release_writer"], calls
    writes = without_block(function_body(text, "finish_writes"),
                           "if (!commit)")
    return stores(writes) + stores(function_body(text, "release_writer"))


def test_commit_order_stated_in_layout_h_is_lock_c_s():
    stated, code = stated_commit_order(), code_commit_order()
    assert len(stated) >= 3 and "unlock" in code, (stated, code)
    positions = [code.index(s) if s in code else -1 for s in stated]
    assert -1 not in positions and positions == sorted(positions), (
        f"layout.h states the commit order {stated}; lock.c's commit path "
        f"stores {code}")
