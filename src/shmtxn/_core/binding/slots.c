/*
 * slots.c -- reading and writing the typed slots of a segment: one item or
 * a slice, inside a txn or on their own (lock-free reads under the
 * seqlock, auto-committed writes), and the Views a txn hands out.  The
 * Memory and Txn types (py_memory.c, py_txn.c) are thin over these.
 */
#include "binding.h"
#include "seqlock.h"

/* Slice reads up to this many bytes use a stack buffer. */
#define STACK_BYTES 512

int
slots_index(HandleObject *h, PyObject *key, Py_ssize_t *index)
{
    if (handle_check_open(h) < 0) {
        return -1;
    }
    Py_ssize_t i = PyLong_CheckExact(key) ? PyLong_AsSsize_t(key)
                                          : PyNumber_AsSsize_t(key, NULL);
    if (i == -1 && PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_IndexError, "index %R out of range for %zd "
                     "slots", key, h->nitems);
        return -1;
    }
    if (i == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (i < 0) {
        i += h->nitems;
    }
    if (i < 0 || i >= h->nitems) {
        PyErr_Format(PyExc_IndexError, "index %R out of range for %zd "
                     "slots", key, h->nitems);
        return -1;
    }
    *index = i;
    return 0;
}

/* ------------------------------------------------------------------ */
/* one item                                                            */

/* Read one item under a read txn (the seqlock saw a writer). */
static PyObject *
locked_get(HandleObject *h, uint64_t offset)
{
    stx_txn txn = {0};
    uint64_t raw = 0;
    if (own_open(h, &txn, 0, 0) < 0) {
        return NULL;
    }
    stx_read(&txn, offset, &raw, h->fmt->size);
    if (own_close(h, &txn, 1) < 0) {
        return NULL;
    }
    return item_unpack(h->fmt, &raw);
}

/* h[key] for an int key, inside `txn` or on its own. */
static PyObject *
get_one(HandleObject *h, PyObject *key, stx_txn *txn)
{
    Py_ssize_t i;
    if (slots_index(h, key, &i) < 0) {
        return NULL;
    }
    uint64_t offset = (uint64_t)i * h->fmt->size;
    if (txn != NULL) {
        return item_unpack(h->fmt, h->seg.data + offset);
    }
    uint64_t raw = 0;
    if (LOCKFREE_ENTER(h) < 0) {
        return NULL;
    }
    int got = h->seg.file->ntxn == 0
              && stx_seqlock_read(&h->seg, offset, &raw, h->fmt->size) == 0;
    LOCKFREE_LEAVE(h);
    return got ? item_unpack(h->fmt, &raw) : locked_get(h, offset);
}

/* Write the item `raw` at `offset` in a write txn of its own. */
static int
auto_set(HandleObject *h, uint64_t offset, const uint64_t *raw)
{
    stx_txn own = {0};
    if (own_open(h, &own, 1, 0) < 0) {
        return -1;
    }
    int rc = stx_write(&own, offset, raw, h->fmt->size);
    if (rc != 0) {
        txn_write_failed(h, &own, rc);
        return own_abort(h, &own);
    }
    return own_close(h, &own, 1);
}

/* h[key] = value for an int key, inside `txn` or in a txn of its own. */
static int
set_one(HandleObject *h, PyObject *key, PyObject *value, stx_txn *txn)
{
    Py_ssize_t i;
    uint64_t raw = 0;
    if (slots_index(h, key, &i) < 0 || item_pack(h->fmt, value, &raw) < 0) {
        return -1;
    }
    uint64_t offset = (uint64_t)i * h->fmt->size;
    if (txn == NULL) {
        return auto_set(h, offset, &raw);
    }
    int rc = stx_write(txn, offset, &raw, h->fmt->size);
    return rc == 0 ? 0 : txn_write_failed(h, txn, rc);
}

/* ------------------------------------------------------------------ */
/* slices                                                              */

/* The items a slice names: start, stop, step and how many. */
typedef struct slice_span {
    Py_ssize_t start, stop, step, count;
} slice_span;

/* The span of `slice` over the handle's items; -1 on error. */
static int
unpack_slice(HandleObject *h, PyObject *slice, slice_span *s)
{
    if (handle_check_open(h) < 0
        || PySlice_Unpack(slice, &s->start, &s->stop, &s->step) < 0) {
        return -1;
    }
    s->count = PySlice_AdjustIndices(h->nitems, &s->start, &s->stop,
                                     s->step);
    return 0;
}

/* Items of `s` as a list, from `base` (the data region or a copy of the
 * contiguous run starting at item `base_index`). */
static PyObject *
list_from(HandleObject *h, const slice_span *s, const uint8_t *base,
          Py_ssize_t base_index)
{
    PyObject *list = PyList_New(s->count);
    int size = h->fmt->size;
    for (Py_ssize_t k = 0; list != NULL && k < s->count; k++) {
        Py_ssize_t i = s->start + k * s->step - base_index;
        PyObject *item = item_unpack(h->fmt, base + i * size);
        if (item == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, k, item);
    }
    return list;
}

/* A contiguous slice read lock-free; NULL without error to fall back. */
static PyObject *
seqlock_slice(HandleObject *h, const slice_span *s)
{
    uint64_t bytes = (uint64_t)s->count * h->fmt->size;
    uint8_t stack[STACK_BYTES];
    uint8_t *copy = bytes <= STACK_BYTES ? stack : PyMem_Malloc(bytes);
    if (copy == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *list = NULL;
    uint64_t offset = (uint64_t)s->start * h->fmt->size;
    if (LOCKFREE_ENTER(h) == 0) {
        int got = h->seg.file->ntxn == 0
                  && stx_seqlock_read(&h->seg, offset, copy, bytes) == 0;
        LOCKFREE_LEAVE(h);
        if (got) {
            list = list_from(h, s, copy, s->start);
        }
    }
    if (copy != stack) {
        PyMem_Free(copy);
    }
    return list;
}

/* The items of `s` as a list, inside `txn` or consistently on their own
 * (lock-free if contiguous and no writer is about, else in a read txn). */
static PyObject *
read_span(HandleObject *h, const slice_span *s, stx_txn *txn)
{
    if (s->count == 0) {
        return PyList_New(0);
    }
    if (txn != NULL) {
        return list_from(h, s, h->seg.data, 0);
    }
    if (s->step == 1) {
        PyObject *list = seqlock_slice(h, s);
        if (list != NULL || PyErr_Occurred()) {
            return list;
        }
    }
    stx_txn own = {0};
    if (own_open(h, &own, 0, 1) < 0) {
        return NULL;
    }
    PyObject *list = list_from(h, s, h->seg.data, 0);
    if (own_close(h, &own, 1) < 0) {
        Py_CLEAR(list);
    }
    return list;
}

/* Convert every value first: a bad one raises before anything changes. */
static uint8_t *
pack_values(HandleObject *h, PyObject *value, const slice_span *s)
{
    PyObject *seq = PySequence_Fast(value, "slice assignment needs an "
                                    "iterable of values");
    if (seq == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    uint8_t *packed = NULL;
    if (n != s->count) {
        PyErr_Format(PyExc_ValueError, "slice assignment: %zd values for %zd"
                     " slots (a segment cannot change size)", n, s->count);
    }
    else if ((packed = PyMem_Malloc(n * h->fmt->size + 1)) == NULL) {
        PyErr_NoMemory();
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t k = 0; packed != NULL && k < n; k++) {
        if (item_pack(h->fmt, items[k], packed + k * h->fmt->size) < 0) {
            PyMem_Free(packed);
            packed = NULL;
        }
    }
    Py_DECREF(seq);
    return packed;
}

/* Write the packed items of `s` inside `txn`. */
static int
write_packed(HandleObject *h, stx_txn *txn, const slice_span *s,
             const uint8_t *packed)
{
    int size = h->fmt->size;
    int rc = 0;
    if (s->step == 1) {
        rc = stx_write(txn, (uint64_t)s->start * size, packed,
                       (uint64_t)s->count * size);
    }
    for (Py_ssize_t k = 0; s->step != 1 && rc == 0 && k < s->count; k++) {
        rc = stx_write(txn, (uint64_t)(s->start + k * s->step) * size,
                       packed + k * size, size);
    }
    return rc == 0 ? 0 : txn_write_failed(h, txn, rc);
}

/* The item format a buffer declares, if it is one of ours in native
 * order; NULL (no error) otherwise. */
static const item_format *
buffer_item_format(const Py_buffer *view)
{
    const char *code = view->format ? view->format : "B";
    if (code[0] == '=' || code[0] == '|'
        || (code[0] == '<' && PY_LITTLE_ENDIAN)
        || (code[0] == '>' && !PY_LITTLE_ENDIAN)) {
        code++;
    }
    const item_format *fmt = item_format_find(code);
    if (fmt == NULL) {
        PyErr_Clear();
    }
    return fmt;
}

/* 1 (and `view` held) if `value` is a C-contiguous buffer of exactly
 * `count` items of the segment's kind and size -- a numpy array of the
 * same dtype, an array.array -- so it can be copied as bytes; 0 if not. */
static int
matching_buffer(HandleObject *h, PyObject *value, Py_ssize_t count,
                Py_buffer *view)
{
    if (!PyObject_CheckBuffer(value)) {
        return 0;
    }
    if (PyObject_GetBuffer(value, view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS)
        < 0) {
        PyErr_Clear();
        return 0;
    }
    const item_format *fmt = buffer_item_format(view);
    if (fmt != NULL && fmt->size == h->fmt->size
        && fmt->kind == h->fmt->kind
        && view->len == count * h->fmt->size) {
        return 1;
    }
    PyBuffer_Release(view);
    return 0;
}

/* h[slice] = value: an iterable of as many values, or a matching buffer,
 * inside `txn` or in a write txn of its own. */
static int
write_slice(HandleObject *h, PyObject *slice, PyObject *value, stx_txn *txn)
{
    slice_span s;
    if (unpack_slice(h, slice, &s) < 0) {
        return -1;
    }
    Py_buffer view = {0};
    uint8_t *packed = NULL;
    const uint8_t *src;
    if (matching_buffer(h, value, s.count, &view)) {
        src = view.buf;
    }
    else if ((src = packed = pack_values(h, value, &s)) == NULL) {
        return -1;
    }
    stx_txn own = {0};
    int rc = 0;
    if (txn == NULL) {
        rc = own_open(h, &own, 1, 0);
        if (rc == 0) {
            rc = write_packed(h, &own, &s, src) < 0 ? own_abort(h, &own)
                                                    : own_close(h, &own, 1);
        }
    }
    else {
        rc = write_packed(h, txn, &s, src);
    }
    PyMem_Free(packed);
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* what the types call                                                 */

PyObject *
slots_get(HandleObject *h, PyObject *key, stx_txn *txn)
{
    if (PySlice_Check(key)) {
        slice_span s;
        return unpack_slice(h, key, &s) < 0 ? NULL : read_span(h, &s, txn);
    }
    return get_one(h, key, txn);
}

/* slots_set for what is not one item written where writes are allowed:
 * a delete, a read txn, a slice. */
static int
set_other(HandleObject *h, PyObject *key, PyObject *value, stx_txn *txn)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "slots cannot be deleted; a "
                        "segment has a fixed number of items");
        return -1;
    }
    if (txn != NULL && txn_check_write(h, txn) < 0) {
        return -1;
    }
    return write_slice(h, key, value, txn);
}

int
slots_set(HandleObject *h, PyObject *key, PyObject *value, stx_txn *txn)
{
    if (value != NULL && (txn == NULL || txn->write) && !PySlice_Check(key)) {
        return set_one(h, key, value, txn); /* the hot path */
    }
    return set_other(h, key, value, txn);
}

PyObject *
slots_values(HandleObject *h, stx_txn *txn)
{
    if (handle_check_open(h) < 0) {
        return NULL;
    }
    slice_span all = {0, h->nitems, 1, h->nitems};
    return read_span(h, &all, txn);
}

PyObject *
slots_items(HandleObject *h, stx_txn *txn)
{
    PyObject *values = slots_values(h, txn);
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

PyObject *
slots_view(HandleObject *h, stx_txn *txn, Py_ssize_t start, Py_ssize_t count,
           int as_bytes)
{
    uint64_t offset = (uint64_t)(start * h->strides[0]);
    uint64_t length = (uint64_t)(count * h->strides[0]);
    if (as_bytes && start + count == h->shape[0]) {
        length = h->seg.data_size - offset; /* and the tail past the last
                                               whole item, as shr.buf */
    }
    if (txn->write) {
        int rc = stx_undo_prepare(txn, offset, length);
        if (rc != 0) {
            txn_write_failed(h, txn, rc);
            return NULL;
        }
    }
    char *ptr = (char *)h->seg.data + offset;
    if (as_bytes) {
        Py_ssize_t len = (Py_ssize_t)length;
        return view_new(h, ptr, 'B', 1, 1, &len, !txn->write);
    }
    Py_ssize_t shape[STX_MAX_NDIM];
    memcpy(shape, h->shape, sizeof(shape));
    shape[0] = count;
    return view_new(h, ptr, h->fmt->code, h->fmt->size, h->ndim, shape,
                    !txn->write);
}
