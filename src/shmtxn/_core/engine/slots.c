/*
 * slots.c -- the slots layout (STX_LAYOUT_SLOTS): the data region is an
 * array of fixed-size items, zero or the caller's initial bytes, with no
 * structure of its own for the engine to format or check.
 */
#include "internal.h"

/* The default undo log of a slots segment: room for any txn.  undo.c
 * logs the whole data region once a txn's log would outgrow it, so a log
 * never holds more than the data, plus one record, plus the data again.
 * Only the pages a txn uses are ever reserved: the rest is a hole. */
uint64_t
stx_default_undo_size(uint64_t data_size)
{
    uint64_t data = stx_round_up(data_size, 8);
    return stx_round_up(2 * data + 2 * (16 + 8), STX_PAGE);
}

/* The slots layout's plan: the default undo log above, and every data
 * byte backed at once (a write to an item can then never SIGBUS). */
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
