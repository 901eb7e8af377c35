"""Property test: random sequences of every SharedDict operation,
including txns that commit, abort or raise, against a plain dict (contents
*and* order); a second process attached by name must see the model too.
The same machine runs on both backends: shared memory and Redis."""

import multiprocessing
import os
import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant,
                                 precondition, rule)

import helpers
import redis_server
from shmtxn import SharedDict

scalars = (st.integers(-3, 12) | st.sampled_from([True, False, 1.0, 2.5,
                                                   None, 2**70])
           | st.text(max_size=3) | st.binary(max_size=3))
keys = scalars | st.tuples(scalars, scalars)
values = (st.integers() | st.binary(max_size=300) | st.text(max_size=50)
          | st.none() | st.floats(allow_nan=False) | st.booleans()
          | st.lists(st.integers(), max_size=3))
ops = st.lists(st.tuples(st.sampled_from(["set", "del", "get", "pop",
                                          "setdefault", "update", "clear"]),
                         keys, values), max_size=12)


class Boom(Exception):
    pass


def apply(target, op, key, value):
    """Apply one operation to a dict or a SharedDict (or a txn of it) and
    return what it returned, or the exception type it raised."""
    try:
        if op == "set":
            target[key] = value
        elif op == "del":
            del target[key]
        elif op == "get":
            return target.get(key, "absent")
        elif op == "pop":
            return target.pop(key, "absent")
        elif op == "setdefault":
            return target.setdefault(key, value)
        elif op == "update":
            target.update({key: value, (key, "u"): value})
        elif op == "clear" and value is None:
            target.clear()
    except KeyError:
        return KeyError
    return None


class DictMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.name = f"shmtxn_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        self.d = self.create()
        self.spec = redis_server.spec(self.d)
        self.model = {}
        self.closed = False

    def create(self):
        return SharedDict(self.name, create=True, size=256 * 1024)

    @rule(op=st.sampled_from(["set", "del", "get", "pop", "setdefault",
                              "update", "clear"]), key=keys, value=values)
    def single_op(self, op, key, value):
        assert apply(self.d, op, key, value) == apply(self.model, op, key,
                                                      value)

    @rule(body=ops, ending=st.sampled_from(["commit", "abort", "raise",
                                             "early-commit"]))
    def transaction(self, body, ending):
        shadow = dict(self.model)
        try:
            with self.d.txn() as t:
                for op, key, value in body:
                    assert apply(t, op, key, value) == apply(shadow, op, key,
                                                             value)
                assert list(t.items()) == list(shadow.items())
                if ending == "abort":
                    t.abort()
                elif ending == "raise":
                    raise Boom
                elif ending == "early-commit":
                    t.commit()
        except Boom:
            pass
        if ending in ("commit", "early-commit"):
            self.model = shadow

    @rule()
    def read_txn_sees_the_model(self):
        with self.d.txn(write=False) as t:
            assert list(t) == list(self.model)
            assert t.copy() == self.model and len(t) == len(self.model)

    @invariant()
    def lock_free_reads_see_the_model(self):
        if not self.closed:
            assert list(self.d.items()) == list(self.model.items())
            assert len(self.d) == len(self.model)
            for k, v in self.model.items():
                assert self.d[k] == v and k in self.d

    @precondition(lambda self: not self.closed)
    @rule()
    def second_process_agrees(self):
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        p = ctx.Process(target=helpers.dict_read_in_child,
                        args=(self.spec, child))
        p.start()
        assert parent.recv() == list(self.model.items())
        p.join()

    def teardown(self):
        self.d.verify()
        self.d.close()
        self.d.unlink()
        self.closed = True


class RedisDictMachine(DictMachine):
    def create(self):
        return SharedDict.connect(redis_server.server().url, self.name,
                                  create=True)


class RedisDictMachineStress(RedisDictMachine):
    """The Redis machine with the full count of examples (-m stress)."""


# Every step on Redis is a few round trips, so the default run of the
# Redis machine takes a fifth of the examples (~6 s, not ~30 s); the
# stress run takes them all.
EXAMPLES = 60
for machine, examples in ((DictMachine, EXAMPLES),
                          (RedisDictMachine, EXAMPLES // 5),
                          (RedisDictMachineStress, EXAMPLES)):
    machine.TestCase.settings = settings(max_examples=examples,
                                         stateful_step_count=30,
                                         deadline=None)
test_dict_against_a_dict = DictMachine.TestCase
test_redis_dict_against_a_dict = redis_server.needs_redis(
    RedisDictMachine.TestCase)
test_redis_dict_against_a_dict_stress = pytest.mark.stress(
    redis_server.needs_redis(RedisDictMachineStress.TestCase))
