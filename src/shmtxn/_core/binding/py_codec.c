/*
 * py_codec.c -- the SharedDict codec as module functions, so a backend
 * that keeps a dict somewhere else than a segment (shmtxn.remote: Redis)
 * stores exactly the bytes a segment holds:
 *
 *   encode_key(key) -> (bytes, kind)    the canonical encoding (key.h)
 *                                       and the key_kind of a top-level
 *                                       bool / integral float / -0.0
 *   decode_key(data, kind=0) -> key
 *   encode_value(value) -> bytes        the one-byte tag, then the body
 *   decode_value(data) -> value         (a 'p' body is unpickled)
 *
 * They are codec.c's functions; only the framing is here.  Damaged bytes
 * raise ValueError (the caller names where they came from), and
 * decode_value lets what pickle.loads raised propagate.  Nothing here
 * keeps state between calls.
 */
#include "binding.h"

static PyObject *
py_encode_key(PyObject *module, PyObject *key)
{
    key_buf kb;
    if (key_encode(key, &kb) < 0) {
        return NULL;
    }
    PyObject *out = Py_BuildValue("(y#i)", (const char *)kb.bytes,
                                  (Py_ssize_t)kb.len, (int)kb.kind);
    key_buf_release(&kb);
    return out;
}

/* A bytes-like argument, as a contiguous buffer; -1 with TypeError. */
static int
get_bytes(PyObject *arg, Py_buffer *view)
{
    return PyObject_GetBuffer(arg, view, PyBUF_SIMPLE);
}

static PyObject *
py_decode_key(PyObject *module, PyObject *args)
{
    Py_buffer data;
    int kind = STX_KEY_PLAIN;
    if (!PyArg_ParseTuple(args, "y*|i:decode_key", &data, &kind)) {
        return NULL;
    }
    PyObject *key = NULL;
    if (kind < STX_KEY_PLAIN || kind > STX_KEY_NEG_ZERO) {
        PyErr_Format(PyExc_ValueError, "bad key kind %d", kind);
    }
    else {
        key = key_decode_plain(data.buf, (size_t)data.len, (uint8_t)kind);
    }
    PyBuffer_Release(&data);
    return key;
}

static PyObject *
py_encode_value(PyObject *module, PyObject *value)
{
    value_buf vb;
    if (value_encode(value, &vb) < 0) {
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, vb.len + 1);
    if (out != NULL) {
        char *p = PyBytes_AS_STRING(out);
        p[0] = (char)vb.tag;
        if (vb.len > 0) {
            memcpy(p + 1, vb.bytes, (size_t)vb.len);
        }
    }
    value_buf_release(&vb);
    return out;
}

static PyObject *
py_decode_value(PyObject *module, PyObject *arg)
{
    Py_buffer data;
    if (get_bytes(arg, &data) < 0) {
        return NULL;
    }
    PyObject *v = NULL;
    int pickled = 0;
    if (data.len < 1) {
        PyErr_SetString(PyExc_ValueError, "an encoded value is never empty");
    }
    else {
        const uint8_t *p = data.buf;
        v = value_decode_plain(p[0], p + 1, (uint64_t)(data.len - 1),
                               &pickled);
    }
    PyBuffer_Release(&data);
    if (v != NULL && pickled) {
        Py_SETREF(v, value_loads(v));
    }
    return v;
}

PyMethodDef codec_functions[] = {
    {"encode_key", py_encode_key, METH_O,
     "encode_key(key) -> (bytes, kind): a SharedDict key's canonical "
     "bytes (equal keys, such as 1, 1.0 and True, give equal bytes) and "
     "the kind that gives back the key's own type"},
    {"decode_key", py_decode_key, METH_VARARGS,
     "decode_key(data, kind=0) -> key; ValueError if data is no key"},
    {"encode_value", py_encode_value, METH_O,
     "encode_value(value) -> bytes: a SharedDict value as stored (a tag "
     "byte, then raw bytes, or a pickle)"},
    {"decode_value", py_decode_value, METH_O,
     "decode_value(data) -> value: unpickles a pickled one; ValueError if "
     "data is no value"},
    {NULL, NULL, 0, NULL},
};
