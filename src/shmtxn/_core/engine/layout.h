/*
 * layout.h -- the bytes of a shmtxn segment, and the protocols over them.
 *
 * A segment is one POSIX shm object, laid out as (offsets from its start):
 *
 *   [ header: 1 page ][ reader slots ][ undo log (virtual) ][ data ]
 *
 * (the undo log and the data start on page boundaries).  The undo log
 * region is sparse: only its reserved prefix is backed by pages (see
 * "Undo space" above stx_header).
 *
 * Everything inside is an offset, never a pointer: every process maps the
 * segment at a different address.  docs/format.md documents these fields
 * for people; this file is the authority for the compiler.  Bump
 * STX_FORMAT_VERSION on any change to the bytes below.
 *
 * Nothing read from a segment is trusted: segment.c validates every
 * immutable field on attach (header_validate), and every mutable field
 * (undo length, slot high-water mark, reader counts) is bounds-checked or
 * clamped where it is read.
 */
#ifndef STX_LAYOUT_H
#define STX_LAYOUT_H

#include <pthread.h>
#include <stdalign.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#define STX_MAGIC 0x4e5854544d4853ULL  /* "SHMTTXN" little-endian, plus 0 */
/* Stored first, while the creator builds the header: tells a half-built
 * shmtxn segment from another program's zero-filled one. */
#define STX_MAGIC_BUILDING 0x444c4955425854ULL /* "TXBUILD" */
#define STX_FORMAT_VERSION 5u
#define STX_CACHE_LINE 64u
#define STX_PAGE 4096u
#define STX_MAX_NDIM 8u
#define STX_FORMAT_LEN 16u

/* Why a segment was marked unusable (header.unrecoverable). */
enum stx_broken {
    STX_BROKEN_ROLLBACK = 1,   /* a dead writer's undo log was damaged */
    STX_BROKEN_DEAD_OWNER = 2, /* the writer mutex names a vanished owner */
    STX_BROKEN_MUTEX = 3,      /* the writer mutex itself is damaged */
};

/* Layout kinds: what the data region holds. */
enum stx_layout_kind {
    STX_LAYOUT_SLOTS = 1, /* fixed-size typed items (SharedMemory) */
    STX_LAYOUT_DICT = 2,  /* hash table + heap (SharedDict) */
    STX_LAYOUT_LAST = STX_LAYOUT_DICT, /* the highest kind a header holds */
};

/*
 * One reader slot: one cache line, owned by one attached process.
 *
 * `pid` > 0: the owner; 0: free; < 0: being reaped by process -pid.
 *
 * Claim: a process CASes `pid` from 0 to its pid when it first attaches,
 * or at once in a child forked from an attached process (readers.c); the
 * slot doubles as the attach table that `shmtxn ls` and `gc` read.
 *
 * Reap: a slot whose owner holds no liveness beacon (process.c) belongs to
 * a dead process.  Exactly one reaper wins: it CASes `pid` from the dead
 * pid to minus its own pid, checks the beacon once more (a live process
 * that reused the pid keeps its slot: the pid goes back), then stores
 * `readers` = 0 and only then `pid` = 0.  A reaper that died mid-way
 * leaves its mark, which anyone may finish once its beacon is gone too.
 * Counts are lowered without wrapping below zero, so a count cleared by a
 * reaper can never block writers.
 *
 * Read protocol (Dekker-style, all seq_cst):
 *   reader: readers += 1; if header.writer_flag: readers -= 1, wait on the
 *           writer mutex, retry.  Leave: readers -= 1 in the slot it
 *           entered (the txn keeps the index); if writer_flag, bump
 *           header.drain_futex and wake it.
 *   writer: (holding the mutex) writer_flag = 1; for each slot below the
 *           high-water mark, wait until readers == 0 (or its pid is dead).
 * Either the reader sees the flag, or the writer sees the reader: never
 * neither.  Threads of one process share their process's slot (a count,
 * not a bit).  A reader that takes the mutex and still finds the flag up
 * knows it is stale (only the mutex holder raises it) and lowers it.
 *
 * `waiting` counts the owner's threads inside a wait for a change (see
 * "Waiting for a change" above stx_header); a reaper subtracts it from
 * header.change_waiters (exchange to 0 first, then subtract: a reaper
 * killed in between leaves the count too high, which costs writers a
 * wake-up call, never a missed one).
 */
typedef struct stx_reader_slot {
    _Atomic int32_t pid;      /* 0 = free */
    _Atomic uint32_t readers; /* read txns open in this process */
    uint64_t attached_ns;     /* CLOCK_REALTIME when claimed (for `ls`) */
    _Atomic uint32_t waiting; /* this process's threads waiting for a
                                 change (counted in change_waiters too) */
    uint8_t pad[STX_CACHE_LINE - 20];
} stx_reader_slot;

/*
 * The segment header: the first page.
 *
 * Creation protocol (segment.c, stx_create): the creator opens the name
 * with O_EXCL, takes an fcntl write lock on byte 0 (the init lock), writes
 * STX_MAGIC_BUILDING into the still empty file at once (a creator killed
 * from then on leaves a segment `shmtxn gc` knows as abandoned, not an
 * anonymous file), takes its beacon, sizes and reserves the file as the
 * layout plans (stx_layout), maps it, fills every header field, lets the
 * layout format the data region, stores STX_MAGIC with release order,
 * and only then drops the init lock and claims its reader slot.  An
 * attacher that finds `magic` not yet STX_MAGIC (zero, or BUILDING) polls
 * until it is; if it finds the init lock free and `magic` still not
 * final (after a short grace for a creator between opening the name and
 * locking), the creator died mid-creation and the attach fails with
 * CorruptSegmentError at once.
 *
 * Write protocol (lock.c, undo.c): a writer holds `writer_mutex` (robust,
 * process-shared) for its whole txn and sets `writer_flag` to turn readers
 * away (lock first, then `writer_flag` = 1, then `writer_pid`, then wait
 * for the readers to drain).  Each write first appends {offset, length,
 * old bytes} to the undo log and publishes the new `undo_used` with a
 * release store, then -- on the txn's first write -- makes `seq` odd,
 * then writes in place.  (Logging changes no byte a reader sees, so `seq`
 * turns odd as late as it may: lock-free readers beside a busy writer
 * wait only for its stores, not its logging.)  Ending a txn that wrote (lock.c, finish_writes and
 * release_writer), in this order: on rollback, replay the log; then
 * `undo_used` = 0 (release) -- the commit point --, then `seq` + 1, even
 * again (release), then `modified_ns` and `commits` (commit only), then
 * `undo_reserved` lowered to what the txn's log used (at least the base)
 * and holes punched past it (only if more was reserved; see "Undo space"
 * below), then `writer_pid` = 0, `writer_flag` = 0 (release), unlock.  A txn that never
 * wrote touches neither `undo_used` nor `seq`.  (Emptying the log before
 * `seq` turns even means a writer killed between the two stores has
 * nothing replayed; recovery then only makes `seq` even.)
 *
 * Undo space (undo.c): the undo region is `undo_size` bytes of the file,
 * most of them holes (tmpfs charges only pages that exist).  Its first
 * `undo_reserved` bytes (a multiple of the page size) are backed by
 * posix_fallocate, so a write below it can never SIGBUS; `undo_used` <=
 * `undo_reserved` <= `undo_size` always.  A writer (holding the mutex)
 * about to append a record ending past `undo_reserved` first calls
 * posix_fallocate for the missing pages (at least up to the base, then in
 * steps of at least 1 MiB or a quarter of what is reserved), then stores
 * the new `undo_reserved` (release), then writes the record; a full file
 * system fails the write with STX_EFULL before anything is written.  After
 * a txn that wrote, once `undo_used` is 0 (the log holds nothing to
 * replay), the writer lowers `undo_reserved` to what its log used,
 * rounded up to a page and at least the base -- 64 KiB, or `undo_size` if
 * smaller -- (release) and only then punches holes (FALLOC_FL_PUNCH_HOLE)
 * from there to where the reservation ended.  So back-to-back big txns
 * keep their pages (no fallocate, fault-in and punch per txn), and the
 * next smaller txn gives a big one's pages back.
 * Lowering before punching keeps the invariant: a writer killed between
 * the two leaves pages nobody counts (freed by the next recovery), never a
 * count of pages that are gone.  A writer killed after posix_fallocate but
 * before storing `undo_reserved` leaves uncounted pages too.  So recovery,
 * after replaying and emptying the log, lowers `undo_reserved` to the base
 * and punches everything from the base to the end of the region.
 *
 * A slots segment's log never needs more than about twice the data: once
 * a record would take the log past `data_size` bytes -- or past the point
 * where a whole copy would still fit under `undo_size` -- the writer logs
 * the whole data region as one record instead and logs nothing more in that
 * txn (rollback applies records newest first, so the older records still
 * restore what the txn changed before the whole-region record).
 *
 * Recovery (lock.c, stx_recover): whoever locks the mutex and gets
 * EOWNERDEAD records itself in `writer_pid`, replays the undo log
 * backwards, clears it, makes `seq` even, gives back undo space as above,
 * reaps dead readers' slots, clears `writer_flag` and `writer_pid`, and
 * only then marks the mutex consistent.  If any step fails it sets `unrecoverable` (and `seq` odd
 * for good) before unlocking without consistent: from then on every txn
 * in every process fails at once with CorruptSegmentError, and lock-free
 * reads fall back to the lock and fail too.  The mutex is never tried
 * with trylock (on a mutex that is not recoverable glibc's trylock leaves
 * the word holding the caller's thread id); a waiter that finds the
 * mutex held by a thread that no longer exists, which the kernel did not
 * mark dead (the word was overwritten), sets `unrecoverable` too rather
 * than wait forever.
 *
 * Lock-free single reads (seqlock.h): read `seq` (acquire), the item
 * (relaxed), acquire fence, `seq` again; equal and even means a committed
 * value.
 *
 * Waiting for a change (wait.c; lock.c wakes): the version a user sees is
 * `commits` + `recoveries` -- it moves on every commit of a txn that
 * wrote and on every rollback of a dead writer.  `change_futex` is a
 * 32-bit word bumped (seq_cst fetch_add) after each: by a committing
 * writer once it has unlocked, by a recoverer after the rollback; then,
 * only if `change_waiters` is not 0 (seq_cst load), FUTEX_WAKE all.  A
 * commit with no waiter thus costs one atomic add and one load.  A waiter
 * raises `change_waiters` (and its slot's `waiting`) first, then loops:
 * load `change_futex`, compare the version with the one it started from,
 * FUTEX_WAIT on the loaded word for at most one slice.  Dekker again:
 * either the writer sees the waiter's count or the waiter sees the bumped
 * word (FUTEX_WAIT returns at once).  A waiter re-reads the version after
 * every slice, so even a writer killed between unlocking and waking costs
 * a waiter one slice at most; between slices it also rolls back a writer
 * whose beacon is gone (a read txn does it), so a killed writer wakes
 * every waiter.  The counts never wrap below zero.
 */
typedef struct stx_header {
    /* --- identity and geometry: written once by the creator --- */
    _Atomic uint64_t magic;     /* BUILDING first, STX_MAGIC last */
    uint32_t version;           /* STX_FORMAT_VERSION */
    uint32_t abi;               /* stx_abi_word() of the creator */
    uint32_t layout_kind;       /* enum stx_layout_kind */
    uint32_t header_size;       /* sizeof(stx_header), page rounded */
    uint64_t total_size;        /* bytes of the shm object */
    uint64_t slots_off;         /* reader slot table */
    uint32_t nslots;            /* max attached processes */
    uint32_t slot_size;         /* sizeof(stx_reader_slot) */
    uint64_t undo_off;          /* undo log region */
    uint64_t undo_size;
    uint64_t data_off;          /* data region, page aligned */
    uint64_t data_size;         /* the user's `size` */
    char format[STX_FORMAT_LEN]; /* item format (struct code), NUL padded */
    uint32_t itemsize;
    uint32_t ndim;
    uint64_t shape[STX_MAX_NDIM];
    uint64_t hash_key[2];       /* per-segment SipHash key (dict layout) */
    int32_t creator_pid;
    uint32_t reserved0;
    uint64_t created_ns;        /* CLOCK_REALTIME */
    uint64_t checksum;          /* FNV-1a of the fields above it */

    /* --- writer state: written by the writer, read by every reader --- */
    alignas(STX_CACHE_LINE) _Atomic uint32_t writer_flag;
    _Atomic int32_t writer_pid;      /* informational: who holds the lock */
    uint64_t reserved1;              /* (seq before format 4) */
    _Atomic uint32_t drain_futex;    /* bumped by readers a writer waits on */
    _Atomic uint32_t slots_hwm;      /* slots at or above this are unused */
    _Atomic uint32_t unrecoverable;  /* 0, or why the segment is unusable:
                                        enum stx_broken */
    uint64_t pid_ns;                 /* the creator's pid namespace (inode
                                        of /proc/self/ns/pid), 0: unknown */

    /* --- undo log state: the writer's own line --- */
    alignas(STX_CACHE_LINE) _Atomic uint64_t undo_used; /* bytes of log */
    _Atomic uint64_t commits;        /* committed write txns */
    _Atomic uint64_t recoveries;     /* dead writers rolled back */
    _Atomic uint64_t modified_ns;    /* CLOCK_REALTIME of the last commit */
    _Atomic uint64_t undo_reserved;  /* bytes of the undo region backed by
                                        posix_fallocate (a page multiple) */

    /* --- the writer mutex: robust and process-shared --- */
    alignas(STX_CACHE_LINE) pthread_mutex_t writer_mutex;

    /* --- seq, alone on its line: lock-free readers load it twice per
     * read, so only the two stores of a write txn (odd, then even) take
     * the line from their caches, not the lock's and unlock's stores to
     * the writer line --- */
    alignas(STX_CACHE_LINE) _Atomic uint64_t seq; /* odd while a writer
                                                    has written */
    _Atomic uint32_t change_futex;   /* bumped after every commit and
                                        recovery: waiters sleep on it */
    _Atomic uint32_t change_waiters; /* threads waiting for a change */
} stx_header;

/*
 * One undo log record, followed by `length` old bytes padded to 8.  The
 * log is a sequence of these from undo_off; `undo_used` says how many bytes
 * are valid.  Rollback applies them last to first.
 */
typedef struct stx_undo_record {
    uint64_t offset; /* into the data region */
    uint64_t length;
} stx_undo_record;

/* The number of header bytes the checksum covers. */
#define STX_CHECKSUMMED_BYTES offsetof(stx_header, checksum)

/* docs/format.md gives these offsets to people: keep them in step. */
_Static_assert(offsetof(stx_header, format) == 80, "format.md: format");
_Static_assert(offsetof(stx_header, checksum) == 200, "format.md: checksum");
_Static_assert(offsetof(stx_header, writer_flag) == 256,
               "format.md: writer line");
_Static_assert(offsetof(stx_header, unrecoverable) == 280,
               "format.md: unrecoverable");
_Static_assert(offsetof(stx_header, pid_ns) == 288, "format.md: pid_ns");
_Static_assert(offsetof(stx_header, undo_used) == 320,
               "format.md: undo line");
_Static_assert(offsetof(stx_header, undo_reserved) == 352,
               "format.md: undo_reserved");
_Static_assert(offsetof(stx_header, writer_mutex) == 384,
               "format.md: mutex");
_Static_assert(offsetof(stx_header, seq) == 448, "format.md: seq line");
_Static_assert(offsetof(stx_header, change_futex) == 456,
               "format.md: change_futex");
_Static_assert(offsetof(stx_header, change_waiters) == 460,
               "format.md: change_waiters");
_Static_assert(sizeof(stx_reader_slot) == STX_CACHE_LINE,
               "a reader slot is one cache line");


/* ------------------------------------------------------------------ */
/* The data region of a dict segment (STX_LAYOUT_DICT)                 */

#define STX_DICT_MAGIC 0x5443494458545453ULL /* "STSXDICT" */
/* Size classes of the heap allocator (alloc.c has the sizes). */
#define STX_DICT_CLASSES 176u
/* Heap blocks start on, and are sized in, multiples of this. */
#define STX_BLOCK_ALIGN 16u
/* Index slot values besides a live slot (see stx_dict_header). */
#define STX_INDEX_EMPTY 0u
#define STX_INDEX_DELETED 1u
/* A live index slot: the key hash's top 16 bits above the record's block
 * offset / STX_BLOCK_ALIGN (48 bits: offsets below 4 PiB). */
#define STX_SLOT_TAG_SHIFT 48u
#define STX_SLOT_OFFSET_MASK ((1ull << STX_SLOT_TAG_SHIFT) - 1)

/*
 * The dict header: at offset 0 of the data region.
 *
 * The data region of a dict is [ dict header ][ heap ... heap_top )
 * [ unused up to data_size ).  Everything else -- the index, the entry
 * array and every key/value record -- is a block of the heap (alloc.c).
 *
 * The table keeps CPython's compact split -- an open-addressed index
 * (linear probing) over an entry array in insertion order -- with the
 * read path cut to two cache misses: one to the index, one to the record.
 *
 *   index block payload: index_cap uint64 slots, then index_cap uint32
 *                        entry numbers (slot i's entry, for writers)
 *   slot:   0 empty, 1 deleted, else tag << 48 | record / 16, where tag
 *           is the key hash's top 16 bits: a lookup reads the record
 *           only when the tag matches (1 in 65536 for another key), so
 *           absent keys and collisions cost no further miss
 *   entries: {hash, record offset} in insertion order (record 0: deleted)
 *           -- iteration, rebuilds and verification read them, lookups
 *           never do
 *
 * A deleted key leaves a DELETED slot and an entry with record 0 until
 * the next rebuild (table.c).
 *
 * The header is split by who writes it.  Line 0 is the table's geometry,
 * changed only by a rebuild: lock-free lookups read it and nothing else
 * of the header, so a writer's inserts and deletes (line 1: counters and
 * the heap top) do not take that line from readers' caches.  Lookups
 * bound offsets by `heap_reserved` (line 2, only grows), not heap_top.
 *
 * Write protocol: every change to bytes that committed state references
 * goes through the undo log; bytes that only this txn's allocations
 * reference (a fresh record, a new table, entries past `entries_used`) are
 * written without logging, because rolling back the allocator state makes
 * them unreferenced again.  Blocks freed by a txn are kept aside (in the
 * writer's process) and put on the free lists only just before commit, so
 * a txn never reuses -- and overwrites -- a block its own rollback would
 * bring back.
 *
 * Lock-free readers (seqlock) may see any mix of old and new bytes: they
 * load every offset and count once, bounds-check it against
 * `heap_reserved` (backed pages: never a SIGBUS), and trust nothing they
 * built until `seq` proves it was committed.
 */
typedef struct stx_dict_header {
    /* --- logged as one range (both lines) --- */
    /* line 0: the geometry, changed only by a rebuild */
    uint64_t magic;          /* STX_DICT_MAGIC */
    uint64_t reserved0;
    uint64_t index_off;      /* the index block's payload (see above) */
    uint64_t index_cap;      /* a power of two */
    uint64_t entries_off;    /* stx_dict_entry array (a block's payload) */
    uint64_t entries_cap;    /* index_cap * 2 / 3 */
    uint64_t reserved1;
    uint64_t heap_off;       /* first heap byte: just past this header */
    /* line 1: what inserts, deletes and the allocator change */
    uint64_t heap_top;       /* end of the bump-allocated heap */
    uint64_t live_bytes;     /* bytes in allocated blocks */
    uint64_t free_bytes;     /* bytes in free lists */
    uint64_t rebuilds;       /* table rebuilds (growth or compaction) */
    uint64_t count;          /* live keys */
    uint64_t entries_used;   /* appended so far, deleted ones included */
    uint64_t reserved2[2];
    /* --- not logged: only grows, and stays true after any rollback --- */
    alignas(STX_CACHE_LINE) _Atomic uint64_t heap_reserved; /* bytes of the
                              data region backed by posix_fallocate */
    uint64_t reserved3[7];
    /* --- free lists: one head (block offset, 0 = empty) per class --- */
    uint64_t free_heads[STX_DICT_CLASSES];
} stx_dict_header;
/* The logged part of the dict header. */
#define STX_DICT_STATE_BYTES offsetof(stx_dict_header, heap_reserved)

/* One entry: the key's hash and its record's block offset (0: deleted). */
typedef struct stx_dict_entry {
    uint64_t hash;
    uint64_t record;
} stx_dict_entry;

/*
 * Every heap block starts with this.  `next_free` links free blocks of
 * one class; allocated blocks never read or write it, which is why pushing
 * a block on a free list needs no undo record (only the list head does).
 */
typedef struct stx_block {
    uint64_t size;           /* bytes of the block, header included */
    uint64_t next_free;      /* next block of the free list, 0 = last */
} stx_block;

/* A key/value record: a block whose payload is this, the canonical key
 * bytes, then the value bytes. */
typedef struct stx_record {
    stx_block block;
    uint32_t key_len;
    uint8_t value_tag;       /* how the binding encoded the value */
    uint8_t key_kind;        /* how the binding encoded the key's type */
    uint16_t reserved;
    uint64_t value_len;
} stx_record;

_Static_assert(sizeof(stx_dict_header) % STX_BLOCK_ALIGN == 0,
               "the heap starts aligned");
_Static_assert(offsetof(stx_dict_header, heap_reserved) == 128,
               "format.md: dict state is 128 bytes");
_Static_assert(offsetof(stx_dict_header, heap_top) == STX_CACHE_LINE,
               "format.md: the geometry is line 0 of the dict header");
_Static_assert(sizeof(stx_record) == 32, "format.md: record header");

#endif /* STX_LAYOUT_H */
