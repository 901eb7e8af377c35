/*
 * py_view.c -- shmtxn._core.View: one typed, zero-copy export of a range of
 * a segment's data (format, shape, strides), made by t.ndarray(), t.buf and
 * shr.ndarray().  numpy is not needed to build: views speak the buffer
 * protocol, and numpy.asarray() is only called when the user asks for an
 * ndarray.
 *
 * Lifetime: a view made inside a txn is valid while the txn is open.  When
 * the txn ends it is invalidated (new exports fail) if nothing holds it; a
 * view still exported then keeps its memory readable, and the txn warns
 * that writes through it are no longer transactional.  Every export is
 * counted on the handle too, so close() refuses while any is alive: the
 * mapping can never vanish under an array.  Views may be shared between
 * threads: their counts change under the handle lock, together with the
 * handle's state (gate.c), so an export is taken only while the handle
 * is open and close() sees every one.
 */
#include "binding.h"

/* numpy.asarray(obj), importing numpy on first use. */
PyObject *
view_to_ndarray(binding_state *st, PyObject *obj)
{
    /* set once, by compare-and-swap (threads may race to import it); the
     * module state keeps it until the module is freed */
    PyObject *asarray = __atomic_load_n(&st->numpy_asarray,
                                        __ATOMIC_ACQUIRE);
    if (asarray == NULL) {
        PyObject *numpy = PyImport_ImportModule("numpy");
        if (numpy == NULL) {
            PyErr_SetString(PyExc_ImportError, "ndarray() needs numpy (pip "
                            "install numpy); without it, .buf gives a "
                            "memoryview of the same memory");
            return NULL;
        }
        PyObject *made = PyObject_GetAttrString(numpy, "asarray");
        Py_DECREF(numpy);
        if (made == NULL) {
            return NULL;
        }
        if (__atomic_compare_exchange_n(&st->numpy_asarray, &asarray, made,
                                        0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            asarray = made;
        }
        else {
            Py_DECREF(made); /* another thread's won: `asarray` is it */
        }
    }
    return PyObject_CallOneArg(asarray, obj);
}

PyObject *
view_new(HandleObject *mem, char *ptr, char format, int itemsize, int ndim,
         const Py_ssize_t *shape, int readonly)
{
    ViewObject *v = PyObject_GC_New(ViewObject, mem->st->View_Type);
    if (v == NULL) {
        return NULL;
    }
    v->mem = (HandleObject *)Py_NewRef(mem);
    v->ptr = ptr;
    v->readonly = readonly;
    v->valid = 1;
    v->format[0] = format;
    v->format[1] = '\0';
    v->itemsize = itemsize;
    v->ndim = ndim;
    v->exports = 0;
    Py_ssize_t stride = itemsize;
    for (int i = ndim - 1; i >= 0; i--) { /* C order */
        v->shape[i] = shape[i];
        v->strides[i] = stride;
        stride *= shape[i];
    }
    v->len = stride;
    PyObject_GC_Track(v);
    return (PyObject *)v;
}

int
view_end(ViewObject *v)
{
    int exported;
    HANDLE_LOCK(v->mem);
    exported = v->exports > 0;
    if (!exported) {
        v->valid = 0;
    }
    HANDLE_UNLOCK(v->mem);
    return exported;
}

int
view_getbuffer(ViewObject *v, Py_buffer *view, int flags)
{
    view->obj = NULL;
    if ((flags & PyBUF_WRITABLE) && v->readonly) {
        PyErr_SetString(PyExc_BufferError, "this view is read-only (a read "
                        "transaction, or a read-only handle)");
        return -1;
    }
    HandleObject *h = v->mem;
    int valid;
    HANDLE_LOCK(h);
    if (handle_state(h) != HS_OPEN) {
        v->valid = 0;
    }
    valid = v->valid;
    if (valid) {
        v->exports++;
        h->exports++;
    }
    HANDLE_UNLOCK(h);
    if (!valid) {
        if (handle_state(h) != HS_OPEN) {
            raise_error(h->st, ERR_SEGMENT_CLOSED, "segment %R is closed: "
                        "its views are no longer valid; open it again "
                        "and take a new view", h->name);
        }
        else {
            raise_error(h->st, STX_ECLOSED, "this view's transaction has "
                        "ended; take a new view inside a transaction");
        }
        return -1;
    }
    view->buf = v->ptr;
    view->obj = Py_NewRef(v);
    view->len = v->len;
    view->readonly = v->readonly;
    view->itemsize = v->itemsize;
    view->format = (flags & PyBUF_FORMAT) ? v->format : NULL;
    view->ndim = v->ndim;
    view->shape = (flags & PyBUF_ND) ? v->shape : NULL;
    view->strides = (flags & PyBUF_STRIDES) ? v->strides : NULL;
    view->suboffsets = NULL;
    view->internal = NULL;
    return 0;
}

static void
View_releasebuffer(ViewObject *v, Py_buffer *view)
{
    HANDLE_LOCK(v->mem);
    v->exports--;
    v->mem->exports--;
    HANDLE_UNLOCK(v->mem);
}

static void
View_dealloc(ViewObject *v)
{
    PyObject_GC_UnTrack(v);
    Py_CLEAR(v->mem);
    PyTypeObject *type = Py_TYPE(v);
    PyObject_GC_Del(v);
    Py_DECREF(type);
}

/* A View holds its handle, and the handle may hold it (through shr.buf):
 * the collector must see the cycle. */
static int
View_traverse(ViewObject *v, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(v));
    Py_VISIT(v->mem);
    return 0;
}

static PyObject *
View_repr(ViewObject *v)
{
    return PyUnicode_FromFormat("<shmtxn view of %R: format '%s', %zd bytes,"
                                " %s%s>", v->mem->name, v->format, v->len,
                                v->readonly ? "read-only" : "writable",
                                v->valid ? "" : ", ended");
}

static PyType_Slot View_slots[] = {
    {Py_tp_doc, "A typed zero-copy export of part of a segment."},
    {Py_tp_dealloc, View_dealloc},
    {Py_tp_traverse, View_traverse},
    {Py_tp_repr, View_repr},
    {Py_bf_getbuffer, view_getbuffer},
    {Py_bf_releasebuffer, View_releasebuffer},
    {0, NULL},
};

PyType_Spec View_spec = {
    .name = "shmtxn._core.View",
    .basicsize = sizeof(ViewObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = View_slots,
};
