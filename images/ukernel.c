/*
 * ukernel.c - the M-mode side of ukernel.h: trap entry, system calls, round-robin
 * scheduling on the CLINT timer.
 */
#include "emud.h"
#include "ukernel.h"

struct task tasks[MAX_TASKS];
int ntasks, current;
uint32_t timer_switches;
static uint32_t quantum_ticks;
__attribute__((used)) uint32_t kernel_stack[1024] __attribute__((aligned(16)));

/* mscratch holds the running task's frame while U-mode runs (0 in the kernel). */
__asm__(
    "   .text\n"
    "   .balign 4\n"
    "   .globl ukernel_entry\n"
    "ukernel_entry:\n"
    "   csrrw sp, mscratch, sp\n"      /* sp = frame, mscratch = task's sp */
    "   sw x1, 4(sp)\n"
    "   sw x3, 12(sp)\n  sw x4, 16(sp)\n  sw x5, 20(sp)\n  sw x6, 24(sp)\n"
    "   sw x7, 28(sp)\n  sw x8, 32(sp)\n  sw x9, 36(sp)\n  sw x10, 40(sp)\n"
    "   sw x11, 44(sp)\n sw x12, 48(sp)\n sw x13, 52(sp)\n sw x14, 56(sp)\n"
    "   sw x15, 60(sp)\n sw x16, 64(sp)\n sw x17, 68(sp)\n sw x18, 72(sp)\n"
    "   sw x19, 76(sp)\n sw x20, 80(sp)\n sw x21, 84(sp)\n sw x22, 88(sp)\n"
    "   sw x23, 92(sp)\n sw x24, 96(sp)\n sw x25, 100(sp)\n sw x26, 104(sp)\n"
    "   sw x27, 108(sp)\n sw x28, 112(sp)\n sw x29, 116(sp)\n sw x30, 120(sp)\n"
    "   sw x31, 124(sp)\n"
    "   csrrw t0, mscratch, zero\n"    /* the task's sp; mscratch = 0 in the kernel */
    "   sw t0, 8(sp)\n"
    "   csrr t0, mepc\n"
    "   sw t0, 0(sp)\n"
    "   mv a0, sp\n"
    "   la sp, kernel_stack + 4096\n"
    "   .option push\n"
    "   .option norelax\n"
    "   la gp, __global_pointer$\n"   /* the kernel's gp, whatever the task did to it */
    "   .option pop\n"
    "   call ukernel_trap\n"           /* returns the frame to resume, 0 to stop */
    "   beqz a0, ukernel_return\n"
    "   mv sp, a0\n"
    "   .globl ukernel_resume\n"
    "ukernel_resume:\n"                /* sp = frame */
    "   lw t0, 0(sp)\n"
    "   csrw mepc, t0\n"
    "   csrw mscratch, sp\n"
    "   lw x1, 4(sp)\n"
    "   lw x3, 12(sp)\n  lw x4, 16(sp)\n  lw x5, 20(sp)\n  lw x6, 24(sp)\n"
    "   lw x7, 28(sp)\n  lw x8, 32(sp)\n  lw x9, 36(sp)\n  lw x10, 40(sp)\n"
    "   lw x11, 44(sp)\n lw x12, 48(sp)\n lw x13, 52(sp)\n lw x14, 56(sp)\n"
    "   lw x15, 60(sp)\n lw x16, 64(sp)\n lw x17, 68(sp)\n lw x18, 72(sp)\n"
    "   lw x19, 76(sp)\n lw x20, 80(sp)\n lw x21, 84(sp)\n lw x22, 88(sp)\n"
    "   lw x23, 92(sp)\n lw x24, 96(sp)\n lw x25, 100(sp)\n lw x26, 104(sp)\n"
    "   lw x27, 108(sp)\n lw x28, 112(sp)\n lw x29, 116(sp)\n lw x30, 120(sp)\n"
    "   lw x31, 124(sp)\n"
    "   lw sp, 8(sp)\n"
    "   mret\n"
    /* ukernel_start(frame): save the kernel's context and resume the first task;
     * it returns through ukernel_return when all tasks are done. */
    "   .globl ukernel_start\n"
    "ukernel_start:\n"
    "   addi sp, sp, -64\n"
    "   sw ra, 0(sp)\n  sw s0, 4(sp)\n  sw s1, 8(sp)\n  sw s2, 12(sp)\n"
    "   sw s3, 16(sp)\n sw s4, 20(sp)\n sw s5, 24(sp)\n sw s6, 28(sp)\n"
    "   sw s7, 32(sp)\n sw s8, 36(sp)\n sw s9, 40(sp)\n sw s10, 44(sp)\n"
    "   sw s11, 48(sp)\n"
    "   sw sp, saved_sp, t0\n"
    "   mv sp, a0\n"
    "   j ukernel_resume\n"
    "ukernel_return:\n"
    "   lw sp, saved_sp\n"
    "   lw ra, 0(sp)\n  lw s0, 4(sp)\n  lw s1, 8(sp)\n  lw s2, 12(sp)\n"
    "   lw s3, 16(sp)\n lw s4, 20(sp)\n lw s5, 24(sp)\n lw s6, 28(sp)\n"
    "   lw s7, 32(sp)\n lw s8, 36(sp)\n lw s9, 40(sp)\n lw s10, 44(sp)\n"
    "   lw s11, 48(sp)\n"
    "   addi sp, sp, 64\n"
    "   ret\n");

extern void ukernel_entry(void);
extern void ukernel_start(struct frame *first);
__attribute__((used)) uint32_t saved_sp;

void task_add(const char *name, void (*entry)(void), uint32_t *stack_top)
{
    struct task *t = &tasks[ntasks++];
    t->name = name;
    t->alive = 1;
    t->frame.x[0] = (uint32_t)(uintptr_t)entry;
    t->frame.x[2] = (uint32_t)(uintptr_t)stack_top;
    __asm__ ("mv %0, gp" : "=r"(t->frame.x[3]));   /* tasks share the image's gp */
}

static void arm_timer(void)
{
    uint32_t lo = CLINT_MTIME_LO, hi = CLINT_MTIME_HI;
    uint32_t next = lo + quantum_ticks;
    CLINT_MTIMECMP_HI = 0xffffffffu;   /* no spurious match while the halves change */
    CLINT_MTIMECMP_LO = next;
    CLINT_MTIMECMP_HI = hi + (next < lo);
}

/* The next live task after `from`, or -1. */
static int next_task(int from)
{
    for (int k = 1; k <= ntasks; k++) {
        int i = (from + k) % ntasks;
        if (tasks[i].alive)
            return i;
    }
    return -1;
}

__attribute__((weak)) int task_fault(struct task *t, uint32_t mcause, uint32_t mepc,
                                     uint32_t mtval)
{
    uart_puts("kernel: ");
    uart_puts(t->name);
    uart_puts(" killed: mcause ");
    uart_putdec(mcause);
    uart_puts(" at 0x");
    uart_puthex(mepc);
    uart_puts(", mtval 0x");
    uart_puthex(mtval);
    uart_puts("\n");
    return 1;
}

static uint32_t insn_length(uint32_t pc)
{
    return (*(volatile uint16_t *)(uintptr_t)pc & 3) == 3 ? 4 : 2;
}

__attribute__((used)) struct frame *ukernel_trap(struct frame *f)
{
    struct task *t = &tasks[current];
    uint32_t mcause = csr_read(mcause);
    int switch_task = 0;

    if (mcause == (MCAUSE_INTR | 7)) {              /* machine timer: preempt */
        arm_timer();
        timer_switches++;
        switch_task = 1;
    } else if (mcause == MCAUSE_ECALL_U) {
        f->x[0] += 4;
        switch (f->x[17]) {
        case SYS_PUTS:
            uart_puts((const char *)(uintptr_t)f->x[10]);
            break;
        case SYS_YIELD:
            switch_task = 1;
            break;
        case SYS_EXIT:
            t->alive = 0;
            switch_task = 1;
            break;
        default:
            f->x[10] = (uint32_t)-1;
        }
    } else if (task_fault(t, mcause, f->x[0], csr_read(mtval))) {
        t->alive = 0;
        switch_task = 1;
    } else {
        f->x[0] += insn_length(f->x[0]);
    }
    if (switch_task || !t->alive) {
        int next = next_task(current);
        if (next < 0)
            return 0;
        current = next;
    }
    /* Resume in U-mode with interrupts on (MPIE -> MIE; U ignores MIE anyway). */
    csr_clear(mstatus, MSTATUS_MPP);
    csr_set(mstatus, MSTATUS_MPIE);
    return &tasks[current].frame;
}

void tasks_run(uint32_t quantum)
{
    quantum_ticks = quantum;
    csr_write(mtvec, (uint32_t)(uintptr_t)ukernel_entry);
    if (quantum) {
        arm_timer();
        csr_set(mie, MIE_MTIE);
    }
    csr_clear(mstatus, MSTATUS_MPP);
    csr_set(mstatus, MSTATUS_MPIE);
    current = 0;
    ukernel_start(&tasks[0].frame);
    csr_clear(mie, MIE_MTIE);
    csr_write(mtvec, (uint32_t)(uintptr_t)trap_handler);
}
