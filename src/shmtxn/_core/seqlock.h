/*
 * seqlock.h -- lock-free reads of committed data (Boehm 2012 ordering).
 *
 * The writer makes header.seq odd before its first in-place write and even
 * again (release store) when it commits or rolls back, so a reader that
 * reads the same even value of seq before and after copying the bytes has
 * copied committed bytes only.  Readers write nothing shared: two reader
 * processes never touch a common cache line for writing.
 *
 * A reader that sees seq odd (a writer is mid-txn, or died mid-txn) retries
 * a bounded number of times and then reports STX_EAGAIN; the caller falls
 * back to a read txn, which waits for the writer -- or recovers it, since
 * taking the writer mutex of a dead owner rolls its txn back.
 */
#ifndef STX_SEQLOCK_H
#define STX_SEQLOCK_H

#include <string.h>

#include "engine.h"

/* Read attempts before giving up to the locked path. */
#define STX_SEQLOCK_TRIES 64

/* Copy `length` bytes at data `offset` without locking.  The caller has
 * checked the range.  Returns 0, or STX_EAGAIN to take the locked path. */
static inline int
stx_seqlock_read(const stx_segment *seg, uint64_t offset, void *dst,
                 uint64_t length)
{
    const stx_header *hdr = seg->hdr;
    const uint8_t *src = seg->data + offset;
    for (int attempt = 0; attempt < STX_SEQLOCK_TRIES; attempt++) {
        uint64_t before = atomic_load_explicit(&hdr->seq,
                                               memory_order_acquire);
        if (before & 1u) {
            continue;
        }
        switch ((length && offset % length == 0) ? length : 0) {
        case 8: {
            uint64_t v = __atomic_load_n((const uint64_t *)src,
                                         __ATOMIC_RELAXED);
            memcpy(dst, &v, 8);
            break;
        }
        case 4: {
            uint32_t v = __atomic_load_n((const uint32_t *)src,
                                         __ATOMIC_RELAXED);
            memcpy(dst, &v, 4);
            break;
        }
        default:
            memcpy(dst, src, length);
        }
        atomic_thread_fence(memory_order_acquire);
        uint64_t after = atomic_load_explicit(&hdr->seq,
                                              memory_order_relaxed);
        if (before == after) {
            return 0;
        }
    }
    return STX_EAGAIN;
}

/* Start a lock-free read of anything in the data region: 0 and *seq if
 * no write is in progress, STX_EAGAIN if one is (retry or lock). */
static inline int
stx_seq_begin(const stx_segment *seg, uint64_t *seq)
{
    *seq = atomic_load_explicit(&seg->hdr->seq, memory_order_acquire);
    return (*seq & 1u) ? STX_EAGAIN : 0;
}

/* 1 if nothing was written since stx_seq_begin() returned `seq`: what was
 * read in between was committed data. */
static inline int
stx_seq_still(const stx_segment *seg, uint64_t seq)
{
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&seg->hdr->seq, memory_order_relaxed) == seq;
}

#endif /* STX_SEQLOCK_H */
