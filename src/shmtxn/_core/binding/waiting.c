/*
 * waiting.c -- shr.wait(): sleeping until the segment's version moves,
 * the GIL released around every slice (engine/wait.c), with Ctrl-C, the
 * deadline and the handle being closed checked between slices.  A wait
 * pins its handle (gate.c), so close() from another thread wakes it and
 * waits for it to leave before it unmaps.
 */
#include <time.h>
#include <unistd.h>

#include "binding.h"

/*
 * This thread's waits in progress, innermost first.  Signal handlers run
 * inside wait() (between slices), so a handler may close() the very
 * handle this thread waits on: close() then ends that wait on the
 * thread's behalf (its pin and its count leave before the unmap) instead
 * of waiting for it to leave, which it cannot do until the handler
 * returns.
 */
typedef struct own_wait {
    HandleObject *h;
    stx_waiter *w;
    int ended;               /* ended by close() from a signal handler */
    struct own_wait *outer;
} own_wait;
static _Thread_local own_wait *this_thread_wait;

/* 1 (with SegmentClosedError) if `h` was closed or is closing. */
static int
closed_while_waiting(HandleObject *h, const own_wait *mine)
{
    if (!mine->ended && handle_state(h) == HS_OPEN) {
        return 0;
    }
    raise_error(h->st, ERR_SEGMENT_CLOSED, "segment '%s' was closed while "
                "this thread waited for a change", h->seg.name);
    return 1;
}

int
wait_for_change(HandleObject *h, const uint64_t *since_arg, double timeout,
                uint64_t *version)
{
    if (gate_enter(h) < 0) { /* close() waits for it to go */
        return -1;
    }
    uint64_t since = since_arg ? *since_arg : stx_version(&h->seg);
    stx_waiter w;
    int rc = stx_wait_begin(&h->seg, &w);
    if (rc != 0) {
        gate_leave(h);
        raise_engine_error(h->st, rc, h->seg.name);
        return -1;
    }
    own_wait mine = {.h = h, .w = &w, .outer = this_thread_wait};
    this_thread_wait = &mine;
    rc = stx_wait_step(&h->seg, since, 0, version);
    double start = rc == STX_EAGAIN ? monotonic_s() : 0;
    int failed = 0;
    while (rc == STX_EAGAIN) {
        if (PyErr_CheckSignals() < 0 || closed_while_waiting(h, &mine)) {
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
    this_thread_wait = mine.outer;
    if (!mine.ended) {
        stx_wait_end(&h->seg, &w);
        gate_leave(h);
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

int
wait_end_own(HandleObject *h)
{
    int ended = 0;
    for (own_wait *mine = this_thread_wait; mine != NULL;
         mine = mine->outer) {
        if (mine->h == h && !mine->ended) {
            mine->ended = 1;
            stx_wait_end(&h->seg, mine->w);
            gate_leave(h);
            ended++;
        }
    }
    return ended;
}

/* The waits of this thread on `h` (those close() may end for it). */
int
wait_count_own(const HandleObject *h)
{
    int n = 0;
    for (own_wait *mine = this_thread_wait; mine != NULL;
         mine = mine->outer) {
        n += mine->h == h && !mine->ended;
    }
    return n;
}
