/*
 * statemachine - a bytecode interpreter with NOPS opcodes, one switch case
 * each, over an LCG-generated program: hundreds of small blocks, each of
 * which runs only a few hundred times in the whole run (the case where
 * translating every block that gets warm costs more than it saves).
 * Prints the final registers' checksum and how many jumps were taken, exits 0.
 *
 * The cases come from one macro so that each has its own constants (gcc can
 * neither merge them nor turn the switch into a table); which of six shapes
 * a case takes depends on its number. All data is on the stack, away from
 * the code pages, so that this guest shows only the many-blocks case.
 */
#include "emud.h"

#ifndef PASSES
#define PASSES 40
#endif

#define NOPS        384
#define PROG_LEN    4096            /* a power of two: the program wraps */
#define PROG_MASK   (PROG_LEN - 1)
#define MEM_WORDS   64
#define MEM_MASK    (MEM_WORDS - 1)

static inline uint32_t rotl(uint32_t x, unsigned s)
{
    return x << s | x >> (32 - s);
}

/* Operand registers and a constant of case n (all compile-time constants). */
#define RA(n)   r[(n) & 7]
#define RB(n)   r[((n) >> 3) & 7]
#define K(n)    ((uint32_t)(n) * 0x9e3779b1u + 0x7f4a7c15u)

#define OP(n) case (n):                                                      \
    if ((n) % 6 == 0)                                                        \
        RA(n) += RB(n) ^ K(n);                                               \
    else if ((n) % 6 == 1)                                                   \
        RA(n) = rotl(RB(n), (n) % 31 + 1) - K(n);                            \
    else if ((n) % 6 == 2)                                                   \
        RA(n) ^= (RB(n) >> ((n) % 29 + 1)) * ((n) | 1);                      \
    else if ((n) % 6 == 3) {                                                 \
        if (RA(n) & (1u << ((n) % 32))) {                                    \
            pc = (pc + (n)) & PROG_MASK;                                     \
            jumps++;                                                         \
        } else {                                                             \
            RB(n) += (n);                                                    \
        }                                                                    \
    } else if ((n) % 6 == 4)                                                 \
        RA(n) = RA(n) < RB(n) ? RB(n) - K(n) : RA(n) / ((n) % 13 + 3) + (n);  \
    else {                                                                   \
        mem[(RA(n) + (n)) & MEM_MASK] = RB(n);                               \
        RB(n) = mem[((n) * 7) & MEM_MASK] + K(n);                            \
    }                                                                        \
    break;

#define OP4(n)      OP(n) OP((n) + 1) OP((n) + 2) OP((n) + 3)
#define OP16(n)     OP4(n) OP4((n) + 4) OP4((n) + 8) OP4((n) + 12)
#define OP64(n)     OP16(n) OP16((n) + 16) OP16((n) + 32) OP16((n) + 48)

/* Runs the program PASSES * PROG_LEN steps; returns a checksum of the
 * registers and memory. */
static uint32_t run(const uint16_t *prog, uint32_t *jumps_out)
{
    uint32_t r[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    uint32_t mem[MEM_WORDS] = {0};
    uint32_t pc = 0, jumps = 0;

    for (uint32_t step = 0; step < (uint32_t)PASSES * PROG_LEN; step++) {
        uint32_t op = prog[pc];

        pc = (pc + 1) & PROG_MASK;
        switch (op) {
            OP64(0) OP64(64) OP64(128) OP64(192) OP64(256) OP64(320)
        default:
            break;
        }
    }

    uint32_t sum = 0;
    for (int i = 0; i < 8; i++)
        sum = rotl(sum, 7) ^ r[i];
    for (int i = 0; i < MEM_WORDS; i++)
        sum = sum * 31u + mem[i];
    *jumps_out = jumps;
    return sum;
}

int main(void)
{
    uint16_t prog[PROG_LEN];
    uint32_t jumps, lcg = 20261202;

    /* Numerical Recipes LCG; its high bits are the random ones. */
    for (int i = 0; i < PROG_LEN; i++) {
        lcg = lcg * 1664525u + 1013904223u;
        prog[i] = (uint16_t)((lcg >> 8) % NOPS);
    }
    uint32_t sum = run(prog, &jumps);

    uart_puts("statemachine: ops=");
    uart_putdec(NOPS);
    uart_puts(" steps=");
    uart_putdec((uint32_t)PASSES * PROG_LEN);
    uart_puts("\njumps: ");
    uart_putdec(jumps);
    uart_puts("\nstatemachine: checksum=");
    uart_puthex(sum);
    uart_putc('\n');
    return 0;
}
