/*
 * lock.c -- transactions: the writer mutex, reader entry, commit, rollback
 * and recovery of dead writers.
 *
 * Lock order: a writer takes the writer mutex, then raises writer_flag,
 * then waits for the readers below the slot high-water mark to leave.  A
 * reader raises its slot's count, then looks at writer_flag; if it is up,
 * it lowers its count and queues on the writer mutex (so writers are never
 * starved by a stream of readers).  See layout.h for the memory protocol.
 *
 * Every lock of the writer mutex goes through lock_result(), so recovery of
 * a dead owner (EOWNERDEAD) cannot be forgotten on any path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"

/* Polls of a busy lock or reader count before sleeping: a cross-CPU
 * wake-up costs tens of microseconds here, a short spin much less. */
#define SPIN_TRIES 400
/* Longest single sleep while waiting for readers to leave: bounds how
 * long a dead reader is noticed late. */
#define DRAIN_NAP_NS 2000000ull

/* A polite pause inside a spin loop. */
static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Nanoseconds on CLOCK_MONOTONIC. */
static uint64_t
mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A timespec holding `ns` nanoseconds. */
static struct timespec
to_timespec(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull),
                          (long)(ns % 1000000000ull)};
    return ts;
}

/* The calling thread, as the number txns record. */
static uint64_t
this_thread(void)
{
    return (uint64_t)pthread_self();
}

/* ------------------------------------------------------------------ */
/* recovery and the writer mutex                                       */

int
stx_recover(stx_segment *seg)
{
    stx_header *hdr = seg->hdr;
    int rc = stx_undo_rollback(seg);
    if (rc != 0) {
        return rc;
    }
    uint64_t seq = atomic_load(&hdr->seq);
    if (seq & 1u) {
        atomic_store_explicit(&hdr->seq, seq + 1, memory_order_release);
    }
    stx_slots_reap(seg);
    atomic_store(&hdr->writer_flag, 0);
    atomic_store(&hdr->writer_pid, 0);
    atomic_fetch_add(&hdr->recoveries, 1);
    return 0;
}

/* The one place a return code of locking the writer mutex is read. */
static int
lock_result(stx_segment *seg, int rc)
{
    pthread_mutex_t *m = &seg->hdr->writer_mutex;
    switch (rc) {
    case 0:
        return 0;
    case EOWNERDEAD:
        rc = stx_recover(seg);
        if (rc != 0) {
            pthread_mutex_unlock(m); /* not consistent: next gets
                                        ENOTRECOVERABLE */
            return rc;
        }
        pthread_mutex_consistent(m);
        return 0;
    case EBUSY:
    case ETIMEDOUT:
        return STX_EAGAIN;
    case ENOTRECOVERABLE:
        return stx_fail(STX_ECORRUPT, "segment '%s': a writer died and its"
                        " transaction could not be rolled back; the data may"
                        " be torn -- recreate the segment", seg->name);
    default:
        return stx_fail(STX_ESYS, "locking segment '%s' failed: %s",
                        seg->name, strerror(rc));
    }
}

/* Take the writer mutex: spin briefly, then sleep up to `slice_ns`. */
static int
lock_writer(stx_segment *seg, uint64_t slice_ns)
{
    pthread_mutex_t *m = &seg->hdr->writer_mutex;
    int rc = lock_result(seg, pthread_mutex_trylock(m));
    for (int i = 0; rc == STX_EAGAIN && i < SPIN_TRIES; i++) {
        cpu_relax();
        if ((i & 63) == 63) {
            rc = lock_result(seg, pthread_mutex_trylock(m));
        }
    }
    if (rc == STX_EAGAIN && slice_ns > 0) {
        struct timespec until = to_timespec(mono_ns() + slice_ns);
        rc = lock_result(seg, pthread_mutex_clocklock(m, CLOCK_MONOTONIC,
                                                      &until));
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* readers and writers meeting                                         */

/* The futex system call on a word in shared memory (not private). */
static long
futex(_Atomic uint32_t *addr, int op, uint32_t val,
      const struct timespec *timeout)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, timeout, NULL, 0);
}

/* A reader leaving while a writer waits: bump the word it sleeps on. */
static void
wake_writer(stx_header *hdr)
{
    if (atomic_load(&hdr->writer_flag)) {
        atomic_fetch_add(&hdr->drain_futex, 1);
        futex(&hdr->drain_futex, FUTEX_WAKE, INT_MAX, NULL);
    }
}

/* Wait (holding the mutex) until slot `slot` has no readers, or its owner
 * is dead; STX_EAGAIN when the time until `deadline` is used up. */
static int
drain_slot(stx_segment *seg, stx_reader_slot *slot, uint64_t deadline)
{
    stx_header *hdr = seg->hdr;
    for (int i = 0; atomic_load(&slot->readers) != 0; i++) {
        if (i < SPIN_TRIES) {
            cpu_relax();
            continue;
        }
        int32_t pid = atomic_load(&slot->pid);
        if (pid != stx_self_pid && !stx_pid_alive(seg->file, pid)) {
            atomic_store(&slot->readers, 0);
            atomic_compare_exchange_strong(&slot->pid, &pid, 0);
            return 0;
        }
        uint64_t now = mono_ns();
        if (now >= deadline) {
            return STX_EAGAIN;
        }
        uint32_t seen = atomic_load(&hdr->drain_futex);
        if (atomic_load(&slot->readers) != 0) {
            uint64_t nap = deadline - now;
            struct timespec ts = to_timespec(nap < DRAIN_NAP_NS ? nap
                                                                : DRAIN_NAP_NS);
            futex(&hdr->drain_futex, FUTEX_WAIT, seen, &ts);
        }
    }
    return 0;
}

/* Wait (holding the mutex) until no live process has a reader inside. */
static int
drain_readers(stx_segment *seg, uint64_t slice_ns)
{
    uint64_t deadline = 0; /* read the clock only if someone is inside */
    uint32_t hwm = atomic_load(&seg->hdr->slots_hwm);
    uint32_t n = hwm < seg->nslots ? hwm : seg->nslots;
    for (uint32_t i = 0; i < n; i++) {
        if (atomic_load(&seg->slots[i].readers) == 0) {
            continue;
        }
        if (deadline == 0) {
            deadline = mono_ns() + slice_ns;
        }
        int rc = drain_slot(seg, &seg->slots[i], deadline);
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}

/* Our slot, re-claimed if it was taken from us (it never should be). */
static int
own_slot(stx_segment *seg, stx_reader_slot **out)
{
    stx_file *file = seg->file;
    if (file->slot < 0 || file->fork_gen != stx_fork_gen
        || atomic_load(&seg->slots[file->slot].pid) != stx_self_pid) {
        file->slot = -1;
        int rc = stx_slot_ensure(seg);
        if (rc != 0) {
            return rc;
        }
    }
    *out = &seg->slots[file->slot];
    return 0;
}

/* Enter as a reader; while a writer is in, wait for it on the mutex. */
static int
enter_reader(stx_segment *seg, uint64_t slice_ns)
{
    stx_header *hdr = seg->hdr;
    stx_reader_slot *slot;
    int rc = own_slot(seg, &slot);
    uint64_t deadline = 0; /* read the clock only if a writer is inside */
    while (rc == 0) {
        atomic_fetch_add(&slot->readers, 1);
        if (atomic_load(&hdr->writer_flag) == 0) {
            return 0;
        }
        atomic_fetch_sub(&slot->readers, 1);
        wake_writer(hdr);
        uint64_t now = mono_ns();
        if (deadline == 0) {
            deadline = now + slice_ns;
        }
        rc = lock_writer(seg, now < deadline ? deadline - now : 0);
        if (rc == 0) {
            pthread_mutex_unlock(&hdr->writer_mutex);
        }
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* the txn life cycle                                                  */

/* Record that `thread` opens a txn here; STX_ENESTED if it has one. */
static int
register_txn(stx_file *file, uint64_t thread)
{
    for (int i = 0; i < file->ntxn; i++) {
        if (file->txn_threads[i] == thread) {
            return STX_ENESTED;
        }
    }
    if (file->ntxn == STX_MAX_OPEN_TXNS) {
        return stx_fail(STX_EINVAL, "more than %d transactions open at "
                        "once on one segment", STX_MAX_OPEN_TXNS);
    }
    file->txn_threads[file->ntxn++] = thread;
    return 0;
}

/* Forget `txn`'s thread in the process's open-txn list. */
static void
unregister_txn(stx_txn *txn)
{
    stx_file *file = txn->seg->file;
    if (txn->fork_gen != stx_fork_gen || file == NULL) {
        return;
    }
    for (int i = 0; i < file->ntxn; i++) {
        if (file->txn_threads[i] == txn->thread) {
            file->txn_threads[i] = file->txn_threads[--file->ntxn];
            return;
        }
    }
}

int
stx_txn_init(stx_txn *txn, stx_segment *seg, int write)
{
    if (seg->file == NULL) {
        return stx_fail(STX_ECLOSED, "segment is closed");
    }
    if (write && seg->read_only) {
        return STX_EREADONLY;
    }
    int rc = stx_slot_ensure(seg);
    if (rc == 0) {
        rc = register_txn(seg->file, this_thread());
    }
    if (rc != 0) {
        return rc;
    }
    txn->seg = seg;
    txn->write = write;
    txn->state = write ? STX_TXN_LOCKING : STX_TXN_READING;
    txn->dirty = 0;
    txn->serial++;
    txn->fork_gen = stx_fork_gen;
    txn->thread = this_thread();
    return 0;
}

int
stx_txn_step(stx_txn *txn, uint64_t slice_ns)
{
    stx_segment *seg = txn->seg;
    int rc = 0;
    switch (txn->state) {
    case STX_TXN_LOCKING:
        rc = lock_writer(seg, slice_ns);
        if (rc != 0) {
            break;
        }
        atomic_store(&seg->hdr->writer_flag, 1); /* seq_cst: see layout.h */
        atomic_store_explicit(&seg->hdr->writer_pid, stx_self_pid,
                              memory_order_relaxed);
        txn->state = STX_TXN_DRAINING;
        slice_ns = 0; /* the caller may re-check signals before sleeping */
        /* fall through */
    case STX_TXN_DRAINING:
        rc = drain_readers(seg, slice_ns);
        break;
    case STX_TXN_READING:
        rc = enter_reader(seg, slice_ns);
        break;
    case STX_TXN_OPEN:
        return 0;
    default:
        return stx_fail(STX_ECLOSED, "transaction is not active");
    }
    if (rc == 0) {
        txn->state = STX_TXN_OPEN;
    }
    else if (rc != STX_EAGAIN) {
        stx_txn_cancel(txn);
    }
    return rc;
}

/* Lower the writer flag and unlock (a writer leaving, by any path). */
static void
release_writer(stx_header *hdr)
{
    atomic_store_explicit(&hdr->writer_pid, 0, memory_order_relaxed);
    atomic_store_explicit(&hdr->writer_flag, 0, memory_order_release);
    pthread_mutex_unlock(&hdr->writer_mutex);
}

void
stx_txn_cancel(stx_txn *txn)
{
    if (txn->state == STX_TXN_DRAINING) {
        release_writer(txn->seg->hdr);
    }
    unregister_txn(txn);
    txn->state = STX_TXN_IDLE;
}

/* Finish a write txn's data: roll back or commit, then seq even. */
static int
finish_writes(stx_txn *txn, int commit)
{
    stx_header *hdr = txn->seg->hdr;
    int rc = 0;
    if (!commit) {
        rc = stx_undo_rollback(txn->seg);
    }
    stx_crash_point("commit:before_clear");
    atomic_store_explicit(&hdr->undo_used, 0, memory_order_release);
    atomic_store_explicit(&hdr->seq, atomic_load(&hdr->seq) + 1,
                          memory_order_release);
    return rc;
}

int
stx_txn_end(stx_txn *txn, int commit)
{
    int rc = stx_txn_usable(txn);
    if (rc != 0) {
        return rc;
    }
    stx_header *hdr = txn->seg->hdr;
    if (txn->write) {
        if (txn->dirty) {
            rc = finish_writes(txn, commit);
            if (commit) {
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME_COARSE, &ts);
                atomic_store_explicit(&hdr->modified_ns,
                                      (uint64_t)ts.tv_sec * 1000000000ull
                                          + (uint64_t)ts.tv_nsec,
                                      memory_order_relaxed);
                atomic_fetch_add_explicit(&hdr->commits, 1,
                                          memory_order_relaxed);
            }
        }
        release_writer(hdr);
    }
    else {
        atomic_fetch_sub(&txn->seg->slots[txn->seg->file->slot].readers, 1);
        wake_writer(hdr);
    }
    unregister_txn(txn);
    txn->state = STX_TXN_IDLE;
    return rc;
}

int
stx_txn_usable(const stx_txn *txn)
{
    if (txn->state != STX_TXN_OPEN || txn->seg->file == NULL) {
        return stx_fail(STX_ECLOSED, "transaction is not active");
    }
    if (txn->fork_gen != stx_fork_gen) {
        return STX_EFORKED;
    }
    if (txn->thread != this_thread()) {
        return stx_fail(STX_EINVAL, "a transaction belongs to the thread "
                        "that opened it; open another one in this thread");
    }
    return 0;
}
