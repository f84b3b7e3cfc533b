/* hello - the smallest guest: one line on the PL011, exit code 0. */
#include "emud.h"

int main(void)
{
    uart_puts("Hello from emud!\n");
    return 0;
}
