/*
 * unit_recover.c -- recovery of a dead writer: a forked child opens a
 * write txn, writes, and dies inside it (_exit, SIGKILL, or killed at an
 * engine crash point); the parent's next txn -- write or read -- gets the
 * writer mutex with EOWNERDEAD, rolls the child's txn back and sees the
 * old bytes.  A dead writer whose log is damaged leaves the segment
 * marked unusable instead of half rolled back.
 */
#include "unit.h"

#define SIZE 4096

/* How a child leaves its txn. */
enum death { EXIT, KILL, CRASH_AFTER_LOG, CRASH_BEFORE_CLEAR, DAMAGED };

static uint8_t initial[SIZE];

/* In the child: write in a txn, then die as `how` says.  Never returns. */
static void
die_writing(stx_segment *seg, enum death how)
{
    if (how == CRASH_AFTER_LOG) {
        stx_set_crash_point("write:after_log");
    }
    if (how == CRASH_BEFORE_CLEAR) {
        stx_set_crash_point("commit:before_clear");
    }
    stx_txn txn = {0};
    if (unit_open(&txn, seg, 1) != 0) {
        _exit(10);
    }
    uint8_t v[300];
    memset(v, 0xee, sizeof(v));
    if (stx_write(&txn, 0, v, 8) != 0 || stx_write(&txn, 1000, v, 300) != 0
        || stx_write(&txn, SIZE - 5, v, 5) != 0) {
        _exit(11);
    }
    switch (how) {
    case EXIT:
        _exit(0);
    case CRASH_BEFORE_CLEAR:
        stx_txn_end(&txn, 1); /* killed inside the commit */
        _exit(12);
    case DAMAGED: {
        uint64_t odd = 13; /* the first record's trailer */
        memcpy(seg->undo + 24, &odd, 8);
        raise(SIGKILL);
        _exit(13);
    }
    default:
        raise(SIGKILL);
        _exit(14);
    }
}

/* Fork a child that dies writing; its exit status as unit_wait says. */
static int
child_dies_writing(stx_segment *seg, enum death how)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        die_writing(seg, how);
    }
    return unit_wait(pid);
}

/* The parent's next txn after a dead writer: the old bytes, an empty
 * log, seq even, the flag down, one recovery counted. */
static void
check_recovered_by(enum death how, int write, int status)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 0, initial);
    uint64_t seq0 = atomic_load(&seg.hdr->seq);
    CHECK_EQ(child_dies_writing(&seg, how), status);
    /* the child's bytes are in place (the crash point before them
     * aside), uncommitted; lock-free reads wait for recovery */
    if (how != CRASH_AFTER_LOG) {
        CHECK_EQ(seg.data[0], 0xee);
    }
    CHECK(atomic_load(&seg.hdr->undo_used) > 0);
    CHECK(atomic_load(&seg.hdr->seq) & 1u);
    CHECK_EQ(atomic_load(&seg.hdr->writer_flag), 1);
    uint8_t out[8];
    CHECK_EQ(stx_seqlock_read(&seg, 0, out, 8), STX_EAGAIN);

    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, write), 0);
    uint8_t copy[SIZE];
    CHECK_EQ(stx_read(&txn, 0, copy, SIZE), 0);
    CHECK_BYTES(copy, initial, SIZE);
    CHECK_EQ(stx_txn_end(&txn, 1), 0);
    CHECK_BYTES(seg.data, initial, SIZE);
    CHECK_EQ(atomic_load(&seg.hdr->undo_used), 0);
    CHECK_EQ(atomic_load(&seg.hdr->seq) & 1u, 0);
    CHECK(atomic_load(&seg.hdr->seq) > seq0);
    CHECK_EQ(atomic_load(&seg.hdr->writer_flag), 0);
    CHECK_EQ(atomic_load(&seg.hdr->recoveries), 1);
    CHECK_EQ(atomic_load(&seg.hdr->commits), 0);
    CHECK_EQ(stx_seqlock_read(&seg, 0, out, 8), 0);
    CHECK_BYTES(out, initial, 8);
    /* and the segment works on */
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    uint64_t v = 5;
    CHECK_EQ(stx_write(&txn, 0, &v, 8), 0);
    CHECK_EQ(stx_txn_end(&txn, 1), 0);
    CHECK_EQ(atomic_load(&seg.hdr->commits), 1);
    unit_drop(&seg, name);
}

/* A writer that _exits inside its txn; the next writer recovers. */
static void
test_writer_exits_mid_txn(void)
{
    check_recovered_by(EXIT, 1, 0);
}

/* A writer SIGKILLed inside its txn; the next writer recovers. */
static void
test_writer_killed_mid_txn(void)
{
    check_recovered_by(KILL, 1, 128 + SIGKILL);
}

/* The same, recovered by a reader: its read txn takes the mutex. */
static void
test_reader_recovers_a_killed_writer(void)
{
    check_recovered_by(KILL, 0, 128 + SIGKILL);
}

/* Killed right after logging, before its bytes were written. */
static void
test_writer_killed_after_logging(void)
{
    check_recovered_by(CRASH_AFTER_LOG, 1, 128 + SIGKILL);
}

/* Killed inside its commit, before the log was emptied: not committed. */
static void
test_writer_killed_inside_commit(void)
{
    check_recovered_by(CRASH_BEFORE_CLEAR, 1, 128 + SIGKILL);
}

/* A dead writer whose log cannot be replayed: the segment is marked
 * unusable (nothing half rolled back), and every txn fails at once. */
static void
test_a_damaged_log_makes_the_segment_unusable(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 0, initial);
    CHECK_EQ(child_dies_writing(&seg, DAMAGED), 128 + SIGKILL);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), STX_ECORRUPT);
    CHECK_EQ(atomic_load(&seg.hdr->unrecoverable), STX_BROKEN_ROLLBACK);
    CHECK_EQ(seg.data[1000], 0xee); /* nothing applied */
    CHECK_EQ(stx_txn_init(&txn, &seg, 0), STX_ECORRUPT);
    CHECK_EQ(stx_txn_init(&txn, &seg, 1), STX_ECORRUPT);
    uint8_t out[8];
    CHECK_EQ(stx_seqlock_read(&seg, 0, out, 8), STX_EAGAIN);
    unit_drop(&seg, name);
}

/* A dict writer killed mid-txn (inserts that grew the table, a delete, a
 * replace): the next txn finds the old dict, and it verifies. */
static void
test_dict_writer_killed_mid_txn(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_dict(&seg, name, 1u << 18, 0);
    stx_logged cache[STX_LOGGED_CACHE] = {{0}};
    stx_txn txn = {.logged = cache};
    stx_dict_txn dt = {.txn = &txn};
    char kb[32];
    uint8_t vb[40] = {0};
    stx_value v = {.bytes = vb, .len = sizeof(vb), .tag = 'b'};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    for (int i = 0; i < 10; i++) {
        int n = snprintf(kb, sizeof(kb), "k%d", i);
        stx_key k = {.bytes = (uint8_t *)kb, .len = (uint32_t)n,
                     .hash = stx_siphash13(seg.hdr->hash_key, kb, n)};
        CHECK_EQ(stx_dict_put(&dt, &k, &v), 0);
    }
    CHECK_EQ(stx_dict_flush(&dt), 0);
    CHECK_EQ(stx_txn_end(&txn, 1), 0);
    stx_dict_txn_reset(&dt);
    stx_dict_header before; /* the allocator and table state */
    memcpy(&before, seg.data, sizeof(before));

    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        memset(cache, 0, sizeof(cache));
        if (unit_open(&txn, &seg, 1) != 0) {
            _exit(10);
        }
        memset(vb, 'x', sizeof(vb));
        for (int i = 0; i < 200; i++) { /* replaces k0..k9, grows */
            int n = snprintf(kb, sizeof(kb), "k%d", i);
            stx_key k = {.bytes = (uint8_t *)kb, .len = (uint32_t)n,
                         .hash = stx_siphash13(seg.hdr->hash_key, kb, n)};
            if (stx_dict_put(&dt, &k, &v) != 0) {
                _exit(11);
            }
        }
        stx_key k3 = {.bytes = (uint8_t *)"k3", .len = 2,
                      .hash = stx_siphash13(seg.hdr->hash_key, "k3", 2)};
        if (stx_dict_delete(&dt, &k3) != 0 || stx_dict_flush(&dt) != 0) {
            _exit(12);
        }
        raise(SIGKILL);
    }
    CHECK_EQ(unit_wait(pid), 128 + SIGKILL);
    CHECK(memcmp(seg.data, &before, STX_DICT_STATE_BYTES) != 0);
    memset(cache, 0, sizeof(cache));
    CHECK_EQ(unit_open(&txn, &seg, 0), 0);
    CHECK_EQ(stx_dict_verify(&seg), 0);
    uint64_t count = 0;
    CHECK_EQ(stx_dict_count(&seg, &count), 0);
    CHECK_EQ(count, 10);
    stx_key k3 = {.bytes = (uint8_t *)"k3", .len = 2,
                  .hash = stx_siphash13(seg.hdr->hash_key, "k3", 2)};
    stx_found f;
    CHECK_EQ(stx_dict_lookup(&seg, &k3, &f), 0);
    CHECK(f.value_len == sizeof(vb) && f.value[0] == 0);
    CHECK_EQ(stx_txn_end(&txn, 1), 0);
    CHECK_BYTES(seg.data, &before, STX_DICT_STATE_BYTES);
    CHECK_BYTES(((stx_dict_header *)seg.data)->free_heads, before.free_heads,
                sizeof(before.free_heads));
    CHECK_EQ(atomic_load(&seg.hdr->recoveries), 1);
    unit_drop(&seg, name);
}

int
main(void)
{
    for (int i = 0; i < SIZE; i++) {
        initial[i] = (uint8_t)(i * 13 + 1);
    }
    UNIT_RUN(test_writer_exits_mid_txn);
    UNIT_RUN(test_writer_killed_mid_txn);
    UNIT_RUN(test_reader_recovers_a_killed_writer);
    UNIT_RUN(test_writer_killed_after_logging);
    UNIT_RUN(test_writer_killed_inside_commit);
    UNIT_RUN(test_a_damaged_log_makes_the_segment_unusable);
    UNIT_RUN(test_dict_writer_killed_mid_txn);
    return unit_report();
}
