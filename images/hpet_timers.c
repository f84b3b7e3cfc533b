/*
 * hpet_timers - the HPET through the PLIC: a periodic tick, a one-shot, a
 * 32-bit one-shot across the counter's 2^32 wrap, legacy replacement
 * routing and an FSB (memory write) delivery. One line per case, then
 * "hpet: all ok"; the exit code is the number of failed checks.
 *
 * Line interrupts are level-triggered (the PLIC gateway samples levels:
 * an edge pulse would come and go before anyone saw it); the handler clears
 * the status bits, which lowers the lines, before completing the claim.
 */
#include "hpet.h"
#include "check.h"

#define PERIOD          10000u  /* ticks: 100 us at 100 MHz */
#define PERIODS         10u


/* What the interrupt handler saw. */
static volatile uint32_t irqs[64];          /* claims per PLIC source */
static volatile uint32_t order[8], norder;  /* first claimed sources, in order */
static volatile uint64_t at[8];             /* main counter at those claims */
static volatile uint32_t isr_seen;          /* HPET status bits found set */
static volatile uint64_t tick_cmp[PERIODS + 2];
static volatile uint32_t periods;           /* distinct timer 0 comparator values */

TRAP_HANDLER void trap_handler(void)
{
    uint32_t src = claim_external_interrupt();
    uint32_t isr = HPET_ISR;

    HPET_ISR = isr;                 /* W1C: level lines drop */
    isr_seen |= isr;
    if (norder < 8) {
        at[norder] = hpet_counter();
        order[norder++] = src;
    }
    /* Timer 0's comparator moves one period per tick; count the moves, not the
     * interrupts (a deadline hit exactly may interrupt twice, hpet.md 10.1). */
    if (src == HPET_IRQ_BASE + 3 && periods < PERIODS + 2) {
        uint64_t cmp = hpet_comparator(0);
        if (periods == 0 || tick_cmp[periods - 1] != cmp)
            tick_cmp[periods++] = cmp;
    }
    irqs[src]++;
    PLIC_CLAIM = src;
}

/* Sleep until *count reaches n; interrupts are taken only between the checks. */
static void wait_for(volatile uint32_t *count, uint32_t n)
{
    csr_clear(mstatus, MSTATUS_MIE);
    while (*count < n) {
        __asm__ volatile ("wfi");
        csr_set(mstatus, MSTATUS_MIE);
        csr_clear(mstatus, MSTATUS_MIE);
    }
    csr_set(mstatus, MSTATUS_MIE);
}

/* Stopped HPET, counter at `start`, every timer quiet (routed to unused line 31,
 * comparator far away), no status, no record of earlier interrupts. */
static void hpet_setup(uint64_t start)
{
    HPET_CONF = 0;
    for (int n = 0; n < HPET_TIMERS; n++) {
        HPET_TCONF(n) = TN_ROUTE(31);
        HPET_TCMP_HI(n) = 0x7fffffff;
        HPET_TCMP_LO(n) = 0;
    }
    HPET_ISR = 0xffffffff;
    HPET_COUNT_LO = (uint32_t)start;
    HPET_COUNT_HI = (uint32_t)(start >> 32);
    for (int i = 0; i < 64; i++)
        irqs[i] = 0;
    norder = 0;
    isr_seen = 0;
}

/* One-shot 64-bit comparator: write the high half first (hpet.md 9.1). */
static void set_comparator(int n, uint64_t value)
{
    HPET_TCMP_HI(n) = (uint32_t)(value >> 32);
    HPET_TCMP_LO(n) = (uint32_t)value;
}

static void periodic(void)
{
    hpet_setup(0);
    /* In periodic mode a comparator write sets the period; with VAL_SET it also
     * sets the comparator. VAL_SET clears itself after each write. */
    uint32_t conf = TN_PERIODIC | TN_LEVEL | TN_INT_ENB | TN_ROUTE(3);
    HPET_TCONF(0) = conf | TN_VAL_SET;
    HPET_TCMP_HI(0) = 0;
    HPET_TCONF(0) = conf | TN_VAL_SET;
    HPET_TCMP_LO(0) = PERIOD;
    plic_enable(HPET_IRQ_BASE + 3);
    HPET_CONF = HPET_ENABLE;
    wait_for(&periods, PERIODS);
    HPET_CONF = 0;

    int whole = 1;
    for (uint32_t i = 0; i < periods; i++)
        whole &= tick_cmp[i] % PERIOD == 0;
    check(whole, "periodic: comparator moves by whole periods");
    check(tick_cmp[periods - 1] >= (uint64_t)PERIODS * PERIOD,
          "periodic: ten periods reached");
    check(hpet_counter() >= (uint64_t)(PERIODS - 1) * PERIOD, "periodic: counter ran");
    check((HPET_TCONF(0) & TN_VAL_SET) == 0, "periodic: VAL_SET cleared itself");
    uart_puts("periodic: ");
    uart_putdec(periods);
    uart_puts(" periods of ");
    uart_putdec(PERIOD);
    uart_puts(" ticks on source ");
    uart_putdec(order[0]);
    uart_putc('\n');
}

static void oneshot(void)
{
    hpet_setup(0);
    HPET_TCONF(1) = TN_LEVEL | TN_INT_ENB | TN_ROUTE(4);
    set_comparator(1, 5000);
    plic_enable(HPET_IRQ_BASE + 4);
    HPET_CONF = HPET_ENABLE;
    wait_for(&irqs[HPET_IRQ_BASE + 4], 1);
    uint64_t fired = at[0];
    while (hpet_counter() < 20000)   /* a one-shot stays quiet afterwards */
        ;
    HPET_CONF = 0;
    check(fired >= 5000, "oneshot: not before the comparator");
    check(irqs[HPET_IRQ_BASE + 4] == 1, "oneshot: exactly one interrupt");
    check(isr_seen == 2, "oneshot: status bit of timer 1");
    uart_puts("oneshot: ");
    uart_putdec(irqs[HPET_IRQ_BASE + 4]);
    uart_puts(" interrupt on source ");
    uart_putdec(order[0]);
    uart_puts(", status ");
    uart_puthex(isr_seen);
    uart_putc('\n');
}

static void wrap32(void)
{
    /* A 32-bit timer compares the low half of the 64-bit counter: counting
     * from 0xfffff000 to 0x800 it pops once at the wrap, then at the match. */
    hpet_setup(0xfffff000u);
    HPET_TCONF(2) = TN_32BIT | TN_LEVEL | TN_INT_ENB | TN_ROUTE(6);
    HPET_TCMP_LO(2) = 0x800;
    plic_enable(HPET_IRQ_BASE + 6);
    HPET_CONF = HPET_ENABLE;
    wait_for(&irqs[HPET_IRQ_BASE + 6], 2);
    HPET_CONF = 0;
    check(at[0] >= 0xffffffffull && at[0] < 0x100000800ull, "wrap32: first pop at the wrap");
    check(at[1] >= 0x100000800ull, "wrap32: second pop at the match");
    check(HPET_TCMP_HI(2) == 0, "wrap32: comparator is 32 bits");
    uart_puts("wrap32: ");
    uart_putdec(irqs[HPET_IRQ_BASE + 6]);
    uart_puts(" interrupts, counter high word ");
    uart_putdec(HPET_COUNT_HI);
    uart_putc('\n');
}

static void legacy(void)
{
    /* Legacy replacement overrides the routes of timers 0 and 1: timer 0 takes
     * ISA IRQ 0, which emud-virt delivers on line 2 as the pc's IOAPIC does,
     * timer 1 takes the RTC's line 8. */
    hpet_setup(0);
    HPET_TCONF(0) = TN_LEVEL | TN_INT_ENB | TN_ROUTE(5);
    set_comparator(0, 1000);
    HPET_TCONF(1) = TN_LEVEL | TN_INT_ENB | TN_ROUTE(5);
    set_comparator(1, 3000);
    plic_enable(HPET_IRQ_BASE + 2);
    plic_enable(HPET_IRQ_BASE + 8);
    plic_enable(HPET_IRQ_BASE + 5);
    HPET_CONF = HPET_ENABLE | HPET_LEGACY;
    wait_for(&norder, 2);
    HPET_CONF = 0;
    check(order[0] == HPET_IRQ_BASE + 2, "legacy: timer 0 on line 2 (ISA IRQ 0)");
    check(order[1] == HPET_IRQ_BASE + 8, "legacy: timer 1 on line 8");
    check(irqs[HPET_IRQ_BASE + 5] == 0, "legacy: route field ignored");
    uart_puts("legacy: timer 0 -> source ");
    uart_putdec(order[0]);
    uart_puts(", timer 1 -> source ");
    uart_putdec(order[1]);
    uart_putc('\n');
}

static volatile uint32_t fsb_word;

static void fsb(void)
{
    /* FSB delivery: the timer writes its message to memory, no line moves. */
    hpet_setup(0);
    fsb_word = 0;
    HPET_TCONF(2) = TN_FSB_EN | TN_INT_ENB | TN_ROUTE(7);
    HPET_FSB_VAL(2) = 0xc0ffee42;
    HPET_FSB_ADDR(2) = (uint32_t)(uintptr_t)&fsb_word;
    set_comparator(2, 2000);
    plic_enable(HPET_IRQ_BASE + 7);
    HPET_CONF = HPET_ENABLE;
    while (fsb_word == 0 && hpet_counter() < 100000)
        ;
    HPET_CONF = 0;
    check(fsb_word == 0xc0ffee42, "fsb: message written");
    check(norder == 0, "fsb: no line interrupt");
    uart_puts("fsb: ");
    uart_puthex(fsb_word);
    uart_puts(" written to RAM, ");
    uart_putdec(norder);
    uart_puts(" line interrupts\n");
}

int main(void)
{
    uart_puts("hpet: period ");
    uart_putdec(HPET_PERIOD_FS);
    uart_puts(" fs, ");
    uart_putdec(((HPET_GCAP >> 8) & 0x1f) + 1);
    uart_puts(" timers\n");
    csr_write(mie, MIE_MEIE);
    csr_set(mstatus, MSTATUS_MIE);

    periodic();
    oneshot();
    wrap32();
    legacy();
    fsb();

    if (failures == 0)
        uart_puts("hpet: all ok\n");
    return failures;
}
