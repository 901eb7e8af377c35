/*
 * attach_image.c -- a libFuzzer harness for the engine: the input is the
 * bytes of a segment (an image of /dev/shm/<name>), possibly damaged.
 *
 * Each input is written to a fresh shm object of this process
 * ("stxfz_<pid>_<n>"), probed, attached read-write, and used the way the
 * binding does: recovery (the first txn takes the writer mutex of a dead
 * owner), validation of the undo log, a read txn, lock-free reads, a
 * small write txn committed and one rolled back -- and for a dict,
 * verify, count, stats, iteration, lookups, put and delete -- then
 * closed and unlinked; an image whose header checksum is wrong is used
 * a second time with it right.  Any outcome but a crash, a sanitizer
 * report or a hang is fine: the engine must refuse damage with an error
 * code.
 *
 * Built with clang -fsanitize=fuzzer,address,undefined by fuzz/run.sh.
 * Built without libFuzzer (-DSTX_FUZZ_REPLAY, by tests/
 * test_engine_units.py with gcc and ASan), main() replays the files and
 * directories named on its command line, one input per file.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine.h"
#include "dict/dict.h"
#include "seqlock.h"

/* Wait slices a txn gets before the harness gives up on it (a lock held
 * by a live process, or a reader that never leaves). */
#define STEPS 3
#define SLICE_NS 1000000ull

/* Write `size` bytes as a new shm object `name`; 0 or -1. */
static int
write_image(const char *name, const uint8_t *data, size_t size)
{
    char shm_name[STX_NAME_MAX + 2];
    snprintf(shm_name, sizeof(shm_name), "/%s", name);
    int fd = shm_open(shm_name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) {
        return -1;
    }
    int rc = ftruncate(fd, (off_t)size);
    for (size_t done = 0; rc == 0 && done < size;) {
        ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
        rc = n > 0 ? 0 : -1;
        done += n > 0 ? (size_t)n : 0;
    }
    close(fd);
    return rc;
}

/* Open `txn` with a few short wait slices; 0 once open, else the code
 * (the txn is then not open). */
static int
open_txn(stx_txn *txn, stx_segment *seg, int write)
{
    int rc = stx_txn_init(txn, seg, write);
    for (int i = 0; rc == 0 && i < STEPS; i++) {
        rc = stx_txn_step(txn, SLICE_NS);
        if (rc == 0) {
            return 0;
        }
        rc = rc == STX_EAGAIN ? 0 : rc;
    }
    if (txn->state != STX_TXN_IDLE && txn->state != STX_TXN_OPEN) {
        stx_txn_cancel(txn);
    }
    return rc != 0 ? rc : STX_EAGAIN;
}

/* A key of the dict of `seg` made of `len` bytes at `bytes`. */
static stx_key
key_of(const stx_segment *seg, const void *bytes, uint32_t len)
{
    stx_key key = {.bytes = bytes, .len = len, .kind = 0,
                   .hash = stx_siphash13(seg->hdr->hash_key, bytes, len)};
    return key;
}

/* Lock-free and locked reads of a slots segment's data. */
static void
read_slots(stx_segment *seg)
{
    uint8_t buf[256];
    uint64_t n = seg->data_size < sizeof(buf) ? seg->data_size : sizeof(buf);
    stx_seqlock_read(seg, 0, buf, n);
    if (seg->data_size >= 8) {
        stx_seqlock_read(seg, seg->data_size - 8, buf, 8);
        stx_seqlock_read(seg, (seg->data_size / 2) & ~7ull, buf, 8);
    }
    uint64_t seq;
    if (stx_seq_begin(seg, &seq) == 0) {
        stx_load_relaxed(buf, seg->data, n);
        stx_seq_still(seg, seq);
    }
    stx_txn txn = {0};
    if (open_txn(&txn, seg, 0) == 0) {
        uint8_t sink[4096];
        for (uint64_t at = 0; at < seg->data_size; at += sizeof(sink)) {
            uint64_t len = seg->data_size - at;
            stx_read(&txn, at, sink, len < sizeof(sink) ? len : sizeof(sink));
        }
        stx_txn_end(&txn, 1);
    }
}

/* A write txn on a slots segment: committed, then one rolled back. */
static void
write_slots(stx_segment *seg)
{
    stx_logged cache[STX_LOGGED_CACHE] = {{0}};
    for (int commit = 1; commit >= 0; commit--) {
        stx_txn txn = {.logged = cache};
        if (open_txn(&txn, seg, 1) != 0) {
            return;
        }
        uint64_t v = 0x0123456789abcdefull + (uint64_t)commit;
        stx_write(&txn, 0, &v, seg->data_size < 8 ? seg->data_size : 8);
        if (seg->data_size > 24) {
            stx_write(&txn, 3, &v, 7);
            stx_write(&txn, seg->data_size - 9, &v, 8);
        }
        stx_txn_end(&txn, commit);
    }
}

/* Lookups, iteration, counts and verify of a dict; `found` keys are
 * looked up again by their bytes (copied: a writer may move them). */
static void
read_dict(stx_segment *seg)
{
    stx_dict_verify(seg);
    uint64_t count;
    stx_dict_count(seg, &count);
    stx_dict_stats stats;
    stx_dict_stats_get(seg, &stats);
    static const char *const probes[] = {"k1", "k2", "big", "new", "s", ""};
    enum { NPROBES = sizeof(probes) / sizeof(probes[0]) };
    stx_key keys[NPROBES];
    for (size_t i = 0; i < NPROBES; i++) {
        keys[i] = key_of(seg, probes[i], (uint32_t)strlen(probes[i]));
        stx_found f;
        stx_dict_prefetch(seg, &keys[i]);
        stx_dict_lookup(seg, &keys[i], &f);
    }
    stx_found many[NPROBES];
    int rcs[NPROBES];
    stx_dict_lookup_many(seg, keys, NPROBES, many, rcs);
    uint64_t pos = 0;
    stx_found f;
    for (int n = 0; n < 512 && stx_dict_next(seg, &pos, &f) == 0; n++) {
        uint8_t copy[64];
        uint32_t len = f.key_len < sizeof(copy) ? f.key_len : sizeof(copy);
        stx_load_relaxed(copy, f.key, len);
        stx_key key = key_of(seg, copy, len);
        stx_found g;
        stx_dict_lookup(seg, &key, &g);
    }
}

/* Put, replace and delete in a dict write txn: committed, then rolled
 * back. */
static void
write_dict(stx_segment *seg)
{
    stx_logged cache[STX_LOGGED_CACHE] = {{0}};
    for (int commit = 1; commit >= 0; commit--) {
        stx_txn txn = {.logged = cache};
        stx_dict_txn dt = {.txn = &txn};
        if (open_txn(&txn, seg, 1) != 0) {
            return;
        }
        uint8_t value[300];
        memset(value, 'v', sizeof(value));
        stx_value small = {.bytes = value, .len = 5, .tag = 'b'};
        stx_value large = {.bytes = value, .len = sizeof(value), .tag = 'b'};
        stx_key fresh = key_of(seg, "fuzz", 4);
        stx_key k1 = key_of(seg, "k1", 2);
        stx_key k2 = key_of(seg, "k2", 2);
        int rc = stx_dict_put(&dt, &fresh, &small);
        rc = rc ? rc : stx_dict_put(&dt, &k1, &large);
        if (rc == 0) {
            stx_dict_delete(&dt, &k2);
        }
        rc = rc ? rc : stx_dict_flush(&dt);
        stx_txn_end(&txn, commit && rc == 0);
        stx_dict_txn_reset(&dt);
    }
}

/* FNV-1a 64 of `n` bytes: the header checksum (segment.c's, over the
 * bytes from after the magic to the checksum field). */
static uint64_t
fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ p[i]) * 0x100000001b3ull;
    }
    return h;
}

/* 1 if the image's header checksum does not match its bytes. */
static int
checksum_wrong(const uint8_t *data, size_t size)
{
    size_t from = offsetof(stx_header, version), to = STX_CHECKSUMMED_BYTES;
    uint64_t stored;
    if (size < to + sizeof(stored)) {
        return 0;
    }
    memcpy(&stored, data + to, sizeof(stored));
    return stored != fnv1a(data + from, to - from);
}

/* Write the image to a fresh name, use it every way, remove it. */
static void
use_image(const uint8_t *data, size_t size)
{
    static unsigned long n;
    char name[64];
    snprintf(name, sizeof(name), "stxfz_%d_%lu", (int)getpid(), n++);
    if (write_image(name, data, size) != 0) {
        stx_unlink(name, 0, 0);
        return;
    }
    stx_segment seg;
    int state;
    if (stx_probe(&seg, name, &state) == 0 && state == STX_PROBE_READY) {
        stx_close(&seg);
    }
    if (stx_attach(&seg, name, 0, 0, 0) == 0) {
        stx_check_recoverable(&seg);
        if (seg.hdr->layout_kind == STX_LAYOUT_DICT) {
            read_dict(&seg);           /* lock-free, before recovery */
        }
        read_slots(&seg);              /* the read txn recovers */
        stx_undo_validate(&seg);
        if (seg.hdr->layout_kind == STX_LAYOUT_DICT) {
            read_dict(&seg);
            write_dict(&seg);
            read_dict(&seg);
        }
        else {
            write_slots(&seg);
            read_slots(&seg);
        }
        stx_close(&seg);
    }
    if (stx_attach(&seg, name, 1, 0, 0) == 0) { /* read-only */
        read_slots(&seg);
        stx_close(&seg);
    }
    stx_unlink(name, 0, 0);
}

/* Run one image through the engine: as it is, and if its header no
 * longer matches its checksum, once more with the checksum made right,
 * so that damage to the header gets past the checksum too. */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (stx_engine_init() != 0) {
        abort();
    }
    use_image(data, size);
    if (checksum_wrong(data, size)) {
        uint8_t *fixed = malloc(size);
        if (fixed == NULL) {
            abort();
        }
        memcpy(fixed, data, size);
        size_t from = offsetof(stx_header, version);
        uint64_t sum = fnv1a(fixed + from, STX_CHECKSUMMED_BYTES - from);
        memcpy(fixed + STX_CHECKSUMMED_BYTES, &sum, sizeof(sum));
        use_image(fixed, size);
        free(fixed);
    }
    return 0;
}

#ifdef STX_FUZZ_REPLAY
/* Replay the file at `path` as one input; 0, or -1 if unreadable. */
static int
replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return -1;
    }
    size_t cap = 1 << 16, size = 0;
    uint8_t *buf = malloc(cap);
    for (size_t got; buf != NULL
                     && (got = fread(buf + size, 1, cap - size, f)) > 0;) {
        size += got;
        if (size == cap) {
            cap *= 2;
            uint8_t *grown = realloc(buf, cap);
            if (grown == NULL) {
                free(buf);
            }
            buf = grown;
        }
    }
    fclose(f);
    if (buf == NULL) {
        return -1;
    }
    printf("replay %s (%zu bytes)\n", path, size);
    fflush(stdout);
    LLVMFuzzerTestOneInput(buf, size);
    free(buf);
    return 0;
}

/* Replay every file named, and every file in every directory named. */
int
main(int argc, char **argv)
{
    int replayed = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "cannot read %s\n", argv[i]);
            return 2;
        }
        if (!S_ISDIR(st.st_mode)) {
            replayed += replay_file(argv[i]) == 0;
            continue;
        }
        struct dirent **names;
        int n = scandir(argv[i], &names, NULL, alphasort);
        for (int j = 0; j < n; j++) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], names[j]->d_name);
            if (names[j]->d_name[0] != '.' && stat(path, &st) == 0
                && S_ISREG(st.st_mode)) {
                replayed += replay_file(path) == 0;
            }
            free(names[j]);
        }
        free(n >= 0 ? names : NULL);
    }
    printf("replayed %d inputs\n", replayed);
    return 0;
}
#endif
