/*
 * info.c -- a segment's state as Python data, for Memory.info(), the
 * module-level probe() and repair(), and through them `shmtxn ls`,
 * `info`, `check` and `gc`.  Everything is read from shared memory once and
 * clamped or checked before it is used.
 */
#include "binding.h"

static const char *
layout_name(uint32_t kind)
{
    return kind == STX_LAYOUT_SLOTS ? "slots"
           : kind == STX_LAYOUT_DICT ? "dict" : "unknown";
}

/* The attached processes: one dict per claimed reader slot. */
static PyObject *
process_list(stx_segment *seg)
{
    PyObject *list = PyList_New(0);
    uint32_t hwm = atomic_load(&seg->hdr->slots_hwm);
    for (uint32_t i = 0; list && i < hwm && i < seg->nslots; i++) {
        stx_reader_slot *slot = &seg->slots[i];
        int32_t pid = atomic_load(&slot->pid);
        if (pid <= 0) {
            continue; /* free, or being reaped */
        }
        PyObject *entry = Py_BuildValue(
            "{s:i,s:I,s:O,s:K}", "pid", pid, "readers",
            atomic_load(&slot->readers), "alive",
            stx_pid_alive(seg->file, pid) ? Py_True : Py_False,
            "attached_ns", (unsigned long long)slot->attached_ns);
        if (entry == NULL || PyList_Append(list, entry) < 0) {
            Py_CLEAR(list);
        }
        Py_XDECREF(entry);
    }
    return list;
}

/* The pids holding a liveness beacon on the segment's file: every other
 * process that has it open, whether or not it has claimed a slot. */
static PyObject *
beacon_list(stx_segment *seg)
{
    int32_t pids[256];
    int n = stx_beacon_holders(seg->file, pids, 256);
    PyObject *list = PyList_New(n);
    for (int i = 0; list != NULL && i < n; i++) {
        PyObject *pid = PyLong_FromLong(pids[i]);
        if (pid == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, pid);
    }
    return list;
}

/* "" or why the segment was marked unusable, as a new str. */
static PyObject *
unrecoverable_reason(stx_segment *seg)
{
    return PyUnicode_FromString(stx_check_recoverable(seg) == 0
                                ? "" : stx_detail());
}

/* "free", "held" (by a live writer) or "dead" (awaiting recovery). */
static const char *
lock_state(stx_segment *seg, int32_t holder)
{
    if (!atomic_load(&seg->hdr->writer_flag)) {
        return "free";
    }
    return holder != 0 && stx_pid_alive(seg->file, holder) ? "held" : "dead";
}

static PyObject *
shape_tuple(const stx_header *h)
{
    uint32_t ndim = h->ndim < STX_MAX_NDIM ? h->ndim : STX_MAX_NDIM;
    PyObject *shape = PyTuple_New(ndim);
    for (uint32_t i = 0; shape && i < ndim; i++) {
        PyTuple_SET_ITEM(shape, i, PyLong_FromUnsignedLongLong(h->shape[i]));
    }
    return shape;
}

/* For a dict: info["dict"] = its count, table and heap numbers (read
 * without a lock: a snapshot for people, not for decisions), and
 * info["data_off"] for tools that inspect the bytes. */
static int
add_dict_stats(stx_segment *seg, PyObject *info)
{
    stx_dict_stats s;
    PyObject *data_off = PyLong_FromUnsignedLongLong(seg->hdr->data_off);
    int rc = data_off ? PyDict_SetItemString(info, "data_off", data_off) : -1;
    Py_XDECREF(data_off);
    if (rc < 0 || seg->hdr->layout_kind != STX_LAYOUT_DICT) {
        return rc;
    }
    PyObject *stats = stx_dict_stats_get(seg, &s) != 0
        ? Py_BuildValue("{s:s}", "problem", stx_detail())
        : Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K}", "count", s.count,
                        "table_capacity", s.entries_cap, "heap_size",
                        s.heap_size, "heap_used", s.heap_top, "live_bytes",
                        s.live_bytes, "free_bytes", s.free_bytes);
    rc = stats ? PyDict_SetItemString(info, "dict", stats) : -1;
    Py_XDECREF(stats);
    return rc;
}

PyObject *
segment_info(stx_segment *seg)
{
    stx_header *h = seg->hdr;
    int32_t holder = atomic_load(&h->writer_pid);
    int undo_rc = stx_undo_validate(seg);
    PyObject *undo_problem = PyUnicode_FromString(undo_rc == 0 ? ""
                                                  : stx_detail());
    PyObject *unusable = unrecoverable_reason(seg); /* after: one buffer */
    PyObject *processes = process_list(seg);
    PyObject *shape = shape_tuple(h);
    PyObject *beacons = beacon_list(seg);
    if (processes == NULL || shape == NULL || beacons == NULL
        || undo_problem == NULL || unusable == NULL) {
        Py_XDECREF(processes);
        Py_XDECREF(shape);
        Py_XDECREF(beacons);
        Py_XDECREF(undo_problem);
        Py_XDECREF(unusable);
        return NULL;
    }
    PyObject *info = Py_BuildValue(
        "{s:s,s:s,s:I,s:s,s:s,s:I,s:N,s:K,s:K,s:K,s:K,s:K,s:K,s:O,s:N,"
        "s:I,s:i,s:O,s:s,s:i,s:K,s:K,s:K,s:K,s:K,s:N,s:N,s:N}",
        "name", seg->name, "state", "ready", "format_version", h->version,
        "layout", layout_name(h->layout_kind), "format", h->format,
        "itemsize", h->itemsize, "shape", shape,
        "items", (unsigned long long)(h->data_size / h->itemsize),
        "data_size", (unsigned long long)h->data_size,
        "total_size", (unsigned long long)h->total_size,
        "undo_off", (unsigned long long)h->undo_off,
        "undo_size", (unsigned long long)h->undo_size,
        "undo_used", (unsigned long long)atomic_load(&h->undo_used),
        "undo_valid", undo_rc == 0 ? Py_True : Py_False,
        "undo_problem", undo_problem,
        "max_processes", h->nslots, "creator_pid", h->creator_pid,
        "creator_alive",
        stx_pid_alive(seg->file, h->creator_pid) ? Py_True : Py_False,
        "lock", lock_state(seg, holder), "writer_pid", holder,
        "seq", (unsigned long long)atomic_load(&h->seq),
        "commits", (unsigned long long)atomic_load(&h->commits),
        "recoveries", (unsigned long long)atomic_load(&h->recoveries),
        "created_ns", (unsigned long long)h->created_ns,
        "modified_ns", (unsigned long long)atomic_load(&h->modified_ns),
        "processes", processes, "beacons", beacons,
        "unrecoverable", unusable);
    PyObject *reserved = info == NULL ? NULL : PyLong_FromUnsignedLongLong(
        atomic_load(&h->undo_reserved));
    if (reserved == NULL
        || PyDict_SetItemString(info, "undo_reserved", reserved) < 0) {
        Py_CLEAR(info);
    }
    Py_XDECREF(reserved);
    if (info != NULL && add_dict_stats(seg, info) < 0) {
        Py_CLEAR(info);
    }
    return info;
}
