/*
 * emud.c - PL011 output and the default trap handler.
 */
#include "emud.h"

/* PL011 registers (ARM DDI 0183) used here. */
#define UART_DR     REG32(UART0_BASE + 0x00)
#define UART_FR     REG32(UART0_BASE + 0x18)
#define UART_CR     REG32(UART0_BASE + 0x30)
#define FR_TXFF     (1u << 5)
#define CR_UARTEN   (1u << 0)
#define CR_TXE      (1u << 8)
#define CR_RXE      (1u << 9)

void uart_init(void)
{
    /* Reset leaves UARTEN clear; real PL011s need it to transmit and QEMU
     * >= 9.1 logs a guest error without it. IMSC resets to 0 (all masked),
     * which is what polled output wants. */
    UART_CR = CR_UARTEN | CR_TXE | CR_RXE;
}

void uart_putc(char c)
{
    while (UART_FR & FR_TXFF)
        ;
    UART_DR = (uint8_t)c;
}

void uart_puts(const char *s)
{
    while (*s)
        uart_putc(*s++);
}

void uart_puthex(uint32_t v)
{
    for (int shift = 28; shift >= 0; shift -= 4)
        uart_putc("0123456789abcdef"[(v >> shift) & 0xf]);
}

void uart_putdec(uint32_t v)
{
    char buf[10];
    int n = 0;

    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        uart_putc(buf[--n]);
}

/* Any trap the program did not expect is fatal: report it and fail. */
__attribute__((weak)) TRAP_HANDLER void trap_handler(void)
{
    static int entered;

    /* A trap while reporting (e.g. no UART at UART0_BASE) must not recurse
     * forever: give up on the message and just fail. */
    if (entered++)
        poweroff(EXIT_UNHANDLED_TRAP);
    uart_puts("unhandled trap: mcause=");
    uart_puthex(csr_read(mcause));
    uart_puts(" mepc=");
    uart_puthex(csr_read(mepc));
    uart_puts(" mtval=");
    uart_puthex(csr_read(mtval));
    uart_putc('\n');
    poweroff(EXIT_UNHANDLED_TRAP);
}

uint32_t claim_external_interrupt(void)
{
    uint32_t cause = csr_read(mcause);

    if (cause != (MCAUSE_INTR | 11)) {
        uart_puts("unexpected trap: mcause=");
        uart_puthex(cause);
        uart_putc('\n');
        poweroff(EXIT_UNHANDLED_TRAP);
    }
    return PLIC_CLAIM;
}
