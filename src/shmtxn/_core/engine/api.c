/*
 * api.c -- the public C API (include/shmtxn.h) over the engine.
 *
 * Everything here is a thin layer: it checks arguments, holds the state a
 * C caller cannot see (handles and txns are opaque, heap allocated), loops
 * over stx_txn_step for blocking waits, and turns engine codes into the
 * public ones through one table (api_code).  No Python.
 *
 * Txns are tracked by the engine (stx_txn.tracked): nesting on one thread
 * is an error, close() counts them, and a thread that ends with txns open
 * has them rolled back by a pthread key destructor (stx_thread_exit).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dict/dict.h"
#include "dict/key.h"
#include "internal.h"
#include "seqlock.h"
#include "shmtxn.h"

/* Longest single wait before looking at the deadline again. */
#define WAIT_SLICE_NS 20000000ull
/* How long attach waits for a creator by default (as in Python). */
#define ATTACH_WAIT_MS 5000

_Static_assert(SHMTXN_FORMAT_VERSION == STX_FORMAT_VERSION,
               "shmtxn.h names the segment format this engine writes");
_Static_assert(SHMTXN_LAYOUT_SLOTS == STX_LAYOUT_SLOTS
               && SHMTXN_LAYOUT_DICT == STX_LAYOUT_DICT,
               "public layout numbers are the stored ones");

/* shmtxn_seg -- a handle: the engine's, plus what its header fixed. */
struct shmtxn_seg {
    stx_segment seg;
    int layout;
    const stx_item_format *fmt;  /* slots */
    uint64_t nitems;         /* slots */
    uint64_t hash_key[2];    /* dict: the segment's SipHash key */
    dev_t dev;               /* the file's identity, for seg_unlink */
    ino_t ino;
};

/* shmtxn_txn -- a txn with its logged-range cache and dict state.
 * `failed`: a write failed and rolled the txn back (SHMTXN_BAD_TXN). */
struct shmtxn_txn {
    stx_txn txn;
    stx_dict_txn dt;
    shmtxn_seg *seg;
    int failed;
    stx_logged logged[STX_LOGGED_CACHE];
};

/* shmtxn_key -- a key being built (the engine's builder). */
struct shmtxn_key {
    stx_keybuf kb;
};

/* ------------------------------------------------------------------ */
/* errors                                                              */

/* Engine code -> public code: the one table. */
static const struct {
    int engine, public;
} code_table[] = {
    {STX_OK, SHMTXN_SUCCESS},        {STX_EAGAIN, SHMTXN_TIMEOUT},
    {STX_EEXIST, EEXIST},            {STX_ENOENT, ENOENT},
    {STX_EACCES, EACCES},            {STX_EFULL, SHMTXN_FULL},
    {STX_ECORRUPT, SHMTXN_CORRUPT},  {STX_EINCOMPAT, SHMTXN_INCOMPAT},
    {STX_ETOOLARGE, SHMTXN_TOOLARGE}, {STX_ENESTED, SHMTXN_NESTED},
    {STX_ECLOSED, SHMTXN_CLOSED},    {STX_EFORKED, SHMTXN_FORKED},
    {STX_ESLOTS, SHMTXN_FULL},       {STX_EINVAL, EINVAL},
    {STX_ERANGE, ERANGE},            {STX_EREADONLY, SHMTXN_READONLY},
    {STX_ENOMEM, ENOMEM},            {STX_ESYS, EIO},
    {STX_EHEAPFULL, SHMTXN_FULL},    {STX_ETHREAD, EINVAL},
};

/* The public code for engine code `code`. */
static int
api_code(int code)
{
    for (size_t i = 0; i < sizeof(code_table) / sizeof(code_table[0]); i++) {
        if (code_table[i].engine == code) {
            return code_table[i].public;
        }
    }
    return EIO;
}

/* The public code for engine code `code` about segment `name`, with a
 * detail for the codes the engine reports without one. */
static int
api_fail(int code, const char *name)
{
    switch (code) {
    case STX_EREADONLY:
        stx_fail(code, "segment '%s': writing needs a write txn on a handle"
                 " attached without read_only", name);
        break;
    case STX_EFORKED:
        stx_fail(code, "segment '%s': this txn was begun before fork() by "
                 "the parent process; abort it and begin a new one", name);
        break;
    case STX_ENESTED:
        stx_fail(code, "segment '%s': this thread already has a txn open on"
                 " it; use that txn", name);
        break;
    }
    return api_code(code);
}

/* Set the detail and return the public `code` (not an engine one). */
#define FAIL(code, ...) (stx_fail(STX_EINVAL, __VA_ARGS__), (code))

/* `ms` (>= 0) milliseconds in nanoseconds, saturating: a timeout too
 * long to count in nanoseconds waits as long as it can. */
static uint64_t
ms_to_ns(int64_t ms)
{
    return (uint64_t)ms > UINT64_MAX / 1000000u ? UINT64_MAX
                                                : (uint64_t)ms * 1000000u;
}

const char *
shmtxn_strerror(int code)
{
    switch (code) {
    case SHMTXN_SUCCESS: return "success";
    case SHMTXN_NOTFOUND: return "no such key (or the end of the dict)";
    case SHMTXN_TIMEOUT: return "the wait for the segment's lock timed out";
    case SHMTXN_FULL: return "the segment, its reader slots or /dev/shm "
                             "is full";
    case SHMTXN_CORRUPT: return "the segment is corrupt or unusable";
    case SHMTXN_INCOMPAT: return "the segment has another layout, format, "
                                 "version or ABI";
    case SHMTXN_TOOLARGE: return "the txn outgrew its undo log and was "
                                 "rolled back";
    case SHMTXN_NESTED: return "this thread already has a txn open on the "
                               "segment";
    case SHMTXN_CLOSED: return "the txn has ended";
    case SHMTXN_FORKED: return "the txn was begun by the parent of a fork";
    case SHMTXN_READONLY: return "writing through a read-only handle or a "
                                 "read txn";
    case SHMTXN_BAD_TXN: return "an earlier write failed and rolled the txn"
                                " back: abort it";
    case SHMTXN_BUSY: return "txns are still open on the handle";
    }
    if (code > 0) {
        return strerror(code);
    }
    return "unknown shmtxn error code";
}

const char *
shmtxn_detail(void)
{
    return stx_detail();
}

const char *
shmtxn_version(int *major, int *minor, int *patch)
{
    if (major != NULL) {
        *major = SHMTXN_VERSION_MAJOR;
    }
    if (minor != NULL) {
        *minor = SHMTXN_VERSION_MINOR;
    }
    if (patch != NULL) {
        *patch = SHMTXN_VERSION_PATCH;
    }
    return SHMTXN_VERSION_STRING;
}

/* ------------------------------------------------------------------ */
/* process set-up                                                      */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_result;
static pthread_key_t thread_end_key;

/* At the end of a thread that began txns: roll back what it left open. */
static void
thread_ended(void *unused)
{
    (void)unused;
    stx_thread_exit();
}

/* Once per process: the engine (fork handler) and the thread-end hook. */
static void
init_process(void)
{
    init_result = stx_engine_init();
    if (init_result == 0 && pthread_key_create(&thread_end_key,
                                               thread_ended) != 0) {
        init_result = stx_fail(STX_ESYS, "pthread_key_create failed");
    }
}

/* Make sure init_process ran; its result. */
static int
ensure_init(void)
{
    pthread_once(&init_once, init_process);
    return init_result;
}

/* ------------------------------------------------------------------ */
/* options with struct_size                                            */

/* The largest struct_size believed: options structs grow by a few fields
 * a version, and an unset struct_size must not make us read far past the
 * caller's struct. */
#define OPTS_SIZE_MAX 1024

/*
 * Copy the caller's options (`given`, which says its size in its first
 * field) into `ours` (`size` bytes, zeroed first).  A caller compiled
 * against an older header passes fewer bytes: the rest stay zero, the
 * defaults.  One compiled against a newer header may pass more, as long
 * as the fields this version does not know are zero.
 */
static int
copy_opts(void *ours, size_t size, const void *given, const char *what)
{
    memset(ours, 0, size);
    if (given == NULL) {
        return 0;
    }
    size_t n;
    memcpy(&n, given, sizeof(n));
    if (n < sizeof(size_t) || n > OPTS_SIZE_MAX) {
        return FAIL(EINVAL, "%s.struct_size is %zu: set it to sizeof(%s)",
                    what, n, what);
    }
    for (size_t i = size; i < n; i++) {
        if (((const uint8_t *)given)[i] != 0) {
            return FAIL(EINVAL, "%s has options this version (%s) does not "
                        "know", what, SHMTXN_VERSION_STRING);
        }
    }
    memcpy(ours, given, n < size ? n : size);
    return 0;
}

/* `name` without a leading '/'; NULL (EINVAL) if it is NULL. */
static const char *
plain_name(const char *name)
{
    if (name == NULL) {
        stx_fail(STX_EINVAL, "a segment name is required");
        return NULL;
    }
    return name[0] == '/' ? name + 1 : name;
}

/* ------------------------------------------------------------------ */
/* segments                                                            */

/* Remember what the header fixed; check what C needs to trust it.  The
 * header's immutable fields were validated (and checksummed) on open. */
static int
adopt(shmtxn_seg *s)
{
    stx_header *hdr = s->seg.hdr;
    s->layout = (int)hdr->layout_kind;
    s->dev = s->seg.file->dev;
    s->ino = s->seg.file->ino;
    if (s->layout == STX_LAYOUT_DICT) {
        memcpy(s->hash_key, hdr->hash_key, sizeof(s->hash_key));
        uint64_t count;
        int rc = stx_dict_count(&s->seg, &count);
        return rc == 0 ? 0 : api_fail(rc, s->seg.name);
    }
    s->fmt = stx_item_format_find(hdr->format);
    if (s->fmt == NULL || s->fmt->size != hdr->itemsize) {
        return FAIL(SHMTXN_CORRUPT, "segment '%s' has an unknown item "
                    "format", s->seg.name);
    }
    s->nitems = s->seg.data_size / s->fmt->size;
    return 0;
}

/* Fill the engine's options for a slots segment from `o`; `code` and
 * `shape1` hold what they point to. */
static int
slots_opts(const shmtxn_create_opts *o, stx_create_opts *e, char code[2],
           uint64_t *shape1)
{
    const stx_item_format *fmt = stx_item_format_find(o->format ? o->format : "q");
    if (fmt == NULL) {
        return FAIL(EINVAL, "unknown item format '%.20s': use one struct "
                    "code of bBhHiIlLqQnNefd?", o->format);
    }
    uint64_t size = o->size;
    if (o->ndim > STX_MAX_NDIM || (o->ndim > 0 && o->shape == NULL)) {
        return FAIL(EINVAL, "a shape has 1 to %u extents", STX_MAX_NDIM);
    }
    if (o->ndim > 0) {
        uint64_t items = 1;
        for (uint32_t i = 0; i < o->ndim; i++) {
            if (o->shape[i] == 0 || items > (UINT64_MAX >> 8) / o->shape[i]) {
                return FAIL(EINVAL, "every extent of a shape is positive, "
                            "and their product sane");
            }
            items *= o->shape[i];
        }
        if (size != 0 && size != items * fmt->size) {
            return FAIL(EINVAL, "size %llu disagrees with the shape (%llu "
                        "bytes); give one of them", (unsigned long long)size,
                        (unsigned long long)(items * fmt->size));
        }
        size = items * fmt->size;
    }
    if (size == 0 || size % fmt->size != 0) {
        return FAIL(EINVAL, "size must be a positive multiple of the "
                    "%u-byte item of format '%c' (got %llu)", fmt->size,
                    fmt->code, (unsigned long long)size);
    }
    *shape1 = size / fmt->size;
    e->layout = &stx_slots_layout;
    e->data_size = size;
    code[0] = fmt->code;
    code[1] = '\0';
    e->format = code;
    e->itemsize = fmt->size;
    e->ndim = o->ndim ? o->ndim : 1;
    e->shape = o->ndim ? o->shape : shape1;
    e->populate = o->populate;
    return 0;
}

int
shmtxn_create(const char *name, const shmtxn_create_opts *opts,
              shmtxn_seg **seg)
{
    shmtxn_create_opts o;
    stx_create_opts e = {0};
    uint64_t shape1;
    char code[2];
    if (seg == NULL) {
        return FAIL(EINVAL, "shmtxn_create needs somewhere to put the "
                    "handle");
    }
    *seg = NULL;
    int rc = ensure_init();
    if (rc != 0) {
        return api_code(rc);
    }
    if ((name = plain_name(name)) == NULL) {
        return EINVAL;
    }
    rc = copy_opts(&o, sizeof(o), opts, "shmtxn_create_opts");
    if (rc != 0) {
        return rc;
    }
    unsigned mode = o.mode ? o.mode : 0600;
    if (mode > 0777 || (mode & 0600) != 0600) {
        return FAIL(EINVAL, "mode must be permission bits within 0777 that "
                    "include 0600 (got 0%o)", mode);
    }
    if (o.layout == SHMTXN_LAYOUT_DICT) {
        uint64_t size = o.size ? o.size : stx_dict_default_size();
        shape1 = size;
        e = (stx_create_opts){.layout = &stx_dict_layout,
                              .data_size = size, .format = "B",
                              .itemsize = 1, .ndim = 1, .shape = &shape1};
    }
    else if (o.layout == SHMTXN_LAYOUT_SLOTS || o.layout == 0) {
        rc = slots_opts(&o, &e, code, &shape1);
        if (rc != 0) {
            return rc;
        }
    }
    else {
        return FAIL(EINVAL, "layout %d is neither SHMTXN_LAYOUT_SLOTS nor "
                    "SHMTXN_LAYOUT_DICT", o.layout);
    }
    e.undo_size = o.undo_size;
    e.nslots = o.max_processes;
    e.mode = mode;
    shmtxn_seg *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return FAIL(ENOMEM, "no memory for a handle");
    }
    rc = stx_create(&s->seg, name, &e);
    if (rc != 0) {
        free(s);
        return api_fail(rc, name);
    }
    rc = adopt(s);
    if (rc != 0) {
        stx_close(&s->seg);
        stx_unlink(name, s->dev, s->ino);
        free(s);
        return rc;
    }
    *seg = s;
    return 0;
}

/* The name of layout `kind` for messages. */
static const char *
layout_name(int kind)
{
    return kind == STX_LAYOUT_DICT ? "a dict" : "slots";
}

int
shmtxn_attach(const char *name, const shmtxn_attach_opts *opts,
              shmtxn_seg **seg)
{
    shmtxn_attach_opts o;
    if (seg == NULL) {
        return FAIL(EINVAL, "shmtxn_attach needs somewhere to put the "
                    "handle");
    }
    *seg = NULL;
    int rc = ensure_init();
    if (rc != 0) {
        return api_code(rc);
    }
    if ((name = plain_name(name)) == NULL) {
        return EINVAL;
    }
    rc = copy_opts(&o, sizeof(o), opts, "shmtxn_attach_opts");
    if (rc != 0) {
        return rc;
    }
    if (o.layout != SHMTXN_LAYOUT_ANY && o.layout != SHMTXN_LAYOUT_SLOTS
        && o.layout != SHMTXN_LAYOUT_DICT) {
        return FAIL(EINVAL, "layout %d is not a SHMTXN_LAYOUT_*", o.layout);
    }
    int64_t wait_ms = o.timeout_ms == 0 ? ATTACH_WAIT_MS
                      : o.timeout_ms < 0 ? 0 : o.timeout_ms;
    shmtxn_seg *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return FAIL(ENOMEM, "no memory for a handle");
    }
    rc = stx_attach(&s->seg, name, o.read_only != 0, o.populate != 0,
                    ms_to_ns(wait_ms));
    if (rc == STX_EAGAIN) {
        free(s);
        return FAIL(SHMTXN_TIMEOUT, "segment '%s' was still being created "
                    "after %lld ms", name, (long long)wait_ms);
    }
    if (rc != 0) {
        free(s);
        return api_fail(rc, name);
    }
    rc = adopt(s);
    if (rc == 0 && o.layout != SHMTXN_LAYOUT_ANY && o.layout != s->layout) {
        rc = FAIL(SHMTXN_INCOMPAT, "segment '%s' holds %s, not %s", name,
                  layout_name(s->layout), layout_name(o.layout));
    }
    if (rc != 0) {
        stx_close(&s->seg);
        free(s);
        return rc;
    }
    *seg = s;
    return 0;
}

int
shmtxn_close(shmtxn_seg *seg)
{
    if (seg == NULL) {
        return 0;
    }
    int open = stx_segment_open_txns(&seg->seg);
    if (open > 0) {
        return FAIL(SHMTXN_BUSY, "cannot close segment '%s': %d txn(s) are "
                    "open on it; commit or abort them first", seg->seg.name,
                    open);
    }
    stx_close(&seg->seg);
    free(seg);
    return 0;
}

int
shmtxn_unlink(const char *name)
{
    if ((name = plain_name(name)) == NULL) {
        return EINVAL;
    }
    int rc = stx_unlink(name, 0, 0);
    return rc == 0 ? 0 : api_fail(rc, name);
}

int
shmtxn_seg_unlink(const shmtxn_seg *seg)
{
    if (seg == NULL) {
        return FAIL(EINVAL, "no handle");
    }
    int rc = stx_unlink(seg->seg.name, seg->dev, seg->ino);
    return rc == 0 ? 0 : api_fail(rc, seg->seg.name);
}

const char *
shmtxn_name(const shmtxn_seg *seg)
{
    return seg != NULL ? seg->seg.name : NULL;
}

int
shmtxn_info_get(const shmtxn_seg *seg, shmtxn_info *info)
{
    if (seg == NULL || info == NULL || info->struct_size < sizeof(size_t)) {
        return FAIL(EINVAL, "shmtxn_info_get needs a handle and an info "
                    "whose struct_size is set");
    }
    const stx_header *hdr = seg->seg.hdr;
    shmtxn_info i = {.struct_size = info->struct_size};
    i.layout = seg->layout;
    i.read_only = seg->seg.read_only;
    i.size = seg->seg.data_size;
    memcpy(i.format, hdr->format, sizeof(i.format) - 1);
    i.itemsize = hdr->itemsize;
    i.nitems = seg->layout == STX_LAYOUT_SLOTS ? seg->nitems : 0;
    i.ndim = hdr->ndim <= STX_MAX_NDIM ? hdr->ndim : 0;
    for (uint32_t d = 0; d < i.ndim; d++) {
        i.shape[d] = hdr->shape[d];
    }
    i.undo_size = seg->seg.undo_size;
    i.max_processes = seg->seg.nslots;
    i.commits = atomic_load_explicit(&((stx_header *)hdr)->commits,
                                     memory_order_relaxed);
    size_t n = info->struct_size < sizeof(i) ? info->struct_size : sizeof(i);
    memcpy(info, &i, n);
    return 0;
}

/* ------------------------------------------------------------------ */
/* transactions                                                        */

/* Nanoseconds on CLOCK_MONOTONIC. */

/* Step an initialised txn open, in slices, for at most `timeout_ms`
 * (< 0: no limit).  Engine code; STX_EAGAIN (txn cancelled) on timeout. */
static int
wait_open(stx_txn *txn, int64_t timeout_ms)
{
    int rc = stx_txn_step(txn, 0);
    if (rc != STX_EAGAIN) {
        return rc;
    }
    uint64_t start = stx_now_ns(CLOCK_MONOTONIC);
    uint64_t limit = timeout_ms < 0 ? UINT64_MAX : ms_to_ns(timeout_ms);
    while (rc == STX_EAGAIN) {
        uint64_t spent = stx_now_ns(CLOCK_MONOTONIC) - start;
        if (spent >= limit) {
            stx_txn_cancel(txn);
            return stx_fail(STX_EAGAIN, "segment '%s': no %s txn could "
                            "begin within %lld ms (a writer%s holds it)",
                            txn->seg->name, txn->write ? "write" : "read",
                            (long long)timeout_ms,
                            txn->write ? " or readers" : "");
        }
        uint64_t slice = limit - spent < WAIT_SLICE_NS ? limit - spent
                                                       : WAIT_SLICE_NS;
        rc = stx_txn_step(txn, slice);
    }
    return rc;
}

/* Mark the calling thread so that its end rolls back its txns. */
static void
hook_thread_end(void)
{
    if (pthread_getspecific(thread_end_key) == NULL) {
        pthread_setspecific(thread_end_key, (void *)1);
    }
}

int
shmtxn_txn_begin(shmtxn_seg *seg, int flags, int64_t timeout_ms,
                 shmtxn_txn **txn)
{
    if (txn == NULL || seg == NULL) {
        return FAIL(EINVAL, "shmtxn_txn_begin needs a handle and somewhere "
                    "to put the txn");
    }
    *txn = NULL;
    if (flags != SHMTXN_READ && flags != SHMTXN_WRITE) {
        return FAIL(EINVAL, "flags is SHMTXN_READ or SHMTXN_WRITE");
    }
    shmtxn_txn *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return FAIL(ENOMEM, "no memory for a txn");
    }
    t->seg = seg;
    t->txn.tracked = 1;
    t->txn.logged = t->logged;
    t->dt.txn = &t->txn;
    hook_thread_end();
    int rc = stx_txn_init(&t->txn, &seg->seg, flags == SHMTXN_WRITE);
    if (rc == 0) {
        rc = wait_open(&t->txn, timeout_ms);
    }
    if (rc != 0) {
        free(t);
        return api_fail(rc, seg->seg.name);
    }
    *txn = t;
    return 0;
}

/* 0 if `t` may be used by the calling thread now, else the public code. */
static int
txn_check(shmtxn_txn *t)
{
    if (t == NULL) {
        return FAIL(EINVAL, "no txn");
    }
    if (t->failed) {
        return FAIL(SHMTXN_BAD_TXN, "segment '%s': an earlier write of this"
                    " txn failed and rolled it back; abort it",
                    t->seg->seg.name);
    }
    int rc = stx_txn_usable(&t->txn);
    return rc == 0 ? 0 : api_fail(rc, t->seg->seg.name);
}

/* A write failed with engine code `code`: unless it was a plain misuse
 * that changed nothing, roll the whole txn back (it can only be
 * aborted now).  The public code. */
static int
write_failed(shmtxn_txn *t, int code)
{
    int misuse = code == STX_ERANGE || code == STX_EREADONLY
                 || code == STX_EINVAL;
    if (!misuse && t->txn.state == STX_TXN_OPEN) {
        stx_dict_txn_reset(&t->dt);
        stx_txn_end(&t->txn, 0);
        t->failed = 1;
    }
    return api_fail(code, t->seg->seg.name);
}

/* End `t` whatever its state (rolled back if open) and free it; 1 and
 * nothing done for a write txn of another thread. */
static int
txn_free(shmtxn_txn *t)
{
    int rc = stx_txn_abandon(&t->txn);
    if (rc == 1) {
        return 1;
    }
    stx_dict_txn_reset(&t->dt);
    free(t);
    return rc;
}

int
shmtxn_txn_commit(shmtxn_txn *txn)
{
    int rc = txn_check(txn);
    if (rc == EINVAL && txn != NULL && !txn->failed
        && txn->txn.state == STX_TXN_OPEN
        && txn->txn.fork_gen == stx_fork_gen) {
        return rc; /* another thread's: leave it alone */
    }
    if (rc != 0) {
        if (txn != NULL) {
            txn_free(txn);
        }
        return rc;
    }
    const char *name = txn->seg->seg.name;
    int erc = 0;
    if (txn->txn.write && txn->seg->layout == STX_LAYOUT_DICT) {
        erc = stx_dict_flush(&txn->dt);
    }
    stx_dict_txn_reset(&txn->dt);
    if (erc == 0) {
        erc = stx_txn_end(&txn->txn, 1);
    }
    rc = erc == 0 ? 0 : api_fail(erc, name);
    txn_free(txn); /* rolls back if the flush failed */
    return rc;
}

int
shmtxn_txn_abort(shmtxn_txn *txn)
{
    if (txn == NULL) {
        return 0;
    }
    const char *name = txn->seg->seg.name;
    int rc = txn_free(txn);
    if (rc == 1) {
        return FAIL(EINVAL, "segment '%s': a write txn is aborted by the "
                    "thread that began it", name);
    }
    return rc == 0 ? 0 : api_fail(rc, name);
}

/* ------------------------------------------------------------------ */
/* slots                                                               */

/* 0 if `t` is usable on a slots segment (for writing if `write`). */
static int
slots_check(shmtxn_txn *t, int write)
{
    int rc = txn_check(t);
    if (rc == 0 && write && t->seg->layout != STX_LAYOUT_SLOTS) {
        rc = FAIL(SHMTXN_INCOMPAT, "segment '%s' holds a dict: write it "
                  "with shmtxn_dict_put", t->seg->seg.name);
    }
    return rc;
}

/* The byte offset of item `index`, or ERANGE. */
static int
item_offset(const shmtxn_seg *s, uint64_t index, uint64_t *offset)
{
    if (s->layout != STX_LAYOUT_SLOTS) {
        return FAIL(SHMTXN_INCOMPAT, "segment '%s' holds a dict, not items",
                    s->seg.name);
    }
    if (index >= s->nitems) {
        return FAIL(ERANGE, "segment '%s' has %llu items; no index %llu",
                    s->seg.name, (unsigned long long)s->nitems,
                    (unsigned long long)index);
    }
    *offset = index * s->fmt->size;
    return 0;
}

int
shmtxn_read(shmtxn_txn *txn, uint64_t offset, void *dst, size_t len)
{
    int rc = slots_check(txn, 0);
    if (rc == 0 && dst == NULL && len > 0) {
        rc = FAIL(EINVAL, "no buffer to read into");
    }
    if (rc != 0) {
        return rc;
    }
    rc = stx_read(&txn->txn, offset, dst, len);
    return rc == 0 ? 0 : api_fail(rc, txn->seg->seg.name);
}

int
shmtxn_write(shmtxn_txn *txn, uint64_t offset, const void *src, size_t len)
{
    int rc = slots_check(txn, 1);
    if (rc == 0 && src == NULL && len > 0) {
        rc = FAIL(EINVAL, "no bytes to write");
    }
    if (rc != 0) {
        return rc;
    }
    rc = stx_write(&txn->txn, offset, src, len);
    return rc == 0 ? 0 : write_failed(txn, rc);
}

int
shmtxn_get(shmtxn_txn *txn, uint64_t index, void *dst)
{
    uint64_t offset;
    int rc = slots_check(txn, 0);
    if (rc == 0) {
        rc = item_offset(txn->seg, index, &offset);
    }
    return rc != 0 ? rc : shmtxn_read(txn, offset, dst, txn->seg->fmt->size);
}

int
shmtxn_put(shmtxn_txn *txn, uint64_t index, const void *src)
{
    uint64_t offset;
    int rc = slots_check(txn, 1);
    if (rc == 0) {
        rc = item_offset(txn->seg, index, &offset);
    }
    return rc != 0 ? rc
                   : shmtxn_write(txn, offset, src, txn->seg->fmt->size);
}

/* The item at `raw` as an int64; ERANGE or SHMTXN_INCOMPAT. */
static int
item_to_int(const shmtxn_seg *s, const uint8_t *raw, int64_t *value)
{
    const stx_item_format *f = s->fmt;
    uint64_t u = 0;
    memcpy(&u, raw, f->size); /* little-endian: the ABI word pins it */
    switch (f->kind) {
    case STX_ITEM_SIGNED: {
        unsigned shift = 64 - 8 * f->size;
        *value = (int64_t)(u << shift) >> shift;
        return 0;
    }
    case STX_ITEM_UNSIGNED:
        if (u > INT64_MAX) {
            return FAIL(ERANGE, "segment '%s': the item %llu does not fit "
                        "an int64", s->seg.name, (unsigned long long)u);
        }
        *value = (int64_t)u;
        return 0;
    case STX_ITEM_BOOL:
        *value = u != 0;
        return 0;
    }
    return FAIL(SHMTXN_INCOMPAT, "segment '%s' holds format '%c': read it "
                "as a double or as raw bytes", s->seg.name, f->code);
}

/* `value` as the item bytes of an integer format; ERANGE if it does not
 * fit, SHMTXN_INCOMPAT for other formats. */
static int
int_to_item(const shmtxn_seg *s, int64_t value, uint8_t *raw)
{
    const stx_item_format *f = s->fmt;
    unsigned bits = 8 * f->size;
    int fits;
    switch (f->kind) {
    case STX_ITEM_SIGNED:
        fits = bits == 64 || (value >= -(INT64_C(1) << (bits - 1))
                              && value < (INT64_C(1) << (bits - 1)));
        break;
    case STX_ITEM_UNSIGNED:
        fits = value >= 0 && (bits == 64 || value < (INT64_C(1) << bits));
        break;
    case STX_ITEM_BOOL:
        fits = value == 0 || value == 1;
        break;
    default:
        return FAIL(SHMTXN_INCOMPAT, "segment '%s' holds format '%c': "
                    "write it as a double or as raw bytes", s->seg.name,
                    f->code);
    }
    if (!fits) {
        return FAIL(ERANGE, "%lld does not fit format '%c'",
                    (long long)value, f->code);
    }
    uint64_t u = (uint64_t)value;
    memcpy(raw, &u, f->size);
    return 0;
}

/* The item at `raw` as a double (formats 'f' and 'd'). */
static int
item_to_double(const shmtxn_seg *s, const uint8_t *raw, double *value)
{
    if (s->fmt->kind != STX_ITEM_FLOAT) {
        return FAIL(SHMTXN_INCOMPAT, "segment '%s' holds format '%c', not "
                    "'f' or 'd'", s->seg.name, s->fmt->code);
    }
    if (s->fmt->size == 4) {
        float f;
        memcpy(&f, raw, 4);
        *value = f;
    }
    else {
        memcpy(value, raw, 8);
    }
    return 0;
}

/* `value` as the item bytes of format 'f' or 'd'. */
static int
double_to_item(const shmtxn_seg *s, double value, uint8_t *raw)
{
    if (s->fmt->kind != STX_ITEM_FLOAT) {
        return FAIL(SHMTXN_INCOMPAT, "segment '%s' holds format '%c', not "
                    "'f' or 'd'", s->seg.name, s->fmt->code);
    }
    if (s->fmt->size == 8) {
        memcpy(raw, &value, 8);
        return 0;
    }
    float f = (float)value;
    if (isinf(f) && !isinf(value)) {
        return FAIL(ERANGE, "%g is too large for format 'f'", value);
    }
    memcpy(raw, &f, 4);
    return 0;
}

int
shmtxn_get_int(shmtxn_txn *txn, uint64_t index, int64_t *value)
{
    uint8_t raw[8];
    int rc = value != NULL ? shmtxn_get(txn, index, raw)
                           : FAIL(EINVAL, "no place for the value");
    return rc != 0 ? rc : item_to_int(txn->seg, raw, value);
}

int
shmtxn_put_int(shmtxn_txn *txn, uint64_t index, int64_t value)
{
    uint8_t raw[8];
    int rc = slots_check(txn, 1);
    if (rc == 0) {
        rc = int_to_item(txn->seg, value, raw);
    }
    return rc != 0 ? rc : shmtxn_put(txn, index, raw);
}

int
shmtxn_get_double(shmtxn_txn *txn, uint64_t index, double *value)
{
    uint8_t raw[8];
    int rc = value != NULL ? shmtxn_get(txn, index, raw)
                           : FAIL(EINVAL, "no place for the value");
    return rc != 0 ? rc : item_to_double(txn->seg, raw, value);
}

int
shmtxn_put_double(shmtxn_txn *txn, uint64_t index, double value)
{
    uint8_t raw[8];
    int rc = slots_check(txn, 1);
    if (rc == 0) {
        rc = double_to_item(txn->seg, value, raw);
    }
    return rc != 0 ? rc : shmtxn_put(txn, index, raw);
}

/* A one-off read txn for a lock-free read that met a writer (or that
 * this process's txns rule out): waits for it, or recovers a dead one.
 * Untracked, so a txn of this thread on the segment makes it
 * SHMTXN_NESTED instead of a deadlock. */
static int
locked_load(shmtxn_seg *s, uint64_t offset, void *dst, size_t len)
{
    stx_txn txn = {0};
    int rc = stx_txn_init(&txn, &s->seg, 0);
    if (rc == 0) {
        rc = wait_open(&txn, -1);
    }
    if (rc == 0) {
        rc = stx_read(&txn, offset, dst, len);
        stx_txn_end(&txn, 1);
    }
    return rc == 0 ? 0 : api_fail(rc, s->seg.name);
}

int
shmtxn_load(shmtxn_seg *seg, uint64_t offset, void *dst, size_t len)
{
    if (seg == NULL || seg->seg.file == NULL) {
        return FAIL(EINVAL, "no handle");
    }
    if (dst == NULL && len > 0) {
        return FAIL(EINVAL, "no buffer to read into");
    }
    if (offset > seg->seg.data_size || len > seg->seg.data_size - offset) {
        return FAIL(ERANGE, "segment '%s': [%llu, +%zu) is outside its %llu"
                    " data bytes", seg->seg.name, (unsigned long long)offset,
                    len, (unsigned long long)seg->seg.data_size);
    }
    if (atomic_load(&seg->seg.file->ntxn) == 0
        && stx_seqlock_read(&seg->seg, offset, dst, len) == 0) {
        return 0;
    }
    return locked_load(seg, offset, dst, len);
}

int
shmtxn_load_item(shmtxn_seg *seg, uint64_t index, void *dst)
{
    uint64_t offset;
    if (seg == NULL) {
        return FAIL(EINVAL, "no handle");
    }
    int rc = item_offset(seg, index, &offset);
    return rc != 0 ? rc : shmtxn_load(seg, offset, dst, seg->fmt->size);
}

int
shmtxn_load_int(shmtxn_seg *seg, uint64_t index, int64_t *value)
{
    uint8_t raw[8];
    int rc = value != NULL ? shmtxn_load_item(seg, index, raw)
                           : FAIL(EINVAL, "no place for the value");
    return rc != 0 ? rc : item_to_int(seg, raw, value);
}

int
shmtxn_load_double(shmtxn_seg *seg, uint64_t index, double *value)
{
    uint8_t raw[8];
    int rc = value != NULL ? shmtxn_load_item(seg, index, raw)
                           : FAIL(EINVAL, "no place for the value");
    return rc != 0 ? rc : item_to_double(seg, raw, value);
}

/* ------------------------------------------------------------------ */
/* keys                                                                */

shmtxn_key *
shmtxn_key_new(void)
{
    shmtxn_key *key = malloc(sizeof(*key));
    if (key != NULL) {
        stx_keybuf_init(&key->kb);
    }
    return key;
}

void
shmtxn_key_free(shmtxn_key *key)
{
    if (key != NULL) {
        stx_keybuf_release(&key->kb);
        free(key);
    }
}

void
shmtxn_key_reset(shmtxn_key *key)
{
    if (key != NULL) {
        stx_keybuf_release(&key->kb);
    }
}

/* The public code of a builder call's engine result. */
static int
key_result(int rc)
{
    return rc == 0 ? 0 : api_code(rc);
}

/* 0 if a builder call may go on: a key, and bytes when `len` says there
 * are some (else the key is poisoned, as the builder does, and EINVAL). */
static int
key_args(shmtxn_key *key, const void *p, size_t len)
{
    if (key == NULL) {
        return FAIL(EINVAL, "no key");
    }
    if (p == NULL && len > 0) {
        if (key->kb.error == 0) {
            key->kb.error = STX_EINVAL;
        }
        return FAIL(EINVAL, "no bytes for a key part of %zu bytes", len);
    }
    return 0;
}

int
shmtxn_key_str(shmtxn_key *key, const char *utf8, size_t len)
{
    int rc = key_args(key, utf8, len);
    if (rc != 0) {
        return rc;
    }
    if (key->kb.error == 0 && stx_utf8_check(utf8, len) != 0) {
        key->kb.error = STX_EINVAL; /* poisoned, as the builder does */
        return EINVAL;
    }
    return key_result(stx_key_str(&key->kb, utf8, len));
}

int
shmtxn_key_bytes(shmtxn_key *key, const void *p, size_t len)
{
    int rc = key_args(key, p, len);
    return rc != 0 ? rc : key_result(stx_key_bytes(&key->kb, p, len));
}

int
shmtxn_key_int(shmtxn_key *key, int64_t v)
{
    int rc = key_args(key, NULL, 0);
    return rc != 0 ? rc : key_result(stx_key_int(&key->kb, v));
}

int
shmtxn_key_bigint(shmtxn_key *key, const void *le, size_t len)
{
    int rc = key_args(key, le, len);
    return rc != 0 ? rc : key_result(stx_key_bigint(&key->kb, le, len));
}

int
shmtxn_key_double(shmtxn_key *key, double v)
{
    int rc = key_args(key, NULL, 0);
    return rc != 0 ? rc : key_result(stx_key_double(&key->kb, v));
}

int
shmtxn_key_bool(shmtxn_key *key, int v)
{
    int rc = key_args(key, NULL, 0);
    return rc != 0 ? rc : key_result(stx_key_bool(&key->kb, v));
}

int
shmtxn_key_none(shmtxn_key *key)
{
    int rc = key_args(key, NULL, 0);
    return rc != 0 ? rc : key_result(stx_key_none(&key->kb));
}

int
shmtxn_key_tuple_begin(shmtxn_key *key)
{
    int rc = key_args(key, NULL, 0);
    return rc != 0 ? rc : key_result(stx_key_tuple_begin(&key->kb));
}

int
shmtxn_key_tuple_end(shmtxn_key *key)
{
    int rc = key_args(key, NULL, 0);
    return rc != 0 ? rc : key_result(stx_key_tuple_end(&key->kb));
}

const void *
shmtxn_key_data(const shmtxn_key *key, size_t *len, int *kind, int *error)
{
    int rc = key != NULL ? stx_keybuf_check(&key->kb) : STX_EINVAL;
    if (error != NULL) {
        *error = key_result(rc);
    }
    if (rc != 0) {
        return NULL;
    }
    if (len != NULL) {
        *len = key->kb.len;
    }
    if (kind != NULL) {
        *kind = key->kb.kind;
    }
    return key->kb.bytes;
}

/* Copy a decoded engine item into the public struct. */
static void
key_value_out(const stx_key_item *item, shmtxn_key_value *out)
{
    out->type = item->type;
    out->data = item->data;
    out->len = item->len;
    out->i = item->i;
    out->d = item->d;
}

int
shmtxn_key_decode(const void *data, size_t len, int kind,
                  shmtxn_key_value *out)
{
    stx_key_item item;
    if (data == NULL || out == NULL) {
        return FAIL(EINVAL, "shmtxn_key_decode needs bytes and an out");
    }
    if (kind < STX_KEY_PLAIN || kind > STX_KEY_NEG_ZERO) {
        return FAIL(EINVAL, "key kind %d is not an entry's key_kind", kind);
    }
    int rc = stx_key_parse(data, len, kind, &item);
    if (rc != 0) {
        return api_code(rc);
    }
    key_value_out(&item, out);
    return 0;
}

int
shmtxn_key_tuple_next(const shmtxn_key_value *tuple, size_t *pos,
                      shmtxn_key_value *elem)
{
    if (tuple == NULL || pos == NULL || elem == NULL) {
        return FAIL(EINVAL, "shmtxn_key_tuple_next needs a tuple, a "
                    "position and an out");
    }
    stx_key_item t = {.type = tuple->type, .data = tuple->data,
                      .len = tuple->len};
    stx_key_item e;
    int rc = stx_key_tuple_next(&t, pos, &e);
    if (rc == STX_ENOENT) {
        return SHMTXN_NOTFOUND;
    }
    if (rc != 0) {
        return api_code(rc);
    }
    key_value_out(&e, elem);
    return 0;
}

/* ------------------------------------------------------------------ */
/* dicts                                                               */

/* The engine's view of `key` for dict `s`: bytes, kind and hash. */
static int
engine_key(const shmtxn_seg *s, const shmtxn_key *key, stx_key *k)
{
    if (s->layout != STX_LAYOUT_DICT) {
        return FAIL(SHMTXN_INCOMPAT, "segment '%s' holds slots, not a dict",
                    s->seg.name);
    }
    int rc = key != NULL ? stx_keybuf_check(&key->kb)
                         : stx_fail(STX_EINVAL, "no key");
    if (rc == 0 && key->kb.len > UINT32_MAX) {
        rc = stx_fail(STX_EINVAL, "a key encodes to at most 4 GiB");
    }
    if (rc != 0) {
        return api_code(rc);
    }
    k->bytes = key->kb.bytes;
    k->len = (uint32_t)key->kb.len;
    k->kind = key->kb.kind;
    k->hash = stx_siphash13(s->hash_key, k->bytes, k->len);
    return 0;
}

/* 0 if `t` is usable on a dict segment and `key` is a complete key. */
static int
dict_check(shmtxn_txn *t, const shmtxn_key *key, stx_key *k)
{
    int rc = txn_check(t);
    return rc != 0 ? rc : engine_key(t->seg, key, k);
}

/* A found record as a public entry. */
static void
entry_out(const stx_found *f, shmtxn_entry *entry)
{
    entry->key = f->key;
    entry->key_len = f->key_len;
    entry->key_kind = f->key_kind;
    entry->tag = f->value_tag;
    entry->value = f->value;
    entry->value_len = (size_t)f->value_len;
}

int
shmtxn_dict_get(shmtxn_txn *txn, const shmtxn_key *key, shmtxn_entry *entry)
{
    stx_key k;
    stx_found f;
    int rc = dict_check(txn, key, &k);
    if (rc == 0 && entry == NULL) {
        rc = FAIL(EINVAL, "no entry to fill");
    }
    if (rc != 0) {
        return rc;
    }
    rc = stx_dict_lookup(&txn->seg->seg, &k, &f);
    if (rc == STX_ENOENT) {
        return SHMTXN_NOTFOUND;
    }
    if (rc != 0) {
        return api_fail(rc, txn->seg->seg.name);
    }
    entry_out(&f, entry);
    return 0;
}

/* EINVAL unless `len` bytes make a value of tag `tag` Python can read. */
static int
check_value(int tag, const void *value, size_t len)
{
    switch (tag) {
    case SHMTXN_VAL_BYTES:
    case SHMTXN_VAL_PICKLE:
        return 0;
    case SHMTXN_VAL_STR:
        return stx_utf8_check(value, len) == 0 ? 0 : EINVAL;
    case SHMTXN_VAL_INT:
    case SHMTXN_VAL_FLOAT:
        return len == 8 ? 0 : FAIL(EINVAL, "an int or float value has 8 "
                                   "bytes (got %zu)", len);
    case SHMTXN_VAL_TRUE:
    case SHMTXN_VAL_FALSE:
    case SHMTXN_VAL_NONE:
        return len == 0 ? 0 : FAIL(EINVAL, "a bool or None value has no "
                                   "bytes (got %zu)", len);
    }
    return FAIL(EINVAL, "value tag %d is none of SHMTXN_VAL_*", tag);
}

int
shmtxn_dict_put(shmtxn_txn *txn, const shmtxn_key *key, int tag,
                const void *value, size_t len)
{
    stx_key k;
    int rc = dict_check(txn, key, &k);
    if (rc == 0 && (value == NULL && len > 0)) {
        rc = FAIL(EINVAL, "no value bytes");
    }
    if (rc == 0) {
        rc = check_value(tag, value, len);
    }
    if (rc != 0) {
        return rc;
    }
    stx_value v = {.bytes = value, .len = len, .tag = (uint8_t)tag};
    rc = stx_dict_put(&txn->dt, &k, &v);
    return rc == 0 ? 0 : write_failed(txn, rc);
}

int
shmtxn_dict_del(shmtxn_txn *txn, const shmtxn_key *key)
{
    stx_key k;
    int rc = dict_check(txn, key, &k);
    if (rc != 0) {
        return rc;
    }
    rc = stx_dict_delete(&txn->dt, &k);
    if (rc == STX_ENOENT) {
        return SHMTXN_NOTFOUND;
    }
    return rc == 0 ? 0 : write_failed(txn, rc);
}

int
shmtxn_dict_next(shmtxn_txn *txn, uint64_t *pos, shmtxn_entry *entry)
{
    stx_found f;
    int rc = txn_check(txn);
    if (rc == 0 && txn->seg->layout != STX_LAYOUT_DICT) {
        rc = FAIL(SHMTXN_INCOMPAT, "segment '%s' holds slots, not a dict",
                  txn->seg->seg.name);
    }
    if (rc == 0 && (pos == NULL || entry == NULL)) {
        rc = FAIL(EINVAL, "shmtxn_dict_next needs a position and an entry");
    }
    if (rc != 0) {
        return rc;
    }
    rc = stx_dict_next(&txn->seg->seg, pos, &f);
    if (rc == STX_ENOENT) {
        return SHMTXN_NOTFOUND;
    }
    if (rc != 0) {
        return api_fail(rc, txn->seg->seg.name);
    }
    entry_out(&f, entry);
    return 0;
}

int
shmtxn_dict_count(shmtxn_txn *txn, uint64_t *count)
{
    int rc = txn_check(txn);
    if (rc == 0 && txn->seg->layout != STX_LAYOUT_DICT) {
        rc = FAIL(SHMTXN_INCOMPAT, "segment '%s' holds slots, not a dict",
                  txn->seg->seg.name);
    }
    if (rc == 0 && count == NULL) {
        rc = FAIL(EINVAL, "no place for the count");
    }
    if (rc != 0) {
        return rc;
    }
    rc = stx_dict_count(&txn->seg->seg, count);
    return rc == 0 ? 0 : api_fail(rc, txn->seg->seg.name);
}

/* Copy the value of `f` out: tag, length, and the bytes if they fit. */
static int
copy_value(const stx_found *f, int *tag, void *buf, size_t cap, size_t *len)
{
    *tag = f->value_tag;
    *len = (size_t)f->value_len;
    if (f->value_len > cap) {
        return FAIL(ENOBUFS, "the value has %llu bytes; the buffer %zu",
                    (unsigned long long)f->value_len, cap);
    }
    stx_load_relaxed(buf, f->value, (size_t)f->value_len);
    return 0;
}

/* The lookup in a read txn (the seqlock kept seeing a writer). */
static int
locked_dict_load(shmtxn_seg *s, const stx_key *k, int *tag, void *buf,
                 size_t cap, size_t *len)
{
    stx_txn txn = {0};
    stx_found f;
    int rc = stx_txn_init(&txn, &s->seg, 0);
    if (rc == 0) {
        rc = wait_open(&txn, -1);
    }
    if (rc != 0) {
        return api_fail(rc, s->seg.name);
    }
    rc = stx_dict_lookup(&s->seg, k, &f);
    int out = rc == STX_ENOENT ? SHMTXN_NOTFOUND
              : rc != 0 ? api_fail(rc, s->seg.name)
                        : copy_value(&f, tag, buf, cap, len);
    stx_txn_end(&txn, 1);
    return out;
}

int
shmtxn_dict_load(shmtxn_seg *seg, const shmtxn_key *key, int *tag,
                 void *buf, size_t cap, size_t *len)
{
    stx_key k;
    if (seg == NULL || seg->seg.file == NULL || tag == NULL || len == NULL
        || (buf == NULL && cap > 0)) {
        return FAIL(EINVAL, "shmtxn_dict_load needs a handle, a tag, a "
                    "buffer and a length");
    }
    int rc = engine_key(seg, key, &k);
    if (rc != 0) {
        return rc;
    }
    for (int attempt = 0; atomic_load(&seg->seg.file->ntxn) == 0
                          && attempt < STX_SEQLOCK_TRIES; attempt++) {
        uint64_t seq;
        stx_found f;
        if (stx_seq_begin(&seg->seg, &seq) != 0) {
            break;
        }
        rc = stx_dict_lookup(&seg->seg, &k, &f);
        /* tag and length must be committed ones before they are trusted:
         * check, copy the bytes, check again */
        if (!stx_seq_still(&seg->seg, seq)) {
            continue;
        }
        if (rc == STX_ENOENT) {
            return SHMTXN_NOTFOUND;
        }
        if (rc != 0) {
            return api_fail(rc, seg->seg.name);
        }
        rc = copy_value(&f, tag, buf, cap, len);
        if (stx_seq_still(&seg->seg, seq)) {
            return rc;
        }
    }
    return locked_dict_load(seg, &k, tag, buf, cap, len);
}
