/* Self-checking guests: check() reports a failed expectation on the PL011 and
 * counts it; main returns `failures` as the exit code (0 = all passed). */
#ifndef CHECK_H
#define CHECK_H

#include "emud.h"

static int failures;

static void check(int ok, const char *what)
{
    if (!ok) {
        uart_puts("FAIL: ");
        uart_puts(what);
        uart_putc('\n');
        failures++;
    }
}

#endif
