"""The article's two programs run unchanged (only the import differs)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = os.path.join(os.path.dirname(ROOT), "shared", "seed")


def run_example(filename):
    path = os.path.join(ROOT, "examples", filename)
    out = subprocess.run([sys.executable, path], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("filename", ["example1_producer_consumer.py",
                                      "example2_attributes.py"])
def test_examples_are_the_seed_programs(filename):
    seed = os.path.join(SEED, filename)
    if not os.path.exists(seed):
        pytest.fail(f"seed program {seed} missing: ../shared must be beside")
    with open(seed) as a, open(os.path.join(ROOT, "examples", filename)) as b:
        assert a.read() == b.read()


def test_example1_consumer_sees_all_or_nothing():
    lines = run_example("example1_producer_consumer.py")
    # The consumer runs concurrently with the producer: it sees the
    # producer's whole txn or none of it, never a mix.
    assert lines in ([str(i) for i in range(10)], ["0"] * 10)


def test_example2_prints_name_size_and_slice():
    lines = run_example("example2_attributes.py")
    assert lines[0].startswith("name: stx_")
    assert lines[1] == "size: 80"
    assert lines[2] == "[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"


def test_pool_example_fills_and_verifies_the_array():
    pytest.importorskip("numpy")
    lines = run_example("pool_fill_rows.py")
    assert lines[-1].endswith("verified")
