/*
 * py_segment.c -- shmtxn._core.Segment: what every handle does whatever
 * its segment holds.  Creating or attaching by name, close() and unlink(),
 * the creator-owned `with` lifetime, and the name/size/read_only/closed/
 * owner attributes.  Memory (slots, py_memory.c) and Dict (py_dict.c)
 * subclass it.
 */
#include <sys/random.h>
#include <unistd.h>

#include "binding.h"
#include "structmember.h"

/* The longest timeout accepted, in seconds (about 31 years): anything
 * longer is None, "wait forever", and nanoseconds of it fit 64 bits. */
#define TIMEOUT_MAX 1e9
/* What a timeout may be, for messages (PyErr_Format has no %g). */
#define TIMEOUT_RULE "timeout must be None (wait forever) or a number " \
                     "of seconds from 0 to 1e9"

/* The state of the module that made `type` (a handle type or a Python
 * subclass of one): the first of its bases made by our handle_new's
 * module.  NULL with TypeError if there is none. */
static binding_state *
state_of_type(PyTypeObject *type)
{
    for (PyTypeObject *t = type; t != NULL; t = t->tp_base) {
        if ((t->tp_flags & Py_TPFLAGS_HEAPTYPE) && t->tp_new == handle_new
            && ((PyHeapTypeObject *)t)->ht_module != NULL) {
            return PyModule_GetState(((PyHeapTypeObject *)t)->ht_module);
        }
    }
    PyErr_Format(PyExc_TypeError, "%s is not a shmtxn handle type",
                 type->tp_name);
    return NULL;
}

PyObject *
handle_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    binding_state *st = state_of_type(type);
    HandleObject *self = st ? (HandleObject *)type->tp_alloc(type, 0) : NULL;
    if (self != NULL) {
        self->st = st;
        atomic_store(&self->state, HS_NEW);
#ifdef Py_GIL_DISABLED
        pthread_mutex_init(&self->mu, NULL);
#endif
    }
    return (PyObject *)self;
}

int
handle_error(HandleObject *h, int code)
{
    raise_engine_error(h->st, code, h->seg.name);
    return -1;
}

int
handle_parse_timeout(PyObject *arg, double fallback, double *out)
{
    if (arg == NULL || arg == Py_None) {
        *out = fallback;
        return 0;
    }
    double t = PyBool_Check(arg) ? -1.0 : PyFloat_AsDouble(arg);
    if (PyBool_Check(arg) || (t == -1.0 && PyErr_Occurred()
                              && PyErr_ExceptionMatches(PyExc_TypeError))) {
        PyErr_Clear(); /* a bool is a number, but not of seconds */
        PyErr_Format(PyExc_TypeError, "timeout must be None or a number "
                     "of seconds, not %.100s", Py_TYPE(arg)->tp_name);
        return -1;
    }
    if (t == -1.0 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError)) {
            return -1;
        }
        PyErr_Clear(); /* an int too large for a float (its repr may be
                          too long to print) */
        PyErr_SetString(PyExc_ValueError, TIMEOUT_RULE ", not an int that "
                        "large");
        return -1;
    }
    if (!(t >= 0 && t <= TIMEOUT_MAX)) { /* NaN fails both */
        PyErr_Format(PyExc_ValueError, TIMEOUT_RULE ", not %R", arg);
        return -1;
    }
    *out = t;
    return 0;
}

int
handle_check_args(open_args *a)
{
    if (a->size < 0) {
        PyErr_Format(PyExc_ValueError, "size must not be negative (got %zd)",
                     a->size);
        return -1;
    }
    if (a->mode < 0 || a->mode > 0777 || (a->mode & 0600) != 0600) {
        char got[32];
        snprintf(got, sizeof(got), "%s0o%o", a->mode < 0 ? "-" : "",
                 a->mode < 0 ? -(unsigned)a->mode : (unsigned)a->mode);
        PyErr_Format(PyExc_ValueError, "mode must be permission bits "
                     "within 0o777 that include 0o600 (got %s): every "
                     "process that attaches, even read-only, reads and "
                     "writes the segment", got);
        return -1;
    }
    if (a->name == NULL) {
        return 0;
    }
    if (a->name[0] == '/') {
        a->name++; /* the stdlib accepts "/name" too */
    }
    size_t len = strlen(a->name); /* UTF-8 bytes, which the limit counts */
    if (len == 0 || len > STX_NAME_MAX) {
        PyErr_Format(PyExc_ValueError, "a segment name is 1 to %d bytes "
                     "of UTF-8 (got %zu bytes)%s", STX_NAME_MAX, len,
                     len ? "; choose a shorter name" : "");
        return -1;
    }
    if (stx_check_name(a->name) != 0) {
        PyErr_SetString(PyExc_ValueError, stx_detail());
        return -1;
    }
    return 0;
}

int
handle_parse_create(PyObject *arg, open_args *a)
{
    if (arg == NULL || arg == Py_False) {
        a->create = OPEN_ATTACH;
    }
    else if (arg == Py_None) {
        a->create = OPEN_EITHER;
    }
    else {
        int truth = PyObject_IsTrue(arg);
        if (truth < 0) {
            return -1;
        }
        a->create = truth ? OPEN_CREATE : OPEN_ATTACH;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* creation and attachment                                             */

/* A fresh name like "stx_k3v9q0zd2m": short enough for macOS. */
static int
random_name(char *out, size_t size)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char bytes[10];
    if (getrandom(bytes, sizeof(bytes), 0) != (ssize_t)sizeof(bytes)) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    char *p = out + snprintf(out, size, "stx_");
    for (size_t i = 0; i < sizeof(bytes); i++) {
        *p++ = alphabet[bytes[i] % 36];
    }
    *p = '\0';
    return 0;
}

/* -1 (with ValueError) if creation sizes are negative, else 0. */
static int
check_create_args(const open_args *a)
{
    if (a->undo_size < 0 || a->max_processes < 0) {
        PyErr_SetString(PyExc_ValueError, "undo_size and max_processes "
                        "must not be negative");
        return -1;
    }
    return 0;
}

/* This handle created its segment: it owns it (unlinks it on exit). */
static void
mark_created(HandleObject *self)
{
    self->created = 1;
    self->creator_pid = (long)getpid();
}

/* 1 (with LockTimeout or the engine's error) if an attach or open-or-
 * create of `a->name` that waited up to `a->timeout` returned `rc` != 0;
 * 0 if it succeeded. */
static int
open_failed(HandleObject *self, const open_args *a, int rc)
{
    if (rc == STX_EAGAIN) {
        raise_lock_timeout(self->st, a->name, a->timeout, 0);
    }
    else if (rc != 0) {
        raise_engine_error(self->st, rc, a->name);
    }
    return rc != 0;
}

static int
create_segment(HandleObject *self, open_args *a, const stx_create_opts *opts)
{
    if (check_create_args(a) < 0) {
        return -1;
    }
    char generated[32];
    for (int attempt = 0; attempt < 8; attempt++) {
        if (a->name == NULL
            && random_name(generated, sizeof(generated)) < 0) {
            return -1;
        }
        int rc;
        const char *use = a->name ? a->name : generated;
        Py_BEGIN_ALLOW_THREADS
        rc = stx_create(&self->seg, use, opts);
        Py_END_ALLOW_THREADS
        if (rc == STX_EEXIST && a->name == NULL) {
            continue;
        }
        if (rc != 0) {
            raise_engine_error(self->st, rc, use);
            return -1;
        }
        mark_created(self);
        return 0;
    }
    raise_engine_error(self->st, STX_EEXIST, "(generated)");
    return -1;
}

/* The class that opens segments of layout `kind`. */
static const char *
layout_class(uint32_t kind)
{
    return kind == STX_LAYOUT_DICT ? "SharedDict" : "SharedMemory";
}

static int
attach_segment(HandleObject *self, open_args *a, uint32_t kind)
{
    int rc;
    if (a->data.obj != NULL) {
        PyErr_SetString(PyExc_ValueError, "data= is only for create=True");
        return -1;
    }
    uint64_t wait_ns = (uint64_t)(a->timeout * 1e9);
    Py_BEGIN_ALLOW_THREADS
    rc = stx_attach(&self->seg, a->name, a->read_only, a->populate, wait_ns);
    Py_END_ALLOW_THREADS
    if (open_failed(self, a, rc)) {
        return -1;
    }
    uint32_t stored = self->seg.hdr->layout_kind;
    if (stored != kind) {
        raise_error(self->st, STX_EINCOMPAT, "segment '%s' holds a %s, not "
                    "a %s; open it with %s", a->name, layout_class(stored),
                    layout_class(kind), layout_class(stored));
        stx_close(&self->seg);
        return -1;
    }
    return 0;
}

/* create=None: attach to the segment if the name exists, else create
 * it (the engine settles the races); self->created says which. */
static int
either_segment(HandleObject *self, open_args *a, const stx_create_opts *opts)
{
    if (a->name == NULL) {
        return create_segment(self, a, opts); /* nothing to attach to */
    }
    if (check_create_args(a) < 0) {
        return -1;
    }
    int rc, created;
    uint64_t wait_ns = (uint64_t)(a->timeout * 1e9);
    Py_BEGIN_ALLOW_THREADS
    rc = stx_open_or_create(&self->seg, a->name, opts, wait_ns, &created);
    Py_END_ALLOW_THREADS
    if (open_failed(self, a, rc)) {
        return -1;
    }
    if (created) {
        mark_created(self);
        return 0;
    }
    uint32_t stored = self->seg.hdr->layout_kind;
    if (stored != opts->layout->kind) {
        raise_error(self->st, STX_EINCOMPAT, "segment '%s' holds a %s, not "
                    "a %s; open it with %s, or use another name", a->name,
                    layout_class(stored), layout_class(opts->layout->kind),
                    layout_class(stored));
        stx_close(&self->seg);
        return -1;
    }
    return 0;
}

int
handle_check_either(HandleObject *h, const open_args *a)
{
    stx_header *hdr = h->seg.hdr;
    if (a->max_processes != 0 && (uint32_t)a->max_processes != hdr->nslots) {
        raise_error(h->st, STX_EINCOMPAT, "segment '%s' exists with "
                    "max_processes=%u, not %d as asked; with create=None "
                    "pass what its creator passed, or omit max_processes=",
                    h->seg.name, hdr->nslots, a->max_processes);
        return -1;
    }
    /* plan_layout (segment.c) gives undo_size=N as N rounded up to a page,
     * plus a page for record headers */
    uint64_t page = STX_PAGE, n = (uint64_t)a->undo_size;
    if (n != 0 && (n + page - 1) / page * page + page != hdr->undo_size) {
        raise_error(h->st, STX_EINCOMPAT, "segment '%s' exists with "
                    "another undo_size= than %zd (its undo log has %llu "
                    "bytes); with create=None pass what its creator passed, "
                    "or omit undo_size=", h->seg.name, a->undo_size,
                    (unsigned long long)hdr->undo_size);
        return -1;
    }
    return 0;
}

/* handle_open's checks and opening, `self` being OPENING. */
static int
open_segment(HandleObject *self, open_args *a, const stx_create_opts *opts)
{
    int rc;
    if (a->create != OPEN_ATTACH && a->read_only) {
        PyErr_Format(PyExc_ValueError, "cannot create a segment read-only "
                     "(create=%s); create it, then open read_only=True "
                     "handles on it", a->create == OPEN_EITHER ? "None"
                                                               : "True");
        return -1;
    }
    if (a->create == OPEN_ATTACH && a->name == NULL) {
        PyErr_SetString(PyExc_ValueError, "name is required to attach "
                        "(or pass create=True)");
        return -1;
    }
    rc = a->create == OPEN_CREATE ? create_segment(self, a, opts)
         : a->create == OPEN_EITHER ? either_segment(self, a, opts)
                                    : attach_segment(self, a,
                                                     opts->layout->kind);
    if (rc < 0) {
        return -1;
    }
    self->dev = self->seg.file->dev;
    self->ino = self->seg.file->ino;
    self->name = PyUnicode_FromString(self->seg.name);
    if (self->name == NULL) {
        stx_close(&self->seg);
        return -1;
    }
    return 0;
}

int
handle_open(HandleObject *self, open_args *a, const stx_create_opts *opts)
{
    int fresh = HS_NEW;
    if (!atomic_compare_exchange_strong(&self->state, &fresh, HS_OPENING)) {
        PyObject *type_name = PyType_GetName(Py_TYPE(self));
        if (type_name != NULL) {
            PyErr_Format(PyExc_TypeError, "%U is already open", type_name);
            Py_DECREF(type_name);
        }
        return -1;
    }
    if (open_segment(self, a, opts) < 0) {
        atomic_store(&self->state, HS_NEW);
        return -1;
    }
    return 0;
}

int
handle_publish(HandleObject *self, int ok)
{
    if (!ok && self->seg.file != NULL) {
        stx_close(&self->seg);
    }
    /* everything the handle holds is written before others may use it */
    atomic_store(&self->state, ok ? HS_OPEN : HS_CLOSED);
    return ok ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* lifetime                                                            */

/*
 * Arrays that point into the mapping without an export: numpy's
 * ndarray(buffer=mv) keeps a pointer and a reference to `mv.obj`, and
 * releases its buffer at once.  `buf` and txn bufs are therefore
 * memoryviews over Views of their own, and a View referenced by anything
 * beyond us is an array still alive.  (frombuffer() and asarray() keep a
 * memoryview, i.e. an export, which `exports` counts.)
 */

/* 1 if the memoryview `mv` was released (by its user: .release(), or a
 * `with shr.buf as b` block): it then no longer holds its View. */
static int
memoryview_released(PyObject *mv)
{
    PyObject *obj = PyObject_GetAttrString(mv, "obj");
    if (obj == NULL) {
        PyErr_Clear(); /* ValueError: operation on a released memoryview */
        return 1;
    }
    Py_DECREF(obj);
    return 0;
}

/* References to the View under shr.buf beyond ours and, while it is not
 * released, its memoryview's. */
static Py_ssize_t
buf_view_holders(HandleObject *self)
{
    if (self->buf_view == NULL) {
        return 0;
    }
    Py_ssize_t ours = 1 + (self->buf != NULL
                           && !memoryview_released(self->buf));
    return Py_REFCNT(self->buf_view) - ours;
}

/* Views of ended txns still referenced beyond the list; the others are
 * dropped from the list.  Their count. */
static Py_ssize_t
escaped_views_alive(HandleObject *self)
{
    Py_ssize_t alive = 0;
    Py_ssize_t n = self->escaped ? PyList_GET_SIZE(self->escaped) : 0;
    for (Py_ssize_t i = n - 1; i >= 0; i--) {
        if (Py_REFCNT(PyList_GET_ITEM(self->escaped, i)) > 1) {
            alive++;
        }
        else if (PySequence_DelItem(self->escaped, i) < 0) {
            PyErr_Clear();
        }
    }
    return alive;
}

int
handle_escape_view(HandleObject *self, PyObject *view)
{
    int rc = 0;
    Py_BEGIN_CRITICAL_SECTION(self); /* close() prunes the list */
    if (self->escaped == NULL && (self->escaped = PyList_New(0)) == NULL) {
        rc = -1;
    }
    else {
        rc = PyList_Append(self->escaped, view);
    }
    Py_END_CRITICAL_SECTION();
    return rc;
}

/* Release shr.buf like the stdlib does (names bound to it stop working);
 * a slice of it still alive keeps its export, counted in `exports`. */
static void
release_buf(HandleObject *self)
{
    if (self->buf != NULL) {
        PyObject *r = PyObject_CallMethod(self->buf, "release", NULL);
        if (r == NULL) {
            PyErr_Clear(); /* exported: counted in self->exports */
        }
        Py_XDECREF(r);
        Py_CLEAR(self->buf);
    }
    if (self->buf_view != NULL) {
        view_end((ViewObject *)self->buf_view); /* no new exports */
        Py_CLEAR(self->buf_view);
    }
}

/* BufferExportsError for `n` live views of the handle's memory. */
static int
refuse_close(HandleObject *self, Py_ssize_t n)
{
    raise_error(self->st, ERR_BUFFER_EXPORTS, "cannot close segment '%s': "
                "%zd view(s) of its memory are still alive (memoryview "
                "slices of .buf or txn .buf, numpy arrays made from them or "
                "from ndarray()); delete them (del, or .release() on "
                "memoryviews) first", self->seg.name, n);
    return -1;
}

/* TransactionsOpenError for `n` txns open on the handle. */
static int
refuse_txns(HandleObject *self, int n)
{
    raise_error(self->st, ERR_TXNS_OPEN, "cannot close segment '%s': "
                "%d transaction(s) are open on it; leave their "
                "with-blocks first", self->seg.name, n);
    return -1;
}

/* Sleep a moment with the GIL released (close() waiting for threads). */
static void
close_nap(void)
{
    Py_BEGIN_ALLOW_THREADS
    usleep(100);
    Py_END_ALLOW_THREADS
}

/* After CLOSING: wait until no other thread pins the handle.  Calls in
 * flight finish; waits in wait() and in a txn of their own see CLOSING
 * between slices and leave (the change word is bumped to wake the
 * sleepers in wait() at once). */
static void
drain_pins(HandleObject *self)
{
    for (int round = 0; gate_held_elsewhere(self); round++) {
        if (round % 64 == 0) {
            stx_announce_change(&self->seg); /* a spurious wake-up */
        }
        close_nap();
    }
}

/* handle_close inside the handle's critical section (which serialises
 * closers and the buf/escaped caches).  Every refusal comes before
 * CLOSING; from CLOSING on, close() completes, so whoever it turns away
 * (SegmentClosedError) was turned away by a close that happened. */
static int
close_locked(HandleObject *self)
{
    int state = handle_state(self);
    if (state == HS_CLOSING) {
        while (handle_state(self) == HS_CLOSING) {
            close_nap(); /* another thread's close(): done with it */
        }
        return 0;
    }
    if (state != HS_OPEN) {
        return 0;
    }
    orphans_end_own(); /* this thread's: not open any more */
    if (gate_held_here(self) > wait_count_own(self)) {
        raise_error(self->st, ERR_TXNS_OPEN, "cannot close segment '%s' "
                    "while this thread is inside an operation on it (close() "
                    "from a signal handler, a finalizer or unpickling code "
                    "run by that operation); close it once the operation "
                    "returns", self->seg.name);
        return -1;
    }
    int open_txns = stx_segment_open_txns(&self->seg);
    if (open_txns > 0) {
        return refuse_txns(self, open_txns);
    }
    Py_ssize_t arrays = buf_view_holders(self) + escaped_views_alive(self);
    if (arrays > 0) {
        return refuse_close(self, arrays);
    }
    release_buf(self);
    /* the decision: no export or txn can begin once CLOSING is set, and
     * both begin under this lock while the handle is OPEN */
    HANDLE_LOCK(self);
    Py_ssize_t exports = self->exports;
    open_txns = stx_segment_open_txns(&self->seg);
    int keep_mapping = self->exported_directly;
    if (exports == 0 && open_txns == 0) {
        atomic_store(&self->state, HS_CLOSING);
    }
    HANDLE_UNLOCK(self);
    if (exports > 0) {
        return refuse_close(self, exports);
    }
    if (open_txns > 0) {
        return refuse_txns(self, open_txns);
    }
    wait_end_own(self); /* close() from a signal handler inside wait() */
    drain_pins(self);   /* before anything is unmapped */
    if (!keep_mapping) {
        stx_close(&self->seg);
    }
    /* else ndarray(buffer=shr) keeps a reference to this handle and a
     * pointer, but no export: keep the mapping until the handle itself
     * is freed, so such an array never reads unmapped memory */
    atomic_store(&self->state, HS_CLOSED);
    return 0;
}

int
handle_close(HandleObject *self)
{
    int rc;
    Py_BEGIN_CRITICAL_SECTION(self);
    rc = close_locked(self);
    Py_END_CRITICAL_SECTION();
    return rc;
}

static PyObject *
Segment_close(HandleObject *self, PyObject *unused)
{
    if (handle_close(self) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Segment_unlink(HandleObject *self, PyObject *unused)
{
    if (self->name == NULL) {
        Py_RETURN_NONE;
    }
    const char *name = PyUnicode_AsUTF8(self->name);
    int rc = stx_unlink(name, self->dev, self->ino);
    if (rc != 0 && rc != STX_ENOENT) {
        raise_engine_error(self->st, rc, name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
Segment_enter(HandleObject *self, PyObject *unused)
{
    if (handle_check_open(self) < 0) {
        return NULL;
    }
    return Py_NewRef(self);
}

/* Leaving `with`: the creating process unlinks, everyone closes. */
static PyObject *
Segment_exit(HandleObject *self, PyObject *args)
{
    if (self->created && self->creator_pid == (long)getpid()) {
        PyObject *r = Segment_unlink(self, NULL);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
    if (handle_close(self) < 0) {
        return NULL;
    }
    Py_RETURN_FALSE;
}

static void
Segment_dealloc(HandleObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakrefs != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    Py_CLEAR(self->buf);
    Py_CLEAR(self->buf_view);
    Py_CLEAR(self->escaped);
    if (self->seg.file != NULL) {
        stx_close(&self->seg);
    }
    Py_CLEAR(self->name);
#ifdef Py_GIL_DISABLED
    pthread_mutex_destroy(&self->mu);
#endif
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type);
}

static int
Segment_traverse(HandleObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->buf);
    Py_VISIT(self->buf_view);
    Py_VISIT(self->escaped);
    return 0;
}

/* ------------------------------------------------------------------ */
/* attributes                                                          */

static PyObject *
Segment_get_name(HandleObject *self, void *closure)
{
    return Py_NewRef(self->name ? self->name : Py_None);
}

/* The data region's bytes, as the stdlib's `size` (which `buf` covers;
 * it may end in a tail shorter than an item). */
static PyObject *
Segment_get_size(HandleObject *self, void *closure)
{
    return PyLong_FromUnsignedLongLong(self->fmt ? self->seg.data_size : 0);
}

static PyObject *
Segment_get_created(HandleObject *self, void *closure)
{
    return PyBool_FromLong(self->created);
}

static PyObject *
Segment_get_read_only(HandleObject *self, void *closure)
{
    return PyBool_FromLong(self->seg.read_only);
}

static PyObject *
Segment_get_closed(HandleObject *self, void *closure)
{
    return PyBool_FromLong(handle_state(self) != HS_OPEN);
}

static PyObject *
Segment_get_owner(HandleObject *self, void *closure)
{
    return PyBool_FromLong(self->created
                           && self->creator_pid == (long)getpid());
}

/* Header and slot state, for `shmtxn info` and the tests. */
static PyObject *
Segment_info(HandleObject *self, PyObject *unused)
{
    if (gate_enter(self) < 0) {
        return NULL;
    }
    PyObject *info = segment_info(&self->seg);
    gate_leave(self);
    return info;
}

/* shr.version: commits + dead writers rolled back, read lock-free. */
static PyObject *
Segment_get_version(HandleObject *self, void *closure)
{
    if (handle_check_open(self) < 0 || LOCKFREE_ENTER(self) < 0) {
        return NULL;
    }
    uint64_t version = stx_version(&self->seg);
    LOCKFREE_LEAVE(self);
    return PyLong_FromUnsignedLongLong(version);
}

/* shr.wait(since=None, timeout=None): sleep until the version is no
 * longer `since` (None: the version now); the new version, or `since`
 * if the timeout expired. */
static PyObject *
Segment_wait(HandleObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"since", "timeout", NULL};
    PyObject *since_arg = Py_None, *timeout_arg = Py_None;
    double timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:wait", kwlist,
                                     &since_arg, &timeout_arg)
        || handle_check_open(self) < 0
        || handle_parse_timeout(timeout_arg, -1.0, &timeout) < 0) {
        return NULL;
    }
    uint64_t since;
    if (since_arg == Py_None) {
        since = 0; /* the version now: wait_for_change reads it */
    }
    else if (!PyLong_Check(since_arg) || PyBool_Check(since_arg)) {
        PyErr_Format(PyExc_TypeError, "since must be None or a version "
                     "(an int from .version or wait()), not %.100s",
                     Py_TYPE(since_arg)->tp_name);
        return NULL;
    }
    else {
        since = PyLong_AsUnsignedLongLong(since_arg);
        if (since == (uint64_t)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_ValueError, "since must be a version: an "
                         "int from 0 to 2**64-1, not %R", since_arg);
            return NULL;
        }
    }
    uint64_t version;
    if (wait_for_change(self, since_arg == Py_None ? NULL : &since, timeout,
                        &version) < 0) {
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(version);
}

static PyMethodDef Segment_methods[] = {
    {"wait", (PyCFunction)(void (*)(void))Segment_wait,
     METH_VARARGS | METH_KEYWORDS,
     "wait($self, /, since=None, timeout=None)\n--\n\n"
     "Sleep until another commit (or the rollback of a dead writer) moves "
     "the version past `since` (None: the version now), without holding "
     "any lock; return the new version, or `since` itself if `timeout` "
     "seconds passed first."},
    {"close", (PyCFunction)Segment_close, METH_NOARGS,
     "Unmap this handle (idempotent)."},
    {"unlink", (PyCFunction)Segment_unlink, METH_NOARGS,
     "Remove the segment's name (idempotent)."},
    {"info", (PyCFunction)Segment_info, METH_NOARGS,
     "Header, lock and attached-process state as a dict."},
    {"__enter__", (PyCFunction)Segment_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)Segment_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Segment_getset[] = {
    {"name", (getter)Segment_get_name, NULL, "segment name", NULL},
    {"size", (getter)Segment_get_size, NULL, "data bytes", NULL},
    {"read_only", (getter)Segment_get_read_only, NULL, NULL, NULL},
    {"closed", (getter)Segment_get_closed, NULL, NULL, NULL},
    {"created", (getter)Segment_get_created, NULL,
     "True if opening this handle created the segment (create=True, or "
     "create=None finding no segment), False if it attached", NULL},
    {"version", (getter)Segment_get_version, NULL,
     "commits so far plus dead writers rolled back: moves on every change",
     NULL},
    {"owner", (getter)Segment_get_owner, NULL,
     "True in the process whose handle created the segment", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Segment_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(HandleObject, weakrefs),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot Segment_slots[] = {
    {Py_tp_doc, "A handle on a shmtxn segment (base of Memory and Dict)."},
    {Py_tp_dealloc, Segment_dealloc},
    {Py_tp_traverse, Segment_traverse},
    {Py_tp_methods, Segment_methods},
    {Py_tp_getset, Segment_getset},
    {Py_tp_members, Segment_members},
    {0, NULL},
};

PyType_Spec Segment_spec = {
    .name = "shmtxn._core.Segment",
    .basicsize = sizeof(HandleObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = Segment_slots,
};
