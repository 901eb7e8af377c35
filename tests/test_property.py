"""Property test: random sequences of every slot operation, including txns
that commit, abort or raise, against a plain list; at the end a second
process attached by name must see exactly the model."""

import multiprocessing
import os
import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, invariant,
                                 precondition, rule)

from shmtxn import SharedMemory

N = 12
values = st.integers(-2**63, 2**63 - 1)
indices = st.integers(-N, N - 1)
ops = st.lists(st.tuples(st.sampled_from(["set", "slice", "get"]),
                         indices, st.lists(values, min_size=1, max_size=4)),
               max_size=8)


class Boom(Exception):
    pass


def read_in_child(name, conn):
    with SharedMemory(name) as shr:
        conn.send(shr[:])


class SlotsMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.name = f"shmtxn_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        self.shr = SharedMemory(self.name, create=True, size=8 * N,
                                undo_size=4096)
        self.model = [0] * N
        self.closed = False

    @rule(i=indices, v=values)
    def set_item(self, i, v):
        self.shr[i] = v
        self.model[i] = v

    @rule(i=indices, vs=st.lists(values, min_size=0, max_size=N))
    def set_slice(self, i, vs):
        start = i % N
        stop = min(N, start + len(vs))
        self.shr[start:stop] = vs[:stop - start]
        self.model[start:stop] = vs[:stop - start]

    @rule(bad=st.sampled_from(["x", 1.5, None, 2**64]), i=indices)
    def bad_value_changes_nothing(self, bad, i):
        try:
            self.shr[i] = bad
        except (TypeError, OverflowError):
            return
        raise AssertionError(f"{bad!r} was accepted")

    @rule(body=ops, ending=st.sampled_from(["commit", "abort", "raise",
                                             "early-commit"]))
    def transaction(self, body, ending):
        shadow = list(self.model)
        try:
            with self.shr.txn() as t:
                for kind, i, vs in body:
                    if kind == "set":
                        t[i] = vs[0]
                        shadow[i] = vs[0]
                    elif kind == "slice":
                        start = i % N
                        stop = min(N, start + len(vs))
                        t[start:stop] = vs[:stop - start]
                        shadow[start:stop] = vs[:stop - start]
                    else:
                        assert t[i] == shadow[i]
                assert t[:] == shadow
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
        with self.shr.txn(write=False) as t:
            assert list(t) == self.model
            assert t.items() == list(enumerate(self.model))

    @invariant()
    def lock_free_reads_see_the_model(self):
        if not self.closed:
            assert self.shr[:] == self.model
            assert [self.shr[i] for i in range(N)] == self.model

    @precondition(lambda self: not self.closed)
    @rule()
    def second_process_agrees(self):
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        p = ctx.Process(target=read_in_child, args=(self.name, child))
        p.start()
        assert parent.recv() == self.model
        p.join()

    def teardown(self):
        self.shr.close()
        self.shr.unlink()
        self.closed = True


SlotsMachine.TestCase.settings = settings(max_examples=40,
                                          stateful_step_count=25,
                                          deadline=None)
test_slots_against_a_list = SlotsMachine.TestCase
