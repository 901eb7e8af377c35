/*
 * shmtxn.h -- the public C API of shmtxn: transactional shared memory
 * shared with Python processes (and with C, C++, Rust or Go ones).
 *
 * This is the only header other languages see.  Its shape follows LMDB's:
 * opaque handles, every call that can fail returns an int -- 0 on
 * success, a positive errno value for the plain system conditions (ENOENT,
 * EEXIST, EACCES, ENOMEM, EINVAL, ERANGE, ENOBUFS, EIO), or a negative
 * SHMTXN_* code from -30900 to -30999 for shmtxn's own ones -- and
 * shmtxn_strerror() names any of them.  After a failure, shmtxn_detail()
 * holds a sentence with the numbers (which segment, which offset...).
 *
 * A segment holds either typed slots (SharedMemory in Python: fixed-size
 * items of one struct-module format, int64 by default) or a dict
 * (SharedDict: canonical keys, tagged values).  Reads and writes happen
 * inside transactions: write txns are exclusive, read txns shared, and
 * nobody ever sees half of a write txn.  Single reads can also go without
 * a txn (lock-free, under the segment's seqlock).
 *
 * Process-global state (documented in docs/c-api.md as well):
 *   - One file descriptor per segment per process: every handle on a
 *     segment shares it, and the process's liveness beacon (an fcntl lock)
 *     lives on it.  Do not open /dev/shm/<name> yourself and close it:
 *     closing any fd of the file drops the process's fcntl locks.  For the
 *     same reason, do not load this library and the Python extension
 *     shmtxn._core (which has its own copy of the engine) into one process
 *     to use the same segment through both.
 *   - A fork handler (pthread_atfork), registered by the first create or
 *     attach: a child inherits the handles and may use them; a txn open
 *     across fork() is unusable in the child (SHMTXN_FORKED; abort it).
 *   - shmtxn_detail() is per thread.
 *   - A txn belongs to the thread that began it: only that thread may use,
 *     commit or abort it (EINVAL otherwise), and one thread has
 *     at most one txn open per segment (SHMTXN_NESTED, never a deadlock).
 *     A thread that exits with txns open has them rolled back.  Handles
 *     may be shared between threads; open and close them from one.
 *
 * Link: build the engine sources (every .c under src/shmtxn/_core/engine/,
 * C11 + POSIX) with your program, include this header, and link -lpthread -lrt;
 * docs/c-api.md has the commands.
 */
#ifndef SHMTXN_H
#define SHMTXN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Set to e.g. __attribute__((visibility("default"))) when building a
 * shared library with hidden visibility. */
#ifndef SHMTXN_API
#define SHMTXN_API
#endif

/* ---- version ---------------------------------------------------- */

#define SHMTXN_VERSION_MAJOR 0
#define SHMTXN_VERSION_MINOR 1
#define SHMTXN_VERSION_PATCH 0
#define SHMTXN_VERSION_STRING "0.1.0"
/* The segment format version this library reads and writes. */
#define SHMTXN_FORMAT_VERSION 5

/* The library's version string; the numbers too, where not NULL. */
SHMTXN_API const char *shmtxn_version(int *major, int *minor, int *patch);

/* ---- errors ----------------------------------------------------- */

#define SHMTXN_SUCCESS 0
/* shmtxn's own conditions: -30900 .. -30999. */
#define SHMTXN_ERRCODE_FIRST (-30900)
#define SHMTXN_NOTFOUND (-30900)  /* dict: no such key; iteration: the end */
#define SHMTXN_TIMEOUT (-30901)   /* a wait ran out of time (LockTimeout) */
#define SHMTXN_FULL (-30902)      /* /dev/shm, the dict heap or the reader
                                     slots are full (SegmentFullError) */
#define SHMTXN_CORRUPT (-30903)   /* the segment holds impossible values,
                                     or is marked unusable */
#define SHMTXN_INCOMPAT (-30904)  /* another format version, ABI or layout
                                     (IncompatibleSegmentError) */
#define SHMTXN_TOOLARGE (-30905)  /* the txn outgrew its undo log and was
                                     rolled back (TransactionTooLarge) */
#define SHMTXN_NESTED (-30906)    /* this thread already has a txn open on
                                     the segment */
#define SHMTXN_CLOSED (-30907)    /* the txn has ended */
#define SHMTXN_FORKED (-30908)    /* the txn was begun before fork() by the
                                     parent process */
#define SHMTXN_READONLY (-30909)  /* a write through a read-only handle or
                                     in a read txn (ReadOnlyError) */
#define SHMTXN_BAD_TXN (-30910)   /* an earlier write failed and rolled the
                                     txn back: only abort it */
#define SHMTXN_BUSY (-30911)      /* close: txns are still open on it */
#define SHMTXN_ERRCODE_LAST (-30911)

/* A sentence naming `code` (any return value of this API, errno too). */
SHMTXN_API const char *shmtxn_strerror(int code);
/* What the calling thread's last failed call found, with the numbers.
 * Per thread; meaningful right after a call that returned nonzero. */
SHMTXN_API const char *shmtxn_detail(void);

/* ---- segments --------------------------------------------------- */

/* An open handle on a segment. */
typedef struct shmtxn_seg shmtxn_seg;
/* A transaction on one segment, owned by the thread that began it. */
typedef struct shmtxn_txn shmtxn_txn;

/* What a segment's data region holds. */
#define SHMTXN_LAYOUT_ANY 0   /* attach: accept either */
#define SHMTXN_LAYOUT_SLOTS 1 /* typed items (Python: SharedMemory) */
#define SHMTXN_LAYOUT_DICT 2  /* hash table + heap (Python: SharedDict) */

/*
 * Options for shmtxn_create().  Set struct_size to sizeof(the struct) and
 * zero what you do not use: zero means "the default" everywhere, and
 * fields added in later versions go at the end.
 */
typedef struct shmtxn_create_opts {
    size_t struct_size;       /* sizeof(shmtxn_create_opts) */
    int layout;               /* SHMTXN_LAYOUT_SLOTS (default) or _DICT */
    uint64_t size;            /* data bytes.  Slots: a positive multiple of
                                 the item size (or 0 with `shape`); dict:
                                 0 means as large as the segment file
                                 system (64 MiB to 1 TiB), reserved
                                 as the heap grows */
    const char *format;       /* slots: one struct code of bBhHiIlLqQnNefd?
                                 (NULL: "q", int64) */
    uint32_t ndim;            /* slots: dimensions of `shape` (0: flat) */
    const uint64_t *shape;    /* slots: ndim extents (numpy's view) */
    uint64_t undo_size;       /* cap on a txn's undo log, in old bytes
                                 (0: none for slots: any txn fits; the
                                 log's pages are reserved as txns need
                                 them and given back after) */
    uint32_t max_processes;   /* reader slots (0: the default) */
    unsigned mode;            /* file mode, including 0600 (0: 0600) */
    int populate;             /* prefault header, slots and data */
} shmtxn_create_opts;

/* Options for shmtxn_attach(); NULL means all defaults. */
typedef struct shmtxn_attach_opts {
    size_t struct_size;       /* sizeof(shmtxn_attach_opts) */
    int layout;               /* SHMTXN_LAYOUT_*: SHMTXN_INCOMPAT if the
                                 segment holds another (0: any) */
    int read_only;            /* writes fail with SHMTXN_READONLY, and the
                                 data is mapped PROT_READ */
    int populate;             /* prefault the mapping */
    int64_t timeout_ms;       /* longest wait for a creator still
                                 initialising it (0: 5000;
                                 < 0: do not wait) */
} shmtxn_attach_opts;

/* Create segment `name` (1 to 248 bytes, no '/'; a leading '/' is
 * dropped) and open a handle on it: *seg.  EEXIST if the name exists. */
SHMTXN_API int shmtxn_create(const char *name,
                             const shmtxn_create_opts *opts,
                             shmtxn_seg **seg);
/* Open a handle on the existing segment `name`: *seg.  ENOENT if there
 * is none, SHMTXN_INCOMPAT for another layout, format or ABI. */
SHMTXN_API int shmtxn_attach(const char *name,
                             const shmtxn_attach_opts *opts,
                             shmtxn_seg **seg);
/* Close and free a handle (NULL is fine).  SHMTXN_BUSY, and nothing
 * done, while txns of this process are open on it. */
SHMTXN_API int shmtxn_close(shmtxn_seg *seg);
/* Remove the name `name` (open handles keep working; the memory goes
 * with the last one).  ENOENT if there is no such name. */
SHMTXN_API int shmtxn_unlink(const char *name);
/* Remove the name of the segment `seg` is a handle on -- only if the
 * name still names that segment (ENOENT otherwise). */
SHMTXN_API int shmtxn_seg_unlink(const shmtxn_seg *seg);
/* The segment's name (without '/'); valid until shmtxn_close. */
SHMTXN_API const char *shmtxn_name(const shmtxn_seg *seg);

/* What shmtxn_info() reports. */
typedef struct shmtxn_info {
    size_t struct_size;       /* set by the caller: sizeof(shmtxn_info) */
    int layout;               /* SHMTXN_LAYOUT_SLOTS or _DICT */
    int read_only;            /* this handle */
    uint64_t size;            /* data bytes */
    char format[16];          /* slots: the struct code, NUL terminated */
    uint32_t itemsize;        /* slots: bytes per item */
    uint64_t nitems;          /* slots: size / itemsize */
    uint32_t ndim;            /* slots: the shape */
    uint64_t shape[8];
    uint64_t undo_size;       /* undo log bytes */
    uint32_t max_processes;   /* reader slots */
    uint64_t commits;         /* write txns committed so far */
} shmtxn_info;

/* Fill `info` (up to info->struct_size bytes) about the handle. */
SHMTXN_API int shmtxn_info_get(const shmtxn_seg *seg, shmtxn_info *info);

/* ---- transactions ----------------------------------------------- */

#define SHMTXN_READ 0
#define SHMTXN_WRITE 1
/* timeout_ms for waiting as long as it takes. */
#define SHMTXN_FOREVER (-1)

/* Begin a read (flags = SHMTXN_READ) or write (SHMTXN_WRITE) txn on
 * `seg`, waiting up to `timeout_ms` (SHMTXN_FOREVER: no limit) for the
 * writer or readers in the way: *txn, or SHMTXN_TIMEOUT.  A writer that
 * died inside its txn is rolled back on the way. */
SHMTXN_API int shmtxn_txn_begin(shmtxn_seg *seg, int flags,
                                int64_t timeout_ms, shmtxn_txn **txn);
/* Commit and free the txn (a read txn just ends).  On SHMTXN_BAD_TXN
 * (an earlier write failed) nothing was kept; the txn is freed anyway.
 * EINVAL, and nothing done, from a thread other than its own. */
SHMTXN_API int shmtxn_txn_commit(shmtxn_txn *txn);
/* Roll back and free the txn (NULL is fine).  EINVAL, and nothing done,
 * for a write txn of another thread. */
SHMTXN_API int shmtxn_txn_abort(shmtxn_txn *txn);

/* ---- slots: bytes and items ------------------------------------- */

/* Copy `len` bytes at data `offset` into `dst`, inside `txn`.  ERANGE if
 * the range leaves the data region. */
SHMTXN_API int shmtxn_read(shmtxn_txn *txn, uint64_t offset, void *dst,
                           size_t len);
/* Write `len` bytes from `src` at data `offset`, inside a write txn. */
SHMTXN_API int shmtxn_write(shmtxn_txn *txn, uint64_t offset,
                            const void *src, size_t len);
/* Item `index` of a slots segment, as its itemsize raw bytes. */
SHMTXN_API int shmtxn_get(shmtxn_txn *txn, uint64_t index, void *dst);
/* Store itemsize raw bytes as item `index`. */
SHMTXN_API int shmtxn_put(shmtxn_txn *txn, uint64_t index,
                          const void *src);
/* Item `index` of an integer or '?' format as an int64 (ERANGE for a
 * 'Q'/'N' value above INT64_MAX; SHMTXN_INCOMPAT for float formats). */
SHMTXN_API int shmtxn_get_int(shmtxn_txn *txn, uint64_t index,
                              int64_t *value);
/* Store `value` as item `index` of an integer or '?' format (ERANGE if
 * the format cannot hold it). */
SHMTXN_API int shmtxn_put_int(shmtxn_txn *txn, uint64_t index,
                              int64_t value);
/* Item `index` of format 'f' or 'd' as a double. */
SHMTXN_API int shmtxn_get_double(shmtxn_txn *txn, uint64_t index,
                                 double *value);
/* Store `value` as item `index` of format 'f' or 'd' (ERANGE if a
 * finite value overflows a float). */
SHMTXN_API int shmtxn_put_double(shmtxn_txn *txn, uint64_t index,
                                 double value);

/* Lock-free single reads: committed bytes, without a txn.  They retry
 * while a writer is mid-txn and then wait for it in a read txn (with no
 * time limit), so they never see uncommitted data. */
SHMTXN_API int shmtxn_load(shmtxn_seg *seg, uint64_t offset, void *dst,
                           size_t len);
/* Item `index` as raw bytes, lock-free. */
SHMTXN_API int shmtxn_load_item(shmtxn_seg *seg, uint64_t index,
                                void *dst);
/* Item `index` as an int64, lock-free (as shmtxn_get_int). */
SHMTXN_API int shmtxn_load_int(shmtxn_seg *seg, uint64_t index,
                               int64_t *value);
/* Item `index` as a double, lock-free (as shmtxn_get_double). */
SHMTXN_API int shmtxn_load_double(shmtxn_seg *seg, uint64_t index,
                                  double *value);

/* ---- dict keys --------------------------------------------------- */

/*
 * A dict key is one value -- str, bytes, int, float, bool, None, or a
 * tuple of them -- in a canonical encoding every process hashes the same
 * way (docs/c-api.md).  Equal keys are one key, as in a Python dict:
 * 1, 1.0 and true are one key; every NaN is one key.
 *
 * Build one with a shmtxn_key: append one value (or open a tuple, append
 * its elements, close it).  After a failed call the key is poisoned and
 * every later use returns the same error; shmtxn_key_reset empties it.
 */
typedef struct shmtxn_key shmtxn_key;

/* A new, empty key (NULL if out of memory). */
SHMTXN_API shmtxn_key *shmtxn_key_new(void);
/* Free a key (NULL is fine). */
SHMTXN_API void shmtxn_key_free(shmtxn_key *key);
/* Empty the key for reuse. */
SHMTXN_API void shmtxn_key_reset(shmtxn_key *key);
/* Append a str: `len` bytes of UTF-8 (EINVAL if not UTF-8). */
SHMTXN_API int shmtxn_key_str(shmtxn_key *key, const char *utf8,
                              size_t len);
/* Append bytes. */
SHMTXN_API int shmtxn_key_bytes(shmtxn_key *key, const void *p, size_t len);
/* Append an int. */
SHMTXN_API int shmtxn_key_int(shmtxn_key *key, int64_t v);
/* Append an int of any size: `len` bytes of two's complement,
 * little-endian. */
SHMTXN_API int shmtxn_key_bigint(shmtxn_key *key, const void *le,
                                 size_t len);
/* Append a float (an integral one is the int it equals). */
SHMTXN_API int shmtxn_key_double(shmtxn_key *key, double v);
/* Append a bool (equal to the int 0 or 1). */
SHMTXN_API int shmtxn_key_bool(shmtxn_key *key, int v);
/* Append None. */
SHMTXN_API int shmtxn_key_none(shmtxn_key *key);
/* Open a tuple (up to 32 deep); its elements follow. */
SHMTXN_API int shmtxn_key_tuple_begin(shmtxn_key *key);
/* Close the innermost open tuple. */
SHMTXN_API int shmtxn_key_tuple_end(shmtxn_key *key);
/* The finished key's canonical bytes (*len of them) and key kind (see
 * shmtxn_key_decode), or NULL with EINVAL in *error if the key is not
 * one complete value.  Valid until the key changes.  `kind` and `error`
 * may be NULL. */
SHMTXN_API const void *shmtxn_key_data(const shmtxn_key *key, size_t *len,
                                       int *kind, int *error);

/* Types of decoded key values. */
#define SHMTXN_KEY_STR 's'      /* data/len: UTF-8 */
#define SHMTXN_KEY_BYTES 'b'    /* data/len */
#define SHMTXN_KEY_INT 'i'      /* i */
#define SHMTXN_KEY_BIGINT 'I'   /* data/len: two's complement LE, beyond
                                   int64 */
#define SHMTXN_KEY_FLOAT 'f'    /* d */
#define SHMTXN_KEY_BOOL '?'     /* i: 0 or 1 */
#define SHMTXN_KEY_NONE 'n'
#define SHMTXN_KEY_TUPLE 't'    /* walk it with shmtxn_key_tuple_next */

/* One decoded key value.  data points into the encoding it came from. */
typedef struct shmtxn_key_value {
    int type;                 /* SHMTXN_KEY_* */
    const void *data;
    size_t len;
    int64_t i;
    double d;
} shmtxn_key_value;

/* Decode a key's canonical bytes; `kind` is the entry's key_kind (it
 * turns a top-level int back into the bool or float it was stored as).
 * SHMTXN_CORRUPT if the bytes are impossible. */
SHMTXN_API int shmtxn_key_decode(const void *data, size_t len, int kind,
                                 shmtxn_key_value *out);
/* The element at *pos of a tuple value (*pos = 0 to start; it moves
 * on): 0, SHMTXN_NOTFOUND after the last, or SHMTXN_CORRUPT. */
SHMTXN_API int shmtxn_key_tuple_next(const shmtxn_key_value *tuple,
                                     size_t *pos, shmtxn_key_value *elem);

/* ---- dict values and operations ---------------------------------- */

/* Value tags.  Python stores its exact types without pickle; anything
 * else is a pickle, opaque to C (store one only if you made it). */
#define SHMTXN_VAL_BYTES 'b'    /* any bytes */
#define SHMTXN_VAL_STR 's'      /* UTF-8 */
#define SHMTXN_VAL_INT 'i'      /* 8 bytes: int64, native order */
#define SHMTXN_VAL_FLOAT 'f'    /* 8 bytes: a double */
#define SHMTXN_VAL_TRUE 'T'     /* no bytes */
#define SHMTXN_VAL_FALSE 'F'    /* no bytes */
#define SHMTXN_VAL_NONE 'n'     /* no bytes */
#define SHMTXN_VAL_PICKLE 'p'   /* a Python pickle */

/* A dict entry found inside a txn.  The pointers point into the segment:
 * valid until the txn ends or changes the dict. */
typedef struct shmtxn_entry {
    const void *key;          /* canonical key bytes: shmtxn_key_decode */
    size_t key_len;
    int key_kind;
    int tag;                  /* SHMTXN_VAL_* */
    const void *value;
    size_t value_len;
} shmtxn_entry;

/* Look `key` up inside `txn`: 0 and *entry, or SHMTXN_NOTFOUND. */
SHMTXN_API int shmtxn_dict_get(shmtxn_txn *txn, const shmtxn_key *key,
                               shmtxn_entry *entry);
/* Insert or replace `key` with a value of tag `tag` (SHMTXN_VAL_*):
 * `len` bytes at `value`.  EINVAL for a bad tag or a length the tag does
 * not allow.  A failure other than EINVAL rolls the txn back
 * (SHMTXN_FULL, SHMTXN_TOOLARGE...): then only abort it. */
SHMTXN_API int shmtxn_dict_put(shmtxn_txn *txn, const shmtxn_key *key,
                               int tag, const void *value, size_t len);
/* Delete `key`: 0, or SHMTXN_NOTFOUND if absent. */
SHMTXN_API int shmtxn_dict_del(shmtxn_txn *txn, const shmtxn_key *key);
/* The entry at *pos or after it, in insertion order (*pos = 0 to start;
 * it moves on): 0 and *entry, or SHMTXN_NOTFOUND at the end. */
SHMTXN_API int shmtxn_dict_next(shmtxn_txn *txn, uint64_t *pos,
                                shmtxn_entry *entry);
/* The number of keys. */
SHMTXN_API int shmtxn_dict_count(shmtxn_txn *txn, uint64_t *count);
/* Look `key` up without a txn (lock-free, as shmtxn_load): its tag in
 * *tag and its bytes copied to `buf` (`cap` bytes), their number in
 * *len.  ENOBUFS if `cap` is too small (*len says how many it needs);
 * SHMTXN_NOTFOUND if absent. */
SHMTXN_API int shmtxn_dict_load(shmtxn_seg *seg, const shmtxn_key *key,
                                int *tag, void *buf, size_t cap,
                                size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* SHMTXN_H */
