/*
 * unit_undo.c -- the undo log: records, replay newest first on rollback,
 * an empty log after commit, the size limit, and validation of a damaged
 * log before anything of it is applied.
 */
#include "unit.h"

#define SIZE 4096

static uint8_t initial[SIZE];

/* Fill `initial` with a pattern no write below repeats. */
static void
make_initial(void)
{
    for (int i = 0; i < SIZE; i++) {
        initial[i] = (uint8_t)(i * 7 + 3);
    }
}

/* Writes of several shapes, then rollback: every byte comes back, the
 * log is empty and seq even again. */
static void
test_rollback_restores_every_write(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 0, initial);
    uint64_t seq = atomic_load(&seg.hdr->seq);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    uint64_t word = 0x1122334455667788ull;
    uint8_t odd[13], big[1000];
    memset(odd, 0xab, sizeof(odd));
    memset(big, 0xcd, sizeof(big));
    CHECK_EQ(stx_write(&txn, 0, &word, 8), 0);         /* one aligned item */
    CHECK_EQ(stx_write(&txn, 101, odd, sizeof(odd)), 0); /* unaligned */
    CHECK_EQ(stx_write(&txn, 2000, big, sizeof(big)), 0);
    CHECK_EQ(stx_write(&txn, SIZE - 1, odd, 1), 0);    /* the last byte */
    CHECK_BYTES(seg.data + 101, odd, sizeof(odd));
    /* four records: 16 + padded bytes + 8 each */
    CHECK_EQ(atomic_load(&seg.hdr->undo_used),
             (24 + 8) + (24 + 16) + (24 + 1000) + (24 + 8));
    CHECK_EQ(stx_undo_validate(&seg), 0);
    CHECK_EQ(stx_txn_end(&txn, 0), 0);
    CHECK_BYTES(seg.data, initial, SIZE);
    CHECK_EQ(atomic_load(&seg.hdr->undo_used), 0);
    CHECK_EQ(atomic_load(&seg.hdr->seq), seq + 2);
    CHECK_EQ(atomic_load(&seg.hdr->commits), 0);
    unit_drop(&seg, name);
}

/* Overlapping writes roll back newest first, so the oldest old bytes
 * win: applying the log oldest first would leave the first write's
 * bytes where the two overlap. */
static void
test_rollback_applies_newest_first(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 0, initial);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    uint8_t a[16], b[16];
    memset(a, 0xaa, sizeof(a));
    memset(b, 0xbb, sizeof(b));
    CHECK_EQ(stx_write(&txn, 64, a, sizeof(a)), 0);
    CHECK_EQ(stx_write(&txn, 72, b, sizeof(b)), 0);
    CHECK_EQ(stx_write(&txn, 64, b, sizeof(b)), 0);
    CHECK_EQ(stx_txn_end(&txn, 0), 0);
    CHECK_BYTES(seg.data + 64, initial + 64, 32);
    unit_drop(&seg, name);
}

/* Commit keeps the new bytes, empties the log and counts. */
static void
test_commit_keeps_writes_and_empties_the_log(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 0, initial);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    uint8_t v[40];
    memset(v, 0x5a, sizeof(v));
    CHECK_EQ(stx_write(&txn, 500, v, sizeof(v)), 0);
    CHECK(atomic_load(&seg.hdr->undo_used) > 0);
    CHECK_EQ(stx_txn_end(&txn, 1), 0);
    CHECK_EQ(atomic_load(&seg.hdr->undo_used), 0);
    CHECK_EQ(atomic_load(&seg.hdr->commits), 1);
    CHECK_BYTES(seg.data + 500, v, sizeof(v));
    CHECK_BYTES(seg.data, initial, 500);
    /* a rollback now has nothing to undo */
    CHECK_EQ(stx_undo_rollback(&seg), 0);
    CHECK_BYTES(seg.data + 500, v, sizeof(v));
    unit_drop(&seg, name);
}

/* With a logged-range cache, a range written twice is logged once (and
 * still rolled back to the bytes from before the txn). */
static void
test_cache_logs_a_range_once(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 0, initial);
    stx_logged cache[STX_LOGGED_CACHE] = {{0}};
    stx_txn txn = {.logged = cache};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    uint64_t one = 1, two = 2;
    CHECK_EQ(stx_write(&txn, 8, &one, 8), 0);
    uint64_t used = atomic_load(&seg.hdr->undo_used);
    CHECK_EQ(stx_write(&txn, 8, &two, 8), 0);
    CHECK_EQ(atomic_load(&seg.hdr->undo_used), used);
    CHECK_EQ(stx_txn_end(&txn, 0), 0);
    CHECK_BYTES(seg.data + 8, initial + 8, 8);
    unit_drop(&seg, name);
}

/* A txn that outgrows the log is refused before it writes. */
static void
test_a_txn_larger_than_the_log_is_refused(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 256, 0, initial);
    CHECK_EQ(seg.undo_size, 256);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    uint8_t v[300];
    memset(v, 1, sizeof(v));
    CHECK_EQ(stx_write(&txn, 0, v, 200), 0);
    CHECK_EQ(stx_undo_room(&seg), 256 - 224);
    CHECK_EQ(stx_write(&txn, 1000, v, 100), STX_ETOOLARGE);
    CHECK_BYTES(seg.data + 1000, initial + 1000, 100);
    CHECK_EQ(stx_write(&txn, SIZE - 8, v, 16), STX_ERANGE);
    CHECK_EQ(stx_txn_end(&txn, 0), 0);
    CHECK_BYTES(seg.data, initial, SIZE);
    unit_drop(&seg, name);
}

/* Put `value` into the 8 bytes at `at` of the log; the old value goes to
 * *old. */
static void
poke(stx_segment *seg, uint64_t at, uint64_t value, uint64_t *old)
{
    memcpy(old, seg->undo + at, 8);
    memcpy(seg->undo + at, &value, 8);
}

/* Each kind of damage to a log is found by validation, and a rollback of
 * a damaged log applies nothing of it. */
static void
test_damaged_logs_fail_validation(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 0, initial);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    uint8_t v[12];
    memset(v, 0x77, sizeof(v));
    CHECK_EQ(stx_write(&txn, 16, v, sizeof(v)), 0); /* record [0, 40) */
    CHECK_EQ(stx_write(&txn, 64, v, 8), 0);         /* record [40, 72) */
    uint64_t used = atomic_load(&seg.hdr->undo_used);
    CHECK_EQ(used, 72);
    struct {
        uint64_t at, value;
        const char *what;
    } damage[] = {
        {64, 33, "a trailer not a multiple of 8"},
        {64, 16, "a trailer smaller than a record"},
        {64, 4096, "a trailer longer than the log"},
        {40, SIZE - 4, "an offset whose bytes leave the data region"},
        {40, UINT64_MAX - 2, "an offset past the data region"},
        {48, 16, "a length that disagrees with the trailer"},
        {32, 48, "an earlier record's trailer"},
        {8, 4, "an earlier record's length"},
    };
    for (size_t i = 0; i < sizeof(damage) / sizeof(damage[0]); i++) {
        uint64_t old;
        poke(&seg, damage[i].at, damage[i].value, &old);
        if (!CHECK(stx_undo_validate(&seg) == STX_ECORRUPT)) {
            fprintf(stderr, "    not found: %s\n", damage[i].what);
        }
        CHECK_EQ(stx_undo_rollback(&seg), STX_ECORRUPT);
        CHECK_BYTES(seg.data + 16, v, sizeof(v)); /* nothing applied */
        uint64_t back;
        poke(&seg, damage[i].at, old, &back);
    }
    uint64_t bad_used[] = {used + 8 * 1000000, used - 4, seg.undo_size + 8};
    for (size_t i = 0; i < sizeof(bad_used) / sizeof(bad_used[0]); i++) {
        atomic_store(&seg.hdr->undo_used, bad_used[i]);
        CHECK_EQ(stx_undo_validate(&seg), STX_ECORRUPT);
        CHECK_EQ(stx_undo_room(&seg), 0);
    }
    atomic_store(&seg.hdr->undo_used, used);
    CHECK_EQ(stx_undo_validate(&seg), 0);
    CHECK_EQ(stx_txn_end(&txn, 0), 0);
    CHECK_BYTES(seg.data, initial, SIZE);
    unit_drop(&seg, name);
}

/* A rollback that finds its own log damaged marks the segment unusable:
 * every later txn fails at once, and lock-free reads see seq odd. */
static void
test_a_failed_rollback_marks_the_segment_unusable(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 0, initial);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    uint64_t v = 9, old;
    CHECK_EQ(stx_write(&txn, 0, &v, 8), 0);
    poke(&seg, 24, 7, &old); /* the trailer */
    CHECK_EQ(stx_txn_end(&txn, 0), STX_ECORRUPT);
    CHECK_EQ(atomic_load(&seg.hdr->unrecoverable), STX_BROKEN_ROLLBACK);
    CHECK(atomic_load(&seg.hdr->seq) & 1u);
    uint8_t out[8];
    CHECK_EQ(stx_seqlock_read(&seg, 0, out, 8), STX_EAGAIN);
    stx_txn again = {0};
    CHECK_EQ(stx_txn_init(&again, &seg, 0), STX_ECORRUPT);
    CHECK_EQ(stx_txn_init(&again, &seg, 1), STX_ECORRUPT);
    unit_drop(&seg, name);
}

int
main(void)
{
    make_initial();
    UNIT_RUN(test_rollback_restores_every_write);
    UNIT_RUN(test_rollback_applies_newest_first);
    UNIT_RUN(test_commit_keeps_writes_and_empties_the_log);
    UNIT_RUN(test_cache_logs_a_range_once);
    UNIT_RUN(test_a_txn_larger_than_the_log_is_refused);
    UNIT_RUN(test_damaged_logs_fail_validation);
    UNIT_RUN(test_a_failed_rollback_marks_the_segment_unusable);
    return unit_report();
}
