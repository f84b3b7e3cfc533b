/*
 * uart_echo - interrupt-driven echo on the PL011 (PLIC source 10). The RX
 * interrupt handler drains the FIFO and echoes every byte; 'q' ends the run
 * with a summary line. Between interrupts the hart sleeps in WFI.
 */
#include "emud.h"

#define UART_DR     REG32(UART0_BASE + 0x00)
#define UART_FR     REG32(UART0_BASE + 0x18)
#define UART_LCR_H  REG32(UART0_BASE + 0x2c)
#define UART_IMSC   REG32(UART0_BASE + 0x38)
#define UART_MIS    REG32(UART0_BASE + 0x40)
#define FR_RXFE     (1u << 4)
#define LCR_FEN     (1u << 4)
#define LCR_WLEN8   (3u << 5)
#define INT_RX      (1u << 4)

static volatile uint32_t received, interrupts, done;

TRAP_HANDLER void trap_handler(void)
{
    uint32_t src = claim_external_interrupt();

    if (src == UART0_IRQ && (UART_MIS & INT_RX)) {
        interrupts++;
        /* Reading the last byte drops RX and with it the line. */
        while (!(UART_FR & FR_RXFE)) {
            char c = (char)(UART_DR & 0xff);
            received++;
            if (c == 'q')
                done = 1;
            else
                uart_putc(c);
        }
    }
    PLIC_CLAIM = src;
}

int main(void)
{
    UART_LCR_H = LCR_FEN | LCR_WLEN8;   /* 16-byte FIFO */
    UART_IMSC = INT_RX;
    PLIC_PRIORITY(UART0_IRQ) = 1;
    PLIC_ENABLE(0) = 1u << UART0_IRQ;
    csr_write(mie, MIE_MEIE);
    uart_puts("echo: ready\n");

    csr_clear(mstatus, MSTATUS_MIE);
    while (!done) {
        __asm__ volatile ("wfi");
        csr_set(mstatus, MSTATUS_MIE);
        csr_clear(mstatus, MSTATUS_MIE);
    }
    uart_puts("\necho: ");
    uart_putdec(received);
    uart_puts(" bytes\n");
    return 0;
}
