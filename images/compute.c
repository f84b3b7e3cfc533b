/*
 * compute - deterministic integer benchmark: CRC-32, quicksort and matrix
 * multiply over LCG-generated data, repeated ITERATIONS times. Prints one
 * checksum per kernel and a combined one, exits 0 (1 if the sort is wrong).
 * The default ITERATIONS keeps it near 30 million instructions (60 ->
 * 29.15M retired, measured with QEMU -icount), a few seconds on emud.
 */
#include "emud.h"

#ifndef ITERATIONS
#define ITERATIONS 60
#endif

#define CRC_BYTES   4096
#define SORT_N      2000
#define MAT_N       24

/* Numerical Recipes LCG: cheap, full period mod 2^32, easy to reproduce. */
static uint32_t lcg_state;

static uint32_t lcg(void)
{
    lcg_state = lcg_state * 1664525u + 1013904223u;
    return lcg_state;
}

/* ---- CRC-32 (IEEE 802.3, reflected, as zlib's crc32()) ---- */

static uint32_t crc_table[256];

static void crc32_init(void)
{
    /* Bitwise once, to build the table the per-byte loop uses. */
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0xedb88320u : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32(const uint8_t *p, uint32_t n)
{
    uint32_t c = 0xffffffffu;

    while (n--)
        c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static uint8_t crc_buf[CRC_BYTES];

static uint32_t run_crc(void)
{
    for (uint32_t i = 0; i < CRC_BYTES; i += 4) {
        uint32_t v = lcg();
        crc_buf[i] = (uint8_t)v;
        crc_buf[i + 1] = (uint8_t)(v >> 8);
        crc_buf[i + 2] = (uint8_t)(v >> 16);
        crc_buf[i + 3] = (uint8_t)(v >> 24);
    }
    return crc32(crc_buf, CRC_BYTES);
}

/* ---- quicksort of signed integers ---- */

static int32_t sort_buf[SORT_N];

static void quicksort(int32_t *a, int lo, int hi)
{
    /* Hoare partition; recurse into the smaller half so depth is O(log n). */
    while (lo < hi) {
        int32_t pivot = a[lo + (hi - lo) / 2];
        int i = lo - 1, j = hi + 1;

        for (;;) {
            do i++; while (a[i] < pivot);
            do j--; while (a[j] > pivot);
            if (i >= j)
                break;
            int32_t t = a[i]; a[i] = a[j]; a[j] = t;
        }
        if (j - lo < hi - j) {
            quicksort(a, lo, j);
            lo = j + 1;
        } else {
            quicksort(a, j + 1, hi);
            hi = j;
        }
    }
}

static int sort_failed;

static uint32_t run_sort(void)
{
    /* Signed remainder of negative numbers exercises rem's sign rules. */
    for (int i = 0; i < SORT_N; i++)
        sort_buf[i] = (int32_t)lcg() % 1000003;
    quicksort(sort_buf, 0, SORT_N - 1);

    uint32_t sum = 0;
    for (int i = 0; i < SORT_N; i++) {
        if (i > 0 && sort_buf[i - 1] > sort_buf[i])
            sort_failed = 1;
        sum = sum * 31u + (uint32_t)sort_buf[i];
    }
    return sum;
}

/* ---- integer matrix multiply ---- */

static int32_t mat_a[MAT_N][MAT_N], mat_b[MAT_N][MAT_N], mat_c[MAT_N][MAT_N];

static uint32_t run_matmul(void)
{
    for (int i = 0; i < MAT_N; i++)
        for (int j = 0; j < MAT_N; j++) {
            mat_a[i][j] = (int32_t)(lcg() >> 16) - 32768;
            mat_b[i][j] = (int32_t)(lcg() >> 20) - 2048;
        }
    for (int i = 0; i < MAT_N; i++)
        for (int j = 0; j < MAT_N; j++) {
            int32_t s = 0;
            for (int k = 0; k < MAT_N; k++)
                s += mat_a[i][k] * mat_b[k][j];
            mat_c[i][j] = s;
        }

    uint32_t sum = 0;
    for (int i = 0; i < MAT_N; i++)
        for (int j = 0; j < MAT_N; j++)
            sum = (sum << 1 | sum >> 31) ^ (uint32_t)mat_c[i][j];
    return sum;
}

/* Fold a kernel result into a running checksum; the 64-bit products make
 * gcc emit mulhu/mulh as well as mul. */
static uint32_t mix(uint32_t h, uint32_t v)
{
    uint64_t p = (uint64_t)(h ^ v) * 0x9e3779b97f4a7c15ull;
    int64_t q = (int64_t)(int32_t)v * -40503;
    return (uint32_t)(p >> 32) ^ (uint32_t)p ^ (uint32_t)(q >> 32) ^ (v / 7u);
}

static void print_sum(const char *name, uint32_t v)
{
    uart_puts(name);
    uart_puthex(v);
    uart_putc('\n');
}

int main(void)
{
    uint32_t crc = 0, sort = 0, mat = 0;

    crc32_init();
    lcg_state = 12345;
    for (int it = 0; it < ITERATIONS; it++) {
        crc = mix(crc, run_crc());
        sort = mix(sort, run_sort());
        mat = mix(mat, run_matmul());
    }

    uart_puts("compute: iterations=");
    uart_putdec(ITERATIONS);
    uart_putc('\n');
    print_sum("crc32:  ", crc);
    print_sum("sort:   ", sort);
    print_sum("matmul: ", mat);
    if (sort_failed) {
        uart_puts("compute: sort FAILED\n");
        return 1;
    }
    print_sum("compute: checksum=", mix(mix(mix(0, crc), sort), mat));
    return 0;
}
