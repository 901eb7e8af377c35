/*
 * module.c -- the shmtxn._core extension module: types, the engine's
 * one-time set-up, and small module-level functions for the CLI and tests.
 */
#include <stdlib.h>

#include "binding.h"

static PyObject *
core_unlink(PyObject *module, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL) {
        return NULL;
    }
    if (name[0] == '/') {
        name++;
    }
    int rc = stx_unlink(name, 0, 0);
    if (rc != 0) {
        raise_engine_error(rc, name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"unlink", core_unlink, METH_O,
     "unlink(name): remove a segment's name; SegmentNotFoundError if none"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmtxn._core",
    .m_doc = "The C engine of shmtxn.",
    .m_size = -1,
    .m_methods = core_methods,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    if (stx_engine_init() != 0) {
        PyErr_SetString(PyExc_OSError, stx_detail());
        return NULL;
    }
    /* Test hook: SHMTXN_CRASH_AT=<point> SIGKILLs the process there. */
    stx_set_crash_point(getenv("SHMTXN_CRASH_AT"));
    if (errors_init() < 0 || PyType_Ready(&Memory_Type) < 0
        || PyType_Ready(&Txn_Type) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&core_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Memory", (PyObject *)&Memory_Type) < 0
        || PyModule_AddObjectRef(m, "Txn", (PyObject *)&Txn_Type) < 0
        || PyModule_AddIntConstant(m, "FORMAT_VERSION",
                                   STX_FORMAT_VERSION) < 0
        || PyModule_AddIntConstant(m, "NAME_MAX", STX_NAME_MAX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
