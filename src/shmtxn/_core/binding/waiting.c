/*
 * waiting.c -- shr.wait(): sleeping until the segment's version moves,
 * the GIL released around every slice (engine/wait.c), with Ctrl-C, the
 * deadline and the handle being closed checked between slices.  A handle
 * counts the threads waiting on it, so close() from another thread wakes
 * them and lets them leave before it unmaps.
 */
#include <time.h>
#include <unistd.h>

#include "binding.h"

/*
 * This thread's wait in progress, if any.  Signal handlers run inside
 * wait() (between slices), so a handler may close() the very handle this
 * thread waits on: close() then ends that wait on the thread's behalf
 * (its count leaves the segment before the unmap) instead of waiting for
 * it to leave, which it cannot do until the handler returns.
 */
typedef struct own_wait {
    HandleObject *h;
    stx_waiter *w;
    int ended;               /* ended by close() from a signal handler */
} own_wait;
static _Thread_local own_wait *this_thread_wait;

/* Threads of this process (not a forked parent's) waiting on `h`. */
static int
waiters_here(const HandleObject *h)
{
    return h->wait_gen == stx_fork_gen ? h->waiting : 0;
}

/* 1 (with SegmentClosedError) if `h` was closed or is closing. */
static int
closed_while_waiting(HandleObject *h)
{
    if (h->seg.file != NULL && !h->soft_closed && !h->closing) {
        return 0;
    }
    raise_error(h->st, ERR_SEGMENT_CLOSED, "segment '%s' was closed while "
                "this thread waited for a change", h->seg.name);
    return 1;
}

int
wait_for_change(HandleObject *h, uint64_t since, double timeout,
                uint64_t *version)
{
    stx_waiter w;
    int rc = stx_wait_begin(&h->seg, &w);
    if (rc != 0) {
        raise_engine_error(h->st, rc, h->seg.name);
        return -1;
    }
    if (h->wait_gen != stx_fork_gen) {
        h->wait_gen = stx_fork_gen;
        h->waiting = 0;
    }
    h->waiting++;
    own_wait mine = {.h = h, .w = &w}, *outer = this_thread_wait;
    this_thread_wait = &mine;
    rc = stx_wait_step(&h->seg, since, 0, version);
    double start = rc == STX_EAGAIN ? monotonic_s() : 0;
    int failed = 0;
    while (rc == STX_EAGAIN) {
        if (PyErr_CheckSignals() < 0 || closed_while_waiting(h)) {
            failed = 1;
            break;
        }
        uint64_t slice = WAIT_SLICE_NS;
        if (timeout >= 0) {
            double left = timeout - (monotonic_s() - start);
            if (left <= 0) {
                *version = since;
                rc = 0;
                break;
            }
            if (left * 1e9 < (double)slice) {
                slice = (uint64_t)(left * 1e9) + 1;
            }
        }
        Py_BEGIN_ALLOW_THREADS
        rc = stx_wait_step(&h->seg, since, slice, version);
        Py_END_ALLOW_THREADS
    }
    this_thread_wait = outer;
    if (!mine.ended) {
        h->waiting--;
        stx_wait_end(&h->seg, &w);
    }
    if (failed) {
        return -1;
    }
    if (rc != 0) {
        raise_engine_error(h->st, rc, h->seg.name);
        return -1;
    }
    return 0;
}

void
wait_release_waiters(HandleObject *h)
{
    if (waiters_here(h) == 0 || h->seg.file == NULL) {
        return;
    }
    own_wait *mine = this_thread_wait;
    if (mine != NULL && mine->h == h && !mine->ended) {
        /* close() from a signal handler inside this thread's wait() */
        mine->ended = 1;
        h->waiting--;
        stx_wait_end(&h->seg, mine->w);
    }
    h->closing = 1;
    while (waiters_here(h) > 0) {
        stx_announce_change(&h->seg); /* a spurious wake-up for others */
        Py_BEGIN_ALLOW_THREADS
        usleep(200);
        Py_END_ALLOW_THREADS
    }
    h->closing = 0;
}
