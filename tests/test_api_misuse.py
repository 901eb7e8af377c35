"""Misuse of the public C API and of txn(), found by the outside review of
the engine-as-a-library work: each test names the behaviour that holds,
and its docstring tells the defect it guards against (each failed before
its fix).  C programs are built like tests/capi's (engine sources,
ASan+UBSan).
"""

import os
import subprocess
import threading
import uuid

import pytest

from capi.cbuild import build, run_env
from shmtxn import SharedDict, SharedMemory
import shmtxn

PRELUDE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "shmtxn.h"
"""


def seg_name(tag):
    return f"rv10_{os.getpid()}_{tag}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def cprog(tmp_path_factory):
    """Build a C program from `body` (after PRELUDE) and run it with
    argv[1] = a fresh segment name; (returncode, stdout+stderr)."""
    made = []

    def run(tag, body, timeout=60):
        d = tmp_path_factory.mktemp("rv10c")
        src = os.path.join(str(d), f"{tag}.c")
        with open(src, "w") as f:
            f.write(PRELUDE + body)
        exe = build(src, tmp_path_factory)
        name = seg_name(tag)
        made.append(name)
        proc = subprocess.run([exe, name], capture_output=True, text=True,
                              env=run_env(), timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr

    yield run
    for name in made:  # only the segments these programs created
        try:
            os.unlink("/dev/shm/" + name)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------- C API


def test_c_huge_timeout_waits_instead_of_timing_out_at_once(cprog):
    """shmtxn_txn_begin(timeout_ms = 2**58): the ms -> ns conversion
    ((uint64_t)timeout_ms * 1000000) wraps to 0, so the begin times out
    at once with SHMTXN_TIMEOUT although the caller asked for ~9 million
    years.  (shmtxn_attach's timeout_ms has the same multiplication.)"""
    rc, out = cprog("huge_timeout", r"""
static shmtxn_seg *seg;
static int got = 1;
static void *waiter(void *arg) {
    (void)arg;
    shmtxn_txn *t;
    got = shmtxn_txn_begin(seg, SHMTXN_WRITE, INT64_C(1) << 58, &t);
    if (got == 0) shmtxn_txn_commit(t);
    return NULL;
}
int main(int argc, char **argv) {
    (void)argc;
    shmtxn_create_opts o = {.struct_size = sizeof(o), .size = 80};
    if (shmtxn_create(argv[1], &o, &seg)) return 3;
    shmtxn_txn *w;
    if (shmtxn_txn_begin(seg, SHMTXN_WRITE, 1000, &w)) return 4;
    pthread_t th;
    pthread_create(&th, NULL, waiter, NULL);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 1;
    int early = pthread_timedjoin_np(th, NULL, &until) == 0;
    shmtxn_txn_commit(w);            /* let a still-waiting begin through */
    if (!early) pthread_join(th, NULL);
    printf("returned_while_lock_held=%d rc=%d %s\n", early, got,
           got ? shmtxn_detail() : "");
    shmtxn_close(seg);
    shmtxn_unlink(argv[1]);
    return 0;
}
""")
    assert rc == 0, out
    assert "returned_while_lock_held=0 rc=0" in out, out


def test_c_undo_size_near_uint64_max_does_not_wrap_to_an_empty_log(cprog):
    """undo_size = UINT64_MAX is rounded up to a multiple of 8 with
    wrap-around (stx_round_up) to 0, passes the size check, and the
    segment gets a 0-byte undo log: every write then fails with
    SHMTXN_TOOLARGE.  It should be refused (SHMTXN_FULL/EINVAL like other
    impossible sizes) or honoured as a cap."""
    rc, out = cprog("undo_wrap", r"""
int main(int argc, char **argv) {
    (void)argc;
    shmtxn_seg *seg;
    shmtxn_create_opts o = {.struct_size = sizeof(o), .size = 80,
                            .undo_size = UINT64_MAX};
    int c = shmtxn_create(argv[1], &o, &seg);
    if (c != 0) { printf("refused %d\n", c); return 0; }
    shmtxn_info info = {.struct_size = sizeof(info)};
    shmtxn_info_get(seg, &info);
    shmtxn_txn *t;
    shmtxn_txn_begin(seg, SHMTXN_WRITE, SHMTXN_FOREVER, &t);
    int p = shmtxn_put_int(t, 0, 1);
    shmtxn_txn_abort(t);
    printf("undo_size=%llu put=%d\n", (unsigned long long)info.undo_size, p);
    shmtxn_close(seg);
    shmtxn_unlink(argv[1]);
    return 0;
}
""")
    assert rc == 0, out
    assert "refused" in out or "put=0" in out, out


NULL_CALLS = {
    # the API checks NULL handles, txns and keys (EINVAL, with a detail)
    # but dereferences NULL out/in pointers: a segfault (UBSan: null)
    "get_int_out": "shmtxn_get_int(txn, 0, NULL)",
    "read_dst": "shmtxn_read(txn, 0, NULL, 8)",
    "write_src": "shmtxn_write(txn, 0, NULL, 8)",
    "load_int_out": "shmtxn_load_int(seg, 0, NULL)",
    "load_dst": "shmtxn_load(seg, 0, NULL, 8)",
    "dict_get_entry": "shmtxn_dict_get(dtxn, key, NULL)",
    "dict_next_pos": "shmtxn_dict_next(dtxn, NULL, &entry)",
    "dict_count_out": "shmtxn_dict_count(dtxn, NULL)",
    "key_int_null_key": "shmtxn_key_int(NULL, 1)",
    "key_str_null_key": "shmtxn_key_str(NULL, \"a\", 1)",
    "key_tuple_begin_null_key": "shmtxn_key_tuple_begin(NULL)",
    "key_str_null_bytes": "shmtxn_key_str(key, NULL, 3)",
    "key_bytes_null_bytes": "shmtxn_key_bytes(key, NULL, 3)",
}


@pytest.mark.parametrize("call", sorted(NULL_CALLS))
def test_c_null_pointer_arguments_are_einval_not_a_crash(cprog, call):
    rc, out = cprog(f"null_{call}", r"""
int main(int argc, char **argv) {
    (void)argc;
    char dname[300];
    snprintf(dname, sizeof dname, "%s_d", argv[1]);
    shmtxn_seg *seg, *dseg;
    shmtxn_txn *txn, *dtxn;
    shmtxn_entry entry;
    (void)entry;
    shmtxn_create_opts o = {.struct_size = sizeof(o), .size = 80};
    shmtxn_create_opts od = {.struct_size = sizeof(od),
                             .layout = SHMTXN_LAYOUT_DICT, .size = 1 << 20};
    if (shmtxn_create(argv[1], &o, &seg)) return 3;
    if (shmtxn_create(dname, &od, &dseg)) return 3;
    shmtxn_unlink(argv[1]);
    shmtxn_unlink(dname);
    shmtxn_key *key = shmtxn_key_new();
    if (!KEY_CALL) shmtxn_key_str(key, "a", 1);
    txn = NULL;
    if (!LOAD_CALL) shmtxn_txn_begin(seg, SHMTXN_WRITE, SHMTXN_FOREVER, &txn);
    shmtxn_txn_begin(dseg, SHMTXN_WRITE, SHMTXN_FOREVER, &dtxn);
    shmtxn_dict_put(dtxn, key, SHMTXN_VAL_NONE, NULL, 0);
    int rc = CALL;
    printf("rc=%d\n", rc);
    return 0;
}
""".replace("LOAD_CALL", str(int(call.startswith("load_"))))
          .replace("KEY_CALL", str(int(call.startswith("key_"))))
          .replace("CALL", NULL_CALLS[call]))
    assert rc == 0 and "rc=22" in out, out


def test_c_garbage_struct_size_is_einval_not_an_overread(cprog):
    """copy_opts trusts struct_size and scans every byte past the fields it
    knows up to struct_size: an uninitialised or wrong struct_size (here
    1 MiB on a 72-byte stack struct) reads far beyond the caller's struct
    (ASan: stack-buffer-overflow in copy_opts) instead of EINVAL."""
    rc, out = cprog("struct_size", r"""
int main(int argc, char **argv) {
    (void)argc;
    shmtxn_seg *seg = NULL;
    shmtxn_create_opts o = {.struct_size = 1 << 20, .size = 80};
    int rc = shmtxn_create(argv[1], &o, &seg);
    printf("rc=%d\n", rc);
    if (seg) { shmtxn_close(seg); shmtxn_unlink(argv[1]); }
    return 0;
}
""")
    assert rc == 0 and "rc=22" in out, out


# ------------------------------------------------------- Python binding


@pytest.mark.parametrize("cls", [SharedMemory, SharedDict])
@pytest.mark.parametrize("timeout", [float("nan"), -1, float("inf")])
def test_py_bad_timeout_message_is_formatted(cls, timeout):
    """handle_parse_timeout passes "%g" and "%R" to PyErr_Format, which
    knows neither: the message reads 'from 0 to %g, not %R'."""
    name = seg_name("tmo")
    kw = {"size": 80} if cls is SharedMemory else {}
    with cls(name, create=True, **kw) as h:
        with pytest.raises(ValueError) as info:
            h.txn(timeout=timeout)
    msg = str(info.value)
    assert "%g" not in msg and "%R" not in msg, msg


def test_py_huge_int_timeout_is_a_valueerror_about_timeout():
    """timeout=10**400 escapes the range check as a bare OverflowError
    ('int too large to convert to float') that does not say which
    argument was wrong; every other out-of-range timeout is a ValueError
    naming timeout."""
    name = seg_name("tmo_big")
    with SharedMemory(name, create=True, size=80) as shr:
        with pytest.raises(ValueError, match="timeout"):
            shr.txn(timeout=10**400)


@pytest.mark.parametrize("op", ["commit", "abort", "getitem"])
def test_py_txn_used_from_another_thread_is_a_shmtxn_error_naming_segment(op):
    """Using a txn from a thread other than its own raises a bare
    ValueError (the engine's EINVAL detail) that is no shmtxn.Error and
    does not name the segment (DESIGN §2: one hierarchy; messages say to
    which segment)."""
    name = seg_name("thr")
    with SharedMemory(name, create=True, size=80) as shr:
        t = shr.txn()
        t.__enter__()
        box = {}

        def other():
            try:
                if op == "getitem":
                    t[0]
                else:
                    getattr(t, op)()
            except BaseException as e:  # noqa: B036 - we report it
                box["e"] = e

        th = threading.Thread(target=other)
        th.start()
        th.join()
        t.abort()
    err = box.get("e")
    assert err is not None
    assert isinstance(err, shmtxn.Error), repr(err)
    assert name in str(err), str(err)
