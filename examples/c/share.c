/*
 * share.c -- a C program sharing two segments with Python.
 *
 * A Python process creates them:
 *
 *     from shmtxn import SharedMemory, SharedDict
 *     shr = SharedMemory("demo_slots", create=True, size=5 * 8)  # int64
 *     d = SharedDict("demo_dict", create=True)
 *     with shr.txn() as t:
 *         t[0:5] = [1, 2, 3, 4, 5]
 *     d["greeting"] = "hello from Python"
 *     d[("point", 1)] = 7
 *
 * and `./share demo_slots demo_dict` reads the slots in one read txn and
 * two dict values (one lock-free, one in a txn), then writes the sum of
 * the slots into the last slot and a str under the key "from_c" -- each
 * in a write txn -- and lists the dict.  Python then sees shr[4] == 15
 * and d["from_c"] == "hello from C".
 *
 * Build: see README.md (make, or one cc command).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shmtxn.h"

/* Print the failed call, the error and its detail; exit. */
static void
check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, shmtxn_strerror(rc),
                shmtxn_detail());
        exit(1);
    }
}

/* Print one decoded key value (a tuple recursively), Python-like. */
static void
print_key(const shmtxn_key_value *v)
{
    size_t pos = 0;
    shmtxn_key_value elem;
    switch (v->type) {
    case SHMTXN_KEY_STR:
        printf("'%.*s'", (int)v->len, (const char *)v->data);
        break;
    case SHMTXN_KEY_BYTES:
        printf("b<%zu bytes>", v->len);
        break;
    case SHMTXN_KEY_INT:
        printf("%lld", (long long)v->i);
        break;
    case SHMTXN_KEY_BOOL:
        printf(v->i ? "True" : "False");
        break;
    case SHMTXN_KEY_FLOAT:
        printf("%g", v->d);
        break;
    case SHMTXN_KEY_NONE:
        printf("None");
        break;
    case SHMTXN_KEY_TUPLE:
        printf("(");
        for (int n = 0; shmtxn_key_tuple_next(v, &pos, &elem) == 0; n++) {
            printf(n ? ", " : "");
            print_key(&elem);
        }
        printf(")");
        break;
    default:
        printf("<an int beyond 64 bits>");
    }
}

int
main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SLOTS_SEGMENT DICT_SEGMENT\n", argv[0]);
        return 2;
    }
    printf("shmtxn %s\n", shmtxn_version(NULL, NULL, NULL));

    /* --- slots: read them all in one read txn --- */
    shmtxn_attach_opts slots_opts = {.struct_size = sizeof(slots_opts),
                                     .layout = SHMTXN_LAYOUT_SLOTS};
    shmtxn_seg *slots;
    check(shmtxn_attach(argv[1], &slots_opts, &slots), "attach slots");
    shmtxn_info info = {.struct_size = sizeof(info)};
    check(shmtxn_info_get(slots, &info), "info");
    printf("slots: %llu items of format '%s':",
           (unsigned long long)info.nitems, info.format);

    shmtxn_txn *txn;
    int64_t sum = 0;
    check(shmtxn_txn_begin(slots, SHMTXN_READ, 1000, &txn), "begin read");
    for (uint64_t i = 0; i < info.nitems; i++) {
        int64_t v;
        check(shmtxn_get_int(txn, i, &v), "get_int");
        printf(" %lld", (long long)v);
        sum += v;
    }
    printf("\n");
    check(shmtxn_txn_commit(txn), "end read");

    /* --- slots: write the sum into the last slot --- */
    check(shmtxn_txn_begin(slots, SHMTXN_WRITE, 1000, &txn), "begin write");
    check(shmtxn_put_int(txn, info.nitems - 1, sum), "put_int");
    check(shmtxn_txn_commit(txn), "commit");
    int64_t last;
    check(shmtxn_load_int(slots, info.nitems - 1, &last), "load_int");
    printf("wrote the sum %lld into slot %llu\n", (long long)last,
           (unsigned long long)(info.nitems - 1));
    check(shmtxn_close(slots), "close slots");

    /* --- dict: a str value by key, lock-free --- */
    shmtxn_attach_opts dict_opts = {.struct_size = sizeof(dict_opts),
                                    .layout = SHMTXN_LAYOUT_DICT};
    shmtxn_seg *dict;
    check(shmtxn_attach(argv[2], &dict_opts, &dict), "attach dict");
    shmtxn_key *key = shmtxn_key_new();
    check(key ? 0 : 12, "key_new");
    check(shmtxn_key_str(key, "greeting", strlen("greeting")), "key");
    char buf[256];
    size_t len;
    int tag;
    check(shmtxn_dict_load(dict, key, &tag, buf, sizeof(buf), &len),
          "dict_load");
    if (tag == SHMTXN_VAL_STR) {
        printf("greeting: %.*s\n", (int)len, buf);
    }

    /* --- dict: an int under a tuple key, in a read txn --- */
    shmtxn_key_reset(key);
    shmtxn_key_tuple_begin(key);
    shmtxn_key_str(key, "point", 5);
    shmtxn_key_int(key, 1);
    check(shmtxn_key_tuple_end(key), "tuple key");
    shmtxn_entry entry;
    check(shmtxn_txn_begin(dict, SHMTXN_READ, 1000, &txn), "begin read");
    check(shmtxn_dict_get(txn, key, &entry), "dict_get");
    if (entry.tag == SHMTXN_VAL_INT) {
        int64_t v;
        memcpy(&v, entry.value, sizeof(v));
        printf("('point', 1): %lld\n", (long long)v);
    }
    check(shmtxn_txn_commit(txn), "end read");

    /* --- dict: store a str, in a write txn --- */
    static const char hello[] = "hello from C";
    shmtxn_key_reset(key);
    shmtxn_key_str(key, "from_c", 6);
    check(shmtxn_txn_begin(dict, SHMTXN_WRITE, 1000, &txn), "begin write");
    check(shmtxn_dict_put(txn, key, SHMTXN_VAL_STR, hello, strlen(hello)),
          "dict_put");
    check(shmtxn_txn_commit(txn), "commit");

    /* --- dict: list the keys --- */
    check(shmtxn_txn_begin(dict, SHMTXN_READ, 1000, &txn), "begin read");
    uint64_t count, pos = 0;
    check(shmtxn_dict_count(txn, &count), "count");
    printf("%llu keys:", (unsigned long long)count);
    while (shmtxn_dict_next(txn, &pos, &entry) == 0) {
        shmtxn_key_value k;
        check(shmtxn_key_decode(entry.key, entry.key_len, entry.key_kind,
                                &k), "decode");
        printf(" ");
        print_key(&k);
    }
    printf("\n");
    check(shmtxn_txn_commit(txn), "end read");

    shmtxn_key_free(key);
    check(shmtxn_close(dict), "close dict");
    return 0;
}
