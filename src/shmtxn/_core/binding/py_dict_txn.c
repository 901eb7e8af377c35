/*
 * py_dict_txn.c -- shmtxn._core.DictTxn: the mapping `with d.txn() as t`
 * binds, a TxnBase (txn.c) over a dict segment.  Every method works on the
 * segment under the txn's lock (dict_ops.c); the changes commit together
 * when the block ends, or roll back on an exception, abort(), or the
 * process dying.  An engine error in a write (SegmentFullError,
 * TransactionTooLarge) rolls the whole txn back at once.
 *
 * shmtxn.dict registers a Python subclass (adding the MutableMapping
 * methods pop, setdefault, update, keys, items, ...) whose instances
 * d.txn() returns; the per-key operations are here.
 */
#include "binding.h"

#define TXN(self) (&(self)->base.txn)
#define DICT(self) ((DictObject *)(self)->base.handle)

/* Before the txn ends: settle the blocks it freed. */
static int
DictTxn_finish(TxnBase *base, int commit)
{
    DictTxnObject *self = (DictTxnObject *)base;
    return dict_txn_finish(DICT(self), &self->dt, commit);
}

/* Being freed: forget the blocks it freed (the txn rolls back). */
static void
DictTxn_release(TxnBase *base)
{
    stx_dict_txn_reset(&((DictTxnObject *)base)->dt);
}

static const txn_kind dict_txn_kind = {
    .what = "SharedDict",
    .finish = DictTxn_finish,
    .release = DictTxn_release,
};

PyObject *
dict_txn_new(DictObject *d, int write, double timeout)
{
    PyTypeObject *cls = __atomic_load_n(&d->h.st->dict_txn_class,
                                        __ATOMIC_ACQUIRE);
    DictTxnObject *self = (DictTxnObject *)cls->tp_alloc(cls, 0);
    if (self == NULL) {
        return NULL;
    }
    txn_base_init(&self->base, &d->h, write, timeout, &dict_txn_kind);
    self->dt.txn = TXN(self);
    return (PyObject *)self;
}

static void
DictTxn_dealloc(DictTxnObject *self)
{
    txn_base_clear(&self->base);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

/* ------------------------------------------------------------------ */
/* mapping (dict_ops.c)                                                */

/* t[key] / t.get(): the value; NULL with *missing (no exception) if
 * absent. */
static PyObject *
lookup(DictTxnObject *self, PyObject *key, int want_value, int *missing)
{
    *missing = 0;
    if (txn_check_usable(&self->base) < 0) {
        return NULL;
    }
    return dict_get(DICT(self), key, TXN(self), want_value, missing);
}

static PyObject *
DictTxn_subscript(DictTxnObject *self, PyObject *key)
{
    int missing;
    PyObject *v = lookup(self, key, 1, &missing);
    if (v == NULL && missing) {
        raise_key_error(key);
    }
    return v;
}

static int
DictTxn_contains(DictTxnObject *self, PyObject *key)
{
    int missing;
    PyObject *v = lookup(self, key, 0, &missing);
    Py_XDECREF(v);
    return v != NULL ? 1 : missing ? 0 : -1;
}

static PyObject *
DictTxn_get(DictTxnObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_positional("get", nargs, 1, 2)) {
        return NULL;
    }
    int missing;
    PyObject *v = lookup(self, args[0], 1, &missing);
    if (v == NULL && missing) {
        return Py_NewRef(nargs > 1 ? args[1] : Py_None);
    }
    return v;
}

/* Store or (value == NULL) delete one key inside the txn. */
static int
DictTxn_ass_subscript(DictTxnObject *self, PyObject *key, PyObject *value)
{
    if (txn_check_usable(&self->base) < 0) {
        return -1;
    }
    return dict_set(DICT(self), key, value, &self->dt);
}

static Py_ssize_t
DictTxn_length(DictTxnObject *self)
{
    if (txn_check_usable(&self->base) < 0) {
        return -1;
    }
    return dict_len(DICT(self), TXN(self));
}

/* Iteration walks a snapshot of the keys, so changing the dict inside
 * the loop is allowed (unlike a dict's). */
static PyObject *
DictTxn_iter(DictTxnObject *self)
{
    PyObject *keys = txn_check_usable(&self->base) < 0
                     ? NULL : dict_snapshot(DICT(self), 0, TXN(self));
    PyObject *it = keys ? PyObject_GetIter(keys) : NULL;
    Py_XDECREF(keys);
    return it;
}

static PyObject *
DictTxn_snapshot(DictTxnObject *self, PyObject *arg)
{
    int what = PyLong_AsLong(arg);
    if ((what == -1 && PyErr_Occurred())
        || txn_check_usable(&self->base) < 0) {
        return NULL;
    }
    return dict_snapshot(DICT(self), what, TXN(self));
}

/* t.get_many(keys, default=None): many keys, read inside this txn. */
static PyObject *
DictTxn_get_many(DictTxnObject *self, PyObject *args, PyObject *kwds)
{
    return txn_check_usable(&self->base) < 0
           ? NULL : dict_get_many_call(DICT(self), args, kwds, TXN(self));
}

static PyObject *
DictTxn_clear(DictTxnObject *self, PyObject *unused)
{
    if (txn_check_usable(&self->base) < 0
        || dict_clear(DICT(self), &self->dt) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef DictTxn_methods[] = {
    TXN_BASE_METHODS,
    {"get", (PyCFunction)(void (*)(void))DictTxn_get, METH_FASTCALL,
     "get(key, default=None)"},
    {"get_many", (PyCFunction)(void (*)(void))DictTxn_get_many,
     METH_VARARGS | METH_KEYWORDS, "get_many(keys, default=None) -> list of the values "
     "of keys (default for absent ones)"},
    {"clear", (PyCFunction)DictTxn_clear, METH_NOARGS, "Delete every key."},
    {"_snapshot", (PyCFunction)DictTxn_snapshot, METH_O,
     "_snapshot(what) -> list of keys (0), values (1) or items (2)"},
    /* generic in the key and value types, for type checkers (the
     * subclasses in dict.py subscript it) */
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS,
     "See PEP 585."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef DictTxn_getset[] = {
    TXN_BASE_GETSET,
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot DictTxn_slots[] = {
    {Py_tp_doc, "A transaction on a SharedDict; use with `with`."},
    {Py_tp_dealloc, DictTxn_dealloc},
    {Py_tp_traverse, txn_base_traverse},
    {Py_tp_repr, TxnBase_repr},
    {Py_mp_length, DictTxn_length},
    {Py_mp_subscript, DictTxn_subscript},
    {Py_mp_ass_subscript, DictTxn_ass_subscript},
    {Py_sq_contains, DictTxn_contains},
    {Py_tp_iter, DictTxn_iter},
    {Py_tp_methods, DictTxn_methods},
    {Py_tp_getset, DictTxn_getset},
    {0, NULL},
};

/* shmtxn.dict subclasses it. */
PyType_Spec DictTxn_spec = {
    .name = "shmtxn._core.DictTxn",
    .basicsize = sizeof(DictTxnObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = DictTxn_slots,
};
