/*
 * engine.h -- the shmtxn engine: segments, the writer lock, reader slots,
 * the undo log and lock-free reads.  Plain C11 + POSIX; no Python.h.
 *
 * The dict layout is declared in dict/dict.h; internal.h holds what only
 * the engine's own files share.  Names take the prefix `stx_`.  Every
 * function that can fail returns 0 or a negative STX_E* code; stx_detail()
 * then holds a sentence with the numbers (per thread), which the binding
 * puts into the exception message.
 *
 * Waiting is done in slices so that the caller (the Python binding) can
 * release the GIL around each slice and check for Ctrl-C and its deadline
 * between them: stx_txn_step() returns STX_EAGAIN when a slice ran out.
 */
#ifndef STX_ENGINE_H
#define STX_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "layout.h"

/* Error codes.  errors.c in the binding maps each to one exception. */
enum stx_error {
    STX_OK = 0,
    STX_EAGAIN = -1,     /* a wait slice ran out; call again */
    STX_EEXIST = -2,     /* create: the name exists */
    STX_ENOENT = -3,     /* attach: no such name */
    STX_EACCES = -4,     /* permission denied by the OS */
    STX_EFULL = -5,      /* no room in /dev/shm, or the segment is full */
    STX_ECORRUPT = -6,   /* a value read from the segment is impossible */
    STX_EINCOMPAT = -7,  /* another format version or ABI */
    STX_ETOOLARGE = -8,  /* the txn outgrew the undo log */
    STX_ENESTED = -9,    /* this thread already has a txn on the segment */
    STX_ECLOSED = -10,   /* the txn or segment is closed */
    STX_EFORKED = -11,   /* the txn was opened by the parent of a fork */
    STX_ESLOTS = -12,    /* every reader slot is held by a live process */
    STX_EINVAL = -13,    /* bad argument (name, size, range) */
    STX_ERANGE = -14,    /* offset/length outside the data region */
    STX_EREADONLY = -15, /* write through a read-only handle or read txn */
    STX_ENOMEM = -16,
    STX_ESYS = -17,      /* another OS error; stx_detail() says which */
    STX_EHEAPFULL = -18, /* a dict's heap has no room for a block */
    STX_ETHREAD = -19,   /* a txn used from a thread not its own */
};

/* Longest segment name accepted (without the leading '/'). */
#define STX_NAME_MAX 248
/* Entries in a txn's cache of ranges already logged. */
#define STX_LOGGED_CACHE 16

/*
 * stx_file -- this process's one file descriptor for one segment.
 *
 * Liveness beacon (process.c): the process holds a classic fcntl write
 * lock on byte `pid` of this fd.  Classic locks vanish when *any* fd of
 * the file closes in the process, so every handle of the process shares
 * this one fd (refcounted, found by device and inode) and it is closed
 * only with the last handle.  Handles of one kind (read-write or
 * read-only) share one mapping the same way, so re-attaching in a process
 * costs no mmap.  A forked child re-takes the beacon under its own pid in
 * an atfork handler (engine.c) and claims a reader slot of its own there
 * if it shares a mapping, else on first use.
 *
 * The registry (refs, maps) is guarded by mapping.c's registry lock;
 * `slot` is set once per process generation, under that lock; `ntxn` is
 * lock.c's.
 */
typedef struct stx_file {
    struct stx_file *next;
    dev_t dev;
    ino_t ino;
    int fd;
    int refs;
    int creating;       /* this process is initialising the segment */
    int verified;       /* the name named this file while we held our
                           beacon and a lock on byte 0 (segment.c, "Who
                           may reclaim"); 0 if only a probe opened it */
    uint8_t *maps[2];   /* mappings shared by this process's handles: */
    size_t map_sizes[2]; /* [0] read-write, [1] data read-only */
    int map_refs[2];
    /* Our reader slot index, -1 until claimed, and stx_fork_gen when it
     * was claimed: read by any thread without a lock, set under the
     * registry lock (readers.c) */
    _Atomic int32_t slot;
    _Atomic uint64_t fork_gen;
    uint64_t slots_off; /* the slot table, from the validated header */
    uint32_t nslots;
    _Atomic int ntxn;   /* tracked txns open in this process (lock.c) */
    /* Bytes of the undo log and of a dict's heap this process has seen
     * backed by pages itself (stx_ensure_backed), whatever the counters
     * in shared memory claim; touched only under the writer mutex. */
    uint64_t undo_backed, heap_backed;
} stx_file;

/*
 * stx_segment -- one handle: a mapping of one segment.
 *
 * `hdr` and the slot table are always mapped read-write (locking writes
 * them); the data region is PROT_READ for read-only handles, so a stray
 * write through a read-only handle faults in the OS rather than corrupting.
 */
typedef struct stx_segment {
    stx_file *file;
    uint8_t *base;
    size_t map_size;
    stx_header *hdr;
    stx_reader_slot *slots;
    uint32_t nslots;
    uint8_t *undo;
    uint64_t undo_size;
    uint8_t *data;
    uint64_t data_size;
    int read_only;
    int shared_map;     /* `base` is file->maps[read_only], refcounted */
    int populate;       /* prefault header, slots and data (not the undo
                           log's holes): no first-touch faults */
    char name[STX_NAME_MAX + 2];
} stx_segment;

/* Phases of a txn; stx_txn_step() moves a txn from BEGIN to OPEN. */
enum stx_txn_state {
    STX_TXN_IDLE = 0,    /* not begun, or ended */
    STX_TXN_LOCKING,     /* write: waiting for the writer mutex */
    STX_TXN_DRAINING,    /* write: mutex held, waiting for readers to leave */
    STX_TXN_READING,     /* read: waiting for a writer to finish */
    STX_TXN_OPEN,
};

/* A range this txn already logged (to skip logging it again). */
typedef struct stx_logged {
    uint64_t serial;
    uint64_t offset;
    uint64_t length;
} stx_logged;

/*
 * stx_txn -- one transaction on one segment, owned by one thread.
 *
 * `logged` (optional, STX_LOGGED_CACHE entries, zeroed by its owner) lets
 * a txn that writes the same item many times log it once; `serial` tags
 * its entries so a reused cache needs no clearing.  Single auto-committed
 * operations write once and pass NULL.
 *
 * A caller that keeps a txn beyond one call (a Python txn object) sets
 * `tracked` before stx_txn_init: the txn is then listed for the process
 * (lock.c explains the registry) and ended with its thread.
 */
typedef struct stx_txn {
    stx_segment *seg;
    int write;
    int state;          /* enum stx_txn_state */
    int dirty;          /* a write happened: seq is odd */
    int failed;         /* ended by its owner after a failed write (the
                           engine code), so nothing of it committed */
    int logged_all;     /* the whole data region is logged: log no more */
    int32_t slot;       /* read txn: the reader slot it counts in */
    int tracked;        /* set by the owner: list this txn */
    int listed;         /* on the registry now */
    int pinned;         /* the caller's, never the engine's: the binding
                           pins the handle of a txn of one call's own
                           while it may release the GIL (gate.c) */
    uint64_t serial;
    uint64_t fork_gen;
    uint64_t thread;    /* stx_thread_id() of the thread that opened it */
    stx_logged *logged;
    struct stx_txn *next, *prev; /* the registry list */
} stx_txn;

/* What stx_probe() found under a name. */
enum stx_probe_state {
    STX_PROBE_READY = 1,    /* a valid segment; `seg` is mapped read-only */
    STX_PROBE_BUILDING,     /* being created by a live process */
    STX_PROBE_ABANDONED,    /* its creator died mid-creation */
    STX_PROBE_FOREIGN,      /* not a shmtxn segment (or no header yet) */
    STX_PROBE_CORRUPT,      /* shmtxn magic, impossible header */
    STX_PROBE_INCOMPAT,     /* another format version or ABI */
};

/* What a layout tells segment creation about a new segment of
 * `data_size` data bytes. */
typedef struct stx_layout_plan {
    uint64_t undo_size;     /* the undo log when the caller gives none */
    uint64_t data_reserve;  /* data bytes to back with pages at once; the
                               layout reserves the rest itself, later */
} stx_layout_plan;

/*
 * stx_layout -- what the data region of a segment holds, as segment
 * creation needs to know it: the kind stored in the header, a plan step
 * (the layout's sizing policy) and a format step that initialises the
 * data region of the new, not yet published segment.  segment.c knows
 * layouts only through this; each is defined with its own code
 * (stx_slots_layout in slots.c, stx_dict_layout in dict/table.c).
 */
typedef struct stx_layout {
    uint32_t kind;          /* enum stx_layout_kind */
    /* Fill `plan` for a segment of `data_size` data bytes. */
    void (*plan)(uint64_t data_size, stx_layout_plan *plan);
    /* Initialise the data region (its first `reserved` bytes are backed);
     * NULL: it stays zero, or the caller's initial bytes. */
    int (*format)(stx_segment *seg, uint64_t reserved);
} stx_layout;

/* Options for stx_create(). */
typedef struct stx_create_opts {
    const stx_layout *layout; /* what the data region holds */
    uint64_t data_size;
    uint64_t undo_size;     /* cap on the undo log; 0: the default, which
                               any txn of a slots segment fits */
    uint32_t nslots;        /* 0: the default */
    const char *format;
    uint32_t itemsize;
    uint32_t ndim;
    const uint64_t *shape;
    unsigned mode;          /* file mode, e.g. 0600 */
    int populate;           /* prefault header, slots and data */
    const void *initial;    /* data_size bytes to start with, or NULL */
} stx_create_opts;

/* Bumped in every forked child; a txn from before the fork is stale. */
extern volatile uint64_t stx_fork_gen;
/* This process's pid, kept current across fork() (getpid() is a system
 * call in glibc, too slow for the hot path). */
extern volatile int32_t stx_self_pid;

/* --- initialisation (engine.c) --- */

/* Register the fork handler once per process.  Returns 0 or STX_ESYS. */
int stx_engine_init(void);

/* --- errors and crash points (errors.c) --- */

/* The sentence describing this thread's last error. */
const char *stx_detail(void);
/* Set this thread's error sentence; returns `code` for tail calls. */
int stx_fail(int code, const char *fmt, ...);
/* Test hook: SIGKILL this process if SHMTXN_CRASH_AT names `point`. */
void stx_crash_point(const char *point);
/* Set the crash point name (from the environment, by the binding). */
void stx_set_crash_point(const char *point);

/* --- where segments live (mapping.c) --- */

/* The directory segments live in, without a trailing '/':
 * $SHMTXN_SHM_DIR as it was when first asked (stx_engine_init asks; a
 * relative one is made absolute then), else /dev/shm.  Messages that
 * advise the user about space or modes name it. */
const char *stx_shm_dir(void);

/* --- process identity and liveness beacons (process.c) --- */

/* 1 if a process with this pid holds its beacon on the file, else 0. */
int stx_pid_alive(const stx_file *file, int32_t pid);
/* The pids of other processes holding a beacon on the file (up to `max`):
 * every process that has the segment open, attached or not yet claimed,
 * shows here.  Returns how many were found. */
int stx_beacon_holders(const stx_file *file, int32_t *pids, int max);

/* --- item formats of slots segments (items.c) --- */

/* How an item format's bytes are read as a number. */
enum stx_item_kind { STX_ITEM_SIGNED, STX_ITEM_UNSIGNED, STX_ITEM_FLOAT,
                     STX_ITEM_HALF, STX_ITEM_BOOL };

/* stx_item_format -- one struct-module code a slots segment may hold, in
 * native size and order. */
typedef struct stx_item_format {
    char code;
    uint8_t size;
    uint8_t kind; /* enum stx_item_kind */
} stx_item_format;

/* The format of struct code `code` (one code, an optional '@' first), or
 * NULL if slots cannot hold it. */
const stx_item_format *stx_item_format_find(const char *code);

/* --- the slots layout (slots.c) --- */

/* Fixed-size items (SharedMemory). */
extern const stx_layout stx_slots_layout;
/* The undo log size of a slots segment whose creator gives none. */
uint64_t stx_default_undo_size(uint64_t data_size);

/* --- segments (segment.c) --- */

/* The ABI word written into and checked against every header. */
uint32_t stx_abi_word(void);
/* 0 if `name` is a valid segment name (no '/', 1..STX_NAME_MAX chars). */
int stx_check_name(const char *name);

/* Create and initialise a new segment; `seg` is filled on success.  A
 * leftover under the name that is provably unused (its creator died and
 * no process has it open, or its creator died mid-creation) is removed
 * first (segment.c, "Who may reclaim"); anything else there is
 * STX_EEXIST, with stx_detail() saying why it stays. */
int stx_create(stx_segment *seg, const char *name,
               const stx_create_opts *opts);
/* Create and initialise a new segment (as stx_create) or, if the name
 * exists, attach to it read-write (as stx_attach); *created says which.
 * Races with other creators, attachers and removers are resolved inside,
 * in a bounded number of rounds. */
int stx_open_or_create(stx_segment *seg, const char *name,
                       const stx_create_opts *opts, uint64_t timeout_ns,
                       int *created);
/* Attach to an existing segment, waiting at most `timeout_ns` for its
 * creator to finish initialising it; `populate` prefaults the mapping. */
int stx_attach(stx_segment *seg, const char *name, int read_only,
               int populate, uint64_t timeout_ns);
/* Look at a segment without attaching to it: no reader slot is claimed
 * and nothing waits.  Sets *state; for STX_PROBE_READY `seg` is mapped
 * read-only (close it with stx_close), otherwise it is closed again and
 * stx_detail() says why.  Returns 0, or an error opening the name. */
int stx_probe(stx_segment *seg, const char *name, int *state);
/* Unmap and drop this handle's reference to its file; idempotent. */
void stx_close(stx_segment *seg);
/* Remove the name if it still names the file (dev, ino) -- or whatever
 * it names when ino == 0.  STX_ENOENT if the name is gone or names
 * another segment now. */
int stx_unlink(const char *name, dev_t dev, ino_t ino);
/* Remove `name` only if it is a provably unused shmtxn segment, under the
 * attach/reclaim protocol on byte 0 (segment.c), so that no attacher
 * between its open and its beacon loses the file: 0 (removed, or already
 * gone), or STX_EEXIST with stx_detail() saying what keeps it.  With
 * `creator_may_live`, a creator that is alive but has closed it (no
 * beacon) does not keep it (`shmtxn gc`); else it must be dead (create's
 * reclaim). */
int stx_reclaim(const char *name, int creator_may_live);
/* The kind word glibc gives our robust, process-shared mutex (-1 if not
 * known on this libc). */
int stx_mutex_kind(void);
/* 1 unless `m` is certainly not the robust, process-shared mutex a
 * segment was created with (a damaged kind word). */
int stx_mutex_plausible(const pthread_mutex_t *m);

/* --- reader slots (readers.c) --- */

/* Make sure this process holds a reader slot in `seg` (threads racing to
 * claim the first one claim one between them). */
int stx_slot_ensure(stx_segment *seg);
/* Our slot `stale` was found taken from us: claim another, unless
 * another thread has already. */
int stx_slot_renew(stx_segment *seg, int32_t stale);
/* Release this process's slot (last close). */
void stx_slot_release(stx_segment *seg);
/* Clear the slots of dead processes; returns how many were cleared. */
int stx_slots_reap(stx_segment *seg);
/* 1 if the process a slot's pid word `seen` names holds its beacon: the
 * reader for seen > 0, the reaper for a mark -pid; 0 for 0 and for
 * INT32_MIN, which names no process. */
int stx_slot_holder_alive(const stx_file *file, int32_t seen);
/* Reap `slot` if `seen` (its pid as just read) is a dead owner, or the
 * mark of a dead reaper; 1 if this call freed it, 0 otherwise. */
int stx_slot_reap(stx_segment *seg, stx_reader_slot *slot, int32_t seen);
/* CAS the first free slot of the table to `me`; its index, or -1 if the
 * table is full.  Touches only shared memory (safe in an atfork child). */
int32_t stx_slot_claim(stx_header *hdr, stx_reader_slot *slots,
                       uint32_t nslots, int32_t me);

/* --- transactions (lock.c) --- */

/* Prepare `txn` (no waiting): checks nesting, claims a slot. */
int stx_txn_init(stx_txn *txn, stx_segment *seg, int write);
/* Advance `txn` towards OPEN, waiting at most `slice_ns` (0: only try).
 * Returns 0 once open, STX_EAGAIN if the slice ran out, or an error
 * (the txn is then already cancelled). */
int stx_txn_step(stx_txn *txn, uint64_t slice_ns);
/* Give up a txn that is not yet open (timeout, Ctrl-C). */
void stx_txn_cancel(stx_txn *txn);
/* End an open txn: commit (keep writes) or roll back.  Always releases
 * what the txn holds; returns an error only if rollback found corruption. */
int stx_txn_end(stx_txn *txn, int commit);
/* Check that `txn` may be used now (open, same process generation). */
int stx_txn_usable(const stx_txn *txn);
/* End `txn` from whatever thread drops it (a destructor): a read txn is
 * released, a write txn of the calling thread rolled back, and 0 returned.
 * A listed write txn of another thread cannot be unlocked here: 1 says it
 * stays open until that thread ends -- move it (stx_txn_move) to memory
 * that lives until then, so close() still counts it and the thread's
 * stx_thread_exit() still rolls it back. */
int stx_txn_abandon(stx_txn *txn);
/* Move a listed txn to `to` (its list entry follows); `from` is left
 * ended and unlisted. */
void stx_txn_move(stx_txn *to, stx_txn *from);
/* End every tracked txn the calling thread still has open (rolled back):
 * call it when a thread ends.  Returns how many it ended. */
int stx_thread_exit(void);
/* A number for the calling thread, never reused in the process. */
uint64_t stx_thread_id(void);
/* Tracked txns open on the handle `seg` in this process. */
int stx_segment_open_txns(const stx_segment *seg);
/* In a forked child: forget the parent's tracked txns. */
void stx_txns_after_fork(void);
/* Roll back the undo log of a dead writer; caller holds the mutex. */
int stx_recover(stx_segment *seg);
/* Mark the segment unusable for good (enum stx_broken); returns
 * STX_ECORRUPT with the sentence stx_check_recoverable gives. */
int stx_mark_unrecoverable(stx_segment *seg, uint32_t why);
/* 0, or STX_ECORRUPT if the segment was marked unusable. */
int stx_check_recoverable(const stx_segment *seg);

/* 1 if the writer mutex is held by a process that is gone (its beacon,
 * or the robust mutex's owner-died mark, says so) and not yet recovered. */
int stx_writer_dead(const stx_segment *seg);
/* Bump the change word and wake every waiter (what a commit does after
 * unlocking); also how a closing handle wakes its own waiters early. */
void stx_announce_change(stx_segment *seg);

/* --- waiting for a change (wait.c) --- */

/* One thread's wait, between stx_wait_begin and stx_wait_end. */
typedef struct stx_waiter {
    int32_t slot;       /* the reader slot it is counted in */
    uint64_t fork_gen;
} stx_waiter;

/* The segment's version: commits + recoveries (moves on every commit of a
 * txn that wrote and every rollback of a dead writer). */
uint64_t stx_version(const stx_segment *seg);
/* Count the calling thread as a waiter.  STX_ENESTED if it has a txn open
 * on the segment (nothing could commit while it waits). */
int stx_wait_begin(stx_segment *seg, stx_waiter *w);
/* Sleep at most `slice_ns` (0: only look) until the version differs from
 * `since`; 0 with *version the new one, STX_EAGAIN if the slice ran out
 * (*version == since), or an error.  Rolls back a dead writer first. */
int stx_wait_step(stx_segment *seg, uint64_t since, uint64_t slice_ns,
                  uint64_t *version);
/* Stop counting the wait begun with stx_wait_begin. */
void stx_wait_end(stx_segment *seg, stx_waiter *w);

/* --- undo log and data access (undo.c) --- */

/* Log the old bytes of [offset, offset+length) unless already logged,
 * making seq odd first if this is the txn's first write. */
int stx_undo_prepare(stx_txn *txn, uint64_t offset, uint64_t length);
/* Write `length` bytes at `offset` of the data region inside `txn`. */
int stx_write(stx_txn *txn, uint64_t offset, const void *src,
              uint64_t length);
/* Read `length` bytes at `offset` inside an open txn. */
int stx_read(const stx_txn *txn, uint64_t offset, void *dst,
             uint64_t length);
/* Undo every logged write, newest first, and empty the log. */
int stx_undo_rollback(stx_segment *seg);
/* Check the whole undo log is well formed (for recovery and `check`). */
int stx_undo_validate(const stx_segment *seg);

/* A writable pointer to [offset, +length) of space only this txn's own
 * allocations reference (see layout.h), seq made odd; NULL if the range
 * is outside the data region or the txn cannot write. */
uint8_t *stx_fresh(stx_txn *txn, uint64_t offset, uint64_t length);
/* Give back undo space once the log is empty (caller holds the writer
 * mutex): lower `undo_reserved` to what is kept, then punch holes past it
 * -- up to where the reservation ended, or with `all` (recovery) to the
 * end of the region, for pages a dead writer reserved without counting.
 * A txn that ended keeps what its log used (`peak` bytes, at least the
 * base), so back-to-back big txns reuse their pages and the next smaller
 * txn gives the rest back; recovery keeps only the base. */
int stx_undo_shrink(stx_segment *seg, int all, uint64_t peak);
/* Bytes still free in the undo log of `seg`. */
uint64_t stx_undo_room(const stx_segment *seg);
/* Write `length` bytes at `offset` into space only this txn's own
 * allocations reference (see layout.h): no undo record, seq made odd. */
int stx_write_fresh(stx_txn *txn, uint64_t offset, const void *src,
                    uint64_t length);

#endif /* STX_ENGINE_H */
