/*
 * seqlock.h -- lock-free reads of committed data (Boehm 2012 ordering).
 *
 * The writer makes header.seq odd before its first in-place write and even
 * again (release store) when it commits or rolls back, so a reader that
 * reads the same even value of seq before and after copying the bytes has
 * copied committed bytes only.  Readers write nothing shared: two reader
 * processes never touch a common cache line for writing.
 *
 * A reader that sees seq odd (a writer is mid-txn, or died mid-txn) spins
 * a little while for it to turn even -- a write's odd window is about as
 * long as the commit itself, so beside a busy writer of single ops the
 * wait is short -- and then reports STX_EAGAIN; the caller falls back to
 * a read txn, which waits for the writer with the GIL released -- or
 * recovers it, since taking the writer mutex of a dead owner rolls its
 * txn back.  A reader whose seq moved under it (a commit happened) retries
 * up to STX_SEQLOCK_TRIES times: a retry finds its lines in cache.
 *
 * No data races in the C11 sense: the optimistic copy races with the
 * writer by design, so both sides touch bytes that lock-free readers can
 * see only through relaxed atomic accesses (stx_load_relaxed here,
 * stx_store_relaxed in the writer's paths), a word at a time on the same
 * 8-byte grid.  Relaxed 64-bit accesses compile to plain moves, so the
 * copies stay at cache speed.  One exception, for speed: a bulk copy
 * (a load of STX_BULK_LOAD_BYTES or more, a store of STX_BULK_BYTES or
 * more) goes through libc's memcpy,
 * whose wide vector moves (and non-temporal stores for large arrays, no
 * read-for-ownership) copy several times faster than word moves.  memcpy
 * is opaque to the compiler, so nothing can be optimised on the
 * assumption that it does not race; a reader racing a writer is inside an
 * odd `seq`, or sees `seq` change, and discards its copy.
 * (What user code writes through a numpy view or `buf` is outside this:
 * those are plain stores, by the user.)
 *
 * Under ThreadSanitizer (tests/engine/race_harness.c) there are no bulk
 * copies: the memcpy race above is by design, but TSan reports it (gcc 15
 * does, gcc 12 mostly misses it), and the harness is there to check the
 * protocol -- the ordering of seq and the word copies -- not libc's copy.
 */
#ifndef STX_SEQLOCK_H
#define STX_SEQLOCK_H

#include <string.h>

#include "engine.h"

/* Read attempts before giving up to the locked path. */
#define STX_SEQLOCK_TRIES 64

/* Pauses stx_seq_begin() waits for an odd seq to turn even (a few
 * microseconds) before it reports the writer. */
#define STX_SEQ_SPINS 128

/* A polite pause inside a spin loop. */
static inline void
stx_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* STX_TSAN: built with ThreadSanitizer (gcc says so one way, clang the
 * other). */
#if defined(__SANITIZE_THREAD__)
#define STX_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define STX_TSAN 1
#endif
#endif

#if defined(STX_TSAN)
#define STX_BULK_BYTES SIZE_MAX
#define STX_BULK_LOAD_BYTES SIZE_MAX
#else
/* Copies at least this long are bulk copies (see above). */
#define STX_BULK_BYTES (4u << 10)
/* Loads go through memcpy from this length: libc's unaligned vector
 * moves beat a word loop with byte loops at both ends (a value after a
 * key rarely starts on a word). */
#define STX_BULK_LOAD_BYTES 64u
#endif

/* Copy `n` bytes out of shared memory that a writer may be changing:
 * relaxed atomic loads, 8-byte words where `src` is word aligned (bulk
 * copies: memcpy, see above). */
static inline void
stx_load_relaxed(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (n >= STX_BULK_LOAD_BYTES) {
        memcpy(d, s, n);
        return;
    }
    for (; n > 0 && ((uintptr_t)s & 7u) != 0; n--) {
        *d++ = __atomic_load_n(s++, __ATOMIC_RELAXED);
    }
    /* one word at a time, straight to `d`: gathering words in a buffer
     * and copying it on in wider moves stalls store forwarding */
    for (; n >= 8; n -= 8, s += 8, d += 8) {
        uint64_t w = __atomic_load_n((const uint64_t *)s, __ATOMIC_RELAXED);
        memcpy(d, &w, 8);
    }
    for (; n > 0; n--) {
        *d++ = __atomic_load_n(s++, __ATOMIC_RELAXED);
    }
}

/* One relaxed atomic load or store of a shared field (the dict's table
 * and heap fields, which lock-free readers load while a writer stores). */
#define STX_LOAD(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)
#define STX_STORE(field, value) \
    __atomic_store_n(&(field), (value), __ATOMIC_RELAXED)

/* 1 if the `n` shared bytes at `shared` equal `mine`: relaxed loads. */
static inline int
stx_equal_relaxed(const void *shared, const void *mine, size_t n)
{
    const uint8_t *s = shared, *m = mine;
    for (; n > 0 && ((uintptr_t)s & 7u) != 0; n--) {
        if (__atomic_load_n(s++, __ATOMIC_RELAXED) != *m++) {
            return 0;
        }
    }
    for (; n >= 8; n -= 8, s += 8, m += 8) {
        uint64_t w = __atomic_load_n((const uint64_t *)s, __ATOMIC_RELAXED);
        if (memcmp(&w, m, 8) != 0) {
            return 0;
        }
    }
    for (; n > 0; n--) {
        if (__atomic_load_n(s++, __ATOMIC_RELAXED) != *m++) {
            return 0;
        }
    }
    return 1;
}

/* Zero `n` shared bytes with relaxed stores (8-byte aligned `dst`). */
static inline void
stx_zero_relaxed(void *dst, size_t n)
{
    uint8_t *d = dst;
    for (; n > 0 && ((uintptr_t)d & 7u) != 0; n--) {
        __atomic_store_n(d++, 0, __ATOMIC_RELAXED);
    }
    for (; n >= 8; n -= 8, d += 8) {
        __atomic_store_n((uint64_t *)d, 0, __ATOMIC_RELAXED);
    }
    for (; n > 0; n--) {
        __atomic_store_n(d++, 0, __ATOMIC_RELAXED);
    }
}

/* Copy `n` bytes into shared memory that lock-free readers may be
 * reading: relaxed atomic stores, 8-byte words where `dst` is aligned
 * (bulk copies: memcpy, see above). */
static inline void
stx_store_relaxed(void *dst, const void *src, size_t n)
{
    uint8_t *d = dst;
    const uint8_t *s = src;
    if (n >= STX_BULK_BYTES) {
        memcpy(d, s, n);
        return;
    }
    for (; n > 0 && ((uintptr_t)d & 7u) != 0; n--) {
        __atomic_store_n(d++, *s++, __ATOMIC_RELAXED);
    }
    for (; n >= 8; n -= 8, s += 8, d += 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        __atomic_store_n((uint64_t *)d, w, __ATOMIC_RELAXED);
    }
    for (; n > 0; n--) {
        __atomic_store_n(d++, *s++, __ATOMIC_RELAXED);
    }
}

/* Start a lock-free read of anything in the data region: 0 and *seq
 * once no write is in progress (waiting up to STX_SEQ_SPINS pauses for
 * one to end), STX_EAGAIN if one still is: take the locked path. */
static inline int
stx_seq_begin(const stx_segment *seg, uint64_t *seq)
{
    for (unsigned spin = 0;; spin++) {
        *seq = atomic_load_explicit(&seg->hdr->seq, memory_order_acquire);
        if ((*seq & 1u) == 0) {
            return 0;
        }
        if (spin == STX_SEQ_SPINS) {
            return STX_EAGAIN;
        }
        stx_cpu_relax();
    }
}

/* 1 if nothing was written since stx_seq_begin() returned `seq`: what was
 * read in between was committed data. */
static inline int
stx_seq_still(const stx_segment *seg, uint64_t seq)
{
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&seg->hdr->seq, memory_order_relaxed) == seq;
}

/* Copy `length` bytes at data `offset` without locking.  The caller has
 * checked the range.  Returns 0, or STX_EAGAIN to take the locked path. */
static inline int
stx_seqlock_read(const stx_segment *seg, uint64_t offset, void *dst,
                 uint64_t length)
{
    const uint8_t *src = seg->data + offset;
    for (int attempt = 0; attempt < STX_SEQLOCK_TRIES; attempt++) {
        uint64_t before;
        if (stx_seq_begin(seg, &before) != 0) {
            break;
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
            stx_load_relaxed(dst, src, length);
        }
        if (stx_seq_still(seg, before)) {
            return 0;
        }
    }
    return STX_EAGAIN;
}

#endif /* STX_SEQLOCK_H */
