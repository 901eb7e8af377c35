/*
 * unit_undo.c -- the undo log: records, replay newest first on rollback,
 * an empty log after commit, the size cap, logging the whole region,
 * undo space reserved on demand and given back, and validation of a damaged
 * log before anything of it is applied.
 */
#include <fcntl.h>
#include <sys/stat.h>

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

/* A txn that outgrows an undo_size= cap is refused before it writes.
 * The cap counts old bytes (a page more holds the records' headers). */
static void
test_a_txn_larger_than_the_cap_is_refused(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, 4 * SIZE, 256, 0, NULL);
    CHECK_EQ(seg.undo_size, 2 * STX_PAGE);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    uint8_t v[8000], zero[8000] = {0};
    memset(v, 1, sizeof(v));
    CHECK_EQ(stx_write(&txn, 0, v, 200), 0);
    CHECK_EQ(stx_undo_room(&seg), 2 * STX_PAGE - 224);
    CHECK_EQ(stx_write(&txn, 1000, v, 8000), STX_ETOOLARGE);
    CHECK(strstr(stx_detail(), "8248 bytes") != NULL);
    CHECK_BYTES(seg.data + 1000, zero, 8000);
    CHECK_EQ(stx_write(&txn, 4 * SIZE - 8, v, 16), STX_ERANGE);
    CHECK_EQ(stx_txn_end(&txn, 0), 0);
    CHECK_BYTES(seg.data, zero, 1000);
    unit_drop(&seg, name);
}

/* Once the log would outgrow the data, the whole data region is logged
 * as one record and nothing more: the log stays under twice the data,
 * and rollback (newest first) still restores the bytes from before. */
static void
test_a_log_past_the_data_logs_the_whole_region(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 0, initial);
    CHECK(seg.undo_size >= 2 * SIZE + 48);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    for (int round = 0; round < 3; round++) {
        for (uint64_t at = 0; at < SIZE; at += 8) {
            uint64_t v = at * 31 + (uint64_t)round;
            CHECK_EQ(stx_write(&txn, at, &v, 8), 0);
        }
    }
    uint64_t used = atomic_load(&seg.hdr->undo_used);
    CHECK(txn.logged_all);
    CHECK(used > SIZE && used <= 2 * SIZE + 48);
    CHECK_EQ(stx_undo_validate(&seg), 0);
    CHECK_EQ(stx_txn_end(&txn, 0), 0);
    CHECK_BYTES(seg.data, initial, SIZE);
    /* a fresh txn logs record by record again */
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    uint64_t v = 5;
    CHECK_EQ(stx_write(&txn, 8, &v, 8), 0);
    CHECK_EQ(atomic_load(&seg.hdr->undo_used), 32);
    CHECK_EQ(stx_txn_end(&txn, 1), 0);
    unit_drop(&seg, name);
}

/* Bytes of the segment's file backed by pages. */
static uint64_t
allocated(const stx_segment *seg)
{
    struct stat st;
    return fstat(seg->file->fd, &st) == 0 ? (uint64_t)st.st_blocks * 512
                                          : 0;
}

/* Creation backs no undo bytes; the first write reserves the base; a
 * big txn reserves what it needs and keeps it when it ends; the next,
 * smaller txn gives it back. */
static void
test_undo_space_is_reserved_on_demand_and_given_back(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    const uint64_t data = 4u << 20, base = 64u << 10;
    unit_slots(&seg, name, data, 0, 0, NULL);
    CHECK_EQ(atomic_load(&seg.hdr->undo_reserved), 0);
    uint64_t at_rest = allocated(&seg);
    CHECK(at_rest < seg.hdr->undo_off + data + STX_PAGE);
    static uint8_t big[2u << 20];
    memset(big, 9, sizeof(big));
    for (int commit = 0; commit < 2; commit++) {
        stx_txn txn = {0};
        CHECK_EQ(unit_open(&txn, &seg, 1), 0);
        uint64_t v = 1;
        CHECK_EQ(stx_write(&txn, 0, &v, 8), 0);
        CHECK_EQ(atomic_load(&seg.hdr->undo_reserved), base);
        CHECK_EQ(stx_write(&txn, 8, big, sizeof(big)), 0);
        CHECK(atomic_load(&seg.hdr->undo_reserved) >= sizeof(big) + 56);
        CHECK(allocated(&seg) >= at_rest + sizeof(big));
        uint64_t used = atomic_load(&seg.hdr->undo_used);
        CHECK_EQ(stx_txn_end(&txn, commit), 0);
        CHECK_EQ(atomic_load(&seg.hdr->undo_reserved),
                 (used + STX_PAGE - 1) / STX_PAGE * STX_PAGE); /* kept */
        CHECK(allocated(&seg) >= at_rest + sizeof(big));
        stx_txn small = {0};
        CHECK_EQ(unit_open(&small, &seg, 1), 0);
        CHECK_EQ(stx_write(&small, 0, &v, 8), 0);
        CHECK_EQ(stx_txn_end(&small, 1), 0);
        CHECK_EQ(atomic_load(&seg.hdr->undo_reserved), base);
        CHECK(allocated(&seg) <= at_rest + base + STX_PAGE);
    }
    CHECK_BYTES(seg.data + 8, big, sizeof(big));
    unit_drop(&seg, name);
}

/* Recovery's shrink punches pages a dead writer reserved without counting
 * them, and makes a damaged count true again. */
static void
test_shrink_for_recovery_frees_uncounted_pages(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    const uint64_t data = 4u << 20;
    unit_slots(&seg, name, data, 0, 0, NULL);
    uint64_t at_rest = allocated(&seg);
    CHECK_EQ(posix_fallocate(seg.file->fd, (off_t)(seg.hdr->undo_off
                                                   + (1u << 20)),
                             1u << 20), 0);
    CHECK(allocated(&seg) >= at_rest + (1u << 20));
    CHECK_EQ(stx_undo_shrink(&seg, 0, 0), 0); /* a commit's: counted only */
    CHECK(allocated(&seg) >= at_rest + (1u << 20));
    CHECK_EQ(stx_undo_shrink(&seg, 1, 0), 0);
    CHECK(allocated(&seg) <= at_rest + STX_PAGE);
    atomic_store(&seg.hdr->undo_reserved, seg.undo_size + STX_PAGE);
    CHECK_EQ(stx_undo_validate(&seg), STX_ECORRUPT);
    CHECK_EQ(stx_undo_shrink(&seg, 1, 0), 0);
    CHECK(atomic_load(&seg.hdr->undo_reserved) <= (64u << 10));
    CHECK_EQ(stx_undo_validate(&seg), 0);
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
    UNIT_RUN(test_a_txn_larger_than_the_cap_is_refused);
    UNIT_RUN(test_a_log_past_the_data_logs_the_whole_region);
    UNIT_RUN(test_undo_space_is_reserved_on_demand_and_given_back);
    UNIT_RUN(test_shrink_for_recovery_frees_uncounted_pages);
    UNIT_RUN(test_damaged_logs_fail_validation);
    UNIT_RUN(test_a_failed_rollback_marks_the_segment_unusable);
    return unit_report();
}
