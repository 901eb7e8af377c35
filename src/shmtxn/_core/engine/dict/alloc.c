/*
 * alloc.c -- the heap allocator of dict segments.
 *
 * Blocks come in size classes: 32 to 256 bytes in steps of 16, then four
 * classes per doubling (320, 384, 448, 512, 640, ...), so a block wastes
 * at most a fifth of itself.  Allocation takes, in order: the head of the
 * free list of its class; fresh space from the top of the heap (`heap_top`
 * grows, after posix_fallocate has reserved the pages, so a full /dev/shm
 * is an error now and never a SIGBUS later); the head of a larger class's
 * list, split into the block wanted and class-sized free rests (or handed
 * out whole when the rest would be under 32 bytes, which no class holds);
 * finally the top again, after the free blocks that end the heap are
 * taken off their lists and `heap_top` is lowered below them.  A freed
 * block at the very top lowers `heap_top` instead of joining a list
 * (blocks freed by one txn are released highest first for that).
 *
 * Accounting: the blocks tile [heap_off, heap_top); each is of a class
 * size and is either used (table or record: `live_bytes`) or on the free
 * list of its class (`free_bytes`); stx_dict_verify() checks all of it.
 *
 * Crash safety (see layout.h): the list heads and `heap_top` live in the
 * dict header and are changed through the undo log; the blocks this txn
 * allocates are filled without logging; the blocks it frees wait in the
 * writer's own memory (stx_dict_txn) until stx_dict_flush() links them in
 * just before commit -- writing only their `next_free`, which no live
 * block uses, so that needs no undo record either; except in a block this
 * txn took off a free list, where `next_free` was a committed link that a
 * rollback must restore (logged).  Lowering `heap_top`
 * over free blocks logs their headers: the space above the top is fresh,
 * written unlogged, and a rollback must find those blocks whole.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "dict.h"
#include "internal.h"
#include "seqlock.h"

/* Classes 0..SMALL_CLASSES-1 are 32, 48, ..., 256 bytes. */
#define SMALL_CLASSES 15u
#define SMALL_MAX 256u
/* The smallest block: a header and 16 bytes (class 0). */
#define MIN_BLOCK 32u
/* Undo log bytes to unlink one free block: a record of its 16-byte
 * header and one of the 8-byte link to it. */
#define UNLINK_LOG_BYTES 72u
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

/* Append `offset` to `list`: 0, or STX_ENOMEM. */
static int
offsets_push(stx_offsets *list, uint64_t offset)
{
    if (list->n == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 16;
        uint64_t *grown = realloc(list->at, cap * sizeof(uint64_t));
        if (grown == NULL) {
            return stx_fail(STX_ENOMEM, "out of memory");
        }
        list->at = grown;
        list->cap = cap;
    }
    list->at[list->n++] = offset;
    return 0;
}

/* Empty `list` and free its array. */
static void
offsets_drop(stx_offsets *list)
{
    free(list->at);
    *list = (stx_offsets){0};
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
    if (offset % STX_BLOCK_ALIGN != 0 || offset < sizeof(stx_dict_header)
        || top > seg->data_size || offset >= top
        || top - offset < sizeof(stx_block)) {
        stx_fail(STX_ECORRUPT, "dict segment '%s' is corrupt: block offset "
                 "%llu lies outside its %llu-byte heap", seg->name,
                 (unsigned long long)offset, (unsigned long long)top);
        return 0;
    }
    const stx_block *b = (const stx_block *)(seg->data + offset);
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
    int rc = offsets_push(&dt->popped, head);
    if (rc == 0) {
        rc = set_free_head(dt, c, b->next_free);
    }
    if (rc == 0) {
        uint64_t left = dh->free_bytes;
        STX_STORE(dh->free_bytes, left - (size < left ? size : left));
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
    if (reserved > seg->data_size) {
        return stx_fail(STX_ECORRUPT, "SharedDict '%s' is corrupt: its heap "
                        "claims %llu of %llu bytes reserved", seg->name,
                        (unsigned long long)reserved,
                        (unsigned long long)seg->data_size);
    }
    int rc = stx_ensure_backed(seg, seg->hdr->data_off,
                               &seg->file->heap_backed, reserved, "heap");
    if (rc != 0 || end <= reserved) {
        return rc;
    }
    uint64_t step = reserved / 8 > RESERVE_STEP ? reserved / 8 : RESERVE_STEP;
    uint64_t want = end > reserved + step ? end : reserved + step;
    want = stx_round_up(want, STX_PAGE);
    if (want > seg->data_size) {
        want = seg->data_size;
    }
    uint64_t exact = stx_round_up(end, STX_PAGE);
    int err = stx_grow_backing(seg, seg->hdr->data_off, reserved, &want,
                               exact);
    if (err == ENOSPC || err == EFBIG) {
        return stx_fail(STX_EFULL, "SharedDict '%s' could not grow its "
                        "heap from %llu to %llu bytes: %s has %llu bytes "
                        "free", seg->name, (unsigned long long)reserved,
                        (unsigned long long)want, stx_shm_dir(),
                        (unsigned long long)stx_fs_free_bytes(
                            seg->file->fd));
    }
    if (err != 0) {
        return stx_fail(STX_ESYS, "reserving heap pages of '%s': %s",
                        seg->name, strerror(err));
    }
    seg->file->heap_backed = want;
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
        STX_STORE(dh->heap_top, top + size);
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
        STX_STORE(b->size, piece);
        STX_STORE(b->next_free, dh->free_heads[c]);
        STX_STORE(dh->free_bytes, dh->free_bytes + piece);
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

/* ------------------------------------------------------------------ */
/* giving free blocks at the top back to the heap                      */

/* Set bit `i` of `bits`; 1 if it was set already. */
static int
bit_test_set(uint64_t *bits, uint64_t i)
{
    uint64_t mask = 1ull << (i % 64);
    int was = (bits[i / 64] & mask) != 0;
    bits[i / 64] |= mask;
    return was;
}

/* Mark in `bits` (one bit per STX_BLOCK_ALIGN bytes) where every block on
 * a free list starts. */
static int
mark_free(const stx_segment *seg, uint64_t top, uint64_t *bits)
{
    const stx_dict_header *dh = dict_header(seg);
    for (uint32_t c = 0; c < STX_DICT_CLASSES; c++) {
        for (uint64_t b = dh->free_heads[c]; b != 0;) {
            if (stx_block_size(seg, b, top) != stx_class_size(c)
                || bit_test_set(bits, b / STX_BLOCK_ALIGN)) {
                return stx_fail(STX_ECORRUPT, "dict segment '%s' is "
                                "corrupt: a free list is broken", seg->name);
            }
            b = ((const stx_block *)(seg->data + b))->next_free;
        }
    }
    return 0;
}

/* Walk the blocks up to `top`: *from is where the run of free blocks
 * that ends the heap starts (`top` if the last block is in use), *n how
 * many blocks the run has. */
static int
free_run_at_top(const stx_segment *seg, uint64_t top, const uint64_t *bits,
                uint64_t *from, uint64_t *n)
{
    *from = top;
    *n = 0;
    for (uint64_t at = sizeof(stx_dict_header); at < top;) {
        uint64_t size = stx_block_size(seg, at, top);
        if (size == 0) {
            return STX_ECORRUPT;
        }
        int is_free = (bits[at / STX_BLOCK_ALIGN / 64]
                       >> (at / STX_BLOCK_ALIGN % 64)) & 1u;
        *from = !is_free ? top : *n == 0 ? at : *from;
        *n = is_free ? *n + 1 : 0;
        at += size;
    }
    return 0;
}

/* Unlink from every free list the blocks at or above `from`, logging
 * their headers too: the heap above the new top is fresh space, which
 * this txn overwrites unlogged, and a rollback needs those blocks whole. */
static int
unlink_from(stx_dict_txn *dt, uint64_t from)
{
    stx_segment *seg = dt->txn->seg;
    stx_dict_header *dh = dict_header(seg);
    int rc = 0;
    for (uint32_t c = 0; rc == 0 && c < STX_DICT_CLASSES; c++) {
        uint64_t prev = 0;
        for (uint64_t b = dh->free_heads[c]; rc == 0 && b != 0;) {
            uint64_t next = ((const stx_block *)(seg->data + b))->next_free;
            if (b < from) {
                prev = b;
                b = next;
                continue;
            }
            rc = stx_undo_prepare(dt->txn, b, sizeof(stx_block));
            if (rc == 0 && prev == 0) {
                rc = set_free_head(dt, c, next);
            }
            else if (rc == 0) {
                rc = stx_write(dt->txn, prev + offsetof(stx_block, next_free),
                               &next, sizeof(next));
            }
            b = next;
        }
    }
    return rc;
}

/*
 * Give the free blocks that end the heap back to it, so that a block of
 * `size` bytes fits at the top: unlink them from their lists and lower
 * `heap_top` below them, all logged.  Blocks are not merged otherwise, so
 * this is what lets a heap whose small records were deleted take large
 * ones again.  It walks the whole heap: only when nothing else fits.
 * STX_ENOENT when it would not make room (or the undo log could not
 * take the unlinking).
 */
static int
reclaim_top(stx_dict_txn *dt, uint64_t size)
{
    stx_segment *seg = dt->txn->seg;
    stx_dict_header *dh = dict_header(seg);
    uint64_t top = dh->heap_top, from, nrun;
    if (top > seg->data_size || top < sizeof(stx_dict_header)) {
        return stx_fail(STX_ECORRUPT, "dict segment '%s' is corrupt: its "
                        "heap ends at %llu", seg->name,
                        (unsigned long long)top);
    }
    uint64_t *bits = calloc(top / STX_BLOCK_ALIGN / 64 + 1, sizeof(*bits));
    int rc = bits ? mark_free(seg, top, bits)
                  : stx_fail(STX_ENOMEM, "out of memory");
    if (rc == 0) {
        rc = free_run_at_top(seg, top, bits, &from, &nrun);
    }
    free(bits);
    if (rc == 0 && (from == top || size > seg->data_size - from
                    || (nrun + 1) * UNLINK_LOG_BYTES
                       > stx_undo_room(seg) / 2)) {
        rc = STX_ENOENT;
    }
    if (rc == 0) {
        rc = unlink_from(dt, from);
    }
    if (rc == 0) {
        uint64_t left = dh->free_bytes;
        STX_STORE(dh->free_bytes,
                  left - (top - from < left ? top - from : left));
        STX_STORE(dh->heap_top, from);
    }
    return rc;
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

/* Take a block of a larger class than `c` off its free list and split
 * it: 0, STX_ENOENT if no larger class has a free block, or an error. */
static int
pop_larger(stx_dict_txn *dt, uint32_t c, uint64_t *offset)
{
    int rc = STX_ENOENT;
    for (uint32_t k = c + 1; rc == STX_ENOENT && k < STX_DICT_CLASSES;
         k++) {
        rc = pop_free(dt, k, offset);
        if (rc == 0) {
            uint64_t size = stx_class_size(k);
            rc = split_block(dt, *offset, size,
                             keep_of(size, stx_class_size(c)));
        }
    }
    return rc;
}

/* Find a block of class `c`: its free list, the top of the heap, a larger
 * free block, then the top again after giving free blocks back to it. */
static int
find_block(stx_dict_txn *dt, uint32_t c, uint64_t *offset)
{
    uint64_t size = stx_class_size(c);
    int rc = pop_free(dt, c, offset);
    if (rc == STX_ENOENT) {
        rc = bump(dt, size, offset);
    }
    if (rc == STX_ENOENT || rc == STX_EFULL) {
        /* no room in the segment or in /dev/shm: reuse freed space */
        int larger = pop_larger(dt, c, offset);
        rc = larger == STX_ENOENT ? rc : larger;
    }
    if (rc == STX_ENOENT || rc == STX_EFULL) {
        /* the top given back is reserved already: bump cannot be EFULL */
        int given = reclaim_top(dt, size);
        rc = given == 0 ? bump(dt, size, offset)
             : given == STX_ENOENT ? rc : given;
    }
    return rc;
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
        rc = find_block(dt, c, offset);
    }
    if (rc == STX_ENOENT) {
        rc = heap_full(seg, bytes);
    }
    if (rc == 0) {
        stx_dict_header *dh = dict_header(seg);
        STX_STORE(dh->live_bytes, dh->live_bytes
                  + stx_block_size(seg, *offset, dh->heap_top));
    }
    return rc;
}

int
stx_heap_free_later(stx_dict_txn *dt, uint64_t offset)
{
    return offsets_push(&dt->freed, offset);
}

/* qsort order of block offsets: ascending. */
static int
offset_order(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* 1 if this txn took the block at `offset` off a free list (the popped
 * offsets are sorted: stx_dict_flush). */
static int
was_popped(const stx_dict_txn *dt, uint64_t offset)
{
    return dt->popped.n > 0
           && bsearch(&offset, dt->popped.at, dt->popped.n, sizeof(uint64_t),
                      offset_order) != NULL;
}

/* Return one block to the heap: lower the top, or push it on its list.
 * A block on a free list at the start of this txn had its `next_free` in
 * a committed chain; if this txn popped it and now frees it again, the
 * new link is logged (an unlogged one would survive a rollback and cut
 * or cross the restored chain). */
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
    uint64_t live = dh->live_bytes;
    STX_STORE(dh->live_bytes, live - (size < live ? size : live));
    if (offset + size == dh->heap_top) {
        STX_STORE(dh->heap_top, offset);
        return 0;
    }
    stx_block *b = (stx_block *)(seg->data + offset);
    uint64_t next = dh->free_heads[c];
    int rc = 0;
    if (was_popped(dt, offset)) {
        /* this txn took it off a free list: a rollback puts it back
         * there, and its committed link with it */
        rc = stx_write(dt->txn, offset + offsetof(stx_block, next_free),
                       &next, sizeof(next));
    }
    else {
        STX_STORE(b->next_free, next); /* unused while it was live */
    }
    if (rc == 0) {
        STX_STORE(dh->free_bytes, dh->free_bytes + size);
        rc = set_free_head(dt, c, offset);
    }
    return rc;
}


int
stx_dict_flush(stx_dict_txn *dt)
{
    stx_offsets *freed = &dt->freed;
    int rc = freed->n ? log_state(dt) : 0;
    /* highest first, so that freed blocks ending the heap all go back */
    if (freed->n > 1) {
        qsort(freed->at, freed->n, sizeof(uint64_t), offset_order);
    }
    if (freed->n > 0 && dt->popped.n > 1) {
        qsort(dt->popped.at, dt->popped.n, sizeof(uint64_t), offset_order);
    }
    while (rc == 0 && freed->n > 0) {
        rc = release_block(dt, freed->at[--freed->n]);
    }
    return rc;
}

void
stx_dict_txn_reset(stx_dict_txn *dt)
{
    offsets_drop(&dt->freed);
    offsets_drop(&dt->popped);
    memset(dt->fresh, 0, sizeof(dt->fresh));
    dt->fresh_next = 0;
}
