/*
 * gate.c -- threads and the life of a handle (docs/threads.md).
 *
 * A handle is NEW, OPENING (its __init__ is running), OPEN, CLOSING
 * (close() has decided and waits for the calls still using the mapping)
 * or CLOSED.  Nothing reads the mapping without proof that close() will
 * not unmap it meanwhile:
 *
 *   - a tracked txn (a txn object) is registered with the engine under
 *     the handle's lock while the handle is OPEN, and close() refuses
 *     while one is registered (TransactionsOpenError);
 *   - an export (a buffer) is counted under the same lock while OPEN,
 *     and close() refuses while one is counted (BufferExportsError);
 *   - any other call that uses the mapping holds a *pin* on the handle
 *     for its duration: close() sets CLOSING, then waits until no other
 *     thread holds a pin.  A pin taken after CLOSING fails with
 *     SegmentClosedError; once CLOSING is set close() always completes,
 *     so that error is never a false one.
 *
 * Pins are per thread, not a shared counter, so that lock-free reads in
 * many threads write no shared cache line: each thread has a record with
 * a small stack of the handles it pins.  Taking a pin stores the handle
 * in the record, then reads the state; close() stores CLOSING, then
 * reads every record (both sequentially consistent: one of the two sees
 * the other).  Records are never freed: a thread that ends gives its
 * record back for the next thread to reuse, so close() can walk the list
 * without a lock.
 *
 * Under the GIL, the GIL orders all of this: the handle lock is nothing
 * and the accesses are relaxed.  Lock-free reads then take no pin at all,
 * since they neither release the GIL nor run Python code; calls that do
 * either (a txn of their own waits with the GIL released, unpickling runs
 * Python code) pin in every build.
 *
 * Also here, since a thread's record carries the flag for them: the
 * orphaned write txns other threads dropped (txn.c makes them).
 */
#include "binding.h"

/* A thread that pins more handles at once than this (only nested calls
 * from Python code inside calls do) counts the rest on the handle. */
#define GATE_DEPTH 8

/* Records are this far apart: no two threads' pins share a cache line
 * (nor the pair of lines an adjacent-line prefetcher fetches). */
#define GATE_ALIGN 128

/* gate_thread -- one thread's pins: the handles it is using now, a
 * stack (only its own thread writes it; close() reads it). */
typedef struct gate_thread {
    _Alignas(GATE_ALIGN) _Atomic(HandleObject *) pins[GATE_DEPTH];
    int depth;                  /* entries in use (own thread only) */
    _Atomic int taken;          /* a live thread owns this record */
    _Atomic uint64_t thread;    /* its stx_thread_id(), 0 while free */
    _Atomic int orphaned;       /* another thread dropped a write txn of
                                   this thread's (txn.c ends it) */
    struct gate_thread *next;   /* every record ever made; never freed */
} gate_thread;

static _Atomic(gate_thread *) gate_threads;
static pthread_mutex_t gate_threads_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t gate_key;
static _Thread_local gate_thread *gate_self;

/* The calling thread ends: its record is free for the next thread. */
static void
gate_thread_end(void *arg)
{
    gate_thread *t = arg;
    for (int i = 0; i < GATE_DEPTH; i++) {
        atomic_store_explicit(&t->pins[i], NULL, memory_order_relaxed);
    }
    t->depth = 0;
    atomic_store(&t->thread, 0);
    atomic_store(&t->orphaned, 0);
    atomic_store_explicit(&t->taken, 0, memory_order_release);
}

/* In a forked child only the forking thread lives on: every other
 * thread's record (and any pins in it) is free again. */
static void
gate_after_fork(void)
{
    pthread_mutex_init(&gate_threads_lock, NULL);
    for (gate_thread *t = atomic_load(&gate_threads); t != NULL;
         t = t->next) {
        if (t != gate_self) {
            gate_thread_end(t);
        }
    }
}

/* The calling thread's record, taken (or made) on its first pin; NULL
 * with MemoryError. */
static gate_thread *
gate_thread_get(void)
{
    gate_thread *t = gate_self;
    if (t != NULL) {
        return t;
    }
    pthread_mutex_lock(&gate_threads_lock);
    for (t = atomic_load(&gate_threads); t != NULL; t = t->next) {
        int free_ = 0;
        if (atomic_compare_exchange_strong(&t->taken, &free_, 1)) {
            break;
        }
    }
    if (t == NULL
        && (t = aligned_alloc(GATE_ALIGN, sizeof(*t))) != NULL) {
        memset(t, 0, sizeof(*t));
        atomic_store(&t->taken, 1);
        t->next = atomic_load(&gate_threads);
        atomic_store(&gate_threads, t); /* published whole */
    }
    pthread_mutex_unlock(&gate_threads_lock);
    if (t == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    atomic_store(&t->thread, stx_thread_id());
    pthread_setspecific(gate_key, t); /* gives it back when the thread ends */
    gate_self = t;
    return t;
}

int
gate_thread_claim(void)
{
    return gate_thread_get() == NULL ? -1 : 0;
}

void
gate_flag_orphan(uint64_t thread)
{
    for (gate_thread *t = atomic_load(&gate_threads); t != NULL;
         t = t->next) {
        if (atomic_load(&t->thread) == thread) {
            atomic_store(&t->orphaned, 1);
            return;
        }
    }
}

int
gate_take_orphan_flag(void)
{
    gate_thread *t = gate_self;
    return t != NULL && atomic_load_explicit(&t->orphaned,
                                             memory_order_relaxed)
           && atomic_exchange(&t->orphaned, 0);
}

static pthread_once_t gate_once = PTHREAD_ONCE_INIT;
static int gate_ready;

static void
gate_setup(void)
{
    gate_ready = pthread_key_create(&gate_key, gate_thread_end) == 0
                 && pthread_atfork(NULL, NULL, gate_after_fork) == 0;
}

int
gate_init(void)
{
    pthread_once(&gate_once, gate_setup);
    if (!gate_ready) {
        PyErr_SetString(PyExc_OSError, "shmtxn: cannot set up per-thread "
                        "state (pthread_key_create/pthread_atfork failed)");
        return -1;
    }
    return 0;
}

int
handle_check_open(HandleObject *h)
{
    if (handle_state(h) == HS_OPEN) {
        return 0;
    }
    PyObject *type_name = PyType_GetName(Py_TYPE(h));
    if (type_name != NULL) {
        raise_error(h->st, ERR_SEGMENT_CLOSED, "segment %R is closed; "
                    "open it again with %U(name)",
                    h->name ? h->name : Py_None, type_name);
        Py_DECREF(type_name);
    }
    return -1;
}

int
gate_enter(HandleObject *h)
{
    gate_thread *t = gate_thread_get();
    if (t == NULL) {
        return -1;
    }
    if (t->depth < GATE_DEPTH) {
        int i = t->depth++;
        atomic_store_explicit(&t->pins[i], h, GATE_ORDER);
        if (atomic_load_explicit(&h->state, GATE_ORDER) == HS_OPEN) {
            return 0;
        }
        atomic_store_explicit(&t->pins[i], NULL, memory_order_relaxed);
        t->depth--;
    }
    else {
        atomic_fetch_add(&h->overflow_pins, 1);
        if (atomic_load(&h->state) == HS_OPEN) {
            return 0;
        }
        atomic_fetch_sub(&h->overflow_pins, 1);
    }
    return handle_check_open(h);
}

void
gate_leave(HandleObject *h)
{
    gate_thread *t = gate_self;
    int i = t != NULL ? t->depth - 1 : -1;
    while (i >= 0 && atomic_load_explicit(&t->pins[i],
                                          memory_order_relaxed) != h) {
        i--;
    }
    if (i < 0) {
        atomic_fetch_sub(&h->overflow_pins, 1); /* it overflowed */
        return;
    }
    /* release: every use of the mapping before this is done before a
     * close() that sees the pin gone unmaps it */
    atomic_store_explicit(&t->pins[i], NULL, memory_order_release);
    while (t->depth > 0 && atomic_load_explicit(
               &t->pins[t->depth - 1], memory_order_relaxed) == NULL) {
        t->depth--;
    }
}

int
gate_held_here(const HandleObject *h)
{
    gate_thread *t = gate_self;
    int n = 0;
    for (int i = 0; t != NULL && i < t->depth; i++) {
        n += atomic_load_explicit(&t->pins[i], memory_order_relaxed) == h;
    }
    if (t != NULL && t->depth == GATE_DEPTH
        && atomic_load(&h->overflow_pins) > 0) {
        n++; /* perhaps ours: never wait for ourselves */
    }
    return n;
}

int
gate_held_elsewhere(const HandleObject *h)
{
    if (atomic_load(&h->overflow_pins) > 0) {
        return 1;
    }
    for (gate_thread *t = atomic_load(&gate_threads); t != NULL;
         t = t->next) {
        if (t == gate_self) {
            continue;
        }
        for (int i = 0; i < GATE_DEPTH; i++) {
            if (atomic_load(&t->pins[i]) == h) {
                return 1;
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* orphaned txns                                                       */

/*
 * Orphans: write txns whose object was dropped by another thread than the
 * one that opened it (a `with` in a generator freed by the cyclic GC
 * elsewhere, say).  Only that thread may unlock the writer mutex, so the
 * txn is moved here, with a reference to its handle (close() refuses
 * while it is open, and the mapping stays), and that thread is flagged
 * (its gate record): its next txn, auto-commit, locked read or close()
 * rolls the orphan back (orphans_end_own), and if none comes, its
 * guard does when the thread ends.
 */
typedef struct orphan {
    struct orphan *next;
    HandleObject *mem;
    stx_txn txn;
} orphan;

static orphan *orphans;
/* Orphans listed now, anywhere: 0 almost always, so the check on every
 * txn open is one load of a line nobody writes. */
static _Atomic int orphans_listed;
/* Guards `orphans`: txn objects die in any thread, threads end at any
 * time.  Held only around the list operations (no Python code). */
static pthread_mutex_t orphans_lock = PTHREAD_MUTEX_INITIALIZER;

void
orphan_keep(HandleObject *mem, stx_txn *txn)
{
    orphan *o = PyMem_RawMalloc(sizeof(*o));
    if (o == NULL) {
        return; /* left listed in freed memory: never; out of memory */
    }
    o->mem = (HandleObject *)Py_NewRef(mem);
    pthread_mutex_lock(&orphans_lock);
    stx_txn_move(&o->txn, txn);
    o->next = orphans;
    orphans = o;
    atomic_fetch_add(&orphans_listed, 1);
    gate_flag_orphan(o->txn.thread);
    pthread_mutex_unlock(&orphans_lock);
}

void
orphans_reap(void)
{
    orphan *done = NULL;
    pthread_mutex_lock(&orphans_lock);
    for (orphan **p = &orphans; *p != NULL;) {
        orphan *o = *p;
        if (o->txn.state == STX_TXN_OPEN && o->txn.fork_gen == stx_fork_gen) {
            p = &o->next;
            continue;
        }
        *p = o->next;
        o->next = done;
        done = o;
        atomic_fetch_sub(&orphans_listed, 1);
    }
    pthread_mutex_unlock(&orphans_lock);
    while (done != NULL) { /* handles may be freed: outside the lock */
        orphan *o = done;
        done = o->next;
        Py_DECREF(o->mem);
        PyMem_RawFree(o);
    }
}

void
orphans_end_own(void)
{
    if (atomic_load_explicit(&orphans_listed, memory_order_relaxed) == 0
        || !gate_take_orphan_flag()) {
        return;
    }
    uint64_t self = stx_thread_id();
    pthread_mutex_lock(&orphans_lock);
    for (orphan *o = orphans; o != NULL; o = o->next) {
        if (o->txn.thread == self && o->txn.state == STX_TXN_OPEN
            && o->txn.fork_gen == stx_fork_gen) {
            /* a rollback that finds corruption marks the segment
             * broken; the next call on it reports that */
            stx_txn_end(&o->txn, 0);
        }
    }
    pthread_mutex_unlock(&orphans_lock);
    orphans_reap();
}
