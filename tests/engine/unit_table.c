/*
 * unit_table.c -- the dict table: growth through several rebuilds with a
 * full stx_dict_verify after each, lookups and insertion-order iteration
 * across them, replace, delete, compaction, clear, and a rolled-back
 * growth leaving the old table whole.
 */
#include "unit.h"

#define SIZE (1u << 20)
#define KEYS 400

/* Key number `i` as canonical bytes (in `buf`) and its hash. */
static stx_key
key_of(const stx_segment *seg, int i, char *buf)
{
    int n = snprintf(buf, 32, "key-%d", i);
    stx_key k = {.bytes = (const uint8_t *)buf, .len = (uint32_t)n,
                 .kind = 0,
                 .hash = stx_siphash13(seg->hdr->hash_key, buf, (size_t)n)};
    return k;
}

/* Put key `i` with a value of `i % 50` copies of (char)('a' + gen). */
static int
put(unit_dict_txn *w, int i, int gen)
{
    char kb[32];
    uint8_t vb[64];
    memset(vb, 'a' + gen, sizeof(vb));
    stx_key k = key_of(w->txn.seg, i, kb);
    stx_value v = {.bytes = vb, .len = (uint64_t)(i % 50), .tag = 'b'};
    return stx_dict_put(&w->dt, &k, &v);
}

/* 1 if key `i` is there with the value put() gave it for `gen`. */
static int
has(const stx_segment *seg, int i, int gen)
{
    char kb[32];
    stx_key k = key_of(seg, i, kb);
    stx_found f;
    if (stx_dict_lookup(seg, &k, &f) != 0 || f.value_tag != 'b'
        || f.value_len != (uint64_t)(i % 50)) {
        return 0;
    }
    for (uint64_t j = 0; j < f.value_len; j++) {
        if (f.value[j] != 'a' + gen) {
            return 0;
        }
    }
    return 1;
}

/* Stats of `seg`. */
static stx_dict_stats
stats_of(const stx_segment *seg)
{
    stx_dict_stats s = {0};
    stx_dict_stats_get(seg, &s);
    return s;
}

/* Keys inserted one per txn grow the table through at least five
 * rebuilds; verify passes after every txn and every key stays found. */
static void
test_growth_through_rebuilds(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_dict(&seg, name, SIZE, 0);
    CHECK_EQ(stx_dict_verify(&seg), 0);
    CHECK_EQ(stats_of(&seg).index_cap, 8);
    uint64_t rebuilds = 0, verified = 0;
    for (int i = 0; i < KEYS; i++) {
        unit_dict_txn w;
        CHECK_EQ(unit_dict_open(&w, &seg), 0);
        CHECK_EQ(put(&w, i, 0), 0);
        CHECK_EQ(unit_dict_end(&w, 1), 0);
        stx_dict_stats s = stats_of(&seg);
        CHECK_EQ(s.count, (uint64_t)i + 1);
        if (s.rebuilds != rebuilds) {
            rebuilds = s.rebuilds;
            CHECK_EQ(stx_dict_verify(&seg), 0);
            verified++;
            for (int j = 0; j <= i; j++) {
                if (!CHECK(has(&seg, j, 0))) {
                    break;
                }
            }
        }
    }
    CHECK(verified >= 5);
    CHECK(stats_of(&seg).index_cap >= 512);
    CHECK_EQ(stx_dict_verify(&seg), 0);
    /* iteration follows insertion */
    uint64_t pos = 0, n = 0;
    stx_found f;
    while (stx_dict_next(&seg, &pos, &f) == 0) {
        char kb[32];
        int len = snprintf(kb, sizeof(kb), "key-%llu", (unsigned long long)n);
        if (!CHECK(f.key_len == (uint32_t)len
                   && memcmp(f.key, kb, (size_t)len) == 0)) {
            break;
        }
        n++;
    }
    CHECK_EQ(n, KEYS);
    unit_drop(&seg, name);
}

/* Replace and delete in bulk; deletes leave DELETED slots that the next
 * rebuild compacts; verify after each step; clear empties it. */
static void
test_replace_delete_compact_clear(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_dict(&seg, name, SIZE, 0);
    unit_dict_txn w;
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    for (int i = 0; i < 100; i++) {
        CHECK_EQ(put(&w, i, 0), 0);
    }
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    CHECK_EQ(stx_dict_verify(&seg), 0);
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    for (int i = 0; i < 100; i += 2) {
        CHECK_EQ(put(&w, i, 1), 0); /* replace */
    }
    for (int i = 1; i < 100; i += 4) {
        char kb[32];
        stx_key k = key_of(&seg, i, kb);
        CHECK_EQ(stx_dict_delete(&w.dt, &k), 0);
        CHECK_EQ(stx_dict_delete(&w.dt, &k), STX_ENOENT);
    }
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    CHECK_EQ(stx_dict_verify(&seg), 0);
    CHECK_EQ(stats_of(&seg).count, 75);
    for (int i = 0; i < 100; i++) {
        int want = i % 2 == 0 ? has(&seg, i, 1)
                   : i % 4 == 1 ? !has(&seg, i, 0) : has(&seg, i, 0);
        if (!CHECK(want)) {
            fprintf(stderr, "    key %d\n", i);
        }
    }
    /* delete and re-insert until the entries fill up: a rebuild of the
     * same size compacts the DELETED entries */
    uint64_t rebuilds = stats_of(&seg).rebuilds;
    for (int round = 0; round < 20; round++) {
        CHECK_EQ(unit_dict_open(&w, &seg), 0);
        for (int i = 0; i < 100; i += 2) {
            char kb[32];
            stx_key k = key_of(&seg, i, kb);
            CHECK_EQ(stx_dict_delete(&w.dt, &k), 0);
            CHECK_EQ(put(&w, i, 1), 0);
        }
        CHECK_EQ(unit_dict_end(&w, 1), 0);
        CHECK_EQ(stx_dict_verify(&seg), 0);
    }
    CHECK(stats_of(&seg).rebuilds > rebuilds);
    CHECK_EQ(stats_of(&seg).count, 75);
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_dict_clear(&w.dt), 0);
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    CHECK_EQ(stx_dict_verify(&seg), 0);
    CHECK_EQ(stats_of(&seg).count, 0);
    CHECK(!has(&seg, 0, 1));
    unit_drop(&seg, name);
}

/* A txn whose inserts grew the table, rolled back: the old table, the
 * old keys, and a heap that verifies. */
static void
test_a_rolled_back_growth_leaves_the_old_table(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_dict(&seg, name, SIZE, 0);
    unit_dict_txn w;
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    for (int i = 0; i < 20; i++) {
        CHECK_EQ(put(&w, i, 0), 0);
    }
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    stx_dict_stats before = stats_of(&seg);
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    for (int i = 20; i < 300; i++) {
        CHECK_EQ(put(&w, i, 0), 0);
    }
    CHECK(stats_of(&seg).rebuilds >= before.rebuilds + 3);
    CHECK_EQ(unit_dict_end(&w, 0), 0);
    stx_dict_stats after = stats_of(&seg);
    CHECK_EQ(after.count, 20);
    CHECK_EQ(after.index_cap, before.index_cap);
    CHECK_EQ(after.rebuilds, before.rebuilds);
    CHECK_EQ(after.heap_top, before.heap_top);
    CHECK_EQ(stx_dict_verify(&seg), 0);
    for (int i = 0; i < 300; i++) {
        CHECK(has(&seg, i, 0) == (i < 20));
    }
    unit_drop(&seg, name);
}

int
main(void)
{
    UNIT_RUN(test_growth_through_rebuilds);
    UNIT_RUN(test_replace_delete_compact_clear);
    UNIT_RUN(test_a_rolled_back_growth_leaves_the_old_table);
    return unit_report();
}
