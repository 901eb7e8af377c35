/*
 * key.c -- the canonical encoding of SharedDict keys (key.h has the
 * bytes).  One implementation for every caller: the Python binding feeds
 * it Python values, the public C API C values.
 *
 * Numbers are stored little-endian in native order: the ABI word in the
 * header pins the byte order of every process that attaches.
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "key.h"

/* The largest big int accepted, in bytes (a key is at most 4 GiB). */
#define BIGINT_MAX_BYTES ((size_t)1 << 28)

/* ------------------------------------------------------------------ */
/* the buffer                                                          */

void
stx_keybuf_init(stx_keybuf *kb)
{
    kb->bytes = kb->stack;
    kb->len = 0;
    kb->cap = sizeof(kb->stack);
    kb->kind = STX_KEY_PLAIN;
    kb->depth = 0;
    kb->done = 0;
    kb->error = 0;
}

void
stx_keybuf_release(stx_keybuf *kb)
{
    if (kb->bytes != kb->stack) {
        free(kb->bytes);
    }
    stx_keybuf_init(kb);
}

int
stx_keybuf_check(const stx_keybuf *kb)
{
    if (kb->error != 0) {
        return kb->error;
    }
    if (kb->depth > 0) {
        return stx_fail(STX_EINVAL, "the key has %d tuple(s) still open",
                        kb->depth);
    }
    if (!kb->done) {
        return stx_fail(STX_EINVAL, "the key is empty: append a value");
    }
    return 0;
}

/* Poison `kb` with `code` and return it. */
static int
poison(stx_keybuf *kb, int code)
{
    kb->error = code;
    return code;
}

/* Make room for `more` bytes. */
static int
reserve(stx_keybuf *kb, size_t more)
{
    if (more <= kb->cap - kb->len) {
        return 0;
    }
    if (more > SIZE_MAX / 4 - kb->len) {
        return poison(kb, stx_fail(STX_ENOMEM, "a key of %zu bytes is too "
                                   "large", kb->len));
    }
    size_t cap = (kb->len + more) * 2;
    uint8_t *grown = kb->bytes == kb->stack ? malloc(cap)
                                            : realloc(kb->bytes, cap);
    if (grown == NULL) {
        return poison(kb, stx_fail(STX_ENOMEM, "no memory for a key of "
                                   "%zu bytes", cap));
    }
    if (kb->bytes == kb->stack) {
        memcpy(grown, kb->stack, kb->len);
    }
    kb->bytes = grown;
    kb->cap = cap;
    return 0;
}

/* Start a value: refuse a second top-level one, and inside a tuple
 * write the placeholder of its 4-byte length.  *at: where it goes. */
static int
value_begin(stx_keybuf *kb, size_t *at)
{
    if (kb->error != 0) {
        return kb->error;
    }
    if (kb->done) {
        return poison(kb, stx_fail(STX_EINVAL, "a key is one value: wrap "
                                   "several in a tuple"));
    }
    *at = SIZE_MAX;
    if (kb->depth > 0) {
        int rc = reserve(kb, 4);
        if (rc != 0) {
            return rc;
        }
        *at = kb->len;
        memset(kb->bytes + kb->len, 0, 4);
        kb->len += 4;
    }
    return 0;
}

/* Finish a value that began at `at`: patch its tuple length in. */
static int
value_end(stx_keybuf *kb, size_t at)
{
    if (at == SIZE_MAX) {
        kb->done = kb->depth == 0;
        return 0;
    }
    size_t n = kb->len - at - 4;
    if (n > UINT32_MAX) {
        return poison(kb, stx_fail(STX_EINVAL, "a tuple element encodes "
                                   "to at most 4 GiB"));
    }
    uint32_t len = (uint32_t)n;
    memcpy(kb->bytes + at, &len, sizeof(len));
    return 0;
}

/* Append one whole scalar: `tag` and `n` bytes. */
static int
put(stx_keybuf *kb, char tag, const void *src, size_t n)
{
    if (kb->depth == 0 && kb->error == 0 && !kb->done
        && n < kb->cap - kb->len) {
        /* the common case, a plain key that fits: no tuple bookkeeping */
        kb->bytes[kb->len] = (uint8_t)tag;
        if (n > 0) {
            memcpy(kb->bytes + kb->len + 1, src, n);
        }
        kb->len += n + 1;
        kb->done = 1;
        return 0;
    }
    size_t at = SIZE_MAX;
    int rc = value_begin(kb, &at);
    if (rc == 0) {
        rc = reserve(kb, n + 1);
    }
    if (rc != 0) {
        return rc;
    }
    kb->bytes[kb->len++] = (uint8_t)tag;
    if (n > 0) {
        memcpy(kb->bytes + kb->len, src, n);
        kb->len += n;
    }
    return value_end(kb, at);
}

/* ------------------------------------------------------------------ */
/* appending values                                                    */

int
stx_key_str(stx_keybuf *kb, const void *utf8, size_t n)
{
    return put(kb, STX_KT_STR, utf8, n);
}

int
stx_key_bytes(stx_keybuf *kb, const void *p, size_t n)
{
    return put(kb, STX_KT_BYTES, p, n);
}

int
stx_key_int(stx_keybuf *kb, int64_t v)
{
    return put(kb, STX_KT_INT, &v, sizeof(v));
}

int
stx_key_bool(stx_keybuf *kb, int v)
{
    int top = kb->depth == 0;
    int rc = stx_key_int(kb, v != 0);
    if (rc == 0 && top) {
        kb->kind = STX_KEY_BOOL;
    }
    return rc;
}

int
stx_key_none(stx_keybuf *kb)
{
    return put(kb, STX_KT_NONE, NULL, 0);
}

/* The bit length of the magnitude `mag[:n]` (little-endian). */
static size_t
bit_length(const uint8_t *mag, size_t n)
{
    while (n > 0 && mag[n - 1] == 0) {
        n--;
    }
    if (n == 0) {
        return 0;
    }
    size_t bits = (n - 1) * 8;
    for (unsigned top = mag[n - 1]; top != 0; top >>= 1) {
        bits++;
    }
    return bits;
}

/* Negate `n` bytes of two's complement in place. */
static void
negate(uint8_t *p, size_t n)
{
    unsigned carry = 1;
    for (size_t i = 0; i < n; i++) {
        unsigned v = (uint8_t)~p[i] + carry;
        p[i] = (uint8_t)v;
        carry = v >> 8;
    }
}

/* Append the int with magnitude `mag[:n]` (little-endian, scratch space:
 * it is overwritten) and sign `negative`, canonically. */
static int
put_magnitude(stx_keybuf *kb, uint8_t *mag, size_t n, int negative)
{
    size_t bits = bit_length(mag, n);
    /* int64 holds magnitudes below 2^63, and 2^63 itself if negative */
    int fits = bits <= 63 || (negative && bits == 64 && mag[7] == 0x80
                              && bit_length(mag, 7) == 0);
    if (fits) {
        uint64_t u = 0;
        for (size_t i = 0; i < 8 && i < n; i++) {
            u |= (uint64_t)mag[i] << (8 * i);
        }
        int64_t v = negative ? (int64_t)(0 - u) : (int64_t)u;
        return stx_key_int(kb, v);
    }
    size_t len = bits / 8 + 1; /* <= n: the top bit of mag[len-1] is 0 */
    if (negative) {
        negate(mag, len);
    }
    return put(kb, STX_KT_BIGINT, mag, len);
}

int
stx_key_bigint(stx_keybuf *kb, const void *le, size_t n)
{
    if (n > BIGINT_MAX_BYTES) {
        return poison(kb, stx_fail(STX_EINVAL, "an int key has at most %zu "
                                   "bytes", BIGINT_MAX_BYTES));
    }
    const uint8_t *p = le;
    int negative = n > 0 && (p[n - 1] & 0x80) != 0;
    uint8_t small[64];
    uint8_t *mag = n + 1 <= sizeof(small) ? small : malloc(n + 1);
    if (mag == NULL) {
        return poison(kb, stx_fail(STX_ENOMEM, "no memory for an int key"));
    }
    if (n > 0) {
        memcpy(mag, p, n);
    }
    mag[n] = negative ? 0xff : 0; /* room for the magnitude of -2^(8n-1) */
    if (negative) {
        negate(mag, n + 1);
    }
    int rc = put_magnitude(kb, mag, n + 1, negative);
    if (mag != small) {
        free(mag);
    }
    return rc;
}

/* Append the integral value of `d` (finite, |d| >= 2^63) as a big int. */
static int
put_big_double(stx_keybuf *kb, double d)
{
    int exp;
    double frac = frexp(fabs(d), &exp); /* |d| = frac * 2^exp, exp > 63 */
    uint64_t mant = (uint64_t)ldexp(frac, 53); /* exact: 53 bits */
    int shift = exp - 53;                      /* >= 11 */
    size_t n = (size_t)(exp + 7) / 8 + 1;
    uint8_t mag[(DBL_MAX_EXP + 7) / 8 + 2];
    memset(mag, 0, n);
    for (int b = 0; b < 53; b++) {
        if (mant >> b & 1u) {
            int at = b + shift;
            mag[at / 8] |= (uint8_t)(1u << (at % 8));
        }
    }
    return put_magnitude(kb, mag, n, d < 0);
}

int
stx_key_double(stx_keybuf *kb, double d)
{
    int top = kb->depth == 0;
    int rc;
    uint8_t kind = STX_KEY_FLOAT;
    if (isfinite(d) && d == floor(d)) {
        if (d >= -9223372036854775808.0 && d < 9223372036854775808.0) {
            rc = stx_key_int(kb, (int64_t)d);
            if (d == 0.0 && signbit(d)) {
                kind = STX_KEY_NEG_ZERO; /* the int 0 that was -0.0 */
            }
        }
        else {
            rc = put_big_double(kb, d);
        }
    }
    else {
        if (isnan(d)) {
            d = NAN; /* one NaN, whatever its payload */
        }
        rc = put(kb, STX_KT_FLOAT, &d, sizeof(d));
        kind = STX_KEY_PLAIN; /* stored as a float anyway */
    }
    if (rc == 0 && top) {
        kb->kind = kind;
    }
    return rc;
}

int
stx_key_tuple_begin(stx_keybuf *kb)
{
    size_t at = SIZE_MAX;
    if (kb->error == 0 && kb->depth >= STX_KEY_MAX_DEPTH) {
        return poison(kb, stx_fail(STX_EINVAL, "tuple keys nest at most %d"
                                   " deep", STX_KEY_MAX_DEPTH));
    }
    int rc = value_begin(kb, &at);
    if (rc == 0) {
        rc = reserve(kb, 1);
    }
    if (rc != 0) {
        return rc;
    }
    kb->bytes[kb->len++] = STX_KT_TUPLE;
    kb->open[kb->depth++] = at;
    return 0;
}

int
stx_key_tuple_end(stx_keybuf *kb)
{
    if (kb->error != 0) {
        return kb->error;
    }
    if (kb->depth == 0) {
        return poison(kb, stx_fail(STX_EINVAL, "no tuple is open"));
    }
    return value_end(kb, kb->open[--kb->depth]);
}

/* ------------------------------------------------------------------ */
/* reading keys                                                        */

/* STX_ECORRUPT about an undecodable key. */
static int
bad_key(const char *why)
{
    return stx_fail(STX_ECORRUPT, "a stored key cannot be decoded (%s); "
                    "run `shmtxn check` on the segment", why);
}

/* The double nearest the big int `p[:n]` (two's complement LE): exact
 * for the big ints an integral float encodes to, whose magnitudes have
 * at most 53 significant bits.  The magnitude is summed from the top
 * byte down; a negative one is negated on the way (byte i is ~p[i], plus
 * the carry that only the lowest nonzero byte receives). */
static double
bigint_to_double(const uint8_t *p, size_t n)
{
    int negative = n > 0 && (p[n - 1] & 0x80) != 0;
    size_t low = 0;
    while (low < n && p[low] == 0) {
        low++;
    }
    double d = 0;
    for (size_t i = n; i > 0; i--) {
        unsigned byte = p[i - 1];
        if (negative) {
            byte = i - 1 < low ? 0u
                   : i - 1 == low ? (256u - byte) & 0xffu : ~byte & 0xffu;
        }
        d = d * 256.0 + byte;
    }
    return negative ? -d : d;
}

/* Give a top-level int of kind `kind` its stored type. */
static int
apply_kind(int kind, stx_key_item *item)
{
    if (kind == STX_KEY_PLAIN) {
        return 0;
    }
    if (item->type != STX_KT_INT && !(item->type == STX_KT_BIGINT
                                      && kind == STX_KEY_FLOAT)) {
        return bad_key("only an int carries a key kind");
    }
    switch (kind) {
    case STX_KEY_BOOL:
        item->type = STX_KT_BOOL;
        item->i = item->i != 0;
        return 0;
    case STX_KEY_FLOAT:
        item->d = item->type == STX_KT_INT
                  ? (double)item->i : bigint_to_double(item->data, item->len);
        item->type = STX_KT_FLOAT;
        return isfinite(item->d) ? 0 : bad_key("a float out of range");
    case STX_KEY_NEG_ZERO:
        if (item->i != 0) {
            return bad_key("-0.0 stored as another number");
        }
        item->type = STX_KT_FLOAT;
        item->d = -0.0;
        return 0;
    }
    return bad_key("an unknown key kind");
}

int
stx_key_parse(const uint8_t *p, size_t n, int kind, stx_key_item *item)
{
    if (n < 1) {
        return bad_key("empty");
    }
    memset(item, 0, sizeof(*item));
    item->type = p[0];
    item->data = p + 1;
    item->len = n - 1;
    switch (p[0]) {
    case STX_KT_STR:
    case STX_KT_BYTES:
    case STX_KT_BIGINT:
    case STX_KT_TUPLE:
        break;
    case STX_KT_INT:
        if (item->len != sizeof(item->i)) {
            return bad_key("an int of another size");
        }
        memcpy(&item->i, item->data, sizeof(item->i));
        break;
    case STX_KT_FLOAT:
        if (item->len != sizeof(item->d)) {
            return bad_key("a float of another size");
        }
        memcpy(&item->d, item->data, sizeof(item->d));
        break;
    case STX_KT_NONE:
        if (item->len != 0) {
            return bad_key("None with a body");
        }
        break;
    default:
        return bad_key("an unknown type byte");
    }
    return apply_kind(kind, item);
}

int
stx_key_tuple_next(const stx_key_item *tuple, size_t *pos,
                   stx_key_item *elem)
{
    if (tuple->type != STX_KT_TUPLE) {
        return stx_fail(STX_EINVAL, "the key item is not a tuple");
    }
    if (*pos >= tuple->len) {
        return STX_ENOENT;
    }
    size_t left = tuple->len - *pos;
    uint32_t len;
    if (left < sizeof(len)) {
        return bad_key("a truncated tuple");
    }
    memcpy(&len, tuple->data + *pos, sizeof(len));
    if (len > left - sizeof(len)) {
        return bad_key("a tuple element past its end");
    }
    int rc = stx_key_parse(tuple->data + *pos + sizeof(len), len,
                           STX_KEY_PLAIN, elem);
    if (rc == 0) {
        *pos += sizeof(len) + len;
    }
    return rc;
}

int
stx_utf8_check(const void *src, size_t n)
{
    const uint8_t *p = src, *end = p + n;
    while (p < end) {
        uint8_t c = *p++;
        if (c < 0x80) {
            continue;
        }
        int more = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : 1;
        /* the second byte's range rules out overlong forms and code
         * points past U+10FFFF (surrogates ED A0..BF are allowed) */
        uint8_t lo = c == 0xe0 ? 0xa0 : c == 0xf0 ? 0x90 : 0x80;
        uint8_t hi = c == 0xf4 ? 0x8f : 0xbf;
        if (c < 0xc2 || c > 0xf4 || end - p < more || p[0] < lo
            || p[0] > hi) {
            return stx_fail(STX_EINVAL, "not UTF-8 (byte %zu)",
                            (size_t)(p - 1 - (const uint8_t *)src));
        }
        for (int i = 1; i < more; i++) {
            if ((p[i] & 0xc0) != 0x80) {
                return stx_fail(STX_EINVAL, "not UTF-8 (byte %zu)",
                                (size_t)(p - (const uint8_t *)src + i));
            }
        }
        p += more;
    }
    return 0;
}
