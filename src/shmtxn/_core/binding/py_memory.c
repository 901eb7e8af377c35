/*
 * py_memory.c -- shmtxn._core.Memory: a handle on a slots segment, with
 * lock-free single reads and auto-committed single writes.  The Python
 * class shmtxn.SharedMemory subclasses it (memory.py) for repr and pickling;
 * the hot paths (indexing, txn()) stay here in C.
 */
#include "binding.h"

/* Longest attach wait for a creator still initialising (seconds). */
#define ATTACH_WAIT_DEFAULT 5.0

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
    if (a->size <= 0) {
        PyErr_Format(PyExc_ValueError, "size must be a positive number of "
                     "bytes (got %zd)", a->size);
        return -1;
    }
    /* The stdlib's call, SharedMemory(create=True, size=10), names bytes:
     * without format= or shape= any size goes, len() counting whole items
     * and `buf` every byte.  Whoever names the items gets them exactly. */
    if (a->size % itemsize != 0 && (a->format != NULL || a->ndim > 0)) {
        PyErr_Format(PyExc_ValueError, "size must be a positive multiple "
                     "of the %d-byte item of format '%c' (got %zd); "
                     "without format= and shape=, any size is accepted",
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
        raise_error(self->st, STX_EINCOMPAT, "segment '%s' has another "
                    "shape; omit shape= to use the stored one",
                    self->seg.name);
        return -1;
    }
    return 0;
}

/* The shape of `ndim` dimensions as "(2, 3)" into buf. */
static const char *
shape_text(const uint64_t *shape, uint32_t ndim, char *buf, size_t size)
{
    size_t n = (size_t)snprintf(buf, size, "(");
    for (uint32_t i = 0; i < ndim && n < size; i++) {
        n += (size_t)snprintf(buf + n, size - n, "%s%llu", i ? ", " : "",
                              (unsigned long long)shape[i]);
    }
    if (n < size) {
        snprintf(buf + n, size - n, ndim == 1 ? ",)" : ")");
    }
    return buf;
}

/* After create=None attached instead of creating: the segment must be the
 * one this call would have created (format, size and shape as resolved,
 * defaults included), or which process came first would decide what
 * everyone gets. */
static int
check_either(HandleObject *self, const open_args *a)
{
    stx_header *hdr = self->seg.hdr;
    const item_format *stored = item_format_find(hdr->format);
    char want[200], have[200];
    if (stored == NULL || stored->size != hdr->itemsize) {
        PyErr_Clear();
        raise_error(self->st, STX_ECORRUPT, "segment '%s' has an unknown "
                    "item format", self->seg.name);
        return -1;
    }
    if (stored->code != self->fmt->code) {
        raise_error(self->st, STX_EINCOMPAT, "segment '%s' exists with "
                    "format '%c', but this create=None call would create "
                    "format '%c'%s; pass format='%c' (what its creator "
                    "used), or use another name", self->seg.name,
                    stored->code, self->fmt->code,
                    a->format ? "" : " (the default)", stored->code);
        return -1;
    }
    if ((uint64_t)a->size != hdr->data_size) {
        raise_error(self->st, STX_EINCOMPAT, "segment '%s' exists with "
                    "size=%llu bytes, but this create=None call would "
                    "create %zd; pass size=%llu (what its creator used), "
                    "or use another name", self->seg.name,
                    (unsigned long long)hdr->data_size, a->size,
                    (unsigned long long)hdr->data_size);
        return -1;
    }
    int same = a->ndim == hdr->ndim;
    for (uint32_t i = 0; same && i < a->ndim; i++) {
        same = a->shape[i] == hdr->shape[i];
    }
    if (!same) {
        shape_text(hdr->shape, hdr->ndim, have, sizeof(have));
        raise_error(self->st, STX_EINCOMPAT, "segment '%s' exists with "
                    "shape=%s, but this create=None call would create "
                    "shape=%s; pass shape=%s (what its creator used), or "
                    "use another name", self->seg.name, have,
                    shape_text(a->shape, a->ndim, want, sizeof(want)), have);
        return -1;
    }
    self->fmt = stored;
    return handle_check_either(self, a);
}

/* After attaching: the caller's size, format and shape must match. */
static int
check_attached(HandleObject *self, const open_args *a)
{
    stx_header *hdr = self->seg.hdr;
    const item_format *stored = item_format_find(hdr->format);
    if (stored == NULL || stored->size != hdr->itemsize) {
        PyErr_Clear();
        raise_error(self->st, STX_ECORRUPT, "segment '%s' has an unknown "
                    "item format", self->seg.name);
        return -1;
    }
    if (a->format != NULL && self->fmt->code != stored->code) {
        raise_error(self->st, STX_EINCOMPAT, "segment '%s' stores format "
                    "'%c', not '%c'; omit format= to use the stored one",
                    self->seg.name, stored->code, self->fmt->code);
        return -1;
    }
    if (a->size != 0 && (uint64_t)a->size != hdr->data_size) {
        raise_error(self->st, STX_EINCOMPAT, "segment '%s' holds %llu "
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

/* Memory(name=None, create=False, size=0, *, read_only, format,
 * undo_size, max_processes, timeout, mode, shape, data, populate, track):
 * memory.py's SharedMemory.__init__ shows them with their defaults.
 * track= is the stdlib's (3.13) and changes nothing here: no
 * resource_tracker is ever involved (docs/semantics.md, Lifetimes). */
static int
parse_open_args(PyObject *args, PyObject *kwds, open_args *a)
{
    static char *kwlist[] = {"name", "create", "size", "read_only",
                             "format", "undo_size", "max_processes",
                             "timeout", "mode", "shape", "data", "populate",
                             "track", NULL};
    PyObject *create_arg = NULL, *timeout_arg = NULL, *shape_arg = NULL,
             *data_arg = NULL, *track_arg = NULL;
    a->mode = 0600;
    if (!PyArg_ParseTupleAndKeywords(
            args, kwds, "|zOn$pzniOiOOpO", kwlist, &a->name, &create_arg,
            &a->size, &a->read_only, &a->format, &a->undo_size,
            &a->max_processes, &timeout_arg, &a->mode, &shape_arg,
            &data_arg, &a->populate, &track_arg)
        || handle_parse_create(create_arg, a) < 0
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
    int opened = 0;
    if (rc == 0) {
        rc = handle_open(self, &a, &opts);
        opened = rc == 0;
    }
    if (rc == 0 && !self->created
        && (a.create == OPEN_EITHER ? check_either(self, &a)
                                    : check_attached(self, &a)) < 0) {
        rc = -1;
    }
    if (a.data.obj != NULL) {
        PyBuffer_Release(&a.data);
    }
    if (rc == 0) {
        adopt_geometry(self);
    }
    return opened ? handle_publish(self, rc == 0) : -1;
}

/* ------------------------------------------------------------------ */
/* items (slots.c), txn(), buffers, attributes                         */

static PyObject *
Memory_subscript(HandleObject *self, PyObject *key)
{
    return slots_get(self, key, NULL);
}

static int
Memory_ass_subscript(HandleObject *self, PyObject *key, PyObject *value)
{
    return slots_set(self, key, value, NULL);
}

static Py_ssize_t
Memory_length(HandleObject *self)
{
    return handle_check_open(self) < 0 ? -1 : self->nitems;
}

static PyObject *
Memory_iter(HandleObject *self)
{
    PyObject *list = slots_values(self, NULL);
    PyObject *it = list ? PyObject_GetIter(list) : NULL;
    Py_XDECREF(list);
    return it;
}

/* shr.txn(write=None, timeout=None, *, until=None): a new Txn, not yet
 * entered (with `until`, a context manager that waits for it to hold). */
static PyObject *
Memory_txn(HandleObject *self, PyObject *const *args, Py_ssize_t nargs,
           PyObject *kwnames)
{
    int write;
    double timeout;
    PyObject *until;
    if (txn_parse_args(self, args, nargs, kwnames, &write, &timeout,
                       &until) < 0) {
        return NULL;
    }
    if (until != NULL) {
        return txn_until(self, until, write, timeout);
    }
    return txn_new(self, write, timeout);
}

/* An export of the handle itself, counted while it is open (gate.c). */
static int
Memory_getbuffer(HandleObject *self, Py_buffer *view, int flags)
{
    view->obj = NULL;
    int open;
    HANDLE_LOCK(self);
    open = handle_state(self) == HS_OPEN;
    if (open) {
        self->exports++;
        self->exported_directly = 1;
    }
    HANDLE_UNLOCK(self);
    if (!open) {
        return handle_check_open(self);
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->seg.data,
                          (Py_ssize_t)self->seg.data_size,
                          self->seg.read_only, flags) < 0) {
        HANDLE_LOCK(self);
        self->exports--;
        HANDLE_UNLOCK(self);
        return -1;
    }
    return 0;
}

static void
Memory_releasebuffer(HandleObject *self, Py_buffer *view)
{
    HANDLE_LOCK(self);
    self->exports--;
    HANDLE_UNLOCK(self);
}

/* shr.buf: a memoryview of the data region over a View of its own, so
 * that close() can tell whether an array still points into it (numpy's
 * ndarray(buffer=shr.buf) keeps a reference to the View, not an export). */
static PyObject *
Memory_get_buf(HandleObject *self, void *closure)
{
    PyObject *buf = NULL;
    Py_BEGIN_CRITICAL_SECTION(self); /* one cache, made once; close() */
    if (handle_check_open(self) == 0 && self->buf == NULL) {
        Py_ssize_t len = (Py_ssize_t)self->seg.data_size;
        PyObject *view = view_new(self, (char *)self->seg.data, 'B', 1, 1,
                                  &len, self->seg.read_only);
        self->buf = view ? PyMemoryView_FromObject(view) : NULL;
        if (self->buf == NULL) {
            Py_XDECREF(view);
        }
        else {
            self->buf_view = view;
        }
    }
    buf = Py_XNewRef(self->buf);
    Py_END_CRITICAL_SECTION();
    return buf;
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
    PyObject *array = view ? view_to_ndarray(self->st, view) : NULL;
    Py_XDECREF(view);
    if (array == NULL || !copy) {
        return array;
    }
    stx_txn txn = {0};
    PyObject *snapshot = NULL;
    if (own_open(self, &txn, 0, 1) == 0) {
        snapshot = PyObject_CallMethod(array, "copy", NULL);
        if (own_close(self, &txn, 1) < 0) {
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
     "txn($self, /, write=None, timeout=None, *, until=None)\n--\n\n"
     "A transaction to use with `with`.  until=pred: open it once "
     "pred(txn) holds, re-checked after each commit; the body runs in the "
     "snapshot pred saw."},
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

static PyType_Slot Memory_slots[] = {
    {Py_tp_doc, "A handle on a shared-memory segment of typed slots."},
    {Py_tp_new, handle_new},
    {Py_tp_init, Memory_init},
    {Py_mp_length, Memory_length},
    {Py_mp_subscript, Memory_subscript},
    {Py_mp_ass_subscript, Memory_ass_subscript},
    {Py_bf_getbuffer, Memory_getbuffer},
    {Py_bf_releasebuffer, Memory_releasebuffer},
    {Py_tp_iter, Memory_iter},
    {Py_tp_methods, Memory_methods},
    {Py_tp_getset, Memory_getset},
    {0, NULL},
};

/* A subclass of Segment (module.c passes the base). */
PyType_Spec Memory_spec = {
    .name = "shmtxn._core.Memory",
    .basicsize = sizeof(HandleObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = Memory_slots,
};
