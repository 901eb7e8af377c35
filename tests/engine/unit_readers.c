/*
 * unit_readers.c -- reader slots: claim, release, the high-water mark,
 * reaping the slot of a dead process (a forked child that exits) but
 * never a live one's, a dead reader not blocking a writer, and a full
 * table.
 */
#include "unit.h"

#define SIZE 256

/* A pid that no process holds a beacon for: dead as far as the segment
 * can tell. */
#define DEAD_PID 0x7ffffff0

/* Creating claims our slot; release frees it; claiming again takes the
 * lowest free slot; the high-water mark follows the highest claimed. */
static void
test_claim_and_release(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 4, NULL);
    int32_t me = getpid();
    int32_t mine = seg.file->slot;
    CHECK_EQ(mine, 0);
    CHECK_EQ(atomic_load(&seg.slots[0].pid), me);
    CHECK(seg.slots[0].attached_ns > 0);
    CHECK_EQ(atomic_load(&seg.hdr->slots_hwm), 1);
    CHECK_EQ(stx_slot_claim(seg.hdr, seg.slots, seg.nslots, DEAD_PID), 1);
    CHECK_EQ(stx_slot_claim(seg.hdr, seg.slots, seg.nslots, DEAD_PID - 1),
             2);
    CHECK_EQ(atomic_load(&seg.hdr->slots_hwm), 3);
    stx_slot_release(&seg);
    CHECK_EQ(atomic_load(&seg.slots[0].pid), 0);
    CHECK_EQ(seg.file->slot, -1);
    CHECK_EQ(stx_slot_claim(seg.hdr, seg.slots, seg.nslots, DEAD_PID - 2),
             0);
    CHECK_EQ(stx_slot_claim(seg.hdr, seg.slots, seg.nslots, DEAD_PID - 3),
             3);
    CHECK_EQ(stx_slot_claim(seg.hdr, seg.slots, seg.nslots, DEAD_PID - 4),
             -1); /* full */
    CHECK_EQ(atomic_load(&seg.hdr->slots_hwm), 4);
    /* every slot is held by a pid with no beacon: ensure reaps them */
    CHECK_EQ(stx_slot_ensure(&seg), 0);
    CHECK(seg.file->slot >= 0);
    CHECK_EQ(atomic_load(&seg.slots[seg.file->slot].pid), me);
    int free_now = 0;
    for (uint32_t i = 0; i < seg.nslots; i++) {
        free_now += atomic_load(&seg.slots[i].pid) == 0;
    }
    CHECK_EQ(free_now, 3);
    unit_drop(&seg, name);
}

/* A forked child claims a slot of its own at once; while it lives,
 * reaping leaves it; after it exits (without releasing), its slot is
 * reaped and free. */
static void
test_reap_the_slot_of_a_dead_child(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 8, NULL);
    unit_pipe p;
    unit_pipe_open(&p);
    pid_t pid = fork();
    if (pid == 0) {
        unit_signal(p.to_parent[1]);
        unit_await(p.to_child[0]);
        _exit(0);
    }
    CHECK_EQ(unit_await(p.to_parent[0]), 0);
    int32_t at = -1;
    for (uint32_t i = 0; i < seg.nslots; i++) {
        if (atomic_load(&seg.slots[i].pid) == pid) {
            at = (int32_t)i;
        }
    }
    CHECK(at >= 0);
    CHECK(at != seg.file->slot);
    CHECK_EQ(stx_pid_alive(seg.file, pid), 1);
    CHECK_EQ(stx_slots_reap(&seg), 0);
    CHECK_EQ(at >= 0 ? atomic_load(&seg.slots[at].pid) : 0, pid);
    unit_signal(p.to_child[1]);
    CHECK_EQ(unit_wait(pid), 0);
    CHECK_EQ(stx_pid_alive(seg.file, pid), 0);
    CHECK_EQ(stx_slots_reap(&seg), 1);
    CHECK_EQ(at >= 0 ? atomic_load(&seg.slots[at].pid) : -1, 0);
    CHECK_EQ(stx_slots_reap(&seg), 0);
    /* our own slot is never reaped */
    CHECK_EQ(atomic_load(&seg.slots[seg.file->slot].pid), getpid());
    unit_drop(&seg, name);
}

/* A child that dies inside a read txn leaves a count in its slot; the
 * next writer reaps it instead of waiting for it forever. */
static void
test_a_dead_reader_does_not_block_a_writer(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 8, NULL);
    pid_t pid = fork();
    if (pid == 0) {
        stx_txn txn = {0};
        int rc = unit_open(&txn, &seg, 0);
        raise(SIGKILL); /* inside the read txn */
        _exit(rc == 0 ? 3 : 1);
    }
    CHECK_EQ(unit_wait(pid), 128 + SIGKILL);
    int32_t at = -1;
    for (uint32_t i = 0; i < seg.nslots; i++) {
        if (atomic_load(&seg.slots[i].pid) == pid) {
            at = (int32_t)i;
        }
    }
    CHECK(at >= 0);
    CHECK_EQ(at >= 0 ? atomic_load(&seg.slots[at].readers) : 0, 1);
    stx_txn txn = {0};
    CHECK_EQ(unit_open(&txn, &seg, 1), 0);
    CHECK_EQ(at >= 0 ? atomic_load(&seg.slots[at].pid) : -1, 0);
    CHECK_EQ(at >= 0 ? (int64_t)atomic_load(&seg.slots[at].readers) : -1, 0);
    CHECK_EQ(stx_txn_end(&txn, 1), 0);
    unit_drop(&seg, name);
}

/* A slot a reaper marked (-its pid) and left when it died is finished
 * by the next reaper; a slot bearing a live pid is never taken. */
static void
test_a_dead_reapers_mark_is_finished(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 4, NULL);
    stx_reader_slot *slot = &seg.slots[1];
    atomic_store(&slot->pid, -DEAD_PID);
    atomic_store(&slot->readers, 2);
    atomic_store(&seg.hdr->slots_hwm, 2);
    CHECK_EQ(stx_slot_reap(&seg, slot, -DEAD_PID), 1);
    CHECK_EQ(atomic_load(&slot->pid), 0);
    CHECK_EQ(atomic_load(&slot->readers), 0);
    atomic_store(&slot->pid, getpid()); /* alive: ourselves */
    CHECK_EQ(stx_slot_reap(&seg, slot, getpid()), 0);
    CHECK_EQ(atomic_load(&slot->pid), getpid());
    atomic_store(&slot->pid, 0);
    unit_drop(&seg, name);
}

/* With every slot held by a live process, another process cannot open
 * a txn: STX_ESLOTS, not a slot taken from the living. */
static void
test_a_full_table_of_live_processes_refuses(void)
{
    stx_segment seg;
    char name[STX_NAME_MAX + 1];
    unit_slots(&seg, name, SIZE, 0, 1, NULL);
    pid_t pid = fork();
    if (pid == 0) {
        stx_txn txn = {0};
        int rc = stx_txn_init(&txn, &seg, 0);
        _exit(rc == STX_ESLOTS ? 0 : 1);
    }
    CHECK_EQ(unit_wait(pid), 0);
    CHECK_EQ(atomic_load(&seg.slots[0].pid), getpid());
    unit_drop(&seg, name);
}

int
main(void)
{
    UNIT_RUN(test_claim_and_release);
    UNIT_RUN(test_reap_the_slot_of_a_dead_child);
    UNIT_RUN(test_a_dead_reader_does_not_block_a_writer);
    UNIT_RUN(test_a_dead_reapers_mark_is_finished);
    UNIT_RUN(test_a_full_table_of_live_processes_refuses);
    return unit_report();
}
