/*
 * guest - drives the example GPIO block (examples/gpio/gpio.py) at
 * GPIO_BASE, PLIC source GPIO_IRQ, as added by board.toml or by
 *   -device examples/gpio/gpio.py:Gpio,id=gpio0,addr=0x10012000,irq=8
 *
 * Pins 0-3 are outputs that loop back through DATA_IN; each trigger mode
 * is exercised by toggling one of them: a rising edge, a falling edge and
 * a high level, each taken as an interrupt through the PLIC. Then an
 * unused offset is probed: it reads 0, or faults if the device failed
 * there (a plug-in raising in its handler is a bus error for the guest).
 * One line per step, "gpio: all ok", and the exit code is the number of
 * failed checks. The pins are left in a recognisable state for tests.
 */
#include "emud.h"
#include "check.h"

#define GPIO_BASE       0x10012000u
#define GPIO_IRQ        8

#define GPIO_DATA_IN    REG32(GPIO_BASE + 0x00)
#define GPIO_DATA_OUT   REG32(GPIO_BASE + 0x04)
#define GPIO_DIR        REG32(GPIO_BASE + 0x08)
#define GPIO_IE         REG32(GPIO_BASE + 0x0c)
#define GPIO_IS         REG32(GPIO_BASE + 0x10)
#define GPIO_TRIGGER    REG32(GPIO_BASE + 0x14)
#define GPIO_POLARITY   REG32(GPIO_BASE + 0x18)
#define GPIO_PINS       REG32(GPIO_BASE + 0x1c)
#define GPIO_PROBE      REG32(GPIO_BASE + 0xffc)

#define MCAUSE_LOAD_FAULT 5


/* What the trap handler saw. */
static volatile uint32_t gpio_irqs, gpio_status, load_faults;

/* Load faults are counted and skipped (the probe); the GPIO interrupt is
 * acknowledged: edge bits by W1C, a level bit by masking it (W1C cannot
 * clear a level that still holds). Anything else is fatal. */
TRAP_HANDLER void trap_handler(void)
{
    uint32_t cause = csr_read(mcause);

    if (cause == MCAUSE_LOAD_FAULT) {
        uint32_t epc = csr_read(mepc);
        uint16_t insn = *(volatile uint16_t *)(uintptr_t)epc;

        load_faults++;
        csr_write(mepc, epc + ((insn & 3) == 3 ? 4 : 2));
        return;
    }
    uint32_t src = claim_external_interrupt();
    if (src == GPIO_IRQ) {
        uint32_t is = GPIO_IS & GPIO_IE;

        gpio_status |= is;
        GPIO_IS = is;
        GPIO_IE &= ~(is & ~GPIO_TRIGGER);
        gpio_irqs++;
    }
    PLIC_CLAIM = src;
}

/* Sleep until gpio_irqs reaches n; interrupts are taken only between checks. */
static void wait_for_irqs(uint32_t n)
{
    csr_clear(mstatus, MSTATUS_MIE);
    while (gpio_irqs < n) {
        __asm__ volatile ("wfi");
        csr_set(mstatus, MSTATUS_MIE);
        csr_clear(mstatus, MSTATUS_MIE);
    }
    csr_set(mstatus, MSTATUS_MIE);
}

/* Arm one pin's interrupt, make it fire by changing DATA_OUT, check it. */
static void fire(const char *what, uint32_t pin, int edge, int high, uint32_t out)
{
    uint32_t bit = 1u << pin, before = gpio_irqs;

    gpio_status = 0;
    GPIO_TRIGGER = edge ? (GPIO_TRIGGER | bit) : (GPIO_TRIGGER & ~bit);
    GPIO_POLARITY = high ? (GPIO_POLARITY | bit) : (GPIO_POLARITY & ~bit);
    GPIO_IS = bit;
    GPIO_IE |= bit;
    GPIO_DATA_OUT = out;
    wait_for_irqs(before + 1);
    uart_puts("gpio: ");
    uart_puts(what);
    uart_puts(" pin ");
    uart_putdec(pin);
    uart_puts(" status ");
    uart_puthex(gpio_status);
    uart_putc('\n');
    check(gpio_status == bit, what);
}

int main(void)
{
    uart_puts("gpio: ");
    uart_putdec(GPIO_PINS);
    uart_puts(" pins, out ");
    uart_puthex(GPIO_DATA_OUT);
    uart_puts(" in ");
    uart_puthex(GPIO_DATA_IN);
    uart_putc('\n');

    /* Outputs loop back: pins 0-3 drive 0101. */
    GPIO_DIR = 0x0f;
    GPIO_DATA_OUT = 0x05;
    check((GPIO_DATA_IN & 0x0f) == 0x05, "outputs read back on DATA_IN");

    PLIC_PRIORITY(GPIO_IRQ) = 1;
    PLIC_ENABLE(GPIO_IRQ / 32) |= 1u << (GPIO_IRQ % 32);
    PLIC_THRESHOLD = 0;
    csr_set(mie, MIE_MEIE);
    csr_set(mstatus, MSTATUS_MIE);

    fire("rising edge", 1, 1, 1, 0x07);     /* pin 1: 0 -> 1 */
    fire("falling edge", 2, 1, 0, 0x03);    /* pin 2: 1 -> 0 */
    fire("high level", 3, 0, 1, 0x0b);      /* pin 3: level 1, masked by the handler */
    GPIO_DATA_OUT = 0x03;                   /* pin 3 low: its level bit can clear now */
    GPIO_IS = 1u << 3;
    check(!(GPIO_IS & 1u << 3), "level status clears once the level dropped");
    check(gpio_irqs == 3, "one interrupt per trigger");

    uint32_t probe = GPIO_PROBE;
    uart_puts(load_faults ? "gpio: probe bus error\n" : "gpio: probe ");
    if (!load_faults) {
        uart_puthex(probe);
        uart_putc('\n');
    }

    /* Leave a recognisable state behind (tests snapshot it). */
    GPIO_IE = 0;
    GPIO_TRIGGER = 0x0a;
    GPIO_POLARITY = 0x05;
    GPIO_DIR = 0xa5;
    GPIO_DATA_OUT = 0x81;
    if (!failures)
        uart_puts("gpio: all ok\n");
    return failures;
}
