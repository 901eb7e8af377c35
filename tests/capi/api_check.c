/*
 * api_check.c -- the public C API tested from C (tests/test_c_api.py and
 * tests/test_key_encoding.py build and run it).
 *
 *   api_check errors PREFIX   the error paths, on segments named PREFIX_*
 *                             (all unlinked again); prints "ok NAME" or
 *                             "FAIL NAME: ..." per check
 *   api_check keys DICT       reads keys (one a line, tokens below) from
 *                             stdin, builds each with the key builder and
 *                             prints its bytes, looks each up in DICT, and
 *                             lists DICT's entries decoded
 *
 * Key tokens: s:HEX (UTF-8) b:HEX i:DECIMAL I:HEX (two's complement LE)
 * f:HEX (the 8 bytes of a double) T F n, and ( ... ) around a tuple.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shmtxn.h"

static int failures;
static char prefix[200];

/* Report check `name`: `got` should be `want`. */
static void
expect(const char *name, int got, int want)
{
    if (got == want) {
        printf("ok %s\n", name);
    }
    else {
        failures++;
        printf("FAIL %s: got %d (%s), want %d (%s); detail: %s\n", name, got,
               shmtxn_strerror(got), want, shmtxn_strerror(want),
               shmtxn_detail());
    }
    fflush(stdout);
}

/* PREFIX_suffix, in a static buffer per call site's `buf`. */
static const char *
seg_name(char *buf, size_t size, const char *suffix)
{
    snprintf(buf, size, "%s_%s", prefix, suffix);
    return buf;
}

/* A new slots segment of `n` int64 items (format `fmt`) or abort. */
static shmtxn_seg *
make_slots(const char *name, const char *fmt, uint64_t n, uint64_t undo)
{
    shmtxn_create_opts o = {.struct_size = sizeof(o),
                            .layout = SHMTXN_LAYOUT_SLOTS, .format = fmt,
                            .size = n * (fmt && fmt[0] == 'b' ? 1 : 8),
                            .undo_size = undo};
    shmtxn_seg *seg = NULL;
    int rc = shmtxn_create(name, &o, &seg);
    if (rc != 0) {
        printf("FAIL setup %s: %s (%s)\n", name, shmtxn_strerror(rc),
               shmtxn_detail());
        exit(1);
    }
    return seg;
}

/* Close and unlink. */
static void
drop(shmtxn_seg *seg)
{
    shmtxn_seg_unlink(seg);
    shmtxn_close(seg);
}

/* ------------------------------------------------------------------ */
/* error paths                                                         */

static void
check_names(void)
{
    shmtxn_seg *seg = (shmtxn_seg *)1;
    char long_name[300];
    memset(long_name, 'x', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    expect("bad_name_slash", shmtxn_attach("a/b", NULL, &seg), EINVAL);
    expect("bad_name_handle_cleared", seg == NULL, 1);
    expect("bad_name_empty", shmtxn_attach("", NULL, &seg), EINVAL);
    expect("bad_name_long", shmtxn_attach(long_name, NULL, &seg), EINVAL);
    expect("bad_name_null", shmtxn_attach(NULL, NULL, &seg), EINVAL);
    shmtxn_create_opts o = {.struct_size = sizeof(o), .size = 8};
    expect("bad_name_create", shmtxn_create("x/y", &o, &seg), EINVAL);
}

static void
check_missing_and_existing(void)
{
    char n[256];
    shmtxn_seg *seg;
    expect("missing_segment",
           shmtxn_attach(seg_name(n, sizeof(n), "missing"), NULL, &seg),
           ENOENT);
    expect("missing_unlink", shmtxn_unlink(n), ENOENT);
    shmtxn_seg *made = make_slots(seg_name(n, sizeof(n), "exists"), NULL, 4,
                                  0);
    shmtxn_create_opts o = {.struct_size = sizeof(o), .size = 32};
    expect("create_existing", shmtxn_create(n, &o, &seg), EEXIST);
    char slashed[260];
    snprintf(slashed, sizeof(slashed), "/%s", n);
    expect("attach_with_slash", shmtxn_attach(slashed, NULL, &seg), 0);
    shmtxn_close(seg);
    drop(made);
}

static void
check_options(void)
{
    char n[256];
    shmtxn_seg *seg;
    shmtxn_create_opts o = {.struct_size = 3, .size = 8};
    seg_name(n, sizeof(n), "opts");
    expect("opts_struct_size_small", shmtxn_create(n, &o, &seg), EINVAL);
    struct {
        shmtxn_create_opts o;
        uint64_t future;
    } newer = {{.struct_size = sizeof(newer), .size = 8}, 1};
    expect("opts_unknown_field", shmtxn_create(n, &newer.o, &seg), EINVAL);
    newer.future = 0; /* a newer caller that leaves its new field zero */
    expect("opts_newer_zeroed", shmtxn_create(n, &newer.o, &seg), 0);
    drop(seg);
    o = (shmtxn_create_opts){.struct_size = sizeof(o), .size = 12};
    expect("opts_size_not_multiple", shmtxn_create(n, &o, &seg), EINVAL);
    o.size = 0;
    expect("opts_size_zero", shmtxn_create(n, &o, &seg), EINVAL);
    o = (shmtxn_create_opts){.struct_size = sizeof(o), .size = 8,
                             .format = "z"};
    expect("opts_bad_format", shmtxn_create(n, &o, &seg), EINVAL);
    o = (shmtxn_create_opts){.struct_size = sizeof(o), .size = 8,
                             .mode = 0400};
    expect("opts_bad_mode", shmtxn_create(n, &o, &seg), EINVAL);
    o = (shmtxn_create_opts){.struct_size = sizeof(o), .layout = 7};
    expect("opts_bad_layout", shmtxn_create(n, &o, &seg), EINVAL);
    uint64_t shape[2] = {2, 3};
    o = (shmtxn_create_opts){.struct_size = sizeof(o), .format = "d",
                             .ndim = 2, .shape = shape};
    expect("opts_shape", shmtxn_create(n, &o, &seg), 0);
    shmtxn_info info = {.struct_size = sizeof(info)};
    shmtxn_info_get(seg, &info);
    expect("info_shape", info.ndim == 2 && info.shape[1] == 3
                         && info.nitems == 6 && info.size == 48
                         && strcmp(info.format, "d") == 0
                         && info.layout == SHMTXN_LAYOUT_SLOTS, 1);
    drop(seg);
}

static void
check_layouts(void)
{
    char n[256];
    shmtxn_seg *seg, *dict;
    shmtxn_create_opts o = {.struct_size = sizeof(o),
                            .layout = SHMTXN_LAYOUT_DICT, .size = 1 << 20};
    expect("create_dict",
           shmtxn_create(seg_name(n, sizeof(n), "dict"), &o, &dict), 0);
    shmtxn_attach_opts a = {.struct_size = sizeof(a),
                            .layout = SHMTXN_LAYOUT_SLOTS};
    expect("wrong_layout", shmtxn_attach(n, &a, &seg), SHMTXN_INCOMPAT);
    a.layout = SHMTXN_LAYOUT_ANY;
    expect("any_layout", shmtxn_attach(n, &a, &seg), 0);
    shmtxn_close(seg);

    shmtxn_txn *txn;
    int64_t v;
    shmtxn_txn_begin(dict, SHMTXN_WRITE, 1000, &txn);
    expect("slot_op_on_dict", shmtxn_put_int(txn, 0, 1), SHMTXN_INCOMPAT);
    expect("raw_write_on_dict", shmtxn_write(txn, 0, &v, 8),
           SHMTXN_INCOMPAT);
    shmtxn_txn_abort(txn);
    expect("load_on_dict", shmtxn_load_int(dict, 0, &v), SHMTXN_INCOMPAT);

    shmtxn_seg *slots = make_slots(seg_name(n, sizeof(n), "slots"), NULL, 2,
                                   0);
    shmtxn_key *key = shmtxn_key_new();
    shmtxn_key_int(key, 1);
    shmtxn_entry e;
    shmtxn_txn_begin(slots, SHMTXN_READ, 1000, &txn);
    expect("dict_op_on_slots", shmtxn_dict_get(txn, key, &e),
           SHMTXN_INCOMPAT);
    shmtxn_txn_abort(txn);
    shmtxn_key_free(key);
    drop(slots);
    drop(dict);

    /* a dict of the default size is mostly holes: attaching it with
     * populate prefaults what is backed and never fills the holes */
    shmtxn_create_opts d0 = {.struct_size = sizeof(d0),
                             .layout = SHMTXN_LAYOUT_DICT};
    shmtxn_seg *grow;
    expect("create_default_dict",
           shmtxn_create(seg_name(n, sizeof(n), "grow"), &d0, &grow), 0);
    a.populate = 1;
    expect("attach_populate_dict", shmtxn_attach(n, &a, &seg), 0);
    char path[512];
    const char *dir = getenv("SHMTXN_SHM_DIR");
    snprintf(path, sizeof(path), "%s/%s", dir && dir[0] ? dir : "/dev/shm",
             n);
    struct stat st;
    expect("populate_keeps_holes", stat(path, &st) == 0
           && (uint64_t)st.st_blocks * 512 < (16u << 20), 1);
    shmtxn_close(seg);
    drop(grow);
}

/* A thread that tries to begin a txn while the main thread holds one. */
typedef struct contender {
    shmtxn_seg *seg;
    int flags;
    int rc;
} contender;

/* Try to begin c->flags on c->seg within 50 ms; keep the result. */
static void *
contend(void *arg)
{
    contender *c = arg;
    shmtxn_txn *txn = NULL;
    c->rc = shmtxn_txn_begin(c->seg, c->flags, 50, &txn);
    shmtxn_txn_abort(txn);
    return NULL;
}

/* Run contend() in a thread and return its result. */
static int
contend_from_thread(shmtxn_seg *seg, int flags)
{
    contender c = {seg, flags, -1};
    pthread_t t;
    pthread_create(&t, NULL, contend, &c);
    pthread_join(t, NULL);
    return c.rc;
}

/* A write txn begun and written by a thread that then ends. */
static void *
write_and_vanish(void *arg)
{
    shmtxn_txn *txn = NULL;
    if (shmtxn_txn_begin(arg, SHMTXN_WRITE, 1000, &txn) == 0) {
        shmtxn_put_int(txn, 0, 666); /* never committed */
    }
    return txn;
}

/* A thread's attempt to abort the main thread's write txn. */
static void *
abort_foreign(void *arg)
{
    return (void *)(intptr_t)shmtxn_txn_abort(arg);
}

static void
check_txns(void)
{
    char n[256];
    shmtxn_seg *seg = make_slots(seg_name(n, sizeof(n), "txns"), NULL, 4, 0);
    shmtxn_txn *w, *r;
    expect("begin_write", shmtxn_txn_begin(seg, SHMTXN_WRITE, 1000, &w), 0);
    expect("nested", shmtxn_txn_begin(seg, SHMTXN_READ, 1000, &r),
           SHMTXN_NESTED);
    expect("timeout_write", contend_from_thread(seg, SHMTXN_WRITE),
           SHMTXN_TIMEOUT);
    expect("timeout_read", contend_from_thread(seg, SHMTXN_READ),
           SHMTXN_TIMEOUT);
    expect("close_busy", shmtxn_close(seg), SHMTXN_BUSY);
    int64_t v;
    expect("load_inside_own_txn", shmtxn_load_int(seg, 0, &v),
           SHMTXN_NESTED);
    pthread_t t;
    void *res;
    pthread_create(&t, NULL, abort_foreign, w);
    pthread_join(t, &res);
    expect("abort_other_threads_write", (int)(intptr_t)res, EINVAL);
    expect("range_get", shmtxn_get_int(w, 4, &v), ERANGE);
    expect("range_write", shmtxn_write(w, 30, &v, 8), ERANGE);
    expect("put", shmtxn_put_int(w, 1, 41), 0);
    expect("abort", shmtxn_txn_abort(w), 0);
    expect("aborted_put_gone", shmtxn_load_int(seg, 1, &v) == 0 && v == 0,
           1);
    expect("begin_read", shmtxn_txn_begin(seg, SHMTXN_READ, 1000, &r), 0);
    expect("timeout_write_vs_reader", contend_from_thread(seg, SHMTXN_WRITE),
           SHMTXN_TIMEOUT);
    expect("read_txn_write", shmtxn_put_int(r, 0, 1), SHMTXN_READONLY);
    expect("read_txn_still_usable", shmtxn_get_int(r, 0, &v), 0);
    expect("commit_read", shmtxn_txn_commit(r), 0);

    pthread_create(&t, NULL, write_and_vanish, seg);
    pthread_join(t, &res);
    expect("thread_end_rolled_back",
           shmtxn_load_int(seg, 0, &v) == 0 && v == 0, 1);
    expect("after_thread_end_begin",
           shmtxn_txn_begin(seg, SHMTXN_WRITE, 1000, &w), 0);
    shmtxn_txn_commit(w);
    expect("after_thread_end_abort", shmtxn_txn_abort(res), 0);

    shmtxn_attach_opts a = {.struct_size = sizeof(a), .read_only = 1};
    shmtxn_seg *ro;
    expect("attach_read_only", shmtxn_attach(n, &a, &ro), 0);
    expect("read_only_write_txn",
           shmtxn_txn_begin(ro, SHMTXN_WRITE, 1000, &w), SHMTXN_READONLY);
    expect("read_only_load", shmtxn_load_int(ro, 0, &v), 0);
    shmtxn_close(ro);
    drop(seg);
}

static void
check_typed_items(void)
{
    char n[256];
    shmtxn_seg *seg = make_slots(seg_name(n, sizeof(n), "bytes"), "b", 4, 0);
    shmtxn_txn *w;
    int64_t v;
    double d;
    shmtxn_txn_begin(seg, SHMTXN_WRITE, 1000, &w);
    expect("int8_overflow", shmtxn_put_int(w, 0, 128), ERANGE);
    expect("int8_min", shmtxn_put_int(w, 1, -128), 0);
    expect("int8_read_back", shmtxn_get_int(w, 1, &v) == 0 && v == -128, 1);
    expect("double_on_int_format", shmtxn_get_double(w, 0, &d),
           SHMTXN_INCOMPAT);
    expect("usable_after_misuse", shmtxn_txn_commit(w), 0);
    drop(seg);

    seg = make_slots(seg_name(n, sizeof(n), "floats"), "f", 2, 0);
    shmtxn_txn_begin(seg, SHMTXN_WRITE, 1000, &w);
    expect("float_overflow", shmtxn_put_double(w, 0, 1e300), ERANGE);
    expect("float_put", shmtxn_put_double(w, 0, 1.5), 0);
    expect("int_on_float_format", shmtxn_put_int(w, 0, 1), SHMTXN_INCOMPAT);
    shmtxn_txn_commit(w);
    expect("float_load", shmtxn_load_double(seg, 0, &d) == 0 && d == 1.5, 1);
    drop(seg);
}

static void
check_too_large(void)
{
    char n[256];
    /* 4096 items but an undo log of one page */
    shmtxn_seg *seg = make_slots(seg_name(n, sizeof(n), "big"), NULL, 4096,
                                 4096);
    shmtxn_txn *w;
    int rc = 0;
    shmtxn_txn_begin(seg, SHMTXN_WRITE, 1000, &w);
    for (uint64_t i = 0; i < 4096 && rc == 0; i += 2) {
        rc = shmtxn_put_int(w, i, 7); /* every other: no merged ranges */
    }
    expect("too_large", rc, SHMTXN_TOOLARGE);
    expect("bad_txn_after", shmtxn_put_int(w, 1, 1), SHMTXN_BAD_TXN);
    expect("bad_txn_commit", shmtxn_txn_commit(w), SHMTXN_BAD_TXN);
    int64_t v;
    expect("too_large_rolled_back", shmtxn_load_int(seg, 0, &v) == 0
                                    && v == 0, 1);
    expect("begin_after_too_large",
           shmtxn_txn_begin(seg, SHMTXN_WRITE, 1000, &w), 0);
    shmtxn_txn_abort(w);
    drop(seg);
}

static void
check_fork(void)
{
    char n[256];
    shmtxn_seg *seg = make_slots(seg_name(n, sizeof(n), "fork"), NULL, 2, 0);
    shmtxn_txn *w;
    shmtxn_txn_begin(seg, SHMTXN_WRITE, 1000, &w);
    shmtxn_put_int(w, 0, 5);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        /* the child: the parent's txn is not ours; the handle is */
        int ok = shmtxn_put_int(w, 1, 9) == SHMTXN_FORKED
                 && shmtxn_txn_abort(w) == 0;
        _exit(ok ? 0 : 1);
    }
    int status = -1;
    waitpid(pid, &status, 0);
    expect("forked_txn", WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
    expect("parent_txn_still_good", shmtxn_txn_commit(w), 0);
    pid = fork();
    if (pid == 0) {
        int64_t v;
        shmtxn_txn *t;
        int ok = shmtxn_load_int(seg, 0, &v) == 0 && v == 5
                 && shmtxn_txn_begin(seg, SHMTXN_WRITE, 1000, &t) == 0
                 && shmtxn_put_int(t, 1, 6) == 0
                 && shmtxn_txn_commit(t) == 0;
        _exit(ok ? 0 : 1);
    }
    waitpid(pid, &status, 0);
    expect("child_uses_handle", WIFEXITED(status) ? WEXITSTATUS(status) : -1,
           0);
    int64_t v;
    expect("child_write_seen", shmtxn_load_int(seg, 1, &v) == 0 && v == 6,
           1);
    drop(seg);
}

static void
check_dict_errors(void)
{
    char n[256];
    shmtxn_seg *dict;
    shmtxn_create_opts o = {.struct_size = sizeof(o),
                            .layout = SHMTXN_LAYOUT_DICT, .size = 1 << 20};
    shmtxn_create(seg_name(n, sizeof(n), "dict2"), &o, &dict);
    shmtxn_key *key = shmtxn_key_new();
    shmtxn_key_str(key, "k", 1);
    shmtxn_txn *w;
    shmtxn_entry e;
    int tag;
    size_t len;
    char buf[4];
    shmtxn_txn_begin(dict, SHMTXN_WRITE, 1000, &w);
    expect("dict_get_missing", shmtxn_dict_get(w, key, &e), SHMTXN_NOTFOUND);
    expect("dict_del_missing", shmtxn_dict_del(w, key), SHMTXN_NOTFOUND);
    expect("dict_bad_tag", shmtxn_dict_put(w, key, 'x', "", 0), EINVAL);
    expect("dict_int_len", shmtxn_dict_put(w, key, SHMTXN_VAL_INT, "abcd", 4),
           EINVAL);
    expect("dict_none_len", shmtxn_dict_put(w, key, SHMTXN_VAL_NONE, "a", 1),
           EINVAL);
    expect("dict_str_not_utf8",
           shmtxn_dict_put(w, key, SHMTXN_VAL_STR, "\xff", 1), EINVAL);
    expect("dict_put", shmtxn_dict_put(w, key, SHMTXN_VAL_STR, "hello", 5),
           0);
    expect("dict_commit", shmtxn_txn_commit(w), 0);
    expect("dict_load_small_buffer",
           shmtxn_dict_load(dict, key, &tag, buf, sizeof(buf), &len),
           ENOBUFS);
    expect("dict_load_says_length", len == 5 && tag == SHMTXN_VAL_STR, 1);

    shmtxn_key *bad = shmtxn_key_new();
    expect("key_not_utf8", shmtxn_key_str(bad, "\xc0\x80", 2), EINVAL);
    expect("key_poisoned", shmtxn_key_int(bad, 1), EINVAL);
    shmtxn_key_reset(bad);
    shmtxn_key_tuple_begin(bad);
    shmtxn_key_int(bad, 1);
    expect("key_open_tuple",
           shmtxn_dict_load(dict, bad, &tag, buf, sizeof(buf), &len), EINVAL);
    shmtxn_key_reset(bad);
    expect("key_empty",
           shmtxn_dict_load(dict, bad, &tag, buf, sizeof(buf), &len), EINVAL);
    shmtxn_key_int(bad, 1);
    expect("key_two_values", shmtxn_key_int(bad, 2), EINVAL);
    shmtxn_key_reset(bad);
    int rc = 0;
    for (int i = 0; i < 33 && rc == 0; i++) {
        rc = shmtxn_key_tuple_begin(bad);
    }
    expect("key_too_deep", rc, EINVAL);
    shmtxn_key_reset(bad);
    expect("key_tuple_end_unopened", shmtxn_key_tuple_end(bad), EINVAL);
    shmtxn_key_free(bad);

    shmtxn_key_value kv;
    expect("decode_bad_type", shmtxn_key_decode("z", 1, 0, &kv),
           SHMTXN_CORRUPT);
    expect("decode_short_int", shmtxn_key_decode("i\1\2", 3, 0, &kv),
           SHMTXN_CORRUPT);
    expect("decode_kind_on_str", shmtxn_key_decode("sab", 3, 1, &kv),
           SHMTXN_CORRUPT);
    static const char tuple[] = "t\x0a\0\0\0i\1\0\0\0\0\0\0\0";
    expect("decode_tuple_past_end",
           shmtxn_key_decode(tuple, sizeof(tuple) - 1, 0, &kv), 0);
    size_t pos = 0;
    shmtxn_key_value elem;
    expect("tuple_element_past_end", shmtxn_key_tuple_next(&kv, &pos, &elem),
           SHMTXN_CORRUPT);
    shmtxn_key_free(key);
    drop(dict);
}

static void
check_strerror(void)
{
    int distinct = 1;
    for (int c = SHMTXN_ERRCODE_FIRST; c >= SHMTXN_ERRCODE_LAST; c--) {
        const char *s = shmtxn_strerror(c);
        distinct &= strstr(s, "unknown") == NULL;
        for (int d = c + 1; d <= SHMTXN_ERRCODE_FIRST; d++) {
            distinct &= strcmp(s, shmtxn_strerror(d)) != 0;
        }
    }
    expect("strerror_every_code", distinct, 1);
    expect("strerror_errno", strcmp(shmtxn_strerror(ENOENT),
                                    strerror(ENOENT)) == 0, 1);
    int major = -1;
    expect("version", strcmp(shmtxn_version(&major, NULL, NULL),
                             SHMTXN_VERSION_STRING) == 0
                      && major == SHMTXN_VERSION_MAJOR, 1);
}

/* ------------------------------------------------------------------ */
/* keys from stdin                                                     */

/* `hex` as bytes into `out` (room for strlen/2); their number. */
static size_t
unhex(const char *hex, uint8_t *out)
{
    size_t n = 0;
    for (; hex[0] && hex[1]; hex += 2) {
        unsigned b;
        sscanf(hex, "%2x", &b);
        out[n++] = (uint8_t)b;
    }
    return n;
}

/* Build the key that the tokens of `line` describe; 0 or the error. */
static int
build_key(shmtxn_key *key, char *line)
{
    static uint8_t bytes[1 << 16];
    int rc = 0;
    for (char *tok = strtok(line, " \n"); tok && rc == 0;
         tok = strtok(NULL, " \n")) {
        size_t n = tok[1] == ':' ? unhex(tok + 2, bytes) : 0;
        double d;
        switch (tok[0]) {
        case 's': rc = shmtxn_key_str(key, (char *)bytes, n); break;
        case 'b': rc = shmtxn_key_bytes(key, bytes, n); break;
        case 'i': rc = shmtxn_key_int(key, strtoll(tok + 2, NULL, 10));
            break;
        case 'I': rc = shmtxn_key_bigint(key, bytes, n); break;
        case 'f':
            memcpy(&d, bytes, 8);
            rc = shmtxn_key_double(key, d);
            break;
        case 'T': rc = shmtxn_key_bool(key, 1); break;
        case 'F': rc = shmtxn_key_bool(key, 0); break;
        case 'n': rc = shmtxn_key_none(key); break;
        case '(': rc = shmtxn_key_tuple_begin(key); break;
        case ')': rc = shmtxn_key_tuple_end(key); break;
        default: rc = -1;
        }
    }
    return rc;
}

/* Print `n` bytes as hex. */
static void
print_hex(const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        printf("%02x", ((const uint8_t *)p)[i]);
    }
}

/* Print a decoded key value as tokens. */
static void
print_tokens(const shmtxn_key_value *v)
{
    size_t pos = 0;
    shmtxn_key_value elem;
    switch (v->type) {
    case SHMTXN_KEY_STR: printf("s:"); print_hex(v->data, v->len); break;
    case SHMTXN_KEY_BYTES: printf("b:"); print_hex(v->data, v->len); break;
    case SHMTXN_KEY_INT: printf("i:%lld", (long long)v->i); break;
    case SHMTXN_KEY_BIGINT: printf("I:"); print_hex(v->data, v->len); break;
    case SHMTXN_KEY_FLOAT: printf("f:"); print_hex(&v->d, 8); break;
    case SHMTXN_KEY_BOOL: printf(v->i ? "T" : "F"); break;
    case SHMTXN_KEY_NONE: printf("n"); break;
    case SHMTXN_KEY_TUPLE:
        printf("(");
        while (shmtxn_key_tuple_next(v, &pos, &elem) == 0) {
            printf(" ");
            print_tokens(&elem);
        }
        printf(" )");
        break;
    }
}

static int
run_keys(const char *dict_name)
{
    shmtxn_seg *dict;
    shmtxn_attach_opts a = {.struct_size = sizeof(a),
                            .layout = SHMTXN_LAYOUT_DICT};
    if (shmtxn_attach(dict_name, &a, &dict) != 0) {
        printf("attach failed: %s\n", shmtxn_detail());
        return 1;
    }
    shmtxn_key *key = shmtxn_key_new();
    shmtxn_txn *txn;
    shmtxn_txn_begin(dict, SHMTXN_READ, SHMTXN_FOREVER, &txn);
    static char line[1 << 18];
    for (int i = 0; fgets(line, sizeof(line), stdin) != NULL; i++) {
        shmtxn_key_reset(key);
        int rc = build_key(key, line);
        size_t len;
        int kind;
        const void *data = rc == 0 ? shmtxn_key_data(key, &len, &kind, &rc)
                                   : NULL;
        if (data == NULL) {
            printf("key %d error %d\n", i, rc);
            continue;
        }
        printf("key %d ", i);
        print_hex(data, len);
        printf(" %d\n", kind);
        shmtxn_entry e;
        int64_t v = -1;
        rc = shmtxn_dict_get(txn, key, &e);
        if (rc == 0 && e.tag == SHMTXN_VAL_INT) {
            memcpy(&v, e.value, 8);
        }
        printf("get %d %d %lld\n", i, rc, (long long)v);
    }
    uint64_t pos = 0;
    shmtxn_entry e;
    while (shmtxn_dict_next(txn, &pos, &e) == 0) {
        int64_t v = -1;
        shmtxn_key_value kv;
        if (e.tag == SHMTXN_VAL_INT) {
            memcpy(&v, e.value, 8);
        }
        printf("entry %lld ", (long long)v);
        print_hex(e.key, e.key_len);
        printf(" %d ", e.key_kind);
        if (shmtxn_key_decode(e.key, e.key_len, e.key_kind, &kv) == 0) {
            print_tokens(&kv);
        }
        printf("\n");
    }
    shmtxn_txn_commit(txn);
    shmtxn_key_free(key);
    shmtxn_close(dict);
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "keys") == 0) {
        return run_keys(argv[2]);
    }
    if (argc != 3 || strcmp(argv[1], "errors") != 0) {
        fprintf(stderr, "usage: %s errors PREFIX | keys DICT\n", argv[0]);
        return 2;
    }
    snprintf(prefix, sizeof(prefix), "%s", argv[2]);
    check_names();
    check_missing_and_existing();
    check_options();
    check_layouts();
    check_txns();
    check_typed_items();
    check_too_large();
    check_fork();
    check_dict_errors();
    check_strerror();
    printf("done, %d failure(s)\n", failures);
    return failures != 0;
}
