/*
 * alloc.c -- the heap allocator of dict segments.
 *
 * Blocks come in size classes: 32 to 256 bytes in steps of 16, then four
 * classes per doubling (320, 384, 448, 512, 640, ...), so a block wastes
 * at most a fifth of itself.  Allocation takes, in order: the head of the
 * free list of its class; fresh space from the top of the heap (`heap_top`
 * grows, after posix_fallocate has reserved the pages, so a full /dev/shm
 * is an error now and never a SIGBUS later); the head of a larger class's
 * list, used whole.  A freed block at the very top lowers `heap_top`
 * instead of joining a list.
 *
 * Crash safety (see layout.h): the list heads and `heap_top` live in the
 * dict header and are changed through the undo log; the blocks this txn
 * allocates are filled without logging; the blocks it frees wait in the
 * writer's own memory (stx_dict_txn) until stx_dict_flush() links them in
 * just before commit -- writing only their `next_free`, which no live
 * block uses, so that needs no undo record either.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* Classes 0..SMALL_CLASSES-1 are 32, 48, ..., 256 bytes. */
#define SMALL_CLASSES 15u
#define SMALL_MAX 256u
/* The smallest block: a header and 16 bytes (class 0). */
#define MIN_BLOCK 32u
/* The least the heap's reservation grows by at a time. */
#define RESERVE_STEP (1ull << 20)

uint64_t
stx_class_size(uint32_t c)
{
    if (c < SMALL_CLASSES) {
        return 32 + 16 * (uint64_t)c;
    }
    uint32_t group = (c - SMALL_CLASSES) / 4;
    uint32_t step = (c - SMALL_CLASSES) % 4 + 1;
    uint64_t base = 1ull << (8 + group);
    return base + step * (base >> 2);
}

uint32_t
stx_class_of(uint64_t bytes)
{
    if (bytes <= 32) {
        return 0;
    }
    if (bytes <= SMALL_MAX) {
        return (uint32_t)((bytes - 32 + 15) / 16);
    }
    if (bytes > (1ull << 50)) {
        return STX_DICT_CLASSES;
    }
    int e = 63 - __builtin_clzll(bytes - 1); /* 2^e < bytes <= 2^(e+1) */
    uint64_t quarter = (1ull << e) >> 2;
    uint64_t step = (bytes - (1ull << e) + quarter - 1) / quarter; /* 1..4 */
    uint64_t c = SMALL_CLASSES + (uint64_t)(e - 8) * 4 + (step - 1);
    return c < STX_DICT_CLASSES ? (uint32_t)c : STX_DICT_CLASSES;
}

/* The dict header of `seg`. */
static stx_dict_header *
dict_header(const stx_segment *seg)
{
    return (stx_dict_header *)seg->data;
}

uint64_t
stx_block_size(const stx_segment *seg, uint64_t offset, uint64_t top)
{
    const stx_block *b = (const stx_block *)(seg->data + offset);
    if (offset % STX_BLOCK_ALIGN != 0 || offset < sizeof(stx_dict_header)
        || top > seg->data_size || offset >= top
        || top - offset < sizeof(stx_block)) {
        stx_fail(STX_ECORRUPT, "dict segment '%s' is corrupt: block offset "
                 "%llu lies outside its %llu-byte heap", seg->name,
                 (unsigned long long)offset, (unsigned long long)top);
        return 0;
    }
    uint64_t size = __atomic_load_n(&b->size, __ATOMIC_RELAXED);
    if (size < 32 || size % STX_BLOCK_ALIGN != 0 || size > top - offset) {
        stx_fail(STX_ECORRUPT, "dict segment '%s' is corrupt: the block at "
                 "%llu claims %llu bytes", seg->name,
                 (unsigned long long)offset, (unsigned long long)size);
        return 0;
    }
    return size;
}

/* Log the dict state (once per txn: the logged-range cache remembers). */
static int
log_state(stx_dict_txn *dt)
{
    return stx_undo_prepare(dt->txn, 0, STX_DICT_STATE_BYTES);
}

/* Set free list head `c` to `offset`, logged. */
static int
set_free_head(stx_dict_txn *dt, uint32_t c, uint64_t offset)
{
    return stx_write(dt->txn, offsetof(stx_dict_header, free_heads)
                     + (uint64_t)c * sizeof(uint64_t), &offset,
                     sizeof(offset));
}

/* Pop the head of free list `c`: 0, STX_ENOENT if empty, or an error. */
static int
pop_free(stx_dict_txn *dt, uint32_t c, uint64_t *offset)
{
    stx_segment *seg = dt->txn->seg;
    stx_dict_header *dh = dict_header(seg);
    uint64_t head = dh->free_heads[c];
    if (head == 0) {
        return STX_ENOENT;
    }
    uint64_t size = stx_block_size(seg, head, dh->heap_top);
    if (size == 0) {
        return STX_ECORRUPT;
    }
    if (size != stx_class_size(c)) {
        return stx_fail(STX_ECORRUPT, "dict segment '%s' is corrupt: a "
                        "%llu-byte block is on the %llu-byte free list",
                        seg->name, (unsigned long long)size,
                        (unsigned long long)stx_class_size(c));
    }
    const stx_block *b = (const stx_block *)(seg->data + head);
    int rc = set_free_head(dt, c, b->next_free);
    if (rc == 0) {
        dh->free_bytes -= size < dh->free_bytes ? size : dh->free_bytes;
        *offset = head;
    }
    return rc;
}

/* Back the data region up to `end` with real pages. */
static int
reserve_heap(stx_segment *seg, uint64_t end)
{
    stx_dict_header *dh = dict_header(seg);
    uint64_t reserved = atomic_load(&dh->heap_reserved);
    if (end <= reserved) {
        return 0;
    }
    uint64_t step = reserved / 8 > RESERVE_STEP ? reserved / 8 : RESERVE_STEP;
    uint64_t want = end > reserved + step ? end : reserved + step;
    want = (want + STX_PAGE - 1) & ~(uint64_t)(STX_PAGE - 1);
    if (want > seg->data_size) {
        want = seg->data_size;
    }
    int err = posix_fallocate(seg->file->fd,
                              (off_t)(seg->hdr->data_off + reserved),
                              (off_t)(want - reserved));
    if (err == ENOSPC || err == EFBIG) {
        return stx_fail(STX_EFULL, "/dev/shm is full: SharedDict '%s' "
                        "could not grow its heap from %llu to %llu bytes",
                        seg->name, (unsigned long long)reserved,
                        (unsigned long long)want);
    }
    if (err != 0) {
        return stx_fail(STX_ESYS, "reserving heap pages of '%s': %s",
                        seg->name, strerror(err));
    }
    atomic_store(&dh->heap_reserved, want);
    return 0;
}

/* Carve `size` bytes from the top of the heap: 0, STX_ENOENT if the
 * segment has no room left, or STX_EFULL if /dev/shm has none. */
static int
bump(stx_dict_txn *dt, uint64_t size, uint64_t *offset)
{
    stx_segment *seg = dt->txn->seg;
    stx_dict_header *dh = dict_header(seg);
    uint64_t top = dh->heap_top;
    if (top < sizeof(stx_dict_header) || top > seg->data_size
        || top % STX_BLOCK_ALIGN != 0) {
        return stx_fail(STX_ECORRUPT, "dict segment '%s' is corrupt: its "
                        "heap ends at %llu", seg->name,
                        (unsigned long long)top);
    }
    if (size > seg->data_size - top) {
        return STX_ENOENT;
    }
    int rc = reserve_heap(seg, top + size);
    if (rc == 0) {
        dh->heap_top = top + size;
        rc = stx_write_fresh(dt->txn, top, &size, sizeof(size));
    }
    if (rc == 0) {
        *offset = top;
    }
    return rc;
}

/* The largest class size that leaves 0 or a whole block of `bytes`, which
 * must be a multiple of STX_BLOCK_ALIGN and at least MIN_BLOCK (no class
 * holds less: a smaller rest cannot become a block). */
static uint64_t
largest_piece(uint64_t bytes)
{
    uint32_t c = stx_class_of(bytes);
    c = c < STX_DICT_CLASSES ? c : STX_DICT_CLASSES - 1;
    for (; c > 0; c--) {
        uint64_t size = stx_class_size(c);
        if (size == bytes || (size < bytes && bytes - size >= MIN_BLOCK)) {
            return size;
        }
    }
    return stx_class_size(0);
}

/* Shrink the free block just popped at `offset` from `size` to `keep`
 * bytes (size - keep is 0 or at least MIN_BLOCK), and put the rest on
 * the free lists as class-sized blocks.  Its header is logged (a rollback
 * puts it back on its list whole); the rest was free space, which no
 * committed state references. */
static int
split_block(stx_dict_txn *dt, uint64_t offset, uint64_t size, uint64_t keep)
{
    stx_segment *seg = dt->txn->seg;
    stx_dict_header *dh = dict_header(seg);
    int rc = size == keep ? 0 : stx_write(dt->txn, offset, &keep,
                                          sizeof(keep));
    for (uint64_t at = offset + keep; rc == 0 && at < offset + size;) {
        uint64_t piece = largest_piece(offset + size - at);
        uint32_t c = stx_class_of(piece);
        stx_block *b = (stx_block *)(seg->data + at);
        b->size = piece;
        b->next_free = dh->free_heads[c];
        dh->free_bytes += piece;
        rc = set_free_head(dt, c, at);
        at += piece;
    }
    return rc;
}

/* The block size to hand out of a free `size`-byte block for a `want`-byte
 * class: `want`, or all of it when the rest could not be a block. */
static uint64_t
keep_of(uint64_t size, uint64_t want)
{
    return size - want < MIN_BLOCK ? size : want;
}

/* SegmentFullError's sentence: the numbers and the way out. */
static int
heap_full(const stx_segment *seg, uint64_t bytes)
{
    const stx_dict_header *dh = dict_header(seg);
    return stx_fail(STX_EHEAPFULL, "SharedDict '%s' is full: no room for "
                    "a %llu-byte block (heap %llu of %llu bytes used, %llu "
                    "bytes in freed blocks too small for it)", seg->name,
                    (unsigned long long)bytes,
                    (unsigned long long)(dh->heap_top - dh->heap_off),
                    (unsigned long long)(seg->data_size - dh->heap_off),
                    (unsigned long long)dh->free_bytes);
}

int
stx_heap_alloc(stx_dict_txn *dt, uint64_t bytes, uint64_t *offset)
{
    stx_segment *seg = dt->txn->seg;
    uint32_t c = stx_class_of(bytes);
    if (c >= STX_DICT_CLASSES) {
        return heap_full(seg, bytes);
    }
    int rc = log_state(dt);
    if (rc == 0) {
        rc = pop_free(dt, c, offset);
    }
    if (rc == STX_ENOENT) {
        rc = bump(dt, stx_class_size(c), offset);
    }
    for (uint32_t k = c + 1; rc == STX_ENOENT && k < STX_DICT_CLASSES;
         k++) {
        rc = pop_free(dt, k, offset);
        if (rc == 0) {
            uint64_t size = stx_class_size(k);
            rc = split_block(dt, *offset, size,
                             keep_of(size, stx_class_size(c)));
        }
    }
    if (rc == STX_ENOENT) {
        rc = heap_full(seg, bytes);
    }
    if (rc == 0) {
        stx_dict_header *dh = dict_header(seg);
        dh->live_bytes += stx_block_size(seg, *offset, dh->heap_top);
    }
    return rc;
}

int
stx_heap_free_later(stx_dict_txn *dt, uint64_t offset)
{
    if (dt->nfreed == dt->freed_cap) {
        size_t cap = dt->freed_cap ? dt->freed_cap * 2 : 16;
        uint64_t *grown = realloc(dt->freed, cap * sizeof(uint64_t));
        if (grown == NULL) {
            return stx_fail(STX_ENOMEM, "out of memory");
        }
        dt->freed = grown;
        dt->freed_cap = cap;
    }
    dt->freed[dt->nfreed++] = offset;
    return 0;
}

/* Return one block to the heap: lower the top, or push it on its list. */
static int
release_block(stx_dict_txn *dt, uint64_t offset)
{
    stx_segment *seg = dt->txn->seg;
    stx_dict_header *dh = dict_header(seg);
    uint64_t size = stx_block_size(seg, offset, dh->heap_top);
    uint32_t c = stx_class_of(size);
    if (size == 0 || c >= STX_DICT_CLASSES || stx_class_size(c) != size) {
        return stx_fail(STX_ECORRUPT, "dict segment '%s' is corrupt: the "
                        "block at %llu has no valid size", seg->name,
                        (unsigned long long)offset);
    }
    dh->live_bytes -= size < dh->live_bytes ? size : dh->live_bytes;
    if (offset + size == dh->heap_top) {
        dh->heap_top = offset;
        return 0;
    }
    stx_block *b = (stx_block *)(seg->data + offset);
    b->next_free = dh->free_heads[c]; /* unused while live: no log */
    dh->free_bytes += size;
    return set_free_head(dt, c, offset);
}

int
stx_dict_flush(stx_dict_txn *dt)
{
    int rc = dt->nfreed ? log_state(dt) : 0;
    while (rc == 0 && dt->nfreed > 0) {
        rc = release_block(dt, dt->freed[--dt->nfreed]);
    }
    return rc;
}

void
stx_dict_txn_reset(stx_dict_txn *dt)
{
    free(dt->freed);
    dt->freed = NULL;
    dt->nfreed = dt->freed_cap = 0;
}
