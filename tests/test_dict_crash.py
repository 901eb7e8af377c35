"""Crash safety of SharedDict: writers SIGKILLed at random points of
large txns (table growth and compaction, deletes, block reuse) and at named
crash points leave exactly the state of the last commit."""

import multiprocessing
import random
import time

import pytest

import helpers
from shmtxn import SharedDict
from test_crash import run_crashing_child, start_child

CTX = multiprocessing.get_context("fork")
KEYS_PER_ROUND = 300


def kill_rounds_at_random(name, rng):
    p, _ = start_child(helpers.dict_rounds_forever, name, KEYS_PER_ROUND,
                       expect="in txn")
    time.sleep(rng.uniform(0, 0.05))  # random kill point, not a sync
    helpers.kill(p)


def check_last_commit(d):
    with d.txn(timeout=5) as t:  # recovers the dead writer
        r = t["round"]
        assert t.copy() == helpers.dict_round(r, KEYS_PER_ROUND)
    assert list(d.items()) == list(helpers.dict_round(r, KEYS_PER_ROUND)
                                   .items())
    d.verify()
    return r


def run_kills(name, kills, seed):
    rng = random.Random(seed)
    with SharedDict(name, create=True, size=2 << 20) as d:
        d.update(helpers.dict_round(0, KEYS_PER_ROUND))
        rounds = set()
        for _ in range(kills):
            kill_rounds_at_random(name, rng)
            rounds.add(check_last_commit(d))
            d["survivor"] = "writes"  # the survivors go on
            del d["survivor"]
        assert d.info()["recoveries"] >= 1, "no kill landed inside a txn"
        assert len(rounds) > 1, "the writer never committed"
        stats = d.stats()
        assert stats["rebuilds"] > 0 and stats["free_bytes"] >= 0


def test_writer_killed_in_large_txns_leaves_the_last_commit(name):
    run_kills(name, 12, 2024)


@pytest.mark.stress
def test_writer_killed_in_large_txns_many_times(name):
    run_kills(name, 200, 7)


def run_churn_kills(name, kills, seed):
    """Kill dict_churn_forever at random instants; after each kill the
    dict holds exactly one round's state and verifies."""
    rng = random.Random(seed)
    with SharedDict(name, create=True, size=4 << 20) as d:
        d.update(helpers.dict_churn_state(0))
        for _ in range(kills):
            p, _ = start_child(helpers.dict_churn_forever, name,
                               expect="in txn")
            time.sleep(rng.uniform(0, 0.03))  # random kill point, not a sync
            helpers.kill(p)
            with d.txn(timeout=5) as t:  # recovers the dead writer
                got = t.copy()
            assert got == helpers.dict_churn_state(got["round"])
            d.verify()


def test_writer_killed_while_reusing_freed_blocks(name):
    """Blocks taken off a free list and freed again in one txn: a writer
    killed at any instant (in particular after they are linked back in,
    before the commit) must leave free lists that verify and lose no
    committed key."""
    run_churn_kills(name, 150, seed=1)


@pytest.mark.stress
@pytest.mark.parametrize("seed", range(2, 10))
def test_writer_killed_while_reusing_freed_blocks_many_times(name, seed):
    run_churn_kills(name, 400, seed)


@pytest.mark.parametrize("point", ["write:after_log", "commit:before_clear"])
def test_crash_points_inside_a_dict_txn(name, point):
    with SharedDict(name, create=True, size=1 << 20) as d:
        d.update({f"k{i}": i for i in range(50)})
        before = list(d.items())
        run_crashing_child(point, (
            "from shmtxn import SharedDict\n"
            f"d = SharedDict({name!r})\n"
            "with d.txn() as t:\n"
            "    for i in range(50): del t[f'k{i}']\n"
            "    for i in range(500): t[i] = b'x' * i\n"))
        assert list(d.items()) == before
        d.verify()
        d["after"] = 1
        assert d.info()["recoveries"] == 1


def test_auto_commit_set_killed_is_all_or_nothing(name):
    with SharedDict(name, create=True, size=1 << 20) as d:
        d["k"] = "old"
        run_crashing_child("write:after_log", (
            "from shmtxn import SharedDict\n"
            f"d = SharedDict({name!r})\n"
            "d['k'] = 'new' * 100\n"))
        assert d["k"] == "old" and len(d) == 1
        d.verify()


@pytest.mark.parametrize("point", ["write:after_log", "commit:before_clear"])
def test_a_large_value_replaced_out_of_place_survives_a_kill(name, point):
    # a value this large is replaced by a fresh block and one logged entry
    # pointer, not logged and overwritten in place: a writer killed at
    # either crash point must leave the old value and no lost block
    old, new = b"o" * 100_000, b"n" * 100_000
    with SharedDict(name, create=True, size=4 << 20) as d:
        d["big"] = old
        d["small"] = 1
        used = d.stats()["live_bytes"]
        run_crashing_child(point, (
            "from shmtxn import SharedDict\n"
            f"d = SharedDict({name!r})\n"
            "with d.txn() as t:\n"
            "    t['small'] = 2\n"
            f"    t['big'] = b'm' * {len(new)}\n"  # a fresh block...
            f"    t['big'] = b'n' * {len(new)}\n"))  # ...rewritten in it
        assert d["big"] == old and d["small"] == 1
        d.verify()
        assert d.stats()["live_bytes"] == used
        d["big"] = new
        assert d["big"] == new
        d.verify()


def test_rolled_back_large_replacements_give_their_blocks_back(name):
    value = b"v" * 50_000
    with SharedDict(name, create=True, size=4 << 20) as d:
        d["big"] = value
        top = d.stats()["heap_used"]
        for i in range(40):
            with pytest.raises(KeyError):
                with d.txn() as t:
                    t["big"] = bytes([i]) * len(value)
                    raise KeyError("roll back")
        assert d["big"] == value
        assert d.stats()["heap_used"] == top
        for i in range(40):  # committed: the old block is reused
            d["big"] = bytes([i]) * len(value)
        assert d.stats()["heap_used"] <= top + 2 * 65536
        d.verify()
