/*
 * readers.c -- the reader slot table: claim, release, reap dead owners.
 *
 * The protocol each slot follows is described above stx_reader_slot in
 * layout.h.  The high-water mark `slots_hwm` only grows; writers scan the
 * slots below it, so a segment with three processes costs a writer three
 * cache lines, not the whole table.
 */
#define _GNU_SOURCE
#include <unistd.h>

#include "internal.h"

/* Never trust the shared high-water mark: clamp it to the table. */
static uint32_t
slots_in_use(const stx_segment *seg)
{
    uint32_t hwm = atomic_load_explicit(&seg->hdr->slots_hwm,
                                        memory_order_acquire);
    return hwm < seg->nslots ? hwm : seg->nslots;
}

/* Reaping a slot is one process's act: it CASes the slot's pid to its
 * own negated pid (the "being reaped" mark), clears the count, then frees
 * the slot.  A reaper that dies in between leaves its mark, which anyone
 * may finish once the reaper's beacon is gone too. */

/* Lower `*count` by `n`, never below zero. */
static void
lower_count(_Atomic uint32_t *count, uint32_t n)
{
    uint32_t have = atomic_load(count);
    while (n > 0 && have > 0
           && !atomic_compare_exchange_weak(count, &have,
                                            have > n ? have - n : 0)) {
    }
}

/* The second half of a reap: the counts first (the slot's waiters leave
 * the header's count), then the slot is free. */
static void
finish_reap(stx_header *hdr, stx_reader_slot *slot)
{
    lower_count(&hdr->change_waiters, atomic_exchange(&slot->waiting, 0));
    atomic_store(&slot->readers, 0);
    atomic_store(&slot->pid, 0); /* seq_cst: after the count */
}

/* Free `slot` if it bears our pid `me` (our own, or a dead process's
 * whose pid we reuse): the same mark-then-clear as any reap. */
static void
free_own_slot(stx_header *hdr, stx_reader_slot *slot, int32_t me)
{
    if (atomic_compare_exchange_strong(&slot->pid, &me, -me)) {
        finish_reap(hdr, slot);
    }
}

int
stx_slot_holder_alive(const stx_file *file, int32_t seen)
{
    if (seen == INT32_MIN) {
        return 0; /* names no process (and -seen would overflow) */
    }
    return stx_pid_alive(file, seen > 0 ? seen : -seen);
}

int
stx_slot_reap(stx_segment *seg, stx_reader_slot *slot, int32_t seen)
{
    int32_t expected = seen;
    if (seen == 0 || seen == -stx_self_pid
        || stx_slot_holder_alive(seg->file, seen)
        || !atomic_compare_exchange_strong(&slot->pid, &expected,
                                           -stx_self_pid)) {
        return 0; /* alive, free, ours, or someone else got there first */
    }
    /* A live process may have reused the dead pid and claimed the slot
     * since we looked: its beacon says so, and the slot goes back. */
    if (seen > 0 && stx_pid_alive(seg->file, seen)) {
        expected = -stx_self_pid;
        atomic_compare_exchange_strong(&slot->pid, &expected, seen);
        return 0;
    }
    finish_reap(seg->hdr, slot);
    return 1;
}

int
stx_slots_reap(stx_segment *seg)
{
    int cleared = 0;
    uint32_t n = slots_in_use(seg);
    for (uint32_t i = 0; i < n; i++) {
        int32_t pid = atomic_load(&seg->slots[i].pid);
        if (pid != 0 && pid != stx_self_pid) {
            cleared += stx_slot_reap(seg, &seg->slots[i], pid);
        }
    }
    return cleared;
}

/* Raise the slot high-water mark to at least `at_least`. */
static void
raise_hwm(stx_header *hdr, uint32_t at_least)
{
    uint32_t hwm = atomic_load(&hdr->slots_hwm);
    while (hwm < at_least
           && !atomic_compare_exchange_weak(&hdr->slots_hwm, &hwm,
                                            at_least)) {
    }
}

int32_t
stx_slot_claim(stx_header *hdr, stx_reader_slot *slots, uint32_t nslots,
               int32_t me)
{
    for (uint32_t i = 0; i < nslots; i++) {
        int32_t expected = 0;
        stx_reader_slot *slot = &slots[i];
        if (atomic_load(&slot->pid) == 0
            && atomic_compare_exchange_strong(&slot->pid, &expected, me)) {
            slot->attached_ns = stx_now_ns(CLOCK_REALTIME);
            atomic_store(&slot->readers, 0);
            atomic_store(&slot->waiting, 0);
            raise_hwm(hdr, i + 1);
            return (int32_t)i;
        }
    }
    return -1;
}

/* stx_slot_ensure's claim, the registry lock held: one slot per process
 * (and fork generation), whichever of its threads asks first. */
static int
slot_claim_locked(stx_segment *seg)
{
    stx_file *file = seg->file;
    if (file->slot >= 0 && file->fork_gen == stx_fork_gen) {
        return 0; /* another thread claimed it meanwhile */
    }
    int32_t me = stx_self_pid;
    /* A slot already bearing our pid was left by a dead process whose pid
     * we reused (we have not claimed one yet): reap it as dead. */
    uint32_t n = slots_in_use(seg);
    for (uint32_t i = 0; i < n; i++) {
        if (atomic_load(&seg->slots[i].pid) == me) {
            free_own_slot(seg->hdr, &seg->slots[i], me);
        }
    }
    int32_t slot = stx_slot_claim(seg->hdr, seg->slots, seg->nslots, me);
    if (slot < 0 && stx_slots_reap(seg) > 0) {
        slot = stx_slot_claim(seg->hdr, seg->slots, seg->nslots, me);
    }
    if (slot < 0) {
        return stx_fail(STX_ESLOTS, "segment '%s' already has %u live "
                        "processes attached (its max_processes)", seg->name,
                        seg->nslots);
    }
    file->fork_gen = stx_fork_gen;
    file->slot = slot;
    return 0;
}

int
stx_slot_ensure(stx_segment *seg)
{
    stx_file *file = seg->file;
    if (file->slot >= 0 && file->fork_gen == stx_fork_gen) {
        return 0;
    }
    stx_files_lock();
    int rc = slot_claim_locked(seg);
    stx_files_unlock();
    return rc;
}

int
stx_slot_renew(stx_segment *seg, int32_t stale)
{
    stx_file *file = seg->file;
    stx_files_lock();
    if (file->slot == stale) {
        file->slot = -1;
    }
    int rc = slot_claim_locked(seg);
    stx_files_unlock();
    return rc;
}

void
stx_slot_release(stx_segment *seg)
{
    stx_file *file = seg->file;
    if (file->slot < 0 || file->fork_gen != stx_fork_gen
        || (uint32_t)file->slot >= seg->nslots) {
        return;
    }
    free_own_slot(seg->hdr, &seg->slots[file->slot], stx_self_pid);
    file->slot = -1;
}

void
stx_slot_after_fork(stx_file *file)
{
    uint8_t *base = file->maps[0] != NULL ? file->maps[0] : file->maps[1];
    if (base == NULL || file->nslots == 0) {
        return; /* a handle with a private mapping claims on first use */
    }
    int32_t slot = stx_slot_claim((stx_header *)base,
                                  (stx_reader_slot *)(base + file->slots_off),
                                  file->nslots, stx_self_pid);
    if (slot >= 0) {
        file->slot = slot;
        file->fork_gen = stx_fork_gen;
    }
}
