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

static const char *
probe_state_name(int state)
{
    switch (state) {
    case STX_PROBE_READY: return "ready";
    case STX_PROBE_BUILDING: return "building";
    case STX_PROBE_ABANDONED: return "abandoned";
    case STX_PROBE_CORRUPT: return "corrupt";
    case STX_PROBE_INCOMPAT: return "incompatible";
    default: return "foreign";
    }
}

/* probe(name) -> dict: what is under the name, without attaching. */
static PyObject *
core_probe(PyObject *module, PyObject *arg)
{
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL) {
        return NULL;
    }
    stx_segment seg;
    int state = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = stx_probe(&seg, name, &state);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        raise_engine_error(rc, name);
        return NULL;
    }
    if (state != STX_PROBE_READY) {
        const char *detail = state == STX_PROBE_BUILDING ? ""
                             : state == STX_PROBE_ABANDONED
                                 ? "its creator died mid-creation"
                                 : stx_detail();
        return Py_BuildValue("{s:s,s:s,s:s}", "name", name, "state",
                             probe_state_name(state), "detail", detail);
    }
    PyObject *info = segment_info(&seg);
    stx_close(&seg);
    return info;
}

/* Reader slots whose owner is dead (or whose reaper died mid-way). */
static int
count_dead_slots(stx_segment *seg)
{
    int dead = 0;
    uint32_t hwm = atomic_load(&seg->hdr->slots_hwm);
    for (uint32_t i = 0; i < hwm && i < seg->nslots; i++) {
        int32_t pid = atomic_load(&seg->slots[i].pid);
        dead += pid != 0 && pid != -stx_self_pid
                && !stx_pid_alive(seg->file, pid > 0 ? pid : -pid);
    }
    return dead;
}

/* repair(name, timeout) -> dict: recover a dead writer and clear dead
 * readers exactly as the next write txn would (which may clear some while
 * it waits: they are counted from before). */
static PyObject *
core_repair(PyObject *module, PyObject *args)
{
    const char *name;
    double timeout = 5.0;
    if (!PyArg_ParseTuple(args, "s|d:repair", &name, &timeout)) {
        return NULL;
    }
    stx_segment seg;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = stx_attach(&seg, name, 0, 0, (uint64_t)(timeout * 1e9));
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        raise_engine_error(rc, name);
        return NULL;
    }
    uint64_t before = atomic_load(&seg.hdr->recoveries);
    int dead_before = count_dead_slots(&seg);
    stx_txn txn = {0};
    rc = stx_txn_init(&txn, &seg, 1);
    if (rc != 0) {
        raise_engine_error(rc, name);
    }
    else if (txn_wait(name, &txn, timeout) == 0) {
        stx_slots_reap(&seg);
        int cleared = dead_before - count_dead_slots(&seg);
        stx_txn_end(&txn, 1);
        uint64_t recovered = atomic_load(&seg.hdr->recoveries) - before;
        stx_close(&seg);
        return Py_BuildValue("{s:K,s:i}", "recovered_writers",
                             (unsigned long long)recovered,
                             "cleared_readers", cleared);
    }
    stx_close(&seg);
    return NULL;
}

/* mutex_kind() -> int: what a healthy writer mutex holds, for tests that
 * damage one and put it back. */
static PyObject *
core_mutex_kind(PyObject *module, PyObject *unused)
{
    return PyLong_FromLong(stx_mutex_kind());
}

/* _siphash(k0, k1, data): the dict key hash, for tests against CPython. */
static PyObject *
core_siphash(PyObject *self, PyObject *args)
{
    uint64_t key[2];
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "KKy*", &key[0], &key[1], &data)) {
        return NULL;
    }
    uint64_t h = stx_siphash13(key, data.buf, (size_t)data.len);
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLongLong(h);
}

static PyMethodDef core_methods[] = {
    {"set_dict_txn_class", set_dict_txn_class, METH_O,
     "set_dict_txn_class(cls): the DictTxn subclass SharedDict.txn() makes"},
    {"_siphash", core_siphash, METH_VARARGS,
     "_siphash(k0, k1, data) -> SipHash-1-3 of data (test hook)"},
    {"mutex_kind", core_mutex_kind, METH_NOARGS,
     "The kind word of a segment's writer mutex on this libc (tests)."},
    {"probe", core_probe, METH_O,
     "probe(name) -> dict describing the segment, without attaching"},
    {"repair", core_repair, METH_VARARGS,
     "repair(name, timeout=5.0) -> dict: recover as the next txn would"},
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
    if (errors_init() < 0 || PyType_Ready(&Segment_Type) < 0
        || PyType_Ready(&Memory_Type) < 0 || PyType_Ready(&Dict_Type) < 0
        || PyType_Ready(&DictTxn_Type) < 0
        || PyType_Ready(&Txn_Type) < 0 || PyType_Ready(&View_Type) < 0
        || PyType_Ready(&ThreadGuard_Type) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&core_module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Segment", (PyObject *)&Segment_Type) < 0
        || PyModule_AddObjectRef(m, "Memory", (PyObject *)&Memory_Type) < 0
        || PyModule_AddObjectRef(m, "Dict", (PyObject *)&Dict_Type) < 0
        || PyModule_AddObjectRef(m, "DictTxn", (PyObject *)&DictTxn_Type) < 0
        || PyModule_AddObjectRef(m, "Txn", (PyObject *)&Txn_Type) < 0
        || PyModule_AddObjectRef(m, "View", (PyObject *)&View_Type) < 0
        || PyModule_AddIntConstant(m, "FORMAT_VERSION",
                                   STX_FORMAT_VERSION) < 0
        || PyModule_AddIntConstant(m, "NAME_MAX", STX_NAME_MAX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
