/*
 * globals - a hot loop whose globals live on its own code page.
 *
 * With link.ld's layout (.sdata/.sbss/.bss right after a small .text), the
 * PRNG seed and the counters below share the first 4 KiB page with the code
 * that updates them, so every draw stores to a code page: the case an
 * emulator that tracks self-modifying code by page pays for on each store.
 * Prints the counters and a checksum, exits 0 (1 if the counts disagree).
 */
#include "emud.h"

#ifndef ROUNDS
#define ROUNDS 100000
#endif

#define BINS 16

/* Not static on purpose: bench/speed.py and the tests find them by name to
 * check that they are on a code page. */
uint32_t seed;                  /* .sbss */
uint32_t draws, odd_draws;      /* .sbss */
uint32_t histogram[BINS];       /* .bss */
uint32_t running;               /* .sbss: a hash of every draw */

/* noinline keeps the seed in memory between draws, as a PRNG in a library
 * would: each call loads and stores it. */
__attribute__((noinline)) uint32_t xorshift32(void)
{
    uint32_t x = seed;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    seed = x;
    return x;
}

__attribute__((noinline)) void record(uint32_t r)
{
    histogram[r % BINS]++;
    draws++;
    if (r & 1)
        odd_draws++;
    running = (running << 5 | running >> 27) ^ r;
}

int main(void)
{
    seed = 2463534242u;
    for (uint32_t i = 0; i < ROUNDS; i++)
        record(xorshift32());

    uint32_t total = 0, sum = 0;
    for (int b = 0; b < BINS; b++) {
        total += histogram[b];
        sum = sum * 31u + histogram[b];
    }
    uart_puts("globals: rounds=");
    uart_putdec(ROUNDS);
    uart_putc('\n');
    uart_puts("seed:      ");
    uart_puthex(seed);
    uart_puts("\nodd:       ");
    uart_putdec(odd_draws);
    uart_puts("\nhistogram: ");
    uart_puthex(sum);
    uart_putc('\n');
    if (total != draws || draws != ROUNDS) {
        uart_puts("globals: counts FAILED\n");
        return 1;
    }
    uart_puts("globals: checksum=");
    uart_puthex(running ^ sum);
    uart_putc('\n');
    return 0;
}
