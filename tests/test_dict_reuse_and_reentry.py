"""Defects an outside review of dict format 4 (issue #12) found: a crash
after the freed blocks are linked into the free lists, and get_many inside
a txn whose unpickling writes through that txn.  Each test failed on the
code it was written against."""

from shmtxn import SharedDict
from test_crash import run_crashing_child

# ---- a crash after the freed blocks are linked in, before commit ----

VALUE = b"v" * 100  # every record below is of one size class


def free_list_with_two_blocks(name):
    """A dict whose records' class has the free list f1 -> f2 (lowest
    first), with the live records kA and kZ above both."""
    d = SharedDict(name, create=True, size=1 << 20)
    for key in ["f1", "f2", "kA", "kZ"]:
        d[key] = VALUE
    with d.txn() as t:
        del t["f1"]
        del t["f2"]
    d.verify()
    return d


def crash_at_commit_after_reusing_a_free_block(name):
    # the txn pops f1 off its free list (kX), frees it again, and frees
    # the live kA; at commit both are pushed back on the list (writing
    # their next_free unlogged), then the writer dies before the log is
    # cleared
    run_crashing_child("commit:before_clear", (
        "from shmtxn import SharedDict\n"
        f"d = SharedDict({name!r})\n"
        "with d.txn() as t:\n"
        f"    t['kX'] = {VALUE!r}\n"
        "    del t['kX']\n"
        "    del t['kA']\n"))


def test_crash_after_flush_leaves_free_lists_intact(name):
    # Recovery restores the list head (logged) but not the next_free that
    # the commit wrote into the reused block: f1 -> kA's live record.
    with free_list_with_two_blocks(name) as d:
        crash_at_commit_after_reusing_a_free_block(name)
        assert dict(d.items()) == {"kA": VALUE, "kZ": VALUE}
        d.verify()


def test_crash_after_flush_never_loses_a_committed_key(name):
    # The same crash, seen by a user who never calls verify(): the next two
    # inserts are handed f1 and then kA's live record, which is overwritten.
    with free_list_with_two_blocks(name) as d:
        crash_at_commit_after_reusing_a_free_block(name)
        d["kP"] = b"p" * 100
        d["kQ"] = b"q" * 100
        assert d.get("kA") == VALUE
        assert d.get_many(["kA", "kZ", "kP", "kQ"]) == [
            VALUE, VALUE, b"p" * 100, b"q" * 100]


# ---- get_many in a txn whose unpickling writes to the dict ----

TXN = None  # the txn the pickled object below writes through


def _write_through_txn():
    TXN["b"] = "yy"  # in place: the record is small and committed
    return "evil"


class WritesWhenUnpickled:
    def __reduce__(self):
        return (_write_through_txn, ())


def test_get_many_in_txn_never_returns_a_value_that_never_existed(name):
    # get_many in a txn looks every key up first and decodes afterwards;
    # unpickling an earlier value may run code that writes to the dict
    # through the same txn, and the later keys are then decoded from
    # their stale lookups (a value length of before, bytes of after).
    global TXN
    with SharedDict(name, create=True, size=1 << 20) as d:
        d["b"] = "xxxxxxxx"
        d["evil"] = WritesWhenUnpickled()
        try:
            with d.txn() as t:
                TXN = t
                got = t.get_many(["evil", "b"])
                now = t["b"]
        finally:
            TXN = None
        assert now == "yy"
        assert got[0] == "evil"
        assert got[1] in ("xxxxxxxx", "yy"), got[1]
