/*
 * py_dict.c -- shmtxn._core.Dict: a handle on a dict segment, with
 * lock-free lookups and auto-committed single operations (dict_ops.c).
 * The Python class shmtxn.SharedDict subclasses it (dict.py) with the rest
 * of the MutableMapping methods, pickling and repr; what runs per key is
 * in C.
 */
#include "binding.h"

/* Longest attach wait for a creator still initialising (seconds). */
#define ATTACH_WAIT_DEFAULT 5.0

/* ------------------------------------------------------------------ */
/* creation and attachment                                             */

/* Dict(name=None, create=False, size=0, *, read_only, undo_size,
 * max_processes, timeout, mode): dict.py's SharedDict.__init__ shows
 * them with their defaults.  a->size stays 0 when not given (the caller
 * picks the default cap for creating): an attacher then accepts any. */
static int
parse_open_args(PyObject *args, PyObject *kwds, open_args *a)
{
    static char *kwlist[] = {"name", "create", "size", "read_only",
                             "undo_size", "max_processes", "timeout",
                             "mode", NULL};
    PyObject *create_arg = NULL, *timeout_arg = NULL;
    a->mode = 0600;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "|zOn$pniOi", kwlist, &a->name, &create_arg,
            &a->size, &a->read_only, &a->undo_size, &a->max_processes,
            &timeout_arg, &a->mode)
        || handle_parse_create(create_arg, a) < 0
        || handle_parse_timeout(timeout_arg, ATTACH_WAIT_DEFAULT,
                                &a->timeout) < 0
        || handle_check_args(a) < 0) {
        return -1;
    }
    return 0;
}

/* After opening: the dict region must be sound.  When the handle
 * attached, a size= given (the cap) must be the stored one, and with
 * create=None so must max_processes= and undo_size=. */
static int
adopt_dict(DictObject *self, const open_args *a)
{
    HandleObject *h = &self->h;
    stx_header *hdr = h->seg.hdr;
    if (!h->created && a->size != 0 && (uint64_t)a->size != hdr->data_size) {
        raise_error(h->st, STX_EINCOMPAT, "SharedDict '%s' has a size cap "
                    "of %llu bytes, not %zd; pass size=%llu or size=0 (to "
                    "accept its cap)%s", h->seg.name,
                    (unsigned long long)hdr->data_size, a->size,
                    (unsigned long long)hdr->data_size,
                    a->create == OPEN_EITHER ? ", or use another name" : "");
        return -1;
    }
    if (!h->created && a->create == OPEN_EITHER
        && handle_check_either(h, a) < 0) {
        return -1;
    }
    uint64_t count;
    int rc = stx_dict_count(&h->seg, &count);
    if (rc != 0) {
        return handle_error(h, rc);
    }
    memcpy(self->hash_key, hdr->hash_key, sizeof(self->hash_key));
    h->fmt = item_format_find("B");
    h->nitems = (Py_ssize_t)h->seg.data_size;
    h->ndim = 1;
    h->shape[0] = h->nitems;
    h->strides[0] = 1;
    h->format[0] = 'B';
    return 0;
}

static int
Dict_init(DictObject *self, PyObject *args, PyObject *kwds)
{
    open_args a = {0};
    if (parse_open_args(args, kwds, &a) < 0) {
        return -1;
    }
    uint64_t cap = a.size != 0 || a.create == OPEN_ATTACH
                   ? (uint64_t)a.size : stx_dict_default_size();
    stx_create_opts opts = {
        .layout = &stx_dict_layout, .data_size = cap,
        .undo_size = (uint64_t)a.undo_size,
        .nslots = (uint32_t)a.max_processes, .format = "B", .itemsize = 1,
        .ndim = 1, .shape = &cap, .mode = (unsigned)a.mode};
    if (handle_open(&self->h, &a, &opts) < 0) {
        return -1;
    }
    return handle_publish(&self->h, adopt_dict(self, &a) == 0);
}

/* ------------------------------------------------------------------ */
/* the mapping (dict_ops.c), txn()                                     */

static PyObject *
Dict_subscript(DictObject *self, PyObject *key)
{
    int missing;
    PyObject *v = dict_get(self, key, NULL, 1, &missing);
    if (v == NULL && missing) {
        raise_key_error(key);
    }
    return v;
}

static int
Dict_contains(DictObject *self, PyObject *key)
{
    int missing;
    PyObject *v = dict_get(self, key, NULL, 0, &missing);
    Py_XDECREF(v);
    return v != NULL ? 1 : missing ? 0 : -1;
}

static PyObject *
Dict_get(DictObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!check_positional("get", nargs, 1, 2)) {
        return NULL;
    }
    int missing;
    PyObject *v = dict_get(self, args[0], NULL, 1, &missing);
    if (v == NULL && missing) {
        return Py_NewRef(nargs > 1 ? args[1] : Py_None);
    }
    return v;
}

/* get_many(keys, default=None): one consistent snapshot of many keys. */
static PyObject *
Dict_get_many(DictObject *self, PyObject *args, PyObject *kwds)
{
    return dict_get_many_call(self, args, kwds, NULL);
}

static Py_ssize_t
Dict_length(DictObject *self)
{
    return dict_len(self, NULL);
}

/* _snapshot(what): keys (0), values (1) or items (2), under one read txn. */
static PyObject *
Dict_snapshot(DictObject *self, PyObject *arg)
{
    int what = PyLong_AsLong(arg);
    if (what == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return dict_snapshot(self, what, NULL);
}

/* Iterating outside a txn walks a snapshot of the keys: it never raises
 * because another process changed the dict, and never sees a torn key. */
static PyObject *
Dict_iter(DictObject *self)
{
    PyObject *keys = dict_snapshot(self, 0, NULL);
    PyObject *it = keys ? PyObject_GetIter(keys) : NULL;
    Py_XDECREF(keys);
    return it;
}

static int
Dict_ass_subscript(DictObject *self, PyObject *key, PyObject *value)
{
    return dict_set(self, key, value, NULL);
}

static PyObject *
Dict_clear(DictObject *self, PyObject *unused)
{
    if (dict_clear(self, NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* d.txn(write=None, timeout=None, *, until=None): a new txn object, not
 * yet entered (with `until`, a context manager that waits for it). */
static PyObject *
Dict_txn(DictObject *self, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames)
{
    int write;
    double timeout;
    PyObject *until;
    if (txn_parse_args(&self->h, args, nargs, kwnames, &write, &timeout,
                       &until) < 0) {
        return NULL;
    }
    if (until != NULL) {
        return txn_until(&self->h, until, write, timeout);
    }
    return dict_txn_new(self, write, timeout);
}

/* ------------------------------------------------------------------ */
/* stats(), verify()                                                   */

/* stats(): count, table and heap numbers, read in one read txn. */
static PyObject *
Dict_stats(DictObject *self, PyObject *unused)
{
    stx_txn txn = {0};
    stx_dict_stats s;
    if (own_open(&self->h, &txn, 0, 0) < 0) {
        return NULL;
    }
    int rc = stx_dict_stats_get(&self->h.seg, &s);
    if (own_close(&self->h, &txn, 1) < 0) {
        return NULL;
    }
    if (rc != 0) {
        handle_error(&self->h, rc);
        return NULL;
    }
    uint64_t used = s.heap_top;
    double frag = used ? (double)s.free_bytes / (double)used : 0.0;
    return Py_BuildValue(
        "{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:d,s:K}", "count", s.count,
        "table_capacity", s.entries_cap, "index_slots", s.index_cap,
        "entries_used", s.entries_used, "heap_size", s.heap_size,
        "heap_used", s.heap_top, "heap_reserved", s.heap_reserved,
        "live_bytes", s.live_bytes, "free_bytes", s.free_bytes,
        "fragmentation", frag, "rebuilds", s.rebuilds);
}

/* verify(): walk the whole table and heap; CorruptSegmentError if bad. */
static PyObject *
Dict_verify(DictObject *self, PyObject *unused)
{
    stx_txn txn = {0};
    if (own_open(&self->h, &txn, 0, 0) < 0) {
        return NULL;
    }
    int rc = stx_dict_verify(&self->h.seg);
    if (own_close(&self->h, &txn, 1) < 0) {
        return NULL;
    }
    if (rc != 0) {
        handle_error(&self->h, rc);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Dict_methods[] = {
    {"get_many", (PyCFunction)(void (*)(void))Dict_get_many,
     METH_VARARGS | METH_KEYWORDS,
     "get_many(keys, default=None) -> list: the values of keys (default "
     "for absent ones), all read in one consistent snapshot"},
    {"get", (PyCFunction)(void (*)(void))Dict_get, METH_FASTCALL,
     "get(key, default=None)"},
    {"clear", (PyCFunction)Dict_clear, METH_NOARGS,
     "Delete every key, atomically."},
    {"txn", (PyCFunction)(void (*)(void))Dict_txn,
     METH_FASTCALL | METH_KEYWORDS,
     "txn($self, /, write=None, timeout=None, *, until=None)\n--\n\n"
     "A transaction to use with `with`.  until=pred: open it once "
     "pred(txn) holds, re-checked after each commit; the body runs in the "
     "snapshot pred saw."},
    {"stats", (PyCFunction)Dict_stats, METH_NOARGS,
     "count, table capacity, heap used/free and fragmentation, as a dict"},
    {"verify", (PyCFunction)Dict_verify, METH_NOARGS,
     "Check the whole table and heap; CorruptSegmentError if damaged."},
    {"_snapshot", (PyCFunction)Dict_snapshot, METH_O,
     "_snapshot(what) -> list of keys (0), values (1) or items (2)"},
    /* generic in the key and value types, for type checkers (the
     * subclasses in dict.py subscript it) */
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS,
     "See PEP 585."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Dict_slots[] = {
    {Py_tp_doc, "A handle on a shared dict segment."},
    {Py_tp_new, handle_new},
    {Py_tp_init, Dict_init},
    {Py_mp_length, Dict_length},
    {Py_mp_subscript, Dict_subscript},
    {Py_mp_ass_subscript, Dict_ass_subscript},
    {Py_sq_contains, Dict_contains},
    {Py_tp_iter, Dict_iter},
    {Py_tp_methods, Dict_methods},
    {0, NULL},
};

/* A subclass of Segment (module.c passes the base). */
PyType_Spec Dict_spec = {
    .name = "shmtxn._core.Dict",
    .basicsize = sizeof(DictObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Dict_slots,
};
