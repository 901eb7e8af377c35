/*
 * dict_ops.c -- what runs per key of a SharedDict: lookups, stores,
 * deletes, len and snapshots, inside a txn or on their own.  The Dict and
 * DictTxn types (py_dict.c, py_dict_txn.c) are thin over these.
 *
 * Lookups outside a txn run under the seqlock: encode and hash the key,
 * probe the table and decode the value while a writer may be changing it,
 * then keep the result only if `seq` did not move (a pickled value is
 * unpickled only after that check).  After STX_SEQLOCK_TRIES torn
 * attempts, or while a writer holds the segment, they take a read txn.
 */
#include "binding.h"
#include "seqlock.h"

/* Encode `key` into `kb` and fill `k` (bytes and hash). */
static int
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
found_value(const HandleObject *h, const stx_found *f)
{
    int pickled;
    PyObject *v = value_decode(h, f->value_tag, f->value, f->value_len,
                               &pickled);
    if (v != NULL && pickled) {
        Py_SETREF(v, value_unpickle(h, v));
    }
    return v;
}

/* ------------------------------------------------------------------ */
/* reads inside an open txn                                            */

/* The value of `k` (Py_True when !want_value) read inside an open txn;
 * NULL with *missing set (no exception) if absent. */
static PyObject *
read_locked(DictObject *d, const stx_key *k, int want_value, int *missing)
{
    stx_found f;
    int rc = stx_dict_lookup(&d->h.seg, k, &f);
    *missing = rc == STX_ENOENT;
    if (rc == 0) {
        return want_value ? found_value(&d->h, &f) : Py_NewRef(Py_True);
    }
    if (rc != STX_ENOENT) {
        handle_error(&d->h, rc);
    }
    return NULL;
}

/* One decoded item of a snapshot: a key, a value or a pair. */
static PyObject *
snapshot_item(const HandleObject *h, const stx_found *f, int what)
{
    if (what == 1) {
        return found_value(h, f);
    }
    PyObject *key = key_decode(h, f->key, f->key_len, f->key_kind);
    if (key == NULL || what == 0) {
        return key;
    }
    PyObject *value = found_value(h, f);
    PyObject *pair = value ? PyTuple_Pack(2, key, value) : NULL;
    Py_DECREF(key);
    Py_XDECREF(value);
    return pair;
}

/* dict_snapshot inside an open txn. */
static PyObject *
snapshot_locked(DictObject *d, int what)
{
    PyObject *list = PyList_New(0);
    uint64_t pos = 0;
    stx_found f;
    int rc;
    while (list != NULL && (rc = stx_dict_next(&d->h.seg, &pos, &f)) == 0) {
        PyObject *item = snapshot_item(&d->h, &f, what);
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_CLEAR(list);
        }
        Py_XDECREF(item);
    }
    if (list != NULL && rc != STX_ENOENT) {
        handle_error(&d->h, rc);
        Py_CLEAR(list);
    }
    return list;
}

/* The number of keys, read inside an open txn; -1 on error. */
static Py_ssize_t
count_locked(DictObject *d)
{
    uint64_t count;
    int rc = stx_dict_count(&d->h.seg, &count);
    return rc == 0 ? (Py_ssize_t)count : handle_error(&d->h, rc);
}

/* ------------------------------------------------------------------ */
/* lock-free reads                                                     */

/* The value of the record `f` found lock-free under `seq`: its bytes are
 * copied out with relaxed loads, and decoded only once `seq` proves they
 * were committed.  NULL without an exception if the copy was torn. */
static PyObject *
copy_value_out(const HandleObject *h, const stx_found *f, uint64_t seq,
               int *pickled)
{
    if (f->value_len > 256 && (f->value_tag == 'b' || f->value_tag == 'p')) {
        /* bytes, or a pickle's bytes: copy straight into the object the
         * caller gets, one copy instead of two */
        PyObject *v = PyBytes_FromStringAndSize(NULL,
                                                (Py_ssize_t)f->value_len);
        if (v == NULL) {
            return NULL;
        }
        stx_load_relaxed(PyBytes_AS_STRING(v), f->value, f->value_len);
        if (!stx_seq_still(&h->seg, seq)) {
            Py_DECREF(v);
            return NULL;
        }
        *pickled = f->value_tag == 'p';
        return v;
    }
    uint8_t stack[256];
    uint8_t *copy = f->value_len <= sizeof(stack)
                    ? stack : PyMem_Malloc(f->value_len ? f->value_len : 1);
    if (copy == NULL) {
        return PyErr_NoMemory();
    }
    stx_load_relaxed(copy, f->value, f->value_len);
    PyObject *v = NULL;
    if (stx_seq_still(&h->seg, seq)) {
        v = value_decode(h, f->value_tag, copy, f->value_len, pickled);
    }
    if (copy != stack) {
        PyMem_Free(copy);
    }
    return v;
}

/* The lock-free lookup: the value (or Py_True when !want_value); NULL
 * with *missing (absent), with an exception, or with neither when every
 * attempt was torn -- then take a read txn.  A pickled value comes back
 * as its bytes with *pickled set: unpickle it after LOCKFREE_LEAVE. */
static PyObject *
seqlock_lookup(DictObject *d, const stx_key *k, int want_value,
               int *missing, int *pickled)
{
    stx_segment *seg = &d->h.seg;
    stx_dict_prefetch(seg, k);
    for (int attempt = 0; attempt < STX_SEQLOCK_TRIES; attempt++) {
        uint64_t seq;
        if (stx_seq_begin(seg, &seq) != 0) {
            break; /* a writer is mid-txn: wait for it in a read txn */
        }
        stx_found f;
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
            v = copy_value_out(&d->h, &f, seq, pickled);
            if (v == NULL && !PyErr_Occurred()) {
                continue; /* torn: try again */
            }
        }
        else if (rc == 0) {
            v = Py_NewRef(Py_True);
        }
        *missing = rc == STX_ENOENT;
        if (rc != 0 && rc != STX_ENOENT) {
            handle_error(&d->h, rc);
        }
        return v;
    }
    return NULL;
}

/* The lookup in a read txn (the seqlock saw a writer): like
 * seqlock_lookup, but waits for the writer, or recovers a dead one. */
static PyObject *
txn_lookup(DictObject *d, const stx_key *k, int want_value, int *missing)
{
    stx_txn txn = {0};
    if (own_open(&d->h, &txn, 0, 1) < 0) {
        return NULL;
    }
    PyObject *v = read_locked(d, k, want_value, missing);
    if (own_close(&d->h, &txn, 1) < 0) {
        Py_CLEAR(v);
    }
    return v;
}

PyObject *
dict_get(DictObject *d, PyObject *key, stx_txn *txn, int want_value,
         int *missing)
{
    key_buf kb;
    stx_key k;
    *missing = 0;
    if ((txn == NULL && handle_check_open(&d->h) < 0)
        || dict_key(d, key, &kb, &k) < 0) {
        return NULL;
    }
    PyObject *v = NULL;
    if (txn != NULL) {
        v = read_locked(d, &k, want_value, missing);
    }
    else if (LOCKFREE_ENTER(&d->h) == 0) {
        int pickled = 0;
        if (d->h.seg.file->ntxn == 0) {
            v = seqlock_lookup(d, &k, want_value, missing, &pickled);
        }
        LOCKFREE_LEAVE(&d->h);
        if (v != NULL && pickled) {
            Py_SETREF(v, value_unpickle(&d->h, v));
        }
        else if (v == NULL && !*missing && !PyErr_Occurred()) {
            v = txn_lookup(d, &k, want_value, missing);
        }
    }
    key_buf_release(&kb);
    return v;
}

Py_ssize_t
dict_len(DictObject *d, stx_txn *txn)
{
    if (txn != NULL) {
        return count_locked(d);
    }
    if (handle_check_open(&d->h) < 0 || LOCKFREE_ENTER(&d->h) < 0) {
        return -1;
    }
    /* lock-free: the count is one word of the dict header */
    Py_ssize_t n = -1;
    for (int attempt = 0; n < 0 && d->h.seg.file->ntxn == 0
                          && attempt < STX_SEQLOCK_TRIES; attempt++) {
        uint64_t seq, count;
        if (stx_seq_begin(&d->h.seg, &seq) == 0
            && stx_dict_count(&d->h.seg, &count) == 0
            && stx_seq_still(&d->h.seg, seq)) {
            n = (Py_ssize_t)count;
        }
    }
    LOCKFREE_LEAVE(&d->h);
    if (n >= 0) {
        return n;
    }
    stx_txn own = {0};
    if (own_open(&d->h, &own, 0, 0) < 0) {
        return -1;
    }
    n = count_locked(d);
    return own_close(&d->h, &own, 1) < 0 ? -1 : n;
}

PyObject *
dict_snapshot(DictObject *d, int what, stx_txn *txn)
{
    if (txn != NULL) {
        return snapshot_locked(d, what);
    }
    stx_txn own = {0};
    if (own_open(&d->h, &own, 0, 1) < 0) {
        return NULL;
    }
    PyObject *list = snapshot_locked(d, what);
    if (own_close(&d->h, &own, 1) < 0) {
        Py_CLEAR(list);
    }
    return list;
}

/* The values of the `n` keys found lock-free as `found`/`rcs`
 * (STX_ENOENT: `dflt`), decoded from `copies`, the copies of their
 * values one after another. */
static PyObject *
decode_many(DictObject *d, const stx_found *found, const int *rcs,
            Py_ssize_t n, PyObject *dflt, const uint8_t *copies)
{
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; list != NULL && i < n; i++) {
        PyObject *v;
        if (rcs[i] == STX_ENOENT) {
            v = Py_NewRef(dflt);
        }
        else {
            int pickled;
            v = value_decode(&d->h, found[i].value_tag, copies,
                             found[i].value_len, &pickled);
            copies += found[i].value_len;
            if (v != NULL && pickled) {
                Py_SETREF(v, value_unpickle(&d->h, v));
            }
        }
        if (v == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

/* The bytes of every found value, copied into *arena (grown as needed)
 * one after another: 0, 1 if a value's length is impossible (a torn
 * read: the caller checks seq), or -1 with an exception. */
static int
copy_values_out(const stx_found *found, const int *rcs, Py_ssize_t n,
                uint8_t **arena, size_t *cap)
{
    size_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (rcs[i] == 0) {
            if (found[i].value_len > PY_SSIZE_T_MAX - total) {
                return 1;
            }
            total += found[i].value_len;
        }
    }
    if (total > *cap) {
        uint8_t *grown = PyMem_Realloc(*arena, total);
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *arena = grown;
        *cap = total;
    }
    uint8_t *at = *arena;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (rcs[i] == 0) {
            stx_load_relaxed(at, found[i].value, found[i].value_len);
            at += found[i].value_len;
        }
    }
    return 0;
}

/* get_many without a lock: every key found under one even `seq` (the
 * engine prefetches across keys), the values copied out, `seq` checked
 * again, then decoded -- one snapshot.  NULL without an exception when a
 * writer is mid-txn or every attempt was torn: take a read txn. */
static PyObject *
get_many_seqlock(DictObject *d, const stx_key *ks, Py_ssize_t n,
                 PyObject *dflt, stx_found *found, int *rcs)
{
    stx_segment *seg = &d->h.seg;
    uint8_t *arena = NULL;
    size_t cap = 0;
    PyObject *list = NULL;
    for (int attempt = 0; attempt < STX_SEQLOCK_TRIES; attempt++) {
        uint64_t seq;
        if (stx_seq_begin(seg, &seq) != 0) {
            break;
        }
        int rc = stx_dict_lookup_many(seg, ks, (size_t)n, found, rcs);
        /* lengths must be committed ones before they size the arena */
        if (!stx_seq_still(seg, seq)) {
            continue;
        }
        if (rc != 0) {
            handle_error(&d->h, rc);
            break;
        }
        int copied = copy_values_out(found, rcs, n, &arena, &cap);
        if (copied < 0) {
            break;
        }
        if (copied == 0 && stx_seq_still(seg, seq)) {
            list = decode_many(d, found, rcs, n, dflt, arena);
            break;
        }
    }
    PyMem_Free(arena);
    return list;
}

/* get_many inside an open txn: the engine's batched lookup brings every
 * key's slot and record into cache; then each key is looked up again
 * (on cached lines) right before its value is decoded, since unpickling
 * one value may run code that writes through this very txn. */
static PyObject *
get_many_locked(DictObject *d, const stx_key *ks, Py_ssize_t n,
                PyObject *dflt, stx_found *found, int *rcs)
{
    int rc = stx_dict_lookup_many(&d->h.seg, ks, (size_t)n, found, rcs);
    if (rc != 0) {
        handle_error(&d->h, rc);
        return NULL;
    }
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; list != NULL && i < n; i++) {
        int missing;
        PyObject *v = read_locked(d, &ks[i], 1, &missing);
        if (v == NULL && missing) {
            v = Py_NewRef(dflt);
        }
        if (v == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, v);
    }
    return list;
}

/* get_many of encoded keys: in `txn`, else lock-free, else in a read txn
 * of its own. */
static PyObject *
get_many_encoded(DictObject *d, const stx_key *ks, Py_ssize_t n,
                 PyObject *dflt, stx_txn *txn)
{
    stx_found *found = PyMem_New(stx_found, n ? n : 1);
    int *rcs = PyMem_New(int, n ? n : 1);
    PyObject *list = NULL;
    if (found == NULL || rcs == NULL) {
        PyErr_NoMemory();
    }
    else if (txn != NULL) {
        list = get_many_locked(d, ks, n, dflt, found, rcs);
    }
    else if (LOCKFREE_ENTER(&d->h) == 0) {
        if (d->h.seg.file->ntxn == 0) {
            list = get_many_seqlock(d, ks, n, dflt, found, rcs);
        }
        LOCKFREE_LEAVE(&d->h);
        stx_txn own = {0};
        if (list == NULL && !PyErr_Occurred()
            && own_open(&d->h, &own, 0, 1) == 0) {
            list = get_many_locked(d, ks, n, dflt, found, rcs);
            if (own_close(&d->h, &own, 1) < 0) {
                Py_CLEAR(list);
            }
        }
    }
    PyMem_Free(found);
    PyMem_Free(rcs);
    return list;
}

PyObject *
dict_get_many(DictObject *d, PyObject *keys, PyObject *dflt, stx_txn *txn)
{
    if (txn == NULL && handle_check_open(&d->h) < 0) {
        return NULL;
    }
    PyObject *seq = PySequence_Fast(keys, "get_many() takes an iterable "
                                    "of keys");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq), encoded = 0;
    key_buf *kbs = PyMem_New(key_buf, n ? n : 1);
    stx_key *ks = PyMem_New(stx_key, n ? n : 1);
    PyObject *list = NULL;
    if (kbs == NULL || ks == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; encoded < n; encoded++) {
        if (dict_key(d, PySequence_Fast_GET_ITEM(seq, encoded),
                     &kbs[encoded], &ks[encoded]) < 0) {
            goto done;
        }
    }
    list = get_many_encoded(d, ks, n, dflt, txn);
done:
    for (Py_ssize_t i = 0; i < encoded; i++) {
        key_buf_release(&kbs[i]);
    }
    PyMem_Free(kbs);
    PyMem_Free(ks);
    Py_DECREF(seq);
    return list;
}

PyObject *
dict_get_many_call(DictObject *d, PyObject *args, PyObject *kwds,
                   stx_txn *txn)
{
    static char *kwlist[] = {"keys", "default", NULL};
    PyObject *keys, *dflt = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:get_many", kwlist,
                                     &keys, &dflt)) {
        return NULL;
    }
    return dict_get_many(d, keys, dflt, txn);
}

/* ------------------------------------------------------------------ */
/* writes                                                              */

/* Raise for a failed engine write in `dt`'s txn, rolling the whole txn
 * back unless the error changed nothing.  Returns -1. */
static int
write_failed(DictObject *d, stx_dict_txn *dt, int code)
{
    stx_dict_txn_reset(dt);
    return txn_write_failed(&d->h, dt->txn, code);
}

int
dict_txn_finish(DictObject *d, stx_dict_txn *dt, int commit)
{
    int rc = commit && dt->txn->write ? stx_dict_flush(dt) : 0;
    stx_dict_txn_reset(dt);
    return rc == 0 ? 0 : write_failed(d, dt, rc);
}

/* Which write to make. */
enum dict_op { OP_PUT, OP_DELETE, OP_CLEAR };

/* One write inside `dt` or, dt NULL, in a txn of its own (committed, or
 * rolled back whole).  1 (no exception) if the key to delete is absent. */
static int
dict_write(DictObject *d, enum dict_op op, const stx_key *k,
           const stx_value *v, stx_dict_txn *dt)
{
    stx_txn own = {0};
    stx_dict_txn own_dt = {.txn = &own};
    if (dt != NULL && txn_check_write(&d->h, dt->txn) < 0) {
        return -1;
    }
    if (dt == NULL && own_open(&d->h, &own, 1, 0) < 0) {
        return -1;
    }
    stx_dict_txn *use = dt ? dt : &own_dt;
    int rc = op == OP_PUT ? stx_dict_put(use, k, v)
             : op == OP_DELETE ? stx_dict_delete(use, k)
                               : stx_dict_clear(use);
    if (rc != 0 && rc != STX_ENOENT) {
        write_failed(d, use, rc);
    }
    if (dt == NULL) {
        /* commit, or roll back a failure or a missing key */
        int ok = rc == 0 && dict_txn_finish(d, use, 1) == 0;
        if (PyErr_Occurred()) {
            return own_abort(&d->h, &own); /* the failure's exception */
        }
        if (own_close(&d->h, &own, ok) < 0) {
            return -1;
        }
    }
    return rc == STX_ENOENT ? 1 : rc == 0 ? 0 : -1;
}

int
dict_set(DictObject *d, PyObject *key, PyObject *value, stx_dict_txn *dt)
{
    key_buf kb;
    stx_key k;
    value_buf vb = {0};
    if ((dt == NULL && handle_check_open(&d->h) < 0)
        || dict_key(d, key, &kb, &k) < 0) {
        return -1;
    }
    int rc = value ? value_encode(value, &vb) : 0;
    if (rc == 0) {
        stx_value v = {.bytes = vb.bytes, .len = (uint64_t)vb.len,
                       .tag = vb.tag};
        rc = dict_write(d, value ? OP_PUT : OP_DELETE, &k, &v, dt);
        if (rc == 1) {
            raise_key_error(key);
            rc = -1;
        }
        value_buf_release(&vb);
    }
    key_buf_release(&kb);
    return rc;
}

int
dict_clear(DictObject *d, stx_dict_txn *dt)
{
    if (dt == NULL && handle_check_open(&d->h) < 0) {
        return -1;
    }
    return dict_write(d, OP_CLEAR, NULL, NULL, dt) < 0 ? -1 : 0;
}
