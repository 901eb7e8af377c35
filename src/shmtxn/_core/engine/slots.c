/*
 * slots.c -- the slots layout (STX_LAYOUT_SLOTS): the data region is an
 * array of fixed-size items, zero or the caller's initial bytes, with no
 * structure of its own for the engine to format or check.
 */
#include "internal.h"

uint64_t
stx_default_undo_size(uint64_t data_size)
{
    uint64_t size = data_size * 4;
    if (size > (64ull << 20)) {
        size = 64ull << 20;
    }
    if (size < (16ull << 10)) {
        size = 16ull << 10;
    }
    return stx_round_up(size, STX_PAGE);
}

/* The slots layout's plan: the default undo log above, and every byte
 * backed at once (a write to an item can then never SIGBUS). */
static void
slots_plan(uint64_t data_size, stx_layout_plan *plan)
{
    plan->undo_size = stx_default_undo_size(data_size);
    plan->data_reserve = data_size;
}

const stx_layout stx_slots_layout = {
    .kind = STX_LAYOUT_SLOTS,
    .plan = slots_plan,
    .format = NULL,
};
