/*
 * py_txn.c -- shmtxn._core.Txn, the object `with shr.txn() as t` binds,
 * and the waiting loop every transaction (explicit or auto-committed)
 * opens through.
 */
#include <time.h>
#include <unistd.h>

#include "binding.h"

/* Longest wait with the GIL released before checking Ctrl-C and the
 * deadline again. */
#define WAIT_SLICE_NS 20000000ull

static double
monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int
txn_wait(const char *name, stx_txn *txn, double timeout)
{
    int rc = stx_txn_step(txn, 0);
    double start = rc == STX_EAGAIN ? monotonic_s() : 0; /* fast path: none */
    while (rc == STX_EAGAIN) {
        if (PyErr_CheckSignals() < 0) {
            stx_txn_cancel(txn);
            return -1;
        }
        uint64_t slice = WAIT_SLICE_NS;
        if (timeout >= 0) {
            double left = timeout - (monotonic_s() - start);
            if (left <= 0) {
                stx_txn_cancel(txn);
                raise_lock_timeout(name, timeout, txn->write);
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
        raise_engine_error(rc, name); /* the step cancelled the txn */
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
/*
 * Orphans: write txns whose object was dropped by another thread than the
 * one that opened it.  Only that thread may unlock the writer mutex, so
 * the txn is moved here, with a reference to its handle (close() refuses
 * while it is open, and the mapping stays), until the thread ends and
 * its guard rolls it back.
 */
typedef struct orphan {
    struct orphan *next;
    HandleObject *mem;
    stx_txn txn;
} orphan;

static orphan *orphans;

/* Keep `txn` in an orphan until its thread ends it (see above). */
static void
txn_orphan(HandleObject *mem, stx_txn *txn)
{
    orphan *o = PyMem_Malloc(sizeof(*o));
    if (o == NULL) {
        return; /* left listed in freed memory: never; out of memory */
    }
    stx_txn_move(&o->txn, txn);
    o->mem = (HandleObject *)Py_NewRef(mem);
    o->next = orphans;
    orphans = o;
}

/* Free the orphans whose thread has ended them. */
static void
reap_orphans(void)
{
    for (orphan **p = &orphans; *p != NULL;) {
        orphan *o = *p;
        if (o->txn.state == STX_TXN_OPEN && o->txn.fork_gen == stx_fork_gen) {
            p = &o->next;
            continue;
        }
        *p = o->next;
        Py_DECREF(o->mem);
        PyMem_Free(o);
    }
}

void
txn_drop(HandleObject *mem, stx_txn *txn)
{
    if ((txn->state != STX_TXN_IDLE || txn->listed)
        && stx_txn_abandon(txn) == 1) {
        txn_orphan(mem, txn); /* only its own thread may unlock it */
    }
}

static void
ThreadGuard_dealloc(PyObject *self)
{
    stx_thread_exit();
    reap_orphans();
    PyObject_Free(self);
}

PyTypeObject ThreadGuard_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmtxn._core.ThreadGuard",
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Ends the transactions a thread leaves open when it ends.",
    .tp_dealloc = ThreadGuard_dealloc,
};

#define GUARD_KEY "shmtxn.thread_guard"

/* Make sure the calling thread has a ThreadGuard; -1 on error. */
static int
ensure_thread_guard(void)
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
        PyObject *guard = PyObject_New(PyObject, &ThreadGuard_Type);
        has = guard ? PyDict_SetItem(dict, key, guard) : -1;
        Py_XDECREF(guard);
    }
    Py_XDECREF(key);
    if (has < 0) {
        return -1;
    }
    guarded = ts;
    return 0;
}

int
txn_open(HandleObject *mem, stx_txn *txn, int write, double timeout)
{
    if (handle_check_open(mem) < 0
        || (txn->tracked && ensure_thread_guard() < 0)) {
        return -1;
    }
    int rc = stx_txn_init(txn, &mem->seg, write);
    if (rc != 0) {
        raise_engine_error(rc, mem->seg.name);
        return -1;
    }
    return txn_wait(mem->seg.name, txn, timeout);
}

int
txn_close(HandleObject *mem, stx_txn *txn, int commit)
{
    int rc = stx_txn_end(txn, commit);
    if (rc == STX_EFORKED) {
        stx_txn_abandon(txn); /* the parent's: nothing of it is ours */
    }
    if (rc != 0) {
        raise_engine_error(rc, mem->seg.name);
        return -1;
    }
    return 0;
}

int
txn_write_failed(HandleObject *mem, stx_txn *txn, int code)
{
    int user_error = code == STX_ERANGE || code == STX_EREADONLY
                     || code == STX_EINVAL;
    if (!user_error && txn->state == STX_TXN_OPEN) {
        stx_txn_end(txn, 0); /* roll the whole txn back */
    }
    raise_engine_error(code, mem->seg.name);
    return -1;
}

/*
 * A few ended Txn objects are kept for reuse: a txn per loop iteration is
 * the common pattern, and a reused object's logged-range cache needs no
 * clearing (stx_txn_init gives each use a new serial).
 */
#define TXN_FREELIST 4
static TxnObject *txn_freelist[TXN_FREELIST];
static int txn_free_count;

static TxnObject *
txn_alloc(void)
{
    if (txn_free_count > 0) {
        TxnObject *self = txn_freelist[--txn_free_count];
        _Py_NewReference((PyObject *)self);
        return self;
    }
    TxnObject *self = PyObject_GC_New(TxnObject, &Txn_Type);
    if (self != NULL) {
        memset(&self->txn, 0, sizeof(self->txn));
        memset(self->logged, 0, sizeof(self->logged));
    }
    return self;
}

PyObject *
txn_new(HandleObject *mem, int write, double timeout)
{
    TxnObject *self = txn_alloc();
    if (self == NULL) {
        return NULL;
    }
    self->mem = (HandleObject *)Py_NewRef(mem);
    self->txn.state = STX_TXN_IDLE;
    self->txn.tracked = 1;
    self->txn.listed = 0;
    self->txn.logged = self->logged;
    self->write = write;
    self->entered = 0;
    self->timeout = timeout;
    self->buf = NULL;
    self->views = NULL;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* ------------------------------------------------------------------ */
/* life cycle                                                          */

/* -1 with TransactionClosedError (or the fork/thread error) if `self`
 * cannot be used now. */
static int
check_usable(TxnObject *self)
{
    int rc = stx_txn_usable(&self->txn);
    if (rc == 0) {
        return 0;
    }
    if (rc == STX_ECLOSED) {
        raise_named("TransactionClosedError", "this transaction on segment"
                    " '%s' has ended; open a new one with .txn()",
                    self->mem->seg.name);
    }
    else {
        raise_engine_error(rc, self->mem->seg.name);
    }
    return -1;
}

/* Release t.buf (names bound to it stop working).  Its View is handed to
 * the handle if still referenced beyond this txn's list: numpy's
 * ndarray(buffer=t.buf) keeps a pointer and a reference to it, no export,
 * and close() must refuse while such an array lives.  1 if so. */
static int
end_buf(TxnObject *self)
{
    if (self->buf == NULL) {
        return 0;
    }
    PyObject *view = Py_XNewRef(PyMemoryView_GET_BASE(self->buf));
    PyObject *r = PyObject_CallMethod(self->buf, "release", NULL);
    if (r == NULL) {
        PyErr_Clear(); /* a slice of it is alive: its export counts */
    }
    Py_XDECREF(r);
    Py_CLEAR(self->buf);
    int held = r != NULL && view != NULL && Py_REFCNT(view) > 2;
    if (held && handle_escape_view(self->mem, view) < 0) {
        PyErr_Clear();
    }
    Py_XDECREF(view);
    return held;
}

/* End the views this txn made: t.buf, and every View nothing exports
 * any more is invalidated.  The number still alive. */
static Py_ssize_t
end_views(TxnObject *self)
{
    Py_ssize_t alive = end_buf(self);
    Py_ssize_t n = self->views ? PyList_GET_SIZE(self->views) : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        alive += view_end((ViewObject *)PyList_GET_ITEM(self->views, i));
    }
    Py_CLEAR(self->views);
    return alive;
}

/* End the views at the end of the txn; warn if any outlives it (what is
 * written through it afterwards is not transactional). */
static void
release_view(TxnObject *self)
{
    Py_ssize_t alive = end_views(self);
    if (alive > 0) {
        PyErr_WarnFormat(PyExc_ResourceWarning, 1, "%zd view(s) or array(s)"
                         " of segment '%s' outlive their transaction; what is"
                         " written through them now is not transactional",
                         alive, self->mem->seg.name);
    }
}

static PyObject *
end_txn(TxnObject *self, int commit)
{
    if (check_usable(self) < 0) {
        return NULL;
    }
    release_view(self);
    if (txn_close(self->mem, &self->txn, commit) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Txn_enter(TxnObject *self, PyObject *unused)
{
    if (self->entered) {
        raise_named("TransactionClosedError", "a transaction object can be "
                    "entered once; open a new one with .txn()");
        return NULL;
    }
    self->entered = 1;
    if (txn_open(self->mem, &self->txn, self->write, self->timeout) < 0) {
        return NULL;
    }
    return Py_NewRef(self);
}

static PyObject *
Txn_exit(TxnObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *exc_type = nargs > 0 ? args[0] : Py_None;
    if (self->txn.state != STX_TXN_OPEN) {
        Py_RETURN_FALSE; /* committed, aborted or rolled back already */
    }
    PyObject *r = end_txn(self, exc_type == Py_None);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *
Txn_commit(TxnObject *self, PyObject *unused)
{
    return end_txn(self, 1);
}

static PyObject *
Txn_abort(TxnObject *self, PyObject *unused)
{
    return end_txn(self, 0);
}

static void
Txn_dealloc(TxnObject *self)
{
    PyObject_GC_UnTrack(self);
    PyObject *type, *value, *traceback; /* keep any pending exception */
    PyErr_Fetch(&type, &value, &traceback);
    end_views(self);
    PyErr_Restore(type, value, traceback);
    txn_drop(self->mem, &self->txn);
    Py_CLEAR(self->views);
    Py_CLEAR(self->mem);
    if (txn_free_count < TXN_FREELIST) {
        txn_freelist[txn_free_count++] = self;
        return;
    }
    PyObject_GC_Del(self);
}

static int
Txn_traverse(TxnObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->mem);
    Py_VISIT(self->buf);
    Py_VISIT(self->views);
    return 0;
}

/* ------------------------------------------------------------------ */
/* items                                                               */

static PyObject *
Txn_subscript(TxnObject *self, PyObject *key)
{
    if (check_usable(self) < 0) {
        return NULL;
    }
    HandleObject *mem = self->mem;
    if (PySlice_Check(key)) {
        return memory_read_slice(mem, key, &self->txn);
    }
    Py_ssize_t i;
    if (memory_index(mem, key, &i) < 0) {
        return NULL;
    }
    return item_unpack(mem->fmt, mem->seg.data + i * mem->fmt->size);
}

static int
Txn_ass_subscript(TxnObject *self, PyObject *key, PyObject *value)
{
    HandleObject *mem = self->mem;
    if (check_usable(self) < 0) {
        return -1;
    }
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "slots cannot be deleted; a "
                        "segment has a fixed number of items");
        return -1;
    }
    if (!self->write) {
        raise_named("ReadOnlyError", "this is a read transaction on segment"
                    " '%s'; open a write transaction with .txn() to write",
                    mem->seg.name);
        return -1;
    }
    if (PySlice_Check(key)) {
        return memory_write_slice(mem, key, value, &self->txn);
    }
    Py_ssize_t i;
    uint64_t raw = 0;
    if (memory_index(mem, key, &i) < 0
        || item_pack(mem->fmt, value, &raw) < 0) {
        return -1;
    }
    int rc = stx_write(&self->txn, (uint64_t)i * mem->fmt->size, &raw,
                       mem->fmt->size);
    return rc == 0 ? 0 : txn_write_failed(mem, &self->txn, rc);
}

static Py_ssize_t
Txn_length(TxnObject *self)
{
    return check_usable(self) < 0 ? -1 : self->mem->nitems;
}

static PyObject *
all_values(TxnObject *self)
{
    if (check_usable(self) < 0) {
        return NULL;
    }
    PyObject *all = PySlice_New(NULL, NULL, NULL);
    PyObject *list = all ? memory_read_slice(self->mem, all, &self->txn)
                         : NULL;
    Py_XDECREF(all);
    return list;
}

static PyObject *
Txn_iter(TxnObject *self)
{
    PyObject *list = all_values(self);
    PyObject *it = list ? PyObject_GetIter(list) : NULL;
    Py_XDECREF(list);
    return it;
}

static PyObject *
Txn_get(TxnObject *self, PyObject *args)
{
    PyObject *key, *fallback = Py_None;
    if (!PyArg_ParseTuple(args, "O|O:get", &key, &fallback)) {
        return NULL;
    }
    PyObject *value = Txn_subscript(self, key);
    if (value == NULL && PyErr_ExceptionMatches(PyExc_IndexError)) {
        PyErr_Clear();
        return Py_NewRef(fallback);
    }
    return value;
}

static PyObject *
Txn_keys(TxnObject *self, PyObject *unused)
{
    if (check_usable(self) < 0) {
        return NULL;
    }
    return PyObject_CallFunction((PyObject *)&PyRange_Type, "n",
                                 self->mem->nitems);
}

static PyObject *
Txn_values(TxnObject *self, PyObject *unused)
{
    return all_values(self);
}

static PyObject *
Txn_items(TxnObject *self, PyObject *unused)
{
    PyObject *values = all_values(self);
    if (values == NULL) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(values);
    PyObject *items = PyList_New(n);
    for (Py_ssize_t i = 0; items != NULL && i < n; i++) {
        PyObject *pair = Py_BuildValue("(nO)", i,
                                       PyList_GET_ITEM(values, i));
        if (pair == NULL) {
            Py_CLEAR(items);
            break;
        }
        PyList_SET_ITEM(items, i, pair);
    }
    Py_DECREF(values);
    return items;
}

/* ------------------------------------------------------------------ */
/* t.buf                                                               */

/* In a write txn, log [offset, +length) before handing out a writable
 * view of it, so writes through the view roll back like any other. */
static int
prepare_view(TxnObject *self, uint64_t offset, uint64_t length)
{
    if (!self->write) {
        return 0;
    }
    int rc = stx_undo_prepare(&self->txn, offset, length);
    return rc == 0 ? 0 : txn_write_failed(self->mem, &self->txn, rc);
}

/* Keep `view` so the end of the txn can invalidate it. */
static PyObject *
track_view(TxnObject *self, PyObject *view)
{
    if (view != NULL && self->views == NULL) {
        self->views = PyList_New(0);
    }
    if (view == NULL || self->views == NULL
        || PyList_Append(self->views, view) < 0) {
        Py_XDECREF(view);
        return NULL;
    }
    return view;
}

/* np.asarray(t): the whole segment, typed and shaped, through a View
 * the end of the txn invalidates like any other. */
static int
Txn_getbuffer(TxnObject *self, Py_buffer *view, int flags)
{
    HandleObject *mem = self->mem;
    view->obj = NULL;
    if (check_usable(self) < 0
        || prepare_view(self, 0, mem->seg.data_size) < 0) {
        return -1;
    }
    /* np.ndarray(buffer=t) keeps a pointer and this txn (hence the
     * handle) but no export: close() must then keep the mapping */
    mem->exported_directly = 1;
    PyObject *v = track_view(self, view_new(
        mem, (char *)mem->seg.data, mem->fmt->code, mem->fmt->size,
        mem->ndim, mem->shape, !self->write));
    if (v == NULL) {
        return -1;
    }
    int rc = view_getbuffer((ViewObject *)v, view, flags);
    Py_DECREF(v); /* the txn's list and the buffer keep it */
    return rc;
}

/* t.buf: the data region as bytes, valid inside the transaction. */
static PyObject *
Txn_get_buf(TxnObject *self, void *closure)
{
    HandleObject *mem = self->mem;
    if (check_usable(self) < 0) {
        return NULL;
    }
    if (self->buf == NULL) {
        Py_ssize_t len = (Py_ssize_t)mem->seg.data_size;
        if (prepare_view(self, 0, mem->seg.data_size) < 0) {
            return NULL;
        }
        PyObject *view = track_view(self, view_new(mem, (char *)mem->seg.data,
                                                   'B', 1, 1, &len,
                                                   !self->write));
        if (view == NULL) {
            return NULL;
        }
        self->buf = PyMemoryView_FromObject(view);
        Py_DECREF(view);
    }
    return Py_XNewRef(self->buf);
}

/* Rows [start, stop) of the first dimension, as slice bounds would be. */
static int
row_range(TxnObject *self, PyObject *start_arg, PyObject *stop_arg,
          Py_ssize_t *start, Py_ssize_t *stop)
{
    PyObject *slice = PySlice_New(start_arg, stop_arg, NULL);
    if (slice == NULL) {
        return -1;
    }
    Py_ssize_t step;
    int rc = PySlice_Unpack(slice, start, stop, &step);
    Py_DECREF(slice);
    if (rc == 0) {
        PySlice_AdjustIndices(self->mem->shape[0], start, stop, 1);
        if (*stop < *start) {
            *stop = *start;
        }
    }
    return rc;
}

/* t.ndarray(start=None, stop=None): a zero-copy numpy array of rows
 * [start:stop] of the segment (all of it by default).  Read-only in a read
 * txn; in a write txn exactly those rows are logged first, so a small view
 * of a huge array logs little. */
static PyObject *
Txn_ndarray(TxnObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"start", "stop", NULL};
    PyObject *start_arg = Py_None, *stop_arg = Py_None;
    Py_ssize_t start, stop;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:ndarray", kwlist,
                                     &start_arg, &stop_arg)
        || check_usable(self) < 0
        || row_range(self, start_arg, stop_arg, &start, &stop) < 0) {
        return NULL;
    }
    HandleObject *mem = self->mem;
    Py_ssize_t row_bytes = mem->strides[0];
    if (prepare_view(self, (uint64_t)(start * row_bytes),
                     (uint64_t)((stop - start) * row_bytes)) < 0) {
        return NULL;
    }
    Py_ssize_t shape[STX_MAX_NDIM];
    memcpy(shape, mem->shape, sizeof(shape));
    shape[0] = stop - start;
    PyObject *view = track_view(self, view_new(
        mem, (char *)mem->seg.data + start * row_bytes, mem->fmt->code,
        mem->fmt->size, mem->ndim, shape, !self->write));
    PyObject *array = view ? view_to_ndarray(view) : NULL;
    Py_XDECREF(view);
    return array;
}

static PyObject *
Txn_get_write(TxnObject *self, void *closure)
{
    return PyBool_FromLong(self->write);
}

static PyObject *
Txn_get_active(TxnObject *self, void *closure)
{
    return PyBool_FromLong(stx_txn_usable(&self->txn) == 0);
}

static PyObject *
Txn_repr(TxnObject *self)
{
    const char *state = self->txn.state == STX_TXN_OPEN ? "open"
                        : self->entered ? "ended" : "not entered";
    return PyUnicode_FromFormat("<shmtxn %s txn on %R, %s>",
                                self->write ? "write" : "read",
                                self->mem->name, state);
}

static PyMethodDef Txn_methods[] = {
    {"__enter__", (PyCFunction)Txn_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Txn_exit, METH_FASTCALL,
     NULL},
    {"commit", (PyCFunction)Txn_commit, METH_NOARGS,
     "Commit now; the transaction cannot be used afterwards."},
    {"abort", (PyCFunction)Txn_abort, METH_NOARGS,
     "Roll back every change of this transaction and end it."},
    {"ndarray", (PyCFunction)(void (*)(void))Txn_ndarray,
     METH_VARARGS | METH_KEYWORDS,
     "ndarray(start=None, stop=None) -> zero-copy numpy array of rows "
     "[start:stop], valid inside the transaction"},
    {"get", (PyCFunction)Txn_get, METH_VARARGS,
     "get(index, default=None)"},
    {"keys", (PyCFunction)Txn_keys, METH_NOARGS, "range of the indices"},
    {"values", (PyCFunction)Txn_values, METH_NOARGS, "list of the items"},
    {"items", (PyCFunction)Txn_items, METH_NOARGS,
     "list of (index, item) pairs"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Txn_getset[] = {
    {"buf", (getter)Txn_get_buf, NULL,
     "memoryview of the data region, valid inside the transaction", NULL},
    {"write", (getter)Txn_get_write, NULL, "True for a write txn", NULL},
    {"active", (getter)Txn_get_active, NULL,
     "True while the transaction is open and usable here", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMappingMethods Txn_as_mapping = {
    .mp_length = (lenfunc)Txn_length,
    .mp_subscript = (binaryfunc)Txn_subscript,
    .mp_ass_subscript = (objobjargproc)Txn_ass_subscript,
};

static PyBufferProcs Txn_as_buffer = {
    .bf_getbuffer = (getbufferproc)Txn_getbuffer,
};

PyTypeObject Txn_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmtxn._core.Txn",
    .tp_basicsize = sizeof(TxnObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A transaction on a SharedMemory segment; use with `with`.",
    .tp_dealloc = (destructor)Txn_dealloc,
    .tp_traverse = (traverseproc)Txn_traverse,
    .tp_repr = (reprfunc)Txn_repr,
    .tp_as_mapping = &Txn_as_mapping,
    .tp_as_buffer = &Txn_as_buffer,
    .tp_iter = (getiterfunc)Txn_iter,
    .tp_methods = Txn_methods,
    .tp_getset = Txn_getset,
};
