/*
 * errors.c -- the one table that maps engine codes (and the binding's own
 * situations) to shmtxn exceptions, and the advice each message ends
 * with.  The classes are defined in Python (shmtxn/errors.py) and resolved
 * once at import into the module state, indexed by -code.
 */
#include <stdarg.h>

#include "binding.h"

/* What each code raises and what to tell the user to do. */
typedef struct error_entry {
    const char *class_name; /* in shmtxn.errors; NULL: `builtin` */
    PyObject **builtin;     /* a builtin class for plain misuse */
    const char *advice;
    /* if not NULL: the advice goes on with the segment directory (which
     * SHMTXN_SHM_DIR may move from /dev/shm), then this */
    const char *after_dir;
} error_entry;

static const error_entry table[ERROR_TABLE_SIZE] = {
    [-STX_EEXIST] = {"SegmentExistsError", NULL,
                     "attach to it with create=False, or choose another "
                     "name"},
    [-STX_ENOENT] = {"SegmentNotFoundError", NULL,
                     "create it with create=True, or see which exist with "
                     "`shmtxn ls`"},
    [-STX_EACCES] = {"AccessDeniedError", NULL,
                     "check the owner and mode of the segment and of its "
                     "directory, ", ""},
    [-STX_EFULL] = {"SegmentFullError", NULL,
                    "free space in ", " (`shmtxn gc` removes leftovers) "
                    "or ask for less; a transaction that ran out of room "
                    "was rolled back"},
    [-STX_EHEAPFULL] = {"SegmentFullError", NULL,
                        "create the SharedDict with a larger size=, or "
                        "delete keys"},
    [-STX_ECORRUPT] = {"CorruptSegmentError", NULL,
                       "the segment cannot be used; remove it with `shmtxn "
                       "rm` and create it again"},
    [-STX_EINCOMPAT] = {"IncompatibleSegmentError", NULL,
                        "open it from a matching shmtxn version, machine "
                        "and pid namespace"},
    [-STX_ETOOLARGE] = {"TransactionTooLarge", NULL,
                        "the transaction was rolled back; create the "
                        "segment with a larger undo_size= (or none: a "
                        "SharedMemory's default fits any transaction), or "
                        "split the work into smaller transactions"},
    [-STX_ENESTED] = {"NestedTransactionError", NULL,
                      "this thread already has a transaction open on this "
                      "segment: use that transaction object instead of "
                      "opening another"},
    [-STX_ECLOSED] = {"TransactionClosedError", NULL,
                      "open a new transaction with .txn()"},
    [-STX_EFORKED] = {"TransactionClosedError", NULL,
                      "this transaction was opened before fork() by the "
                      "parent process; open a new one in the child"},
    [-STX_ESLOTS] = {"SegmentFullError", NULL,
                     "close handles in other processes, or create the "
                     "segment with a larger max_processes="},
    [-STX_EREADONLY] = {"ReadOnlyError", NULL,
                        "open the segment with read_only=False and write "
                        "inside a write transaction"},
    [-STX_EAGAIN] = {"LockTimeout", NULL, "try again, or raise timeout="},
    [-STX_ETHREAD] = {"TransactionThreadError", NULL,
                      "open another transaction in this thread"},
    [-STX_EINVAL] = {NULL, &PyExc_ValueError, NULL},
    [-STX_ERANGE] = {NULL, &PyExc_IndexError, NULL},
    [-STX_ENOMEM] = {NULL, &PyExc_MemoryError, NULL},
    [-STX_ESYS] = {NULL, &PyExc_OSError, NULL},
    [-ERR_SEGMENT_CLOSED] = {"SegmentClosedError", NULL, NULL},
    [-ERR_BUFFER_EXPORTS] = {"BufferExportsError", NULL, NULL},
    [-ERR_TXNS_OPEN] = {"TransactionsOpenError", NULL, NULL},
};

int
errors_init(binding_state *st)
{
    PyObject *module = PyImport_ImportModule("shmtxn.errors");
    if (module == NULL) {
        return -1;
    }
    int rc = 0;
    for (int i = 0; rc == 0 && i < ERROR_TABLE_SIZE; i++) {
        if (table[i].class_name != NULL) {
            st->errors[i] = PyObject_GetAttrString(module,
                                                   table[i].class_name);
            rc = st->errors[i] == NULL ? -1 : 0;
        }
        else if (table[i].builtin != NULL) {
            st->errors[i] = Py_NewRef(*table[i].builtin);
        }
    }
    Py_DECREF(module);
    return rc;
}

/* The class `code` raises (borrowed): RuntimeError for unknown codes. */
static PyObject *
error_class(binding_state *st, int code)
{
    if (st != NULL && code < 0 && -code < ERROR_TABLE_SIZE
        && st->errors[-code] != NULL) {
        return st->errors[-code];
    }
    return PyExc_RuntimeError;
}

/* Raise the class of `code` with a message from `fmt` and `ap`. */
static void
raise_v(binding_state *st, int code, const char *fmt, va_list ap)
{
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    if (msg != NULL) {
        PyErr_SetObject(error_class(st, code), msg);
        Py_DECREF(msg);
    }
}

void
raise_error(binding_state *st, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    raise_v(st, code, fmt, ap);
    va_end(ap);
}

void
raise_engine_error(binding_state *st, int code, const char *name)
{
    const char *detail = stx_detail();
    if (code >= 0 || -code >= ENGINE_CODES
        || (table[-code].class_name == NULL && table[-code].builtin == NULL)) {
        PyErr_Format(PyExc_RuntimeError, "shmtxn engine error %d on '%s': "
                     "%s", code, name, detail);
    }
    else if (table[-code].advice == NULL) {
        raise_error(st, code, "%s", detail[0] ? detail : "engine error");
    }
    else {
        const error_entry *e = &table[-code];
        char advice[4608];
        snprintf(advice, sizeof(advice), "%s%s%s", e->advice,
                 e->after_dir ? stx_shm_dir() : "",
                 e->after_dir ? e->after_dir : "");
        if (detail[0] == '\0' || code == STX_EREADONLY
            || code == STX_ENESTED || code == STX_EFORKED) {
            raise_error(st, code, "segment '%s': %s", name, advice);
        }
        else {
            raise_error(st, code, "%s; %s", detail, advice);
        }
    }
}

void
raise_lock_timeout(binding_state *st, const char *name, double timeout,
                   int write)
{
    char seconds[32];
    snprintf(seconds, sizeof(seconds), "%g", timeout);
    raise_error(st, STX_EAGAIN, "timed out after %s s waiting to open a %s "
                "transaction on segment '%s': another transaction holds it "
                "(see `shmtxn ls`); raise timeout= or try again", seconds,
                write ? "write" : "read", name);
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

/*
 * The exception being raised as one object: PyErr_GetRaisedException and
 * PyErr_SetRaisedException from 3.12; on 3.11 (where they do not exist)
 * the type, value and traceback triple, normalised into the value.  The
 * one place the binding handles the triple.
 */
PyObject *
exc_take(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (value != NULL && tb != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

void
exc_restore(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    if (exc == NULL) {
        PyErr_Clear();
        return;
    }
    PyErr_Restore(Py_NewRef(Py_TYPE(exc)), exc,
                  PyException_GetTraceback(exc));
#endif
}

/* Replace the exception being raised by `exc_class`(`msg`), the old one
 * its __cause__ and __context__ ("raise ... from" in C, with public API
 * only).  `msg` is borrowed. */
static void
chain_from_cause(PyObject *exc_class, PyObject *msg)
{
    PyObject *cause = exc_take();
    PyErr_SetObject(exc_class, msg);
    PyObject *exc = exc_take();
    if (exc != NULL && cause != NULL) {
        PyException_SetCause(exc, Py_NewRef(cause));   /* steals */
        PyException_SetContext(exc, Py_NewRef(cause)); /* steals */
    }
    Py_XDECREF(cause);
    exc_restore(exc);
}

/* The message of `fmt` and `ap` chained from the exception being raised,
 * as `exc_class`. */
static void
chain_formatted(PyObject *exc_class, const char *fmt, va_list ap)
{
    PyObject *cause = exc_take(); /* formatting must not see it */
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    if (msg == NULL) {
        Py_XDECREF(cause);
        return; /* the formatting error stands */
    }
    exc_restore(cause);
    chain_from_cause(exc_class, msg);
    Py_DECREF(msg);
}

void
raise_from_cause(PyObject *exc_class, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    chain_formatted(exc_class, fmt, ap);
    va_end(ap);
}

void
raise_error_from_cause(binding_state *st, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    chain_formatted(error_class(st, code), fmt, ap);
    va_end(ap);
}

int
check_positional(const char *name, Py_ssize_t nargs, Py_ssize_t min,
                 Py_ssize_t max)
{
    if (nargs < min) {
        PyErr_Format(PyExc_TypeError, "%s expected at least %zd argument%s,"
                     " got %zd", name, min, min == 1 ? "" : "s", nargs);
        return 0;
    }
    if (nargs > max) {
        PyErr_Format(PyExc_TypeError, "%s expected at most %zd argument%s, "
                     "got %zd", name, max, max == 1 ? "" : "s", nargs);
        return 0;
    }
    return 1;
}
