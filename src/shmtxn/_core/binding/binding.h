/*
 * binding.h -- what the binding files share.  Only the binding includes
 * Python.h.  The files stand on floors, and a file calls only into files
 * on floors below its own (and the engine): no two files call each other.
 * tests/test_binding.py checks that the files listed here are exactly the
 * files in binding/, and, on a built tree, that the calls go down.
 *
 * module:
 *   module.c       -- the shmtxn._core module: multi-phase init, the
 *                     module state, module-level functions (probe, repair)
 * module functions:
 *   py_codec.c     -- the dict codec as functions (encode_key, ...), for
 *                     backends outside shared memory (shmtxn.remote)
 * handle types:
 *   py_memory.c    -- Memory, a handle on a slots segment (shr[i], txn())
 *   py_dict.c      -- Dict, a handle on a dict segment (d[k], txn())
 * txn types:
 *   py_txn.c       -- Txn, the slots transaction (t[i], t.buf, t.ndarray)
 *   py_dict_txn.c  -- DictTxn, the dict transaction (t[k], t.clear())
 * operations:
 *   slots.c        -- slot reads and writes: items, slices, views; auto-
 *                     committed or inside a txn
 *   dict_ops.c     -- dict lookups and writes: lock-free, auto-committed
 *                     or inside a txn
 * driver:
 *   txn.c          -- opening (the wait loop), ending and dropping txns;
 *                     TxnBase, what both txn types extend; the one txn()
 *                     argument parser
 * handle:
 *   py_segment.c   -- Segment, the base of Memory and Dict: open, close,
 *                     unlink, and the checks every operation makes
 * waiting:
 *   waiting.c      -- wait(): sleeping until a commit, the GIL released
 * views:
 *   py_view.c      -- View, a typed zero-copy export of a segment
 * leaves:
 *   items.c        -- slot item formats: pack and unpack
 *   codec.c        -- SharedDict keys and values as bytes
 *   info.c         -- a segment's state as Python data
 * gate:
 *   gate.c         -- threads and a handle's life: its state (open,
 *                     closing, closed), its lock, the pins that keep its
 *                     mapping while a call uses it (docs/threads.md)
 * errors:
 *   errors.c       -- the exception table (in the module state), raising
 *
 * (and binding.h, this file)
 */
#ifndef STX_BINDING_H
#define STX_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "engine.h"
#include "dict/dict.h"
#include "dict/key.h"

/* ---- threads (gate.c; docs/threads.md) ---- */

/* Critical sections on objects: public from 3.13 (nothing on GIL builds);
 * before 3.13 the GIL is the only lock there is. */
#ifndef Py_BEGIN_CRITICAL_SECTION
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif

#ifdef Py_GIL_DISABLED
/* Pins and the handle state meet as in Dekker's algorithm. */
#define GATE_ORDER memory_order_seq_cst
#define HANDLE_LOCK(h) pthread_mutex_lock(&(h)->mu)
#define HANDLE_UNLOCK(h) pthread_mutex_unlock(&(h)->mu)
#else
/* The GIL orders everything; the lock is the GIL. */
#define GATE_ORDER memory_order_relaxed
#define HANDLE_LOCK(h) ((void)0)
#define HANDLE_UNLOCK(h) ((void)0)
#endif

/* A handle's life (gate.c explains who may do what in each). */
enum handle_state {
    HS_NEW = 0,     /* allocated, __init__ not run (or it failed) */
    HS_OPENING,     /* __init__ is opening it */
    HS_OPEN,
    HS_CLOSING,     /* close() waits for other threads' pins to go */
    HS_CLOSED,      /* closed (the mapping may be kept until freed) */
};

/* ---- item formats (items.c) ---- */

/* A slot format (the engine's table, engine/items.c). */
typedef stx_item_format item_format;

/* The format for `code`, or NULL with ValueError set. */
const item_format *item_format_find(const char *code);
/* A new Python object for the item at `src`. */
PyObject *item_unpack(const item_format *fmt, const void *src);
/* Convert `value` into `dst`; -1 with TypeError/OverflowError set. */
int item_pack(const item_format *fmt, PyObject *value, void *dst);

/* ---- SharedDict keys and values as bytes (codec.c) ---- */

/* A key's canonical encoding, built by the engine (dict/key.h). */
typedef stx_keybuf key_buf;

/* A value's encoding: borrowed from the value, or owned by `owner`. */
typedef struct value_buf {
    const uint8_t *bytes;
    Py_ssize_t len;
    uint8_t tag;
    PyObject *owner;        /* a bytes object holding them, or NULL */
    union { int64_t i; double d; } number;
} value_buf;

/* Free what `kb` allocated; it is empty again. */
void key_buf_release(key_buf *kb);
/* Encode `key` canonically; -1 with TypeError for other key types. */
int key_encode(PyObject *key, key_buf *kb);
struct HandleObject;
/* The key stored as `p[:n]` with kind `kind` in the segment of `h`; NULL
 * on error (CorruptSegmentError naming the segment if the bytes are
 * damaged). */
PyObject *key_decode(const struct HandleObject *h, const uint8_t *p,
                     uint32_t n, uint8_t kind);
/* key_decode without a segment: NULL with ValueError (or OverflowError)
 * if the bytes are not a key (py_codec.c names the source itself). */
PyObject *key_decode_plain(const uint8_t *p, size_t n, uint8_t kind);
/* Encode `value` (pickling what has no fast path); -1 with the error
 * pickle raised.  Release with value_buf_release. */
int value_encode(PyObject *value, value_buf *vb);
void value_buf_release(value_buf *vb);
/* The value stored with `tag` as `p[:n]`.  For a pickle (*pickled = 1)
 * it returns the raw bytes: call value_unpickle() once they are known
 * to be committed. */
PyObject *value_decode(const struct HandleObject *h, uint8_t tag,
                       const uint8_t *p, uint64_t n, int *pickled);
/* value_decode without a segment: NULL with ValueError if damaged. */
PyObject *value_decode_plain(uint8_t tag, const uint8_t *p, uint64_t n,
                             int *pickled);
/* pickle.loads(raw), exceptions as pickle raised them. */
PyObject *value_loads(PyObject *raw);
/* pickle.loads(raw); what it raises becomes the __cause__ of a
 * CorruptSegmentError naming the segment of `h`. */
PyObject *value_unpickle(const struct HandleObject *h, PyObject *raw);

/* ---- module state (module.c fills it; everything reads it) ---- */

/* Exception table indices: engine code `c` (negative) is at -c; the
 * binding's own situations take codes past the engine's. */
#define ENGINE_CODES 64
enum binding_code {
    ERR_SEGMENT_CLOSED = -ENGINE_CODES,     /* SegmentClosedError */
    ERR_BUFFER_EXPORTS = -ENGINE_CODES - 1, /* BufferExportsError */
    ERR_TXNS_OPEN = -ENGINE_CODES - 2,      /* TransactionsOpenError */
};
#define ERROR_TABLE_SIZE (ENGINE_CODES + 3)

/*
 * binding_state -- the state of one shmtxn._core module object: its
 * exception classes, resolved once at import, and its heap types.  Every
 * handle keeps a pointer to it (HandleObject.st), so no hot path looks
 * the module up.
 */
typedef struct binding_state {
    PyObject *errors[ERROR_TABLE_SIZE]; /* class per -code, or NULL */
    PyTypeObject *Segment_Type;
    PyTypeObject *Memory_Type;
    PyTypeObject *Dict_Type;
    PyTypeObject *Txn_Type;
    PyTypeObject *DictTxn_Type;
    PyTypeObject *View_Type;
    PyTypeObject *ThreadGuard_Type;
    PyTypeObject *dict_txn_class; /* what d.txn() makes (see dict.py),
                                     borrowed from retired_classes */
    PyObject *retired_classes;    /* every class set_dict_txn_class was
                                     given: d.txn() in another thread may
                                     still use one it replaced */
    PyObject *numpy_asarray;      /* numpy.asarray once ndarray() ran */
    PyObject *str_write;          /* "write" and "timeout", interned: */
    PyObject *str_timeout;        /* txn()'s keywords, compared by address */
} binding_state;

/* ---- errors (errors.c) ---- */

/* Fill st->errors from shmtxn.errors; -1 on failure. */
int errors_init(binding_state *st);
/* Raise the class of `code` (engine or binding code) with a message. */
void raise_error(binding_state *st, int code, const char *fmt, ...);
/* Raise the exception for engine code `code` about segment `name`, with
 * the engine's detail and what to do about it. */
void raise_engine_error(binding_state *st, int code, const char *name);
/* Raise LockTimeout for a wait of `timeout` seconds on `name`. */
void raise_lock_timeout(binding_state *st, const char *name, double timeout,
                        int write);
/* Raise KeyError with `key` as its one argument, exactly as dict does. */
void raise_key_error(PyObject *key);
/* raise_error, from the exception being raised (it becomes __cause__). */
void raise_error_from_cause(binding_state *st, int code, const char *fmt,
                            ...);
/* Raise `exc_class` with a PyUnicode_FromFormat message, from the
 * exception being raised (it becomes __cause__ and __context__). */
void raise_from_cause(PyObject *exc_class, const char *fmt, ...);
/* The exception being raised, taken as one object (NULL: none), and put
 * back (NULL: cleared) -- the 3.12 API, with 3.11's in errors.c only. */
PyObject *exc_take(void);
void exc_restore(PyObject *exc);
/* 1 if `nargs` positional arguments fit [min, max]; else 0 with the
 * TypeError a builtin method raises ("get expected at most 2 arguments,
 * got 3"). */
int check_positional(const char *name, Py_ssize_t nargs, Py_ssize_t min,
                     Py_ssize_t max);

/* ---- the gate (gate.c) ---- */

struct HandleObject;
/* Set up per-thread records once per process; -1 with an exception. */
int gate_init(void);
/* -1 with SegmentClosedError unless `h` is open. */
int handle_check_open(struct HandleObject *h);
/* Pin `h` for a call that uses its mapping: 0, or -1 with
 * SegmentClosedError (closed or closing).  Pins nest; leave each. */
int gate_enter(struct HandleObject *h);
void gate_leave(struct HandleObject *h);
/* Pins the calling thread holds on `h`. */
int gate_held_here(const struct HandleObject *h);
/* 1 if another thread holds a pin on `h`. */
int gate_held_elsewhere(const struct HandleObject *h);
/* Give the calling thread its record now (a thread that opens txn
 * objects: gate_flag_orphan must find it); -1 with MemoryError. */
int gate_thread_claim(void);
/* Tell the live thread `thread` (a stx_thread_id()) that another thread
 * dropped a write txn of its (no-op if it has no record: it ended). */
void gate_flag_orphan(uint64_t thread);
/* 1 (once) if the calling thread was told so since it last asked. */
int gate_take_orphan_flag(void);
/* Keep the write txn `txn` of another thread, dropped in this one,
 * until that thread ends it (it is moved; `mem` is kept alive). */
void orphan_keep(struct HandleObject *mem, stx_txn *txn);
/* Free the orphans whose thread has ended them. */
void orphans_reap(void);
/* Roll back the calling thread's write txns that other threads dropped;
 * cheap when there are none anywhere. */
void orphans_end_own(void);

/* ---- segment state as Python data (info.c) ---- */

/* A dict describing a mapped segment: geometry, lock, processes. */
PyObject *segment_info(stx_segment *seg);

/* ---- objects ---- */

/*
 * HandleObject -- one handle on one segment: the state of
 * shmtxn._core.Segment (py_segment.c), the base of Memory (slots) and Dict.
 * `exports` counts live buffers taken from it or from its txns; close()
 * refuses while any is alive, or while a memoryview it handed out (`buf`,
 * `escaped`) is still referenced by anything else.  Open txns are counted
 * by the engine (stx_segment_open_txns).  The slot fields (fmt, nitems, shape) are
 * Memory's; a Dict sees its data region as bytes (format 'B').
 *
 * Threads (gate.c, docs/threads.md): `state` says whether the handle may
 * be used; `exports`, `exported_directly` and the registration of txns
 * change under the handle lock (HANDLE_LOCK, free-threaded builds only)
 * while `state` is HS_OPEN; `buf`, `buf_view` and `escaped` change inside
 * a critical section on the handle.  The geometry fields are written
 * before the handle is OPEN and never after.
 */
typedef struct HandleObject {
    PyObject_HEAD
    binding_state *st;      /* its module's state, set at allocation */
    stx_segment seg;
    const item_format *fmt;
    Py_ssize_t nitems;
    int ndim;                             /* the segment's shape */
    Py_ssize_t shape[STX_MAX_NDIM];
    Py_ssize_t strides[STX_MAX_NDIM];     /* C order, in bytes */
    char format[2];                       /* fmt->code as a C string */
    int created;            /* this handle created the segment */
    long creator_pid;       /* ...in this process (not a forked child) */
    _Atomic int state;      /* enum handle_state */
    _Atomic int overflow_pins; /* pins of threads whose stack was full */
    Py_ssize_t exports;     /* live Py_buffers over the data region */
    int exported_directly;  /* the handle itself exported a buffer once:
                               close() then keeps the mapping until the
                               handle is freed (see handle_close) */
    PyObject *name;         /* str */
    dev_t dev;              /* identity of the file, kept after close() */
    ino_t ino;              /* so unlink() never removes a newer one */
    PyObject *buf;          /* cached memoryview of `buf_view`, or NULL */
    PyObject *buf_view;     /* the View under `buf` */
    PyObject *escaped;      /* list of Views that outlived their txn while
                               held elsewhere, or NULL */
    PyObject *weakrefs;
#ifdef Py_GIL_DISABLED
    pthread_mutex_t mu;     /* the handle lock: never held across Python
                               code or a wait */
#endif
} HandleObject;

/* The state of `h` (enum handle_state). */
static inline int
handle_state(const HandleObject *h)
{
    return atomic_load_explicit(&h->state, GATE_ORDER);
}

/* Lock-free reads pin the handle on free-threaded builds; under the GIL
 * they only check it is open (they release no GIL, run no Python). */
#ifdef Py_GIL_DISABLED
#define LOCKFREE_ENTER(h) gate_enter(h)
#define LOCKFREE_LEAVE(h) gate_leave(h)
#else
#define LOCKFREE_ENTER(h) 0 /* the caller checked handle_check_open */
#define LOCKFREE_LEAVE(h) ((void)0)
#endif

/* Everything a SharedMemory(...) or SharedDict(...) call was given. */
typedef struct open_args {
    const char *name;
    const char *format;
    int create;                    /* OPEN_ATTACH, OPEN_CREATE, OPEN_EITHER */
    int read_only, max_processes, mode, populate;
    Py_ssize_t size, undo_size;
    double timeout;
    uint32_t ndim;                 /* 0: no shape given */
    uint64_t shape[STX_MAX_NDIM];
    Py_buffer data;                /* data.obj == NULL: not given */
} open_args;

/*
 * DictObject -- shmtxn._core.Dict (py_dict.c), the base of SharedDict: a
 * handle on a dict segment.  `hash_key` is the segment's SipHash key,
 * copied from its (checksummed, immutable) header at open.
 */
typedef struct DictObject {
    HandleObject h;
    uint64_t hash_key[2];
} DictObject;

struct TxnBase;

/* What a txn type adds to the shared life cycle (txn.c). */
typedef struct txn_kind {
    const char *what;   /* "segment" or "SharedDict", for messages */
    /* Before the engine txn ends: settle what the type holds (views,
     * freed blocks).  -1 with an exception if the txn was rolled back
     * instead. */
    int (*finish)(struct TxnBase *self, int commit);
    /* The object is being freed (its txn may still be open): drop what
     * the type holds, keeping any pending exception. */
    void (*release)(struct TxnBase *self);
} txn_kind;

/*
 * TxnBase -- the start of every txn object (txn.c): what `with x.txn() as
 * t` binds whatever the segment holds -- the engine txn, its handle, and
 * how it was asked for.  Enter, exit, commit, abort, repr and freeing are
 * the base's (TXN_BASE_METHODS and friends below).
 */
typedef struct TxnBase {
    PyObject_HEAD
    HandleObject *handle;
    const txn_kind *kind;
    stx_txn txn;
    int write;
    /* stx_thread_id() of the thread that entered it, 0 before: the txn
     * belongs to that thread, and only it touches `txn` (docs/threads.md) */
    _Atomic uint64_t owner;
    double timeout;         /* seconds, < 0: wait forever */
    stx_logged logged[STX_LOGGED_CACHE];
} TxnBase;

/*
 * TxnObject -- shmtxn._core.Txn (py_txn.c): a txn on a slots segment.
 */
typedef struct TxnObject {
    TxnBase base;
    PyObject *buf;          /* the memoryview t.buf handed out */
    PyObject *views;        /* list of the Views it made, or NULL */
} TxnObject;

/*
 * DictTxnObject -- shmtxn._core.DictTxn (py_dict_txn.c): the mapping that
 * `with d.txn() as t` binds.  `dt` holds the blocks the txn freed until it
 * commits (see stx_dict_txn).
 */
typedef struct DictTxnObject {
    TxnBase base;
    stx_dict_txn dt;
} DictTxnObject;

/*
 * ViewObject -- shmtxn._core.View (py_view.c): one typed zero-copy export
 * of part of a segment; see py_view.c for its lifetime rules.  `valid`
 * and `exports` change under the lock of its handle `mem`.
 */
typedef struct ViewObject {
    PyObject_HEAD
    HandleObject *mem;
    char *ptr;
    Py_ssize_t len;
    int readonly;
    int valid;              /* 0 once its txn ended: no new exports */
    char format[2];
    int itemsize;
    int ndim;
    Py_ssize_t shape[STX_MAX_NDIM];
    Py_ssize_t strides[STX_MAX_NDIM];
    Py_ssize_t exports;
} ViewObject;

/* ---- module functions (py_codec.c; module.c adds them) ---- */

extern PyMethodDef codec_functions[];

/* ---- type specs (module.c makes the types from them) ---- */

extern PyType_Spec Segment_spec;     /* py_segment.c */
extern PyType_Spec View_spec;        /* py_view.c */
extern PyType_Spec ThreadGuard_spec; /* txn.c */
extern PyType_Spec Txn_spec;         /* py_txn.c */
extern PyType_Spec DictTxn_spec;     /* py_dict_txn.c */
extern PyType_Spec Memory_spec;      /* py_memory.c */
extern PyType_Spec Dict_spec;        /* py_dict.c */

/* ---- views (py_view.c) ---- */

/* A new C-ordered View of `shape` items at `ptr`. */
PyObject *view_new(HandleObject *mem, char *ptr, char format, int itemsize,
                   int ndim, const Py_ssize_t *shape, int readonly);
/* The buffer protocol of a View (also behind np.asarray(t)). */
int view_getbuffer(ViewObject *v, Py_buffer *view, int flags);
/* Invalidate `v` unless exported; 1 if still exported. */
int view_end(ViewObject *v);
/* numpy.asarray(obj), with a clear ImportError sans numpy. */
PyObject *view_to_ndarray(binding_state *st, PyObject *obj);

/* ---- handles (py_segment.c) ---- */

/* tp_new of Memory and Dict: a closed handle that knows its state. */
PyObject *handle_new(PyTypeObject *type, PyObject *args, PyObject *kwds);
/* Keep a View that is still referenced after its txn ended, so close()
 * refuses while it is; -1 on error. */
int handle_escape_view(HandleObject *h, PyObject *view);
/* Raise for engine code `code` on `h`'s segment; returns -1. */
int handle_error(HandleObject *h, int code);
/* Seconds from a timeout argument: None means `fallback`; otherwise a
 * real number, finite and >= 0 (TypeError/ValueError if not). */
int handle_parse_timeout(PyObject *arg, double fallback, double *out);
/* Check a.size and normalise a.name ("/x" is "x"); -1 if either is bad. */
int handle_check_args(open_args *a);
/* create=: False (attach), True (create) or None (either: create=None). */
enum { OPEN_ATTACH = 0, OPEN_CREATE = 1, OPEN_EITHER = -1 };
/* Parse create= (NULL: not given) into a->create; -1 with TypeError. */
int handle_parse_create(PyObject *arg, open_args *a);
/* After create=None attached instead of creating: max_processes= and
 * undo_size=, when given, must be what the segment has.  -1 with
 * IncompatibleSegmentError naming both. */
int handle_check_either(HandleObject *h, const open_args *a);
/* Create a segment as `opts` says (under a.name, or a fresh random one)
 * or attach to a.name, which must hold `opts->layout_kind`; then adopt
 * its name and identity.  -1 with an exception. */
int handle_open(HandleObject *h, open_args *a, const stx_create_opts *opts);
/* The end of __init__ after handle_open succeeded: `h` is OPEN if `ok`,
 * else closed (its segment too); returns 0 if `ok`, else -1. */
int handle_publish(HandleObject *h, int ok);
/* Close `h` (Segment.close()); -1 with an exception. */
int handle_close(HandleObject *h);

/* ---- waiting for a change (waiting.c) ---- */

/* Sleep until the version of `h`'s segment differs from `since` (the
 * version now if `since` is NULL), at most `timeout` seconds (< 0:
 * forever), the GIL released and `h` pinned; *version is the new version,
 * or `since` if the timeout expired.  -1 with an exception
 * (KeyboardInterrupt, SegmentClosedError, a txn open in this thread). */
int wait_for_change(HandleObject *h, const uint64_t *since, double timeout,
                    uint64_t *version);
/* close() of `h` from a signal handler inside this thread's own wait()
 * on it: end that wait (its pin and its count in the segment) for it;
 * the wait then raises SegmentClosedError.  How many it ended. */
int wait_end_own(HandleObject *h);
/* This thread's waits on `h` in progress (0 outside signal handlers). */
int wait_count_own(const HandleObject *h);

/* ---- the txn driver and base (txn.c) ---- */

/* Step an initialised `txn` until it is open, the GIL released around
 * each slice; -1 (txn cancelled) on timeout, Ctrl-C or error. */
/* Longest sleep with the GIL released before a wait loop (txn_wait,
 * wait_for_change) checks Ctrl-C, its deadline and its handle again. */
#define WAIT_SLICE_NS 20000000ull

/* CLOCK_MONOTONIC in seconds: the wait loops' deadlines. */
static inline double
monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* `h`, if not NULL, is the handle of `txn`: the wait gives up with
 * SegmentClosedError once it is closing. */
int txn_wait(binding_state *st, HandleObject *h, const char *name,
             stx_txn *txn, double timeout);
/* Open `txn` on `h`, releasing the GIL around each wait; -1 with an
 * exception (LockTimeout, KeyboardInterrupt, ...).  A tracked txn (a
 * txn object's) is registered while `h` is open, which keeps close()
 * away; the caller of an untracked one holds a pin (own_open). */
int txn_open(HandleObject *h, stx_txn *txn, int write, double timeout);
/* End `txn`; -1 with an exception if ending failed. */
int txn_close(HandleObject *h, stx_txn *txn, int commit);
/* A txn of one call's own (untracked, waiting as long as it takes):
 * open `txn` with `h` pinned (gate.c) -- from the start if the call runs
 * Python code while it is open (`runs_python`) or on a free-threaded
 * build, else (under the GIL) only once its wait releases the GIL.  -1
 * with an exception (nothing held).  After 0 the caller ends it with
 * own_close or own_abort, on every path. */
int own_open(HandleObject *h, stx_txn *txn, int write, int runs_python);
/* End an own txn if it is still open (commit or roll back) and unpin:
 * -1 with an exception if ending failed. */
int own_close(HandleObject *h, stx_txn *txn, int commit);
/* An error is being raised: roll an own txn back if still open, unpin,
 * keep the exception; returns -1. */
int own_abort(HandleObject *h, stx_txn *txn);
/* Raise for a failed write inside a txn, rolling it back unless the error
 * changed nothing (a bad index, a read txn).  Always returns -1. */
int txn_write_failed(HandleObject *h, stx_txn *txn, int code);
/* -1 with ReadOnlyError if `txn` (open on `h`) is a read txn. */
int txn_check_write(HandleObject *h, const stx_txn *txn);
/* txn(write=None, timeout=None, *, until=None) of Memory and Dict: the
 * one parser (*until is NULL unless a predicate was given).
 * Rejects an argument given twice, a `write` that is not a bool or None,
 * a bad timeout, and write=True on a read-only handle. */
int txn_parse_args(HandleObject *h, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames, int *write, double *timeout,
                   PyObject **until);
/* txn(until=pred, ...): the context manager of shmtxn._wait that opens a
 * txn once `pred` holds in it (`timeout` < 0: wait forever). */
PyObject *txn_until(HandleObject *h, PyObject *until, int write,
                    double timeout);
/* Set up a new txn object of `kind` on `h` (not yet entered). */
void txn_base_init(TxnBase *t, HandleObject *h, int write, double timeout,
                   const txn_kind *kind);
/* -1 with TransactionClosedError (or the fork/thread error) if `t`
 * cannot be used now. */
int txn_check_usable(TxnBase *t);
/* A txn object's dealloc, up to freeing its memory: end or hand over its
 * engine txn (see txn_drop in txn.c) and drop its handle. */
void txn_base_clear(TxnBase *t);
/* Visit what the base holds (the type and the handle). */
int txn_base_traverse(TxnBase *t, visitproc visit, void *arg);
/* __enter__: open the txn (once), waiting as long as `timeout` says. */
PyObject *TxnBase_enter(TxnBase *t, PyObject *unused);
/* __exit__: commit, or roll back on an exception; never swallows it. */
PyObject *TxnBase_exit(TxnBase *t, PyObject *const *args, Py_ssize_t nargs);
/* commit(): end the txn, keeping its changes. */
PyObject *TxnBase_commit(TxnBase *t, PyObject *unused);
/* abort(): end the txn, rolling its changes back. */
PyObject *TxnBase_abort(TxnBase *t, PyObject *unused);
/* t.write */
PyObject *TxnBase_get_write(TxnBase *t, void *closure);
/* t.active */
PyObject *TxnBase_get_active(TxnBase *t, void *closure);
/* repr(t): kind, segment and state. */
PyObject *TxnBase_repr(TxnBase *t);

/* The base's entries of a txn type's method and getset tables. */
#define TXN_BASE_METHODS \
    {"__enter__", (PyCFunction)TxnBase_enter, METH_NOARGS, NULL}, \
    {"__exit__", (PyCFunction)(void (*)(void))TxnBase_exit, METH_FASTCALL, \
     NULL}, \
    {"commit", (PyCFunction)TxnBase_commit, METH_NOARGS, \
     "Commit now; the transaction cannot be used afterwards."}, \
    {"abort", (PyCFunction)TxnBase_abort, METH_NOARGS, \
     "Roll back every change of this transaction and end it."}
#define TXN_BASE_GETSET \
    {"write", (getter)TxnBase_get_write, NULL, "True for a write txn", \
     NULL}, \
    {"active", (getter)TxnBase_get_active, NULL, \
     "True while the transaction is open and usable here", NULL}

/* ---- slot operations (slots.c) ---- */

/* Normalise index `key` (int) into [0, nitems); -1 on error. */
int slots_index(HandleObject *h, PyObject *key, Py_ssize_t *index);
/* h[key] for an int or a slice: inside `txn`, or (txn NULL) lock-free or
 * in a read txn of its own. */
PyObject *slots_get(HandleObject *h, PyObject *key, stx_txn *txn);
/* h[key] = value for an int or a slice: inside `txn`, or (txn NULL) in a
 * write txn of its own.  value NULL (del) is a TypeError. */
int slots_set(HandleObject *h, PyObject *key, PyObject *value,
              stx_txn *txn);
/* Every item, as a list (inside `txn` or, NULL, consistently). */
PyObject *slots_values(HandleObject *h, stx_txn *txn);
/* Every (index, item) pair, as a list, inside `txn`. */
PyObject *slots_items(HandleObject *h, stx_txn *txn);
/* A new View of `count` rows from row `start` of the first dimension
 * (as bytes when `as_bytes`) inside `txn`; in a write txn the range is
 * logged first, so writes through the view roll back like any other. */
PyObject *slots_view(HandleObject *h, stx_txn *txn, Py_ssize_t start,
                     Py_ssize_t count, int as_bytes);

/* ---- dict operations (dict_ops.c) ---- */

/* The value of `key` (Py_True when !want_value) inside `txn` or, txn
 * NULL, lock-free or in a read txn of its own.  NULL with *missing set
 * (no exception) if absent, NULL with an exception on error. */
PyObject *dict_get(DictObject *d, PyObject *key, stx_txn *txn,
                   int want_value, int *missing);
/* d[key] = value, or del d[key] (value NULL; KeyError if absent), inside
 * `dt` or, dt NULL, auto-committed. */
int dict_set(DictObject *d, PyObject *key, PyObject *value,
             stx_dict_txn *dt);
/* Delete every key, inside `dt` or (NULL) auto-committed. */
int dict_clear(DictObject *d, stx_dict_txn *dt);
/* The number of keys, inside `txn` or (NULL) lock-free; -1 on error. */
Py_ssize_t dict_len(DictObject *d, stx_txn *txn);
/* A list of the keys (what=0), values (1) or (key, value) pairs (2), in
 * insertion order, inside `txn` or (NULL) in a read txn of its own. */
PyObject *dict_snapshot(DictObject *d, int what, stx_txn *txn);
/* The values of `keys` (an iterable), `dflt` for the absent ones, as one
 * list read in one snapshot: inside `txn` or (NULL) in a read txn of its
 * own.  Every key is encoded before the txn begins. */
PyObject *dict_get_many(DictObject *d, PyObject *keys, PyObject *dflt,
                        stx_txn *txn);
/* get_many(keys, default=None)'s arguments, parsed, then dict_get_many. */
PyObject *dict_get_many_call(DictObject *d, PyObject *args, PyObject *kwds,
                             stx_txn *txn);
/* Before `dt`'s txn ends: put freed blocks on the free lists (commit) or
 * forget them.  -1 with an exception if that failed (txn rolled back). */
int dict_txn_finish(DictObject *d, stx_dict_txn *dt, int commit);

/* ---- constructors across the types ---- */

/* py_txn.c: a new Txn for shr.txn(). */
PyObject *txn_new(HandleObject *h, int write, double timeout);
/* py_dict_txn.c: a new txn object for d.txn(). */
PyObject *dict_txn_new(DictObject *d, int write, double timeout);

#endif /* STX_BINDING_H */
