/*
 * items.c -- the item formats a slots segment may hold: struct-module
 * codes in native size and order, the same as memoryview.cast() uses.
 * The binding converts Python values with them and the C API converts C
 * numbers; both find a format here, so a segment's format code means the
 * same in every language.
 */
#include <sys/types.h>

#include "engine.h"

/* Every format, by code. */
static const stx_item_format formats[] = {
    {'b', 1, STX_ITEM_SIGNED},   {'B', 1, STX_ITEM_UNSIGNED},
    {'h', 2, STX_ITEM_SIGNED},   {'H', 2, STX_ITEM_UNSIGNED},
    {'i', 4, STX_ITEM_SIGNED},   {'I', 4, STX_ITEM_UNSIGNED},
    {'l', sizeof(long), STX_ITEM_SIGNED},
    {'L', sizeof(long), STX_ITEM_UNSIGNED},
    {'q', 8, STX_ITEM_SIGNED},   {'Q', 8, STX_ITEM_UNSIGNED},
    {'n', sizeof(ssize_t), STX_ITEM_SIGNED},
    {'N', sizeof(size_t), STX_ITEM_UNSIGNED},
    {'e', 2, STX_ITEM_HALF},     {'f', 4, STX_ITEM_FLOAT},
    {'d', 8, STX_ITEM_FLOAT},    {'?', 1, STX_ITEM_BOOL},
};

const stx_item_format *
stx_item_format_find(const char *code)
{
    const char *c = code[0] == '@' ? code + 1 : code;
    if (c[0] != '\0' && c[1] == '\0') {
        for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
            if (formats[i].code == c[0]) {
                return &formats[i];
            }
        }
    }
    return NULL;
}
