/*
 * utasks - two U-mode tasks under the M-mode kernel of ukernel.c.
 *
 * The spinner never yields: it waits for a flag only the other task sets, so it
 * finishes only because the timer preempts it. The worker uses system calls, reads
 * the cycle counter (allowed by mcounteren) and checks that M-mode CSRs trap.
 * Prints "utasks: all ok" and exits 0 when both tasks did their part.
 */
#include "emud.h"
#include "ukernel.h"

#define QUANTUM 2000                    /* mtime ticks (10 MHz): 200 us */

static uint32_t spinner_stack[512] __attribute__((aligned(16)));
static uint32_t worker_stack[512] __attribute__((aligned(16)));
static volatile int worker_done, spinner_done, worker_faults;

__attribute__((noinline)) void spinner(void)
{
    sys_puts("spinner: waiting for the worker, without yielding\n");
    while (!worker_done)
        ;
    sys_puts("spinner: the worker ran meanwhile\n");
    spinner_done = 1;
    sys_exit(0);
}

__attribute__((noinline)) void worker(void)
{
    sys_puts("worker: hello from U-mode\n");
    uint32_t c0 = csr_read(cycle);
    sys_yield();
    uint32_t c1 = csr_read(cycle);
    if (c1 != c0)
        sys_puts("worker: cycle counts in U-mode\n");
    csr_read(mstatus);                  /* an M-mode CSR: the kernel resumes after it */
    if (worker_faults == 1)
        sys_puts("worker: reading mstatus trapped\n");
    worker_done = 1;
    sys_exit(0);
}

/* The worker's illegal-instruction fault is expected once: resume it. */
int task_fault(struct task *t, uint32_t mcause, uint32_t mepc, uint32_t mtval)
{
    if (t == &tasks[1] && mcause == 2) {
        worker_faults++;
        return 0;
    }
    uart_puts("kernel: unexpected fault in ");
    uart_puts(t->name);
    uart_puts(" mcause ");
    uart_putdec(mcause);
    uart_puts(" mepc 0x");
    uart_puthex(mepc);
    uart_puts(" mtval 0x");
    uart_puthex(mtval);
    uart_puts("\n");
    return 1;
}

int main(void)
{
    /* PMP entry 15: U may use all of memory (with no entry, U-mode can do nothing). */
    csr_write(pmpaddr15, 0xffffffffu);
    csr_write(pmpcfg3, 0x1fu << 24);    /* NAPOT, RWX */
    csr_write(mcounteren, 1u);          /* U may read cycle */
    task_add("spinner", spinner, spinner_stack + 512);
    task_add("worker", worker, worker_stack + 512);
    uart_puts("kernel: starting 2 tasks in U-mode\n");
    tasks_run(QUANTUM);
    uart_puts("kernel: all tasks exited; preempted by the timer: ");
    uart_puts(timer_switches ? "yes\n" : "no\n");
    int ok = spinner_done && worker_done && worker_faults == 1 && timer_switches;
    uart_puts(ok ? "utasks: all ok\n" : "utasks: FAILED\n");
    return !ok;
}
