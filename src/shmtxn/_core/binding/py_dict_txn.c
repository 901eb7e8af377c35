/*
 * py_dict_txn.c -- shmtxn._core.DictTxn: the mapping `with d.txn() as t`
 * binds.  Every method works on the segment under the txn's lock; the
 * changes commit together when the block ends, or roll back on an
 * exception, abort(), or the process dying.  An engine error in a write
 * (SegmentFullError, TransactionTooLarge) rolls the whole txn back at once.
 *
 * shmtxn.dict registers a Python subclass (adding the MutableMapping
 * methods pop, setdefault, update, keys, items, ...) whose instances
 * d.txn() returns; the per-key operations are here.
 */
#include "binding.h"

/* The class d.txn() instantiates: DictTxn, or the subclass dict.py
 * registered with _core.set_dict_txn_class(). */
static PyTypeObject *txn_class = &DictTxn_Type;

PyObject *
dict_txn_new(DictObject *d, int write, double timeout)
{
    DictTxnObject *self = (DictTxnObject *)txn_class->tp_alloc(txn_class, 0);
    if (self == NULL) {
        return NULL;
    }
    self->dict = (DictObject *)Py_NewRef(d);
    self->txn.tracked = 1;
    self->txn.logged = self->logged;
    self->dt.txn = &self->txn;
    self->write = write;
    self->timeout = timeout;
    return (PyObject *)self;
}

PyObject *
set_dict_txn_class(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls)
        || !PyType_IsSubtype((PyTypeObject *)cls, &DictTxn_Type)) {
        PyErr_SetString(PyExc_TypeError, "expected a subclass of DictTxn");
        return NULL;
    }
    Py_INCREF(cls);
    if (txn_class != &DictTxn_Type) {
        Py_DECREF(txn_class);
    }
    txn_class = (PyTypeObject *)cls;
    Py_RETURN_NONE;
}

/* -1 with TransactionClosedError (or the fork/thread error) if `self`
 * cannot be used now. */
static int
check_usable(DictTxnObject *self)
{
    int rc = stx_txn_usable(&self->txn);
    if (rc == STX_ECLOSED) {
        raise_named("TransactionClosedError", "this transaction on "
                    "SharedDict '%s' has ended; open a new one with .txn()",
                    self->dict->h.seg.name);
    }
    else if (rc != 0) {
        raise_engine_error(rc, self->dict->h.seg.name);
    }
    return rc == 0 ? 0 : -1;
}

/* check_usable, and a write txn. */
static int
check_writable(DictTxnObject *self)
{
    if (check_usable(self) < 0) {
        return -1;
    }
    if (!self->write) {
        raise_engine_error(STX_EREADONLY, self->dict->h.seg.name);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* life cycle                                                          */

static PyObject *
end_txn(DictTxnObject *self, int commit)
{
    if (check_usable(self) < 0
        || dict_txn_close(self->dict, &self->dt, commit) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
DictTxn_enter(DictTxnObject *self, PyObject *unused)
{
    if (self->entered) {
        raise_named("TransactionClosedError", "a transaction object can be "
                    "entered once; open a new one with .txn()");
        return NULL;
    }
    self->entered = 1;
    if (txn_open(&self->dict->h, &self->txn, self->write, self->timeout)
        < 0) {
        return NULL;
    }
    return Py_NewRef(self);
}

static PyObject *
DictTxn_exit(DictTxnObject *self, PyObject *const *args, Py_ssize_t nargs)
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
DictTxn_commit(DictTxnObject *self, PyObject *unused)
{
    return end_txn(self, 1);
}

static PyObject *
DictTxn_abort(DictTxnObject *self, PyObject *unused)
{
    return end_txn(self, 0);
}

static void
DictTxn_dealloc(DictTxnObject *self)
{
    PyObject_GC_UnTrack(self);
    txn_drop(&self->dict->h, &self->txn);
    stx_dict_txn_reset(&self->dt);
    Py_CLEAR(self->dict);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
DictTxn_traverse(DictTxnObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dict);
    return 0;
}

/* ------------------------------------------------------------------ */
/* mapping                                                             */

/* The value of `key`; NULL with *missing (no exception) if absent. */
static PyObject *
lookup(DictTxnObject *self, PyObject *key, int *missing)
{
    key_buf kb;
    stx_key k;
    *missing = 0;
    if (check_usable(self) < 0 || dict_key(self->dict, key, &kb, &k) < 0) {
        return NULL;
    }
    PyObject *v = dict_read(self->dict, &k, missing);
    key_buf_release(&kb);
    return v;
}

static PyObject *
DictTxn_subscript(DictTxnObject *self, PyObject *key)
{
    int missing;
    PyObject *v = lookup(self, key, &missing);
    if (v == NULL && missing) {
        raise_key_error(key);
    }
    return v;
}

static int
DictTxn_contains(DictTxnObject *self, PyObject *key)
{
    key_buf kb;
    stx_key k;
    stx_found f;
    if (check_usable(self) < 0
        || dict_key(self->dict, key, &kb, &k) < 0) {
        return -1;
    }
    int rc = stx_dict_lookup(&self->dict->h.seg, &k, &f);
    key_buf_release(&kb);
    if (rc != 0 && rc != STX_ENOENT) {
        raise_engine_error(rc, self->dict->h.seg.name);
        return -1;
    }
    return rc == 0;
}

static PyObject *
DictTxn_get(DictTxnObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!_PyArg_CheckPositional("get", nargs, 1, 2)) {
        return NULL;
    }
    int missing;
    PyObject *v = lookup(self, args[0], &missing);
    if (v == NULL && missing) {
        return Py_NewRef(nargs > 1 ? args[1] : Py_None);
    }
    return v;
}

/* Store or (value == NULL) delete one key inside the txn. */
static int
DictTxn_ass_subscript(DictTxnObject *self, PyObject *key, PyObject *value)
{
    key_buf kb;
    stx_key k;
    value_buf vb = {0};
    if (check_writable(self) < 0
        || dict_key(self->dict, key, &kb, &k) < 0) {
        return -1;
    }
    int rc = value ? value_encode(value, &vb) : 0;
    if (rc == 0) {
        stx_value v = {.bytes = vb.bytes, .len = (uint64_t)vb.len,
                       .tag = vb.tag};
        rc = value ? stx_dict_put(&self->dt, &k, &v)
                   : stx_dict_delete(&self->dt, &k);
        if (rc == STX_ENOENT) {
            raise_key_error(key);
            rc = -1;
        }
        else if (rc != 0) {
            rc = dict_write_failed(self->dict, &self->dt, rc);
        }
        value_buf_release(&vb);
    }
    key_buf_release(&kb);
    return rc;
}

static Py_ssize_t
DictTxn_length(DictTxnObject *self)
{
    return check_usable(self) < 0 ? -1 : dict_count(self->dict);
}

/* Iteration walks a snapshot of the keys, so changing the dict inside
 * the loop is allowed (unlike a dict's). */
static PyObject *
DictTxn_iter(DictTxnObject *self)
{
    PyObject *keys = check_usable(self) < 0 ? NULL
                                            : dict_snapshot(self->dict, 0);
    PyObject *it = keys ? PyObject_GetIter(keys) : NULL;
    Py_XDECREF(keys);
    return it;
}

static PyObject *
DictTxn_snapshot(DictTxnObject *self, PyObject *arg)
{
    int what = PyLong_AsLong(arg);
    if ((what == -1 && PyErr_Occurred()) || check_usable(self) < 0) {
        return NULL;
    }
    return dict_snapshot(self->dict, what);
}

static PyObject *
DictTxn_clear(DictTxnObject *self, PyObject *unused)
{
    if (check_writable(self) < 0) {
        return NULL;
    }
    int rc = stx_dict_clear(&self->dt);
    if (rc != 0) {
        dict_write_failed(self->dict, &self->dt, rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
DictTxn_repr(DictTxnObject *self)
{
    const char *state = self->txn.state == STX_TXN_OPEN ? "open"
                        : self->entered ? "ended" : "not entered";
    return PyUnicode_FromFormat("<shmtxn %s txn on SharedDict %R, %s>",
                                self->write ? "write" : "read",
                                self->dict->h.name, state);
}

static PyObject *
DictTxn_get_active(DictTxnObject *self, void *closure)
{
    return PyBool_FromLong(stx_txn_usable(&self->txn) == 0);
}

static PyObject *
DictTxn_get_write(DictTxnObject *self, void *closure)
{
    return PyBool_FromLong(self->write);
}

static PyMethodDef DictTxn_methods[] = {
    {"__enter__", (PyCFunction)DictTxn_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))DictTxn_exit, METH_FASTCALL,
     NULL},
    {"commit", (PyCFunction)DictTxn_commit, METH_NOARGS,
     "Commit now; the transaction cannot be used afterwards."},
    {"abort", (PyCFunction)DictTxn_abort, METH_NOARGS,
     "Roll back every change of this transaction and end it."},
    {"get", (PyCFunction)(void (*)(void))DictTxn_get, METH_FASTCALL,
     "get(key, default=None)"},
    {"clear", (PyCFunction)DictTxn_clear, METH_NOARGS, "Delete every key."},
    {"_snapshot", (PyCFunction)DictTxn_snapshot, METH_O,
     "_snapshot(what) -> list of keys (0), values (1) or items (2)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef DictTxn_getset[] = {
    {"write", (getter)DictTxn_get_write, NULL, "True for a write txn", NULL},
    {"active", (getter)DictTxn_get_active, NULL,
     "True while the transaction is open and usable here", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMappingMethods DictTxn_as_mapping = {
    .mp_length = (lenfunc)DictTxn_length,
    .mp_subscript = (binaryfunc)DictTxn_subscript,
    .mp_ass_subscript = (objobjargproc)DictTxn_ass_subscript,
};

static PySequenceMethods DictTxn_as_sequence = {
    .sq_contains = (objobjproc)DictTxn_contains,
};

PyTypeObject DictTxn_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmtxn._core.DictTxn",
    .tp_basicsize = sizeof(DictTxnObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A transaction on a SharedDict; use with `with`.",
    .tp_dealloc = (destructor)DictTxn_dealloc,
    .tp_traverse = (traverseproc)DictTxn_traverse,
    .tp_repr = (reprfunc)DictTxn_repr,
    .tp_as_mapping = &DictTxn_as_mapping,
    .tp_as_sequence = &DictTxn_as_sequence,
    .tp_iter = (getiterfunc)DictTxn_iter,
    .tp_methods = DictTxn_methods,
    .tp_getset = DictTxn_getset,
};
