/*
 * layout_offsets.c -- print where layout.h puts every field of the
 * segment's structs, for tests/test_drift.py to hold docs/format.md to.
 *
 * One line per field: "struct field offset size"; one per struct:
 * "struct sizeof size".  A record's block header is printed under the
 * record, as format.md shows it.
 */
#include <stddef.h>
#include <stdio.h>

#include "layout.h"

/* Print one field of struct `type`. */
#define FIELD(type, field)                                              \
    printf("%s %s %zu %zu\n", #type, #field, offsetof(type, field),     \
           sizeof(((type *)0)->field))

/* Print a field `name` at `member` (a nested member) of `type`. */
#define NESTED(type, name, member)                                      \
    printf("%s %s %zu %zu\n", #type, #name, offsetof(type, member),     \
           sizeof(((type *)0)->member))

/* Print the size of struct `type`. */
#define SIZE(type) printf("%s sizeof %zu\n", #type, sizeof(type))

int
main(void)
{
    FIELD(stx_header, magic);
    FIELD(stx_header, version);
    FIELD(stx_header, abi);
    FIELD(stx_header, layout_kind);
    FIELD(stx_header, header_size);
    FIELD(stx_header, total_size);
    FIELD(stx_header, slots_off);
    FIELD(stx_header, nslots);
    FIELD(stx_header, slot_size);
    FIELD(stx_header, undo_off);
    FIELD(stx_header, undo_size);
    FIELD(stx_header, data_off);
    FIELD(stx_header, data_size);
    FIELD(stx_header, format);
    FIELD(stx_header, itemsize);
    FIELD(stx_header, ndim);
    FIELD(stx_header, shape);
    FIELD(stx_header, hash_key);
    FIELD(stx_header, creator_pid);
    FIELD(stx_header, reserved0);
    FIELD(stx_header, created_ns);
    FIELD(stx_header, checksum);
    FIELD(stx_header, writer_flag);
    FIELD(stx_header, writer_pid);
    FIELD(stx_header, reserved1);
    FIELD(stx_header, drain_futex);
    FIELD(stx_header, slots_hwm);
    FIELD(stx_header, unrecoverable);
    FIELD(stx_header, pid_ns);
    FIELD(stx_header, undo_used);
    FIELD(stx_header, commits);
    FIELD(stx_header, recoveries);
    FIELD(stx_header, modified_ns);
    FIELD(stx_header, undo_reserved);
    FIELD(stx_header, writer_mutex);
    FIELD(stx_header, seq);
    FIELD(stx_header, change_futex);
    FIELD(stx_header, change_waiters);
    SIZE(stx_header);

    FIELD(stx_reader_slot, pid);
    FIELD(stx_reader_slot, readers);
    FIELD(stx_reader_slot, attached_ns);
    FIELD(stx_reader_slot, waiting);
    FIELD(stx_reader_slot, pad);
    SIZE(stx_reader_slot);

    FIELD(stx_undo_record, offset);
    FIELD(stx_undo_record, length);
    SIZE(stx_undo_record);

    FIELD(stx_dict_header, magic);
    FIELD(stx_dict_header, reserved0);
    FIELD(stx_dict_header, index_off);
    FIELD(stx_dict_header, index_cap);
    FIELD(stx_dict_header, entries_off);
    FIELD(stx_dict_header, entries_cap);
    FIELD(stx_dict_header, reserved1);
    FIELD(stx_dict_header, heap_off);
    FIELD(stx_dict_header, heap_top);
    FIELD(stx_dict_header, live_bytes);
    FIELD(stx_dict_header, free_bytes);
    FIELD(stx_dict_header, rebuilds);
    FIELD(stx_dict_header, count);
    FIELD(stx_dict_header, entries_used);
    FIELD(stx_dict_header, reserved2);
    FIELD(stx_dict_header, heap_reserved);
    FIELD(stx_dict_header, reserved3);
    FIELD(stx_dict_header, free_heads);
    SIZE(stx_dict_header);

    FIELD(stx_dict_entry, hash);
    FIELD(stx_dict_entry, record);
    SIZE(stx_dict_entry);

    NESTED(stx_record, size, block.size);
    NESTED(stx_record, next_free, block.next_free);
    FIELD(stx_record, key_len);
    FIELD(stx_record, value_tag);
    FIELD(stx_record, key_kind);
    FIELD(stx_record, reserved);
    FIELD(stx_record, value_len);
    SIZE(stx_record);

    printf("STX_CHECKSUMMED_BYTES value %zu\n",
           (size_t)STX_CHECKSUMMED_BYTES);
    printf("STX_DICT_STATE_BYTES value %zu\n", (size_t)STX_DICT_STATE_BYTES);
    printf("STX_DICT_CLASSES value %u\n", STX_DICT_CLASSES);
    printf("STX_FORMAT_VERSION value %u\n", STX_FORMAT_VERSION);
    return 0;
}
