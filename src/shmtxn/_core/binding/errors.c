/*
 * errors.c -- the one table that maps engine codes to shmtxn exceptions,
 * and the advice each message ends with.  The classes themselves are
 * defined in Python (shmtxn/errors.py) and fetched once at import.
 */
#include <stdarg.h>

#include "binding.h"

static PyObject *errors_module;

/* What each engine code raises and what to tell the user to do. */
typedef struct error_entry {
    int code;
    const char *class_name; /* in shmtxn.errors, or a builtin */
    const char *advice;
} error_entry;

static const error_entry table[] = {
    {STX_EEXIST, "SegmentExistsError",
     "attach to it with create=False, or choose another name"},
    {STX_ENOENT, "SegmentNotFoundError",
     "create it with create=True, or see which exist with `shmtxn ls`"},
    {STX_EACCES, "AccessDeniedError",
     "the segment belongs to another user; check its mode in /dev/shm"},
    {STX_EFULL, "SegmentFullError",
     "free space in /dev/shm (`shmtxn gc` removes leftovers) or ask for "
     "less"},
    {STX_EHEAPFULL, "SegmentFullError",
     "create the SharedDict with a larger size=, or delete keys"},
    {STX_ECORRUPT, "CorruptSegmentError",
     "the segment cannot be used; remove it with `shmtxn rm` and create "
     "it again"},
    {STX_EINCOMPAT, "IncompatibleSegmentError",
     "open it from a matching shmtxn version, machine and pid namespace"},
    {STX_ETOOLARGE, "TransactionTooLarge",
     "the transaction was rolled back; create the segment with a larger "
     "undo_size=, or split the work into smaller transactions"},
    {STX_ENESTED, "NestedTransactionError",
     "this thread already has a transaction open on this segment: use "
     "that transaction object instead of opening another"},
    {STX_ECLOSED, "TransactionClosedError",
     "open a new transaction with .txn()"},
    {STX_EFORKED, "TransactionClosedError",
     "this transaction was opened before fork() by the parent process; "
     "open a new one in the child"},
    {STX_ESLOTS, "SegmentFullError",
     "close handles in other processes, or create the segment with a "
     "larger max_processes="},
    {STX_EREADONLY, "ReadOnlyError",
     "open the segment with read_only=False and write inside a write "
     "transaction"},
    {STX_EAGAIN, "LockTimeout", "try again, or raise timeout="},
};

int
errors_init(void)
{
    errors_module = PyImport_ImportModule("shmtxn.errors");
    return errors_module == NULL ? -1 : 0;
}

static PyObject *
error_class(const char *class_name)
{
    PyObject *cls = PyObject_GetAttrString(errors_module, class_name);
    if (cls == NULL) {
        PyErr_Clear();
        cls = Py_NewRef(PyExc_RuntimeError);
    }
    return cls;
}

void
raise_named(const char *class_name, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg == NULL) {
        return;
    }
    PyObject *cls = error_class(class_name);
    PyErr_SetObject(cls, msg);
    Py_DECREF(cls);
    Py_DECREF(msg);
}

/* Builtin exceptions for the codes that mean plain misuse. */
static PyObject *
builtin_for(int code)
{
    switch (code) {
    case STX_EINVAL: return PyExc_ValueError;
    case STX_ERANGE: return PyExc_IndexError;
    case STX_ENOMEM: return PyExc_MemoryError;
    case STX_ESYS: return PyExc_OSError;
    }
    return NULL;
}

void
raise_engine_error(int code, const char *name)
{
    const char *detail = stx_detail();
    PyObject *builtin = builtin_for(code);
    if (builtin != NULL) {
        PyErr_Format(builtin, "%s", detail[0] ? detail : "engine error");
        return;
    }
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (table[i].code == code) {
            if (detail[0] == '\0' || code == STX_EREADONLY
                || code == STX_ENESTED || code == STX_EFORKED) {
                raise_named(table[i].class_name, "segment '%s': %s", name,
                            table[i].advice);
            }
            else {
                raise_named(table[i].class_name, "%s; %s", detail,
                            table[i].advice);
            }
            return;
        }
    }
    PyErr_Format(PyExc_RuntimeError, "shmtxn engine error %d on '%s': %s",
                 code, name, detail);
}

void
raise_named_from_cause(const char *class_name, const char *fmt, ...)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    PyObject *cls = msg ? error_class(class_name) : NULL;
    if (cls == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        Py_XDECREF(msg);
        return;
    }
    PyErr_Restore(type, value, tb);
    _PyErr_FormatFromCause(cls, "%U", msg);
    Py_DECREF(cls);
    Py_DECREF(msg);
}

void
raise_key_error(PyObject *key)
{
    /* KeyError(key) as dict raises it: the key is the single argument even
     * when it is a tuple (PyErr_SetObject would unpack it) or None (which
     * would make an argument-less KeyError). */
    PyObject *args = PyTuple_Pack(1, key);
    if (args != NULL) {
        PyErr_SetObject(PyExc_KeyError, args);
        Py_DECREF(args);
    }
}

void
raise_lock_timeout(const char *name, double timeout, int write)
{
    char seconds[32];
    snprintf(seconds, sizeof(seconds), "%g", timeout);
    raise_named("LockTimeout", "timed out after %s s waiting to open a %s "
                "transaction on segment '%s': another transaction holds it "
                "(see `shmtxn ls`); raise timeout= or try again", seconds,
                write ? "write" : "read", name);
}
