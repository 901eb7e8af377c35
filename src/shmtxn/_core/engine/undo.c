/*
 * undo.c -- the undo log, and reads and writes of the data region.
 *
 * A record is {offset, length}, the `length` old bytes padded to 8, then a
 * trailer holding the record's total size, so rollback walks the log from
 * its end without any memory of its own (it runs in recovery, too).
 *
 * Publication order for one write (see layout.h): reserve undo space if
 * the record would end past `undo_reserved`; write the record past
 * `undo_used`; store the new `undo_used` with release order; make seq odd
 * if this is the txn's first write (the log changes nothing readers see);
 * only then write the data in place.  A
 * writer killed between any two of these leaves either an unpublished
 * record (ignored, data untouched) or a published one (replayed: the data
 * gets its old bytes back, whether or not it was changed), and perhaps
 * pages reserved past the count, which recovery punches out.
 *
 * Undo space is reserved on demand and given back after the txn
 * (stx_undo_shrink); layout.h ("Undo space") has the protocol.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"
#include "seqlock.h"

/* Undo bytes kept reserved between txns (or undo_size, if smaller). */
#define UNDO_BASE (64ull << 10)
/* The least a reservation grows by past the base. */
#define UNDO_STEP (1ull << 20)
#define RECORD_OVERHEAD (sizeof(stx_undo_record) + sizeof(uint64_t))

/* `n` rounded up to a multiple of 8. */
static uint64_t
pad8(uint64_t n)
{
    return (n + 7) & ~(uint64_t)7;
}

/* The check every data access makes: is [offset, offset+length) inside
 * the data region? */
static int
check_range(const stx_segment *seg, uint64_t offset, uint64_t length)
{
    if (offset > seg->data_size || length > seg->data_size - offset) {
        return stx_fail(STX_ERANGE, "bytes [%llu, +%llu) are outside the "
                        "%llu-byte data region of '%s'",
                        (unsigned long long)offset,
                        (unsigned long long)length,
                        (unsigned long long)seg->data_size, seg->name);
    }
    return 0;
}

/* The reserved length of the log, checked: it is shared memory. */
static int
log_reserved(const stx_segment *seg, uint64_t *reserved)
{
    *reserved = atomic_load_explicit(&seg->hdr->undo_reserved,
                                     memory_order_acquire);
    if (*reserved > seg->undo_size || *reserved % STX_PAGE != 0) {
        return stx_fail(STX_ECORRUPT, "segment '%s' is corrupt: its undo "
                        "log claims %llu of %llu bytes reserved", seg->name,
                        (unsigned long long)*reserved,
                        (unsigned long long)seg->undo_size);
    }
    return 0;
}

/* The log length, checked: it is shared memory.  Only bytes below the
 * reservation are ever read (a hole read through a mapping would
 * allocate a page, and SIGBUS on a full file system). */
static int
log_used(const stx_segment *seg, uint64_t *used)
{
    uint64_t reserved;
    *used = atomic_load_explicit(&seg->hdr->undo_used, memory_order_acquire);
    int rc = log_reserved(seg, &reserved);
    if (rc == 0 && (*used > reserved || *used % 8 != 0)) {
        rc = stx_fail(STX_ECORRUPT, "segment '%s' is corrupt: its undo "
                      "log claims %llu bytes, %llu of them reserved",
                      seg->name, (unsigned long long)*used,
                      (unsigned long long)reserved);
    }
    return rc;
}

/* The record that ends at `end`, checked; NULL (and a detail) if bad. */
static const stx_undo_record *
record_before(const stx_segment *seg, uint64_t end)
{
    if (end < RECORD_OVERHEAD) {
        return NULL;
    }
    uint64_t total;
    memcpy(&total, seg->undo + end - sizeof(total), sizeof(total));
    if (total < RECORD_OVERHEAD || total > end || total % 8 != 0) {
        return NULL;
    }
    const stx_undo_record *rec =
        (const stx_undo_record *)(seg->undo + end - total);
    if (pad8(rec->length) != total - RECORD_OVERHEAD
        || check_range(seg, rec->offset, rec->length) != 0) {
        return NULL;
    }
    return rec;
}

/* Bytes of `rec`, header, padded old bytes and trailer included. */
static uint64_t
record_size(const stx_undo_record *rec)
{
    return RECORD_OVERHEAD + pad8(rec->length);
}

int
stx_undo_validate(const stx_segment *seg)
{
    uint64_t end;
    int rc = log_used(seg, &end);
    while (rc == 0 && end > 0) {
        const stx_undo_record *rec = record_before(seg, end);
        if (rec == NULL) {
            return stx_fail(STX_ECORRUPT, "segment '%s' is corrupt: bad "
                            "undo record ending at byte %llu", seg->name,
                            (unsigned long long)end);
        }
        end -= record_size(rec);
    }
    return rc;
}

/* Recovery through a read-only handle must write the data region. */
static int
set_data_writable(stx_segment *seg, int writable)
{
    if (!seg->read_only || seg->data_size == 0) {
        return 0;
    }
    size_t len = (size_t)stx_round_up(seg->data_size, STX_PAGE);
    int prot = PROT_READ | (writable ? PROT_WRITE : 0);
    if (mprotect(seg->data, len, prot) != 0) {
        return stx_fail(STX_ESYS, "cannot unprotect '%s' to roll back a "
                        "dead writer", seg->name);
    }
    return 0;
}

int
stx_undo_rollback(stx_segment *seg)
{
    if (atomic_load_explicit(&seg->hdr->undo_used,
                             memory_order_acquire) == 0) {
        return 0; /* nothing to replay, whatever else is damaged */
    }
    uint64_t end = 0;
    int rc = log_used(seg, &end);
    if (rc == 0) { /* never read a hole the counters only claim is backed */
        rc = stx_ensure_backed(seg, seg->hdr->undo_off,
                               &seg->file->undo_backed,
                               stx_round_up(end, STX_PAGE), "undo log");
    }
    if (rc == 0) {
        rc = stx_undo_validate(seg);
    }
    if (rc == 0 && end > 0) {
        rc = set_data_writable(seg, 1);
    }
    if (rc != 0 || end == 0) {
        return rc;
    }
    while (end > 0) {
        const stx_undo_record *rec = record_before(seg, end);
        stx_store_relaxed(seg->data + rec->offset, rec + 1, rec->length);
        end -= record_size(rec);
    }
    atomic_store_explicit(&seg->hdr->undo_used, 0, memory_order_release);
    return set_data_writable(seg, 0);
}

/* ------------------------------------------------------------------ */
/* undo space: reserved on demand, given back after the txn            */

/* The undo bytes kept reserved between txns. */
static uint64_t
undo_base(const stx_segment *seg)
{
    return seg->undo_size < UNDO_BASE ? seg->undo_size : UNDO_BASE;
}

/* Make sure the first `need` bytes of the undo log are backed by pages
 * before a record is written there (caller holds the writer mutex and
 * checked need <= undo_size).  STX_EFULL, with the numbers, if the file
 * system has no room. */
static int
reserve_log(stx_segment *seg, uint64_t need)
{
    uint64_t reserved;
    int rc = log_reserved(seg, &reserved);
    if (rc == 0) {
        rc = stx_ensure_backed(seg, seg->hdr->undo_off,
                               &seg->file->undo_backed, reserved, "undo log");
    }
    if (rc != 0 || need <= reserved) {
        return rc;
    }
    uint64_t step = reserved / 4 > UNDO_STEP ? reserved / 4 : UNDO_STEP;
    uint64_t want = reserved < undo_base(seg) ? undo_base(seg)
                                              : reserved + step;
    uint64_t exact = stx_round_up(need, STX_PAGE);
    want = want < exact ? exact : want;
    want = want > seg->undo_size ? seg->undo_size : want;
    int err = stx_grow_backing(seg, seg->hdr->undo_off, reserved, &want,
                               exact);
    if (err == ENOSPC || err == EFBIG) {
        return stx_fail(STX_EFULL, "a transaction on '%s' needs %llu bytes "
                        "of undo log, %llu more than are reserved, but %s "
                        "has %llu bytes free", seg->name,
                        (unsigned long long)need,
                        (unsigned long long)(exact - reserved),
                        stx_shm_dir(),
                        (unsigned long long)stx_fs_free_bytes(seg->file->fd));
    }
    if (err != 0) {
        return stx_fail_errno(err, "reserving undo space", seg->name);
    }
#ifdef MADV_POPULATE_WRITE
    /* map the new pages in one call rather than fault them one by one as
     * the record is copied in (a hint: failure costs only speed) */
    (void)madvise(seg->undo + reserved, (size_t)(want - reserved),
                  MADV_POPULATE_WRITE);
#endif
    stx_crash_point("undo:after_fallocate");
    seg->file->undo_backed = want;
    atomic_store_explicit(&seg->hdr->undo_reserved, want,
                          memory_order_release);
    stx_crash_point("undo:after_reserve");
    return 0;
}

int
stx_undo_shrink(stx_segment *seg, int all, uint64_t peak)
{
    uint64_t used = 0, reserved = 0, base = undo_base(seg);
    int rc = log_used(seg, &used);
    if (rc == 0) {
        rc = log_reserved(seg, &reserved);
    }
    if (rc != 0 && all) {
        reserved = seg->undo_size; /* recovery: make the count true again */
        used = 0;
        rc = 0;
    }
    if (!all && peak > base) {
        base = stx_round_up(peak < seg->undo_size ? peak : seg->undo_size,
                            STX_PAGE); /* keep what the txn used */
    }
    if (rc != 0 || used != 0 || (!all && reserved <= base)) {
        return rc;
    }
    uint64_t keep = reserved < base ? reserved : base;
    atomic_store_explicit(&seg->hdr->undo_reserved, keep,
                          memory_order_release);
    stx_crash_point("undo:after_lower");
    uint64_t end = all ? seg->undo_size : reserved;
    if (end > base) {
        /* failure only leaves pages reserved that nobody counts (a file
         * system without hole punching): nothing to undo */
        (void)fallocate(seg->file->fd,
                        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                        (off_t)(seg->hdr->undo_off + base),
                        (off_t)(end - base));
    }
    stx_crash_point("undo:after_punch");
    return 0;
}

/* ------------------------------------------------------------------ */
/* writes inside a txn                                                 */

/* The entry of the logged-range cache that `offset` maps to. */
static stx_logged *
cache_slot(stx_txn *txn, uint64_t offset)
{
    return &txn->logged[(offset >> 3) % STX_LOGGED_CACHE];
}

/* 1 if this txn already logged a range covering the given one. */
static int
already_logged(stx_txn *txn, uint64_t offset, uint64_t length)
{
    if (txn->logged_all) {
        return 1;
    }
    if (txn->logged == NULL) {
        return 0;
    }
    const stx_logged *e = cache_slot(txn, offset);
    return e->serial == txn->serial && e->offset <= offset
           && offset + length <= e->offset + e->length;
}

/* Note in the cache that this txn logged [offset, +length). */
static void
remember_logged(stx_txn *txn, uint64_t offset, uint64_t length)
{
    if (txn->logged != NULL) {
        stx_logged *e = cache_slot(txn, offset);
        e->serial = txn->serial;
        e->offset = offset;
        e->length = length;
    }
}

/* Make seq odd before the first write: lock-free readers now retry. */
static void
mark_dirty(stx_txn *txn)
{
    stx_header *hdr = txn->seg->hdr;
    uint64_t seq = atomic_load_explicit(&hdr->seq, memory_order_relaxed);
    atomic_store_explicit(&hdr->seq, seq | 1u, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    txn->dirty = 1;
}

/* Slots segments may log their whole data region in one record: all of
 * it is backed since creation, and nothing but the items lives there.
 * (A dict's region is backed only up to its heap's reservation.) */
static int
may_log_whole_region(const stx_segment *seg)
{
    return seg->hdr->layout_kind == STX_LAYOUT_SLOTS;
}

/* Append one undo record for [offset, +length) and publish it.  Once the
 * log would outgrow a whole copy of the data -- or grow so far that a
 * whole copy would no longer fit under the cap -- log that copy instead
 * and nothing more (layout.h): a txn's log stays under twice the data,
 * and a cap of N old bytes holds any txn on N bytes of data. */
static int
append_record(stx_txn *txn, uint64_t offset, uint64_t length)
{
    stx_segment *seg = txn->seg;
    uint64_t used;
    int rc = log_used(seg, &used);
    if (rc != 0) {
        return rc;
    }
    uint64_t total = RECORD_OVERHEAD + pad8(length);
    uint64_t whole = RECORD_OVERHEAD + pad8(seg->data_size);
    int all = 0;
    uint64_t room = seg->undo_size > whole ? seg->undo_size - whole : 0;
    uint64_t switch_at = seg->data_size < room ? seg->data_size : room;
    if (used + total > switch_at && may_log_whole_region(seg)
        && whole <= seg->undo_size - used) {
        offset = 0;
        length = seg->data_size;
        total = whole;
        all = 1;
    }
    if (total > seg->undo_size - used) {
        return stx_fail(STX_ETOOLARGE, "a transaction on '%s' needs at "
                        "least %llu bytes of undo log, more than its "
                        "%llu-byte cap", seg->name,
                        (unsigned long long)(used + total),
                        (unsigned long long)seg->undo_size);
    }
    rc = reserve_log(seg, used + total);
    if (rc != 0) {
        return rc;
    }
    /* the log starts on a page and `used` is a multiple of 8 */
    uint64_t *words = (uint64_t *)(seg->undo + used);
    words[0] = offset;
    words[1] = length;
    if (length == 8 && offset % 8 == 0) {
        words[2] = *(const uint64_t *)(seg->data + offset); /* one item */
    }
    else {
        memcpy(words + 2, seg->data + offset, length);
    }
    words[total / 8 - 1] = total;
    atomic_store_explicit(&seg->hdr->undo_used, used + total,
                          memory_order_release);
    if (all) {
        txn->logged_all = 1;
        stx_crash_point("write:after_whole_region");
    }
    remember_logged(txn, offset, length);
    return 0;
}

int
stx_undo_prepare(stx_txn *txn, uint64_t offset, uint64_t length)
{
    if (!txn->write) {
        return STX_EREADONLY;
    }
    int rc = check_range(txn->seg, offset, length);
    if (rc != 0 || length == 0) {
        return rc;
    }
    int appended = !already_logged(txn, offset, length);
    if (appended) {
        rc = append_record(txn, offset, length);
    }
    if (!txn->dirty) {
        /* also after a failed append: the txn then ends through the
         * rollback path, which restores whatever the log holds */
        mark_dirty(txn);
    }
    if (appended) {
        stx_crash_point("write:after_log");
    }
    return rc;
}

int
stx_write(stx_txn *txn, uint64_t offset, const void *src, uint64_t length)
{
    int rc = stx_undo_prepare(txn, offset, length);
    if (rc != 0) {
        return rc;
    }
    uint8_t *dst = txn->seg->data + offset;
    if (length == 8 && offset % 8 == 0) {
        uint64_t v;
        memcpy(&v, src, 8);
        __atomic_store_n((uint64_t *)dst, v, __ATOMIC_RELAXED);
    }
    else {
        stx_store_relaxed(dst, src, length);
    }
    return 0;
}

uint64_t
stx_undo_room(const stx_segment *seg)
{
    uint64_t used;
    return log_used(seg, &used) == 0 ? seg->undo_size - used : 0;
}

uint8_t *
stx_fresh(stx_txn *txn, uint64_t offset, uint64_t length)
{
    if (!txn->write || check_range(txn->seg, offset, length) != 0) {
        return NULL;
    }
    if (!txn->dirty) {
        mark_dirty(txn);
    }
    return txn->seg->data + offset;
}

int
stx_write_fresh(stx_txn *txn, uint64_t offset, const void *src,
                uint64_t length)
{
    uint8_t *dst = stx_fresh(txn, offset, length);
    if (dst == NULL) {
        return txn->write ? STX_ERANGE : STX_EREADONLY;
    }
    stx_store_relaxed(dst, src, length); /* readers of a stale table may
                                            look at a reused block */
    return 0;
}

int
stx_read(const stx_txn *txn, uint64_t offset, void *dst, uint64_t length)
{
    int rc = check_range(txn->seg, offset, length);
    if (rc == 0) {
        memcpy(dst, txn->seg->data + offset, length);
    }
    return rc;
}
