/*
 * codec.c -- how SharedDict keys and values become bytes, and back.
 *
 * Keys are encoded canonically, so that every process hashes and compares
 * them the same way and keys equal in a dict are one key here:
 *
 *   str    's' UTF-8 (lone surrogates kept, as "surrogatepass")
 *   bytes  'b' the bytes
 *   int    'i' 8 bytes little-endian if it fits int64, else
 *          'I' two's complement little-endian, minimal length
 *   float  integral and finite: as the int it equals (so 1.0 == 1);
 *          else 'f' 8 bytes (every NaN as one canonical NaN)
 *   bool   as the int 0 or 1 (so True == 1)
 *   None   'n'
 *   tuple  't' then per element a 4-byte length and its encoding
 *
 * A top-level bool or integral float remembers its type in the record's
 * key_kind, so d[True] comes back as True, like the key a dict keeps; the
 * float -0.0 (equal to 0, so encoded as the int 0) has a kind of its own,
 * so d[-0.0] = 1 lists -0.0 as a dict does.
 *
 * Values take a one-byte tag: 'b' bytes, 's' str, 'i' int64, 'f' float,
 * 'T'/'F' bool, 'n' None -- all exact types, stored without pickle --
 * and 'p' for a pickle (protocol 5) of anything else.
 */
#include <math.h>

#include "binding.h"

/* Nesting depth of tuple keys we accept. */
#define MAX_KEY_DEPTH 32

/* key_kind values: the type of a top-level key that encodes as an int. */
enum { KEY_PLAIN = 0, KEY_BOOL = 1, KEY_FLOAT = 2, KEY_NEG_ZERO = 3 };

static const char bad_key_types[] = "str, bytes, int, float, bool, None or "
                                    "tuples of them";

/* ------------------------------------------------------------------ */
/* the growable buffer keys are encoded into                           */

/* Make room for `more` bytes; -1 (MemoryError) on failure. */
static int
key_reserve(key_buf *kb, Py_ssize_t more)
{
    if (kb->len + more <= kb->cap) {
        return 0;
    }
    Py_ssize_t cap = (kb->len + more) * 2;
    uint8_t *grown = kb->bytes == kb->stack ? PyMem_Malloc(cap)
                                            : PyMem_Realloc(kb->bytes, cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (kb->bytes == kb->stack) {
        memcpy(grown, kb->stack, kb->len);
    }
    kb->bytes = grown;
    kb->cap = cap;
    return 0;
}

/* Append a tag byte and `n` bytes. */
static int
key_put(key_buf *kb, char tag, const void *src, Py_ssize_t n)
{
    if (key_reserve(kb, n + 1) < 0) {
        return -1;
    }
    kb->bytes[kb->len++] = (uint8_t)tag;
    if (n > 0) {
        memcpy(kb->bytes + kb->len, src, n);
        kb->len += n;
    }
    return 0;
}

void
key_buf_init(key_buf *kb)
{
    kb->bytes = kb->stack;
    kb->len = 0;
    kb->cap = sizeof(kb->stack);
    kb->kind = KEY_PLAIN;
}

void
key_buf_release(key_buf *kb)
{
    if (kb->bytes != kb->stack) {
        PyMem_Free(kb->bytes);
    }
    key_buf_init(kb);
}

/* ------------------------------------------------------------------ */
/* encoding keys                                                       */

/* An int too large for int64: 'I' and its minimal two's complement. */
static int
encode_big_int(PyObject *v, key_buf *kb)
{
    size_t bits = _PyLong_NumBits(v);
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
    int rc = key_put(kb, 'I', PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw));
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
    if (overflow) {
        return encode_big_int(v, kb);
    }
    int64_t le = (int64_t)n; /* native order: the ABI word pins it */
    return key_put(kb, 'i', &le, sizeof(le));
}

static int
encode_float(double d, key_buf *kb)
{
    if (isfinite(d) && d == floor(d)) {
        if (fabs(d) < 9.2e18) {
            int64_t n = (int64_t)d;
            return key_put(kb, 'i', &n, sizeof(n));
        }
        PyObject *n = PyLong_FromDouble(d);
        int rc = n ? encode_big_int(n, kb) : -1;
        Py_XDECREF(n);
        return rc;
    }
    if (isnan(d)) {
        d = NAN;
    }
    return key_put(kb, 'f', &d, sizeof(d));
}

static int encode_key(PyObject *key, key_buf *kb, int depth);

static int
encode_str(PyObject *v, key_buf *kb)
{
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(v, &n);
    if (utf8 != NULL) {
        return key_put(kb, 's', utf8, n);
    }
    PyErr_Clear(); /* lone surrogates */
    PyObject *raw = PyUnicode_AsEncodedString(v, "utf-8", "surrogatepass");
    int rc = raw ? key_put(kb, 's', PyBytes_AS_STRING(raw),
                           PyBytes_GET_SIZE(raw))
                 : -1;
    Py_XDECREF(raw);
    return rc;
}

static int
encode_tuple(PyObject *v, key_buf *kb, int depth)
{
    if (key_put(kb, 't', NULL, 0) < 0) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(v); i++) {
        Py_ssize_t at = kb->len;
        uint32_t len = 0;
        if (key_put(kb, 0, &len, sizeof(len) - 1) < 0) { /* placeholder */
            return -1;
        }
        if (encode_key(PyTuple_GET_ITEM(v, i), kb, depth + 1) < 0) {
            return -1;
        }
        len = (uint32_t)(kb->len - at - sizeof(len));
        memcpy(kb->bytes + at, &len, sizeof(len));
    }
    return 0;
}

static int
encode_key(PyObject *key, key_buf *kb, int depth)
{
    if (PyUnicode_Check(key)) {
        return encode_str(key, kb);
    }
    if (PyBytes_Check(key)) {
        return key_put(kb, 'b', PyBytes_AS_STRING(key),
                       PyBytes_GET_SIZE(key));
    }
    if (PyLong_Check(key)) {
        return encode_int(key, kb);
    }
    if (PyFloat_Check(key)) {
        return encode_float(PyFloat_AS_DOUBLE(key), kb);
    }
    if (key == Py_None) {
        return key_put(kb, 'n', NULL, 0);
    }
    if (PyTuple_Check(key) && depth < MAX_KEY_DEPTH) {
        return encode_tuple(key, kb, depth);
    }
    PyErr_Format(PyExc_TypeError, "SharedDict keys must be %s, not %.100s%s",
                 bad_key_types, Py_TYPE(key)->tp_name,
                 PyTuple_Check(key) ? " nested this deep" : "");
    return -1;
}

int
key_encode(PyObject *key, key_buf *kb)
{
    key_buf_init(kb);
    if (PyUnicode_CheckExact(key)) { /* the common case, first */
        return encode_str(key, kb);
    }
    kb->kind = PyBool_Check(key) ? KEY_BOOL
               : PyFloat_Check(key) ? KEY_FLOAT : KEY_PLAIN;
    if (encode_key(key, kb, 0) < 0) {
        key_buf_release(kb);
        return -1;
    }
    if (kb->kind == KEY_FLOAT && kb->bytes[0] == 'f') {
        kb->kind = KEY_PLAIN; /* stored as a float anyway */
    }
    else if (kb->kind == KEY_FLOAT && PyFloat_AS_DOUBLE(key) == 0.0
             && signbit(PyFloat_AS_DOUBLE(key))) {
        kb->kind = KEY_NEG_ZERO; /* the int 0 that was -0.0 */
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* decoding keys                                                       */

/* Raise CorruptSegmentError about an undecodable stored key or value. */
static PyObject *
bad_bytes(const char *what)
{
    raise_named("CorruptSegmentError", "a stored %s cannot be decoded; run "
                "`shmtxn check` on the segment", what);
    return NULL;
}

/* `v`, or CorruptSegmentError in place of the ValueError (a bad UTF-8
 * string, an impossible number) that decoding damaged bytes raised. */
static PyObject *
decoded_or_corrupt(PyObject *v, const char *what)
{
    if (v == NULL && (PyErr_ExceptionMatches(PyExc_ValueError)
                      || PyErr_ExceptionMatches(PyExc_OverflowError))) {
        PyErr_Clear();
        return bad_bytes(what);
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

static PyObject *decode_key(const uint8_t *p, Py_ssize_t n);

static PyObject *
decode_tuple(const uint8_t *p, Py_ssize_t n)
{
    PyObject *items = PyList_New(0);
    while (items != NULL && n > 0) {
        uint32_t len;
        if (n < (Py_ssize_t)sizeof(len)) {
            Py_DECREF(items);
            return bad_bytes("key");
        }
        memcpy(&len, p, sizeof(len));
        p += sizeof(len);
        n -= sizeof(len);
        PyObject *item = len <= n ? decode_key(p, len) : bad_bytes("key");
        if (item == NULL || PyList_Append(items, item) < 0) {
            Py_XDECREF(item);
            Py_CLEAR(items);
            break;
        }
        Py_DECREF(item);
        p += len;
        n -= len;
    }
    PyObject *tuple = items ? PyList_AsTuple(items) : NULL;
    Py_XDECREF(items);
    return tuple;
}

static PyObject *
decode_key(const uint8_t *p, Py_ssize_t n)
{
    if (n < 1) {
        return bad_bytes("key");
    }
    const char *body = (const char *)p + 1;
    Py_ssize_t len = n - 1;
    switch (p[0]) {
    case 's':
        return PyUnicode_DecodeUTF8(body, len, "surrogatepass");
    case 'b':
        return PyBytes_FromStringAndSize(body, len);
    case 'i': {
        int64_t v;
        if (len != sizeof(v)) {
            return bad_bytes("key");
        }
        memcpy(&v, body, sizeof(v));
        return PyLong_FromLongLong(v);
    }
    case 'I':
        return decode_big_int((const uint8_t *)body, len);
    case 'f': {
        double d;
        if (len != sizeof(d)) {
            return bad_bytes("key");
        }
        memcpy(&d, body, sizeof(d));
        return PyFloat_FromDouble(d);
    }
    case 'n':
        return len == 0 ? Py_NewRef(Py_None) : bad_bytes("key");
    case 't':
        return decode_tuple((const uint8_t *)body, len);
    }
    return bad_bytes("key");
}

PyObject *
key_decode(const uint8_t *p, uint32_t n, uint8_t kind)
{
    PyObject *key = decoded_or_corrupt(decode_key(p, n), "key");
    if (key == NULL || kind == KEY_PLAIN) {
        return key;
    }
    if (!PyLong_CheckExact(key)) { /* only int encodings carry a kind */
        Py_DECREF(key);
        return bad_bytes("key");
    }
    PyObject *typed = kind == KEY_BOOL ? PyBool_FromLong(PyObject_IsTrue(key))
                      : kind == KEY_FLOAT ? PyNumber_Float(key)
                      : kind == KEY_NEG_ZERO && PyObject_Not(key) == 1
                          ? PyFloat_FromDouble(-0.0)
                          : bad_bytes("key");
    Py_DECREF(key);
    return typed;
}

/* ------------------------------------------------------------------ */
/* values                                                              */

static PyObject *pickle_dumps, *pickle_loads;

/* Import pickle.dumps and pickle.loads once. */
static int
pickle_ready(void)
{
    if (pickle_dumps != NULL) {
        return 0;
    }
    PyObject *pickle = PyImport_ImportModule("pickle");
    if (pickle == NULL) {
        return -1;
    }
    pickle_dumps = PyObject_GetAttrString(pickle, "dumps");
    pickle_loads = PyObject_GetAttrString(pickle, "loads");
    Py_DECREF(pickle);
    return pickle_dumps && pickle_loads ? 0 : -1;
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
    if (pickle_ready() < 0) {
        return -1;
    }
    vb->owner = PyObject_CallFunction(pickle_dumps, "Oi", v, 5);
    if (vb->owner == NULL) {
        if (PyErr_ExceptionMatches(PyExc_RecursionError)) {
            _PyErr_FormatFromCause(PyExc_RecursionError, "a %.100s nested "
                                   "too deeply to be stored in a "
                                   "SharedDict: pickling it hit Python's "
                                   "recursion limit; flatten it, or raise "
                                   "sys.setrecursionlimit()",
                                   Py_TYPE(v)->tp_name);
        }
        else if (PyErr_ExceptionMatches(PyExc_Exception)
                 && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
            _PyErr_FormatFromCause(PyExc_TypeError, "a %.100s cannot be "
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
value_decode(uint8_t tag, const uint8_t *p, uint64_t n, int *pickled)
{
    *pickled = 0;
    switch (tag) {
    case 'b':
        return PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    case 's':
        return decoded_or_corrupt(PyUnicode_DecodeUTF8(
            (const char *)p, (Py_ssize_t)n, "surrogatepass"), "value");
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
    return bad_bytes("value");
}

PyObject *
value_unpickle(PyObject *raw)
{
    if (pickle_ready() < 0) {
        return NULL;
    }
    PyObject *v = PyObject_CallOneArg(pickle_loads, raw);
    if (v == NULL && PyErr_ExceptionMatches(PyExc_Exception)
        && !PyErr_ExceptionMatches(PyExc_MemoryError)) {
        /* Whatever pickle raised (UnpicklingError, EOFError, ValueError,
         * an import that fails...): the stored bytes do not unpickle
         * here.  Say so with one class; the original is the __cause__. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyErr_NormalizeException(&type, &value, &tb);
        PyObject *text = value ? PyObject_Str(value) : NULL;
        if (text == NULL) {
            PyErr_Clear();
        }
        PyObject *what = PyUnicode_FromFormat(
            "%s: %S", ((PyTypeObject *)type)->tp_name,
            text ? text : Py_None);
        Py_XDECREF(text);
        PyErr_Restore(type, value, tb);
        if (what == NULL) {
            return NULL;
        }
        raise_named_from_cause("CorruptSegmentError", "a value stored in "
                               "the SharedDict cannot be unpickled (%U): "
                               "its pickle is damaged, or it needs a class "
                               "this process cannot import; `shmtxn check` "
                               "verifies the segment, and storing or "
                               "deleting the key replaces the value", what);
        Py_DECREF(what);
    }
    return v;
}
