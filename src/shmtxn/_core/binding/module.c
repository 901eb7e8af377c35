/*
 * module.c -- the shmtxn._core extension module, initialised in phases
 * (PEP 489): its state holds the exception table and the heap types made
 * from the other files' specs; plus the engine's one-time set-up and small
 * module-level functions for the CLI and tests.
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
        raise_engine_error(PyModule_GetState(module), rc, name);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _core.reclaim(name, creator_may_live=False): remove `name` if it is a
 * provably unused segment; True if removed (or gone), False if it stays. */
static PyObject *
core_reclaim(PyObject *module, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "creator_may_live", NULL};
    const char *name;
    int creator_may_live = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "s|p:reclaim", kwlist,
                                     &name, &creator_may_live)) {
        return NULL;
    }
    name += name[0] == '/';
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = stx_reclaim(name, creator_may_live);
    Py_END_ALLOW_THREADS
    if (rc == STX_EEXIST) {
        Py_RETURN_FALSE;
    }
    if (rc != 0) {
        raise_engine_error(PyModule_GetState(module), rc, name);
        return NULL;
    }
    Py_RETURN_TRUE;
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
        raise_engine_error(PyModule_GetState(module), rc, name);
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
                && !stx_slot_holder_alive(seg->file, pid);
    }
    return dead;
}

/* repair(name, timeout) -> dict: recover a dead writer and clear dead
 * readers exactly as the next write txn would (which may clear some while
 * it waits: they are counted from before). */
static PyObject *
core_repair(PyObject *module, PyObject *args)
{
    binding_state *st = PyModule_GetState(module);
    const char *name;
    PyObject *timeout_arg = NULL;
    double timeout;
    if (!PyArg_ParseTuple(args, "s|O:repair", &name, &timeout_arg)
        || handle_parse_timeout(timeout_arg, 5.0, &timeout) < 0) {
        return NULL;
    }
    stx_segment seg;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = stx_attach(&seg, name, 0, 0, (uint64_t)(timeout * 1e9));
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        raise_engine_error(st, rc, name);
        return NULL;
    }
    uint64_t before = atomic_load(&seg.hdr->recoveries);
    int dead_before = count_dead_slots(&seg);
    stx_txn txn = {0};
    rc = stx_txn_init(&txn, &seg, 1);
    if (rc != 0) {
        raise_engine_error(st, rc, name);
    }
    else if (txn_wait(st, NULL, name, &txn, timeout) == 0) {
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

/* set_dict_txn_class(cls): the DictTxn subclass d.txn() makes (dict.py
 * adds the MutableMapping methods). */
static PyObject *
core_set_dict_txn_class(PyObject *module, PyObject *cls)
{
    binding_state *st = PyModule_GetState(module);
    if (!PyType_Check(cls)
        || !PyType_IsSubtype((PyTypeObject *)cls, st->DictTxn_Type)) {
        PyErr_SetString(PyExc_TypeError, "expected a subclass of DictTxn");
        return NULL;
    }
    /* d.txn() in another thread may be using the class this replaces
     * (read without a lock): it is kept, never freed before the module */
    if (PyList_Append(st->retired_classes, cls) < 0) {
        return NULL;
    }
    __atomic_store_n(&st->dict_txn_class, (PyTypeObject *)cls,
                     __ATOMIC_RELEASE);
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"set_dict_txn_class", core_set_dict_txn_class, METH_O,
     "set_dict_txn_class(cls): the DictTxn subclass SharedDict.txn() makes"},
    {"_siphash", core_siphash, METH_VARARGS,
     "_siphash(k0, k1, data) -> SipHash-1-3 of data (test hook)"},
    {"mutex_kind", core_mutex_kind, METH_NOARGS,
     "The kind word of a segment's writer mutex on this libc (tests)."},
    {"probe", core_probe, METH_O,
     "probe(name) -> dict describing the segment, without attaching"},
    {"repair", core_repair, METH_VARARGS,
     "repair(name, timeout=5.0) -> dict: recover as the next txn would"},
    {"reclaim", (PyCFunction)(void (*)(void))core_reclaim,
     METH_VARARGS | METH_KEYWORDS,
     "reclaim(name, creator_may_live=False): remove a provably unused "
     "segment; True if removed (or gone), False if it stays"},
    {"unlink", core_unlink, METH_O,
     "unlink(name): remove a segment's name; SegmentNotFoundError if none"},
    {NULL, NULL, 0, NULL},
};

/* Make the type of `spec` (subclassing `base`, if not NULL), keep it in
 * *slot and, if `public`, as a module attribute; -1 on error. */
static int
add_type(PyObject *m, PyTypeObject **slot, PyType_Spec *spec,
         PyTypeObject *base, int public)
{
    *slot = (PyTypeObject *)PyType_FromModuleAndSpec(m, spec,
                                                      (PyObject *)base);
    if (*slot == NULL) {
        return -1;
    }
    return public ? PyModule_AddType(m, *slot) : 0;
}

/* Py_mod_exec: set the engine up, resolve the exception classes, make
 * the types. */
static int
core_exec(PyObject *m)
{
    binding_state *st = PyModule_GetState(m);
    if (stx_engine_init() != 0) {
        PyErr_SetString(PyExc_OSError, stx_detail());
        return -1;
    }
    /* Test hook: SHMTXN_CRASH_AT=<point> SIGKILLs the process there. */
    stx_set_crash_point(getenv("SHMTXN_CRASH_AT"));
    if (errors_init(st) < 0
        || add_type(m, &st->Segment_Type, &Segment_spec, NULL, 1) < 0
        || add_type(m, &st->Memory_Type, &Memory_spec, st->Segment_Type,
                    1) < 0
        || add_type(m, &st->Dict_Type, &Dict_spec, st->Segment_Type, 1) < 0
        || add_type(m, &st->Txn_Type, &Txn_spec, NULL, 1) < 0
        || add_type(m, &st->DictTxn_Type, &DictTxn_spec, NULL, 1) < 0
        || add_type(m, &st->View_Type, &View_spec, NULL, 1) < 0
        || add_type(m, &st->ThreadGuard_Type, &ThreadGuard_spec, NULL,
                    0) < 0) {
        return -1;
    }
    st->dict_txn_class = st->DictTxn_Type; /* borrowed: see retired_classes */
    st->retired_classes = PyList_New(0);
    if (st->retired_classes == NULL || gate_init() < 0) {
        return -1;
    }
    st->str_write = PyUnicode_InternFromString("write");
    st->str_timeout = PyUnicode_InternFromString("timeout");
    if (st->str_write == NULL || st->str_timeout == NULL) {
        return -1;
    }
    if (PyModule_AddFunctions(m, codec_functions) < 0
        || PyModule_AddIntConstant(m, "FORMAT_VERSION", STX_FORMAT_VERSION) < 0
        || PyModule_AddIntConstant(m, "NAME_MAX", STX_NAME_MAX) < 0) {
        return -1;
    }
    return 0;
}

/* Every reference the state holds, for the collector and for freeing. */
#define STATE_OBJECTS(st) \
    (PyObject **)&(st)->Segment_Type, (PyObject **)&(st)->Memory_Type, \
    (PyObject **)&(st)->Dict_Type, (PyObject **)&(st)->Txn_Type, \
    (PyObject **)&(st)->DictTxn_Type, (PyObject **)&(st)->View_Type, \
    (PyObject **)&(st)->ThreadGuard_Type, \
    &(st)->retired_classes, &(st)->numpy_asarray, \
    &(st)->str_write, &(st)->str_timeout

static int
core_traverse(PyObject *m, visitproc visit, void *arg)
{
    binding_state *st = PyModule_GetState(m);
    PyObject **objects[] = {STATE_OBJECTS(st)};
    for (size_t i = 0; i < sizeof(objects) / sizeof(objects[0]); i++) {
        Py_VISIT(*objects[i]);
    }
    for (int i = 0; i < ERROR_TABLE_SIZE; i++) {
        Py_VISIT(st->errors[i]);
    }
    return 0;
}

static int
core_clear(PyObject *m)
{
    binding_state *st = PyModule_GetState(m);
    PyObject **objects[] = {STATE_OBJECTS(st)};
    for (size_t i = 0; i < sizeof(objects) / sizeof(objects[0]); i++) {
        Py_CLEAR(*objects[i]);
    }
    for (int i = 0; i < ERROR_TABLE_SIZE; i++) {
        Py_CLEAR(st->errors[i]);
    }
    return 0;
}

static void
core_free(void *m)
{
    core_clear((PyObject *)m);
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#ifdef Py_mod_multiple_interpreters
    /* the engine keeps per-process state (open files, orphaned txns) */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    /* every piece of state is safe without the GIL (docs/threads.md) */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "shmtxn._core",
    .m_doc = "The C engine of shmtxn.",
    .m_size = sizeof(binding_state),
    .m_methods = core_methods,
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}
