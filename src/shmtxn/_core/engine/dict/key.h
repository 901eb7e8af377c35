/*
 * key.h -- the canonical encoding of SharedDict keys, built from C values
 * and read back.  Plain C11; no Python.h.  The Python binding (codec.c)
 * and the public C API (api.c) both encode keys through this builder, so
 * every process, whatever its language, hashes and compares the same
 * bytes (docs/c-api.md shows them to C users):
 *
 *   str    's' UTF-8 (encoded surrogates allowed, as Python's
 *          "surrogatepass")
 *   bytes  'b' the bytes
 *   int    'i' 8 bytes little-endian if it fits int64, else
 *          'I' two's complement little-endian in floor(bits(|v|) / 8) + 1
 *          bytes (bits(|v|): the bit length of the magnitude)
 *   float  integral and finite: as the int it equals (so 1.0 == 1);
 *          else 'f' 8 bytes (every NaN as one canonical NaN)
 *   bool   as the int 0 or 1 (so True == 1)
 *   None   'n'
 *   tuple  't' then per element a 4-byte length and its encoding
 *
 * A key is one top-level value.  The record's key_kind remembers the type
 * of a top-level bool or integral float (enum stx_key_kind), so a reader
 * can give back the key it was stored under; inside a tuple the type is
 * not kept (as in a dict, (1.0,) and (1,) are one key).
 */
#ifndef STX_KEY_H
#define STX_KEY_H

#include <stddef.h>
#include <stdint.h>

/* Nesting depth of tuple keys accepted. */
#define STX_KEY_MAX_DEPTH 32

/* key_kind: the type of a top-level key that encodes as an int. */
enum stx_key_kind {
    STX_KEY_PLAIN = 0,
    STX_KEY_BOOL = 1,     /* True / False */
    STX_KEY_FLOAT = 2,    /* an integral float */
    STX_KEY_NEG_ZERO = 3, /* the float -0.0 (encoded as the int 0) */
};

/* The type bytes of an encoded key, plus '?' for a decoded bool. */
enum stx_key_type {
    STX_KT_STR = 's',
    STX_KT_BYTES = 'b',
    STX_KT_INT = 'i',
    STX_KT_BIGINT = 'I',
    STX_KT_FLOAT = 'f',
    STX_KT_NONE = 'n',
    STX_KT_TUPLE = 't',
    STX_KT_BOOL = '?',    /* only from stx_key_parse with STX_KEY_BOOL */
};

/*
 * stx_keybuf -- a key being built.  The bytes live in `stack` while they
 * fit, then in malloc'd memory (stx_keybuf_release frees it).  `open[d]`
 * is where the 4-byte length of the d-th open tuple goes (SIZE_MAX for a
 * top-level tuple, which has none).  After a failed call the buffer is
 * poisoned (`error`): every later call returns that error.
 */
typedef struct stx_keybuf {
    uint8_t *bytes;
    size_t len, cap;
    uint8_t kind;            /* enum stx_key_kind, for the record */
    int depth;               /* tuples open now */
    int done;                /* the top-level value is complete */
    int error;               /* 0, or the error that poisoned it */
    size_t open[STX_KEY_MAX_DEPTH];
    uint8_t stack[120];
} stx_keybuf;

/*
 * stx_key_item -- one decoded value of a key: `type` (enum stx_key_type)
 * says which fields hold it.  `data`/`len` point into the encoding (str,
 * bytes, the big int's two's complement bytes, or a tuple's body, which
 * stx_key_tuple_next walks); `i` holds an int or bool, `d` a float.
 */
typedef struct stx_key_item {
    int type;
    const uint8_t *data;
    size_t len;
    int64_t i;
    double d;
} stx_key_item;

/* Empty `kb` (on its stack) for a new key. */
void stx_keybuf_init(stx_keybuf *kb);
/* Free what `kb` allocated; it is empty again. */
void stx_keybuf_release(stx_keybuf *kb);
/* 0 if `kb` holds one complete key, else STX_EINVAL (or its error). */
int stx_keybuf_check(const stx_keybuf *kb);

/* Append a str: `n` bytes of UTF-8, not checked (stx_utf8_check). */
int stx_key_str(stx_keybuf *kb, const void *utf8, size_t n);
/* Append bytes. */
int stx_key_bytes(stx_keybuf *kb, const void *p, size_t n);
/* Append an int. */
int stx_key_int(stx_keybuf *kb, int64_t v);
/* Append an int given as `n` bytes of two's complement, little-endian
 * (any length: it is stored canonically, as 'i' if it fits int64). */
int stx_key_bigint(stx_keybuf *kb, const void *le, size_t n);
/* Append a float: an integral one as the int it equals. */
int stx_key_double(stx_keybuf *kb, double d);
/* Append a bool (the int 0 or 1). */
int stx_key_bool(stx_keybuf *kb, int v);
/* Append None. */
int stx_key_none(stx_keybuf *kb);
/* Open a tuple: the values appended until stx_key_tuple_end are its
 * elements.  STX_EINVAL beyond STX_KEY_MAX_DEPTH. */
int stx_key_tuple_begin(stx_keybuf *kb);
/* Close the innermost open tuple. */
int stx_key_tuple_end(stx_keybuf *kb);

/* Decode the value encoded as `p[:n]`, exactly; `kind` is the record's
 * key_kind (STX_KEY_PLAIN inside tuples).  STX_ECORRUPT if impossible. */
int stx_key_parse(const uint8_t *p, size_t n, int kind, stx_key_item *item);
/* The tuple element at *pos of `tuple` (0 to start): 0 and *elem (*pos
 * moves past it), STX_ENOENT after the last, STX_ECORRUPT if damaged. */
int stx_key_tuple_next(const stx_key_item *tuple, size_t *pos,
                       stx_key_item *elem);
/* 0 if `p[:n]` is UTF-8 Python decodes with "surrogatepass" (encoded
 * surrogates allowed), else STX_EINVAL. */
int stx_utf8_check(const void *p, size_t n);

#endif /* STX_KEY_H */
