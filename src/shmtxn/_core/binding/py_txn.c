/*
 * py_txn.c -- shmtxn._core.Txn, the object `with shr.txn() as t` binds: a
 * TxnBase (txn.c) over a slots segment, indexed like the handle (slots.c)
 * and handing out t.buf, t.ndarray() and np.asarray(t) -- Views that the
 * end of the txn invalidates.
 */
#include "binding.h"

#define TXN(self) (&(self)->base.txn)
#define HANDLE(self) ((self)->base.handle)

/* ------------------------------------------------------------------ */
/* the views a txn made                                                */

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
    if (held && handle_escape_view(HANDLE(self), view) < 0) {
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

/* Before the txn ends: end the views; warn if any outlives it (what is
 * written through it afterwards is not transactional). */
static int
Txn_finish(TxnBase *base, int commit)
{
    TxnObject *self = (TxnObject *)base;
    Py_ssize_t alive = end_views(self);
    if (alive > 0) {
        PyErr_WarnFormat(PyExc_ResourceWarning, 1, "%zd view(s) or array(s)"
                         " of segment '%s' outlive their transaction; what is"
                         " written through them now is not transactional",
                         alive, HANDLE(self)->seg.name);
    }
    return 0;
}

/* Being freed: end the views, keeping any pending exception. */
static void
Txn_release(TxnBase *base)
{
    TxnObject *self = (TxnObject *)base;
    if (self->buf == NULL && self->views == NULL) {
        return; /* the common case: it made none */
    }
    PyObject *exc = exc_take();
    end_views(self);
    exc_restore(exc);
}

static const txn_kind slots_txn_kind = {
    .what = "segment",
    .finish = Txn_finish,
    .release = Txn_release,
};

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

/* ------------------------------------------------------------------ */
/* life cycle                                                          */

/*
 * A few ended Txn objects are kept for reuse: a txn per loop iteration is
 * the common pattern, and a reused object's logged-range cache needs no
 * clearing (stx_txn_init gives each use a new serial).  The GIL guards
 * the list; free-threaded builds keep none (two threads popping the same
 * object would track it twice).
 */
#ifndef Py_GIL_DISABLED
#define TXN_FREELIST 4
static TxnObject *txn_freelist[TXN_FREELIST];
static int txn_free_count;
#endif

PyObject *
txn_new(HandleObject *h, int write, double timeout)
{
    PyTypeObject *type = h->st->Txn_Type;
    TxnObject *self;
#ifdef TXN_FREELIST
    if (txn_free_count > 0) {
        self = txn_freelist[--txn_free_count];
        PyObject_Init((PyObject *)self, type);
    }
    else
#endif
    if ((self = PyObject_GC_New(TxnObject, type)) != NULL) {
        memset(&self->base.txn, 0, sizeof(self->base.txn));
        memset(self->base.logged, 0, sizeof(self->base.logged));
    }
    else {
        return NULL;
    }
    txn_base_init(&self->base, h, write, timeout, &slots_txn_kind);
    self->buf = NULL;
    self->views = NULL;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

static void
Txn_dealloc(TxnObject *self)
{
    txn_base_clear(&self->base);
    PyTypeObject *type = Py_TYPE(self);
#ifdef TXN_FREELIST
    if (txn_free_count < TXN_FREELIST) {
        txn_freelist[txn_free_count++] = self;
    }
    else
#endif
    {
        PyObject_GC_Del(self);
    }
    Py_DECREF(type);
}

static int
Txn_traverse(TxnObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->buf);
    Py_VISIT(self->views);
    return txn_base_traverse(&self->base, visit, arg);
}

/* ------------------------------------------------------------------ */
/* items (slots.c)                                                     */

static PyObject *
Txn_subscript(TxnObject *self, PyObject *key)
{
    if (txn_check_usable(&self->base) < 0) {
        return NULL;
    }
    return slots_get(HANDLE(self), key, TXN(self));
}

static int
Txn_ass_subscript(TxnObject *self, PyObject *key, PyObject *value)
{
    if (txn_check_usable(&self->base) < 0) {
        return -1;
    }
    return slots_set(HANDLE(self), key, value, TXN(self));
}

static Py_ssize_t
Txn_length(TxnObject *self)
{
    return txn_check_usable(&self->base) < 0 ? -1 : HANDLE(self)->nitems;
}

static PyObject *
Txn_values(TxnObject *self, PyObject *unused)
{
    if (txn_check_usable(&self->base) < 0) {
        return NULL;
    }
    return slots_values(HANDLE(self), TXN(self));
}

static PyObject *
Txn_iter(TxnObject *self)
{
    PyObject *list = Txn_values(self, NULL);
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
    if (txn_check_usable(&self->base) < 0) {
        return NULL;
    }
    return PyObject_CallFunction((PyObject *)&PyRange_Type, "n",
                                 HANDLE(self)->nitems);
}

static PyObject *
Txn_items(TxnObject *self, PyObject *unused)
{
    if (txn_check_usable(&self->base) < 0) {
        return NULL;
    }
    return slots_items(HANDLE(self), TXN(self));
}

/* ------------------------------------------------------------------ */
/* views: np.asarray(t), t.buf, t.ndarray()                            */

/* np.asarray(t): the whole segment, typed and shaped, through a View
 * the end of the txn invalidates like any other. */
static int
Txn_getbuffer(TxnObject *self, Py_buffer *view, int flags)
{
    HandleObject *h = HANDLE(self);
    view->obj = NULL;
    if (txn_check_usable(&self->base) < 0) {
        return -1;
    }
    PyObject *v = track_view(self, slots_view(h, TXN(self), 0, h->shape[0],
                                              0));
    if (v == NULL) {
        return -1;
    }
    /* np.ndarray(buffer=t) keeps a pointer and this txn (hence the
     * handle) but no export: close() must then keep the mapping.  (The
     * txn is open, so the handle is: close() refuses meanwhile.) */
    HANDLE_LOCK(h);
    h->exported_directly = 1;
    HANDLE_UNLOCK(h);
    int rc = view_getbuffer((ViewObject *)v, view, flags);
    Py_DECREF(v); /* the txn's list and the buffer keep it */
    return rc;
}

/* t.buf: the data region as bytes, valid inside the transaction. */
static PyObject *
Txn_get_buf(TxnObject *self, void *closure)
{
    HandleObject *h = HANDLE(self);
    if (txn_check_usable(&self->base) < 0) {
        return NULL;
    }
    if (self->buf == NULL) {
        PyObject *view = track_view(self, slots_view(h, TXN(self), 0,
                                                     h->shape[0], 1));
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
row_range(HandleObject *h, PyObject *start_arg, PyObject *stop_arg,
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
        PySlice_AdjustIndices(h->shape[0], start, stop, 1);
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
    HandleObject *h = HANDLE(self);
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:ndarray", kwlist,
                                     &start_arg, &stop_arg)
        || txn_check_usable(&self->base) < 0
        || row_range(h, start_arg, stop_arg, &start, &stop) < 0) {
        return NULL;
    }
    PyObject *view = track_view(self, slots_view(h, TXN(self), start,
                                                 stop - start, 0));
    PyObject *array = view ? view_to_ndarray(h->st, view) : NULL;
    Py_XDECREF(view);
    return array;
}

static PyMethodDef Txn_methods[] = {
    TXN_BASE_METHODS,
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
    TXN_BASE_GETSET,
    {"buf", (getter)Txn_get_buf, NULL,
     "memoryview of the data region, valid inside the transaction", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Txn_slots[] = {
    {Py_tp_doc, "A transaction on a SharedMemory segment; use with `with`."},
    {Py_tp_dealloc, Txn_dealloc},
    {Py_tp_traverse, Txn_traverse},
    {Py_tp_repr, TxnBase_repr},
    {Py_mp_length, Txn_length},
    {Py_mp_subscript, Txn_subscript},
    {Py_mp_ass_subscript, Txn_ass_subscript},
    {Py_bf_getbuffer, Txn_getbuffer},
    {Py_tp_iter, Txn_iter},
    {Py_tp_methods, Txn_methods},
    {Py_tp_getset, Txn_getset},
    {0, NULL},
};

PyType_Spec Txn_spec = {
    .name = "shmtxn._core.Txn",
    .basicsize = sizeof(TxnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Txn_slots,
};
