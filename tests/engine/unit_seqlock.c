/*
 * unit_seqlock.c -- lock-free reads: `seq` is odd from a txn's first
 * write until it ends, and a lock-free read returns committed bytes only
 * -- never the bytes of a txn in progress in another process, never a
 * copy that a write overlapped.
 */
#include "unit.h"

#define SIZE 1024

/* seq stays even in a txn until its first write, is odd from then on,
 * and is even (two more) after commit or rollback; a txn that wrote
 * nothing leaves it alone. */
static void
test_seq_is_odd_while_a_txn_has_written(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 0, NULL);
    uint64_t seq0 = atomic_load(&seg.hdr->seq), seq;
    CHECK_EQ(seq0 & 1u, 0);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    CHECK_EQ(stx_seq_begin(&seg, &seq), 0);
    CHECK_EQ(seq, seq0);
    uint64_t v = 42;
    CHECK_EQ(stx_write(&txn, 0, &v, 8), 0);
    CHECK_EQ(stx_seq_begin(&seg, &seq), STX_EAGAIN);
    CHECK_EQ(seq, seq0 | 1u);
    uint64_t out = 7;
    CHECK_EQ(stx_seqlock_read(&seg, 0, &out, 8), STX_EAGAIN);
    CHECK_EQ(stx_txn_end(&txn, 1), 0);
    CHECK_EQ(atomic_load(&seg.hdr->seq), seq0 + 2);
    CHECK_EQ(stx_seqlock_read(&seg, 0, &out, 8), 0);
    CHECK_EQ(out, 42);

    CHECK_EQ(unit_open(&txn, &seg, 1), 0); /* written, rolled back */
    v = 43;
    CHECK_EQ(stx_write(&txn, 0, &v, 8), 0);
    CHECK(atomic_load(&seg.hdr->seq) & 1u);
    CHECK_EQ(stx_txn_end(&txn, 0), 0);
    CHECK_EQ(atomic_load(&seg.hdr->seq), seq0 + 4);
    CHECK_EQ(stx_seqlock_read(&seg, 0, &out, 8), 0);
    CHECK_EQ(out, 42);

    CHECK_EQ(unit_open(&txn, &seg, 1), 0); /* nothing written */
    CHECK_EQ(stx_txn_end(&txn, 1), 0);
    CHECK_EQ(atomic_load(&seg.hdr->seq), seq0 + 4);
    unit_drop(&seg, name);
}

/* A writer in another process has written but not committed: lock-free
 * reads refuse (its bytes are in place, uncommitted), a copy begun
 * before its write is rejected by the second look at seq, and after its
 * commit the new bytes are read. */
static void
test_lock_free_reads_see_committed_bytes_only(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    uint8_t old[SIZE], fresh[SIZE];
    memset(old, 0x11, SIZE);
    memset(fresh, 0x22, SIZE);
    unit_slots(&seg, name, SIZE, 0, 0, old);
    unit_pipe p;
    unit_pipe_open(&p);
    uint64_t before;
    CHECK_EQ(stx_seq_begin(&seg, &before), 0); /* a read begins ... */
    pid_t pid = fork();
    if (pid == 0) {
        stx_txn txn = {0};
        int rc = unit_open(&txn, &seg, 1);
        rc = rc ? rc : stx_write(&txn, 0, fresh, 8);
        rc = rc ? rc : stx_write(&txn, 8, fresh, SIZE - 8);
        unit_signal(p.to_parent[1]);          /* written, not committed */
        unit_await(p.to_child[0]);
        rc = rc ? rc : stx_txn_end(&txn, 1);
        _exit(rc == 0 ? 0 : 1);
    }
    CHECK_EQ(unit_await(p.to_parent[0]), 0);
    CHECK_BYTES(seg.data, fresh, SIZE);       /* in place already */
    uint8_t copy[SIZE];
    stx_load_relaxed(copy, seg.data, SIZE);   /* ... and copies them */
    CHECK(!stx_seq_still(&seg, before));      /* the copy is thrown away */
    uint64_t seq;
    CHECK_EQ(stx_seq_begin(&seg, &seq), STX_EAGAIN);
    CHECK_EQ(stx_seqlock_read(&seg, 0, copy, 8), STX_EAGAIN);
    CHECK_EQ(stx_seqlock_read(&seg, 16, copy, SIZE - 16), STX_EAGAIN);
    unit_signal(p.to_child[1]);
    CHECK_EQ(unit_wait(pid), 0);
    CHECK_EQ(stx_seq_begin(&seg, &seq), 0);
    CHECK_EQ(seq, before + 2);
    memset(copy, 0, SIZE);
    CHECK_EQ(stx_seqlock_read(&seg, 0, copy, SIZE), 0);
    CHECK_BYTES(copy, fresh, SIZE);
    CHECK(stx_seq_still(&seg, seq));
    unit_drop(&seg, name);
}

/* The same in a child that rolls back: the reader ends with the old
 * bytes, and no successful lock-free read ever saw the new ones. */
static void
test_a_rolled_back_write_is_never_read(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    uint64_t old = 0x0101010101010101ull, fresh = 0x0202020202020202ull;
    unit_slots(&seg, name, SIZE, 0, 0, NULL);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    CHECK_EQ(stx_write(&txn, 64, &old, 8), 0);
    CHECK_EQ(stx_txn_end(&txn, 1), 0);
    unit_pipe p;
    unit_pipe_open(&p);
    pid_t pid = fork();
    if (pid == 0) {
        stx_txn w = {0};
        int rc = unit_open(&w, &seg, 1);
        rc = rc ? rc : stx_write(&w, 64, &fresh, 8);
        unit_signal(p.to_parent[1]);
        unit_await(p.to_child[0]);
        rc = rc ? rc : stx_txn_end(&w, 0);
        _exit(rc == 0 ? 0 : 1);
    }
    CHECK_EQ(unit_await(p.to_parent[0]), 0);
    uint64_t out = 0;
    int rc = stx_seqlock_read(&seg, 64, &out, 8);
    CHECK(rc == STX_EAGAIN);
    CHECK(rc != 0 || out != fresh);
    unit_signal(p.to_child[1]);
    CHECK_EQ(unit_wait(pid), 0);
    CHECK_EQ(stx_seqlock_read(&seg, 64, &out, 8), 0);
    CHECK_EQ(out, old);
    unit_drop(&seg, name);
}

int
main(void)
{
    UNIT_RUN(test_seq_is_odd_while_a_txn_has_written);
    UNIT_RUN(test_lock_free_reads_see_committed_bytes_only);
    UNIT_RUN(test_a_rolled_back_write_is_never_read);
    return unit_report();
}
