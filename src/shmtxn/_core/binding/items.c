/*
 * items.c -- converting Python values to and from slot items.
 *
 * Formats are struct-module codes in native size and alignment, the same
 * as memoryview.cast() uses.  Like a list of ints, a slot refuses a float
 * where an integer is stored (TypeError) and a value out of range
 * (OverflowError); floats accept anything float() accepts implicitly.
 */
#include "binding.h"

const item_format *
item_format_find(const char *code)
{
    const item_format *fmt = stx_item_format_find(code);
    if (fmt == NULL) {
        PyErr_Format(PyExc_ValueError, "unknown item format '%.20s': use "
                     "one struct code of bBhHiIlLqQnNefd?", code);
    }
    return fmt;
}

static int64_t
load_signed(const void *src, int size)
{
    switch (size) {
    case 1: return *(const int8_t *)src;
    case 2: { int16_t v; memcpy(&v, src, 2); return v; }
    case 4: { int32_t v; memcpy(&v, src, 4); return v; }
    default: { int64_t v; memcpy(&v, src, 8); return v; }
    }
}

static uint64_t
load_unsigned(const void *src, int size)
{
    switch (size) {
    case 1: return *(const uint8_t *)src;
    case 2: { uint16_t v; memcpy(&v, src, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, src, 4); return v; }
    default: { uint64_t v; memcpy(&v, src, 8); return v; }
    }
}

PyObject *
item_unpack(const item_format *fmt, const void *src)
{
    switch (fmt->kind) {
    case STX_ITEM_SIGNED:
        return PyLong_FromLongLong(load_signed(src, fmt->size));
    case STX_ITEM_UNSIGNED:
        return PyLong_FromUnsignedLongLong(load_unsigned(src, fmt->size));
    case STX_ITEM_BOOL:
        return PyBool_FromLong(*(const uint8_t *)src != 0);
    case STX_ITEM_HALF:
        return PyFloat_FromDouble(PyFloat_Unpack2(src, PY_LITTLE_ENDIAN));
    default:
        if (fmt->size == 4) {
            float f;
            memcpy(&f, src, 4);
            return PyFloat_FromDouble(f);
        }
        double d;
        memcpy(&d, src, 8);
        return PyFloat_FromDouble(d);
    }
}

static int
out_of_range(const item_format *fmt, PyObject *value)
{
    PyErr_Format(PyExc_OverflowError, "%R does not fit in format '%c' "
                 "(%d-byte %s integer)", value, fmt->code, fmt->size,
                 fmt->kind == STX_ITEM_SIGNED ? "signed" : "unsigned");
    return -1;
}

static int
pack_integer(const item_format *fmt, PyObject *value, void *dst)
{
    PyObject *index = PyLong_CheckExact(value) ? Py_NewRef(value)
                                               : PyNumber_Index(value);
    if (index == NULL) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Format(PyExc_TypeError, "format '%c' stores integers, "
                         "not %.100s", fmt->code, Py_TYPE(value)->tp_name);
        }
        return -1;
    }
    int overflow = 0;
    long long s = 0;
    unsigned long long u = 0;
    if (fmt->kind == STX_ITEM_SIGNED) {
        s = PyLong_AsLongLongAndOverflow(index, &overflow);
        int bits = fmt->size * 8;
        if (!overflow && bits < 64
            && (s < -(1LL << (bits - 1)) || s >= (1LL << (bits - 1)))) {
            overflow = 1;
        }
        u = (unsigned long long)s;
    }
    else {
        u = PyLong_AsUnsignedLongLong(index);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            overflow = 1;
        }
        else if (fmt->size < 8 && u >> (fmt->size * 8)) {
            overflow = 1;
        }
    }
    Py_DECREF(index);
    if (overflow || (s == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return out_of_range(fmt, value);
    }
    switch (fmt->size) {
    case 1: *(uint8_t *)dst = (uint8_t)u; break;
    case 2: { uint16_t v = (uint16_t)u; memcpy(dst, &v, 2); break; }
    case 4: { uint32_t v = (uint32_t)u; memcpy(dst, &v, 4); break; }
    default: memcpy(dst, &u, 8);
    }
    return 0;
}

static int
pack_float(const item_format *fmt, PyObject *value, void *dst)
{
    if (!PyFloat_Check(value) && !PyLong_Check(value)
        && Py_TYPE(value)->tp_as_number == NULL) {
        PyErr_Format(PyExc_TypeError, "format '%c' stores floats, not "
                     "%.100s", fmt->code, Py_TYPE(value)->tp_name);
        return -1;
    }
    double d = PyFloat_AsDouble(value);
    if (d == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (fmt->kind == STX_ITEM_HALF) {
        return PyFloat_Pack2(d, dst, PY_LITTLE_ENDIAN);
    }
    if (fmt->size == 4) {
        float f = (float)d;
        memcpy(dst, &f, 4);
    }
    else {
        memcpy(dst, &d, 8);
    }
    return 0;
}

int
item_pack(const item_format *fmt, PyObject *value, void *dst)
{
    if (fmt->size == 8 && fmt->kind == STX_ITEM_SIGNED && PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (!overflow) {
            memcpy(dst, &v, 8); /* the default 'q' item, the common case */
            return 0;
        }
    }
    switch (fmt->kind) {
    case STX_ITEM_SIGNED:
    case STX_ITEM_UNSIGNED:
        return pack_integer(fmt, value, dst);
    case STX_ITEM_BOOL: {
        int truth = PyObject_IsTrue(value);
        if (truth < 0) {
            return -1;
        }
        *(uint8_t *)dst = (uint8_t)truth;
        return 0;
    }
    default:
        return pack_float(fmt, value, dst);
    }
}
