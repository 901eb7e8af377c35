/*
 * dict.h -- the dict layout (STX_LAYOUT_DICT, SharedDict): a hash table
 * and a heap in the data region of a segment.  Its bytes are described in
 * layout.h (stx_dict_header); this is the code's interface: the keyed hash
 * (hash.c), the heap allocator (alloc.c) and the table (table.c), which
 * also holds the layout's plan and format for segment creation.
 *
 * The dict is built on the engine's undo log (undo.c) and nothing else of
 * it; the engine below never calls into the dict.
 */
#ifndef STX_DICT_H
#define STX_DICT_H

#include "engine.h"

/* --- dict: keyed hash (hash.c) --- */

/* SipHash-1-3 of `len` bytes under the 128-bit `key`. */
uint64_t stx_siphash13(const uint64_t key[2], const void *data, size_t len);

/* --- dict: the heap allocator (alloc.c) --- */

/* Record blocks a dict txn remembers as its own (see stx_dict_txn). */
#define STX_DICT_FRESH_RING 16

/* A growable array of block offsets in the writer's own memory. */
typedef struct stx_offsets {
    uint64_t *at;            /* malloc'd */
    size_t n;
    size_t cap;
} stx_offsets;

/*
 * stx_dict_txn -- the dict state of one write txn, in the writer's own
 * memory: the blocks it freed, which go on the free lists only at
 * stx_dict_flush() (just before commit), so that this txn never reuses a
 * block its rollback would bring back; and the blocks it took off free
 * lists, whose `next_free` a rollback needs if this txn frees them again.
 */
typedef struct stx_dict_txn {
    stx_txn *txn;
    stx_offsets freed;
    stx_offsets popped;
    /* the record blocks this txn wrote most recently (a ring; 0 = none):
     * no committed state references them, so replacing one of their
     * values again rewrites it in place, unlogged, and a txn that sets a
     * large value many times needs one block for it, not one per set */
    uint64_t fresh[STX_DICT_FRESH_RING];
    unsigned fresh_next;
} stx_dict_txn;

/* The block size of size class `c`. */
uint64_t stx_class_size(uint32_t c);
/* The smallest class whose blocks hold `bytes`; STX_DICT_CLASSES if none. */
uint32_t stx_class_of(uint64_t bytes);
/* Allocate a block of at least `bytes`; *offset is its data offset.  The
 * block is this txn's: fill it with stx_write_fresh.  STX_EFULL with the
 * numbers when neither free lists nor the segment have room. */
int stx_heap_alloc(stx_dict_txn *dt, uint64_t bytes, uint64_t *offset);
/* Free the block at `offset` when the txn commits. */
int stx_heap_free_later(stx_dict_txn *dt, uint64_t offset);
/* Put the blocks freed in this txn on the free lists (logged).  Call it
 * right before committing; afterwards the txn must not allocate. */
int stx_dict_flush(stx_dict_txn *dt);
/* Forget the freed blocks (the txn rolled back) and free the array. */
void stx_dict_txn_reset(stx_dict_txn *dt);
/* The size of the valid block at `offset`, or 0 (and a detail) if the
 * offset or the block header is impossible.  `top`: the heap end. */
uint64_t stx_block_size(const stx_segment *seg, uint64_t offset,
                        uint64_t top);

/* --- dict: the table (table.c) --- */

/* A key as the engine sees it: canonical bytes and their hash. */
typedef struct stx_key {
    const uint8_t *bytes;
    uint32_t len;
    uint8_t kind;            /* stored as the record's key_kind */
    uint64_t hash;
} stx_key;

/* A value as the binding encoded it. */
typedef struct stx_value {
    const uint8_t *bytes;
    uint64_t len;
    uint8_t tag;
} stx_value;

/* A record found in the table.  The pointers point into the segment:
 * valid inside a txn, or until the seqlock check for lock-free readers. */
typedef struct stx_found {
    uint64_t slot;           /* index slot */
    uint64_t entry;          /* entry number (UINT64_MAX from a lookup) */
    uint64_t record;         /* block offset */
    const uint8_t *key;
    uint32_t key_len;
    uint8_t key_kind;
    uint8_t value_tag;
    const uint8_t *value;
    uint64_t value_len;
} stx_found;

/* Numbers for d.stats() and `shmtxn info`. */
typedef struct stx_dict_stats {
    uint64_t count, index_cap, entries_cap, entries_used, heap_size,
        heap_top, heap_reserved, live_bytes, free_bytes, rebuilds;
} stx_dict_stats;

/* Initialise the data region of a new dict segment (creator, unpublished)
 * with `reserved` bytes of it already backed by posix_fallocate. */
int stx_dict_format(stx_segment *seg, uint64_t reserved);
/* Find `key`: 0 and *found, STX_ENOENT, or STX_ECORRUPT.  Safe on a
 * segment a writer is changing (every load is checked). */
int stx_dict_lookup(const stx_segment *seg, const stx_key *key,
                    stx_found *found);
/* Bring `key`'s index slot and the record it names into cache, trusting
 * nothing (a hint: no error, no result).  A lock-free reader calls it
 * before its seqlock section, which then runs on cached lines: a shorter
 * section is less likely to see a writer's commit and retry. */
void stx_dict_prefetch(const stx_segment *seg, const stx_key *key);
/* Find `n` keys at once, overlapping their cache misses (prefetching
 * every key's index slot, then the records they name, a batch at a
 * time): rcs[i] is 0 (and found[i] filled) or STX_ENOENT.  Returns 0, or
 * the first other error (STX_ECORRUPT).  Safe lock-free, as
 * stx_dict_lookup. */
int stx_dict_lookup_many(const stx_segment *seg, const stx_key *keys,
                         size_t n, stx_found *found, int *rcs);
/* Insert or replace. */
int stx_dict_put(stx_dict_txn *dt, const stx_key *key,
                 const stx_value *value);
/* Delete: 0, or STX_ENOENT if absent. */
int stx_dict_delete(stx_dict_txn *dt, const stx_key *key);
/* Delete every key. */
int stx_dict_clear(stx_dict_txn *dt);
/* The live record at entry *pos or after it: 0 and *found (then *pos is
 * past it), or STX_ENOENT at the end. */
int stx_dict_next(const stx_segment *seg, uint64_t *pos, stx_found *found);
/* The number of live keys (checked against the table). */
int stx_dict_count(const stx_segment *seg, uint64_t *count);
/* Fill `stats`. */
int stx_dict_stats_get(const stx_segment *seg, stx_dict_stats *stats);
/* Walk the whole table and heap; STX_ECORRUPT with a detail if anything
 * is impossible (for attach and `shmtxn check`). */
int stx_dict_verify(const stx_segment *seg);

/* --- the layout (table.c) --- */

/* The dict layout for stx_create: an undo log sized for dict txns, the
 * first heap pages backed at once, the table formatted. */
extern const stx_layout stx_dict_layout;

/* Bounds of the default dict size (see stx_dict_default_size). */
#define STX_DICT_MIN_DEFAULT (64ull << 20)
#define STX_DICT_MAX_DEFAULT (1ull << 40)

/* The data size of a dict created without a size: as large as the file
 * system holding segments, and at most a quarter of a finite address
 * space limit (RLIMIT_AS), since every process maps all of it (at least
 * 64 MiB, at most 1 TiB).  Only the
 * pages the heap grows into are backed, so this is a ceiling on growth,
 * not memory used: a dict grows until the file system is full. */
uint64_t stx_dict_default_size(void);

#endif /* STX_DICT_H */
