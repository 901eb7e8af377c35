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
#include <signal.h>
#include <linux/futex.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "seqlock.h"

/* Polls of a busy lock or reader count before sleeping: a cross-CPU
 * wake-up costs tens of microseconds here, a short spin much less. */
#define SPIN_TRIES 400
/* Longest single sleep while waiting for readers to leave: bounds how
 * long a dead reader is noticed late. */
#define DRAIN_NAP_NS 2000000ull

/* Nanoseconds on CLOCK_MONOTONIC. */
static inline uint64_t
mono_ns(void)
{
    return stx_now_ns(CLOCK_MONOTONIC);
}

/* A timespec holding `ns` nanoseconds. */
static struct timespec
to_timespec(uint64_t ns)
{
    struct timespec ts = {(time_t)(ns / 1000000000ull),
                          (long)(ns % 1000000000ull)};
    return ts;
}

/* The futex system call on a word in shared memory (not private). */
static long
futex(_Atomic uint32_t *addr, int op, uint32_t val,
      const struct timespec *timeout)
{
    return syscall(SYS_futex, (uint32_t *)addr, op, val, timeout, NULL, 0);
}

/* After a commit or a recovery: bump the change word, and wake whoever
 * waits on it -- only if anyone does (layout.h, "Waiting for a change"):
 * with no waiter this is one atomic add and one load. */
static void
announce_change(stx_header *hdr)
{
    atomic_fetch_add(&hdr->change_futex, 1); /* seq_cst: see layout.h */
    if (atomic_load(&hdr->change_waiters) != 0) {
        futex(&hdr->change_futex, FUTEX_WAKE, INT_MAX, NULL);
    }
}

void
stx_announce_change(stx_segment *seg)
{
    announce_change(seg->hdr);
}

/* ------------------------------------------------------------------ */
/* recovery and the writer mutex                                       */

int
stx_mark_unrecoverable(stx_segment *seg, uint32_t why)
{
    stx_header *hdr = seg->hdr;
    uint32_t none = 0;
    atomic_compare_exchange_strong(&hdr->unrecoverable, &none, why);
    /* seq odd for good: lock-free readers fall back to the lock, which
     * reports the flag */
    atomic_fetch_or(&hdr->seq, 1u);
    return stx_check_recoverable(seg);
}

int
stx_check_recoverable(const stx_segment *seg)
{
    uint32_t why = atomic_load_explicit(&seg->hdr->unrecoverable,
                                        memory_order_acquire);
    if (why == 0) {
        return 0;
    }
    const char *what = why == STX_BROKEN_ROLLBACK
        ? "a writer died and its transaction could not be rolled back"
        : why == STX_BROKEN_DEAD_OWNER
        ? "its writer lock is held by a dead process the OS did not hand "
          "it back from (the lock word was overwritten)"
        : "its writer lock is damaged";
    return stx_fail(STX_ECORRUPT, "segment '%s' is unusable: %s; its data "
                    "may be torn -- copy out what you need and recreate it",
                    seg->name, what);
}

int
stx_recover(stx_segment *seg)
{
    stx_header *hdr = seg->hdr;
    /* ours from now on: a waiter that sees the dead pid still recorded
     * while we recover must not take the lock for abandoned */
    atomic_store(&hdr->writer_pid, stx_self_pid);
    int rc = stx_undo_rollback(seg);
    if (rc != 0) {
        return rc;
    }
    uint64_t seq = atomic_load(&hdr->seq);
    if (seq & 1u) {
        atomic_store_explicit(&hdr->seq, seq + 1, memory_order_release);
    }
    /* the dead writer may have reserved pages it never counted */
    stx_undo_shrink(seg, 1, 0);
    stx_crash_point("recover:after_shrink");
    stx_slots_reap(seg);
    atomic_store(&hdr->writer_flag, 0);
    atomic_store(&hdr->writer_pid, 0);
    atomic_fetch_add(&hdr->recoveries, 1);
    announce_change(hdr); /* waiters of the dead writer see the rollback */
    return 0;
}

int
stx_writer_dead(const stx_segment *seg)
{
    stx_header *hdr = seg->hdr;
    int32_t writer = atomic_load(&hdr->writer_pid);
    if (writer != 0 && writer != stx_self_pid
        && !stx_pid_alive(seg->file, writer)) {
        return 1;
    }
#ifdef __GLIBC__
    /* killed before it recorded its pid: the kernel marked the word */
    const _Atomic uint32_t *word =
        (const _Atomic uint32_t *)&hdr->writer_mutex.__data.__lock;
    return (atomic_load(word) & FUTEX_OWNER_DIED) != 0;
#else
    return 0;
#endif
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
            /* flag first: then unlock without consistent, which makes the
             * mutex ENOTRECOVERABLE for everyone */
            rc = stx_mark_unrecoverable(seg, STX_BROKEN_ROLLBACK);
            atomic_store(&seg->hdr->writer_pid, 0);
            pthread_mutex_unlock(m);
            return rc;
        }
        pthread_mutex_consistent(m);
        return 0;
    case EBUSY:
    case ETIMEDOUT:
        return STX_EAGAIN;
    case ENOTRECOVERABLE:
        /* never unlock here: that would make the mutex usable again */
        return stx_mark_unrecoverable(seg, STX_BROKEN_ROLLBACK);
    case EINVAL:
        return stx_mark_unrecoverable(seg, STX_BROKEN_MUTEX);
    case EDEADLK:
        return stx_fail(STX_ENESTED, "this thread already holds the writer"
                        " lock of '%s' (a write transaction of this thread "
                        "was dropped by another thread)", seg->name);
    default:
        return stx_fail(STX_ESYS, "locking segment '%s' failed: %s",
                        seg->name, strerror(rc));
    }
}

/* Lock the writer mutex until `until` (CLOCK_MONOTONIC).  ThreadSanitizer
 * does not intercept pthread_mutex_clocklock, so its builds use the
 * realtime timedlock, which glibc implements by the same code. */
static int
clock_lock(pthread_mutex_t *m, const struct timespec *until)
{
#if defined(__SANITIZE_THREAD__)
    struct timespec real;
    clock_gettime(CLOCK_REALTIME, &real);
    if (until->tv_sec != 0 || until->tv_nsec != 0) {
        uint64_t now = mono_ns(), end = (uint64_t)until->tv_sec * 1000000000ull
                                        + (uint64_t)until->tv_nsec;
        uint64_t left = end > now ? end - now : 0;
        real = to_timespec((uint64_t)real.tv_sec * 1000000000ull
                           + (uint64_t)real.tv_nsec + left);
    }
    else {
        real = *until; /* the epoch: already past */
    }
    return pthread_mutex_timedlock(m, &real);
#else
    return pthread_mutex_clocklock(m, CLOCK_MONOTONIC, until);
#endif
}

/* Try the writer mutex once without sleeping.  A clock lock with a
 * deadline in the past, not trylock: on a mutex that is not recoverable,
 * glibc's trylock leaves the lock word holding the caller's thread id,
 * which wedges everyone; the clock lock leaves it free. */
static int
try_writer(stx_segment *seg)
{
    static const struct timespec past = {0, 0};
    return lock_result(seg, clock_lock(&seg->hdr->writer_mutex, &past));
}

/* The lock word that looked abandoned on this thread's previous wait
 * slice, and the segment it was seen in. */
static _Thread_local uint32_t suspect_word;
static _Thread_local const void *suspect_at;

/* 1 if the writer mutex is held by a thread that no longer exists and the
 * kernel did not mark it dead: the lock word was overwritten.  The kernel
 * marks a robust mutex OWNER_DIED before its owner's task disappears, so
 * a word that names a vanished task, unchanged across two wait slices,
 * with no live writer recorded, is never handed back.  (Two slices: a
 * writer records its pid right after it locks, and a writer in another
 * pid namespace, invisible to kill(), is seen by its beacon then.) */
static int
owner_vanished(const stx_segment *seg)
{
#ifdef __GLIBC__
    const _Atomic uint32_t *word =
        (const _Atomic uint32_t *)&seg->hdr->writer_mutex.__data.__lock;
    uint32_t seen = atomic_load(word);
    pid_t tid = (pid_t)(seen & FUTEX_TID_MASK);
    int32_t writer = atomic_load(&seg->hdr->writer_pid);
    if (tid == 0 || (seen & FUTEX_OWNER_DIED) != 0
        || kill(tid, 0) == 0 || errno != ESRCH
        || (writer != 0 && stx_pid_alive(seg->file, writer))
        || atomic_load(word) != seen) {
        suspect_at = NULL;
        return 0;
    }
    if (suspect_at != seg->hdr || suspect_word != seen) {
        suspect_at = seg->hdr; /* seen once: look again next slice */
        suspect_word = seen;
        return 0;
    }
    suspect_at = NULL;
    return 1;
#else
    (void)seg;
    return 0;
#endif
}

/* Take the writer mutex: spin briefly, then sleep up to `slice_ns`.  The
 * mutex's kind is checked first: glibc aborts the process on some kinds
 * (priority protection) before it could return an error. */
static int
lock_writer(stx_segment *seg, uint64_t slice_ns)
{
    if (!stx_mutex_plausible(&seg->hdr->writer_mutex)) {
        return stx_mark_unrecoverable(seg, STX_BROKEN_MUTEX);
    }
    int rc = try_writer(seg);
    for (int i = 0; rc == STX_EAGAIN && i < SPIN_TRIES; i++) {
        stx_cpu_relax();
        if ((i & 63) == 63) {
            rc = try_writer(seg);
        }
    }
    if (rc == STX_EAGAIN && slice_ns > 0) {
        struct timespec until = to_timespec(mono_ns() + slice_ns);
        rc = lock_result(seg, clock_lock(&seg->hdr->writer_mutex, &until));
        if (rc == STX_EAGAIN && owner_vanished(seg)) {
            rc = stx_mark_unrecoverable(seg, STX_BROKEN_DEAD_OWNER);
        }
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* readers and writers meeting                                         */

/* A reader leaving while a writer waits: bump the word it sleeps on. */
static void
wake_writer(stx_header *hdr)
{
    if (atomic_load(&hdr->writer_flag)) {
        atomic_fetch_add(&hdr->drain_futex, 1);
        futex(&hdr->drain_futex, FUTEX_WAKE, INT_MAX, NULL);
    }
}

/* Lower a slot's count by one, never below zero: a count a reaper has
 * already cleared must not wrap around and block every writer. */
static void
leave_slot(stx_reader_slot *slot)
{
    uint32_t n = atomic_load(&slot->readers);
    while (n > 0 && !atomic_compare_exchange_weak(&slot->readers, &n, n - 1)) {
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
            stx_cpu_relax();
            continue;
        }
        int32_t pid = atomic_load(&slot->pid);
        if (pid != stx_self_pid && stx_slot_reap(seg, slot, pid)) {
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

/* 1 while `slot` is ours, waiting out a reaper that is checking on us
 * (it puts the slot back when it sees our beacon). */
static int
still_ours(const stx_reader_slot *slot)
{
    for (int i = 0; i < SPIN_TRIES; i++) {
        int32_t pid = atomic_load(&slot->pid);
        if (pid == stx_self_pid) {
            return 1;
        }
        if (pid >= 0) {
            return 0;
        }
        stx_cpu_relax();
    }
    return 0;
}

/* Our slot's index, re-claimed if it was taken from us (it never should
 * be: only dead processes' slots are reaped). */
static int
own_slot(stx_segment *seg, int32_t *index)
{
    stx_file *file = seg->file;
    int32_t slot = file->slot; /* once: other threads may renew it */
    if (slot < 0 || file->fork_gen != stx_fork_gen
        || (uint32_t)slot >= seg->nslots
        || !still_ours(&seg->slots[slot])) {
        int rc = stx_slot_renew(seg, slot);
        if (rc != 0) {
            return rc;
        }
        slot = file->slot;
    }
    *index = slot;
    return 0;
}

/* Enter as a reader, counting in our slot (its index goes to *index);
 * while a writer is in, wait for it on the mutex. */
static int
enter_reader(stx_segment *seg, uint64_t slice_ns, int32_t *index)
{
    stx_header *hdr = seg->hdr;
    int rc = own_slot(seg, index);
    uint64_t deadline = 0; /* read the clock only if a writer is inside */
    while (rc == 0) {
        stx_reader_slot *slot = &seg->slots[*index];
        atomic_fetch_add(&slot->readers, 1);
        if (atomic_load(&hdr->writer_flag) == 0) {
            return 0;
        }
        leave_slot(slot);
        wake_writer(hdr);
        uint64_t now = mono_ns();
        if (deadline == 0) {
            deadline = now + slice_ns;
        }
        else if (now >= deadline) {
            return STX_EAGAIN;
        }
        rc = lock_writer(seg, deadline - now);
        if (rc == 0) {
            /* we hold the mutex, so no writer is inside: a raised flag
             * is left over (overwritten, or from a foreign build) */
            if (atomic_load(&hdr->writer_flag) != 0) {
                atomic_store(&hdr->writer_flag, 0);
            }
            pthread_mutex_unlock(&hdr->writer_mutex);
        }
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* the txn registry                                                    */

/*
 * Tracked txns -- the ones a caller keeps beyond one call, such as the
 * Python binding's txn objects -- are listed here for the whole process,
 * under `registry_lock`, so that:
 *   - a thread may not open a second txn on a segment it already has one
 *     on (STX_ENESTED, instead of deadlocking on itself);
 *   - close() can count a handle's open txns (stx_segment_open_txns);
 *   - the txns of a thread that ends are ended with it (stx_thread_exit).
 * Owners are told apart by stx_thread_id(), a number never reused in the
 * process (pthread_t values are).  Untracked txns (a single auto-committed
 * operation) live within one engine call and are only checked for
 * nesting.  `file->ntxn` counts a file's tracked txns, so the common case
 * (none open) checks nesting without the lock.
 */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static stx_txn *registry;
static _Atomic uint64_t last_thread_id;
static _Thread_local uint64_t this_thread_id;

uint64_t
stx_thread_id(void)
{
    if (this_thread_id == 0) {
        this_thread_id = atomic_fetch_add(&last_thread_id, 1) + 1;
    }
    return this_thread_id;
}

/* 1 if the calling thread has a tracked txn open on `file`; the caller
 * holds registry_lock. */
static int
thread_has_txn(const stx_file *file, uint64_t thread)
{
    for (const stx_txn *t = registry; t != NULL; t = t->next) {
        if (t->thread == thread && t->seg->file == file) {
            return 1;
        }
    }
    return 0;
}

/* Check nesting and, for a tracked txn, list it; STX_ENESTED if this
 * thread already has a txn on the segment. */
static int
register_txn(stx_txn *txn)
{
    stx_file *file = txn->seg->file;
    if (!txn->tracked && atomic_load(&file->ntxn) == 0) {
        return 0;
    }
    pthread_mutex_lock(&registry_lock);
    int rc = thread_has_txn(file, txn->thread) ? STX_ENESTED : 0;
    if (rc == 0 && txn->tracked) {
        txn->prev = NULL;
        txn->next = registry;
        if (registry != NULL) {
            registry->prev = txn;
        }
        registry = txn;
        txn->listed = 1;
        atomic_fetch_add(&file->ntxn, 1);
    }
    pthread_mutex_unlock(&registry_lock);
    return rc;
}

/* Take `txn` off the list (caller holds registry_lock). */
static void
unlist(stx_txn *txn)
{
    if (!txn->listed || txn->fork_gen != stx_fork_gen) {
        txn->listed = 0; /* a parent's list entry: not in our list */
        return;
    }
    if (txn->prev != NULL) {
        txn->prev->next = txn->next;
    }
    else {
        registry = txn->next;
    }
    if (txn->next != NULL) {
        txn->next->prev = txn->prev;
    }
    txn->listed = 0;
    atomic_fetch_sub(&txn->seg->file->ntxn, 1);
}

int
stx_segment_open_txns(const stx_segment *seg)
{
    int n = 0;
    pthread_mutex_lock(&registry_lock);
    for (const stx_txn *t = registry; t != NULL; t = t->next) {
        n += t->seg == seg;
    }
    pthread_mutex_unlock(&registry_lock);
    return n;
}

void
stx_txns_after_fork(void)
{
    /* the parent's txns are not ours: the child starts with none */
    pthread_mutex_init(&registry_lock, NULL);
    registry = NULL;
}

/* ------------------------------------------------------------------ */
/* the txn life cycle                                                  */

int
stx_txn_init(stx_txn *txn, stx_segment *seg, int write)
{
    if (seg->file == NULL) {
        return stx_fail(STX_ECLOSED, "segment is closed");
    }
    if (write && seg->read_only) {
        return STX_EREADONLY;
    }
    int rc = stx_check_recoverable(seg);
    if (rc == 0) {
        rc = stx_slot_ensure(seg);
    }
    if (rc != 0) {
        return rc;
    }
    txn->seg = seg;
    txn->write = write;
    txn->dirty = 0;
    txn->failed = 0;
    txn->logged_all = 0;
    txn->slot = -1;
    txn->serial++;
    txn->fork_gen = stx_fork_gen;
    txn->thread = stx_thread_id();
    txn->listed = 0;
    rc = register_txn(txn);
    txn->state = rc != 0 ? STX_TXN_IDLE
                 : write ? STX_TXN_LOCKING : STX_TXN_READING;
    return rc;
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
        rc = enter_reader(seg, slice_ns, &txn->slot);
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

/* Take a tracked txn off the list, under the lock. */
static void
unregister_txn(stx_txn *txn)
{
    if (txn->listed) {
        pthread_mutex_lock(&registry_lock);
        unlist(txn);
        pthread_mutex_unlock(&registry_lock);
    }
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

/* Finish a write txn's data: roll back or commit, then seq even, then
 * give back undo space.  The log is emptied before seq turns even: a writer killed between the two
 * leaves nothing to replay, and recovery only evens seq. */
static int
finish_writes(stx_txn *txn, int commit)
{
    stx_header *hdr = txn->seg->hdr;
    uint64_t peak = atomic_load_explicit(&hdr->undo_used,
                                         memory_order_relaxed);
    int rc = 0;
    if (!commit) {
        rc = stx_undo_rollback(txn->seg);
        if (rc != 0) {
            return stx_mark_unrecoverable(txn->seg, STX_BROKEN_ROLLBACK);
        }
    }
    stx_crash_point("commit:before_clear");
    atomic_store_explicit(&hdr->undo_used, 0, memory_order_release);
    atomic_store_explicit(&hdr->seq, atomic_load(&hdr->seq) + 1,
                          memory_order_release);
    if (commit) {
        atomic_store_explicit(&hdr->modified_ns,
                              stx_now_ns(CLOCK_REALTIME_COARSE),
                              memory_order_relaxed);
        atomic_fetch_add_explicit(&hdr->commits, 1, memory_order_relaxed);
    }
    /* the log is empty now: give back what was reserved past what this
     * txn used (a one-off big txn pins its pages only until the next,
     * smaller one; back-to-back big txns keep theirs) */
    stx_undo_shrink(txn->seg, 0, peak);
    return 0;
}

/* End an open txn (its own thread, or any thread for a read txn):
 * release what it holds.  Errors only if a rollback found corruption. */
static int
finish_txn(stx_txn *txn, int commit)
{
    stx_segment *seg = txn->seg;
    int rc = 0;
    if (txn->write) {
        rc = txn->dirty ? finish_writes(txn, commit) : 0;
        release_writer(seg->hdr);
        if (txn->dirty && commit && rc == 0) {
            /* after unlocking: a waiter woken now finds the lock free */
            announce_change(seg->hdr);
        }
    }
    else if (txn->slot >= 0 && (uint32_t)txn->slot < seg->nslots) {
        leave_slot(&seg->slots[txn->slot]);
        wake_writer(seg->hdr);
    }
    txn->state = STX_TXN_IDLE;
    return rc;
}

int
stx_txn_end(stx_txn *txn, int commit)
{
    int rc = stx_txn_usable(txn);
    if (rc != 0) {
        return rc;
    }
    if (!txn->listed) {
        return finish_txn(txn, commit);
    }
    pthread_mutex_lock(&registry_lock);
    if (txn->state == STX_TXN_OPEN) {
        rc = finish_txn(txn, commit);
    }
    else {
        rc = stx_fail(STX_ECLOSED, "transaction is not active");
    }
    unlist(txn);
    pthread_mutex_unlock(&registry_lock);
    return rc;
}

int
stx_txn_abandon(stx_txn *txn)
{
    int rc = 0;
    int locked = txn->listed && txn->fork_gen == stx_fork_gen;
    if (locked) {
        pthread_mutex_lock(&registry_lock);
    }
    if (txn->state == STX_TXN_OPEN && txn->fork_gen == stx_fork_gen
        && txn->seg->file != NULL) {
        if (txn->write && txn->thread != stx_thread_id() && txn->listed) {
            /* only its own thread may unlock the writer mutex: the txn
             * stays open (and listed) until that thread ends */
            pthread_mutex_unlock(&registry_lock);
            return 1;
        }
        rc = finish_txn(txn, 0);
    }
    txn->state = STX_TXN_IDLE;
    if (locked) {
        unlist(txn);
        pthread_mutex_unlock(&registry_lock);
    }
    txn->listed = 0;
    return rc;
}

void
stx_txn_move(stx_txn *to, stx_txn *from)
{
    pthread_mutex_lock(&registry_lock);
    *to = *from;
    to->logged = NULL; /* the cache lived in the old owner's memory */
    if (from->listed) {
        if (to->prev != NULL) {
            to->prev->next = to;
        }
        else {
            registry = to;
        }
        if (to->next != NULL) {
            to->next->prev = to;
        }
    }
    from->listed = 0;
    from->state = STX_TXN_IDLE;
    pthread_mutex_unlock(&registry_lock);
}

int
stx_thread_exit(void)
{
    if (this_thread_id == 0) {
        return 0; /* this thread never opened a txn */
    }
    int ended = 0;
    pthread_mutex_lock(&registry_lock);
    stx_txn *t = registry;
    while (t != NULL) {
        stx_txn *next = t->next;
        if (t->thread == this_thread_id) {
            if (t->state == STX_TXN_OPEN) {
                finish_txn(t, 0);
                ended++;
            }
            unlist(t);
        }
        t = next;
    }
    pthread_mutex_unlock(&registry_lock);
    return ended;
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
    if (txn->thread != stx_thread_id()) {
        return stx_fail(STX_ETHREAD, "segment '%s': this transaction "
                        "belongs to the thread that opened it",
                        txn->seg->name);
    }
    return 0;
}
