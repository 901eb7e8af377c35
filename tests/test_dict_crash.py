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
