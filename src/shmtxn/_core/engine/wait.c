/*
 * wait.c -- waiting for a change: sleeping on the header's change word
 * until a writer commits (or a dead writer is rolled back), without a
 * lock held.  The protocol is in layout.h ("Waiting for a change"); the
 * wake-up side is lock.c's (commit and recovery).
 *
 * Waiting is done in slices, like txn steps, so the caller can release
 * the GIL around each and check Ctrl-C and its deadline between them.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

uint64_t
stx_version(const stx_segment *seg)
{
    /* two monotonic counters read one after the other: the sum never
     * goes back between calls, and moves whenever either does */
    return atomic_load_explicit(&seg->hdr->commits, memory_order_acquire)
           + atomic_load_explicit(&seg->hdr->recoveries,
                                  memory_order_acquire);
}

/* Lower `*count` by one, never below zero. */
static void
lower_one(_Atomic uint32_t *count)
{
    uint32_t n = atomic_load(count);
    while (n > 0 && !atomic_compare_exchange_weak(count, &n, n - 1)) {
    }
}

/* Reap the slots of dead processes that were counted as waiting: their
 * counts leave change_waiters, so a waiter killed while waiting costs
 * writers a wake-up call only until the next wait begins. */
static void
reap_dead_waiters(stx_segment *seg)
{
    uint32_t hwm = atomic_load(&seg->hdr->slots_hwm);
    uint32_t n = hwm < seg->nslots ? hwm : seg->nslots;
    for (uint32_t i = 0; i < n; i++) {
        stx_reader_slot *slot = &seg->slots[i];
        int32_t pid = atomic_load(&slot->pid);
        if (atomic_load(&slot->waiting) != 0 && pid != 0
            && pid != stx_self_pid) {
            stx_slot_reap(seg, slot, pid); /* only if its owner is dead */
        }
    }
}

int
stx_wait_begin(stx_segment *seg, stx_waiter *w)
{
    if (seg->file == NULL) {
        return stx_fail(STX_ECLOSED, "segment is closed");
    }
    /* a read txn's checks, without opening it: the segment is usable,
     * this process has a slot, and this thread holds no txn on the
     * segment (no commit could come while it waits) */
    stx_txn probe = {0};
    int rc = stx_txn_init(&probe, seg, 0);
    if (rc != 0) {
        return rc;
    }
    stx_txn_cancel(&probe);
    if (atomic_load(&seg->hdr->change_waiters) != 0) {
        reap_dead_waiters(seg);
    }
    w->slot = seg->file->slot;
    w->fork_gen = stx_fork_gen;
    /* the header's count first, the slot's second (and the reverse at
     * the end): a process killed between the two then leaves the header
     * counting one waiter too many -- a needless wake call per commit --
     * never one too few, which would let a live waiter miss a wake-up
     * until its slice ends */
    atomic_fetch_add(&seg->hdr->change_waiters, 1); /* seq_cst: layout.h */
    atomic_fetch_add(&seg->slots[w->slot].waiting, 1);
    return 0;
}

/* Roll back a writer whose process is gone, the way a read txn does (it
 * takes the lock, finds its owner dead and recovers): recovery wakes the
 * waiters.  Waits at most `slice_ns` for a live writer that got there
 * first. */
static int
recover_dead_writer(stx_segment *seg, uint64_t slice_ns)
{
    stx_txn txn = {0};
    int rc = stx_txn_init(&txn, seg, 0);
    if (rc == 0) {
        rc = stx_txn_step(&txn, slice_ns);
        if (rc == 0) {
            rc = stx_txn_end(&txn, 1);
        }
        else if (rc == STX_EAGAIN) {
            stx_txn_cancel(&txn);
            rc = 0;
        }
    }
    return rc;
}

int
stx_wait_step(stx_segment *seg, uint64_t since, uint64_t slice_ns,
              uint64_t *version)
{
    stx_header *hdr = seg->hdr;
    if (stx_writer_dead(seg)) {
        int rc = recover_dead_writer(seg, slice_ns);
        if (rc != 0) {
            return rc;
        }
    }
    uint32_t seen = atomic_load(&hdr->change_futex); /* seq_cst */
    *version = stx_version(seg);
    if (*version != since) {
        return 0;
    }
    if (slice_ns == 0) {
        return STX_EAGAIN;
    }
    struct timespec ts = {(time_t)(slice_ns / 1000000000ull),
                          (long)(slice_ns % 1000000000ull)};
    syscall(SYS_futex, (uint32_t *)&hdr->change_futex, FUTEX_WAIT, seen,
            &ts, NULL, 0);
    *version = stx_version(seg);
    return *version != since ? 0 : STX_EAGAIN;
}

void
stx_wait_end(stx_segment *seg, stx_waiter *w)
{
    stx_file *file = seg->file;
    if (file == NULL || w->fork_gen != stx_fork_gen || w->slot < 0
        || (uint32_t)w->slot >= seg->nslots) {
        return; /* a parent's wait: this process never counted it */
    }
    stx_reader_slot *slot = &seg->slots[w->slot];
    if (file->slot == w->slot && atomic_load(&slot->pid) == stx_self_pid) {
        lower_one(&slot->waiting);
        lower_one(&seg->hdr->change_waiters);
    }
    /* else the slot was reaped, and its count left change_waiters then */
    w->slot = -1;
}
