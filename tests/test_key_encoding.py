"""One key encoding for every language: keys Python stores in a SharedDict
and the same keys built from C values with the engine's builder (through
the public C API) are the same bytes, C finds what Python stored, and C
decodes every stored key back to the value Python lists.

tests/capi/api_check.c (mode `keys`) reads each key as tokens on stdin --
s:HEX b:HEX i:INT I:HEX f:HEX T F n ( ) -- builds it, prints its bytes
and kind, looks it up in the dict, then lists the dict's entries with
their bytes, kind and decoded tokens.
"""

import math
import os
import struct
import subprocess
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capi.cbuild import build, run_env
from shmtxn import SharedDict

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "capi", "api_check.c")
NOT_FOUND = -30900  # SHMTXN_NOTFOUND


@pytest.fixture(scope="module")
def api_check(tmp_path_factory):
    return build(SOURCE, tmp_path_factory)


class Big(int):
    """An int to hand to C as two's complement bytes of a chosen length
    (the builder must store it canonically whatever the length)."""

    def __new__(cls, value, nbytes):
        self = super().__new__(cls, value)
        self.nbytes = nbytes
        return self


def tokens(key):
    """`key` as the tokens api_check.c builds it from."""
    if isinstance(key, tuple):
        return ["("] + [t for k in key for t in tokens(k)] + [")"]
    if isinstance(key, bool):
        return ["T" if key else "F"]
    if isinstance(key, Big):
        return ["I:" + int(key).to_bytes(key.nbytes, "little",
                                         signed=True).hex()]
    if isinstance(key, int):
        if -2**63 <= key < 2**63:
            return [f"i:{key}"]
        raw = key.to_bytes((key.bit_length() + 8) // 8, "little", signed=True)
        return ["I:" + raw.hex()]
    if isinstance(key, float):
        return ["f:" + struct.pack("<d", key).hex()]
    if isinstance(key, str):
        return ["s:" + key.encode("utf-8", "surrogatepass").hex()]
    if isinstance(key, bytes):
        return ["b:" + key.hex()]
    assert key is None
    return ["n"]


def parse(toks):
    """The value the decoded tokens `toks` (a list, consumed) describe."""
    tok = toks.pop(0)
    if tok == "(":
        items = []
        while toks[0] != ")":
            items.append(parse(toks))
        toks.pop(0)
        return tuple(items)
    kind, _, body = tok.partition(":")
    if kind in ("T", "F"):
        return kind == "T"
    if kind == "n":
        return None
    if kind == "i":
        return int(body)
    raw = bytes.fromhex(body)
    if kind == "I":
        return int.from_bytes(raw, "little", signed=True)
    if kind == "f":
        return struct.unpack("<d", raw)[0]
    return raw.decode("utf-8", "surrogatepass") if kind == "s" else raw


def same(a, b):
    """Equal and of the same types, all the way down (NaN equals NaN,
    -0.0 differs from 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or \
            (a == b and math.copysign(1, a) == math.copysign(1, b))
    return a == b


def run_c(api_check, dict_name, keys):
    """Feed `keys` to the C side: ({i: (hex, kind)} of the built keys,
    {i: value found}, [(value, hex, kind, decoded)] of the entries)."""
    stdin = "".join(" ".join(tokens(k)) + "\n" for k in keys)
    proc = subprocess.run([api_check, "keys", dict_name], input=stdin,
                          capture_output=True, text=True, env=run_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built, found, entries = {}, {}, []
    for line in proc.stdout.splitlines():
        word = line.split()
        if word[0] == "key":
            assert word[2] != "error", line
            built[int(word[1])] = (word[2], int(word[3]))
        elif word[0] == "get":
            rc, value = int(word[2]), int(word[3])
            found[int(word[1])] = value if rc == 0 else rc
        elif word[0] == "entry":
            entries.append((int(word[1]), word[2], int(word[3]),
                            parse(word[4:])))
    return built, found, entries


def check_keys(api_check, keys):
    """Python stores keys[i] = i; C must agree on every byte."""
    name = f"shmtxn_t_{os.getpid()}_k{uuid.uuid4().hex[:10]}"
    with SharedDict(name, create=True, size=8 << 20) as d:
        for i, key in enumerate(keys):
            d[key] = i
        stored = list(d.keys())
        built, found, entries = run_c(api_check, name, keys)
    by_value = {value: (hexed, kind) for value, hexed, kind, _ in entries}
    assert len(entries) == len(stored)
    first = {}  # bytes -> the kind of the first key with them, which the
    for i in range(len(keys)):  # entry keeps (as a dict keeps its key)
        first.setdefault(built[i][0], built[i][1])
    for i, key in enumerate(keys):
        j = found[i]  # the value stored last under a key equal to keys[i]
        assert j != NOT_FOUND, f"C cannot find {key!r} ({built[i]})"
        assert by_value[j][0] == built[i][0], f"{key!r}: bytes differ"
        assert by_value[j][1] == first[built[i][0]], f"{key!r}: kind differs"
    for (_, _, _, decoded), key in zip(entries, stored):
        assert same(decoded, key), f"C decoded {decoded!r}, Python {key!r}"


EDGE_KEYS = [
    "", "key", "é€😀", "\ud800", "a\udfffb", b"", b"\x00\xff",
    0, 1, -1, 2**63 - 1, -2**63, 2**63, -2**63 - 1, 2**64, -2**64,
    2**71, -2**71, -2**71 - 1, 2**71 - 1, 2**200, -2**200 + 12345,
    Big(5, 12), Big(-1, 9), Big(2**63, 30), Big(-2**63, 8), Big(0, 1),
    Big(-2**71, 9), Big(2**100, 13),
    0.5, -2.5, 1e-300, math.inf, -math.inf, math.nan,
    struct.unpack("<d", bytes.fromhex("0100000000f8ff7f"))[0],  # NaN payload
    struct.unpack("<d", bytes.fromhex("000000000000f8ff"))[0],  # -NaN
    -0.0, 0.0, 1.0, 2.0**52 + 1, 9.2e18, 2.0**63, -2.0**63, 2.0**64,
    -2.0**70, 1e300, -1.7976931348623157e308,
    True, False, None,
    (), (1,), (True, 1.0, -0.0), ((), ((),)), ("a", (b"b", (None, 2**80))),
    (math.nan, 9.2e18), tuple(range(40)),
]


def nested(depth):
    key = 1
    for _ in range(depth):
        key = (key,)
    return key


def test_edge_keys_encode_the_same_in_python_and_c(api_check):
    check_keys(api_check, EDGE_KEYS + [nested(32)])


def test_a_float_equal_to_an_int_is_that_int(api_check):
    # 9.2e18 is an integer below 2**63: the int64 encoding, like the int
    name = f"shmtxn_t_{os.getpid()}_k{uuid.uuid4().hex[:10]}"
    with SharedDict(name, create=True, size=1 << 20) as d:
        d[9200000000000000000] = "int"
        assert d[9.2e18] == "int"
        d[2**70] = "big"
        assert d[2.0**70] == "big"
        built, _, _ = run_c(api_check, name, [9.2e18, 2.0**70])
    assert built[0][0] == "69" + (9200000000000000000).to_bytes(8, "little").hex()
    assert built[0][1] == 2  # kind: an integral float
    assert built[1][0] == "49" + (2**70).to_bytes(9, "little").hex()


scalars = (st.text() | st.text(st.characters(categories=["Cs"]), max_size=3)
           | st.binary() | st.integers()
           | st.integers(min_value=-2**130, max_value=2**130)
           | st.builds(Big, st.integers(-2**80, 2**80), st.integers(11, 20))
           | st.floats() | st.sampled_from([2.0**63, -2.0**63, 2.0**64, -0.0,
                                           1e19, -1e19, 2.0**1000])
           | st.booleans() | st.none())
keys = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                    .map(tuple), max_leaves=8)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(st.lists(keys, min_size=1, max_size=60))
def test_any_key_encodes_the_same_in_python_and_c(api_check, key_list):
    check_keys(api_check, key_list)
