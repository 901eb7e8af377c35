/*
 * py_memory.c -- shmtxn._core.Memory: a handle on a slots segment, with
 * lock-free single reads and auto-committed single writes.  The Python
 * class shmtxn.SharedMemory subclasses it (memory.py) for repr and pickling;
 * the hot paths (indexing, txn()) stay here in C.
 */
#include "binding.h"
#include "seqlock.h"

/* Longest attach wait for a creator still initialising (seconds). */
#define ATTACH_WAIT_DEFAULT 5.0
/* Slice reads up to this many bytes use a stack buffer. */
#define STACK_BYTES 512

int
memory_index(HandleObject *mem, PyObject *key, Py_ssize_t *index)
{
    if (handle_check_open(mem) < 0) {
        return -1;
    }
    Py_ssize_t i = PyLong_CheckExact(key) ? PyLong_AsSsize_t(key)
                                          : PyNumber_AsSsize_t(key, NULL);
    if (i == -1 && PyErr_ExceptionMatches(PyExc_OverflowError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_IndexError, "index %R out of range for %zd "
                     "slots", key, mem->nitems);
        return -1;
    }
    if (i == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (i < 0) {
        i += mem->nitems;
    }
    if (i < 0 || i >= mem->nitems) {
        PyErr_Format(PyExc_IndexError, "index %R out of range for %zd "
                     "slots", key, mem->nitems);
        return -1;
    }
    *index = i;
    return 0;
}

/* ------------------------------------------------------------------ */
/* creation and attachment                                             */

/* The number of items `shape` holds, or 0 (ValueError) if absurd. */
static uint64_t
shape_items(const open_args *a)
{
    uint64_t items = 1;
    for (uint32_t i = 0; i < a->ndim; i++) {
        if (items > (1ull << 46) / a->shape[i]) {
            PyErr_SetString(PyExc_ValueError, "shape holds more items than "
                            "any machine has memory for");
            return 0;
        }
        items *= a->shape[i];
    }
    return items;
}

/* Derive size and shape from each other and from `data` (creation). */
static int
resolve_geometry(HandleObject *self, open_args *a)
{
    int itemsize = self->fmt->size;
    if (a->ndim > 0) {
        uint64_t items = shape_items(a);
        if (items == 0) {
            return -1;
        }
        if (a->size != 0 && (uint64_t)a->size != items * itemsize) {
            PyErr_Format(PyExc_ValueError, "size=%zd disagrees with shape "
                         "(%llu bytes); give one of them", a->size,
                         (unsigned long long)(items * itemsize));
            return -1;
        }
        a->size = (Py_ssize_t)(items * itemsize);
    }
    if (a->data.obj != NULL && a->size == 0) {
        a->size = a->data.len;
    }
    if (a->data.obj != NULL && a->data.len != a->size) {
        PyErr_Format(PyExc_ValueError, "data has %zd bytes but the segment "
                     "holds %zd", a->data.len, a->size);
        return -1;
    }
    if (a->size <= 0 || a->size % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "size must be a positive multiple "
                     "of the %d-byte item of format '%c' (got %zd)",
                     itemsize, self->fmt->code, a->size);
        return -1;
    }
    if (a->ndim == 0) {
        a->ndim = 1;
        a->shape[0] = (uint64_t)(a->size / itemsize);
    }
    return 0;
}

/* The engine's options for creating a slots segment as `a` says. */
static int
slots_create_opts(HandleObject *self, open_args *a, stx_create_opts *opts,
                  char code[2])
{
    if (a->create && resolve_geometry(self, a) < 0) {
        return -1;
    }
    code[0] = self->fmt->code;
    code[1] = '\0';
    *opts = (stx_create_opts){
        .layout = &stx_slots_layout, .data_size = (uint64_t)a->size,
        .undo_size = (uint64_t)a->undo_size,
        .nslots = (uint32_t)a->max_processes, .format = code,
        .itemsize = self->fmt->size, .ndim = a->ndim, .shape = a->shape,
        .mode = (unsigned)a->mode, .populate = a->populate,
        .initial = a->data.obj ? a->data.buf : NULL};
    return 0;
}

/* The caller's shape, if given, must be the stored one. */
static int
check_shape(HandleObject *self, const open_args *a)
{
    stx_header *hdr = self->seg.hdr;
    int same = a->ndim == 0 || a->ndim == hdr->ndim;
    for (uint32_t i = 0; same && i < a->ndim; i++) {
        same = a->shape[i] == hdr->shape[i];
    }
    if (!same) {
        raise_named("IncompatibleSegmentError", "segment '%s' has another "
                    "shape; omit shape= to use the stored one",
                    self->seg.name);
        return -1;
    }
    return 0;
}

/* After attaching: the caller's size, format and shape must match. */
static int
check_attached(HandleObject *self, const open_args *a)
{
    stx_header *hdr = self->seg.hdr;
    const item_format *stored = item_format_find(hdr->format);
    if (stored == NULL || stored->size != hdr->itemsize) {
        PyErr_Clear();
        raise_named("CorruptSegmentError", "segment '%s' has an unknown "
                    "item format", self->seg.name);
        return -1;
    }
    if (a->format != NULL && self->fmt->code != stored->code) {
        raise_named("IncompatibleSegmentError", "segment '%s' stores format"
                    " '%c', not '%c'; omit format= to use the stored one",
                    self->seg.name, stored->code, self->fmt->code);
        return -1;
    }
    if (a->size != 0 && (uint64_t)a->size != hdr->data_size) {
        raise_named("IncompatibleSegmentError", "segment '%s' holds %llu "
                    "bytes, not %zd; pass size=0 to accept its size",
                    self->seg.name, (unsigned long long)hdr->data_size,
                    a->size);
        return -1;
    }
    self->fmt = stored;
    return check_shape(self, a);
}

/* shape=: an int or a sequence of 1 to STX_MAX_NDIM positive ints. */
static int
parse_shape(PyObject *arg, open_args *a)
{
    if (arg == NULL || arg == Py_None) {
        return 0;
    }
    PyObject *seq = PyLong_Check(arg) ? PyTuple_Pack(1, arg)
                                      : PySequence_Tuple(arg);
    if (seq == NULL) {
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    int rc = 0;
    if (n < 1 || n > STX_MAX_NDIM) {
        PyErr_Format(PyExc_ValueError, "shape has 1 to %d dimensions",
                     STX_MAX_NDIM);
        rc = -1;
    }
    for (Py_ssize_t i = 0; rc == 0 && i < n; i++) {
        Py_ssize_t d = PyNumber_AsSsize_t(PyTuple_GET_ITEM(seq, i),
                                          PyExc_OverflowError);
        if (d <= 0) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError,
                                "every dimension of shape must be positive");
            }
            rc = -1;
        }
        a->shape[i] = (uint64_t)d;
    }
    a->ndim = rc == 0 ? (uint32_t)n : 0;
    Py_DECREF(seq);
    return rc;
}

static int
parse_open_args(PyObject *args, PyObject *kwds, open_args *a)
{
    static char *kwlist[] = {"name", "create", "size", "read_only",
                             "format", "undo_size", "max_processes",
                             "timeout", "mode", "shape", "data", "populate",
                             NULL};
    PyObject *timeout_arg = NULL, *shape_arg = NULL, *data_arg = NULL;
    a->mode = 0600;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "|zpn$pzniOiOOp", kwlist, &a->name, &a->create,
            &a->size, &a->read_only, &a->format, &a->undo_size,
            &a->max_processes, &timeout_arg, &a->mode, &shape_arg,
            &data_arg, &a->populate)
        || handle_parse_timeout(timeout_arg, ATTACH_WAIT_DEFAULT,
                                &a->timeout) < 0
        || parse_shape(shape_arg, a) < 0 || handle_check_args(a) < 0) {
        return -1;
    }
    if (data_arg != NULL && data_arg != Py_None
        && PyObject_GetBuffer(data_arg, &a->data, PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    return 0;
}

/* Remember what the handle needs after opening: identity and shape. */
static int
adopt_geometry(HandleObject *self)
{
    stx_header *hdr = self->seg.hdr;
    self->nitems = (Py_ssize_t)(self->seg.data_size / self->fmt->size);
    self->ndim = (int)hdr->ndim;
    Py_ssize_t stride = self->fmt->size;
    for (int i = self->ndim - 1; i >= 0; i--) {
        self->shape[i] = (Py_ssize_t)hdr->shape[i];
        self->strides[i] = stride;
        stride *= self->shape[i];
    }
    self->format[0] = self->fmt->code;
    self->format[1] = '\0';
    return 0;
}

static int
Memory_init(HandleObject *self, PyObject *args, PyObject *kwds)
{
    open_args a = {0};
    stx_create_opts opts;
    char code[2];
    int rc = parse_open_args(args, kwds, &a);
    if (rc == 0) {
        self->fmt = item_format_find(a.format ? a.format : "q");
        rc = self->fmt == NULL ? -1 : slots_create_opts(self, &a, &opts,
                                                        code);
    }
    if (rc == 0) {
        rc = handle_open(self, &a, &opts);
    }
    if (rc == 0 && !a.create && check_attached(self, &a) < 0) {
        stx_close(&self->seg);
        rc = -1;
    }
    if (a.data.obj != NULL) {
        PyBuffer_Release(&a.data);
    }
    return rc < 0 ? -1 : adopt_geometry(self);
}

/* ------------------------------------------------------------------ */
/* items                                                               */

/* Read one item under a read txn (the seqlock saw a writer). */
static PyObject *
locked_get(HandleObject *self, uint64_t offset)
{
    stx_txn txn = {0};
    uint64_t raw = 0;
    if (txn_open(self, &txn, 0, -1) < 0) {
        return NULL;
    }
    stx_read(&txn, offset, &raw, self->fmt->size);
    if (txn_close(self, &txn, 1) < 0) {
        return NULL;
    }
    return item_unpack(self->fmt, &raw);
}

static PyObject *
get_item(HandleObject *self, PyObject *key)
{
    Py_ssize_t i;
    if (memory_index(self, key, &i) < 0) {
        return NULL;
    }
    uint64_t offset = (uint64_t)i * self->fmt->size;
    uint64_t raw = 0;
    if (self->seg.file->ntxn == 0
        && stx_seqlock_read(&self->seg, offset, &raw, self->fmt->size) == 0) {
        return item_unpack(self->fmt, &raw);
    }
    return locked_get(self, offset);
}

static int
set_item(HandleObject *self, PyObject *key, PyObject *value)
{
    Py_ssize_t i;
    uint64_t raw = 0;
    if (memory_index(self, key, &i) < 0
        || item_pack(self->fmt, value, &raw) < 0) {
        return -1;
    }
    stx_txn txn = {0};
    if (txn_open(self, &txn, 1, -1) < 0) {
        return -1;
    }
    int rc = stx_write(&txn, (uint64_t)i * self->fmt->size, &raw,
                       self->fmt->size);
    if (rc != 0) {
        return txn_write_failed(self, &txn, rc);
    }
    return txn_close(self, &txn, 1);
}

typedef struct slice_span {
    Py_ssize_t start, stop, step, count;
} slice_span;

static int
unpack_slice(HandleObject *mem, PyObject *slice, slice_span *s)
{
    if (PySlice_Unpack(slice, &s->start, &s->stop, &s->step) < 0) {
        return -1;
    }
    s->count = PySlice_AdjustIndices(mem->nitems, &s->start, &s->stop,
                                     s->step);
    return 0;
}

/* Items of `s` as a list, from `base` (the data region or a copy of the
 * contiguous run starting at s->start). */
static PyObject *
list_from(HandleObject *mem, const slice_span *s, const uint8_t *base,
          Py_ssize_t base_index)
{
    PyObject *list = PyList_New(s->count);
    int size = mem->fmt->size;
    for (Py_ssize_t k = 0; list != NULL && k < s->count; k++) {
        Py_ssize_t i = s->start + k * s->step - base_index;
        PyObject *item = item_unpack(mem->fmt, base + i * size);
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
seqlock_slice(HandleObject *mem, const slice_span *s)
{
    uint64_t bytes = (uint64_t)s->count * mem->fmt->size;
    uint8_t stack[STACK_BYTES];
    uint8_t *copy = bytes <= STACK_BYTES ? stack : PyMem_Malloc(bytes);
    if (copy == NULL) {
        return PyErr_NoMemory();
    }
    PyObject *list = NULL;
    uint64_t offset = (uint64_t)s->start * mem->fmt->size;
    if (stx_seqlock_read(&mem->seg, offset, copy, bytes) == 0) {
        slice_span run = *s;
        list = list_from(mem, &run, copy, s->start);
    }
    if (copy != stack) {
        PyMem_Free(copy);
    }
    return list;
}

PyObject *
memory_read_slice(HandleObject *mem, PyObject *slice, stx_txn *txn)
{
    slice_span s;
    if (handle_check_open(mem) < 0 || unpack_slice(mem, slice, &s) < 0) {
        return NULL;
    }
    if (s.count == 0) {
        return PyList_New(0);
    }
    if (txn != NULL) {
        return list_from(mem, &s, mem->seg.data, 0);
    }
    if (s.step == 1 && mem->seg.file->ntxn == 0) {
        PyObject *list = seqlock_slice(mem, &s);
        if (list != NULL || PyErr_Occurred()) {
            return list;
        }
    }
    stx_txn own = {0};
    if (txn_open(mem, &own, 0, -1) < 0) {
        return NULL;
    }
    PyObject *list = list_from(mem, &s, mem->seg.data, 0);
    if (txn_close(mem, &own, 1) < 0) {
        Py_CLEAR(list);
    }
    return list;
}

/* Convert every value first: a bad one raises before anything changes. */
static uint8_t *
pack_values(HandleObject *mem, PyObject *value, const slice_span *s)
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
    else if ((packed = PyMem_Malloc(n * mem->fmt->size + 1)) == NULL) {
        PyErr_NoMemory();
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t k = 0; packed != NULL && k < n; k++) {
        if (item_pack(mem->fmt, items[k], packed + k * mem->fmt->size) < 0) {
            PyMem_Free(packed);
            packed = NULL;
        }
    }
    Py_DECREF(seq);
    return packed;
}

static int
write_packed(HandleObject *mem, stx_txn *txn, const slice_span *s,
             const uint8_t *packed)
{
    int size = mem->fmt->size;
    int rc = 0;
    if (s->step == 1) {
        rc = stx_write(txn, (uint64_t)s->start * size, packed,
                       (uint64_t)s->count * size);
    }
    for (Py_ssize_t k = 0; s->step != 1 && rc == 0 && k < s->count; k++) {
        rc = stx_write(txn, (uint64_t)(s->start + k * s->step) * size,
                       packed + k * size, size);
    }
    return rc == 0 ? 0 : txn_write_failed(mem, txn, rc);
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
matching_buffer(HandleObject *mem, PyObject *value, Py_ssize_t count,
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
    if (fmt != NULL && fmt->size == mem->fmt->size
        && fmt->kind == mem->fmt->kind
        && view->len == count * mem->fmt->size) {
        return 1;
    }
    PyBuffer_Release(view);
    return 0;
}

int
memory_write_slice(HandleObject *mem, PyObject *slice, PyObject *value,
                   stx_txn *txn)
{
    slice_span s;
    if (handle_check_open(mem) < 0 || unpack_slice(mem, slice, &s) < 0) {
        return -1;
    }
    Py_buffer view = {0};
    uint8_t *packed = NULL;
    const uint8_t *src;
    if (matching_buffer(mem, value, s.count, &view)) {
        src = view.buf;
    }
    else if ((src = packed = pack_values(mem, value, &s)) == NULL) {
        return -1;
    }
    stx_txn own = {0};
    int rc = 0;
    if (txn == NULL) {
        rc = txn_open(mem, &own, 1, -1);
    }
    if (rc == 0) {
        rc = write_packed(mem, txn ? txn : &own, &s, src);
    }
    if (rc == 0 && txn == NULL) {
        rc = txn_close(mem, &own, 1);
    }
    PyMem_Free(packed);
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
    return rc;
}

static PyObject *
Memory_subscript(HandleObject *self, PyObject *key)
{
    if (PySlice_Check(key)) {
        return memory_read_slice(self, key, NULL);
    }
    return get_item(self, key);
}

static int
Memory_ass_subscript(HandleObject *self, PyObject *key, PyObject *value)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "slots cannot be deleted; a "
                        "segment has a fixed number of items");
        return -1;
    }
    if (PySlice_Check(key)) {
        return memory_write_slice(self, key, value, NULL);
    }
    return set_item(self, key, value);
}

static Py_ssize_t
Memory_length(HandleObject *self)
{
    return handle_check_open(self) < 0 ? -1 : self->nitems;
}

static PyObject *
Memory_iter(HandleObject *self)
{
    PyObject *all = PySlice_New(NULL, NULL, NULL);
    PyObject *list = all ? memory_read_slice(self, all, NULL) : NULL;
    Py_XDECREF(all);
    PyObject *it = list ? PyObject_GetIter(list) : NULL;
    Py_XDECREF(list);
    return it;
}

/* ------------------------------------------------------------------ */
/* txn(), buffers, attributes                                          */

/* txn(write=None, timeout=None), parsed by hand: it is on the hot path. */
static int
parse_txn_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
               PyObject **write_arg, PyObject **timeout_arg)
{
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "txn() takes at most 2 arguments");
        return -1;
    }
    if (nargs > 0) {
        *write_arg = args[0];
    }
    if (nargs > 1) {
        *timeout_arg = args[1];
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        if (PyUnicode_CompareWithASCIIString(key, "write") == 0) {
            *write_arg = args[nargs + k];
        }
        else if (PyUnicode_CompareWithASCIIString(key, "timeout") == 0) {
            *timeout_arg = args[nargs + k];
        }
        else {
            PyErr_Format(PyExc_TypeError, "txn() got an unexpected keyword "
                         "argument %R", key);
            return -1;
        }
    }
    return 0;
}

static PyObject *
Memory_txn(HandleObject *self, PyObject *const *args, Py_ssize_t nargs,
           PyObject *kwnames)
{
    PyObject *write_arg = Py_None, *timeout_arg = Py_None;
    if (parse_txn_args(args, nargs, kwnames, &write_arg, &timeout_arg) < 0) {
        return NULL;
    }
    double timeout;
    if (handle_check_open(self) < 0
        || handle_parse_timeout(timeout_arg, -1.0, &timeout) < 0) {
        return NULL;
    }
    int write = !self->seg.read_only;
    if (write_arg != Py_None && (write = PyObject_IsTrue(write_arg)) < 0) {
        return NULL;
    }
    if (write && self->seg.read_only) {
        raise_engine_error(STX_EREADONLY, self->seg.name);
        return NULL;
    }
    return txn_new(self, write, timeout);
}

static int
Memory_getbuffer(HandleObject *self, Py_buffer *view, int flags)
{
    if (handle_check_open(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->seg.data,
                          (Py_ssize_t)self->seg.data_size,
                          self->seg.read_only, flags) < 0) {
        return -1;
    }
    self->exports++;
    self->exported_directly = 1;
    return 0;
}

static void
Memory_releasebuffer(HandleObject *self, Py_buffer *view)
{
    self->exports--;
}

/* shr.buf: a memoryview of the data region over a View of its own, so
 * that close() can tell whether an array still points into it (numpy's
 * ndarray(buffer=shr.buf) keeps a reference to the View, not an export). */
static PyObject *
Memory_get_buf(HandleObject *self, void *closure)
{
    if (handle_check_open(self) < 0) {
        return NULL;
    }
    if (self->buf == NULL) {
        Py_ssize_t len = (Py_ssize_t)self->seg.data_size;
        PyObject *view = view_new(self, (char *)self->seg.data, 'B', 1, 1,
                                  &len, self->seg.read_only);
        self->buf = view ? PyMemoryView_FromObject(view) : NULL;
        if (self->buf == NULL) {
            Py_XDECREF(view);
            return NULL;
        }
        self->buf_view = view;
    }
    return Py_NewRef(self->buf);
}

static PyObject *
Memory_get_format(HandleObject *self, void *closure)
{
    if (self->fmt == NULL) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromStringAndSize(&self->fmt->code, 1);
}

static PyObject *
Memory_get_shape(HandleObject *self, void *closure)
{
    PyObject *shape = PyTuple_New(self->ndim);
    for (int i = 0; shape && i < self->ndim; i++) {
        PyTuple_SET_ITEM(shape, i, PyLong_FromSsize_t(self->shape[i]));
    }
    return shape;
}

/* shr.ndarray(copy=False): a read-only array over the whole segment.  Not
 * transactional: it shows commits as they happen.  copy=True returns a
 * consistent private copy taken inside a read txn. */
static PyObject *
Memory_ndarray(HandleObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"copy", NULL};
    int copy = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$p", kwlist, &copy)
        || handle_check_open(self) < 0) {
        return NULL;
    }
    PyObject *view = view_new(self, (char *)self->seg.data, self->fmt->code,
                              self->fmt->size, self->ndim, self->shape, 1);
    PyObject *array = view ? view_to_ndarray(view) : NULL;
    Py_XDECREF(view);
    if (array == NULL || !copy) {
        return array;
    }
    stx_txn txn = {0};
    PyObject *snapshot = NULL;
    if (txn_open(self, &txn, 0, -1) == 0) {
        snapshot = PyObject_CallMethod(array, "copy", NULL);
        if (txn_close(self, &txn, 1) < 0) {
            Py_CLEAR(snapshot);
        }
    }
    Py_DECREF(array);
    return snapshot;
}

static PyObject *
Memory_get_itemsize(HandleObject *self, void *closure)
{
    return PyLong_FromLong(self->fmt ? self->fmt->size : 0);
}

static PyMethodDef Memory_methods[] = {
    {"txn", (PyCFunction)(void (*)(void))Memory_txn,
     METH_FASTCALL | METH_KEYWORDS,
     "txn(write=None, timeout=None) -> a transaction to use with `with`"},
    {"ndarray", (PyCFunction)(void (*)(void))Memory_ndarray,
     METH_VARARGS | METH_KEYWORDS,
     "ndarray(*, copy=False) -> read-only numpy array of the whole segment "
     "(live; copy=True: a consistent snapshot)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Memory_getset[] = {
    {"format", (getter)Memory_get_format, NULL, "item struct code", NULL},
    {"itemsize", (getter)Memory_get_itemsize, NULL, NULL, NULL},
    {"shape", (getter)Memory_get_shape, NULL, "items per dimension", NULL},
    {"buf", (getter)Memory_get_buf, NULL,
     "memoryview of the data region (not transactional)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMappingMethods Memory_as_mapping = {
    .mp_length = (lenfunc)Memory_length,
    .mp_subscript = (binaryfunc)Memory_subscript,
    .mp_ass_subscript = (objobjargproc)Memory_ass_subscript,
};

static PyBufferProcs Memory_as_buffer = {
    .bf_getbuffer = (getbufferproc)Memory_getbuffer,
    .bf_releasebuffer = (releasebufferproc)Memory_releasebuffer,
};

PyTypeObject Memory_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmtxn._core.Memory",
    .tp_basicsize = sizeof(HandleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "A handle on a shared-memory segment of typed slots.",
    .tp_base = &Segment_Type,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Memory_init,
    .tp_as_mapping = &Memory_as_mapping,
    .tp_as_buffer = &Memory_as_buffer,
    .tp_iter = (getiterfunc)Memory_iter,
    .tp_methods = Memory_methods,
    .tp_getset = Memory_getset,
};
