/*
 * pmp - a U-mode task under PMP: it may use its own memory and read the kernel's
 * public word, but the kernel's secret is off limits. Its write to the secret is
 * a store access fault; the kernel kills the task and reports it, and checks that
 * the secret kept its value. Prints "pmp: all ok" and exits 0.
 */
#include "emud.h"
#include "ukernel.h"

#define PMP_R       0x01u
#define PMP_W       0x02u
#define PMP_X       0x04u
#define PMP_NAPOT   0x18u
#define PMP_L       0x80u

/* The kernel's secret: one naturally aligned 64-byte block, the NAPOT entry 0. */
static volatile uint32_t secret[16] __attribute__((aligned(64))) = { 0x5ec2e7 };
/* A word the task may read but not write: entry 1, NAPOT 8 bytes, R. */
static volatile uint32_t public_word[2] __attribute__((aligned(8))) = { 42 };
static uint32_t task_stack[256] __attribute__((aligned(16)));
static volatile int read_ok;
static volatile uint32_t fault_cause, fault_addr;

__attribute__((noinline)) void intruder(void)
{
    sys_puts("task: reading the public word\n");
    if (public_word[0] == 42)
        read_ok = 1;
    sys_puts("task: writing the kernel's secret\n");
    secret[3] = 0xbad;                  /* store access fault: killed here */
    sys_puts("task: the write went through!\n");
    sys_exit(1);
}

int task_fault(struct task *t, uint32_t mcause, uint32_t mepc, uint32_t mtval)
{
    (void)mepc;
    fault_cause = mcause;
    fault_addr = mtval;
    uart_puts("kernel: task '");
    uart_puts(t->name);
    uart_puts("' killed: ");
    uart_puts(mcause == 7 ? "store access fault" : "fault");
    uart_puts(" at 0x");
    uart_puthex(mtval);
    uart_puts(mtval == (uint32_t)(uintptr_t)&secret[3] ? " (the kernel's secret)\n" : "\n");
    return 1;
}

static uint32_t napot(const volatile void *base, uint32_t size)
{
    return ((uint32_t)(uintptr_t)base >> 2) | ((size >> 3) - 1);
}

int main(void)
{
    csr_write(pmpaddr0, napot(secret, sizeof secret));
    csr_write(pmpaddr1, napot(public_word, sizeof public_word));
    csr_write(pmpaddr2, napot((void *)RAM_BASE, 1u << 20));   /* the rest of RAM */
    csr_write(pmpcfg0, (PMP_NAPOT | PMP_R | PMP_W | PMP_X) << 16
                       | (PMP_NAPOT | PMP_R) << 8
                       | PMP_NAPOT);                          /* 0: no access */
    task_add("intruder", intruder, task_stack + 256);
    uart_puts("kernel: running a task with the secret protected by PMP\n");
    tasks_run(0);
    int ok = read_ok && fault_cause == 7 && fault_addr == (uint32_t)(uintptr_t)&secret[3]
             && secret[3] == 0 && secret[0] == 0x5ec2e7;
    uart_puts(ok ? "kernel: the secret is intact\npmp: all ok\n" : "pmp: FAILED\n");
    return !ok;
}
