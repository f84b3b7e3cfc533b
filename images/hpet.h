/*
 * hpet.h - the HPET at HPET_BASE (IA-PC HPET layout, QEMU's model) and the
 * PLIC plumbing its guests share. HPET output line n is PLIC source 32 + n.
 */
#ifndef HPET_H
#define HPET_H

#include "emud.h"

#define HPET_GCAP       REG32(HPET_BASE + 0x000)
#define HPET_PERIOD_FS  REG32(HPET_BASE + 0x004)  /* counter period in femtoseconds */
#define HPET_CONF       REG32(HPET_BASE + 0x010)
#define HPET_ISR        REG32(HPET_BASE + 0x020)  /* write 1 to clear */
#define HPET_COUNT_LO   REG32(HPET_BASE + 0x0f0)
#define HPET_COUNT_HI   REG32(HPET_BASE + 0x0f4)
#define HPET_TCONF(n)   REG32(HPET_BASE + 0x100 + 0x20 * (n))
#define HPET_TCMP_LO(n) REG32(HPET_BASE + 0x108 + 0x20 * (n))
#define HPET_TCMP_HI(n) REG32(HPET_BASE + 0x10c + 0x20 * (n))
#define HPET_FSB_VAL(n) REG32(HPET_BASE + 0x110 + 0x20 * (n))
#define HPET_FSB_ADDR(n) REG32(HPET_BASE + 0x114 + 0x20 * (n))

/* General configuration */
#define HPET_ENABLE     (1u << 0)
#define HPET_LEGACY     (1u << 1)   /* timer 0 -> line 2, timer 1 -> line 8 */

/* Timer configuration */
#define TN_LEVEL        (1u << 1)
#define TN_INT_ENB      (1u << 2)
#define TN_PERIODIC     (1u << 3)
#define TN_VAL_SET      (1u << 6)
#define TN_32BIT        (1u << 8)
#define TN_ROUTE(line)  ((uint32_t)(line) << 9)
#define TN_FSB_EN       (1u << 14)

#define HPET_IRQ_BASE   32
#define HPET_TIMERS     3

/* The main counter as one 64-bit value (high, low, high until stable). */
static inline uint64_t hpet_counter(void)
{
    uint32_t hi, lo;

    do {
        hi = HPET_COUNT_HI;
        lo = HPET_COUNT_LO;
    } while (HPET_COUNT_HI != hi);
    return (uint64_t)hi << 32 | lo;
}

static inline uint64_t hpet_comparator(int n)
{
    return (uint64_t)HPET_TCMP_HI(n) << 32 | HPET_TCMP_LO(n);
}

/* Let PLIC source `src` interrupt hart 0 (priority 1, threshold 0). */
static inline void plic_enable(uint32_t src)
{
    PLIC_PRIORITY(src) = 1;
    PLIC_ENABLE(src / 32) |= 1u << (src % 32);
}

#endif
