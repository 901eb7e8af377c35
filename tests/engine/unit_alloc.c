/*
 * unit_alloc.c -- the dict heap allocator: reuse of a freed block (but
 * not inside the txn that freed it), a freed top block lowering the top,
 * splitting a larger free block into the block wanted and class-sized
 * rests, handing out a whole block when the rest could not be one,
 * filling the heap to STX_EHEAPFULL, and rollback restoring it all.
 *
 * Blocks allocated here are referenced by no table, so stx_dict_verify
 * would rightly complain: these tests look at the allocator's own state.
 */
#include "unit.h"

#define SIZE (1u << 16)

/* The dict header of `seg`. */
static stx_dict_header *
dh_of(stx_segment *seg)
{
    return (stx_dict_header *)seg->data;
}

/* The size of the block at `offset` (0 if invalid). */
static uint64_t
size_at(stx_segment *seg, uint64_t offset)
{
    return stx_block_size(seg, offset, dh_of(seg)->heap_top);
}

/* A freed block is reused by the next txn of its class, never by the txn
 * that freed it; a freed block ending the heap lowers the top instead. */
static void
test_reuse_after_free(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_dict(&seg, name, SIZE, 0);
    stx_dict_header *dh = dh_of(&seg);
    unit_dict_txn w;
    uint64_t a, b, c, x, y;
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_heap_alloc(&w.dt, 16, &a), 0);
    CHECK_EQ(stx_heap_alloc(&w.dt, 16, &b), 0);
    CHECK_EQ(stx_heap_alloc(&w.dt, 16, &c), 0);
    CHECK_EQ(b, a + 32);
    CHECK_EQ(c, b + 32);
    CHECK_EQ(size_at(&seg, b), 32);
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    uint64_t live = dh->live_bytes;

    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_heap_free_later(&w.dt, b), 0);
    CHECK_EQ(stx_heap_alloc(&w.dt, 16, &x), 0);
    CHECK(x != b); /* its rollback would bring b back */
    CHECK_EQ(dh->free_heads[0], 0);
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    CHECK_EQ(dh->free_heads[0], b);
    CHECK_EQ(dh->free_bytes, 32);
    CHECK_EQ(dh->live_bytes, live);

    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_heap_alloc(&w.dt, 20, &y), 0);
    CHECK_EQ(y, b);
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    CHECK_EQ(dh->free_heads[0], 0);
    CHECK_EQ(dh->free_bytes, 0);

    /* x ends the heap: freeing it lowers heap_top, no list grows */
    CHECK_EQ(dh->heap_top, x + 32);
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_heap_free_later(&w.dt, x), 0);
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    CHECK_EQ(dh->heap_top, x);
    CHECK_EQ(dh->free_heads[0], 0);
    unit_drop(&seg, name);
}

/* Allocate 32-byte blocks from the top until less than one fits; how
 * many it took. */
static int
fill_top(unit_dict_txn *w, stx_segment *seg)
{
    int n = 0;
    uint64_t off;
    while (seg->data_size - dh_of(seg)->heap_top >= 32) {
        if (stx_heap_alloc(&w->dt, 16, &off) != 0) {
            return -1;
        }
        n++;
    }
    return n;
}

/* With the top full, a small block comes out of a larger free one: the
 * block wanted at its start, the rest as class-sized free blocks; a rest
 * under 32 bytes is handed out with the block; then the heap fills to
 * STX_EHEAPFULL; a rollback restores the allocator state. */
static void
test_split_whole_block_and_full_heap(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_dict(&seg, name, SIZE, 0);
    stx_dict_header *dh = dh_of(&seg);
    unit_dict_txn w;
    uint64_t big, filler, got;
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_heap_alloc(&w.dt, 1000, &big), 0);
    CHECK_EQ(size_at(&seg, big), 1024);
    CHECK_EQ(stx_heap_alloc(&w.dt, 16, &filler), 0); /* big is not the top */
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_heap_free_later(&w.dt, big), 0);
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    uint32_t c1024 = stx_class_of(1024);
    CHECK_EQ(dh->free_heads[c1024], big);
    CHECK_EQ(dh->free_bytes, 1024);

    stx_dict_header before;
    memcpy(&before, dh, sizeof(before));
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK(fill_top(&w, &seg) > 100);
    CHECK_EQ(dh->free_heads[c1024], big); /* the top came first */

    /* 100 bytes: a 112-byte block; 912 left = 768 + 144 */
    CHECK_EQ(stx_heap_alloc(&w.dt, 100, &got), 0);
    CHECK_EQ(got, big);
    CHECK_EQ(size_at(&seg, got), 112);
    CHECK_EQ(dh->free_heads[c1024], 0);
    CHECK_EQ(dh->free_heads[stx_class_of(768)], big + 112);
    CHECK_EQ(size_at(&seg, big + 112), 768);
    CHECK_EQ(dh->free_heads[stx_class_of(144)], big + 112 + 768);
    CHECK_EQ(size_at(&seg, big + 112 + 768), 144);
    CHECK_EQ(dh->free_bytes, 912);

    /* 128 bytes from the 144-byte block: a 16-byte rest is no block */
    CHECK_EQ(stx_heap_alloc(&w.dt, 128, &got), 0);
    CHECK_EQ(got, big + 112 + 768);
    CHECK_EQ(size_at(&seg, got), 144);
    CHECK_EQ(dh->free_heads[stx_class_of(144)], 0);
    CHECK_EQ(dh->free_bytes, 768);

    /* what is left: the 768 bytes, as 24 blocks of 32, then full */
    int n = 0, rc;
    while ((rc = stx_heap_alloc(&w.dt, 16, &got)) == 0 && n < 1000) {
        n++;
    }
    CHECK_EQ(n, 24);
    CHECK_EQ(rc, STX_EHEAPFULL);
    CHECK(strstr(stx_detail(), "is full") != NULL);
    CHECK_EQ(dh->free_bytes, 0);
    CHECK_EQ(stx_heap_alloc(&w.dt, SIZE, &got), STX_EHEAPFULL);

    CHECK_EQ(unit_dict_end(&w, 0), 0);
    CHECK_BYTES(dh, &before, STX_DICT_STATE_BYTES);
    CHECK_BYTES(dh->free_heads, before.free_heads, sizeof(dh->free_heads));
    CHECK_EQ(size_at(&seg, big), 1024);
    unit_drop(&seg, name);
}

/* Size classes: 16-byte steps to 256, then four per doubling; every
 * size maps to the smallest class that holds it. */
static void
test_size_classes(void)
{
    CHECK_EQ(stx_class_size(0), 32);
    CHECK_EQ(stx_class_size(14), 256);
    CHECK_EQ(stx_class_size(15), 320);
    CHECK_EQ(stx_class_size(18), 512);
    CHECK_EQ(stx_class_size(19), 640);
    for (uint64_t bytes = 1; bytes < (1u << 20); bytes += 1 + bytes / 64) {
        uint32_t c = stx_class_of(bytes);
        if (!CHECK(c < STX_DICT_CLASSES && stx_class_size(c) >= bytes
                   && (c == 0 || stx_class_size(c - 1) < bytes))) {
            fprintf(stderr, "    %llu bytes -> class %u\n",
                    (unsigned long long)bytes, c);
            break;
        }
    }
    CHECK_EQ(stx_class_of(1ull << 60), STX_DICT_CLASSES);
}

int
main(void)
{
    UNIT_RUN(test_size_classes);
    UNIT_RUN(test_reuse_after_free);
    UNIT_RUN(test_split_whole_block_and_full_heap);
    return unit_report();
}
