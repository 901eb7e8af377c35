/*
 * race_harness.c -- the engine under ThreadSanitizer: one writer thread
 * and lock-free reader threads on one segment, through two handles (which
 * share one mapping in a process, so TSan sees every access to the same
 * bytes).  Built and run by tests/test_engine_c.py.
 *
 * The writer fills a 4 KiB range with the round number in each txn (every
 * 7th rolls back); readers copy the range in lock-free seqlock reads and
 * in read txns and check that every word agrees.  The copies are long so
 * that reads and writes really overlap in time: TSan reports a race only
 * when it sees one happen.  The run fails on a torn read (exit 1) and,
 * under TSan, on any data race it reports (exit 66).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"
#include "seqlock.h"

#define ROUNDS 4000
#define WORDS 512
#define READERS 2

static stx_segment writer_seg, reader_seg;
static int done;
static long torn;
static long lockfree;
static long overlapped;

/* Open a txn, stepping until it is open. */
static int
open_txn(stx_txn *txn, stx_segment *seg, int write)
{
    int rc = stx_txn_init(txn, seg, write);
    if (rc != 0) {
        return rc;
    }
    do {
        rc = stx_txn_step(txn, 1000000);
    } while (rc == STX_EAGAIN);
    return rc;
}

/* Move 1 from slot 0 to slot 1 (and a spread of bytes) ROUNDS times. */
static void *
writer(void *arg)
{
    (void)arg;
    for (int64_t r = 1; r <= ROUNDS; r++) {
        stx_txn txn = {0};
        int rc = open_txn(&txn, &writer_seg, 1);
        if (rc != 0) {
            fprintf(stderr, "writer: %d %s\n", rc, stx_detail());
            exit(2);
        }
        static int64_t fill[WORDS];
        for (int i = 0; i < WORDS; i++) {
            fill[i] = r;
        }
        stx_write(&txn, 8, fill, sizeof(fill)); /* an unaligned start */
        stx_txn_end(&txn, r % 7 != 0); /* every 7th rolls back */
    }
    __atomic_store_n(&done, 1, __ATOMIC_RELAXED);
    return NULL;
}

/* Check that every word of a copy agrees. */
static void
check(const int64_t *v)
{
    int ok = 1;
    for (int i = 1; i < WORDS; i++) {
        ok = ok && v[i] == v[0];
    }
    if (!ok) {
        __atomic_fetch_add(&torn, 1, __ATOMIC_RELAXED);
    }
}

/* Lock-free reads, and every 16th a read txn, until the writer is done. */
static void *
reader(void *arg)
{
    (void)arg;
    for (long n = 0; !__atomic_load_n(&done, __ATOMIC_RELAXED); n++) {
        int64_t v[WORDS];
        if (n % 16 == 0) {
            stx_txn txn = {0};
            if (open_txn(&txn, &reader_seg, 0) == 0) {
                stx_read(&txn, 8, v, sizeof(v));
                stx_txn_end(&txn, 1);
                check(v);
            }
        }
        else if (n % 2 == 0
                 && stx_seqlock_read(&reader_seg, 8, v, sizeof(v)) == 0) {
            check(v);
            __atomic_fetch_add(&lockfree, 1, __ATOMIC_RELAXED);
        }
        else {
            uint64_t seq;
            if (stx_seq_begin(&reader_seg, &seq) == 0) {
                stx_load_relaxed(v, reader_seg.data + 8, sizeof(v));
                if (stx_seq_still(&reader_seg, seq)) {
                    check(v);
                }
                else {
                    __atomic_fetch_add(&overlapped, 1, __ATOMIC_RELAXED);
                }
            }
        }
    }
    return NULL;
}

int
main(void)
{
    char name[64];
    snprintf(name, sizeof(name), "stx_race_%d", (int)getpid());
    stx_create_opts opts = {.layout = &stx_slots_layout,
                            .data_size = 8192, .format = "q",
                            .itemsize = 8, .mode = 0600};
    if (stx_engine_init() != 0 || stx_create(&writer_seg, name, &opts) != 0
        || stx_attach(&reader_seg, name, 0, 0, 1000000000ull) != 0) {
        fprintf(stderr, "setup: %s\n", stx_detail());
        stx_unlink(name, 0, 0);
        return 2;
    }
    /* both handles are mapped: the name can go now, so a run that
     * ThreadSanitizer ends early leaves nothing in /dev/shm */
    stx_unlink(name, 0, 0);
    pthread_t w, r[READERS];
    pthread_create(&w, NULL, writer, NULL);
    for (int i = 0; i < READERS; i++) {
        pthread_create(&r[i], NULL, reader, NULL);
    }
    pthread_join(w, NULL);
    for (int i = 0; i < READERS; i++) {
        pthread_join(r[i], NULL);
    }
    stx_close(&reader_seg);
    stx_close(&writer_seg);
    printf("rounds %d, lock-free reads %ld (overlapping a write %ld), torn "
           "reads %ld\n", ROUNDS, lockfree, overlapped, torn);
    return torn == 0 ? 0 : 1;
}
