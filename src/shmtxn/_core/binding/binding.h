/*
 * binding.h -- what the binding files (module.c, errors.c, items.c,
 * py_memory.c, py_txn.c) share.  Only the binding includes Python.h.
 */
#ifndef STX_BINDING_H
#define STX_BINDING_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "engine.h"
#include "dict/dict.h"
#include "dict/key.h"

/* ---- item formats (items.c) ---- */

enum item_kind { KIND_SIGNED, KIND_UNSIGNED, KIND_FLOAT, KIND_HALF,
                 KIND_BOOL };

/* One struct-module code this package stores in slots. */
typedef struct item_format {
    char code;
    uint8_t size;
    uint8_t kind; /* enum item_kind */
} item_format;

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
/* The key stored as `p[:n]` with kind `kind`; NULL on error. */
PyObject *key_decode(const uint8_t *p, uint32_t n, uint8_t kind);
/* Encode `value` (pickling what has no fast path); -1 with the error
 * pickle raised.  Release with value_buf_release. */
int value_encode(PyObject *value, value_buf *vb);
void value_buf_release(value_buf *vb);
/* The value stored with `tag` as `p[:n]`.  For a pickle (*pickled = 1)
 * it returns the raw bytes: call value_unpickle() once they are known
 * to be committed. */
PyObject *value_decode(uint8_t tag, const uint8_t *p, uint64_t n,
                       int *pickled);
/* pickle.loads(raw). */
PyObject *value_unpickle(PyObject *raw);

/* ---- errors (errors.c) ---- */

/* Fetch the exception classes from shmtxn.errors; -1 on failure. */
int errors_init(void);
/* Raise the exception for engine code `code` about segment `name`. */
void raise_engine_error(int code, const char *name);
/* Raise LockTimeout for a wait of `timeout` seconds on `name`. */
void raise_lock_timeout(const char *name, double timeout, int write);
/* Raise shmtxn.<class_name>(message). */
void raise_named(const char *class_name, const char *fmt, ...);
/* Raise shmtxn.<class_name>(message) from the exception being raised
 * (it becomes __cause__). */
void raise_named_from_cause(const char *class_name, const char *fmt, ...);
/* Raise KeyError with `key` as its one argument, exactly as dict does. */
void raise_key_error(PyObject *key);

/* ---- segment state as Python data (info.c) ---- */

/* A dict describing a mapped segment: geometry, lock, processes. */
PyObject *segment_info(stx_segment *seg);

/* ---- the two types ---- */

/*
 * HandleObject -- one open handle on one segment: the state of
 * shmtxn._core.Segment (py_segment.c), the base of Memory (slots) and Dict.
 * `exports` counts live buffers taken from it or from its txns; close()
 * refuses while any is alive, or while a memoryview it handed out (`buf`,
 * `escaped`) is still referenced by anything else.  Open txns are counted
 * by the engine (stx_segment_open_txns).  The slot fields (fmt, nitems, shape) are
 * Memory's; a Dict sees its data region as bytes (format 'B').
 */
typedef struct HandleObject {
    PyObject_HEAD
    stx_segment seg;
    const item_format *fmt;
    Py_ssize_t nitems;
    int ndim;                             /* the segment's shape */
    Py_ssize_t shape[STX_MAX_NDIM];
    Py_ssize_t strides[STX_MAX_NDIM];     /* C order, in bytes */
    char format[2];                       /* fmt->code as a C string */
    int created;            /* this handle created the segment */
    long creator_pid;       /* ...in this process (not a forked child) */
    Py_ssize_t exports;     /* live Py_buffers over the data region */
    int exported_directly;  /* the handle itself exported a buffer once:
                               close() then keeps the mapping until the
                               handle is freed (see handle_close) */
    int soft_closed;        /* closed, mapping kept (exported_directly) */
    PyObject *name;         /* str */
    dev_t dev;              /* identity of the file, kept after close() */
    ino_t ino;              /* so unlink() never removes a newer one */
    PyObject *buf;          /* cached memoryview of `buf_view`, or NULL */
    PyObject *buf_view;     /* the View under `buf` */
    PyObject *escaped;      /* list of Views that outlived their txn while
                               held elsewhere, or NULL */
    PyObject *weakrefs;
} HandleObject;

/* Everything a SharedMemory(...) or SharedDict(...) call was given. */
typedef struct open_args {
    const char *name;
    const char *format;
    int create, read_only, max_processes, mode, populate;
    Py_ssize_t size, undo_size;
    double timeout;
    uint32_t ndim;                 /* 0: no shape given */
    uint64_t shape[STX_MAX_NDIM];
    Py_buffer data;                /* data.obj == NULL: not given */
} open_args;

/*
 * TxnObject -- shmtxn._core.Txn: the object `with shr.txn() as t` binds.
 */
typedef struct TxnObject {
    PyObject_HEAD
    HandleObject *mem;
    stx_txn txn;
    int write;
    int entered;
    double timeout;         /* seconds, < 0: wait forever */
    PyObject *buf;          /* the memoryview t.buf handed out */
    PyObject *views;        /* list of the Views it made, or NULL */
    stx_logged logged[STX_LOGGED_CACHE];
} TxnObject;

/*
 * ViewObject -- shmtxn._core.View (py_view.c): one typed zero-copy export
 * of part of a segment; see py_view.c for its lifetime rules.
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

/*
 * DictObject -- shmtxn._core.Dict (py_dict.c), the base of SharedDict: a
 * handle on a dict segment.  `hash_key` is the segment's SipHash key,
 * copied from its (checksummed, immutable) header at open.
 */
typedef struct DictObject {
    HandleObject h;
    uint64_t hash_key[2];
} DictObject;

/*
 * DictTxnObject -- shmtxn._core.DictTxn (py_dict_txn.c): the mapping that
 * `with d.txn() as t` binds.  `dt` holds the blocks the txn freed until it
 * commits (see stx_dict_txn).
 */
typedef struct DictTxnObject {
    PyObject_HEAD
    DictObject *dict;
    stx_txn txn;
    stx_dict_txn dt;
    int write;
    int entered;
    double timeout;         /* seconds, < 0: wait forever */
    stx_logged logged[STX_LOGGED_CACHE];
} DictTxnObject;

extern PyTypeObject Segment_Type;
extern PyTypeObject Dict_Type;
extern PyTypeObject DictTxn_Type;
extern PyTypeObject Memory_Type;
extern PyTypeObject Txn_Type;
extern PyTypeObject View_Type;
extern PyTypeObject ThreadGuard_Type;

/* py_view.c: a new C-ordered View of `shape` items at `ptr`. */
PyObject *view_new(HandleObject *mem, char *ptr, char format, int itemsize,
                   int ndim, const Py_ssize_t *shape, int readonly);
/* py_view.c: the buffer protocol of a View (also behind np.asarray(t)). */
int view_getbuffer(ViewObject *v, Py_buffer *view, int flags);
/* py_view.c: invalidate `v` unless exported; 1 if still exported. */
int view_end(ViewObject *v);
/* py_view.c: numpy.asarray(obj), with a clear ImportError sans numpy. */
PyObject *view_to_ndarray(PyObject *obj);

/* py_segment.c: keep a View that is still referenced after its txn
 * ended, so close() refuses while it is; -1 on error. */
int handle_escape_view(HandleObject *h, PyObject *view);
/* py_segment.c: -1 with an exception if `h` is closed. */
int handle_check_open(HandleObject *h);
/* py_segment.c: seconds from a timeout argument; None means `fallback`. */
int handle_parse_timeout(PyObject *arg, double fallback, double *out);
/* py_segment.c: check a.size and normalise a.name ("/x" is "x"); -1 if
 * either is bad. */
int handle_check_args(open_args *a);
/* py_segment.c: create a segment as `opts` says (under a.name, or a fresh
 * random one) or attach to a.name, which must hold `opts->layout_kind`;
 * then adopt its name and identity.  -1 with an exception. */
int handle_open(HandleObject *h, open_args *a, const stx_create_opts *opts);
/* py_segment.c: close `h` (Segment.close()); -1 with an exception. */
int handle_close(HandleObject *h);
/* py_memory.c: normalise index `key` (int) into [0, n); -1 on error. */
int memory_index(HandleObject *mem, PyObject *key, Py_ssize_t *index);
/* py_memory.c: read items [start:stop:step] via `read` into a list. */
PyObject *memory_read_slice(HandleObject *mem, PyObject *slice,
                            stx_txn *txn);
/* py_memory.c: write an iterable over the items `slice` names. */
int memory_write_slice(HandleObject *mem, PyObject *slice, PyObject *value,
                       stx_txn *txn);

/* py_txn.c: open `txn` on `mem`, releasing the GIL around each wait;
 * -1 with an exception (LockTimeout, KeyboardInterrupt, ...). */
int txn_open(HandleObject *mem, stx_txn *txn, int write, double timeout);
/* py_txn.c: step an initialised `txn` until it is open, the GIL released
 * around each slice; -1 (txn cancelled) on timeout, Ctrl-C or error. */
int txn_wait(const char *name, stx_txn *txn, double timeout);
/* py_txn.c: end `txn`; -1 with an exception if ending failed. */
int txn_close(HandleObject *mem, stx_txn *txn, int commit);
/* py_txn.c: end the txn of a txn object being freed (any thread): a read
 * txn is released, a write txn rolled back -- or, if another thread opened
 * it, kept until that thread ends and rolls it back. */
void txn_drop(HandleObject *mem, stx_txn *txn);
/* py_txn.c: new Txn object for mem.txn(). */
PyObject *txn_new(HandleObject *mem, int write, double timeout);
/* py_txn.c: raise for a failed write inside a txn, rolling it back if the
 * undo log overflowed.  Always returns -1. */
int txn_write_failed(HandleObject *mem, stx_txn *txn, int code);

/* py_dict.c: encode `key` into `kb` and fill `k` (bytes and hash). */
int dict_key(DictObject *d, PyObject *key, key_buf *kb, stx_key *k);
/* py_dict.c: the value of `k` read inside an open txn; NULL with *missing
 * set (no exception) if absent, NULL with an exception on error. */
PyObject *dict_read(DictObject *d, const stx_key *k, int *missing);
/* py_dict.c: a list of the keys (what=0), values (1) or (key, value)
 * pairs (2), in insertion order, read inside an open txn. */
PyObject *dict_snapshot(DictObject *d, int what);
/* py_dict.c: the number of keys, read inside an open txn; -1 on error. */
Py_ssize_t dict_count(DictObject *d);
/* py_dict.c: raise for a failed engine write in `dt`'s txn, rolling the
 * whole txn back unless the error changed nothing.  Returns -1. */
int dict_write_failed(DictObject *d, stx_dict_txn *dt, int code);
/* py_dict.c: commit (after putting freed blocks on the free lists) or
 * roll back `dt`'s txn; -1 with an exception. */
int dict_txn_close(DictObject *d, stx_dict_txn *dt, int commit);
/* py_dict_txn.c: _core.set_dict_txn_class(cls): the DictTxn subclass
 * d.txn() returns (shmtxn.dict adds the MutableMapping methods). */
PyObject *set_dict_txn_class(PyObject *module, PyObject *cls);
/* py_dict_txn.c: a new txn object for d.txn(). */
PyObject *dict_txn_new(DictObject *d, int write, double timeout);

#endif /* STX_BINDING_H */
