/*
 * semihost_hello.c - an unmodified picolibc program built with --oslib=semihost:
 * its console and exit code go through semihosting (emud run --semihosting).
 * It links with picolibc's own crt0 and linker script (see the Makefile), not
 * with the emud-virt start-up files the other guests share.
 */
#include <stdio.h>
#include <stdlib.h>

int main(void)
{
    printf("hello from semihosting, %d + %d = %d\n", 2, 3, 2 + 3);
    puts("puts works too");
    fprintf(stderr, "and stderr\n");
    return 7;
}
