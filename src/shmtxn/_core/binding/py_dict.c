/*
 * py_dict.c -- shmtxn._core.Dict: a handle on a dict segment, with
 * lock-free lookups and auto-committed single operations.  The Python
 * class shmtxn.SharedDict subclasses it (dict.py) with the rest of the
 * MutableMapping methods, pickling and repr; what runs per key is here.
 *
 * Lookups outside a txn run under the seqlock: encode and hash the key,
 * probe the table and decode the value while a writer may be changing it,
 * then keep the result only if `seq` did not move (a pickled value is
 * unpickled only after that check).  After STX_SEQLOCK_TRIES torn
 * attempts, or while a writer holds the segment, they take a read txn.
 */
#include "binding.h"
#include "seqlock.h"

/* Longest attach wait for a creator still initialising (seconds). */
#define ATTACH_WAIT_DEFAULT 5.0
/* The size of a SharedDict created without size=: address space only;
 * pages are reserved as the heap grows. */
#define DEFAULT_DICT_SIZE (64 << 20)

int
dict_key(DictObject *d, PyObject *key, key_buf *kb, stx_key *k)
{
    if (key_encode(key, kb) < 0) {
        return -1;
    }
    if (kb->len > UINT32_MAX) {
        key_buf_release(kb);
        PyErr_SetString(PyExc_ValueError, "a SharedDict key encodes to at "
                        "most 4 GiB");
        return -1;
    }
    k->bytes = kb->bytes;
    k->len = (uint32_t)kb->len;
    k->kind = kb->kind;
    k->hash = stx_siphash13(d->hash_key, kb->bytes, (size_t)kb->len);
    return 0;
}

/* The value of a found record, unpickled: the record is committed. */
static PyObject *
found_value(const stx_found *f)
{
    int pickled;
    PyObject *v = value_decode(f->value_tag, f->value, f->value_len,
                               &pickled);
    if (v != NULL && pickled) {
        Py_SETREF(v, value_unpickle(v));
    }
    return v;
}

PyObject *
dict_read(DictObject *d, const stx_key *k, int *missing)
{
    stx_found f;
    int rc = stx_dict_lookup(&d->h.seg, k, &f);
    *missing = rc == STX_ENOENT;
    if (rc == 0) {
        return found_value(&f);
    }
    if (rc != STX_ENOENT) {
        raise_engine_error(rc, d->h.seg.name);
    }
    return NULL;
}

/* One decoded item of the snapshot: a key, a value or a pair. */
static PyObject *
snapshot_item(const stx_found *f, int what)
{
    if (what == 1) {
        return found_value(f);
    }
    PyObject *key = key_decode(f->key, f->key_len, f->key_kind);
    if (key == NULL || what == 0) {
        return key;
    }
    PyObject *value = found_value(f);
    PyObject *pair = value ? PyTuple_Pack(2, key, value) : NULL;
    Py_DECREF(key);
    Py_XDECREF(value);
    return pair;
}

PyObject *
dict_snapshot(DictObject *d, int what)
{
    PyObject *list = PyList_New(0);
    uint64_t pos = 0;
    stx_found f;
    int rc;
    while (list != NULL && (rc = stx_dict_next(&d->h.seg, &pos, &f)) == 0) {
        PyObject *item = snapshot_item(&f, what);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_CLEAR(list);
        }
        Py_XDECREF(item);
    }
    if (list != NULL && rc != STX_ENOENT) {
        raise_engine_error(rc, d->h.seg.name);
        Py_CLEAR(list);
    }
    return list;
}

Py_ssize_t
dict_count(DictObject *d)
{
    uint64_t count;
    int rc = stx_dict_count(&d->h.seg, &count);
    if (rc != 0) {
        raise_engine_error(rc, d->h.seg.name);
        return -1;
    }
    return (Py_ssize_t)count;
}

int
dict_write_failed(DictObject *d, stx_dict_txn *dt, int code)
{
    stx_dict_txn_reset(dt);
    return txn_write_failed(&d->h, dt->txn, code);
}

int
dict_txn_close(DictObject *d, stx_dict_txn *dt, int commit)
{
    int rc = commit && dt->txn->write ? stx_dict_flush(dt) : 0;
    stx_dict_txn_reset(dt);
    if (rc != 0) {
        return dict_write_failed(d, dt, rc);
    }
    return txn_close(&d->h, dt->txn, commit);
}

/* ------------------------------------------------------------------ */
/* creation and attachment                                             */

static int
parse_open_args(PyObject *args, PyObject *kwds, open_args *a)
{
    static char *kwlist[] = {"name", "create", "size", "read_only",
                             "undo_size", "max_processes", "timeout",
                             "mode", NULL};
    PyObject *timeout_arg = NULL;
    a->mode = 0600;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "|zpn$pniOi", kwlist, &a->name, &a->create,
            &a->size, &a->read_only, &a->undo_size, &a->max_processes,
            &timeout_arg, &a->mode)
        || handle_parse_timeout(timeout_arg, ATTACH_WAIT_DEFAULT,
                                &a->timeout) < 0
        || handle_check_args(a) < 0) {
        return -1;
    }
    if (a->create && a->size == 0) {
        a->size = DEFAULT_DICT_SIZE;
    }
    return 0;
}

/* After opening: the dict region must be sound, and an attacher's size=
 * (if given) the stored one. */
static int
adopt_dict(DictObject *self, const open_args *a)
{
    HandleObject *h = &self->h;
    stx_header *hdr = h->seg.hdr;
    if (!a->create && a->size != 0 && (uint64_t)a->size != hdr->data_size) {
        raise_named("IncompatibleSegmentError", "SharedDict '%s' has %llu "
                    "bytes, not %zd; pass size=0 to accept its size",
                    h->seg.name, (unsigned long long)hdr->data_size,
                    a->size);
        return -1;
    }
    uint64_t count;
    int rc = stx_dict_count(&h->seg, &count);
    if (rc != 0) {
        raise_engine_error(rc, h->seg.name);
        return -1;
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
    stx_create_opts opts = {
        .layout = &stx_dict_layout, .data_size = (uint64_t)a.size,
        .undo_size = (uint64_t)a.undo_size,
        .nslots = (uint32_t)a.max_processes, .format = "B", .itemsize = 1,
        .ndim = 1, .shape = (const uint64_t[]){(uint64_t)a.size},
        .mode = (unsigned)a.mode};
    if (handle_open(&self->h, &a, &opts) < 0) {
        return -1;
    }
    if (adopt_dict(self, &a) < 0) {
        stx_close(&self->h.seg);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* lookups                                                             */

/* The value of the record `f` found lock-free under `seq`: its bytes are
 * copied out with relaxed loads, and decoded only once `seq` proves they
 * were committed.  NULL without an exception if the copy was torn. */
static PyObject *
copy_value_out(const stx_segment *seg, const stx_found *f, uint64_t seq,
               int *pickled)
{
    uint8_t stack[256];
    uint8_t *copy = f->value_len <= sizeof(stack)
                    ? stack : PyMem_Malloc(f->value_len ? f->value_len : 1);
    if (copy == NULL) {
        return PyErr_NoMemory();
    }
    stx_load_relaxed(copy, f->value, f->value_len);
    PyObject *v = NULL;
    if (stx_seq_still(seg, seq)) {
        v = value_decode(f->value_tag, copy, f->value_len, pickled);
    }
    if (copy != stack) {
        PyMem_Free(copy);
    }
    return v;
}

/* The lock-free lookup: the value (or Py_True when !want_value); NULL
 * with *missing (absent), with an exception, or with neither when every
 * attempt was torn -- then take a read txn. */
static PyObject *
seqlock_lookup(DictObject *self, const stx_key *k, int want_value,
               int *missing)
{
    stx_segment *seg = &self->h.seg;
    for (int attempt = 0; attempt < STX_SEQLOCK_TRIES; attempt++) {
        uint64_t seq;
        if (stx_seq_begin(seg, &seq) != 0) {
            continue;
        }
        stx_found f;
        int pickled = 0;
        int rc = stx_dict_lookup(seg, k, &f);
        /* the record's tag and length must be committed ones before they
         * size an allocation: check, copy the bytes out (relaxed loads:
         * a writer may be changing them), check again, then decode the
         * private copy */
        if (!stx_seq_still(seg, seq)) {
            continue;
        }
        PyObject *v = NULL;
        if (rc == 0 && want_value) {
            v = copy_value_out(seg, &f, seq, &pickled);
            if (v == NULL && !PyErr_Occurred()) {
                continue; /* torn: try again */
            }
        }
        else if (rc == 0) {
            v = Py_NewRef(Py_True);
        }
        *missing = rc == STX_ENOENT;
        if (rc != 0 && rc != STX_ENOENT) {
            raise_engine_error(rc, seg->name);
        }
        if (v != NULL && pickled) {
            Py_SETREF(v, value_unpickle(v));
        }
        return v;
    }
    return NULL;
}

/* The lookup in a read txn (the seqlock saw a writer): like
 * seqlock_lookup, but waits for the writer, or recovers a dead one. */
static PyObject *
locked_lookup(DictObject *self, const stx_key *k, int want_value,
              int *missing)
{
    stx_txn txn = {0};
    if (txn_open(&self->h, &txn, 0, -1) < 0) {
        return NULL;
    }
    PyObject *v = dict_read(self, k, missing);
    if (v != NULL && !want_value) {
        Py_SETREF(v, Py_NewRef(Py_True));
    }
    if (txn_close(&self->h, &txn, 1) < 0) {
        Py_CLEAR(v);
    }
    return v;
}

/* Look `key` up outside a txn: lock-free when possible. */
static PyObject *
auto_lookup(DictObject *self, PyObject *key, int want_value, int *missing)
{
    key_buf kb;
    stx_key k;
    *missing = 0;
    if (handle_check_open(&self->h) < 0 || dict_key(self, key, &kb, &k) < 0) {
        return NULL;
    }
    PyObject *v = NULL;
    if (self->h.seg.file->ntxn == 0) {
        v = seqlock_lookup(self, &k, want_value, missing);
    }
    if (v == NULL && !*missing && !PyErr_Occurred()) {
        v = locked_lookup(self, &k, want_value, missing);
    }
    key_buf_release(&kb);
    return v;
}

static PyObject *
Dict_subscript(DictObject *self, PyObject *key)
{
    int missing;
    PyObject *v = auto_lookup(self, key, 1, &missing);
    if (v == NULL && missing) {
        raise_key_error(key);
    }
    return v;
}

static int
Dict_contains(DictObject *self, PyObject *key)
{
    int missing;
    PyObject *v = auto_lookup(self, key, 0, &missing);
    Py_XDECREF(v);
    return v != NULL ? 1 : missing ? 0 : -1;
}

static PyObject *
Dict_get(DictObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (!_PyArg_CheckPositional("get", nargs, 1, 2)) {
        return NULL;
    }
    int missing;
    PyObject *v = auto_lookup(self, args[0], 1, &missing);
    if (v == NULL && missing) {
        return Py_NewRef(nargs > 1 ? args[1] : Py_None);
    }
    return v;
}

/* len() lock-free: the count is one word of the dict header. */
static Py_ssize_t
Dict_length(DictObject *self)
{
    if (handle_check_open(&self->h) < 0) {
        return -1;
    }
    for (int attempt = 0; self->h.seg.file->ntxn == 0
                          && attempt < STX_SEQLOCK_TRIES; attempt++) {
        uint64_t seq, count;
        if (stx_seq_begin(&self->h.seg, &seq) == 0
            && stx_dict_count(&self->h.seg, &count) == 0
            && stx_seq_still(&self->h.seg, seq)) {
            return (Py_ssize_t)count;
        }
    }
    stx_txn txn = {0};
    if (txn_open(&self->h, &txn, 0, -1) < 0) {
        return -1;
    }
    Py_ssize_t n = dict_count(self);
    return txn_close(&self->h, &txn, 1) < 0 ? -1 : n;
}

/* _snapshot(what): keys (0), values (1) or items (2), under one read txn. */
static PyObject *
Dict_snapshot(DictObject *self, PyObject *arg)
{
    int what = PyLong_AsLong(arg);
    if (what == -1 && PyErr_Occurred()) {
        return NULL;
    }
    stx_txn txn = {0};
    if (txn_open(&self->h, &txn, 0, -1) < 0) {
        return NULL;
    }
    PyObject *list = dict_snapshot(self, what);
    if (txn_close(&self->h, &txn, 1) < 0) {
        Py_CLEAR(list);
    }
    return list;
}

/* Iterating outside a txn walks a snapshot of the keys: it never raises
 * because another process changed the dict, and never sees a torn key. */
static PyObject *
Dict_iter(DictObject *self)
{
    PyObject *zero = PyLong_FromLong(0);
    PyObject *keys = zero ? Dict_snapshot(self, zero) : NULL;
    Py_XDECREF(zero);
    PyObject *it = keys ? PyObject_GetIter(keys) : NULL;
    Py_XDECREF(keys);
    return it;
}

/* ------------------------------------------------------------------ */
/* auto-committed writes                                               */

/* Which auto-committed write to make. */
enum auto_op { OP_PUT, OP_DELETE, OP_CLEAR };

/* One write in its own txn: encoded first (a bad key or unpicklable value
 * raises before anything is locked), committed or rolled back whole. */
static int
auto_write(DictObject *self, enum auto_op op, const stx_key *k,
           const stx_value *v)
{
    stx_txn txn = {0};
    stx_dict_txn dt = {.txn = &txn};
    if (txn_open(&self->h, &txn, 1, -1) < 0) {
        return -1;
    }
    int rc = op == OP_PUT ? stx_dict_put(&dt, k, v)
             : op == OP_DELETE ? stx_dict_delete(&dt, k)
                               : stx_dict_clear(&dt);
    if (rc == STX_ENOENT) {
        return txn_close(&self->h, &txn, 0) < 0 ? -1 : 1;
    }
    if (rc != 0) {
        stx_dict_txn_reset(&dt);
        raise_engine_error(rc, self->h.seg.name);
        txn_close(&self->h, &txn, 0); /* roll back: nothing changes */
        return -1;
    }
    return dict_txn_close(self, &dt, 1);
}

static int
Dict_ass_subscript(DictObject *self, PyObject *key, PyObject *value)
{
    key_buf kb;
    stx_key k;
    value_buf vb = {0};
    if (handle_check_open(&self->h) < 0 || dict_key(self, key, &kb, &k) < 0) {
        return -1;
    }
    int rc;
    if (value == NULL) {
        rc = auto_write(self, OP_DELETE, &k, NULL);
        if (rc == 1) {
            raise_key_error(key);
            rc = -1;
        }
    }
    else if ((rc = value_encode(value, &vb)) == 0) {
        stx_value v = {.bytes = vb.bytes, .len = (uint64_t)vb.len,
                       .tag = vb.tag};
        rc = auto_write(self, OP_PUT, &k, &v);
        value_buf_release(&vb);
    }
    key_buf_release(&kb);
    return rc;
}

static PyObject *
Dict_clear(DictObject *self, PyObject *unused)
{
    if (handle_check_open(&self->h) < 0
        || auto_write(self, OP_CLEAR, NULL, NULL) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ */
/* txn(), stats()                                                      */

static PyObject *
Dict_txn(DictObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"write", "timeout", NULL};
    PyObject *write_arg = Py_None, *timeout_arg = Py_None;
    double timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO", kwlist, &write_arg,
                                     &timeout_arg)
        || handle_check_open(&self->h) < 0
        || handle_parse_timeout(timeout_arg, -1.0, &timeout) < 0) {
        return NULL;
    }
    int write = !self->h.seg.read_only;
    if (write_arg != Py_None && (write = PyObject_IsTrue(write_arg)) < 0) {
        return NULL;
    }
    if (write && self->h.seg.read_only) {
        raise_engine_error(STX_EREADONLY, self->h.seg.name);
        return NULL;
    }
    return dict_txn_new(self, write, timeout);
}

/* stats(): count, table and heap numbers, read in one read txn. */
static PyObject *
Dict_stats(DictObject *self, PyObject *unused)
{
    stx_txn txn = {0};
    stx_dict_stats s;
    if (txn_open(&self->h, &txn, 0, -1) < 0) {
        return NULL;
    }
    int rc = stx_dict_stats_get(&self->h.seg, &s);
    if (txn_close(&self->h, &txn, 1) < 0) {
        return NULL;
    }
    if (rc != 0) {
        raise_engine_error(rc, self->h.seg.name);
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
    if (txn_open(&self->h, &txn, 0, -1) < 0) {
        return NULL;
    }
    int rc = stx_dict_verify(&self->h.seg);
    if (txn_close(&self->h, &txn, 1) < 0) {
        return NULL;
    }
    if (rc != 0) {
        raise_engine_error(rc, self->h.seg.name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef Dict_methods[] = {
    {"get", (PyCFunction)(void (*)(void))Dict_get, METH_FASTCALL,
     "get(key, default=None)"},
    {"clear", (PyCFunction)Dict_clear, METH_NOARGS,
     "Delete every key, atomically."},
    {"txn", (PyCFunction)(void (*)(void))Dict_txn,
     METH_VARARGS | METH_KEYWORDS,
     "txn(write=None, timeout=None) -> a transaction to use with `with`"},
    {"stats", (PyCFunction)Dict_stats, METH_NOARGS,
     "count, table capacity, heap used/free and fragmentation, as a dict"},
    {"verify", (PyCFunction)Dict_verify, METH_NOARGS,
     "Check the whole table and heap; CorruptSegmentError if damaged."},
    {"_snapshot", (PyCFunction)Dict_snapshot, METH_O,
     "_snapshot(what) -> list of keys (0), values (1) or items (2)"},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods Dict_as_mapping = {
    .mp_length = (lenfunc)Dict_length,
    .mp_subscript = (binaryfunc)Dict_subscript,
    .mp_ass_subscript = (objobjargproc)Dict_ass_subscript,
};

static PySequenceMethods Dict_as_sequence = {
    .sq_contains = (objobjproc)Dict_contains,
};

PyTypeObject Dict_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmtxn._core.Dict",
    .tp_basicsize = sizeof(DictObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A handle on a shared dict segment.",
    .tp_base = &Segment_Type,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Dict_init,
    .tp_as_mapping = &Dict_as_mapping,
    .tp_as_sequence = &Dict_as_sequence,
    .tp_iter = (getiterfunc)Dict_iter,
    .tp_methods = Dict_methods,
};
