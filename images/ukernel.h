/*
 * ukernel.h - a tiny M-mode kernel running U-mode tasks (the utasks and pmp guests).
 *
 * Each task has a register frame; the trap entry (ukernel.c) saves the running
 * task into its frame, calls ukernel_trap() on the kernel stack, and resumes the
 * frame it returns. Tasks ask the kernel for services with ecall: the number in
 * a7, the argument in a0.
 */
#ifndef UKERNEL_H
#define UKERNEL_H

#include <stdint.h>

#define SYS_PUTS    1   /* a0: a NUL-terminated string */
#define SYS_YIELD   2
#define SYS_EXIT    3   /* a0: exit code */

#define MAX_TASKS   4
#define MCAUSE_ECALL_U      8
#define MSTATUS_MPP         (3u << 11)
#define MSTATUS_MPIE        (1u << 7)

struct frame {
    uint32_t x[32];     /* x[0] holds the resume pc */
};

struct task {
    struct frame frame;
    const char *name;
    int alive;
};

extern struct task tasks[MAX_TASKS];
extern int ntasks, current;
extern uint32_t timer_switches;

/* Add a task that starts at entry(void) with its own stack top. */
void task_add(const char *name, void (*entry)(void), uint32_t *stack_top);
/* Run the tasks in U-mode; returns when all have exited or were killed. quantum: mtime
 * ticks between preemptions, 0 for none. */
void tasks_run(uint32_t quantum);
/* The guest's hook for a fault in a task: return 1 to kill it, 0 to resume it (after the
 * faulting instruction). Default: report and kill. */
int task_fault(struct task *t, uint32_t mcause, uint32_t mepc, uint32_t mtval);

/* System calls, for the tasks. */
static inline uint32_t syscall1(uint32_t n, uint32_t a0)
{
    register uint32_t r_a0 __asm__("a0") = a0;
    register uint32_t r_a7 __asm__("a7") = n;
    __asm__ volatile ("ecall" : "+r"(r_a0) : "r"(r_a7) : "memory");
    return r_a0;
}
#define sys_puts(s)     syscall1(SYS_PUTS, (uint32_t)(uintptr_t)(s))
#define sys_yield()     syscall1(SYS_YIELD, 0)
#define sys_exit(code)  do { syscall1(SYS_EXIT, (uint32_t)(code)); for (;;) ; } while (0)

#endif
