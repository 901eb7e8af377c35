/*
 * unit.h -- checks and helpers for the engine's C unit tests
 * (tests/engine/unit_*.c, built and run by tests/test_engine_units.py).
 *
 * A test file defines `static void test_x(void)` functions and a main()
 * that calls UNIT_RUN(test_x) for each, then returns unit_report().  A
 * failed CHECK prints the file, line, expression and the engine's last
 * detail and counts; the program exits 1 if any check failed.
 *
 * Segment names are "stx_unit_<pid>_<n>": the pytest shim fails the run
 * if any name with this process's pid is left in /dev/shm.
 */
#ifndef STX_UNIT_H
#define STX_UNIT_H

#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine.h"
#include "dict/dict.h"
#include "seqlock.h"

static int unit_checks;
static int unit_failed;
static const char *unit_current = "";

/* Count one check; report it if it failed.  Returns `ok`. */
static inline int
unit_check(int ok, const char *what, const char *file, int line)
{
    unit_checks++;
    if (!ok) {
        unit_failed++;
        fprintf(stderr, "%s:%d: %s: CHECK(%s) failed (detail: %s)\n", file,
                line, unit_current, what, stx_detail());
    }
    return ok;
}

/* Check that `expr` holds. */
#define CHECK(expr) unit_check((expr) != 0, #expr, __FILE__, __LINE__)

/* Check that two integers are equal, printing both when they are not. */
#define CHECK_EQ(a, b)                                                    \
    do {                                                                  \
        long long unit_a_ = (long long)(a), unit_b_ = (long long)(b);     \
        if (!unit_check(unit_a_ == unit_b_, #a " == " #b, __FILE__,       \
                        __LINE__)) {                                      \
            fprintf(stderr, "    %lld != %lld\n", unit_a_, unit_b_);      \
        }                                                                 \
    } while (0)

/* Check `n` bytes at `p` against `want`. */
#define CHECK_BYTES(p, want, n) \
    CHECK(memcmp((p), (want), (n)) == 0)

/* Run one test function, naming it in failures and on stdout. */
#define UNIT_RUN(fn)                                                      \
    do {                                                                  \
        int unit_before_ = unit_failed;                                   \
        unit_current = #fn;                                               \
        fn();                                                             \
        printf("%s %s\n", #fn, unit_failed == unit_before_ ? "ok"         \
                                                          : "FAILED");    \
        fflush(stdout);                                                   \
    } while (0)

/* The summary line; the exit status of main(). */
static inline int
unit_report(void)
{
    printf("%d checks, %d failed\n", unit_checks, unit_failed);
    return unit_failed == 0 ? 0 : 1;
}

/* A fresh segment name for this process into `buf` (STX_NAME_MAX + 1). */
static inline const char *
unit_name(char *buf)
{
    static int n;
    snprintf(buf, STX_NAME_MAX + 1, "stx_unit_%d_%d", (int)getpid(), ++n);
    return buf;
}

/* Create a slots segment of `size` bytes (format "B"); `initial` may be
 * NULL.  Exits the test program if that fails: nothing else can run. */
static inline void
unit_slots(stx_segment *seg, char *name, uint64_t size, uint64_t undo_size,
           uint32_t nslots, const void *initial)
{
    uint64_t shape[1] = {size};
    stx_create_opts opts = {.layout = &stx_slots_layout,
                            .data_size = size, .undo_size = undo_size,
                            .nslots = nslots, .format = "B", .itemsize = 1,
                            .ndim = 1, .shape = shape, .mode = 0600,
                            .initial = initial};
    if (stx_engine_init() != 0 || stx_create(seg, unit_name(name), &opts)) {
        fprintf(stderr, "%s: creating a segment failed: %s\n", unit_current,
                stx_detail());
        exit(2);
    }
}

/* Create a dict segment of `size` data bytes. */
static inline void
unit_dict(stx_segment *seg, char *name, uint64_t size, uint64_t undo_size)
{
    uint64_t shape[1] = {size};
    stx_create_opts opts = {.layout = &stx_dict_layout,
                            .data_size = size, .undo_size = undo_size,
                            .format = "B", .itemsize = 1, .ndim = 1,
                            .shape = shape, .mode = 0600};
    if (stx_engine_init() != 0 || stx_create(seg, unit_name(name), &opts)) {
        fprintf(stderr, "%s: creating a dict failed: %s\n", unit_current,
                stx_detail());
        exit(2);
    }
}

/* Close `seg` and remove its name. */
static inline void
unit_drop(stx_segment *seg, const char *name)
{
    stx_close(seg);
    stx_unlink(name, 0, 0);
}

/* Open `txn` on `seg`, waiting in slices for at most about 30 s (a
 * wedged lock fails the test instead of hanging it).  Returns the
 * engine's code. */
static inline int
unit_open(stx_txn *txn, stx_segment *seg, int write)
{
    int rc = stx_txn_init(txn, seg, write);
    for (int i = 0; rc == 0 || rc == STX_EAGAIN; i++) {
        rc = stx_txn_step(txn, 100000000ull);
        if (rc != STX_EAGAIN) {
            return rc;
        }
        if (i == 300) {
            stx_txn_cancel(txn);
            return rc;
        }
    }
    return rc;
}

/* Wait for child `pid`; its exit code, or 128 + the signal that ended it. */
static inline int
unit_wait(pid_t pid)
{
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) {
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status)
                             : 128 + WTERMSIG(status);
}

/* A pipe for a parent and its forked child to take turns: each side
 * writes one byte to say "go on" and reads one to wait. */
typedef struct unit_pipe {
    int to_child[2];
    int to_parent[2];
} unit_pipe;

/* Open both directions of `p`. */
static inline void
unit_pipe_open(unit_pipe *p)
{
    if (pipe(p->to_child) != 0 || pipe(p->to_parent) != 0) {
        perror("pipe");
        exit(2);
    }
}

/* Send one byte down `fd`. */
static inline void
unit_signal(int fd)
{
    char c = 1;
    if (write(fd, &c, 1) != 1) {
        perror("write");
    }
}

/* Wait for one byte on `fd`; 0 if it came, -1 at end of file. */
static inline int
unit_await(int fd)
{
    char c;
    return read(fd, &c, 1) == 1 ? 0 : -1;
}

/* A write txn with its logged-range cache and dict state. */
typedef struct unit_dict_txn {
    stx_txn txn;
    stx_logged cache[STX_LOGGED_CACHE];
    stx_dict_txn dt;
} unit_dict_txn;

/* Open a dict write txn on `seg`. */
static inline int
unit_dict_open(unit_dict_txn *w, stx_segment *seg)
{
    memset(w, 0, sizeof(*w));
    w->txn.logged = w->cache;
    w->dt.txn = &w->txn;
    return unit_open(&w->txn, seg, 1);
}

/* Commit (after flushing the freed blocks) or roll back. */
static inline int
unit_dict_end(unit_dict_txn *w, int commit)
{
    int rc = commit ? stx_dict_flush(&w->dt) : 0;
    int end = stx_txn_end(&w->txn, commit && rc == 0);
    stx_dict_txn_reset(&w->dt);
    return rc ? rc : end;
}

#endif /* STX_UNIT_H */
