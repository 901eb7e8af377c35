/*
 * dict_race_harness.c -- the dict engine under ThreadSanitizer: a writer
 * thread inserts, replaces and deletes keys (the table rebuilds and
 * compacts, freed blocks are reused), and lock-free reader threads look
 * keys up as the binding does: seq begin, lookup, copy the value out with
 * relaxed loads, seq still.  Built and run by tests/test_engine_c.py; it
 * fails on a value that is not one the writer stored (exit 1) and, under
 * TSan, on any data race (exit 66).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dict/dict.h"
#include "seqlock.h"

#define ROUNDS 3000
#define HOT_KEYS 4
#define VALUE_LEN 40

static stx_segment writer_seg, reader_seg;
static int done;
static long torn;

/* The key "k<i>" of `seg`, hashed with its key; `buf` holds the bytes. */
static stx_key
key_of(const stx_segment *seg, char *buf, int i)
{
    int n = snprintf(buf, 32, "k%d", i);
    stx_key k = {.bytes = (const uint8_t *)buf, .len = (uint32_t)n};
    k.hash = stx_siphash13(seg->hdr->hash_key, buf, (size_t)n);
    return k;
}

/* One write txn: a fresh key in, the previous one out, a hot key
 * rewritten with VALUE_LEN copies of one letter. */
static int
write_round(int r)
{
    stx_txn txn = {0};
    int rc = stx_txn_init(&txn, &writer_seg, 1);
    while (rc == 0 && (rc = stx_txn_step(&txn, 1000000)) == STX_EAGAIN) {
        rc = 0;
    }
    if (rc != 0) {
        return rc;
    }
    stx_dict_txn dt = {.txn = &txn};
    char buf[32], fill[VALUE_LEN];
    memset(fill, 'a' + r % 26, sizeof(fill));
    stx_value v = {.bytes = (const uint8_t *)fill, .len = VALUE_LEN};
    stx_key k = key_of(&writer_seg, buf, 1000 + r);
    rc = stx_dict_put(&dt, &k, &v);
    if (rc == 0 && r > 0) {
        k = key_of(&writer_seg, buf, 1000 + r - 1);
        rc = stx_dict_delete(&dt, &k);
    }
    if (rc == 0) {
        k = key_of(&writer_seg, buf, r % HOT_KEYS);
        rc = stx_dict_put(&dt, &k, &v);
    }
    rc = rc == 0 ? stx_dict_flush(&dt) : rc;
    stx_dict_txn_reset(&dt);
    stx_txn_end(&txn, rc == 0);
    return rc;
}

static void *
writer(void *arg)
{
    (void)arg;
    for (int r = 0; r < ROUNDS; r++) {
        int rc = write_round(r);
        if (rc != 0) {
            fprintf(stderr, "writer: %d %s\n", rc, stx_detail());
            exit(2);
        }
    }
    __atomic_store_n(&done, 1, __ATOMIC_RELAXED);
    return NULL;
}

/* 1 if `v` is VALUE_LEN copies of one letter. */
static int
whole(const uint8_t *v, uint64_t len)
{
    for (uint64_t i = 1; i < len; i++) {
        if (v[i] != v[0]) {
            return 0;
        }
    }
    return len == VALUE_LEN;
}

static void *
reader(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&done, __ATOMIC_RELAXED)) {
        for (int i = 0; i < HOT_KEYS; i++) {
            uint64_t seq;
            char buf[32];
            uint8_t copy[VALUE_LEN];
            stx_found f;
            if (stx_seq_begin(&reader_seg, &seq) != 0) {
                continue;
            }
            stx_key k = key_of(&reader_seg, buf, i);
            int rc = stx_dict_lookup(&reader_seg, &k, &f);
            if (rc != 0 || !stx_seq_still(&reader_seg, seq)
                || f.value_len != VALUE_LEN) {
                continue; /* absent yet, torn, or a stale length */
            }
            stx_load_relaxed(copy, f.value, VALUE_LEN);
            if (stx_seq_still(&reader_seg, seq) && !whole(copy, VALUE_LEN)) {
                __atomic_fetch_add(&torn, 1, __ATOMIC_RELAXED);
            }
        }
    }
    return NULL;
}

int
main(void)
{
    char name[64];
    snprintf(name, sizeof(name), "stx_dictrace_%d", (int)getpid());
    uint64_t shape[1] = {1 << 20};
    stx_create_opts opts = {.layout = &stx_dict_layout,
                            .data_size = 1 << 20, .format = "B",
                            .itemsize = 1, .ndim = 1, .shape = shape,
                            .mode = 0600};
    if (stx_engine_init() != 0 || stx_create(&writer_seg, name, &opts) != 0
        || stx_attach(&reader_seg, name, 0, 0, 1000000000ull) != 0) {
        fprintf(stderr, "setup: %s\n", stx_detail());
        stx_unlink(name, 0, 0);
        return 2;
    }
    /* both handles are mapped: the name can go now, so a run that
     * ThreadSanitizer ends early leaves nothing in /dev/shm */
    stx_unlink(name, 0, 0);
    pthread_t w, r[2];
    pthread_create(&w, NULL, writer, NULL);
    for (int i = 0; i < 2; i++) {
        pthread_create(&r[i], NULL, reader, NULL);
    }
    pthread_join(w, NULL);
    for (int i = 0; i < 2; i++) {
        pthread_join(r[i], NULL);
    }
    stx_close(&reader_seg);
    stx_close(&writer_seg);
    printf("rounds %d, torn reads %ld\n", ROUNDS, torn);
    return torn == 0 ? 0 : 1;
}
