/*
 * codec.c -- how SharedDict keys and values become bytes, and back.
 *
 * Keys are encoded canonically, so that every process hashes and compares
 * them the same way and keys equal in a dict are one key here.  The bytes
 * are the engine's (engine/dict/key.h documents them): this file only
 * feeds Python values to its builder and turns what its walker reads back
 * into Python values.  A top-level bool or integral float remembers its
 * type in the record's key_kind, so d[True] comes back as True, like the
 * key a dict keeps, and d[-0.0] = 1 lists -0.0 as a dict does.
 *
 * Values take a one-byte tag: 'b' bytes, 's' str, 'i' int64, 'f' float,
 * 'T'/'F' bool, 'n' None -- all exact types, stored without pickle --
 * and 'p' for a pickle (protocol 5) of anything else.
 */
#include "binding.h"

static const char bad_key_types[] = "str, bytes, int, float, bool, None or "
                                    "tuples of them";

/* ------------------------------------------------------------------ */
/* encoding keys: Python values fed to the engine's builder (key.c)    */

void
key_buf_release(key_buf *kb)
{
    stx_keybuf_release(kb);
}

/* The builder's error as a Python exception; -1. */
static int
builder_failed(int rc)
{
    if (rc == STX_ENOMEM) {
        PyErr_NoMemory();
    }
    else {
        PyErr_Format(PyExc_ValueError, "bad SharedDict key: %s",
                     stx_detail());
    }
    return -1;
}

/* An int too large for int64: its two's complement bytes, which the
 * builder stores canonically. */
static int
encode_big_int(PyObject *v, key_buf *kb)
{
    /* int.bit_length(): the public way to size it (rare: past int64) */
    PyObject *nbits = PyObject_CallMethod(v, "bit_length", NULL);
    size_t bits = nbits != NULL ? PyLong_AsSize_t(nbits) : (size_t)-1;
    Py_XDECREF(nbits);
    if (bits == (size_t)-1 && PyErr_Occurred()) {
        return -1;
    }
    PyObject *to_bytes = PyObject_GetAttrString(v, "to_bytes");
    PyObject *args = Py_BuildValue("(ns)", (Py_ssize_t)(bits / 8 + 1),
                                   "little");
    PyObject *kw = Py_BuildValue("{sO}", "signed", Py_True);
    PyObject *raw = to_bytes && args && kw ? PyObject_Call(to_bytes, args, kw)
                                           : NULL;
    Py_XDECREF(to_bytes);
    Py_XDECREF(args);
    Py_XDECREF(kw);
    if (raw == NULL) {
        return -1;
    }
    int rc = stx_key_bigint(kb, PyBytes_AS_STRING(raw),
                            (size_t)PyBytes_GET_SIZE(raw));
    Py_DECREF(raw);
    return rc;
}

static int
encode_int(PyObject *v, key_buf *kb)
{
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (n == -1 && PyErr_Occurred()) {
        return -1;
    }
    return overflow ? encode_big_int(v, kb) : stx_key_int(kb, (int64_t)n);
}

/* A str as UTF-8, lone surrogates kept (as "surrogatepass"). */
static int
encode_str(PyObject *v, key_buf *kb)
{
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(v, &n);
    if (utf8 != NULL) {
        return stx_key_str(kb, utf8, (size_t)n);
    }
    PyErr_Clear(); /* lone surrogates */
    PyObject *raw = PyUnicode_AsEncodedString(v, "utf-8", "surrogatepass");
    if (raw == NULL) {
        return -1;
    }
    int rc = stx_key_str(kb, PyBytes_AS_STRING(raw),
                         (size_t)PyBytes_GET_SIZE(raw));
    Py_DECREF(raw);
    return rc;
}

static int encode_key(PyObject *key, key_buf *kb);

static int
encode_tuple(PyObject *v, key_buf *kb)
{
    int rc = stx_key_tuple_begin(kb);
    for (Py_ssize_t i = 0; rc == 0 && i < PyTuple_GET_SIZE(v); i++) {
        rc = encode_key(PyTuple_GET_ITEM(v, i), kb);
    }
    return rc == 0 ? stx_key_tuple_end(kb) : rc;
}

/* Feed `key` to the builder: 0, -1 with a Python exception, or an
 * engine code (the builder's own error). */
static int
encode_key(PyObject *key, key_buf *kb)
{
    if (PyUnicode_Check(key)) {
        return encode_str(key, kb);
    }
    if (PyBytes_Check(key)) {
        return stx_key_bytes(kb, PyBytes_AS_STRING(key),
                             (size_t)PyBytes_GET_SIZE(key));
    }
    if (PyBool_Check(key)) {
        return stx_key_bool(kb, key == Py_True);
    }
    if (PyLong_Check(key)) {
        return encode_int(key, kb);
    }
    if (PyFloat_Check(key)) {
        return stx_key_double(kb, PyFloat_AS_DOUBLE(key));
    }
    if (key == Py_None) {
        return stx_key_none(kb);
    }
    if (PyTuple_Check(key) && kb->depth < STX_KEY_MAX_DEPTH) {
        return encode_tuple(key, kb);
    }
    PyErr_Format(PyExc_TypeError, "SharedDict keys must be %s, not %.100s%s",
                 bad_key_types, Py_TYPE(key)->tp_name,
                 PyTuple_Check(key) ? " nested this deep" : "");
    return -1;
}

int
key_encode(PyObject *key, key_buf *kb)
{
    stx_keybuf_init(kb);
    int rc = encode_key(key, kb);
    if (rc > 0 || (rc < 0 && !PyErr_Occurred())) {
        rc = builder_failed(rc);
    }
    if (rc != 0) {
        stx_keybuf_release(kb);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* decoding keys: the engine's walker (key.c) turned into Python       */

/* Raise CorruptSegmentError about an undecodable stored key or value in
 * the segment of `h`. */
static PyObject *
bad_bytes(const HandleObject *h, const char *what)
{
    raise_error(h->st, STX_ECORRUPT, "segment '%U': a stored %s cannot be "
                "decoded; run `shmtxn check %U`", h->name, what, h->name);
    return NULL;
}

/* Mark bytes the walker cannot read; decoded_or_corrupt() turns this
 * into CorruptSegmentError. */
static PyObject *
undecodable(void)
{
    PyErr_SetString(PyExc_ValueError, "undecodable key bytes");
    return NULL;
}

/* `v`, or CorruptSegmentError in place of the ValueError (a bad UTF-8
 * string, an impossible number, bytes the walker rejects) that decoding
 * damaged bytes raised. */
static PyObject *
decoded_or_corrupt(const HandleObject *h, PyObject *v, const char *what)
{
    if (v == NULL && (PyErr_ExceptionMatches(PyExc_ValueError)
                      || PyErr_ExceptionMatches(PyExc_OverflowError))) {
        PyErr_Clear();
        return bad_bytes(h, what);
    }
    return v;
}

/* int.from_bytes(raw, "little", signed=True) */
static PyObject *
decode_big_int(const uint8_t *p, Py_ssize_t n)
{
    PyObject *raw = PyBytes_FromStringAndSize((const char *)p, n);
    PyObject *args = raw ? Py_BuildValue("(Os)", raw, "little") : NULL;
    PyObject *kw = args ? Py_BuildValue("{sO}", "signed", Py_True) : NULL;
    PyObject *from_bytes = kw ? PyObject_GetAttrString(
                                    (PyObject *)&PyLong_Type, "from_bytes")
                              : NULL;
    PyObject *v = from_bytes ? PyObject_Call(from_bytes, args, kw) : NULL;
    Py_XDECREF(from_bytes);
    Py_XDECREF(kw);
    Py_XDECREF(args);
    Py_XDECREF(raw);
    return v;
}

static PyObject *decode_item(const stx_key_item *item);

static PyObject *
decode_tuple(const stx_key_item *tuple)
{
    PyObject *items = PyList_New(0);
    size_t pos = 0;
    stx_key_item elem;
    int rc;
    while (items != NULL
           && (rc = stx_key_tuple_next(tuple, &pos, &elem)) == 0) {
        PyObject *item = decode_item(&elem);
        if (item == NULL || PyList_Append(items, item) < 0) {
            Py_CLEAR(items);
        }
        Py_XDECREF(item);
    }
    if (items != NULL && rc != STX_ENOENT) {
        Py_CLEAR(items);
        undecodable();
    }
    PyObject *t = items ? PyList_AsTuple(items) : NULL;
    Py_XDECREF(items);
    return t;
}

static PyObject *
decode_item(const stx_key_item *item)
{
    const char *body = (const char *)item->data;
    Py_ssize_t len = (Py_ssize_t)item->len;
    switch (item->type) {
    case STX_KT_STR:
        return PyUnicode_DecodeUTF8(body, len, "surrogatepass");
    case STX_KT_BYTES:
        return PyBytes_FromStringAndSize(body, len);
    case STX_KT_INT:
        return PyLong_FromLongLong(item->i);
    case STX_KT_BIGINT:
        return decode_big_int(item->data, len);
    case STX_KT_FLOAT:
        return PyFloat_FromDouble(item->d);
    case STX_KT_BOOL:
        return PyBool_FromLong((long)item->i);
    case STX_KT_NONE:
        return Py_NewRef(Py_None);
    case STX_KT_TUPLE:
        return decode_tuple(item);
    }
    return undecodable();
}

PyObject *
key_decode_plain(const uint8_t *p, size_t n, uint8_t kind)
{
    stx_key_item item;
    if (stx_key_parse(p, n, kind, &item) != 0) {
        return undecodable();
    }
    return decode_item(&item);
}

PyObject *
key_decode(const HandleObject *h, const uint8_t *p, uint32_t n,
           uint8_t kind)
{
    return decoded_or_corrupt(h, key_decode_plain(p, n, kind), "key");
}

/* ------------------------------------------------------------------ */
/* values                                                              */

/* (pickle.dumps, pickle.loads), imported on first use and then kept for
 * good: published whole by one compare-and-swap, so a thread never sees
 * one function without the other (threads that race both import; the
 * tuple that loses is dropped). */
static _Atomic(PyObject *) pickle_funcs;

/* pickle.dumps (which 0) or pickle.loads (1), borrowed; NULL with an
 * exception. */
static PyObject *
pickle_func(int which)
{
    PyObject *funcs = atomic_load_explicit(&pickle_funcs,
                                           memory_order_acquire);
    if (funcs == NULL) {
        PyObject *pickle = PyImport_ImportModule("pickle");
        if (pickle == NULL) {
            return NULL;
        }
        PyObject *dumps = PyObject_GetAttrString(pickle, "dumps");
        PyObject *loads = dumps ? PyObject_GetAttrString(pickle, "loads")
                                : NULL;
        PyObject *made = loads ? PyTuple_Pack(2, dumps, loads) : NULL;
        Py_XDECREF(dumps);
        Py_XDECREF(loads);
        Py_DECREF(pickle);
        if (made == NULL) {
            return NULL;
        }
        if (atomic_compare_exchange_strong(&pickle_funcs, &funcs, made)) {
            funcs = made;
        }
        else {
            Py_DECREF(made); /* another thread's won: `funcs` is it */
        }
    }
    return PyTuple_GET_ITEM(funcs, which);
}

/* Point `vb` at `n` bytes, tagged. */
static int
value_set(value_buf *vb, char tag, const void *p, Py_ssize_t n)
{
    vb->tag = (uint8_t)tag;
    vb->bytes = p;
    vb->len = n;
    return 0;
}

/* A str value as UTF-8 (the str's cached copy when it has one). */
static int
encode_str_value(PyObject *v, value_buf *vb)
{
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(v, &n);
    if (utf8 != NULL) {
        return value_set(vb, 's', utf8, n);
    }
    PyErr_Clear();
    vb->owner = PyUnicode_AsEncodedString(v, "utf-8", "surrogatepass");
    if (vb->owner == NULL) {
        return -1;
    }
    return value_set(vb, 's', PyBytes_AS_STRING(vb->owner),
                     PyBytes_GET_SIZE(vb->owner));
}

/* Anything else: pickle protocol 5. */
static int
encode_pickled(PyObject *v, value_buf *vb)
{
    PyObject *dumps = pickle_func(0);
    if (dumps == NULL) {
        return -1;
    }
    vb->owner = PyObject_CallFunction(dumps, "Oi", v, 5);
    if (vb->owner == NULL) {
        if (PyErr_ExceptionMatches(PyExc_RecursionError)) {
            raise_from_cause(PyExc_RecursionError, "a %.100s nested "
                                   "too deeply to be stored in a "
                                   "SharedDict: pickling it hit Python's "
                                   "recursion limit; flatten it, or raise "
                                   "sys.setrecursionlimit()",
                                   Py_TYPE(v)->tp_name);
        }
        else if (PyErr_ExceptionMatches(PyExc_Exception)
                 && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
            raise_from_cause(PyExc_TypeError, "a %.100s cannot be "
                                   "stored in a SharedDict: values must be "
                                   "picklable", Py_TYPE(v)->tp_name);
        }
        return -1;
    }
    if (!PyBytes_Check(vb->owner)) {
        Py_CLEAR(vb->owner);
        PyErr_SetString(PyExc_TypeError, "pickle.dumps returned no bytes");
        return -1;
    }
    return value_set(vb, 'p', PyBytes_AS_STRING(vb->owner),
                     PyBytes_GET_SIZE(vb->owner));
}

int
value_encode(PyObject *v, value_buf *vb)
{
    vb->owner = NULL;
    if (PyBytes_CheckExact(v)) {
        return value_set(vb, 'b', PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v));
    }
    if (PyUnicode_CheckExact(v)) {
        return encode_str_value(v, vb);
    }
    if (PyBool_Check(v)) {
        return value_set(vb, v == Py_True ? 'T' : 'F', NULL, 0);
    }
    if (v == Py_None) {
        return value_set(vb, 'n', NULL, 0);
    }
    if (PyFloat_CheckExact(v)) {
        vb->number.d = PyFloat_AS_DOUBLE(v);
        return value_set(vb, 'f', &vb->number, sizeof(double));
    }
    if (PyLong_CheckExact(v)) {
        int overflow;
        vb->number.i = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (!overflow) {
            return value_set(vb, 'i', &vb->number, sizeof(int64_t));
        }
    }
    return encode_pickled(v, vb);
}

void
value_buf_release(value_buf *vb)
{
    Py_CLEAR(vb->owner);
}

PyObject *
value_decode_plain(uint8_t tag, const uint8_t *p, uint64_t n, int *pickled)
{
    *pickled = 0;
    switch (tag) {
    case 'b':
        return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    case 's':
        return PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n,
                                    "surrogatepass");
    case 'i': {
        int64_t v;
        if (n != sizeof(v)) {
            break;
        }
        memcpy(&v, p, sizeof(v));
        return PyLong_FromLongLong(v);
    }
    case 'f': {
        double d;
        if (n != sizeof(d)) {
            break;
        }
        memcpy(&d, p, sizeof(d));
        return PyFloat_FromDouble(d);
    }
    case 'T':
        return Py_NewRef(Py_True);
    case 'F':
        return Py_NewRef(Py_False);
    case 'n':
        return Py_NewRef(Py_None);
    case 'p':
        *pickled = 1;
        return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    }
    return undecodable();
}

PyObject *
value_decode(const HandleObject *h, uint8_t tag, const uint8_t *p,
             uint64_t n, int *pickled)
{
    return decoded_or_corrupt(h, value_decode_plain(tag, p, n, pickled),
                              "value");
}

PyObject *
value_loads(PyObject *raw)
{
    PyObject *loads = pickle_func(1);
    if (loads == NULL) {
        return NULL;
    }
    return PyObject_CallOneArg(loads, raw);
}

/* 1 if the exception set is one of shmtxn's own (its classes are heap
 * types; the table's builtin ones, ValueError and such, are not): code
 * run by unpickling used shmtxn (a handle closed meanwhile, say), which
 * says nothing about the pickle. */
static int
raised_shmtxn_error(const binding_state *st)
{
    for (int i = 0; i < ERROR_TABLE_SIZE; i++) {
        PyObject *cls = st->errors[i];
        if (cls != NULL && PyType_HasFeature((PyTypeObject *)cls,
                                             Py_TPFLAGS_HEAPTYPE)
            && PyErr_ExceptionMatches(cls)) {
            return 1;
        }
    }
    return 0;
}

PyObject *
value_unpickle(const HandleObject *h, PyObject *raw)
{
    PyObject *v = value_loads(raw);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_Exception)
        && !PyErr_ExceptionMatches(PyExc_MemoryError)
        && !raised_shmtxn_error(h->st)) {
        /* Whatever pickle raised (UnpicklingError, EOFError, ValueError,
         * an import that fails...): the stored bytes do not unpickle
         * here.  Say so with one class; the original is the __cause__. */
        PyObject *exc = exc_take();
        PyObject *text = PyObject_Str(exc);
        if (text == NULL) {
            PyErr_Clear();
        }
        PyObject *what = PyUnicode_FromFormat(
            "%s: %S", Py_TYPE(exc)->tp_name, text ? text : Py_None);
        Py_XDECREF(text);
        exc_restore(exc);
        if (what == NULL) {
            return NULL;
        }
        raise_error_from_cause(h->st, STX_ECORRUPT, "a value stored in "
                               "SharedDict '%U' cannot be unpickled (%U): "
                               "its pickle is damaged, or it needs a class "
                               "this process cannot import; `shmtxn check` "
                               "verifies the segment, and storing or "
                               "deleting the key replaces the value",
                               h->name, what);
        Py_DECREF(what);
    }
    return v;
}
