/*
 * traps - exercise synchronous exceptions (direct mtvec) and a machine
 * software interrupt (vectored mtvec). Prints one line per case, then
 * "traps: all ok" and exits 0; any failed check makes it exit 1.
 */
#include "emud.h"

#define MCAUSE_MISALIGNED_LOAD  4
#define MCAUSE_LOAD_FAULT       5
#define MCAUSE_MISALIGNED_STORE 6
#define MCAUSE_STORE_FAULT      7
#define MCAUSE_ILLEGAL          2
#define MCAUSE_BREAKPOINT       3
#define MCAUSE_ECALL_M          11
#define IRQ_MSI                 3

/* Unmapped on emud-virt, and on QEMU's virt too (whose 0x40000000 is the
 * PCIe window), so accesses fault on both. */
#ifndef UNMAPPED_ADDR
#define UNMAPPED_ADDR 0x28000000u
#endif

/* What the exception handler saw on the last trap. */
static volatile struct {
    uint32_t count, mcause, mepc, mtval;
} last;

static int failures;

/* Exceptions: record the trap, then resume after the faulting instruction.
 * mepc is always 2-aligned (IALIGN=16 with RVC), so a halfword load there is
 * safe; its low two bits are 11 only for 32-bit instructions. */
__attribute__((used)) TRAP_HANDLER static void exception_handler(void)
{
    uint32_t epc = csr_read(mepc);

    last.mcause = csr_read(mcause);
    last.mepc = epc;
    last.mtval = csr_read(mtval);
    last.count++;

    uint16_t insn = *(volatile uint16_t *)(uintptr_t)epc;
    csr_write(mepc, epc + ((insn & 3) == 3 ? 4 : 2));
}

static volatile uint32_t msi_count, msi_cause;

/* MSI: acknowledge by clearing msip, else it would trap again after mret. */
__attribute__((used)) TRAP_HANDLER static void msi_handler(void)
{
    msi_cause = csr_read(mcause);
    CLINT_MSIP = 0;
    msi_count++;
}

/*
 * Vectored mtvec: exceptions go to base, interrupt n to base + 4*n. Each
 * slot must be exactly one 4-byte jump, hence norvc (a c.j would shift the
 * slots). Unexpected interrupts go to the fatal default handler.
 */
__asm__(
    "   .section .text.vectors, \"ax\"\n"
    "   .balign 64\n"
    "   .option push\n"
    "   .option norvc\n"
    "vector_table:\n"
    "   j exception_handler\n"      /* 0: exceptions */
    "   j trap_handler\n"           /* 1: SSI */
    "   j trap_handler\n"           /* 2 */
    "   j msi_handler\n"            /* 3: MSI */
    "   j trap_handler\n"           /* 4 */
    "   j trap_handler\n"           /* 5: STI */
    "   j trap_handler\n"           /* 6 */
    "   j trap_handler\n"           /* 7: MTI */
    "   j trap_handler\n"           /* 8 */
    "   j trap_handler\n"           /* 9: SEI */
    "   j trap_handler\n"           /* 10 */
    "   j trap_handler\n"           /* 11: MEI */
    "   .option pop\n"
    "   .text\n");
extern char vector_table[];

static void check(int ok)
{
    uart_puts(ok ? "1" : "0");
    if (!ok)
        failures++;
}

/* Print "NAME: mcause=N mepc_ok=B[ mtval_ok=B]" for the trap just taken;
 * want_mtval < 0 means mtval is not checked (its value is optional). */
static void report(const char *name, uint32_t want_cause, uint32_t want_epc,
                   int64_t want_mtval)
{
    uart_puts(name);
    uart_puts(": mcause=");
    uart_putdec(last.mcause);
    if (last.count != 1 || last.mcause != want_cause)
        failures++;
    uart_puts(" mepc_ok=");
    check(last.mepc == want_epc);
    if (want_mtval >= 0) {
        uart_puts(" mtval_ok=");
        check(last.mtval == (uint32_t)want_mtval);
    }
    uart_putc('\n');
}

static void arm(void)
{
    last.count = 0;
    last.mcause = last.mepc = last.mtval = 0xffffffffu;
}

/*
 * Each case is "la epc, 1f; 1: <trapping instruction>", so epc is the
 * address mepc must hold. The handler preserves all registers.
 */
#define TRAP_AT(insn) "la %0, 1f\n1: " insn "\n"

static void test_exceptions(void)
{
    static volatile uint32_t word[2] = { 0x11223344, 0x55667788 };
    uintptr_t odd = (uintptr_t)&word[0] + 1;
    uint32_t epc, tmp;

    arm();
    __asm__ volatile (TRAP_AT("ecall") : "=&r"(epc) :: "memory");
    report("ecall", MCAUSE_ECALL_M, epc, -1);

    /* 0x6b is a reserved major opcode: illegal in every RV32 variant. */
    arm();
    __asm__ volatile (TRAP_AT(".4byte 0x0000006b") : "=&r"(epc) :: "memory");
    report("illegal", MCAUSE_ILLEGAL, epc, -1);

    /* An all-zero halfword is the defined-illegal 16-bit instruction, so
     * the handler must step 2 bytes, not 4. */
    arm();
    __asm__ volatile (TRAP_AT(".2byte 0x0000") : "=&r"(epc) :: "memory");
    report("illegal16", MCAUSE_ILLEGAL, epc, -1);

    arm();
    __asm__ volatile (TRAP_AT("lw %1, 0(%2)")
                      : "=&r"(epc), "=&r"(tmp) : "r"(odd) : "memory");
    report("misaligned load", MCAUSE_MISALIGNED_LOAD, epc, odd);

    arm();
    __asm__ volatile (TRAP_AT("sw %1, 0(%2)")
                      : "=&r"(epc) : "r"(0xdeadbeef), "r"(odd) : "memory");
    report("misaligned store", MCAUSE_MISALIGNED_STORE, epc, odd);
    if (word[0] != 0x11223344 || word[1] != 0x55667788) {
        uart_puts("misaligned store: memory modified\n");
        failures++;
    }

    /* Both encodings: ebreak is 4 bytes, c.ebreak 2. */
    arm();
    __asm__ volatile (TRAP_AT(".option push\n.option norvc\nebreak\n.option pop")
                      : "=&r"(epc) :: "memory");
    report("ebreak", MCAUSE_BREAKPOINT, epc, -1);

    arm();
    __asm__ volatile (TRAP_AT("c.ebreak") : "=&r"(epc) :: "memory");
    report("c.ebreak", MCAUSE_BREAKPOINT, epc, -1);

    arm();
    __asm__ volatile (TRAP_AT("lw %1, 0(%2)")
                      : "=&r"(epc), "=&r"(tmp) : "r"(UNMAPPED_ADDR) : "memory");
    report("load fault", MCAUSE_LOAD_FAULT, epc, UNMAPPED_ADDR);

    arm();
    __asm__ volatile (TRAP_AT("sw zero, 0(%1)")
                      : "=&r"(epc) : "r"(UNMAPPED_ADDR) : "memory");
    report("store fault", MCAUSE_STORE_FAULT, epc, UNMAPPED_ADDR);
    (void)tmp;
}

static void test_vectored(void)
{
    uint32_t epc;

    csr_write(mtvec, (uintptr_t)vector_table | MTVEC_VECTORED);

    /* Exceptions still enter at the base in vectored mode. */
    arm();
    __asm__ volatile (TRAP_AT("ecall") : "=&r"(epc) :: "memory");
    report("vectored ecall", MCAUSE_ECALL_M, epc, -1);

    msi_count = 0;
    msi_cause = 0;
    csr_set(mie, MIE_MSIE);
    csr_set(mstatus, MSTATUS_MIE);
    CLINT_MSIP = 1;
    /* The interrupt is pending and enabled: it must be taken within a few
     * instructions. The bound only keeps a broken machine from hanging. */
    for (int i = 0; i < 100000 && msi_count == 0; i++)
        ;
    csr_clear(mstatus, MSTATUS_MIE);
    csr_clear(mie, MIE_MSIE);

    int ok = msi_count == 1 && msi_cause == (MCAUSE_INTR | IRQ_MSI)
             && CLINT_MSIP == 0;
    uart_puts(ok ? "msi: ok\n" : "msi: FAIL\n");
    if (!ok)
        failures++;

    csr_write(mtvec, (uintptr_t)trap_handler);
}

int main(void)
{
    csr_write(mtvec, (uintptr_t)exception_handler);
    test_exceptions();
    test_vectored();

    if (failures) {
        uart_puts("traps: FAILED\n");
        return 1;
    }
    uart_puts("traps: all ok\n");
    return 0;
}
