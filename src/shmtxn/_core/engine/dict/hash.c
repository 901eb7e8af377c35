/*
 * hash.c -- SipHash-1-3, the keyed hash of dict keys.
 *
 * Python's hash() is randomised per process, so a shared table needs its
 * own hash: SipHash with a 128-bit key drawn from getrandom() when the
 * segment is created and kept in its header.  Every process hashes the
 * same canonical key bytes to the same value, and an attacker who does not
 * know the key cannot choose keys that collide (hash flooding).  1-3 is the
 * variant CPython uses for str: one compression round per word, three
 * finalisation rounds.
 */
#include <string.h>

#include "dict.h"

/* `x` rotated left by `b` bits. */
static inline uint64_t
rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

/* The four state words of one SipHash computation. */
typedef struct sip_state {
    uint64_t v0, v1, v2, v3;
} sip_state;

/* One SipRound: the ARX mixing step of the specification. */
static inline void
sip_round(sip_state *s)
{
    s->v0 += s->v1;
    s->v1 = rotl(s->v1, 13) ^ s->v0;
    s->v0 = rotl(s->v0, 32);
    s->v2 += s->v3;
    s->v3 = rotl(s->v3, 16) ^ s->v2;
    s->v0 += s->v3;
    s->v3 = rotl(s->v3, 21) ^ s->v0;
    s->v2 += s->v1;
    s->v1 = rotl(s->v1, 17) ^ s->v2;
    s->v2 = rotl(s->v2, 32);
}

/* Absorb one little-endian message word. */
static inline void
sip_absorb(sip_state *s, uint64_t m)
{
    s->v3 ^= m;
    sip_round(s);
    s->v0 ^= m;
}

/* `n` (< 8) bytes at `p` as a little-endian word. */
static inline uint64_t
load_tail(const uint8_t *p, size_t n)
{
    uint64_t m = 0;
    for (size_t i = 0; i < n; i++) {
        m |= (uint64_t)p[i] << (8 * i);
    }
    return m;
}

uint64_t
stx_siphash13(const uint64_t key[2], const void *data, size_t len)
{
    sip_state s = {key[0] ^ 0x736f6d6570736575ull,
                   key[1] ^ 0x646f72616e646f6dull,
                   key[0] ^ 0x6c7967656e657261ull,
                   key[1] ^ 0x7465646279746573ull};
    const uint8_t *p = data;
    size_t words = len / 8;
    for (size_t i = 0; i < words; i++) {
        uint64_t m;
        memcpy(&m, p + 8 * i, 8); /* native order: the ABI word pins it */
        sip_absorb(&s, m);
    }
    sip_absorb(&s, ((uint64_t)len << 56) | load_tail(p + 8 * words, len % 8));
    s.v2 ^= 0xff;
    sip_round(&s);
    sip_round(&s);
    sip_round(&s);
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3;
}
