/*
 * crypto - ChaCha20 (RFC 8439) and SHA-256 (FIPS 180-4): long straight runs
 * of 32-bit adds, xors and rotates, the kind of kernel a translator should
 * run fastest.
 *
 * First a known-answer self-check of both (values computed independently,
 * with Python's hashlib and the cryptography package); then ROUNDS times:
 * encrypt a BUF_BYTES buffer in place with the next stretch of keystream
 * and feed the ciphertext to one SHA-256. Prints that digest and the first
 * word of the buffer, exits 0 (1 if the self-check fails).
 * All data is on the stack, away from the code page.
 */
#include "emud.h"

#ifndef ROUNDS
#define ROUNDS 16
#endif

#define BUF_BYTES   4096
#define BLOCKS      (BUF_BYTES / 64)

static uint32_t rotl(uint32_t x, unsigned s)
{
    return x << s | x >> (32 - s);
}

static uint32_t rotr(uint32_t x, unsigned s)
{
    return x >> s | x << (32 - s);
}

static uint32_t load_le(const uint8_t *p)
{
    return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t load_be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- ChaCha20 ---- */

#define QUARTER(a, b, c, d) do {                    \
        a += b; d ^= a; d = rotl(d, 16);            \
        c += d; b ^= c; b = rotl(b, 12);            \
        a += b; d ^= a; d = rotl(d, 8);             \
        c += d; b ^= c; b = rotl(b, 7);             \
    } while (0)

/* The 64 keystream bytes of block `counter` (little-endian words). */
static void chacha20_block(const uint8_t key[32], uint32_t counter,
                           const uint8_t nonce[12], uint8_t out[64])
{
    uint32_t in[16], x[16];

    in[0] = 0x61707865u;                /* "expand 32-byte k" */
    in[1] = 0x3320646eu;
    in[2] = 0x79622d32u;
    in[3] = 0x6b206574u;
    for (int i = 0; i < 8; i++)
        in[4 + i] = load_le(key + 4 * i);
    in[12] = counter;
    for (int i = 0; i < 3; i++)
        in[13 + i] = load_le(nonce + 4 * i);

    for (int i = 0; i < 16; i++)
        x[i] = in[i];
    for (int i = 0; i < 10; i++) {      /* 20 rounds: column then diagonal */
        QUARTER(x[0], x[4], x[8], x[12]);
        QUARTER(x[1], x[5], x[9], x[13]);
        QUARTER(x[2], x[6], x[10], x[14]);
        QUARTER(x[3], x[7], x[11], x[15]);
        QUARTER(x[0], x[5], x[10], x[15]);
        QUARTER(x[1], x[6], x[11], x[12]);
        QUARTER(x[2], x[7], x[8], x[13]);
        QUARTER(x[3], x[4], x[9], x[14]);
    }
    for (int i = 0; i < 16; i++) {
        uint32_t v = x[i] + in[i];

        out[4 * i] = (uint8_t)v;
        out[4 * i + 1] = (uint8_t)(v >> 8);
        out[4 * i + 2] = (uint8_t)(v >> 16);
        out[4 * i + 3] = (uint8_t)(v >> 24);
    }
}

/* ---- SHA-256 ---- */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

struct sha256 {
    uint32_t h[8];
    uint8_t block[64];
    uint32_t used;                      /* bytes in block */
    uint32_t bytes;                     /* total so far (the guests hash < 512 MiB) */
};

static void sha256_init(struct sha256 *s)
{
    static const uint32_t iv[8] = {
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    };

    for (int i = 0; i < 8; i++)
        s->h[i] = iv[i];
    s->used = s->bytes = 0;
}

static void sha256_compress(uint32_t h[8], const uint8_t block[64])
{
    uint32_t w[64];

    for (int i = 0; i < 16; i++)
        w[i] = load_be(block + 4 * i);
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);

        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }

    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    uint32_t e = h[4], f = h[5], g = h[6], k = h[7];

    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25))
                      + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22))
                      + ((a & b) ^ (a & c) ^ (b & c));

        k = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d;
    h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

static void sha256_update(struct sha256 *s, const uint8_t *p, uint32_t n)
{
    s->bytes += n;
    while (n--) {
        s->block[s->used++] = *p++;
        if (s->used == 64) {
            sha256_compress(s->h, s->block);
            s->used = 0;
        }
    }
}

static void sha256_final(struct sha256 *s, uint32_t digest[8])
{
    uint32_t bits_hi = s->bytes >> 29, bits_lo = s->bytes << 3;
    uint8_t pad = 0x80;

    sha256_update(s, &pad, 1);
    pad = 0;
    while (s->used != 56)
        sha256_update(s, &pad, 1);
    uint8_t len[8] = {
        (uint8_t)(bits_hi >> 24), (uint8_t)(bits_hi >> 16), (uint8_t)(bits_hi >> 8),
        (uint8_t)bits_hi, (uint8_t)(bits_lo >> 24), (uint8_t)(bits_lo >> 16),
        (uint8_t)(bits_lo >> 8), (uint8_t)bits_lo,
    };
    sha256_update(s, len, 8);
    for (int i = 0; i < 8; i++)
        digest[i] = s->h[i];
}

/* ---- known answers ---- */

/* The RFC 8439 block-function inputs: key 00 01 .. 1f, this nonce,
 * block counter 1. */
static const uint8_t kat_nonce[12] = {0, 0, 0, 9, 0, 0, 0, 0x4a, 0, 0, 0, 0};

/* Words 0, 7 and 15 of that block's keystream (little-endian). */
static const uint32_t kat_chacha[3] = {0xe4e7f110, 0x4e6cd4c3, 0x4e3c50a2};

/* SHA-256("abc") and SHA-256 of the 56-byte FIPS two-block message. */
static const uint32_t kat_abc[8] = {
    0xba7816bf, 0x8f01cfea, 0x414140de, 0x5dae2223,
    0xb00361a3, 0x96177a9c, 0xb410ff61, 0xf20015ad,
};
static const uint32_t kat_two_blocks[8] = {
    0x248d6a61, 0xd20638b8, 0xe5c02693, 0x0c3e6039,
    0xa33ce459, 0x64ff2167, 0xf6ecedd4, 0x19db06c1,
};

static int same(const uint32_t *a, const uint32_t *b, int n)
{
    for (int i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

static int self_check(const uint8_t key[32])
{
    uint8_t block[64];
    uint32_t digest[8];
    struct sha256 s;

    chacha20_block(key, 1, kat_nonce, block);
    uint32_t words[3] = {load_le(block), load_le(block + 28), load_le(block + 60)};
    int ok = same(words, kat_chacha, 3);

    sha256_init(&s);
    sha256_update(&s, (const uint8_t *)"abc", 3);
    sha256_final(&s, digest);
    ok &= same(digest, kat_abc, 8);

    sha256_init(&s);
    sha256_update(&s, (const uint8_t *)
                  "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56);
    sha256_final(&s, digest);
    return ok & same(digest, kat_two_blocks, 8);
}

int main(void)
{
    uint8_t key[32], buf[BUF_BYTES], block[64];
    uint32_t digest[8];
    struct sha256 s;

    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;
    if (!self_check(key)) {
        uart_puts("crypto: self-check FAILED\n");
        return 1;
    }
    uart_puts("crypto: self-check ok\n");

    for (int i = 0; i < BUF_BYTES; i++)
        buf[i] = 0;
    sha256_init(&s);
    for (uint32_t round = 0; round < ROUNDS; round++) {
        for (uint32_t b = 0; b < BLOCKS; b++) {
            chacha20_block(key, round * BLOCKS + b, kat_nonce, block);
            for (int i = 0; i < 64; i++)
                buf[64 * b + i] ^= block[i];
        }
        sha256_update(&s, buf, BUF_BYTES);
    }
    sha256_final(&s, digest);

    uart_puts("crypto: rounds=");
    uart_putdec(ROUNDS);
    uart_puts(" bytes=");
    uart_putdec((uint32_t)ROUNDS * BUF_BYTES);
    uart_puts("\nfirst word: ");
    uart_puthex(load_le(buf));
    uart_puts("\nsha256: ");
    for (int i = 0; i < 8; i++)
        uart_puthex(digest[i]);
    uart_putc('\n');
    return 0;
}
