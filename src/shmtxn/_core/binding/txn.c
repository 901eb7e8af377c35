/*
 * txn.c -- the txn driver: the waiting loop every transaction (explicit or
 * auto-committed) opens through, ending and dropping txns, the thread
 * guard, and the one parser of txn(write=None, timeout=None, *,
 * until=None) (a predicate hands off to shmtxn._wait).  And
 * TxnBase, what Txn and DictTxn share: enter, exit, commit, abort, repr,
 * the write/active attributes and freeing (each type lists these methods
 * in its own table, TXN_BASE_METHODS: a method found on the object's own
 * type costs no subclass check on every `with`).
 */
#include <time.h>
#include <unistd.h>

#include "binding.h"

int
txn_wait(binding_state *st, HandleObject *h, const char *name, stx_txn *txn,
         double timeout)
{
    int rc = stx_txn_step(txn, 0);
    double start = rc == STX_EAGAIN ? monotonic_s() : 0; /* fast path: none */
    while (rc == STX_EAGAIN) {
        if (PyErr_CheckSignals() < 0) {
            stx_txn_cancel(txn);
            return -1;
        }
        if (h != NULL && !txn->tracked && !txn->pinned) {
            /* an own txn about to release the GIL: from now on close()
             * must wait for it (gate.c) */
            if (gate_enter(h) < 0) {
                stx_txn_cancel(txn);
                return -1;
            }
            txn->pinned = 1;
        }
        if (h != NULL && handle_state(h) != HS_OPEN) {
            /* close() is waiting for this pin to go */
            stx_txn_cancel(txn);
            raise_error(st, ERR_SEGMENT_CLOSED, "segment '%s' was closed "
                        "while this thread waited to open a transaction "
                        "on it", name);
            return -1;
        }
        uint64_t slice = WAIT_SLICE_NS;
        if (timeout >= 0) {
            double left = timeout - (monotonic_s() - start);
            if (left <= 0) {
                stx_txn_cancel(txn);
                raise_lock_timeout(st, name, timeout, txn->write);
                return -1;
            }
            if (left * 1e9 < (double)slice) {
                slice = (uint64_t)(left * 1e9) + 1;
            }
        }
        Py_BEGIN_ALLOW_THREADS
        rc = stx_txn_step(txn, slice);
        Py_END_ALLOW_THREADS
    }
    if (rc != 0) {
        raise_engine_error(st, rc, name); /* the step cancelled the txn */
        return -1;
    }
    return 0;
}

/*
 * ThreadGuard -- one per thread that opened a txn object, kept in the
 * thread state's dict.  CPython clears that dict when the thread ends
 * (before join() returns), and the guard's destructor then ends whatever
 * txns the thread left open: read txns stop counting, write txns roll
 * back.  Nothing is left for a later thread to trip over.
 */
/* End the txn of a txn object being freed (any thread): a read txn is
 * released, a write txn rolled back -- or, if another thread opened it,
 * kept until that thread ends and rolls it back. */
static void
txn_drop(HandleObject *mem, stx_txn *txn)
{
    if ((txn->state != STX_TXN_IDLE || txn->listed)
        && stx_txn_abandon(txn) == 1) {
        orphan_keep(mem, txn); /* only its own thread may unlock it */
    }
}

/* A thread's guard is freed as the thread ends: end what it left open. */
static void
ThreadGuard_dealloc(PyObject *self)
{
    stx_thread_exit();
    orphans_reap();
    PyTypeObject *type = Py_TYPE(self);
    PyObject_Free(self);
    Py_DECREF(type);
}

static PyType_Slot ThreadGuard_slots[] = {
    {Py_tp_doc, "Ends the transactions a thread leaves open when it ends."},
    {Py_tp_dealloc, ThreadGuard_dealloc},
    {0, NULL},
};

PyType_Spec ThreadGuard_spec = {
    .name = "shmtxn._core.ThreadGuard",
    .basicsize = sizeof(PyObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ThreadGuard_slots,
};

#define GUARD_KEY "shmtxn.thread_guard"

/* Make sure the calling thread has a ThreadGuard; -1 on error. */
static int
ensure_thread_guard(binding_state *st)
{
    static _Thread_local PyThreadState *guarded;
    PyThreadState *ts = PyThreadState_Get();
    if (guarded == ts) {
        return 0;
    }
    PyObject *dict = PyThreadState_GetDict(); /* borrowed */
    if (dict == NULL) {
        return 0; /* no thread state dict: nothing to hook */
    }
    PyObject *key = PyUnicode_InternFromString(GUARD_KEY);
    int has = key ? PyDict_Contains(dict, key) : -1;
    if (has == 0) {
        PyObject *guard = PyObject_New(PyObject, st->ThreadGuard_Type);
        has = guard ? PyDict_SetItem(dict, key, guard) : -1;
        Py_XDECREF(guard);
    }
    Py_XDECREF(key);
    if (has < 0 || gate_thread_claim() < 0) {
        return -1;
    }
    guarded = ts;
    return 0;
}

/* stx_txn_init of a tracked txn: registered only while `h` is open, under
 * its lock, so close() either counts it or has already begun (gate.c). */
static int
init_tracked(HandleObject *h, stx_txn *txn, int write)
{
    int rc = 1;
    HANDLE_LOCK(h);
    if (handle_state(h) == HS_OPEN) {
        rc = stx_txn_init(txn, &h->seg, write);
    }
    HANDLE_UNLOCK(h);
    return rc;
}

int
txn_open(HandleObject *h, stx_txn *txn, int write, double timeout)
{
    orphans_end_own(); /* before the nesting check sees them */
    if (handle_check_open(h) < 0
        || (txn->tracked && ensure_thread_guard(h->st) < 0)) {
        return -1;
    }
    int rc = txn->tracked ? init_tracked(h, txn, write)
                          : stx_txn_init(txn, &h->seg, write);
    if (rc == 1) {
        return handle_check_open(h); /* closed meanwhile */
    }
    if (rc != 0) {
        return handle_error(h, rc);
    }
    return txn_wait(h->st, h, h->seg.name, txn, timeout);
}

#ifdef Py_GIL_DISABLED
#define PIN_OWN_TXNS 1 /* every use of the mapping is pinned */
#else
#define PIN_OWN_TXNS 0
#endif

int
own_open(HandleObject *h, stx_txn *txn, int write, int runs_python)
{
    txn->pinned = 0;
    if (PIN_OWN_TXNS || runs_python) {
        if (gate_enter(h) < 0) {
            return -1;
        }
        txn->pinned = 1;
    }
    if (txn_open(h, txn, write, -1) < 0) {
        if (txn->pinned) {
            gate_leave(h);
        }
        return -1;
    }
    return 0;
}

int
own_close(HandleObject *h, stx_txn *txn, int commit)
{
    int rc = txn->state == STX_TXN_OPEN ? txn_close(h, txn, commit) : 0;
    if (txn->pinned) {
        gate_leave(h);
    }
    return rc;
}

int
own_abort(HandleObject *h, stx_txn *txn)
{
    if (txn->state == STX_TXN_OPEN) {
        stx_txn_end(txn, 0); /* the error stands, whatever this finds */
    }
    if (txn->pinned) {
        gate_leave(h);
    }
    return -1;
}

int
txn_close(HandleObject *h, stx_txn *txn, int commit)
{
    int rc = stx_txn_end(txn, commit);
    if (rc == STX_EFORKED) {
        stx_txn_abandon(txn); /* the parent's: nothing of it is ours */
    }
    return rc == 0 ? 0 : handle_error(h, rc);
}

int
txn_write_failed(HandleObject *h, stx_txn *txn, int code)
{
    int user_error = code == STX_ERANGE || code == STX_EREADONLY
                     || code == STX_EINVAL;
    if (!user_error && txn->state == STX_TXN_OPEN) {
        txn->failed = code;
        stx_txn_end(txn, 0); /* roll the whole txn back */
    }
    return handle_error(h, code);
}

int
txn_check_write(HandleObject *h, const stx_txn *txn)
{
    if (txn->write) {
        return 0;
    }
    raise_error(h->st, STX_EREADONLY, "this is a read transaction on "
                "segment '%s'; open a write transaction with .txn() to "
                "write", h->seg.name);
    return -1;
}

/* ------------------------------------------------------------------ */
/* txn(write=None, timeout=None, *, until=None)                        */

/* The argument `key` names, in `slots` (write, timeout, until); NULL with
 * TypeError for an unknown name or one given twice. */
static PyObject **
txn_arg_slot(binding_state *st, PyObject *key, PyObject **slots)
{
    PyObject **slot = NULL;
    if (key == st->str_write
        || PyUnicode_CompareWithASCIIString(key, "write") == 0) {
        slot = &slots[0];
    }
    else if (key == st->str_timeout
             || PyUnicode_CompareWithASCIIString(key, "timeout") == 0) {
        slot = &slots[1];
    }
    else if (PyUnicode_CompareWithASCIIString(key, "until") == 0) {
        slot = &slots[2];
    }
    if (slot == NULL) {
        PyErr_Format(PyExc_TypeError, "txn() got an unexpected keyword "
                     "argument %R", key);
    }
    else if (*slot != NULL) {
        PyErr_Format(PyExc_TypeError, "txn() got multiple values for "
                     "argument %R", key);
        slot = NULL;
    }
    return slot;
}

int
txn_parse_args(HandleObject *h, PyObject *const *args, Py_ssize_t nargs,
               PyObject *kwnames, int *write, double *timeout,
               PyObject **until)
{
    *until = NULL;
    if (nargs == 0 && kwnames == NULL) { /* txn(): the common case */
        *write = !h->seg.read_only;
        *timeout = -1.0;
        return handle_check_open(h);
    }
    PyObject *given[3] = {NULL, NULL, NULL}; /* write, timeout, until */
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "txn() takes at most 2 arguments "
                     "(write, timeout; until= by keyword), %zd given", nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        given[i] = args[i];
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject **slot = txn_arg_slot(h->st, PyTuple_GET_ITEM(kwnames, k),
                                       given);
        if (slot == NULL) {
            return -1;
        }
        *slot = args[nargs + k];
    }
    PyObject *w = given[0];
    if (w != NULL && w != Py_None && !PyBool_Check(w)) {
        PyErr_Format(PyExc_TypeError, "txn(): write must be True, False or "
                     "None (the handle's default), not %.100s",
                     Py_TYPE(w)->tp_name);
        return -1;
    }
    PyObject *u = given[2];
    if (u != NULL && u != Py_None && !PyCallable_Check(u)) {
        PyErr_Format(PyExc_TypeError, "txn(): until must be a callable "
                     "taking the transaction (a predicate), or None, not "
                     "%.100s", Py_TYPE(u)->tp_name);
        return -1;
    }
    if (handle_check_open(h) < 0
        || handle_parse_timeout(given[1], -1.0, timeout) < 0) {
        return -1;
    }
    *write = w == NULL || w == Py_None ? !h->seg.read_only : w == Py_True;
    if (*write && h->seg.read_only) {
        raise_error(h->st, STX_EREADONLY, "segment '%s' was opened "
                    "read_only=True: it has no write transactions; "
                    "txn(write=True) needs a handle opened with "
                    "read_only=False", h->seg.name);
        return -1;
    }
    *until = u == Py_None ? NULL : u;
    return 0;
}

PyObject *
txn_until(HandleObject *h, PyObject *until, int write, double timeout)
{
    PyObject *mod = PyImport_ImportModule("shmtxn._wait");
    if (mod == NULL) {
        return NULL;
    }
    PyObject *t = timeout < 0 ? Py_NewRef(Py_None)
                              : PyFloat_FromDouble(timeout);
    PyObject *r = t ? PyObject_CallMethod(mod, "txn_until", "OOOO", h,
                                          until, write ? Py_True : Py_False,
                                          t)
                    : NULL;
    Py_XDECREF(t);
    Py_DECREF(mod);
    return r;
}

/* ------------------------------------------------------------------ */
/* TxnBase                                                             */

void
txn_base_init(TxnBase *t, HandleObject *h, int write, double timeout,
              const txn_kind *kind)
{
    t->handle = (HandleObject *)Py_NewRef(h);
    t->kind = kind;
    t->txn.state = STX_TXN_IDLE;
    t->txn.tracked = 1;
    t->txn.listed = 0;
    t->txn.logged = t->logged;
    t->write = write;
    atomic_store_explicit(&t->owner, 0, memory_order_relaxed);
    t->timeout = timeout;
}

/* What `owner` holds while __enter__ runs: no thread's id. */
#define OWNER_ENTERING UINT64_MAX

/* The thread that entered `t` (0: not entered). */
static inline uint64_t
txn_owner(TxnBase *t)
{
    return atomic_load_explicit(&t->owner, memory_order_acquire);
}

/* TransactionThreadError: `t` is another thread's. */
static int
not_the_owner(TxnBase *t)
{
    raise_error(t->handle->st, STX_ETHREAD, "this transaction on %s '%s' "
                "belongs to the thread that opened it; open a transaction "
                "in this thread with .txn() (docs/threads.md)",
                t->kind->what, t->handle->seg.name);
    return -1;
}

int
txn_check_usable(TxnBase *t)
{
    uint64_t owner = txn_owner(t);
    if (owner == stx_thread_id() && t->txn.state == STX_TXN_OPEN
        && t->txn.fork_gen == stx_fork_gen) {
        return 0; /* the hot path: the owner, open, in its process */
    }
    if (owner != 0 && owner != stx_thread_id()) {
        return not_the_owner(t);
    }
    /* never entered (nothing of `txn` to read), or the owner's */
    int rc = owner == 0 ? STX_ECLOSED : stx_txn_usable(&t->txn);
    if (rc == STX_ECLOSED) {
        raise_error(t->handle->st, STX_ECLOSED, "this transaction on %s "
                    "'%s' has ended; open a new one with .txn()",
                    t->kind->what, t->handle->seg.name);
    }
    else if (rc != 0) {
        handle_error(t->handle, rc);
    }
    return rc == 0 ? 0 : -1;
}

/* commit() / abort() / leaving `with`: end the txn of `t`. */
static PyObject *
end_txn(TxnBase *t, int commit)
{
    if (txn_check_usable(t) < 0 || t->kind->finish(t, commit) < 0
        || txn_close(t->handle, &t->txn, commit) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* __enter__: open the txn (once), waiting as long as `timeout` says. */
PyObject *
TxnBase_enter(TxnBase *t, PyObject *unused)
{
    /* claimed first (ENTERING: no thread's), so two threads entering at
     * once cannot both open it; then owned under the engine's id for the
     * thread, which stx_txn_init has just looked up */
    uint64_t none = 0;
    if (!atomic_compare_exchange_strong(&t->owner, &none, OWNER_ENTERING)) {
        raise_error(t->handle->st, STX_ECLOSED, "a transaction object can "
                    "be entered once; open a new one with .txn()");
        return NULL;
    }
    int rc = txn_open(t->handle, &t->txn, t->write, t->timeout);
    atomic_store_explicit(&t->owner, t->txn.state == STX_TXN_OPEN
                          ? t->txn.thread : stx_thread_id(),
                          memory_order_release);
    return rc < 0 ? NULL : Py_NewRef(t);
}

/* __exit__: commit, or roll back on an exception; never swallows it. */
PyObject *
TxnBase_exit(TxnBase *t, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc_type = nargs > 0 ? args[0] : Py_None;
    uint64_t owner = txn_owner(t);
    if (owner == 0) {
        Py_RETURN_FALSE; /* never entered */
    }
    if (owner != stx_thread_id()) {
        not_the_owner(t);
        return NULL;
    }
    if (t->txn.state == STX_TXN_OPEN && t->txn.fork_gen == stx_fork_gen) {
        /* the common case, its owner checked: end it */
        int commit = exc_type == Py_None;
        if (t->kind->finish(t, commit) < 0
            || txn_close(t->handle, &t->txn, commit) < 0) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    if (t->txn.state != STX_TXN_OPEN) {
        if (exc_type == Py_None && t->txn.failed) {
            /* a write failed and rolled the txn back, and the body went
             * on (it caught the error): leaving quietly would look like
             * a commit */
            raise_error(t->handle->st, STX_ECLOSED, "the transaction on "
                        "segment '%s' was rolled back when a write in it "
                        "failed (the error raised then says why); nothing "
                        "of it was committed", t->handle->seg.name);
            return NULL;
        }
        Py_RETURN_FALSE; /* committed, aborted or rolled back already */
    }
    PyObject *r = end_txn(t, exc_type == Py_None);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

/* commit(): end the txn, keeping its changes. */
PyObject *
TxnBase_commit(TxnBase *t, PyObject *unused)
{
    return end_txn(t, 1);
}

/* abort(): end the txn, rolling its changes back. */
PyObject *
TxnBase_abort(TxnBase *t, PyObject *unused)
{
    return end_txn(t, 0);
}

void
txn_base_clear(TxnBase *t)
{
    PyObject_GC_UnTrack(t);
    t->kind->release(t);
    txn_drop(t->handle, &t->txn);
    Py_CLEAR(t->handle);
}

int
txn_base_traverse(TxnBase *t, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(t));
    Py_VISIT(t->handle);
    return 0;
}

/* t.write */
PyObject *
TxnBase_get_write(TxnBase *t, void *closure)
{
    return PyBool_FromLong(t->write);
}

/* t.active */
PyObject *
TxnBase_get_active(TxnBase *t, void *closure)
{
    return PyBool_FromLong(txn_owner(t) == stx_thread_id()
                           && stx_txn_usable(&t->txn) == 0);
}

/* repr(t): kind, segment and state. */
PyObject *
TxnBase_repr(TxnBase *t)
{
    uint64_t owner = txn_owner(t);
    const char *state = owner == 0 ? "not entered"
                        : owner != stx_thread_id() ? "another thread's"
                        : t->txn.state == STX_TXN_OPEN ? "open" : "ended";
    return PyUnicode_FromFormat("<shmtxn %s txn on %s %R, %s>",
                                t->write ? "write" : "read", t->kind->what,
                                t->handle->name, state);
}
