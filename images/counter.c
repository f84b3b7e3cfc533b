/*
 * counter - a guest for debugger tests: bumps a global counter in a loop,
 * printing a dot on the PL011 every 1000 steps. It runs forever unless a
 * debugger (or the monitor) sets `limit`; then it stops there and exits
 * with the low byte of the counter.
 */
#include "emud.h"

volatile uint32_t counter;
volatile uint32_t limit;                /* 0: run forever */

__attribute__((noinline)) static void bump(void)
{
    counter = counter + 1;
}

int main(void)
{
    for (;;) {
        bump();
        if (counter % 1000 == 0)
            uart_putc('.');
        if (limit && counter >= limit)
            break;
    }
    uart_putc('\n');
    return (int)(counter & 0xff);
}
