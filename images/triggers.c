/*
 * triggers.c - Sdtrig debug triggers from M-mode, reported through semihosting
 * (emud run --semihosting images/triggers.elf; the same ELF runs on QEMU's virt
 * board, so the two outputs can be compared line by line).
 *
 * The trap handler records mcause/mepc/mtval and disarms the selected trigger,
 * so the instruction that fired runs again, untriggered; an illegal CSR access
 * is skipped.
 */
#include <stdint.h>
#include <stdio.h>

#define TSELECT 0x7a0
#define TDATA1 0x7a1
#define TDATA2 0x7a2
#define TDATA3 0x7a3
#define TINFO 0x7a4
#define TCONTROL 0x7a5

#define MC_TYPE2 (2u << 28)
#define MC_DMODE (1u << 27)
#define MC_ACTION1 (1u << 12)
#define MC_M (1u << 6)
#define MC_U (1u << 3)
#define MC_EXEC (1u << 2)
#define MC_STORE (1u << 1)
#define MC_LOAD (1u << 0)

#define STR(x) #x
#define XSTR(x) STR(x)
#define csr_read(csr) ({ uint32_t v_; __asm__ volatile("csrr %0, " XSTR(csr) : "=r"(v_)); v_; })
#define csr_write(csr, v) __asm__ volatile("csrw " XSTR(csr) ", %0" :: "r"((uint32_t)(v)))

static volatile uint32_t cause, epc, tval, traps;
volatile uint32_t data_word[4] = {1, 2, 3, 4};

void trap_entry(void);
__asm__(".balign 4\n"
        "trap_entry:\n"
        "  addi sp, sp, -16\n"
        "  sw t0, 0(sp)\n"
        "  sw t1, 4(sp)\n"
        "  csrr t0, mcause\n"
        "  la t1, cause\n"
        "  sw t0, 0(t1)\n"
        "  csrr t0, mepc\n"
        "  la t1, epc\n"
        "  sw t0, 0(t1)\n"
        "  csrr t0, mtval\n"
        "  la t1, tval\n"
        "  sw t0, 0(t1)\n"
        "  la t1, traps\n"
        "  lw t0, 0(t1)\n"
        "  addi t0, t0, 1\n"
        "  sw t0, 0(t1)\n"
        "  csrr t0, mcause\n"
        "  li t1, 2\n"
        "  bne t0, t1, 1f\n"
        "  csrr t0, mepc\n"       /* illegal instruction: skip it (CSR ops are 4 bytes) */
        "  addi t0, t0, 4\n"
        "  csrw mepc, t0\n"
        "  j 2f\n"
        /* A trigger fired: disarm it (type 2 with nothing to match, as a write of
         * type 0 is ignored) and run the instruction again. */
        "1:li t0, 0x20000000\n"
        "  csrw 0x7a1, t0\n"
        "2:lw t0, 0(sp)\n"
        "  lw t1, 4(sp)\n"
        "  addi sp, sp, 16\n"
        "  mret\n");

__attribute__((noinline)) int target(int x) { return x * 3 + 1; }

static void report(const char *what)
{
    printf("%s: traps=%lu cause=%lu epc=%#lx tval=%#lx\n", what, (unsigned long)traps,
           (unsigned long)cause, (unsigned long)epc, (unsigned long)tval);
    traps = cause = epc = tval = 0;
}


int main(void)
{
    csr_write(mtvec, (uintptr_t)trap_entry);
    /* M-mode triggers fire only while mstatus.MIE is set; mie stays 0: no interrupts. */
    __asm__ volatile("csrsi mstatus, 8");
    printf("target=%#lx data=%#lx\n", (unsigned long)(uintptr_t)target,
           (unsigned long)(uintptr_t)data_word);

    /* The registers and their WARL fields */
    csr_write(TSELECT, 0);
    printf("tselect0: tinfo=%#lx tdata1=%#lx tdata2=%#lx\n", (unsigned long)csr_read(TINFO),
           (unsigned long)csr_read(TDATA1), (unsigned long)csr_read(TDATA2));
    report("tselect0");
    csr_write(TSELECT, 1);
    printf("tselect1: tselect=%lu tdata1=%#lx\n", (unsigned long)csr_read(TSELECT),
           (unsigned long)csr_read(TDATA1));
    csr_write(TSELECT, 7);
    printf("tselect7: tselect=%lu\n", (unsigned long)csr_read(TSELECT));
    csr_write(TSELECT, 0);
    csr_write(TDATA1, MC_TYPE2 | MC_DMODE | MC_ACTION1 | MC_M | MC_EXEC);
    printf("dmode/action: tdata1=%#lx\n", (unsigned long)csr_read(TDATA1));
    csr_write(TDATA1, 0);
    printf("type0: tdata1=%#lx\n", (unsigned long)csr_read(TDATA1));
    csr_write(TDATA1, MC_TYPE2);
    csr_write(TDATA1, (4u << 28) | MC_M | MC_EXEC);
    printf("type4: tdata1=%#lx\n", (unsigned long)csr_read(TDATA1));
    csr_write(TDATA1, MC_TYPE2);
    csr_write(TDATA3, 0x55);
    printf("tdata3=%#lx\n", (unsigned long)csr_read(TDATA3));
    report("registers");
    (void)csr_read(TCONTROL);
    report("tcontrol");
    (void)csr_read(0x7a6);
    report("0x7a6");

    /* Load and store address matches */
    csr_write(TDATA2, (uintptr_t)&data_word[1]);
    csr_write(TDATA1, MC_TYPE2 | MC_M | MC_LOAD);
    uint32_t v = data_word[1];
    report("load");
    data_word[1] = 20;
    report("store under a load trigger");
    csr_write(TDATA1, MC_TYPE2);

    csr_write(TDATA1, MC_TYPE2 | MC_M | MC_STORE);
    data_word[1] = 21;
    report("store");
    v += data_word[1];
    report("load under a store trigger");
    printf("values %lu %lu\n", (unsigned long)v, (unsigned long)data_word[1]);

    /* A byte access inside the word, and the next word */
    csr_write(TDATA2, (uintptr_t)&data_word[1] + 2);
    csr_write(TDATA1, MC_TYPE2 | MC_M | MC_LOAD);
    v = data_word[1];
    report("word load over the matched byte");
    csr_write(TDATA1, MC_TYPE2 | MC_M | MC_LOAD);
    v = data_word[2];
    report("load of the next word");
    csr_write(TDATA1, MC_TYPE2);

    /* U-only trigger does not fire in M-mode; trigger 1 fires too */
    csr_write(TDATA2, (uintptr_t)target);
    csr_write(TDATA1, MC_TYPE2 | MC_U | MC_EXEC);
    int r = target(5);
    report("u-only execute");
    csr_write(TDATA1, MC_TYPE2);
    csr_write(TSELECT, 1);
    csr_write(TDATA2, (uintptr_t)target);
    csr_write(TDATA1, MC_TYPE2 | MC_M | MC_EXEC);
    r += target(6);
    report("trigger 1 execute");
    csr_write(TDATA1, MC_TYPE2);
    printf("done %d\n", r);

    csr_write(TDATA2, (uintptr_t)target);
    csr_write(TDATA1, MC_TYPE2 | MC_M | MC_EXEC);
    r = target(4);
    report("execute");
    printf("execute result=%d\n", r);

    /* With mstatus.MIE clear, M-mode triggers do not fire (QEMU 7.2 fires them). */
    __asm__ volatile("csrci mstatus, 8");
    csr_write(TDATA1, MC_TYPE2 | MC_M | MC_EXEC);
    r = target(7);
    report("execute with MIE clear");
    csr_write(TDATA1, MC_TYPE2);
    __asm__ volatile("csrsi mstatus, 8");
    printf("end %d\n", r);
    return 0;
}
