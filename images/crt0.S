/*
 * crt0.S - reset entry for emud-virt guests.
 *
 * Reset state (emud-virt and QEMU virt with -bios none): pc = ELF entry,
 * a0 = hart id, machine mode, interrupts off, everything else unknown.
 */
#define SYSCON          0x00100000
#define SYSCON_PASS     0x5555
#define SYSCON_FAIL     0x3333          /* | (exit code << 16) */

    .section .text.init, "ax"
    .globl _start
    .type _start, @function
_start:
    /* Install the (weak, overridable) trap handler first, so that even a
     * fault in the code below is reported instead of jumping to 0. */
    la      t0, trap_handler
    csrw    mtvec, t0

    /* The linker relaxes gp-relative accesses using gp; gp's own setup
     * must not be relaxed into "addi gp, gp, 0". */
    .option push
    .option norelax
    la      gp, __global_pointer$
    .option pop
    la      sp, __stack_top

    /* Zero .bss; link.ld aligns both ends to 8. */
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 2f
    sw      zero, 0(t0)
    addi    t0, t0, 4
    j       1b
2:
    call    uart_init
    li      a0, 0                       /* argc */
    li      a1, 0                       /* argv */
    call    main
    /* Fall through: main's return value is the exit code. */
    .size _start, . - _start

/*
 * void poweroff(int code) - stop the machine through the syscon.
 * 0 powers off successfully; anything else fails with that exit code
 * (only its low 16 bits fit in the register).
 */
    .globl poweroff
    .type poweroff, @function
poweroff:
    li      t0, SYSCON_PASS
    beqz    a0, 2f
    slli    a0, a0, 16
    bnez    a0, 1f
    lui     a0, 0x10                    /* low 16 bits were 0: still fail, code 1 */
1:  li      t0, SYSCON_FAIL
    or      t0, t0, a0
2:  li      t1, SYSCON
    sw      t0, 0(t1)
    /* Only reached if the syscon is missing: park the hart. */
3:  wfi
    j       3b
    .size poweroff, . - poweroff
