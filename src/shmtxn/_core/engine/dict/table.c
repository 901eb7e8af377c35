/*
 * table.c -- the hash table of dict segments: lookup, insert, replace,
 * delete, rebuild, iteration and verification.
 *
 * Layout and write protocol: layout.h (stx_dict_header).  Keys arrive as
 * canonical bytes with their SipHash (the binding encodes them, hash.c
 * hashes them); values as tagged bytes.  The engine never interprets
 * either beyond comparing key bytes.
 *
 * Every read of the table loads each shared field once (LOAD) into a local
 * and checks it before using it, so lookups are safe both inside a txn and
 * lock-free under the seqlock, where a writer may change anything at any
 * moment: a torn read yields STX_ECORRUPT or a wrong answer, which the
 * caller discards when `seq` moved.
 */
#include <stdlib.h>
#include <string.h>

#include "dict.h"
#include "internal.h"
#include "seqlock.h"

/* The smallest index; entries_cap is two thirds of index_cap. */
#define MIN_INDEX_CAP 8u
/* Entry numbers are 32 bits. */
#define MAX_INDEX_CAP (1ull << 31)
/* Bytes per index slot: the slot and its entry number (layout.h). */
#define INDEX_SLOT_BYTES (sizeof(uint64_t) + sizeof(uint32_t))
/* One relaxed load of a shared field. */
#define LOAD(field) STX_LOAD(field)
/* Heap bytes a new dict backs with pages at once; alloc.c reserves the
 * rest as the heap grows. */
#define INITIAL_HEAP (1ull << 20)

/* The table fields of the dict header, loaded once and checked. */
typedef struct table_view {
    uint64_t top;            /* heap_top; heap_reserved for lookups */
    uint64_t index_off, index_cap;
    uint64_t entries_off, entries_cap, entries_used, count;
    uint64_t *slots;         /* index_cap slots (layout.h) */
    uint32_t *entry_of;      /* index_cap entry numbers, after the slots */
    stx_dict_entry *entries;
} table_view;

/* STX_ECORRUPT with "dict segment NAME is corrupt: WHAT". */
static int
corrupt(const stx_segment *seg, const char *what)
{
    return stx_fail(STX_ECORRUPT, "dict segment '%s' is corrupt: %s",
                    seg->name, what);
}

/* 1 if the payload [off, off + n * size) of a block lies below `top`. */
static int
payload_fits(uint64_t off, uint64_t n, uint64_t size, uint64_t top)
{
    return off >= sizeof(stx_dict_header) + sizeof(stx_block)
           && off <= top && n <= (top - off) / size;
}

/* The dict header of `seg`, or NULL (and a detail) if it is missing. */
static stx_dict_header *
dict_header_of(const stx_segment *seg)
{
    stx_dict_header *dh = (stx_dict_header *)seg->data;
    if (seg->data_size < sizeof(stx_dict_header)
        || LOAD(dh->magic) != STX_DICT_MAGIC) {
        corrupt(seg, "its dict header is missing");
        return NULL;
    }
    return dh;
}

/* Check the geometry in `t` against its bound t->top and point t's
 * arrays into the segment. */
static int
check_geometry(const stx_segment *seg, table_view *t)
{
    if (t->top > seg->data_size || t->index_cap < MIN_INDEX_CAP
        || t->index_cap > MAX_INDEX_CAP
        || (t->index_cap & (t->index_cap - 1)) != 0
        || t->entries_cap >= t->index_cap
        || !payload_fits(t->index_off, t->index_cap, INDEX_SLOT_BYTES,
                         t->top)
        || !payload_fits(t->entries_off, t->entries_cap,
                         sizeof(stx_dict_entry), t->top)
        || t->entries_off % 8 != 0 || t->index_off % 8 != 0) {
        return corrupt(seg, "its table header is impossible");
    }
    t->slots = (uint64_t *)(seg->data + t->index_off);
    t->entry_of = (uint32_t *)(t->slots + t->index_cap);
    t->entries = (stx_dict_entry *)(seg->data + t->entries_off);
    return 0;
}

/* Load and check what a lookup needs: the geometry (line 0 of the dict
 * header), bounded by the heap's reservation -- no line a writer's
 * inserts change (layout.h). */
static int
load_geometry(const stx_segment *seg, table_view *t)
{
    stx_dict_header *dh = dict_header_of(seg);
    if (dh == NULL) {
        return STX_ECORRUPT;
    }
    uint64_t reserved = atomic_load_explicit(&dh->heap_reserved,
                                             memory_order_relaxed);
    t->top = reserved < seg->data_size ? reserved : seg->data_size;
    t->index_off = LOAD(dh->index_off);
    t->index_cap = LOAD(dh->index_cap);
    t->entries_off = LOAD(dh->entries_off);
    t->entries_cap = LOAD(dh->entries_cap);
    t->entries_used = t->count = 0; /* not loaded */
    return check_geometry(seg, t);
}

/* Load and check the whole table state: the geometry bounded by
 * heap_top, and the counters. */
static int
load_table(const stx_segment *seg, table_view *t)
{
    stx_dict_header *dh = dict_header_of(seg);
    if (dh == NULL) {
        return STX_ECORRUPT;
    }
    t->top = LOAD(dh->heap_top);
    t->index_off = LOAD(dh->index_off);
    t->index_cap = LOAD(dh->index_cap);
    t->entries_off = LOAD(dh->entries_off);
    t->entries_cap = LOAD(dh->entries_cap);
    t->entries_used = LOAD(dh->entries_used);
    t->count = LOAD(dh->count);
    if (t->entries_used > t->entries_cap || t->count > t->entries_used) {
        return corrupt(seg, "its table header is impossible");
    }
    return check_geometry(seg, t);
}

/* The live slot for the record at block `record` of a key hashing to
 * `hash`. */
static uint64_t
slot_value(uint64_t hash, uint64_t record)
{
    return (hash >> STX_SLOT_TAG_SHIFT) << STX_SLOT_TAG_SHIFT
           | record / STX_BLOCK_ALIGN;
}

/* Load and check the record at block `offset` into `f`. */
static int
load_record(const stx_segment *seg, uint64_t offset, uint64_t top,
            stx_found *f)
{
    uint64_t size = stx_block_size(seg, offset, top);
    if (size == 0) {
        return STX_ECORRUPT;
    }
    const stx_record *r = (const stx_record *)(seg->data + offset);
    uint64_t room = size - sizeof(stx_record);
    uint32_t key_len = LOAD(r->key_len);
    uint64_t value_len = LOAD(r->value_len);
    if (key_len > room || value_len > room - key_len) {
        return corrupt(seg, "a record is longer than its block");
    }
    f->record = offset;
    f->key = (const uint8_t *)(r + 1);
    f->key_len = key_len;
    f->key_kind = LOAD(r->key_kind);
    f->value_tag = LOAD(r->value_tag);
    f->value = f->key + key_len;
    f->value_len = value_len;
    return 0;
}

/* Probe for `key`: 0 and *f if found (f->entry not set: entry_of());
 * STX_ENOENT and *free_slot (the first deleted or empty slot on its
 * path) if not.  A slot whose tag differs from the key's costs no load
 * beyond the index. */
static int
probe(const stx_segment *seg, const table_view *t, const stx_key *key,
      stx_found *f, uint64_t *free_slot)
{
    uint64_t mask = t->index_cap - 1;
    uint64_t i = key->hash & mask;
    uint64_t tag = key->hash >> STX_SLOT_TAG_SHIFT;
    uint64_t first_free = UINT64_MAX;
    for (uint64_t n = 0; n < t->index_cap; n++, i = (i + 1) & mask) {
        uint64_t slot = LOAD(t->slots[i]);
        if (slot <= STX_INDEX_DELETED) {
            first_free = first_free == UINT64_MAX ? i : first_free;
            if (slot == STX_INDEX_EMPTY) {
                *free_slot = first_free;
                return STX_ENOENT;
            }
            continue;
        }
        if (slot >> STX_SLOT_TAG_SHIFT != tag) {
            continue;
        }
        uint64_t record = (slot & STX_SLOT_OFFSET_MASK) * STX_BLOCK_ALIGN;
        int rc = load_record(seg, record, t->top, f);
        if (rc != 0) {
            return rc;
        }
        if (f->key_len == key->len
            && stx_equal_relaxed(f->key, key->bytes, key->len)) {
            f->slot = i;
            f->entry = UINT64_MAX;
            return 0;
        }
    }
    return corrupt(seg, "its index has no empty slot");
}

/* The entry of the found record `f` (a write txn's view `t`): checked
 * against the entries, into f->entry. */
static int
entry_of(const stx_segment *seg, const table_view *t, stx_found *f)
{
    uint64_t e = t->entry_of[f->slot];
    if (e >= t->entries_used || t->entries[e].record != f->record) {
        return corrupt(seg, "an index slot names no entry");
    }
    f->entry = e;
    return 0;
}

int
stx_dict_lookup(const stx_segment *seg, const stx_key *key, stx_found *f)
{
    table_view t;
    uint64_t free_slot;
    int rc = load_geometry(seg, &t);
    return rc != 0 ? rc : probe(seg, &t, key, f, &free_slot);
}

/* Where a lookup of `key` in `t` starts: its index slot's line. */
static const void *
home_slot(const table_view *t, const stx_key *key)
{
    return &t->slots[key->hash & (t->index_cap - 1)];
}

/* The record the first slot of `key`'s probe names if its tag matches,
 * else NULL: what to prefetch next (nothing is loaded through it). */
static const void *
likely_record(const stx_segment *seg, const table_view *t,
              const stx_key *key)
{
    uint64_t slot = LOAD(*(const uint64_t *)home_slot(t, key));
    uint64_t record = (slot & STX_SLOT_OFFSET_MASK) * STX_BLOCK_ALIGN;
    if (slot <= STX_INDEX_DELETED
        || slot >> STX_SLOT_TAG_SHIFT != key->hash >> STX_SLOT_TAG_SHIFT
        || record >= t->top) {
        return NULL;
    }
    return seg->data + record;
}

void
stx_dict_prefetch(const stx_segment *seg, const stx_key *key)
{
    /* a hint: the fields are loaded unchecked but for what keeps the
     * addresses inside the backed heap (a prefetch never faults, but an
     * address must not be computed from an overflow) */
    const stx_dict_header *dh = (const stx_dict_header *)seg->data;
    uint64_t top = atomic_load_explicit(&dh->heap_reserved,
                                        memory_order_relaxed);
    uint64_t index_off = LOAD(dh->index_off), cap = LOAD(dh->index_cap);
    uint64_t at = index_off + (key->hash & (cap - 1)) * sizeof(uint64_t);
    if (top > seg->data_size || top < sizeof(stx_dict_header)
        || index_off >= top || cap > MAX_INDEX_CAP
        || at > top - sizeof(uint64_t)) {
        return;
    }
    uint64_t slot = LOAD(*(const uint64_t *)(seg->data + at));
    uint64_t record = (slot & STX_SLOT_OFFSET_MASK) * STX_BLOCK_ALIGN;
    if (slot > STX_INDEX_DELETED && record < top
        && slot >> STX_SLOT_TAG_SHIFT == key->hash >> STX_SLOT_TAG_SHIFT) {
        __builtin_prefetch(seg->data + record);
        __builtin_prefetch(seg->data + record + 64);
    }
}

/* Keys per prefetch round of stx_dict_lookup_many: enough misses in
 * flight to hide memory latency, few enough lines to stay in L1. */
#define LOOKUP_BATCH 16u

int
stx_dict_lookup_many(const stx_segment *seg, const stx_key *keys, size_t n,
                     stx_found *found, int *rcs)
{
    table_view t;
    int rc = load_geometry(seg, &t);
    if (rc != 0) {
        return rc;
    }
    for (size_t at = 0; at < n; at += LOOKUP_BATCH) {
        size_t end = n - at < LOOKUP_BATCH ? n : at + LOOKUP_BATCH;
        for (size_t i = at; i < end; i++) {
            __builtin_prefetch(home_slot(&t, &keys[i]));
        }
        for (size_t i = at; i < end; i++) {
            const void *record = likely_record(seg, &t, &keys[i]);
            if (record != NULL) {
                __builtin_prefetch(record);
                __builtin_prefetch((const uint8_t *)record + 64);
            }
        }
        for (size_t i = at; i < end; i++) {
            uint64_t free_slot;
            rcs[i] = probe(seg, &t, &keys[i], &found[i], &free_slot);
            if (rcs[i] != 0 && rcs[i] != STX_ENOENT) {
                return rcs[i];
            }
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* writing                                                             */

/* The dict header, its state logged for this txn. */
static stx_dict_header *
state_for_write(stx_dict_txn *dt, int *rc)
{
    *rc = stx_undo_prepare(dt->txn, 0, STX_DICT_STATE_BYTES);
    return (stx_dict_header *)dt->txn->seg->data;
}

/* Fill the fresh block at `offset` with a record. */
static int
write_record(stx_dict_txn *dt, uint64_t offset, const stx_key *key,
             uint8_t key_kind, const stx_value *value)
{
    uint64_t payload = sizeof(stx_record) - sizeof(stx_block) + key->len
                       + value->len;
    uint8_t *p = stx_fresh(dt->txn, offset + sizeof(stx_block), payload);
    if (p == NULL) {
        return corrupt(dt->txn->seg, "a new block lies outside the heap");
    }
    stx_record fields = {.key_len = key->len, .value_tag = value->tag,
                         .key_kind = key_kind, .value_len = value->len};
    size_t head = sizeof(stx_record) - sizeof(stx_block);
    stx_store_relaxed(p, (uint8_t *)&fields + sizeof(stx_block), head);
    stx_store_relaxed(p + head, key->bytes, key->len);
    if (value->len > 0) { /* None, True, False have no bytes */
        stx_store_relaxed(p + head + key->len, value->bytes, value->len);
    }
    return 0;
}

/* Bytes a block needs for this record. */
static uint64_t
record_bytes(const stx_key *key, const stx_value *value)
{
    return sizeof(stx_record) + key->len + value->len;
}

/* A new record block for `key` and `value`; *offset is the block. */
static int
new_record(stx_dict_txn *dt, const stx_key *key, uint8_t key_kind,
           const stx_value *value, uint64_t *offset)
{
    int rc = stx_heap_alloc(dt, record_bytes(key, value), offset);
    if (rc == 0) {
        dt->fresh[dt->fresh_next++ % STX_DICT_FRESH_RING] = *offset;
        rc = write_record(dt, *offset, key, key_kind, value);
    }
    return rc;
}

/* 1 if this txn wrote the record block at `record` (see stx_dict_txn). */
static int
is_fresh(const stx_dict_txn *dt, uint64_t record)
{
    unsigned n = dt->fresh_next < STX_DICT_FRESH_RING ? dt->fresh_next
                                                      : STX_DICT_FRESH_RING;
    for (unsigned i = 0; i < n; i++) {
        if (dt->fresh[i] == record) {
            return 1;
        }
    }
    return 0;
}

/* Allocate an index of `cap` slots (zeroed) and an entry array; the new
 * blocks' payload offsets go to *index_off and *entries_off. */
static int
alloc_table(stx_dict_txn *dt, uint64_t cap, uint64_t *index_off,
            uint64_t *entries_off)
{
    uint64_t ecap = cap * 2 / 3;
    uint64_t ib, eb;
    int rc = stx_heap_alloc(dt, sizeof(stx_block) + cap * INDEX_SLOT_BYTES,
                            &ib);
    if (rc == 0) {
        rc = stx_heap_alloc(dt, sizeof(stx_block)
                            + ecap * sizeof(stx_dict_entry), &eb);
    }
    if (rc != 0) {
        return rc;
    }
    *index_off = ib + sizeof(stx_block);
    *entries_off = eb + sizeof(stx_block);
    uint8_t *index = stx_fresh(dt->txn, *index_off, cap * INDEX_SLOT_BYTES);
    if (index == NULL) {
        return corrupt(dt->txn->seg, "a new table lies outside the heap");
    }
    stx_zero_relaxed(index, cap * sizeof(uint64_t));
    return 0;
}

/* Put the live entries of `from` (its first `used`) into the table `to`,
 * whose slots are zeroed: compacted, in order, each entry rehashed into
 * the index.  `to` may be `from` (compaction in place: an entry only
 * moves down).  *live is how many there were. */
static int
fill_table(const stx_segment *seg, const stx_dict_entry *from,
           uint64_t used, const table_view *to, uint64_t *live)
{
    uint64_t mask = to->index_cap - 1, n = 0;
    for (uint64_t e = 0; e < used; e++) {
        stx_dict_entry entry = from[e];
        if (entry.record == 0) {
            continue;
        }
        if (n >= to->entries_cap) {
            return corrupt(seg, "it holds more live entries than its count");
        }
        STX_STORE(to->entries[n].hash, entry.hash);
        STX_STORE(to->entries[n].record, entry.record);
        uint64_t i = entry.hash & mask;
        while (to->slots[i] != STX_INDEX_EMPTY) {
            i = (i + 1) & mask;
        }
        STX_STORE(to->slots[i], slot_value(entry.hash, entry.record));
        to->entry_of[i] = (uint32_t)n; /* writers only read it */
        n++;
    }
    *live = n;
    return 0;
}

/* The index size for holding `want` keys with room to grow. */
static uint64_t
index_cap_for(uint64_t want)
{
    uint64_t cap = MIN_INDEX_CAP;
    while (cap * 2 / 3 < want * 3 / 2 + 1 && cap < MAX_INDEX_CAP) {
        cap *= 2;
    }
    return cap;
}

/* The bytes compact_in_place() logs: the index and the used entries. */
static uint64_t
table_bytes(const table_view *t)
{
    return t->index_cap * INDEX_SLOT_BYTES
           + t->entries_used * sizeof(stx_dict_entry);
}

/* 1 if the undo log has room to log the whole table, with slack. */
static int
fits_undo_log(stx_dict_txn *dt, const table_view *t)
{
    return table_bytes(t) + 4096 <= stx_undo_room(dt->txn->seg) / 2;
}

/* Rebuild without allocating: when deleted entries fill the entry array
 * but the dict needs no more room (the heap may have no free block large
 * enough for a new table).  Log the index and entries, then compact the
 * live entries down and rehash them into the zeroed index. */
static int
compact_in_place(stx_dict_txn *dt, const table_view *t, int keep)
{
    int rc = stx_undo_prepare(dt->txn, t->index_off,
                              t->index_cap * INDEX_SLOT_BYTES);
    if (rc == 0) {
        rc = stx_undo_prepare(dt->txn, t->entries_off,
                              t->entries_used * sizeof(stx_dict_entry));
    }
    stx_dict_header *dh = rc == 0 ? state_for_write(dt, &rc) : NULL;
    if (rc != 0) {
        return rc;
    }
    uint64_t n = 0;
    stx_zero_relaxed(t->slots, t->index_cap * sizeof(uint64_t));
    rc = keep ? fill_table(dt->txn->seg, t->entries, t->entries_used, t, &n)
              : 0;
    if (rc != 0) {
        return rc;
    }
    STX_STORE(dh->entries_used, n);
    STX_STORE(dh->count, n);
    STX_STORE(dh->rebuilds, dh->rebuilds + 1);
    return 0;
}

/* Rebuild the table of `t` sized for `want` keys: the live entries move
 * (compacted, in order) into fresh blocks, then one logged header change
 * switches to them and the old blocks are freed at commit.  With
 * `keep` == 0 the new table is empty (clear). */
static int
rebuild(stx_dict_txn *dt, const table_view *t, uint64_t want, int keep)
{
    uint64_t cap = index_cap_for(want);
    if (cap == t->index_cap && fits_undo_log(dt, t)) {
        return compact_in_place(dt, t, keep);
    }
    if (cap * 2 / 3 < want) {
        return stx_fail(STX_EHEAPFULL, "SharedDict '%s' cannot hold more than "
                        "%llu keys", dt->txn->seg->name,
                        (unsigned long long)(cap * 2 / 3));
    }
    uint64_t index_off, entries_off, live = 0;
    int rc = alloc_table(dt, cap, &index_off, &entries_off);
    if (rc == 0 && keep) {
        stx_segment *seg = dt->txn->seg;
        table_view to = {.index_cap = cap, .entries_cap = cap * 2 / 3,
                         .slots = (uint64_t *)(seg->data + index_off),
                         .entries = (stx_dict_entry *)(seg->data
                                                       + entries_off)};
        to.entry_of = (uint32_t *)(to.slots + cap);
        rc = fill_table(seg, t->entries, t->entries_used, &to, &live);
    }
    stx_dict_header *dh = rc == 0 ? state_for_write(dt, &rc) : NULL;
    if (rc == 0) {
        rc = stx_heap_free_later(dt, t->index_off - sizeof(stx_block));
    }
    if (rc == 0) {
        rc = stx_heap_free_later(dt, t->entries_off - sizeof(stx_block));
    }
    if (rc != 0) {
        return rc;
    }
    STX_STORE(dh->index_off, index_off);
    STX_STORE(dh->index_cap, cap);
    STX_STORE(dh->entries_off, entries_off);
    STX_STORE(dh->entries_cap, cap * 2 / 3);
    STX_STORE(dh->entries_used, live);
    STX_STORE(dh->count, live);
    STX_STORE(dh->rebuilds, dh->rebuilds + 1);
    return 0;
}

/* 1 if a record of `need` bytes may stay in its `size`-byte block: the
 * allocator would hand out that block size for it (its class, or one 16
 * bytes larger when a split would leave less than a block). */
static int
fits_in_place(uint64_t need, uint64_t size)
{
    return need <= size
           && size - stx_class_size(stx_class_of(need)) < STX_BLOCK_ALIGN * 2;
}

/* Records from this size up are replaced out of place even when the new
 * one fits the old block: writing a fresh block and logging only the
 * entry's 8-byte pointer copies the value once, where an in-place write
 * copies the old bytes into the undo log first.  Below it, in place is
 * cheaper than the allocator. */
#define STX_OUT_OF_PLACE_BYTES 4096

/* Point the found key's index slot and entry at new values (logged):
 * another record, or DELETED and 0. */
static int
repoint(stx_dict_txn *dt, const table_view *t, stx_found *f, uint64_t slot,
        uint64_t record)
{
    int rc = entry_of(dt->txn->seg, t, f);
    if (rc == 0) {
        rc = stx_write(dt->txn, t->index_off + f->slot * sizeof(slot),
                       &slot, sizeof(slot));
    }
    if (rc == 0) {
        rc = stx_write(dt->txn, t->entries_off + f->entry
                       * sizeof(stx_dict_entry) + sizeof(uint64_t),
                       &record, sizeof(record));
    }
    return rc;
}

/* Replace the value of the found record: in place when the new record is
 * small and needs the same block size, else in a new block (the old one
 * is freed when the txn commits, so a rollback still finds it). */
static int
replace(stx_dict_txn *dt, const table_view *t, stx_found *f,
        const stx_key *key, const stx_value *value)
{
    stx_segment *seg = dt->txn->seg;
    uint64_t size = stx_block_size(seg, f->record, t->top);
    uint64_t need = record_bytes(key, value);
    if (size == 0) {
        return STX_ECORRUPT;
    }
    if (fits_in_place(need, size) && is_fresh(dt, f->record)) {
        /* this txn's own block: nothing committed to keep, no logging */
        return write_record(dt, f->record, key, f->key_kind, value);
    }
    if (need < STX_OUT_OF_PLACE_BYTES && fits_in_place(need, size)) {
        uint64_t from = f->record + sizeof(stx_block);
        int rc = stx_undo_prepare(dt->txn, from, need - sizeof(stx_block));
        if (rc == 0) {
            rc = write_record(dt, f->record, key, f->key_kind, value);
        }
        return rc;
    }
    uint64_t fresh;
    int rc = new_record(dt, key, f->key_kind, value, &fresh);
    if (rc == 0) {
        rc = repoint(dt, t, f, slot_value(key->hash, fresh), fresh);
    }
    return rc == 0 ? stx_heap_free_later(dt, f->record) : rc;
}

/* Set the entry number of the free index slot `slot` to `e`.  An empty
 * slot's number is nobody's (a rollback leaves the slot empty), so it is
 * written unlogged; a deleted slot may have been live when this txn
 * began, and a rollback needs its old number back. */
static int
set_entry_of(stx_dict_txn *dt, const table_view *t, uint64_t slot,
             uint32_t e)
{
    if (t->slots[slot] == STX_INDEX_EMPTY) {
        t->entry_of[slot] = e;
        return 0;
    }
    return stx_write(dt->txn, (uint64_t)((uint8_t *)&t->entry_of[slot]
                                         - dt->txn->seg->data), &e,
                     sizeof(e));
}

/* Insert a key that is not there: rebuild if the entries are used up,
 * then append an entry and point the free index slot at it. */
static int
insert(stx_dict_txn *dt, table_view *t, const stx_key *key,
       const stx_value *value, uint64_t slot)
{
    stx_segment *seg = dt->txn->seg;
    stx_found f;
    int rc = 0;
    if (t->entries_used == t->entries_cap) {
        rc = rebuild(dt, t, t->count + 1, 1);
        if (rc == 0) {
            rc = load_table(seg, t);
        }
        if (rc == 0) {
            rc = probe(seg, t, key, &f, &slot);
            rc = rc == STX_ENOENT ? 0 : corrupt(seg, "a rebuild lost a key");
        }
    }
    uint64_t record;
    if (rc == 0) {
        rc = new_record(dt, key, key->kind, value, &record);
    }
    stx_dict_header *dh = rc == 0 ? state_for_write(dt, &rc) : NULL;
    if (rc != 0) {
        return rc;
    }
    uint64_t e = t->entries_used;
    stx_dict_entry entry = {.hash = key->hash, .record = record};
    rc = stx_write_fresh(dt->txn, t->entries_off + e * sizeof(entry),
                         &entry, sizeof(entry));
    if (rc == 0) {
        rc = set_entry_of(dt, t, slot, (uint32_t)e);
    }
    uint64_t live = slot_value(key->hash, record);
    if (rc == 0) {
        rc = stx_write(dt->txn, t->index_off + slot * sizeof(live), &live,
                       sizeof(live));
    }
    if (rc == 0) {
        STX_STORE(dh->entries_used, e + 1);
        STX_STORE(dh->count, t->count + 1);
    }
    return rc;
}

int
stx_dict_put(stx_dict_txn *dt, const stx_key *key, const stx_value *value)
{
    if (value->len > (1ull << 46) || key->len > (1u << 30)) {
        return stx_fail(STX_EHEAPFULL, "a %llu-byte value (or %u-byte key) "
                        "is larger than any segment", (unsigned long long)
                        value->len, key->len);
    }
    table_view t;
    stx_found f;
    uint64_t slot = 0;
    int rc = load_table(dt->txn->seg, &t);
    if (rc == 0) {
        rc = probe(dt->txn->seg, &t, key, &f, &slot);
    }
    if (rc == 0) {
        return replace(dt, &t, &f, key, value);
    }
    return rc == STX_ENOENT ? insert(dt, &t, key, value, slot) : rc;
}

int
stx_dict_delete(stx_dict_txn *dt, const stx_key *key)
{
    table_view t;
    stx_found f;
    uint64_t slot;
    int rc = load_table(dt->txn->seg, &t);
    if (rc == 0) {
        rc = probe(dt->txn->seg, &t, key, &f, &slot);
    }
    stx_dict_header *dh = rc == 0 ? state_for_write(dt, &rc) : NULL;
    if (rc == 0) {
        rc = repoint(dt, &t, &f, STX_INDEX_DELETED, 0);
    }
    if (rc == 0) {
        STX_STORE(dh->count, t.count - 1);
        rc = stx_heap_free_later(dt, f.record);
    }
    return rc;
}

int
stx_dict_clear(stx_dict_txn *dt)
{
    stx_segment *seg = dt->txn->seg;
    table_view t;
    int rc = load_table(seg, &t);
    for (uint64_t e = 0; rc == 0 && e < t.entries_used; e++) {
        uint64_t record = t.entries[e].record;
        if (record != 0) {
            rc = stx_block_size(seg, record, t.top) ? 0 : STX_ECORRUPT;
            rc = rc == 0 ? stx_heap_free_later(dt, record) : rc;
        }
    }
    return rc == 0 ? rebuild(dt, &t, 0, 0) : rc;
}

/* ------------------------------------------------------------------ */
/* reading                                                             */

/* How many entries ahead stx_dict_next() prefetches a record. */
#define NEXT_AHEAD 4u

int
stx_dict_next(const stx_segment *seg, uint64_t *pos, stx_found *f)
{
    table_view t;
    int rc = load_table(seg, &t);
    for (uint64_t e = *pos; rc == 0 && e < t.entries_used; e++) {
        uint64_t record = LOAD(t.entries[e].record);
        if (e + NEXT_AHEAD < t.entries_used) {
            /* the record a few calls ahead: its miss overlaps this one's
             * decoding (a prefetch never faults; bounded all the same) */
            uint64_t ahead = LOAD(t.entries[e + NEXT_AHEAD].record);
            if (ahead < t.top) {
                __builtin_prefetch(seg->data + ahead);
            }
        }
        if (record != 0) {
            rc = load_record(seg, record, t.top, f);
            f->entry = e;
            *pos = e + 1;
            return rc;
        }
    }
    *pos = rc == 0 ? t.entries_used : *pos;
    return rc == 0 ? STX_ENOENT : rc;
}

int
stx_dict_count(const stx_segment *seg, uint64_t *count)
{
    table_view t;
    int rc = load_table(seg, &t);
    *count = rc == 0 ? t.count : 0;
    return rc;
}

int
stx_dict_stats_get(const stx_segment *seg, stx_dict_stats *s)
{
    table_view t;
    int rc = load_table(seg, &t);
    if (rc != 0) {
        return rc;
    }
    const stx_dict_header *dh = (const stx_dict_header *)seg->data;
    *s = (stx_dict_stats){
        .count = t.count, .index_cap = t.index_cap,
        .entries_cap = t.entries_cap, .entries_used = t.entries_used,
        .heap_size = seg->data_size - sizeof(stx_dict_header),
        .heap_top = t.top - sizeof(stx_dict_header),
        .heap_reserved = atomic_load(&dh->heap_reserved),
        .live_bytes = LOAD(dh->live_bytes),
        .free_bytes = LOAD(dh->free_bytes), .rebuilds = LOAD(dh->rebuilds)};
    return 0;
}

/* ------------------------------------------------------------------ */
/* creation and verification                                           */

/* Carve a block of `size` bytes at the top of an unpublished heap. */
static uint64_t
format_block(stx_dict_header *dh, uint8_t *data, uint64_t size)
{
    uint64_t offset = dh->heap_top;
    ((stx_block *)(data + offset))->size = size;
    dh->heap_top += size;
    dh->live_bytes += size;
    return offset + sizeof(stx_block);
}

int
stx_dict_format(stx_segment *seg, uint64_t reserved)
{
    uint64_t index_block = stx_class_size(stx_class_of(
        sizeof(stx_block) + MIN_INDEX_CAP * INDEX_SLOT_BYTES));
    uint64_t entries_block = stx_class_size(stx_class_of(
        sizeof(stx_block) + MIN_INDEX_CAP * 2 / 3 * sizeof(stx_dict_entry)));
    if (seg->data_size < sizeof(stx_dict_header) + index_block
        + entries_block || reserved < sizeof(stx_dict_header) + index_block
        + entries_block) {
        return stx_fail(STX_EINVAL, "a SharedDict needs at least %zu bytes",
                        sizeof(stx_dict_header) + index_block
                        + entries_block);
    }
    stx_dict_header *dh = (stx_dict_header *)seg->data;
    memset(dh, 0, sizeof(*dh));
    dh->magic = STX_DICT_MAGIC;
    dh->heap_off = dh->heap_top = sizeof(stx_dict_header);
    dh->index_cap = MIN_INDEX_CAP;
    dh->entries_cap = MIN_INDEX_CAP * 2 / 3;
    dh->index_off = format_block(dh, seg->data, index_block);
    dh->entries_off = format_block(dh, seg->data, entries_block);
    memset(seg->data + dh->index_off, 0, MIN_INDEX_CAP * INDEX_SLOT_BYTES);
    atomic_store(&dh->heap_reserved, reserved);
    return 0;
}

/* The dict's plan for a new segment.  The undo log is an eighth of the
 * data size, from 256 KiB to 64 MiB (a dict txn logs about 32 bytes per
 * key it inserts and 80 per key it deletes; fresh records are not
 * logged); the first INITIAL_HEAP bytes are backed at once. */
static void
dict_plan(uint64_t data_size, stx_layout_plan *plan)
{
    uint64_t undo = data_size / 8;
    undo = undo < (256ull << 10) ? (256ull << 10) : undo;
    undo = undo > (64ull << 20) ? (64ull << 20) : undo;
    plan->undo_size = stx_round_up(undo, STX_PAGE);
    plan->data_reserve = data_size < INITIAL_HEAP ? data_size : INITIAL_HEAP;
}

uint64_t
stx_dict_default_size(void)
{
    uint64_t total = stx_shm_dir_total_bytes();
    /* every process maps the whole data region: under an address space
     * limit (ulimit -v) take at most a quarter of it */
    uint64_t limit = stx_address_space_limit() / 4;
    if (limit != 0 && (total == 0 || limit < total)) {
        total = limit / STX_PAGE * STX_PAGE;
    }
    if (total < STX_DICT_MIN_DEFAULT) {
        return STX_DICT_MIN_DEFAULT; /* also when it cannot tell */
    }
    return total > STX_DICT_MAX_DEFAULT ? STX_DICT_MAX_DEFAULT
                                        : stx_round_up(total, STX_PAGE);
}

const stx_layout stx_dict_layout = {
    .kind = STX_LAYOUT_DICT,
    .plan = dict_plan,
    .format = stx_dict_format,
};

/* Check every index slot: empty, deleted, or a live one whose entry
 * number names a live entry with the same record and tag; as many live
 * slots as the dict has keys. */
static int
verify_index(const stx_segment *seg, const table_view *t)
{
    uint64_t named = 0;
    for (uint64_t i = 0; i < t->index_cap; i++) {
        uint64_t slot = t->slots[i];
        if (slot <= STX_INDEX_DELETED) {
            continue;
        }
        uint64_t e = t->entry_of[i];
        if (e >= t->entries_used
            || slot != slot_value(t->entries[e].hash, t->entries[e].record)) {
            return corrupt(seg, "an index slot names no live entry");
        }
        named++;
    }
    return named == t->count ? 0 : corrupt(seg, "its index and count "
                                           "disagree");
}

/* Check every live entry: a valid record, the stored hash matches the
 * key, and probing finds it through the slot that names the entry. */
static int
verify_entries(const stx_segment *seg, const table_view *t)
{
    uint64_t live = 0;
    for (uint64_t e = 0; e < t->entries_used; e++) {
        stx_dict_entry entry = t->entries[e];
        if (entry.record == 0) {
            continue;
        }
        stx_found f, g;
        uint64_t slot;
        int rc = load_record(seg, entry.record, t->top, &f);
        if (rc != 0) {
            return rc;
        }
        stx_key key = {.bytes = f.key, .len = f.key_len,
                       .hash = stx_siphash13(seg->hdr->hash_key, f.key,
                                             f.key_len)};
        if (key.hash != entry.hash) {
            return corrupt(seg, "an entry's hash does not match its key");
        }
        if (probe(seg, t, &key, &g, &slot) != 0 || g.record != entry.record
            || t->entry_of[g.slot] != e) {
            return corrupt(seg, "an entry cannot be found from the index");
        }
        live++;
    }
    return live == t->count ? 0 : corrupt(seg, "its count is wrong");
}

/*
 * The heap as verify_heap() sees it.  Blocks tile [heap_off, heap_top)
 * with no gap; every block is claimed exactly once, by the table (index,
 * entries, records) or by a free list.  One bit per STX_BLOCK_ALIGN bytes
 * marks where blocks start, another which are claimed.
 */
typedef struct heap_map {
    uint64_t *starts;
    uint64_t *claimed;
    uint64_t blocks;         /* blocks in the tiling */
    uint64_t nclaimed;
    uint64_t live;           /* bytes claimed by the table */
    uint64_t free;           /* bytes claimed by free lists */
} heap_map;

/* 1 if bit `i` of `bits` is set. */
static int
bit_get(const uint64_t *bits, uint64_t i)
{
    return (bits[i / 64] >> (i % 64)) & 1u;
}

/* Set bit `i` of `bits`. */
static void
bit_set(uint64_t *bits, uint64_t i)
{
    bits[i / 64] |= 1ull << (i % 64);
}

/* Walk the blocks from heap_off to `top`: each a valid block of a class
 * size; mark where each starts. */
static int
map_blocks(const stx_segment *seg, uint64_t top, heap_map *m)
{
    uint64_t at = sizeof(stx_dict_header);
    while (at < top) {
        uint64_t size = stx_block_size(seg, at, top);
        if (size == 0) {
            return STX_ECORRUPT;
        }
        if (stx_class_size(stx_class_of(size)) != size) {
            return corrupt(seg, "a heap block has no class size");
        }
        bit_set(m->starts, at / STX_BLOCK_ALIGN);
        m->blocks++;
        at += size;
    }
    return 0;
}

/* Claim the block at `offset` for one owner: it must start a block of at
 * least `need` bytes and be unclaimed.  *size is its size. */
static int
claim(const stx_segment *seg, heap_map *m, uint64_t offset, uint64_t top,
      uint64_t need, uint64_t *size)
{
    *size = stx_block_size(seg, offset, top);
    if (*size == 0) {
        return STX_ECORRUPT;
    }
    uint64_t i = offset / STX_BLOCK_ALIGN;
    if (!bit_get(m->starts, i) || bit_get(m->claimed, i) || *size < need) {
        return corrupt(seg, "a heap block is shared, misplaced or too "
                       "small");
    }
    bit_set(m->claimed, i);
    m->nclaimed++;
    return 0;
}

/* Claim the table's blocks: index, entries and every live record. */
static int
claim_table(const stx_segment *seg, const table_view *t, heap_map *m)
{
    uint64_t size;
    int rc = claim(seg, m, t->index_off - sizeof(stx_block), t->top,
                   sizeof(stx_block) + t->index_cap * INDEX_SLOT_BYTES,
                   &size);
    m->live += rc == 0 ? size : 0;
    if (rc == 0) {
        rc = claim(seg, m, t->entries_off - sizeof(stx_block), t->top,
                   sizeof(stx_block) + t->entries_cap
                   * sizeof(stx_dict_entry), &size);
        m->live += rc == 0 ? size : 0;
    }
    for (uint64_t e = 0; rc == 0 && e < t->entries_used; e++) {
        uint64_t record = t->entries[e].record;
        if (record != 0) {
            rc = claim(seg, m, record, t->top, sizeof(stx_record), &size);
            m->live += rc == 0 ? size : 0;
        }
    }
    return rc;
}

/* Claim every free list's blocks: each of its list's class (a cycle or a
 * block on two lists claims a block twice). */
static int
claim_free_lists(const stx_segment *seg, const table_view *t, heap_map *m)
{
    const stx_dict_header *dh = (const stx_dict_header *)seg->data;
    for (uint32_t c = 0; c < STX_DICT_CLASSES; c++) {
        for (uint64_t b = dh->free_heads[c]; b != 0;) {
            uint64_t size;
            if (claim(seg, m, b, t->top, 0, &size) != 0
                || size != stx_class_size(c)) {
                return corrupt(seg, "a free list is broken");
            }
            m->free += size;
            b = ((const stx_block *)(seg->data + b))->next_free;
        }
    }
    return 0;
}

/* Check the heap: blocks tile it, each claimed once, and the byte counts
 * of the dict header are those of the blocks. */
static int
verify_heap(const stx_segment *seg, const table_view *t)
{
    const stx_dict_header *dh = (const stx_dict_header *)seg->data;
    if (dh->heap_off != sizeof(stx_dict_header)
        || t->top < dh->heap_off || t->top % STX_BLOCK_ALIGN != 0) {
        return corrupt(seg, "its heap bounds are impossible");
    }
    uint64_t words = t->top / STX_BLOCK_ALIGN / 64 + 1;
    heap_map m = {.starts = calloc(words, sizeof(uint64_t)),
                  .claimed = calloc(words, sizeof(uint64_t))};
    int rc = m.starts && m.claimed ? 0 : stx_fail(STX_ENOMEM, "out of "
                                                  "memory");
    if (rc == 0) {
        rc = map_blocks(seg, t->top, &m);
    }
    if (rc == 0) {
        rc = claim_table(seg, t, &m);
    }
    if (rc == 0) {
        rc = claim_free_lists(seg, t, &m);
    }
    free(m.starts);
    free(m.claimed);
    if (rc == 0 && m.nclaimed != m.blocks) {
        rc = corrupt(seg, "a heap block is neither used nor free");
    }
    if (rc == 0 && (m.live != dh->live_bytes || m.free != dh->free_bytes)) {
        rc = corrupt(seg, "its live or free byte counts are wrong");
    }
    return rc;
}

int
stx_dict_verify(const stx_segment *seg)
{
    table_view t;
    int rc = load_table(seg, &t);
    if (rc == 0) {
        rc = verify_entries(seg, &t); /* the most precise message first */
    }
    if (rc == 0) {
        rc = verify_index(seg, &t);
    }
    return rc == 0 ? verify_heap(seg, &t) : rc;
}
