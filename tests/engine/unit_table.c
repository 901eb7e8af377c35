/*
 * unit_table.c -- the dict table: growth through several rebuilds with a
 * full stx_dict_verify after each, lookups and insertion-order iteration
 * across them, replace, delete, compaction, clear, a rolled-back
 * growth leaving the old table whole, keys told apart by tag and bytes
 * (format 4's index slots), and a deleted slot reused then rolled back.
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

/* Keys given hashes by hand: the same home slot and tag (told apart by
 * their bytes), the same home slot and another tag (never read), and an
 * absent key on the same path.  (No verify: it rehashes keys.) */
static void
test_keys_told_apart_by_tag_then_bytes(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_dict(&seg, name, SIZE, 0);
    uint64_t h = 0xabcd000000000003ull;
    stx_key a = {.bytes = (const uint8_t *)"a", .len = 1, .hash = h};
    stx_key b = {.bytes = (const uint8_t *)"b", .len = 1, .hash = h};
    stx_key c = {.bytes = (const uint8_t *)"c", .len = 1,
                 .hash = h ^ (1ull << 60)}; /* same home, other tag */
    stx_key absent = {.bytes = (const uint8_t *)"z", .len = 1, .hash = h};
    stx_value va = {.bytes = (const uint8_t *)"A", .len = 1, .tag = 'b'};
    stx_value vb = {.bytes = (const uint8_t *)"B", .len = 1, .tag = 'b'};
    stx_value vc = {.bytes = (const uint8_t *)"C", .len = 1, .tag = 'b'};
    unit_dict_txn w;
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_dict_put(&w.dt, &c, &vc), 0);
    CHECK_EQ(stx_dict_put(&w.dt, &a, &va), 0);
    CHECK_EQ(stx_dict_put(&w.dt, &b, &vb), 0);
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    stx_found f;
    CHECK(stx_dict_lookup(&seg, &a, &f) == 0 && f.value[0] == 'A');
    CHECK(stx_dict_lookup(&seg, &b, &f) == 0 && f.value[0] == 'B');
    CHECK(stx_dict_lookup(&seg, &c, &f) == 0 && f.value[0] == 'C');
    CHECK_EQ(stx_dict_lookup(&seg, &absent, &f), STX_ENOENT);
    /* a batched lookup finds the same */
    stx_key keys[4] = {a, absent, c, b};
    stx_found found[4];
    int rcs[4];
    CHECK_EQ(stx_dict_lookup_many(&seg, keys, 4, found, rcs), 0);
    CHECK(rcs[0] == 0 && found[0].value[0] == 'A');
    CHECK_EQ(rcs[1], STX_ENOENT);
    CHECK(rcs[2] == 0 && found[2].value[0] == 'C');
    CHECK(rcs[3] == 0 && found[3].value[0] == 'B');
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_dict_delete(&w.dt, &a), 0);
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    CHECK_EQ(stx_dict_lookup(&seg, &a, &f), STX_ENOENT);
    CHECK(stx_dict_lookup(&seg, &b, &f) == 0 && f.value[0] == 'B');
    unit_drop(&seg, name);
}

/* A txn deletes a key and inserts another into its (now deleted) index
 * slot, then rolls back: the slot's entry number must come back too. */
static void
test_a_reused_deleted_slot_rolls_back(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_dict(&seg, name, SIZE, 0);
    uint64_t cap = stats_of(&seg).index_cap;
    char kb0[32], kb[32];
    stx_key first = key_of(&seg, 0, kb0);
    int other = 1;
    for (stx_key k = key_of(&seg, other, kb);
         ((k.hash ^ first.hash) & (cap - 1)) != 0;
         k = key_of(&seg, ++other, kb)) {
    }
    unit_dict_txn w;
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(put(&w, 0, 0), 0);
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_dict_delete(&w.dt, &first), 0);
    CHECK_EQ(put(&w, other, 0), 0); /* takes key 0's deleted home slot */
    CHECK_EQ(unit_dict_end(&w, 0), 0);
    CHECK_EQ(stx_dict_verify(&seg), 0);
    CHECK(has(&seg, 0, 0));
    CHECK(!has(&seg, other, 0));
    /* and delete it now: the entry number must be key 0's */
    CHECK_EQ(unit_dict_open(&w, &seg), 0);
    CHECK_EQ(stx_dict_delete(&w.dt, &first), 0);
    CHECK_EQ(unit_dict_end(&w, 1), 0);
    CHECK_EQ(stx_dict_verify(&seg), 0);
    CHECK_EQ(stats_of(&seg).count, 0);
    unit_drop(&seg, name);
}

int
main(void)
{
    UNIT_RUN(test_growth_through_rebuilds);
    UNIT_RUN(test_replace_delete_compact_clear);
    UNIT_RUN(test_a_rolled_back_growth_leaves_the_old_table);
    UNIT_RUN(test_keys_told_apart_by_tag_then_bytes);
    UNIT_RUN(test_a_reused_deleted_slot_rolls_back);
    return unit_report();
}
